//! Lucky's Redis adapter against the floor (raw commands over the same client) and a peer
//! library (rslock), in the same run, on the five nodes of `scripts/services.sh start`.
//! Run: `cargo run --release -p lucky-tests --bin redlock-bench` (`LUCKY_BENCH_SECS`, default
//! 3). The last line is a machine-readable summary.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a benchmark reads the clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use lucky::redis::Redis;
use lucky::redlock::{RELEASE_SCRIPT, RELEASE_SHA1};
use lucky_tests::bench::{secs, serial_p50s, throughput_rounds, Case, Cycle, Handoff};
use redis::aio::ConnectionManager;

/// The floor: `SET NX PX` to every node at once, then the release script to every node.
async fn raw_cycle(conns: &[ConnectionManager], key: &str, token: &str) {
    let (key, token) = (key.to_owned(), token.to_owned());
    let sets = conns.iter().map(|c| {
        let mut c = c.clone();
        let (key, token) = (key.clone(), token.clone());
        async move {
            let _: redis::Value = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut c)
                .await
                .unwrap();
        }
    });
    join(sets).await;
    let dels = conns.iter().map(|c| {
        let mut c = c.clone();
        let (key, token) = (key.clone(), token.clone());
        async move {
            let r: Result<redis::Value, _> = redis::cmd("EVALSHA")
                .arg(RELEASE_SHA1)
                .arg(1)
                .arg(&key)
                .arg(&token)
                .query_async(&mut c)
                .await;
            if r.is_err() {
                let _: redis::Value = redis::cmd("EVAL")
                    .arg(RELEASE_SCRIPT)
                    .arg(1)
                    .arg(&key)
                    .arg(&token)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }
    });
    join(dels).await;
}

/// Polls every future in place until all are done (no task spawned: the tightest floor).
async fn join<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut futs: Vec<Option<std::pin::Pin<Box<F>>>> = futs.map(|f| Some(Box::pin(f))).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in futs.iter_mut() {
            if let Some(f) = slot {
                if f.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    pending = true;
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await
}

fn main() {
    let rt = lucky_tests::bench::runtime();
    match std::env::var(CHILD) {
        Ok(spec) => rt.block_on(child(&spec)),
        Err(_) => rt.block_on(run()),
    }
}

/// Set in the child processes of the cross-process hand-off: `name,tasks,start_ms,secs`.
const CHILD: &str = "LUCKY_BENCH_CHILD";

/// Milliseconds since the Unix epoch: the one clock processes share.
fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One contending process: its tasks start at the shared start time, take the lock, hold it
/// 1 ms, release, ask again; each prints its waits (µs) on one line.
async fn child(spec: &str) {
    let f: Vec<&str> = spec.split(',').collect();
    let (name, tasks) = (f[0].to_owned(), f[1].parse::<usize>().unwrap());
    let (start_ms, secs) = (f[2].parse::<u64>().unwrap(), f[3].parse::<f64>().unwrap());
    let urls: Vec<String> = (7001..=7005)
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let locks = Redis::builder(&urls)
        .fencing(false)
        .connect()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(start_ms.saturating_sub(epoch_ms()))).await;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (l, name) = (locks.clone(), name.clone());
            tokio::spawn(async move {
                let mut waits = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    let Ok(g) = l
                        .lock(&name)
                        .wait(Duration::from_secs_f64(secs * 2.0))
                        .await
                    else {
                        continue;
                    };
                    waits.push(t.elapsed().as_micros().to_string());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    g.release().await.unwrap();
                }
                waits
            })
        })
        .collect();
    for h in handles {
        println!("waits {}", h.await.unwrap().join(","));
    }
}

/// The hand-off across `procs` processes of `tasks` tasks each, on one name.
fn handoff_processes(procs: usize, tasks: usize, name: &str) -> Handoff {
    let exe = std::env::current_exe().unwrap();
    let start = epoch_ms() + 2_000; // time for every child to connect
    let spec = format!("{name},{tasks},{start},{}", secs().as_secs_f64());
    let children: Vec<_> = (0..procs)
        .map(|_| {
            std::process::Command::new(&exe)
                .env(CHILD, &spec)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut per_task = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(list) = line.strip_prefix("waits ") {
                per_task.push(
                    list.split(',')
                        .filter(|w| !w.is_empty())
                        .map(|w| Duration::from_micros(w.parse().unwrap()))
                        .collect(),
                );
            }
        }
    }
    assert_eq!(per_task.len(), procs * tasks, "every child task reported");
    Handoff::from_tasks(per_task)
}

