//! The etcd adapter against a real etcd (`scripts/services.sh start`, 127.0.0.1:2379, or
//! `LUCKY_ETCD_ENDPOINTS`), and real faults on an etcd process of the test's own (SIGSTOP,
//! kill, restart). Skips when etcd is absent, unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap and read the clock

use std::future::IntoFuture as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use lucky::etcd::{guarded_put, lock_key, Error, Etcd};
use lucky::{NodeOutcome, UsageError};
use lucky_tests::servers::{etcd_available, etcd_endpoints, EtcdProcess};

fn unique(name: &str) -> String {
    format!("lucky-test/{name}/{}", std::process::id())
}

async fn setup() -> Option<(Vec<String>, Etcd, Client)> {
    let endpoints = etcd_endpoints();
    if !etcd_available(&endpoints).await {
        return None;
    }
    let etcd = Etcd::connect(&endpoints).await.unwrap();
    let raw = Client::connect(&endpoints, None).await.unwrap();
    Some((endpoints, etcd, raw))
}

async fn keys_under(raw: &mut Client, name: &str) -> Vec<(String, i64)> {
    let r = raw
        .get(format!("{name}/"), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.create_revision()))
        .collect()
}

/// The lease of a key written on a shared session: `<name>/<lease hex>_<lock>_<attempt>`.
fn session_lease(name: &str, key: &str) -> i64 {
    let rest = key.strip_prefix(&format!("{name}/")).unwrap();
    let mut parts = rest.split('_');
    let lease = i64::from_str_radix(parts.next().unwrap(), 16).unwrap();
    assert_eq!(parts.count(), 2, "{key}");
    lease
}

