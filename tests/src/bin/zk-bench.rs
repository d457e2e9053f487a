//! Lucky's ZooKeeper lock against the floor (the recipe's three requests sent raw on the same
//! session: create the ephemeral-sequential node, list the directory, delete the node), the
//! `zookeeper-client` crate's own Curator-style `lock`, and kazoo's `Lock` (Python, in its own
//! process), in the same run, on the standalone server of `scripts/services.sh start`
//! (127.0.0.1:2181). Run: `cargo run --release -p lucky-tests --bin zk-bench`
//! (`LUCKY_BENCH_SECS`, default 3). The last line is a machine-readable summary.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a benchmark reads the clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use lucky::zookeeper::ZooKeeper;
use lucky_tests::bench::{secs, serial_p50s, Case, Cycle, Handoff};
use zookeeper_client::{Acls, Client, CreateMode, LockPrefix};

/// The server: `LUCKY_ZK_SERVER`, default the standalone server of `scripts/services.sh`.
fn server() -> String {
    std::env::var("LUCKY_ZK_SERVER").unwrap_or_else(|_| "127.0.0.1:2181".to_owned())
}

/// The floor: the recipe's requests, raw, on the same session Lucky uses.
async fn raw_cycle(c: &Client, dir: &str, prefix: &str) {
    let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let (_, seq) = c.create(prefix, b"", &opts).await.unwrap();
    let children = c.list_children(dir).await.unwrap();
    assert!(!children.is_empty());
    c.delete(&format!("{prefix}{seq}"), None).await.unwrap();
}

/// The `zookeeper-client` crate's lock (Curator's node names). The crate deletes the node
/// in the background when its `LockClient` drops; a read of the directory after it (answered
/// after the delete, in the session's order) makes the cycle end when the release has, as the
/// others' do, instead of charging the delete to the next case's cycle.
async fn crate_cycle(c: &Client, dir: &str) {
    let prefix = LockPrefix::new_curator(dir, "lock-").unwrap();
    let lock = c.lock(prefix, b"", Acls::anyone_all()).await.unwrap();
    drop(lock);
    c.check_stat(dir).await.unwrap();
}

