//! The file backend with real processes: `lucky exec --backend file:///dir` and `flock(1)`
//! exclude each other; `kill -9` of the holder frees the lock at once and the fence goes on;
//! the lock file deleted or moved under its holder never gives two holders; eight concurrent
//! `lucky exec` never overlap; processes killed at random points of their acquisition never
//! make a fence repeat. Each test uses a directory of its own under the system's temp dir.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap, read the clock, sleep

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn lucky_bin() -> PathBuf {
    env!("CARGO_BIN_EXE_lucky-under-test").into()
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lucky-file-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `lucky exec --backend file://<dir> --name <name> <flags> -- sh -c <script>`.
fn exec(dir: &Path, name: &str, flags: &[&str], script: &str) -> Command {
    let mut c = Command::new(lucky_bin());
    c.args([
        "exec",
        "--backend",
        &format!("file://{}", dir.display()),
        "--name",
        name,
    ])
    .args(flags)
    .args(["--", "sh", "-c", script])
    .stdin(Stdio::null());
    c
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Intervals `(start, end)` written as lines `start <t>` / `end <t>` by `id` into `log`.
fn intervals(log: &Path) -> Vec<(String, f64, f64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut open = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [kind, id, t] = parts[..] {
            let t: f64 = t.parse().unwrap();
            match kind {
                "start" => {
                    open.insert(id.to_owned(), t);
                }
                "end" => {
                    let s = open.remove(id).unwrap();
                    out.push((id.to_owned(), s, t));
                }
                _ => {}
            }
        }
    }
    out
}

fn assert_disjoint(v: &[(String, f64, f64)]) {
    for (i, a) in v.iter().enumerate() {
        for b in &v[i + 1..] {
            assert!(a.2 <= b.1 || b.2 <= a.1, "overlap: {a:?} and {b:?}");
        }
    }
}

/// A script that logs its holding interval as `id` into `log`, holding `secs`.
fn hold(log: &Path, id: &str, secs: f64) -> String {
    let l = log.display();
    format!(
        "echo start {id} $(date +%s.%N) >> {l}; sleep {secs}; echo end {id} $(date +%s.%N) >> {l}"
    )
}

#[test]
fn lucky_and_flock1_exclude_each_other() {
    let d = dir("flock");
    let file = d.join("nightly.lock");
    // Lucky holds: flock -n fails.
    let mut holder = exec(&d, "nightly", &[], "sleep 1.5").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let st = Command::new("flock")
        .args(["-n"])
        .arg(&file)
        .arg("true")
        .status()
        .unwrap();
    assert!(!st.success(), "flock(1) took a lock Lucky holds");
    assert!(holder.wait().unwrap().success());
    // flock(1) holds: Lucky's --no-wait exits 75, a waiting one gets it after.
    let mut f = Command::new("flock")
        .arg(&file)
        .args(["sleep", "1"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = exec(&d, "nightly", &["--no-wait"], "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let out = exec(&d, "nightly", &["--wait", "5s"], "echo $LUCKY_FENCE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(f.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn kill_9_of_the_holder_frees_the_lock_at_once_and_the_fence_goes_on() {
    let d = dir("kill9");
    let fences = d.join("fences");
    let f = fences.display();
    let mut holder = exec(
        &d,
        "job",
        &[],
        &format!("echo $LUCKY_FENCE >> {f}; sleep 30"),
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    holder.kill().unwrap(); // SIGKILL: no release, the OS frees the flock
    holder.wait().unwrap();
    // The child `sleep` may outlive lucky; it does not hold the lock (only lucky's file does).
    let out = exec(
        &d,
        "job",
        &["--no-wait"],
        &format!("echo $LUCKY_FENCE >> {f}"),
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "not free right after kill -9: {out:?}"
    );
    let seen: Vec<u64> = std::fs::read_to_string(&fences)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(seen.len(), 2);
    assert!(seen[1] > seen[0], "{seen:?}");
    let _ = std::fs::remove_dir_all(&d);
}

fn replaced_under_the_holder(how: &str) {
    let d = dir(how);
    let log = d.join("log");
    let lock = d.join("job.lock");
    let start = now();
    let mut holder = exec(
        &d,
        "job",
        &["--ttl", "2s", "--grace", "1s"],
        &hold(&log, "holder", 6.0),
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    match how {
        "rm" => std::fs::remove_file(&lock).unwrap(),
        _ => std::fs::rename(&lock, d.join("job.lock.moved")).unwrap(),
    }
    let contenders: Vec<Child> = (0..3)
        .map(|i| {
            exec(
                &d,
                "job",
                &["--ttl", "2s", "--wait", "20s"],
                &hold(&log, &format!("c{i}"), 0.3),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    // The holder is told its lock is lost (exit 76) and ends its command.
    let code = holder.wait().unwrap().code();
    let holder_end = now();
    assert_eq!(
        code,
        Some(76),
        "the holder of a {how}'d lock file is told it is lost"
    );
    for mut c in contenders {
        assert!(c.wait().unwrap().success());
    }
    let mut v = intervals(&log);
    // The holder's command was terminated: its interval ends when lucky exited.
    let text = std::fs::read_to_string(&log).unwrap();
    let hs: f64 = text
        .lines()
        .find(|l| l.starts_with("start holder"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .parse()
        .unwrap();
    v.push(("holder".into(), hs, holder_end));
    assert_eq!(v.len(), 4, "{v:?}");
    assert!(v.iter().all(|(_, s, _)| *s >= start));
    assert_disjoint(&v);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn rm_of_the_lock_file_under_the_holder_never_gives_two_holders() {
    replaced_under_the_holder("rm");
}

#[test]
fn mv_of_the_lock_file_under_the_holder_never_gives_two_holders() {
    replaced_under_the_holder("mv");
}

#[test]
fn eight_concurrent_execs_never_overlap() {
    let d = dir("eight");
    let log = d.join("log");
    let children: Vec<Child> = (0..8)
        .map(|i| {
            exec(
                &d,
                "job",
                &["--wait", "30s"],
                &hold(&log, &format!("p{i}"), 0.1),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let v = intervals(&log);
    assert_eq!(v.len(), 8, "{v:?}");
    assert_disjoint(&v);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn processes_killed_anywhere_in_their_acquisition_never_repeat_a_fence() {
    let d = dir("crash");
    let fences = d.join("fences");
    let f = fences.display();
    let mut seed = u64::from(std::process::id());
    for _ in 0..40 {
        let mut c = exec(
            &d,
            "job",
            &["--wait", "10s"],
            &format!("echo $LUCKY_FENCE >> {f}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_micros((seed >> 33) % 15_000));
        let _ = c.kill();
        c.wait().unwrap();
    }
    // One more that runs to the end: the fence file is intact and the fence above every
    // fence handed out.
    let out = exec(
        &d,
        "job",
        &["--wait", "10s"],
        &format!("echo $LUCKY_FENCE >> {f}"),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let seen: Vec<u64> = std::fs::read_to_string(&fences)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a fence repeated: {seen:?}");
    assert_eq!(
        seen.last(),
        sorted.last(),
        "the last holder's fence is the highest"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn names_are_escaped_into_file_names_and_bad_ones_refused() {
    let d = dir("names");
    let files = lucky::file::Files::open(&d).await.unwrap();
    let g = files.lock("jobs/nightly run").await.unwrap();
    assert!(d.join("jobs%2Fnightly%20run.lock").exists());
    assert_eq!(
        files.lock_file("jobs/nightly run").unwrap(),
        d.join("jobs%2Fnightly%20run.lock")
    );
    g.release().await.unwrap();
    let e = files.lock("x".repeat(300)).await.unwrap_err();
    assert_eq!(e.kind(), lucky::ErrorKind::Usage, "{e}");
    let e = files.lock("").await.unwrap_err();
    assert_eq!(e.kind(), lucky::ErrorKind::Usage, "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
