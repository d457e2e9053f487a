//! The ZooKeeper adapter under real faults: a session closed under the holder by a second
//! connection with its id and password, a holder cut off until the server expires its
//! session (connections reset by a proxy of the test's own), a server
//! killed and restarted within the session timeout, an ensemble losing the member the holder
//! is connected to, and one losing its quorum. The ensemble and the restarted server are the
//! test's own (ports 25182 and 25191-25193), so the shared servers of `scripts/services.sh`
//! are never harmed. Skips when ZooKeeper is absent, unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap and read the clock

use std::time::{Duration, Instant};

use lucky::zookeeper::ZooKeeper;
use lucky_tests::proxy::CutProxy;
use lucky_tests::servers::{zk_available, zk_close_session, ZkServer};

fn unique(name: &str) -> String {
    format!("test/{name}/{}", std::process::id())
}

/// The children of the lock directory `/lucky/<name>`, read by `other`.
async fn children(other: &zookeeper_client::Client, name: &str) -> Vec<String> {
    match other.list_children(&format!("/lucky/{name}")).await {
        Ok(mut v) => {
            v.sort();
            v
        }
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_past_its_session_is_lost_before_the_server_expires_it_to_the_next() {
    if !zk_available(2181) {
        return;
    }
    let ttl = Duration::from_secs(3);
    let proxy = CutProxy::start("127.0.0.1:2181").await.unwrap();
    let connect = |addr: String| async move {
        ZooKeeper::builder([addr])
            .standalone()
            .ttl(ttl)
            .connect()
            .await
            .unwrap()
    };
    // a reaches the server through the proxy, b directly.
    let a = connect(proxy.address.clone()).await;
    let b = connect("127.0.0.1:2181".to_owned()).await;
    let name = unique("cut-off");
    let ga = a.lock(&name).await.unwrap();
    let fa = ga.fence().unwrap().get();
    let first = a.session_id().unwrap();
    let waiter = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move {
            let g = b.lock(&name).wait(Duration::from_secs(20)).await;
            (g, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "b waits while a holds");

    // The partition: a's connection is reset and its reconnects refused. The server
    // expires a's session once it has heard nothing for the session timeout, deletes its
    // node, and b's watch fires.
    proxy.cut();
    let cut = Instant::now();
    tokio::time::timeout(ttl + Duration::from_secs(1), ga.lost())
        .await
        .expect("a stops trusting the lock by its deadline");
    let lost_at = Instant::now();
    let (gb, taken_at) = waiter.await.unwrap();
    let gb = gb.unwrap();
    eprintln!(
        "a lost {:?} after the cut, b took over {:?} after it",
        lost_at - cut,
        taken_at - cut
    );
    assert!(
        lost_at <= taken_at,
        "a trusted the lock {:?} past b's takeover",
        lost_at - taken_at
    );
    assert!(lost_at - cut <= ttl, "lost within the session timeout");
    assert!(gb.fence().unwrap().get() > fa, "the next fence is higher");
    assert!(!ga.is_held());

    // Healed: a's old session is expired; releasing the lost lock returns and touches
    // nothing of b's, and a locks again on a new session once b is done.
    proxy.heal();
    let _ = tokio::time::timeout(Duration::from_secs(5), ga.release())
        .await
        .expect("releasing a lost lock returns");
    assert!(gb.is_held());
    assert_eq!(children(&b.client().await.unwrap(), &name).await.len(), 1);
    gb.release().await.unwrap();
    let ga2 = a.lock(&name).wait(Duration::from_secs(10)).await.unwrap();
    assert_ne!(a.session_id(), Some(first), "a new session");
    ga2.release().await.unwrap();
    assert!(children(&b.client().await.unwrap(), &name).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_by_a_second_client_loses_the_lock_and_the_next_fence_is_higher() {
    if !zk_available(2181) {
        return;
    }
    let ttl = Duration::from_secs(20);
    let connect = || async move {
        ZooKeeper::builder(["127.0.0.1:2181"])
            .standalone()
            .ttl(ttl)
            .connect()
            .await
            .unwrap()
    };
    let (a, b) = (connect().await, connect().await);
    let name = unique("session-closed");
    let ga = a.lock(&name).await.unwrap();
    let fa = ga.fence().unwrap().get();
    let first = a.session_id().unwrap();
    let waiter = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move {
            let g = b.lock(&name).wait(Duration::from_secs(20)).await;
            (g, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "b waits while a holds");

    // Another connection takes a's session over with its id and password and closes it:
    // the server deletes a's node at once, long before a's deadline.
    let closed = Instant::now();
    tokio::task::spawn_blocking(move || zk_close_session(2181, first, ttl))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), ga.lost())
        .await
        .expect("a learns its session is gone well before its 20 s deadline");
    let lost_at = Instant::now();
    // The session ended early, which no fault of ZooKeeper's own does: a notices at the
    // next check of its node, every touch_every (ttl/10 = 2 s); the next holder may hold
    // the lock meanwhile, which is what its higher fence is for.
    assert!(
        lost_at - closed <= Duration::from_millis(2_500),
        "noticed within touch_every: {:?}",
        lost_at - closed
    );
    let (gb, taken_at) = waiter.await.unwrap();
    let gb = gb.unwrap();
    eprintln!(
        "a lost {:?} after its session was closed, b took over {:?} after it",
        lost_at - closed,
        taken_at - closed
    );
    assert!(!ga.is_held());
    assert!(gb.fence().unwrap().get() > fa, "the next fence is higher");
    let _ = tokio::time::timeout(Duration::from_secs(5), ga.release())
        .await
        .expect("releasing a lost lock returns");
    assert!(gb.is_held(), "a's release touched nothing of b's");
    gb.release().await.unwrap();
    // a's client opens a new session for its next lock.
    let ga2 = a.lock(&name).wait(Duration::from_secs(10)).await.unwrap();
    assert_ne!(a.session_id(), Some(first), "a new session");
    ga2.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_and_restarted_within_the_session_timeout_keeps_the_lock() {
    let Some(mut server) = ZkServer::start(25182) else {
        return;
    };
    let addr = server.address();
    let a = ZooKeeper::builder([addr.as_str()])
        .standalone()
        .ttl(Duration::from_secs(15))
        .connect()
        .await
        .unwrap();
    let name = unique("restart");
    let ga = a.lock(&name).await.unwrap();
    let (fa, session) = (ga.fence().unwrap().get(), a.session_id().unwrap());
    server.kill();
    let killed = Instant::now();
    server.restart();
    server.serving();
    eprintln!("restarted in {:?}", killed.elapsed());
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "JVM start-up too slow for the test"
    );
    // The session is restored from the server's log with a fresh timeout; the client
    // reconnects to it and its answers prove the session again.
    let probe = ZooKeeper::builder([addr.as_str()])
        .standalone()
        .ttl(Duration::from_secs(15))
        .connect()
        .await
        .unwrap();
    let nodes = children(&probe.client().await.unwrap(), &name).await;
    assert_eq!(nodes.len(), 1, "our node survived the restart: {nodes:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(ga.is_held(), "the lock outlived the restart");
    assert!(
        ga.valid_until() > Instant::now() + Duration::from_secs(10),
        "validity renewed by answers after the restart"
    );
    assert_eq!(a.session_id(), Some(session), "the same session");
    // Another client still cannot take it, and the holder's fence is unchanged.
    let err = probe.lock(&name).no_wait().await.unwrap_err();
    assert_eq!(err.kind(), lucky::ErrorKind::Taken, "{err}");
    assert_eq!(ga.fence().unwrap().get(), fa);
    ga.release().await.unwrap();
    let gp = probe.lock(&name).no_wait().await.unwrap();
    assert!(gp.fence().unwrap().get() > fa);
    gp.release().await.unwrap();
}

/// A client of the test's ensemble: tickTime 100 ms, syncLimit 5, session `ttl`.
async fn ensemble_client(members: &[ZkServer], ttl: Duration) -> ZooKeeper {
    let addrs: Vec<String> = members.iter().map(ZkServer::address).collect();
    ZooKeeper::builder(addrs)
        .ensemble(Duration::from_millis(100), 5)
        .ttl(ttl)
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_keeps_the_lock_when_the_holders_member_dies_and_loses_it_with_the_quorum() {
    let Some(mut members) = ZkServer::ensemble([25191, 25192, 25193]) else {
        return;
    };
    let ttl = Duration::from_secs(6);
    let a = ensemble_client(&members, ttl).await;
    let name = unique("member-killed");
    let ga = a.lock(&name).await.unwrap();
    let fa = ga.fence().unwrap().get();
    let session = a.session_id().unwrap();
    let on = members
        .iter()
        .position(|m| m.sessions().contains(&session))
        .expect("the holder's session is on one member");

    // 1. The member the holder talks to dies: the client moves to another member within
    //    the session timeout, the session and the lock live on.
    members[on].kill();
    let killed = Instant::now();
    tokio::time::sleep(ttl + Duration::from_secs(2)).await;
    assert!(
        ga.is_held(),
        "the lock outlived its member by {:?}",
        killed.elapsed()
    );
    assert!(ga.valid_until() > Instant::now(), "and is still trusted");
    assert_eq!(a.session_id(), Some(session));
    let survivor = (0..3).find(|&i| i != on).unwrap();
    let b = ZooKeeper::builder([members[survivor].address()])
        .ensemble(Duration::from_millis(100), 5)
        .ttl(ttl)
        .connect()
        .await
        .unwrap();
    let err = b.lock(&name).no_wait().await.unwrap_err();
    assert_eq!(err.kind(), lucky::ErrorKind::Taken, "{err}");
    drop(b);
    members[on].restart();
    members[on].serving();

    // 2. Two of three members die: no quorum, no answers; the holder stops trusting the
    //    lock by its deadline, at most the session timeout after its last proof.
    let deadline = ga.valid_until();
    assert!(deadline <= Instant::now() + ttl);
    let alive = members
        .iter()
        .position(|m| m.sessions().contains(&session))
        .unwrap_or(0);
    for (i, m) in members.iter_mut().enumerate() {
        if i != alive {
            m.kill();
        }
    }
    let cut = Instant::now();
    // No one else acquires while the quorum is gone.
    // (A member without a quorum opens no session: connecting fails as unreachable.)
    let lone = ZooKeeper::builder([members[alive].address()])
        .ensemble(Duration::from_millis(100), 5)
        .ttl(ttl)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    let acquired = match lone {
        Ok(lone) => lone.lock(&name).wait(Duration::from_secs(2)).await.is_ok(),
        Err(e) => {
            assert_eq!(e.kind(), lucky::ErrorKind::Unreachable, "{e}");
            false
        }
    };
    assert!(!acquired, "acquired without a quorum");
    tokio::time::timeout(ttl + Duration::from_secs(1), ga.lost())
        .await
        .expect("lost once the quorum is gone");
    let lost_after = cut.elapsed();
    eprintln!("lost {lost_after:?} after the quorum went");
    assert!(
        lost_after <= ttl + Duration::from_millis(200),
        "lost by the deadline: {lost_after:?}"
    );
    assert!(!ga.is_held());
    // The quorum back, the session (expired on the new leader's clock) and its node go; the
    // next holder's fence is higher.
    for (i, m) in members.iter_mut().enumerate() {
        if i != alive {
            m.restart();
        }
    }
    for m in &mut members {
        m.serving();
    }
    let c = ensemble_client(&members, ttl).await;
    let gc = c.lock(&name).wait(Duration::from_secs(30)).await.unwrap();
    assert!(gc.fence().unwrap().get() > fa);
    gc.release().await.unwrap();
    drop(ga);
}