/// kazoo's serial acquire+release p50 (µs) on its own session, from
/// `tests/interop/kazoo_lock.py`; None when python3 or kazoo is missing.
fn kazoo_p50(path: &str, cycles: usize) -> Option<Duration> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/kazoo_lock.py");
    let out = std::process::Command::new("python3")
        .args([script, &server(), path, "bench", &cycles.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let us = text
        .split_whitespace()
        .find_map(|f| f.strip_prefix("p50_us="))?
        .parse()
        .ok()?;
    Some(Duration::from_micros(us))
}

fn main() {
    lucky_tests::bench::runtime().block_on(run());
}

async fn run() {
    let server = server();
    let Ok(zk) = ZooKeeper::builder([server.as_str()])
        .standalone()
        .ttl(Duration::from_secs(30))
        .connect()
        .await
    else {
        eprintln!("skipping: ZooKeeper at {server} not reachable (scripts/services.sh start)");
        return;
    };
    let raw = zk.client().await.unwrap();
    let pid = std::process::id();
    println!(
        "ZooKeeper lock, one local standalone server, {:?} per hand-off run",
        secs()
    );

    // Serial acquire+release of one name on a warm session, the cases one cycle each in turn.
    let dirs = [
        format!("/lucky/bench/{pid}/serial-raw"),
        format!("/lucky/bench/{pid}/serial-crate"),
    ];
    for d in &dirs {
        raw.mkdir(d, &CreateMode::Persistent.with_acls(Acls::anyone_all()))
            .await
            .unwrap();
    }
    let raw_prefix = format!("{}/_c_{:036}-lock-", dirs[0], 0);
    let lucky_name = format!("bench/{pid}/serial-lucky");
    let (c1, c2, z) = (raw.clone(), raw.clone(), zk.clone());
    let (d0, d1) = (dirs[0].clone(), dirs[1].clone());
    let cases: Vec<Case> = vec![
        (
            "floor",
            Arc::new(move |_, _| {
                let (c, dir, prefix) = (c1.clone(), d0.clone(), raw_prefix.clone());
                Box::pin(async move { raw_cycle(&c, &dir, &prefix).await }) as Cycle
            }),
        ),
        (
            "lucky",
            Arc::new(move |_, _| {
                let (z, name) = (z.clone(), lucky_name.clone());
                Box::pin(async move {
                    let g = z.lock(&name).no_wait().await.unwrap();
                    g.release().await.unwrap();
                }) as Cycle
            }),
        ),
        (
            "zookeeper-client",
            Arc::new(move |_, _| {
                let (c, dir) = (c2.clone(), d1.clone());
                Box::pin(async move { crate_cycle(&c, &dir).await }) as Cycle
            }),
        ),
    ];
    let serial = serial_p50s(1_000, 0, &cases).await;
    let (floor, lucky, krate) = (serial[0], serial[1], serial[2]);
    let vs_floor = lucky.as_secs_f64() / floor.as_secs_f64();
    let crate_vs_floor = krate.as_secs_f64() / floor.as_secs_f64();
    let kazoo = tokio::task::spawn_blocking(move || {
        kazoo_p50(&format!("/lucky/bench/{pid}/serial-kazoo"), 1_000)
    })
    .await
    .unwrap();
    let kazoo_vs_lucky = kazoo.map_or(0.0, |k| k.as_secs_f64() / lucky.as_secs_f64());
    // The most any client of this recipe can gain on kazoo here: the floor's own lead.
    let kazoo_vs_floor = kazoo.map_or(0.0, |k| k.as_secs_f64() / floor.as_secs_f64());
    println!(
        "serial acquire+release p50: floor (create, list, delete raw) {floor:?}, lucky {lucky:?} ({vs_floor:.2}x floor), zookeeper-client lock {krate:?} ({crate_vs_floor:.2}x floor), kazoo Lock {} (lucky {kazoo_vs_lucky:.2}x faster; the floor {kazoo_vs_floor:.2}x)",
        kazoo.map_or_else(|| "not run (no python3/kazoo)".to_owned(), |k| format!("{k:?}"))
    );

    // Contended hand-off: 8 tasks of one client on one name, hold 1 ms, ask again at once;
    // then 8 clients of their own (8 sessions, as 8 processes would be).
    let mut results = Vec::new();
    for label in ["lucky", "zookeeper-client", "lucky, 8 clients"] {
        let name = format!("bench/{pid}/handoff-{label}");
        let dir = format!("/lucky/{name}");
        if label != "lucky" {
            raw.mkdir(&dir, &CreateMode::Persistent.with_acls(Acls::anyone_all()))
                .await
                .unwrap();
        }
        let end = Instant::now() + secs();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (z, c, name, dir) = (zk.clone(), raw.clone(), name.clone(), dir.clone());
                let server = server.clone();
                tokio::spawn(async move {
                    let own = if label == "lucky, 8 clients" {
                        let own = ZooKeeper::builder([server.as_str()])
                            .standalone()
                            .ttl(Duration::from_secs(30))
                            .connect()
                            .await
                            .unwrap();
                        // Open its session before the clock starts.
                        own.client().await.unwrap();
                        Some(own)
                    } else {
                        None
                    };
                    let z = own.unwrap_or(z);
                    let mut waits = Vec::new();
                    while Instant::now() < end {
                        let t = Instant::now();
                        if label != "zookeeper-client" {
                            let g = z.lock(&name).wait(secs() * 4).await.unwrap();
                            waits.push(t.elapsed());
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            g.release().await.unwrap();
                        } else {
                            let prefix = LockPrefix::new_curator(&dir, "lock-").unwrap();
                            let lock = c.lock(prefix, b"", Acls::anyone_all()).await.unwrap();
                            waits.push(t.elapsed());
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            drop(lock);
                            c.check_stat(&dir).await.unwrap();
                        }
                    }
                    waits
                })
            })
            .collect();
        let h = Handoff::join(handles).await;
        println!("{}", h.line("8 tasks on one name, hold 1 ms", label));
        results.push(h);
    }
    let _ = raw
        .delete(&format!("/lucky/bench/{pid}/serial-raw"), None)
        .await;
    let _ = raw
        .delete(&format!("/lucky/bench/{pid}/serial-crate"), None)
        .await;
    let (l, k, o) = (&results[0], &results[1], &results[2]);
    println!(
        "summary serial_vs_floor={vs_floor:.2} kazoo_vs_lucky={kazoo_vs_lucky:.2} kazoo_vs_floor={kazoo_vs_floor:.2} zookeeper_client_vs_floor={crate_vs_floor:.2} contended_acquisitions={} contended_p99_ms={:.2} contended_max_ms={:.2} fairness={:.2} zookeeper_client_contended_acquisitions={} zookeeper_client_p99_ms={:.2} zookeeper_client_fairness={:.2} own_sessions_contended_acquisitions={} own_sessions_p99_ms={:.2} own_sessions_fairness={:.2}",
        l.n,
        l.p99.as_secs_f64() * 1e3,
        l.max.as_secs_f64() * 1e3,
        l.fairness,
        k.n,
        k.p99.as_secs_f64() * 1e3,
        k.fairness,
        o.n,
        o.p99.as_secs_f64() * 1e3,
        o.fairness
    );
    zk.close(Duration::from_secs(5)).await;
}