async fn run() {
    let urls: Vec<String> = (7001..=7005)
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    // Fenced (the default) and unfenced: the floor and rslock give no fence, so the unfenced
    // client is the like-for-like comparison; the fenced one pays one more round trip.
    let Ok(fenced) = Redis::builder(&urls).auto_extend(false).connect().await else {
        eprintln!("skipping: Redis nodes on 7001-7005 not reachable (scripts/services.sh start)");
        return;
    };
    let locks = Redis::builder(&urls)
        .auto_extend(false)
        .fencing(false)
        .connect()
        .await
        .unwrap();
    // The floor's connections are configured as Lucky's own (no per-command response timer:
    // Lucky's per-node timeout is one timer per round, kept by the machine).
    let mut conns = Vec::new();
    for u in &urls {
        let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
        conns.push(
            redis::Client::open(u.as_str())
                .unwrap()
                .get_connection_manager_with_config(config)
                .await
                .unwrap(),
        );
    }
    let conns = Arc::new(conns);
    let rsl = Arc::new(rslock::LockManager::new(urls.clone()));
    let pid = std::process::id();
    println!(
        "Redis adapter, 5 local nodes, {:?} per throughput run",
        secs()
    );

    // Throughput: 32 tasks, distinct names; the cases alternate in slices (see
    // `throughput_rounds`), each ratio is the median of the per-round ratios.
    let c = conns.clone();
    let (l, lf, r) = (locks.clone(), fenced.clone(), rsl.clone());
    let cases: Vec<Case> = vec![
        (
            "floor",
            Arc::new(move |t, n| {
                let c = c.clone();
                Box::pin(async move {
                    raw_cycle(&c, &format!("bench/{pid}/tp-raw/{t}/{n}"), "tok").await
                }) as Cycle
            }),
        ),
        (
            "lucky",
            Arc::new(move |t, n| {
                let l = l.clone();
                Box::pin(async move {
                    let g = l
                        .lock(format!("bench/{pid}/tp-lucky/{t}/{n}"))
                        .no_wait()
                        .await
                        .unwrap();
                    g.release().await.unwrap();
                }) as Cycle
            }),
        ),
        (
            "lucky fenced",
            Arc::new(move |t, n| {
                let l = lf.clone();
                Box::pin(async move {
                    let g = l
                        .lock(format!("bench/{pid}/tp-fenced/{t}/{n}"))
                        .no_wait()
                        .await
                        .unwrap();
                    g.release().await.unwrap();
                }) as Cycle
            }),
        ),
        (
            "rslock",
            Arc::new(move |t, n| {
                let r = r.clone();
                Box::pin(async move {
                    let name = format!("bench/{pid}/tp-rslock/{t}/{n}");
                    let lock = r
                        .lock(name.as_bytes(), Duration::from_secs(30))
                        .await
                        .unwrap();
                    r.unlock(&lock).await;
                }) as Cycle
            }),
        ),
    ];
    // Serial acquire+release latency: one cycle of each case in turn (task number 1000 keeps
    // the keys apart from the throughput runs'), so every case sees the same moments.
    let serial = serial_p50s(2_000, 1_000, &cases).await;
    let floor = serial[0];
    let ratio = |d: Duration| d.as_secs_f64() / floor.as_secs_f64();
    let serial_vs_floor = ratio(serial[1]);
    println!(
        "serial acquire+release p50: floor {floor:?}, lucky {:?} ({serial_vs_floor:.2}x floor), lucky fenced {:?} ({:.2}x), rslock {:?} ({:.2}x floor)",
        serial[1],
        serial[2],
        ratio(serial[2]),
        serial[3],
        ratio(serial[3])
    );

    let rounds = 5;
    let tp = throughput_rounds(32, rounds, secs() * cases.len() as u32, &cases).await;
    let floor = &tp[0];
    for case in &tp {
        println!(
            "32 tasks, distinct names, {}: {:.0}/s ({:.2}x floor), client CPU {:.1} us/cycle ({:.2}x floor)",
            case.name,
            case.rate(),
            case.ratio(floor),
            case.cpu().as_secs_f64() * 1e6,
            case.cpu().as_secs_f64() / floor.cpu().as_secs_f64()
        );
    }
    let (parallel_vs_floor, rslock_vs_floor) = (tp[1].ratio(floor), tp[3].ratio(floor));

    // Contended hand-off: 8 tasks, one name, hold 1 ms, ask again at once.
    let mut contended = None;
    for (label, use_lucky) in [("lucky", true), ("rslock", false)] {
        let name = format!("bench/{pid}/handoff-{label}");
        let end = Instant::now() + secs();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (l, r, name) = (locks.clone(), rsl.clone(), name.clone());
                tokio::spawn(async move {
                    let mut waits = Vec::new();
                    while Instant::now() < end {
                        let t = Instant::now();
                        if use_lucky {
                            let Ok(g) = l.lock(&name).wait(secs() * 2).await else {
                                continue;
                            };
                            waits.push(t.elapsed());
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            g.release().await.unwrap();
                        } else {
                            let lock = loop {
                                if let Ok(lock) =
                                    r.lock(name.as_bytes(), Duration::from_secs(10)).await
                                {
                                    break lock;
                                }
                            };
                            waits.push(t.elapsed());
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            r.unlock(&lock).await;
                        }
                    }
                    waits
                })
            })
            .collect();
        let h = Handoff::join(handles).await;
        println!("{}", h.line("8 tasks on one name, hold 1 ms", label));
        if use_lucky {
            contended = Some(h);
        }
    }
    // The same across processes: each process wakes only its own longest waiter, so the
    // woken waiters of different processes race for the quorum.
    let procs = tokio::task::spawn_blocking(move || {
        handoff_processes(4, 2, &format!("bench/{pid}/handoff-procs"))
    })
    .await
    .unwrap();
    println!(
        "{}",
        procs.line("4 processes x 2 tasks on one name, hold 1 ms", "lucky")
    );
    let Handoff {
        p99, max, fairness, ..
    } = contended.unwrap_or_default();
    println!(
        "summary serial_vs_floor={serial_vs_floor:.2} parallel_vs_floor={parallel_vs_floor:.2} rslock_parallel_vs_floor={rslock_vs_floor:.2} contended_p99_ms={:.2} contended_max_ms={:.2} fairness={fairness:.2}",
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}
