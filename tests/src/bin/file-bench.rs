//! The file backend against its floors and a peer, in the same run, on this machine's temp
//! directory: an uncontended acquire+release cycle of `lucky::file` against raw
//! `flock(LOCK_EX|LOCK_NB)` + `flock(LOCK_UN)` on a file kept open (the floor), against the
//! same with the durable fence write Lucky makes (read the counter, write a temporary file,
//! fsync, rename, fsync the directory: the fair floor), and against the `fd-lock` crate
//! (`try_write` + drop, no fence). Then the hand-off of one name between 4 processes that
//! hold it 1 ms: wait p99, max, fewest/most acquisitions per process. Run: `cargo run
//! --release -p lucky-tests --bin file-bench` (`LUCKY_BENCH_SECS`, default 3). The last
//! line is a machine-readable summary.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a benchmark reads the clock

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lucky_tests::bench::{lock_cycle, secs, serial_p50s, Case, Cycle, Handoff};
use rustix::fs::FlockOperation;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(
            Path::new(&args[2]),
            Duration::from_millis(args[3].parse().unwrap()),
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("lucky-file-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = lucky_tests::bench::runtime();
    let summary = rt.block_on(run(&dir));
    let h = handoff(&dir);
    println!("{}", h.line("4 processes on one name, hold 1 ms", "lucky"));
    println!(
        "summary {summary} handoff_acquisitions={} handoff_p99_ms={:.2} handoff_max_ms={:.2} fairness={:.2}",
        h.n,
        h.p99.as_secs_f64() * 1e3,
        h.max.as_secs_f64() * 1e3,
        h.fairness
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The durable counter write of the fair floor: what Lucky does for a fence.
fn durable_increment(dir: &Path, counter: &Path) {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(counter) {
        f.read_to_string(&mut text).unwrap();
    }
    let n: u64 = text
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let tmp = counter.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    write!(f, "{} 0", n + 1).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, counter).unwrap();
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
}

async fn run(dir: &Path) -> String {
    let files = lucky::file::Files::builder(dir)
        .auto_extend(false)
        .connect()
        .await
        .unwrap();
    let floor_file = Arc::new(std::fs::File::create(dir.join("floor.lock")).unwrap());
    let floor: Case = {
        let f = floor_file.clone();
        (
            "flock",
            Arc::new(move |_t: usize, _n: u64| {
                let f = f.clone();
                Box::pin(async move {
                    rustix::fs::flock(&*f, FlockOperation::NonBlockingLockExclusive).unwrap();
                    rustix::fs::flock(&*f, FlockOperation::Unlock).unwrap();
                }) as Cycle
            }),
        )
    };
    let durable: Case = {
        let (f, dir) = (floor_file.clone(), PathBuf::from(dir));
        (
            "flock+durable fence",
            Arc::new(move |_t: usize, _n: u64| {
                let (f, dir) = (f.clone(), dir.clone());
                Box::pin(async move {
                    rustix::fs::flock(&*f, FlockOperation::NonBlockingLockExclusive).unwrap();
                    durable_increment(&dir, &dir.join("floor.fence"));
                    rustix::fs::flock(&*f, FlockOperation::Unlock).unwrap();
                }) as Cycle
            }),
        )
    };
    let peer: Case = {
        let lock = Arc::new(std::sync::Mutex::new(fd_lock::RwLock::new(
            std::fs::File::create(dir.join("peer.lock")).unwrap(),
        )));
        (
            "fd-lock",
            Arc::new(move |_t: usize, _n: u64| {
                let lock = lock.clone();
                Box::pin(async move {
                    let mut l = lock.lock().unwrap();
                    let g = l.try_write().unwrap();
                    drop(g);
                }) as Cycle
            }),
        )
    };
    let lucky: Case = ("lucky", lock_cycle(files.clone(), "bench".into()));
    let cases = vec![floor, durable, peer, lucky];
    let p50 = serial_p50s(2_000, 0, &cases).await;
    let r = |i: usize, j: usize| p50[i].as_secs_f64() / p50[j].as_secs_f64();
    println!(
        "serial acquire+release p50: flock+unlock {:?}, with the durable fence write {:?}, fd-lock {:?} ({:.2}x flock), lucky {:?} ({:.2}x flock, {:.2}x flock+durable fence)",
        p50[0], p50[1], p50[2], r(2, 0), p50[3], r(3, 0), r(3, 1)
    );
    format!(
        "serial_vs_flock={:.2} serial_vs_durable_floor={:.2} fdlock_vs_flock={:.2} lucky_p50_us={:.1} flock_p50_us={:.1}",
        r(3, 0),
        r(3, 1),
        r(2, 0),
        p50[3].as_secs_f64() * 1e6,
        p50[0].as_secs_f64() * 1e6
    )
}

/// Four processes (this binary with `--child`) take turns on one name for the bench time.
fn handoff(dir: &Path) -> Handoff {
    let me = std::env::current_exe().unwrap();
    let ms = secs().as_millis().to_string();
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(&me)
                .arg("--child")
                .arg(dir)
                .arg(&ms)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let per: Vec<Vec<Duration>> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .map(|w| Duration::from_micros(w.parse().unwrap()))
                .collect()
        })
        .collect();
    Handoff::from_tasks(per)
}

/// One hand-off process: acquire (waiting), hold 1 ms, release, for `run`; prints its waits
/// in microseconds.
fn child(dir: &Path, run: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let waits = rt.block_on(async {
        let files = lucky::file::Files::open(dir).await.unwrap();
        let end = Instant::now() + run;
        let mut waits = Vec::new();
        while Instant::now() < end {
            let t = Instant::now();
            let g = files
                .lock("handoff")
                .wait(run * 4)
                .await
                .expect("the hand-off lock within four bench times");
            waits.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(1)).await;
            g.release().await.unwrap();
        }
        waits
    });
    let line: Vec<String> = waits.iter().map(|w| w.as_micros().to_string()).collect();
    println!("{}", line.join(" "));
}
