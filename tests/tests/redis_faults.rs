//! Real faults on real redis-server processes: each test starts five nodes of its own and
//! stops (SIGSTOP), kills and restarts them. Skips when redis-server is not installed, unless
//! `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap and read the clock

use std::time::{Duration, Instant};

use lucky::redis::Redis;
use lucky_tests::servers::RedisProcess;

fn cluster(base: u16) -> Option<Vec<RedisProcess>> {
    (0..5).map(|i| RedisProcess::start(base + i)).collect()
}

fn urls(nodes: &[RedisProcess]) -> Vec<String> {
    nodes.iter().map(RedisProcess::url).collect()
}

async fn client(nodes: &[RedisProcess]) -> Redis {
    Redis::builder(urls(nodes))
        .ttl(Duration::from_secs(2))
        .node_timeout(Duration::from_millis(100))
        .retry(Duration::from_millis(20), Duration::from_millis(20))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_costs_at_most_the_per_node_timeout() {
    let Some(nodes) = cluster(7111) else { return };
    let locks = client(&nodes).await;
    nodes[0].pause();
    // With auto-extension (the hold runs in a task) and without (the guard drives the release).
    for auto in [true, false] {
        let t = Instant::now();
        let g = locks
            .lock("stopped")
            .auto_extend(auto)
            .no_wait()
            .await
            .unwrap();
        let took = t.elapsed();
        // 4 of 5 answer at once; the stopped one is not waited for (quorum decided early).
        assert!(took < Duration::from_millis(500), "took {took:?}");
        // The release waits for the stopped node no longer than the per-node timeout.
        let t = Instant::now();
        let outcome = g.release().await.unwrap();
        let took = t.elapsed();
        assert!(took < Duration::from_millis(500), "release took {took:?}");
        assert_eq!(
            outcome[0],
            lucky::NodeOutcome::TimedOut,
            "auto_extend {auto}"
        );
        assert!(outcome[1..]
            .iter()
            .all(|o| *o == lucky::NodeOutcome::Granted));
    }
    // A release dropped midway (it waits for the stopped node) finishes in a task, in both
    // modes: a task runs on after the cut (the guard-driven release moves to one); it ends
    // once the stopped node, resumed, has answered its release, and the key is gone from
    // every node.
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    // The releases above left commands to the stopped node in flight (cleanup gets up to 5
    // s): let them finish before counting tasks.
    nodes[0].resume();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[0].pause();
    for auto in [false, true] {
        let name = format!("stopped-cancelled-{auto}");
        let base = tasks();
        let g = locks.lock(&name).auto_extend(auto).no_wait().await.unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(5), g.release()).await;
        assert!(cut.is_err(), "the release cannot finish in 5 ms");
        assert_eq!(
            tasks(),
            base + 1,
            "auto_extend {auto}: the release goes on in a task"
        );
        nodes[0].resume();
        let mut done = false;
        for _ in 0..100 {
            let mut left = 0;
            for n in &nodes {
                let mut c = redis::Client::open(n.url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let v: Option<String> = redis::cmd("GET")
                    .arg(&name)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                left += usize::from(v.is_some());
            }
            if left == 0 && tasks() == base {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            done,
            "auto_extend {auto}: the cancelled release did not finish"
        );
        nodes[0].pause();
    }
    nodes[0].resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_down_still_works_three_down_is_no_quorum_and_restart_recovers() {
    let Some(mut nodes) = cluster(7121) else {
        return;
    };
    let locks = client(&nodes).await;
    nodes[0].kill();
    nodes[1].kill();
    let g = locks.lock("quorum").no_wait().await.unwrap();
    g.release().await.unwrap();

    nodes[2].kill();
    let e = locks.lock("quorum").no_wait().await.unwrap_err();
    assert!(e.is_unreachable() && !e.is_taken(), "{e}");
    assert!(e.to_string().contains("no quorum"), "{e}");

    for n in &mut nodes[..3] {
        assert!(n.restart());
    }
    // Connections come back on their own.
    let mut acquired = false;
    for _ in 0..50 {
        if let Ok(g) = locks.lock("quorum").no_wait().await {
            g.release().await.unwrap();
            acquired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(acquired, "no recovery after restarting the nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_renewal_fires_lost_at_the_deadline_and_only_then_can_another_acquire() {
    let Some(nodes) = cluster(7131) else { return };
    let holder = client(&nodes).await;
    let other = client(&nodes).await;
    let g = holder
        .lock("renewal")
        .ttl(Duration::from_millis(1_000))
        .await
        .unwrap();
    // Let one extension happen, then stop a majority: renewal can no longer win.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for n in &nodes[..3] {
        n.pause();
    }
    let deadline = g.valid_until();
    g.lost().await;
    let lost_at = Instant::now();
    assert!(lost_at >= deadline, "lost {:?} early", deadline - lost_at);
    assert!(
        lost_at < deadline + Duration::from_millis(100),
        "lost {:?} late",
        lost_at - deadline
    );
    assert!(!g.is_held());
    for n in &nodes[..3] {
        n.resume();
    }
    // Another client gets the lock, but never before the holder's deadline.
    let g2 = other
        .lock("renewal")
        .wait(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(Instant::now() >= deadline);
    g2.release().await.unwrap();
    drop(g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_error_and_never_printed() {
    let Some(node) = RedisProcess::start_with(7141, &["--requirepass", "right-horse"]) else {
        return;
    };
    let wrong = format!("redis://:wrong-battery@127.0.0.1:{}", node.port);
    let e = Redis::builder([wrong])
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(e.is_unreachable(), "{e}");
    assert!(!shown.contains("wrong-battery"), "password leaked: {shown}");
    assert!(
        shown.to_lowercase().contains("auth") || shown.contains("WRONGPASS"),
        "{shown}"
    );
    let right = format!("redis://:right-horse@127.0.0.1:{}", node.port);
    let locks = Redis::connect([right]).await.unwrap();
    assert!(
        !format!("{locks:?}").contains("right-horse"),
        "password in Debug: {locks:?}"
    );
    locks.lock("auth").await.unwrap().release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_keep_increasing_across_a_node_restart() {
    let Some(mut nodes) = cluster(7151) else {
        return;
    };
    let locks = client(&nodes).await;
    let mut last = 0;
    for i in 0..50 {
        if i == 25 {
            assert!(nodes[1].restart()); // empty: its counter is gone
        }
        let g = locks
            .lock("fence")
            .wait(Duration::from_secs(5))
            .await
            .unwrap();
        let f = g.fence().unwrap().get();
        assert!(f > last, "fence {f} after {last} (iteration {i})");
        last = f;
        g.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_keep_increasing_when_every_node_restarts_empty() {
    let Some(mut nodes) = cluster(7171) else {
        return;
    };
    let locks = client(&nodes).await;
    let mut last = 0;
    for round in 0..3 {
        for i in 0..10 {
            let g = locks
                .lock("fence-wipe")
                .wait(Duration::from_secs(5))
                .await
                .unwrap();
            let f = g.fence().unwrap().get();
            assert!(f > last, "fence {f} after {last} (round {round}, {i})");
            last = f;
            g.release().await.unwrap();
        }
        // Every node forgets every key and counter: a counter alone would start again at 1.
        for n in &mut nodes {
            assert!(n.restart());
        }
    }
}
