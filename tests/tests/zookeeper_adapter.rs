//! The ZooKeeper adapter against real ZooKeeper servers: the standalone server and the
//! three-member ensemble of `scripts/services.sh start` (127.0.0.1:2181, 127.0.0.1:2281-2283),
//! and a private server of the test's own for real faults (SIGSTOP past the session timeout).
//! Skips when ZooKeeper is absent, unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap and read the clock

use std::time::{Duration, Instant};

use lucky::zookeeper::ZooKeeper;
use lucky::UsageError;
use lucky_tests::servers::{zk_available, ZkServer};

fn unique(name: &str) -> String {
    format!("test/{name}/{}", std::process::id())
}

async fn standalone(addr: &str, timeout: Duration) -> ZooKeeper {
    ZooKeeper::builder([addr])
        .standalone()
        .ttl(timeout)
        .connect()
        .await
        .unwrap()
}

/// The children of the lock directory `/lucky/<name>`.
async fn queue(zk: &ZooKeeper, name: &str) -> Vec<String> {
    let c = zk.client().await.unwrap();
    match c.list_children(&format!("/lucky/{name}")).await {
        Ok(mut v) => {
            v.sort();
            v
        }
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_curators_layout_the_fence_is_the_czxid_and_rises() {
    if !zk_available(2181) {
        return;
    }
    let a = standalone("127.0.0.1:2181", Duration::from_secs(10)).await;
    let b = standalone("127.0.0.1:2181", Duration::from_secs(10)).await;
    let name = unique("layout");
    let ga = a.lock(&name).await.unwrap();
    let nodes = queue(&a, &name).await;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node = &nodes[0];
    // _c_<uuid>-lock-<10 digits>, as Curator's protected mode names it.
    assert!(
        node.starts_with("_c_") && node.len() == 3 + 36 + 6 + 10,
        "{node}"
    );
    assert_eq!(&node[3 + 36..3 + 36 + 6], "-lock-", "{node}");
    let stat = a
        .client()
        .await
        .unwrap()
        .check_stat(&format!("/lucky/{name}/{node}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ga.fence().unwrap().get(),
        u64::try_from(stat.czxid).unwrap()
    );
    assert_eq!(stat.ephemeral_owner, a.session_id().unwrap());
    let left = ga.valid_until() - Instant::now();
    assert!(
        left > Duration::from_secs(8) && left <= Duration::from_secs(10),
        "{left:?}"
    );

    // b queues behind a, and gets the lock when a releases, with a higher fence.
    let wait = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move { b.lock(&name).wait(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(queue(&a, &name).await.len(), 2);
    assert!(!wait.is_finished(), "b waits while a holds");
    let fa = ga.fence().unwrap().get();
    ga.release().await.unwrap();
    let gb = wait.await.unwrap().unwrap();
    assert!(gb.fence().unwrap().get() > fa);
    gb.release().await.unwrap();
    assert!(queue(&a, &name).await.is_empty(), "released nodes are gone");
    assert!(a.close(Duration::from_secs(5)).await && b.close(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_wait_try_on_a_held_lock_leaves_no_node() {
    if !zk_available(2181) {
        return;
    }
    let a = standalone("127.0.0.1:2181", Duration::from_secs(10)).await;
    let b = standalone("127.0.0.1:2181", Duration::from_secs(10)).await;
    let name = unique("no-wait");
    let ga = a.lock(&name).await.unwrap();
    let err = b.lock(&name).no_wait().await.unwrap_err();
    assert_eq!(err.kind(), lucky::ErrorKind::Taken, "{err}");
    assert_eq!(
        queue(&a, &name).await.len(),
        1,
        "the failed try's node is gone"
    );
    ga.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ensemble_hands_the_lock_over_with_rising_fences() {
    if !zk_available(2281) {
        return;
    }
    let servers = ["127.0.0.1:2281", "127.0.0.1:2282", "127.0.0.1:2283"];
    // services.sh's ensemble: tickTime 200 ms, syncLimit 5.
    let connect = || async {
        ZooKeeper::builder(servers)
            .ensemble(Duration::from_millis(200), 5)
            .ttl(Duration::from_secs(6))
            .connect()
            .await
            .unwrap()
    };
    let (a, b) = (connect().await, connect().await);
    let name = unique("ensemble");
    let mut last = 0;
    for i in 0..6 {
        let zk = if i % 2 == 0 { &a } else { &b };
        let g = zk.lock(&name).wait(Duration::from_secs(10)).await.unwrap();
        let f = g.fence().unwrap().get();
        assert!(f > last, "fence {f} after {last}");
        last = f;
        // The session proof leaves most of the timeout: 6 s - margins (2 ticks + the lag
        // of 6 ticks and 200 ms) - drift.
        assert!(g.valid_until() > Instant::now() + Duration::from_secs(2));
        g.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_past_the_session_loses_the_holder_and_the_next_fence_is_higher() {
    let Some(server) = ZkServer::start(25181) else {
        return;
    };
    let addr = server.address();
    let a = standalone(&addr, Duration::from_secs(2)).await;
    let name = unique("stopped");
    let ga = a.lock(&name).await.unwrap();
    let fa = ga.fence().unwrap().get();
    let first = a.session_id().unwrap();
    let stopped = Instant::now();
    server.stop_signal();
    // The holder stops trusting the lock by its deadline: at most the session timeout
    // after the last answer.
    tokio::time::timeout(Duration::from_secs(3), ga.lost())
        .await
        .expect("lost within the session timeout");
    assert!(
        stopped.elapsed() <= Duration::from_millis(2_100),
        "{:?}",
        stopped.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.cont();
    // Resumed, the server expires the stale session and deletes its node.
    let b = standalone(&addr, Duration::from_secs(2)).await;
    let gb = b.lock(&name).wait(Duration::from_secs(10)).await.unwrap();
    assert!(gb.fence().unwrap().get() > fa);
    gb.release().await.unwrap();
    // a's client opens a new session and locks again.
    let ga2 = a.lock(&name).wait(Duration::from_secs(10)).await.unwrap();
    assert_ne!(a.session_id(), Some(first), "a new session");
    ga2.release().await.unwrap();
    drop(ga);
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_sent() {
    let err = ZooKeeper::builder(Vec::<String>::new())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), lucky::ErrorKind::Usage, "{err}");
    let err = ZooKeeper::builder(["127.0.0.1:2181"])
        .root("locks")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err, lucky::Error::Usage(UsageError::BadName { .. })),
        "{err}"
    );
    let err = ZooKeeper::builder(["127.0.0.1:2181"])
        .ttl(Duration::from_secs(3))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err, lucky::Error::Usage(UsageError::SessionTooShort { .. })),
        "{err}"
    );
    if !zk_available(2181) {
        return;
    }
    let zk = standalone("127.0.0.1:2181", Duration::from_secs(10)).await;
    for bad in ["", "/a", "a/", "a//b", "a/../b", "a\u{1}"] {
        let err = zk.lock(bad).no_wait().await.unwrap_err();
        assert_eq!(err.kind(), lucky::ErrorKind::Usage, "{bad:?}: {err}");
    }
    // A lock of another ttl lives on a session of that timeout.
    let g = zk
        .lock(unique("other-ttl"))
        .ttl(Duration::from_secs(5))
        .await
        .unwrap();
    let left = g.valid_until() - Instant::now();
    assert!(
        left > Duration::from_secs(4) && left <= Duration::from_secs(5),
        "{left:?}"
    );
    g.release().await.unwrap();
}
