//! Lucky's etcd adapter against the floor (a raw taking Txn and a Delete on a shared lease,
//! over the same etcd-client) and etcd's own server-side lock (the v3lock `Lock`/`Unlock`
//! RPCs via etcd-client, on a shared lease), in the same run, on the etcd of
//! `scripts/services.sh start`. Run: `cargo run --release -p lucky-tests --bin etcd-bench`
//! (`LUCKY_BENCH_SECS`, default 3). The last line is a machine-readable summary.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a benchmark reads the clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LockOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp,
};
use lucky::etcd::Etcd;
use lucky_tests::bench::{secs, serial_p50s, Case, Cycle, Handoff};

/// The floor: take `key` on `lease` if free (one Txn), then delete it.
/// The floor: Lucky's own two requests sent raw on a shared lease: the taking Txn (put if
/// absent, read the first-created key under the prefix) and the guarded delete Txn.
async fn raw_cycle(c: &mut Client, prefix: &str, key: &str, lease: i64) {
    let owner = TxnOp::get(
        prefix,
        Some(
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1),
        ),
    );
    let take = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(key, "", Some(PutOptions::new().with_lease(lease))),
            owner,
        ]);
    let r = c.txn(take).await.unwrap();
    let revision = r.header().map_or(0, |h| h.revision());
    let delete = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, revision)])
        .and_then([TxnOp::delete(key, None)]);
    c.txn(delete).await.unwrap();
}

fn main() {
    lucky_tests::bench::runtime().block_on(run());
}

async fn run() {
    let endpoint = std::env::var("LUCKY_ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned());
    let Ok(etcd) = Etcd::connect([&endpoint]).await else {
        eprintln!("skipping: etcd at {endpoint} not reachable (scripts/services.sh start)");
        return;
    };
    let mut raw = Client::connect([&endpoint], None).await.unwrap();
    let lease = raw.lease_grant(60, None).await.unwrap().id();
    let pid = std::process::id();
    println!(
        "etcd adapter, one local etcd member, {:?} per hand-off run",
        secs()
    );

    // Serial acquire+release of one name (a warm session, as a cron job or worker loop), the
    // three cases one cycle each in turn.
    let prefix = format!("bench/{pid}/serial-raw/");
    let key = format!("{prefix}{lease:x}");
    let (lucky_name, v3_name) = (
        format!("bench/{pid}/serial-lucky"),
        format!("bench/{pid}/serial-v3lock"),
    );
    let (c1, c2, e) = (raw.clone(), raw.clone(), etcd.clone());
    let cases: Vec<Case> = vec![
        (
            "floor",
            Arc::new(move |_, _| {
                let (mut c, prefix, key) = (c1.clone(), prefix.clone(), key.clone());
                Box::pin(async move { raw_cycle(&mut c, &prefix, &key, lease).await }) as Cycle
            }),
        ),
        (
            "lucky",
            Arc::new(move |_, _| {
                let (e, name) = (e.clone(), lucky_name.clone());
                Box::pin(async move {
                    let g = e.lock(&name).no_wait().await.unwrap();
                    g.release().await.unwrap();
                }) as Cycle
            }),
        ),
        (
            "v3lock",
            Arc::new(move |_, _| {
                let (mut c, name) = (c2.clone(), v3_name.clone());
                Box::pin(async move {
                    let r = c
                        .lock(name, Some(LockOptions::new().with_lease(lease)))
                        .await
                        .unwrap();
                    c.unlock(r.key()).await.unwrap();
                }) as Cycle
            }),
        ),
    ];
    let serial = serial_p50s(1_000, 0, &cases).await;
    let (floor, lucky, peer) = (serial[0], serial[1], serial[2]);
    let serial_vs_floor = lucky.as_secs_f64() / floor.as_secs_f64();
    let v3_vs_floor = peer.as_secs_f64() / floor.as_secs_f64();
    println!("serial acquire+release p50: floor (the same two Txns, raw) {floor:?}, lucky {lucky:?} ({serial_vs_floor:.2}x floor), etcd v3lock {peer:?} ({v3_vs_floor:.2}x floor)");

    // Contended hand-off: 8 tasks on one name, hold 1 ms, ask again at once.
    let mut results = Vec::new();
    for label in ["lucky", "v3lock"] {
        let name = format!("bench/{pid}/handoff-{label}");
        let end = Instant::now() + secs();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (e, mut c, name) = (etcd.clone(), raw.clone(), name.clone());
                tokio::spawn(async move {
                    // Each v3lock contender needs a lease of its own (one lease = one owner).
                    let own = c.lease_grant(60, None).await.unwrap().id();
                    let mut waits = Vec::new();
                    while Instant::now() < end {
                        let t = Instant::now();
                        if label == "lucky" {
                            let g = e.lock(&name).wait(secs() * 4).await.unwrap();
                            waits.push(t.elapsed());
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            g.release().await.unwrap();
                        } else {
                            let opts = LockOptions::new().with_lease(own);
                            let r = c.lock(name.clone(), Some(opts)).await.unwrap();
                            waits.push(t.elapsed());
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            c.unlock(r.key()).await.unwrap();
                        }
                    }
                    let _ = c.lease_revoke(own).await;
                    waits
                })
            })
            .collect();
        let h = Handoff::join(handles).await;
        println!("{}", h.line("8 tasks on one name, hold 1 ms", label));
        results.push(h);
    }
    let _ = raw.lease_revoke(lease).await;
    let (l, v) = (&results[0], &results[1]);
    println!(
        "summary serial_vs_floor={serial_vs_floor:.2} v3lock_serial_vs_floor={v3_vs_floor:.2} contended_acquisitions={} contended_p99_ms={:.2} contended_max_ms={:.2} fairness={:.2} v3lock_contended_acquisitions={} v3lock_p99_ms={:.2} v3lock_fairness={:.2}",
        l.n,
        l.p99.as_secs_f64() * 1e3,
        l.max.as_secs_f64() * 1e3,
        l.fairness,
        v.n,
        v.p99.as_secs_f64() * 1e3,
        v.fairness
    );
}
