//! The Redis adapter against real redis-server nodes (`scripts/services.sh start`; URLs from
//! `LUCKY_REDIS_URLS`). Skips when the nodes are absent, unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap and read the clock

use std::future::IntoFuture as _;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lucky::redis::{Error, Redis};
use lucky::{NodeOutcome, UsageError};
use lucky_tests::servers::{redis_available, redis_urls};

fn unique(name: &str) -> String {
    format!("lucky-test/{name}/{}", std::process::id())
}

/// The test nodes and a client on them, or None (the test is skipped) when they are absent.
async fn setup() -> Option<(Vec<String>, Redis)> {
    let urls = redis_urls();
    if !redis_available(&urls).await {
        return None;
    }
    let locks = Redis::connect(&urls).await.unwrap();
    Some((urls, locks))
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get(url: &str, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut raw(url).await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_holds_the_key_on_every_node_and_release_deletes_it() {
    let Some((urls, locks)) = setup().await else {
        return;
    };
    let name = unique("basic");
    let guard = locks.lock(&name).ttl(Duration::from_secs(5)).await.unwrap();
    assert!(guard.is_held());
    let left = guard.valid_until() - std::time::Instant::now();
    assert!(
        left > Duration::from_secs(4) && left <= Duration::from_secs(5),
        "{left:?}"
    );
    // Acquired once a quorum answered; the other nodes' SETs land right after.
    let mut values = Vec::new();
    for _ in 0..100 {
        values.clear();
        for u in &urls {
            values.extend(get(u, &name).await);
        }
        if values.len() == urls.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(values.len(), urls.len(), "key set on every reachable node");
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "one value on every node"
    );
    assert!(values[0].len() >= 32, "the value carries a 128-bit token");
    let outcome = guard.release().await.unwrap();
    assert!(
        outcome.iter().all(|o| *o == NodeOutcome::Granted),
        "{outcome:?}"
    );
    for u in &urls {
        assert_eq!(get(u, &name).await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_taken_for_others_and_free_after_release() {
    let Some((_, locks)) = setup().await else {
        return;
    };
    let name = unique("taken");
    let guard = locks.lock(&name).await.unwrap();
    let err = locks.lock(&name).no_wait().await.unwrap_err();
    assert!(err.is_taken(), "{err}");
    assert!(!err.is_unreachable());
    // A waiter gets it once the holder releases.
    let locks2 = locks.clone();
    let name2 = name.clone();
    let waiter =
        tokio::spawn(async move { locks2.lock(&name2).wait(Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    guard.release().await.unwrap();
    let g2 = waiter.await.unwrap().unwrap();
    g2.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contending_tasks_never_overlap() {
    let Some((_, locks)) = setup().await else {
        return;
    };
    let name = unique("contend");
    let inside = Arc::new(AtomicBool::new(false));
    let entries = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (locks, name, inside, entries) =
            (locks.clone(), name.clone(), inside.clone(), entries.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let g = locks
                    .lock(&name)
                    .retry(Duration::from_millis(1), Duration::from_millis(10))
                    .wait(Duration::from_secs(20))
                    .await
                    .unwrap();
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                entries.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.store(false, Ordering::SeqCst);
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(entries.load(Ordering::SeqCst), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_plain_set_nx() {
    let Some((urls, locks)) = setup().await else {
        return;
    };
    // A lock taken with plain SET NX PX (as redsync / node-redlock / rslock do) excludes Lucky.
    let name = unique("interop-a");
    for u in &urls {
        let _: Option<String> = redis::cmd("SET")
            .arg(&name)
            .arg("their-token")
            .arg("NX")
            .arg("PX")
            .arg(10_000)
            .query_async(&mut raw(u).await)
            .await
            .unwrap();
    }
    assert!(locks.lock(&name).no_wait().await.unwrap_err().is_taken());
    for u in &urls {
        assert_eq!(
            get(u, &name).await.as_deref(),
            Some(&b"their-token"[..]),
            "theirs untouched"
        );
    }
    // And Lucky's lock excludes a plain SET NX.
    let name = unique("interop-b");
    let g = locks.lock(&name).await.unwrap();
    for u in &urls {
        let r: Option<String> = redis::cmd("SET")
            .arg(&name)
            .arg("their-token")
            .arg("NX")
            .arg("PX")
            .arg(10_000)
            .query_async(&mut raw(u).await)
            .await
            .unwrap();
        assert_eq!(r, None);
    }
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_releases_in_the_background_and_cancel_releases_what_it_took() {
    let Some((urls, locks)) = setup().await else {
        return;
    };
    let name = unique("drop");
    let g = locks
        .lock(&name)
        .ttl(Duration::from_secs(30))
        .await
        .unwrap();
    drop(g);
    // Far sooner than the 30 s ttl, the lock is free again.
    let g = locks
        .lock(&name)
        .wait(Duration::from_secs(2))
        .await
        .unwrap();
    // Cancel a waiter mid-flight: it must leave nothing behind.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        locks.lock(&name).wait_forever().into_future(),
    )
    .await;
    assert!(cancelled.is_err(), "the waiter cannot have acquired");
    g.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for u in &urls {
        assert_eq!(get(u, &name).await, None, "nothing left on {u}");
    }
}

async fn pttl(url: &str, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut raw(url).await)
        .await
        .unwrap()
}

/// Polls until `key` is gone from every node (false after 2 s).
async fn gone_everywhere(urls: &[String], key: &str) -> bool {
    for _ in 0..200 {
        let mut any = false;
        for u in urls {
            any |= get(u, key).await.is_some();
        }
        if !any {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_without_auto_extension_runs_no_task_and_still_extends_expires_and_releases() {
    let Some((urls, locks)) = setup().await else {
        return;
    };
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    // Warm the connections (they run tasks of their own) before counting.
    locks
        .lock(unique("manual-warm"))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let base = tasks();

    // Held with no task; a manual extension moves the deadline and the keys' ttl.
    let name = unique("manual");
    let g = locks
        .lock(&name)
        .ttl(Duration::from_millis(2_000))
        .auto_extend(false)
        .await
        .unwrap();
    assert_eq!(
        tasks(),
        base,
        "a lock without auto-extension spawns no task"
    );
    let first = g.valid_until();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extended = g.extend().await.unwrap();
    assert!(
        extended >= first + Duration::from_millis(250),
        "{extended:?} vs {first:?}"
    );
    assert_eq!(g.valid_until(), extended);
    for u in &urls {
        let left = pttl(u, &name).await;
        assert!(
            left > 1_800,
            "the key's ttl was renewed on {u}: {left} ms left"
        );
    }
    g.release().await.unwrap();
    assert!(gone_everywhere(&urls, &name).await);

    // Dropped: released in the background. (The task the extension above started ends once
    // its release is answered and the guard is gone; under load that takes a moment. A task
    // of the new lock would stay while it is held, and fail this.)
    let g = locks.lock(&name).auto_extend(false).await.unwrap();
    let settle = std::time::Instant::now() + Duration::from_secs(2);
    while tasks() != base && std::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        tasks(),
        base,
        "a lock without auto-extension spawns no task"
    );
    drop(g);
    assert!(
        gone_everywhere(&urls, &name).await,
        "drop released the lock"
    );

    // Not extended: lost() fires at the deadline; an extension then is refused.
    let g = locks
        .lock(&name)
        .ttl(Duration::from_millis(300))
        .auto_extend(false)
        .await
        .unwrap();
    let deadline = g.valid_until();
    g.lost().await;
    assert!(std::time::Instant::now() >= deadline && !g.is_held());
    let err = g.extend().await.unwrap_err();
    assert!(matches!(err, lucky::Error::Lost), "{err:?}");
    assert_eq!(err.kind(), lucky::ErrorKind::Lost);
    g.release().await.unwrap();
    assert!(gone_everywhere(&urls, &name).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_extension_keeps_the_lock_past_its_ttl() {
    let Some((_, locks)) = setup().await else {
        return;
    };
    let name = unique("extend");
    let g = locks
        .lock(&name)
        .ttl(Duration::from_millis(300))
        .await
        .unwrap();
    let first = g.valid_until();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(g.is_held(), "still held after more than two ttls");
    assert!(g.valid_until() > first + Duration::from_millis(300));
    assert!(locks.lock(&name).no_wait().await.unwrap_err().is_taken());
    g.release().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_a_clear_error() {
    let e = Redis::connect(["http://127.0.0.1:7001"]).await.unwrap_err();
    assert!(matches!(e, Error::BadEndpoint { .. }), "{e}");
    assert_eq!(e.kind(), lucky::ErrorKind::Usage);
    let e = Redis::connect(["redis://:s3cret@127.0.0.1:1"])
        .await
        .unwrap_err();
    assert!(!e.to_string().contains("s3cret"), "password leaked: {e}");
    assert!(
        !format!("{e:?}").contains("s3cret"),
        "password leaked: {e:?}"
    );
    let none: [&str; 0] = [];
    assert!(matches!(
        Redis::connect(none).await.unwrap_err(),
        Error::Usage(UsageError::NoNodes)
    ));
    let dup = ["redis://127.0.0.1:7001", "redis://127.0.0.1:7001"];
    assert!(matches!(
        Redis::connect(dup).await.unwrap_err(),
        Error::Usage(UsageError::DuplicateNode { .. })
    ));
    // Unreachable nodes: a clear error, quickly, no hang.
    let t = std::time::Instant::now();
    let e = Redis::builder([
        "redis://127.0.0.1:1",
        "redis://127.0.0.1:2",
        "redis://127.0.0.1:3",
    ])
    .connect_timeout(Duration::from_millis(300))
    .connect()
    .await
    .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn bad_lock_requests_are_usage_errors() {
    let Some((_, locks)) = setup().await else {
        return;
    };
    let e = locks.lock("").await.unwrap_err();
    assert!(matches!(e, Error::Usage(UsageError::EmptyKey)), "{e}");
    let e = locks.lock("x".repeat(600)).await.unwrap_err();
    assert!(
        matches!(e, Error::Usage(UsageError::KeyTooLong { .. })),
        "{e}"
    );
    let e = locks.lock("k").ttl(Duration::ZERO).await.unwrap_err();
    assert!(matches!(e, Error::Usage(UsageError::TtlZero)), "{e}");
    let e = locks
        .lock("k")
        .ttl(Duration::from_secs(86_400 * 400))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Usage(UsageError::TtlTooLarge { .. })),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_the_release_not_by_its_retry_timer() {
    let Some((_, locks)) = setup().await else {
        return;
    };
    let name = unique("wake");
    let g = locks.lock(&name).await.unwrap();
    let waiter = {
        let (locks, name) = (locks.clone(), name.clone());
        tokio::spawn(async move {
            // Retries 10 s apart: only the release notification can hand it the lock sooner.
            let g = locks
                .lock(&name)
                .retry(Duration::from_secs(10), Duration::ZERO)
                .wait(Duration::from_secs(30))
                .await
                .unwrap();
            let at = std::time::Instant::now();
            g.release().await.unwrap();
            at
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = std::time::Instant::now();
    g.release().await.unwrap();
    let acquired = waiter.await.unwrap();
    assert!(
        acquired - released < Duration::from_secs(5),
        "woken by the timer, not the release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_strictly_increase_across_holders() {
    let Some((urls, locks)) = setup().await else {
        return;
    };
    let other = Redis::connect(&urls).await.unwrap();
    let name = unique("fence");
    let mut last = 0;
    for i in 0..50 {
        let client = if i % 2 == 0 { &locks } else { &other };
        let g = client.lock(&name).await.unwrap();
        let f = g.fence().expect("fencing is on by default").get();
        assert!(f > last, "fence {f} after {last}");
        last = f;
        g.release().await.unwrap();
    }
    let unfenced = locks.lock(&name).fencing(false).await.unwrap();
    assert_eq!(unfenced.fence(), None);
    unfenced.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_cannot_overwrite_a_newer_holders_data() {
    let Some((urls, locks)) = setup().await else {
        return;
    };
    let name = unique("fenced-write");
    let data_key = format!("{name}/data");
    let mut resource = raw(&urls[0]).await;
    // A holds the lock and writes (twice: the same fence may write again).
    let a = locks
        .lock(&name)
        .ttl(Duration::from_millis(300))
        .auto_extend(false)
        .await
        .unwrap();
    let fa = a.fence().unwrap();
    assert!(
        lucky::redis::fenced_set(&mut resource, data_key.as_bytes(), b"a1", fa)
            .await
            .unwrap()
    );
    assert!(
        lucky::redis::fenced_set(&mut resource, data_key.as_bytes(), b"a2", fa)
            .await
            .unwrap()
    );
    // A stalls past its lease; B takes the lock and writes with a higher fence.
    a.lost().await;
    let b = locks
        .lock(&name)
        .wait(Duration::from_secs(2))
        .await
        .unwrap();
    let fb = b.fence().unwrap();
    assert!(fb > fa);
    assert!(
        lucky::redis::fenced_set(&mut resource, data_key.as_bytes(), b"b1", fb)
            .await
            .unwrap()
    );
    // A wakes up and tries to write: rejected, B's data stays.
    assert!(
        !lucky::redis::fenced_set(&mut resource, data_key.as_bytes(), b"a3", fa)
            .await
            .unwrap()
    );
    assert_eq!(get(&urls[0], &data_key).await.as_deref(), Some(&b"b1"[..]));
    b.release().await.unwrap();
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_from_the_servers_are_sent_again() {
    let Some((urls, locks)) = setup().await else {
        return;
    };
    // Every node forgets its cached scripts: EVALSHA answers NOSCRIPT, the adapter falls back
    // to EVAL (which caches them again).
    for u in &urls {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut raw(u).await)
            .await
            .unwrap();
    }
    let name = unique("noscript");
    let g = locks.lock(&name).await.unwrap();
    assert!(g.fence().is_some(), "the fenced acquire script ran");
    g.extend().await.unwrap();
    assert_eq!(
        g.release().await.unwrap(),
        vec![NodeOutcome::Granted; urls.len()]
    );
    assert!(get(&urls[0], &name).await.is_none());
}

/// `close()` waits for the background clean-ups a process leaves when it drops its guards:
/// right after it returns, no dropped guard's key is left on any node. A guard still held
/// keeps its renewal task, so `close()` then reports, at its timeout, that work remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_the_releases_of_dropped_guards() {
    let Some((urls, locks)) = setup().await else {
        return;
    };
    let names: Vec<String> = (0..8).map(|i| unique(&format!("close-{i}"))).collect();
    for (i, name) in names.iter().enumerate() {
        // Both ways a guard lives: parked in the guard (no renewal) and in a renewal task.
        let g = locks.lock(name).auto_extend(i % 2 == 0).await.unwrap();
        drop(g); // released in the background
    }
    assert!(
        locks.close(Duration::from_secs(5)).await,
        "clean-ups finished"
    );
    for name in &names {
        for u in &urls {
            assert!(get(u, name).await.is_none(), "{name} left on {u}");
        }
    }
    let held = locks.lock(unique("close-held")).await.unwrap();
    assert!(
        !locks.close(Duration::from_millis(200)).await,
        "a held lock's renewal task is still running"
    );
    held.release().await.unwrap();
    assert!(locks.close(Duration::from_secs(5)).await);
}

/// Back-pressure: a burst of 10 000 `no_wait` acquisitions on distinct names, all started at
/// once on one client, all succeed (without the client's bound on first attempts in flight,
/// nearly all of them timed out in the client's own queue); released and closed, no lock key
/// is left on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ten_thousand_acquisitions_is_served_not_failed() {
    let Some((urls, _)) = setup().await else {
        return;
    };
    let locks = Redis::builder(&urls)
        .ttl(Duration::from_secs(6))
        .fencing(false)
        .connect()
        .await
        .unwrap();
    let prefix = unique("burst");
    let handles: Vec<_> = (0..10_000)
        .map(|i| {
            let (l, name) = (locks.clone(), format!("{prefix}/{i}"));
            tokio::spawn(async move { l.lock(name).no_wait().await })
        })
        .collect();
    let mut guards = Vec::new();
    let mut failed = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            Ok(g) => guards.push(g),
            Err(e) => failed.push(e.to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(guards.iter().all(lucky::Guard::is_held));
    let releases: Vec<_> = guards
        .into_iter()
        .map(|g| tokio::spawn(async move { g.release().await }))
        .collect();
    for r in releases {
        r.await.unwrap().unwrap();
    }
    assert!(locks.close(Duration::from_secs(30)).await);
    for u in &urls {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}/*"))
            .query_async(&mut raw(u).await)
            .await
            .unwrap();
        assert!(keys.is_empty(), "{u}: {} keys left", keys.len());
    }
}