async fn lease_alive(raw: &mut Client, lease: i64) -> bool {
    raw.lease_time_to_live(lease, None).await.unwrap().ttl() > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_on_the_session_lease_and_the_fence_its_create_revision() {
    let Some((_, etcd, mut raw)) = setup().await else {
        return;
    };
    let name = unique("layout");
    let guard = etcd.lock(&name).ttl(Duration::from_secs(5)).await.unwrap();
    assert!(guard.is_held());
    let left = guard.valid_until() - Instant::now();
    assert!(
        left > Duration::from_secs(4) && left <= Duration::from_secs(5),
        "{left:?}"
    );
    let keys = keys_under(&mut raw, &name).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (key, rev) = &keys[0];
    let lease = session_lease(&name, key);
    assert!(
        lease_alive(&mut raw, lease).await,
        "the key is on a live lease"
    );
    assert_eq!(guard.fence().unwrap().get(), u64::try_from(*rev).unwrap());
    // The guard knows its key: a guarded write needs no lookup first.
    assert_eq!(guard.key(), Some(key.as_bytes()));
    assert!(lucky::etcd::guarded_put(
        &mut raw,
        guard.key().unwrap(),
        guard.fence().unwrap().get(),
        format!("{name}-data"),
        "v"
    )
    .await
    .unwrap());
    let outcome = guard.release().await.unwrap();
    assert_eq!(outcome, vec![NodeOutcome::Granted]);
    // The released name's key goes; the session (and its lease) stays for the next lock.
    assert!(keys_under(&mut raw, &name).await.is_empty());
    assert!(
        lease_alive(&mut raw, lease).await,
        "the session's lease went"
    );
    assert!(etcd.close(Duration::from_secs(5)).await);
    assert!(
        !lease_alive(&mut raw, lease).await,
        "close() left the lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_lease_per_lock_the_key_is_name_slash_lease_hex() {
    let Some((endpoints, _, mut raw)) = setup().await else {
        return;
    };
    let etcd = Etcd::builder(&endpoints)
        .lease_per_lock(true)
        .connect()
        .await
        .unwrap();
    let name = unique("layout-per-lock");
    let guard = etcd.lock(&name).ttl(Duration::from_secs(5)).await.unwrap();
    let keys = keys_under(&mut raw, &name).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (key, rev) = &keys[0];
    let lease_hex = key.strip_prefix(&format!("{name}/")).unwrap();
    let lease = i64::from_str_radix(lease_hex, 16).unwrap();
    assert!(
        lease_alive(&mut raw, lease).await,
        "the key is on a live lease"
    );
    assert_eq!(guard.fence().unwrap().get(), u64::try_from(*rev).unwrap());
    guard.release().await.unwrap();
    assert!(keys_under(&mut raw, &name).await.is_empty());
    assert!(etcd.close(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_acquisitions_give_strictly_increasing_fences_on_one_session_lease() {
    let Some((_, etcd, mut raw)) = setup().await else {
        return;
    };
    let name = unique("fences");
    let mut fences = Vec::new();
    let mut leases = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let g = etcd.lock(&name).ttl(Duration::from_secs(10)).await.unwrap();
        fences.push(g.fence().unwrap().get());
        leases.insert(session_lease(
            &name,
            &keys_under(&mut raw, &name).await[0].0,
        ));
        g.release().await.unwrap();
    }
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
    // The session's lease served every acquisition.
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(etcd.close(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_held_locks_share_one_lease_and_close_leaves_nothing() {
    let Some((_, etcd, mut raw)) = setup().await else {
        return;
    };
    let base = unique("many");
    let names: Vec<String> = (0..300).map(|i| format!("{base}/{i}")).collect();
    let guards = futures_util_join(&etcd, &names).await;
    let mut leases = std::collections::BTreeSet::new();
    for name in &names {
        let keys = keys_under(&mut raw, name).await;
        assert_eq!(keys.len(), 1, "{name}: {keys:?}");
        leases.insert(session_lease(name, &keys[0].0));
    }
    assert_eq!(leases.len(), 1, "300 locks, one lease: {leases:?}");
    let lease = *leases.iter().next().unwrap();
    // Held past two of their 2 s lease terms by the session's keepalives alone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(guards.iter().all(|g| g.is_held()));
    for (i, g) in guards.into_iter().enumerate() {
        if i % 2 == 0 {
            g.release().await.unwrap();
        } else {
            drop(g);
        }
    }
    // Through the backend-independent `Locker` (as `lucky exec` closes): the same clean-up.
    assert!(lucky::Locker::close(&etcd, Duration::from_secs(10)).await);
    assert!(
        !lease_alive(&mut raw, lease).await,
        "close() left the lease"
    );
    for name in &names {
        assert!(keys_under(&mut raw, name).await.is_empty(), "{name}");
    }
}

/// Takes a 2 s lock on every name at once.
async fn futures_util_join(etcd: &Etcd, names: &[String]) -> Vec<lucky::Guard> {
    let tasks: Vec<_> = names
        .iter()
        .map(|n| {
            let etcd = etcd.clone();
            let n = n.clone();
            tokio::spawn(async move { etcd.lock(&n).ttl(Duration::from_secs(2)).await })
        })
        .collect();
    let mut guards = Vec::new();
    for t in tasks {
        guards.push(t.await.unwrap().unwrap());
    }
    guards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tries_on_a_shared_session_leave_no_key_and_no_guard() {
    let Some((endpoints, etcd, mut raw)) = setup().await else {
        return;
    };
    let name = unique("failed-tries");
    let other = Etcd::connect(&endpoints).await.unwrap();
    let holder = other.lock(&name).await.unwrap();
    for _ in 0..50 {
        let e = etcd.lock(&name).no_wait().await.unwrap_err();
        assert!(e.is_taken(), "{e}");
    }
    // Only the holder's key: each failed try's key went with it.
    let keys = keys_under(&mut raw, &name).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    // Each take was answered, so each key was deleted at its revision: no guard was written
    // on the session's lease for them (guards are for takes whose outcome is unknown).
    let guards = raw
        .get(
            format!("\0lucky/abandoned/{name}/"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(guards, 0, "failed tries left guards on the session lease");
    assert!(etcd.close(Duration::from_secs(5)).await);
    holder.release().await.unwrap();
    assert!(other.close(Duration::from_secs(5)).await);
    assert!(keys_under(&mut raw, &name).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_the_release_not_by_polling() {
    let Some((endpoints, etcd, _)) = setup().await else {
        return;
    };
    let name = unique("handoff");
    let holder = etcd.lock(&name).await.unwrap();
    let other = Etcd::connect(&endpoints).await.unwrap();
    let n = name.clone();
    let waiter = tokio::spawn(async move {
        let g = other.lock(&n).wait(Duration::from_secs(30)).await.unwrap();
        (Instant::now(), g.fence())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the waiter got a held lock");
    let released = Instant::now();
    let f0 = holder.fence();
    holder.release().await.unwrap();
    let (got, f1) = waiter.await.unwrap();
    // Polling would wait out a retry delay (50-250 ms) or the 30 s watch re-check; the
    // watch answers in about one round trip.
    let gap = got.saturating_duration_since(released);
    assert!(gap < Duration::from_millis(1_000), "hand-off took {gap:?}");
    assert!(f1 > f0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lucky_and_etcdctl_lock_exclude_each_other() {
    let Some((endpoints, etcd, _)) = setup().await else {
        return;
    };
    let name = unique("interop");
    let etcdctl = |secs: &str| {
        let mut c = std::process::Command::new("timeout");
        c.args([
            secs,
            "etcdctl",
            "--endpoints",
            &endpoints.join(","),
            "lock",
            &name,
        ])
        .args(["--", "echo", "inside"])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        c
    };
    // Lucky holds: etcdctl waits (and is killed by `timeout` before it gets in).
    let guard = etcd.lock(&name).await.unwrap();
    let mut cmd = etcdctl("2");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("inside"));
    guard.release().await.unwrap();
    // Free: etcdctl gets in at once.
    let mut cmd = etcdctl("10");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("inside"));
    // etcdctl holds (sleeping inside the lock): Lucky is refused.
    let mut holder = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            &endpoints.join(","),
            "lock",
            &name,
            "--",
            "sleep",
            "3",
        ])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let err = etcd.lock(&name).no_wait().await.unwrap_err();
    assert!(err.is_taken(), "{err}");
    // ... and gets it once etcdctl is done.
    let g = etcd
        .lock(&name)
        .wait(Duration::from_secs(10))
        .await
        .unwrap();
    let _ = holder.wait();
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_acquisition_leaves_nothing_behind() {
    let Some((_, etcd, mut raw)) = setup().await else {
        return;
    };
    let name = unique("cancel");
    let holder = etcd.lock(&name).await.unwrap();
    let queued = etcd.lock(&name).wait_forever().into_future();
    assert!(tokio::time::timeout(Duration::from_millis(500), queued)
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let keys = keys_under(&mut raw, &name).await;
    assert_eq!(
        keys.len(),
        1,
        "the cancelled waiter's key is gone: {keys:?}"
    );
    holder.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_put_writes_only_while_the_lock_is_ours() {
    let Some((_, etcd, mut raw)) = setup().await else {
        return;
    };
    let name = unique("guarded");
    let data = format!("{name}-data");
    let guard = etcd.lock(&name).await.unwrap();
    let fence = guard.fence().unwrap().get();
    let key = lock_key(&mut raw, &name, fence).await.unwrap().unwrap();
    assert!(guarded_put(&mut raw, &key, fence, data.clone(), "one")
        .await
        .unwrap());
    guard.release().await.unwrap();
    // A stale holder (its key deleted) cannot write.
    assert!(!guarded_put(&mut raw, &key, fence, data.clone(), "two")
        .await
        .unwrap());
    let v = raw.get(data.clone(), None).await.unwrap();
    assert_eq!(v.kvs()[0].value(), b"one");
    raw.delete(data, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_error() {
    let Some((endpoints, etcd, _)) = setup().await else {
        return;
    };
    assert!(matches!(
        etcd.lock("").await.unwrap_err(),
        Error::Usage(UsageError::EmptyKey)
    ));
    assert!(matches!(
        etcd.lock("x").ttl(Duration::ZERO).await.unwrap_err(),
        Error::Usage(UsageError::TtlZero)
    ));
    let e = Etcd::connect(["redis://127.0.0.1:2379"]).await.unwrap_err();
    assert!(e.to_string().contains("bad etcd address"), "{e}");
    assert_eq!(e.kind(), lucky::ErrorKind::Usage, "{e}");
    let e = Etcd::connect(Vec::<String>::new()).await.unwrap_err();
    assert_eq!(e.kind(), lucky::ErrorKind::Usage, "{e}");
    // Nothing listens on port 1: a clear error, quickly.
    let t = Instant::now();
    let e = Etcd::builder(["http://127.0.0.1:1"])
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Wrong credentials on a server without auth are accepted by etcd; a password never
    // shows in Debug output.
    let b = Etcd::builder(&endpoints).user("root", "s3cret-pw");
    assert!(!format!("{b:?}").contains("s3cret-pw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_etcd_beyond_the_ttl_fires_lost_at_the_deadline() {
    let Some(mut server) = EtcdProcess::start(23_790) else {
        return;
    };
    let etcd = Etcd::builder([server.endpoint()])
        .op_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let name = unique("sigstop");
    let guard = etcd.lock(&name).ttl(Duration::from_secs(2)).await.unwrap();
    let f0 = guard.fence().unwrap();
    // Keepalives carry the lock past its 2 s lease.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(guard.is_held(), "keepalives did not extend the lock");
    server.pause();
    let paused = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("lost() fired");
    let fired = Instant::now();
    assert!(!guard.is_held());
    assert!(fired >= guard.valid_until(), "lost before the deadline");
    assert!(
        fired.duration_since(paused) < Duration::from_secs(3),
        "lost() fired {:?} after the pause, past a 2 s lease",
        fired.duration_since(paused)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.resume();
    // After the pause the lease is gone on the server too; another client acquires with a
    // higher fence.
    let other = Etcd::connect([server.endpoint()]).await.unwrap();
    let g = other
        .lock(&name)
        .ttl(Duration::from_secs(2))
        .wait(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(g.fence().unwrap() > f0);
    g.release().await.unwrap();
    drop(guard);
    // Killed: a clear unreachable error, bounded by the request timeout; restarted: works,
    // and fences keep growing (the data survived).
    server.kill();
    let e = etcd.lock(&name).no_wait().await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(server.restart());
    let g = etcd
        .lock(&name)
        .wait(Duration::from_secs(15))
        .await
        .unwrap();
    assert!(g.fence().unwrap() > f0);
    g.release().await.unwrap();
}

/// Found by the chaos harness (etcd rows: guards handed out already ended, deadline at the
/// clock's epoch). A failed try's machine goes back to the client's pool after its task
/// released it; that release answered `Released`, which the task did not read before it
/// ended, so the next acquisition on the name ended its own hold with it before it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_after_a_failed_try_on_the_same_name_is_held() {
    let Some((endpoints, etcd, _raw)) = setup().await else {
        return;
    };
    let other = Etcd::connect(&endpoints).await.unwrap();
    let name = unique("after-failed-try");
    for round in 0..12 {
        let holder = other.lock(&name).await.unwrap();
        // The same options both times (a machine is reused only for the same options), and
        // a one-shot try: it ends with nothing in flight, so its task hands the machine back.
        let e = etcd.lock(&name).no_wait().await.unwrap_err();
        assert!(e.is_taken(), "{e}");
        // The failed try's task hands its machine back to the pool, sooner or later.
        tokio::time::sleep(Duration::from_millis([0, 1, 5, 20, 100, 300][round % 6])).await;
        holder.release().await.unwrap();
        let guard = etcd.lock(&name).no_wait().await.unwrap();
        assert!(
            guard.is_held() && guard.valid_until() > Instant::now(),
            "round {round}: a fresh guard reads as ended (valid until {:?} from now)",
            guard.valid_until().checked_duration_since(Instant::now())
        );
        guard.release().await.unwrap();
    }
}

/// One of etcd's own gauges, read from its `/metrics` page on `port`.
fn etcd_gauge(port: u16, name: &str) -> f64 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in etcd's metrics"))
}

/// Polls `gauge` until `ok` holds (5 s at most); returns its last reading.
async fn gauge_until(port: u16, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let mut v = etcd_gauge(port, name);
    for _ in 0..100 {
        if ok(v) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        v = etcd_gauge(port, name);
    }
    v
}

/// The waiting locks of a client share one watch stream (etcd's own gauges say how many
/// streams and watchers it serves); a waiter that gives up cancels its watch on the server,
/// and so does a waiter woken by the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_one_watch_stream_and_cancel_their_watches() {
    let Some(server) = EtcdProcess::start(23_798) else {
        return;
    };
    let port = server.port;
    let holder = Etcd::connect([server.endpoint()]).await.unwrap();
    let names: Vec<String> = (0..40)
        .map(|i| unique(&format!("shared-watch-{i}")))
        .collect();
    let mut held = Vec::new();
    for n in &names {
        held.push(holder.lock(n).await.unwrap());
    }
    let waiter = std::sync::Arc::new(Etcd::connect([server.endpoint()]).await.unwrap());
    let mut waiting = Vec::new();
    for n in &names {
        let (w, n) = (waiter.clone(), n.clone());
        waiting.push(tokio::spawn(async move {
            w.lock(&n).wait(Duration::from_secs(30)).await
        }));
    }
    let watchers = gauge_until(port, "etcd_debugging_mvcc_watcher_total", |v| v >= 40.0).await;
    assert_eq!(watchers, 40.0, "one watcher per waiting lock");
    let streams = etcd_gauge(port, "etcd_debugging_mvcc_watch_stream_total");
    assert_eq!(
        streams, 1.0,
        "40 waiters of one client on {streams} watch streams"
    );
    // Ten give up: their watches go from the server.
    for w in waiting.drain(30..) {
        w.abort();
        assert!(w.await.unwrap_err().is_cancelled());
    }
    let watchers = gauge_until(port, "etcd_debugging_mvcc_watcher_total", |v| v <= 30.0).await;
    assert_eq!(watchers, 30.0, "the abandoned waiters' watches stayed");
    // The releases wake the rest, each with a higher fence, and their watches go too.
    let top = held.iter().filter_map(lucky::Guard::fence).max().unwrap();
    for g in held {
        g.release().await.unwrap();
    }
    let mut got = Vec::new();
    for w in waiting {
        let g = w.await.unwrap().unwrap();
        assert!(g.fence().unwrap() > top);
        got.push(g);
    }
    let watchers = gauge_until(port, "etcd_debugging_mvcc_watcher_total", |v| v == 0.0).await;
    assert_eq!(watchers, 0.0, "answered watches stayed on the server");
    for g in got {
        g.release().await.unwrap();
    }
    assert!(waiter.close(Duration::from_secs(5)).await);
    assert!(holder.close(Duration::from_secs(5)).await);
}
