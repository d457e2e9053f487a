//! The in-memory backend: the lease-record machine against a process-local table, through the
//! same client shape and `Guard` as every backend. Time is tokio's paused clock where leases
//! must run out, so these tests are deterministic and take no wall time.

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lucky::memory::Memory;
use lucky::{ErrorKind, UsageError};

#[tokio::test(start_paused = true)]
async fn a_held_lock_is_taken_for_others_and_fences_rise_across_releases() {
    let locks = Memory::new();
    let a = locks
        .lock("job")
        .ttl(Duration::from_secs(10))
        .await
        .unwrap();
    let err = locks.lock("job").no_wait().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Taken, "{err}");
    let fa = a.fence().unwrap().get();
    a.release().await.unwrap();
    let b = locks.lock("job").no_wait().await.unwrap();
    assert!(
        b.fence().unwrap().get() > fa,
        "the fence rises after a release"
    );
    // Another name draws from the same counter: fences never go back, even for new names.
    let c = locks.lock("other").no_wait().await.unwrap();
    assert_eq!(locks.held(), 2);
    assert!(c.fence().unwrap().get() > b.fence().unwrap().get());
    b.release().await.unwrap();
    c.release().await.unwrap();
    assert!(locks.close(Duration::from_secs(1)).await);
    assert_eq!(locks.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lease_not_renewed_runs_out_on_the_paused_clock() {
    let locks = Memory::new();
    let g = locks
        .lock("job")
        .ttl(Duration::from_secs(2))
        .auto_extend(false)
        .await
        .unwrap();
    let fence = g.fence().unwrap().get();
    let deadline = g.valid_until();
    assert!(g.is_held());
    // Virtual time: lost() resolves once the lease ran out on tokio's paused clock.
    let before = tokio::time::Instant::now();
    g.lost().await;
    assert!(!g.is_held());
    assert!(tokio::time::Instant::now().into_std() >= deadline);
    assert!(tokio::time::Instant::now() - before >= Duration::from_millis(1_900));
    let err = g.extend().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    let next = locks.lock("job").no_wait().await.unwrap();
    assert!(next.fence().unwrap().get() > fence);
    next.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn auto_renewal_keeps_a_lock_for_many_ttls() {
    let locks = Memory::new();
    let g = locks.lock("job").ttl(Duration::from_secs(3)).await.unwrap();
    let first = g.valid_until();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(g.is_held(), "renewed every ttl/3 for ten ttls");
    assert!(g.valid_until() > first);
    assert!(locks.lock("job").no_wait().await.unwrap_err().is_taken());
    g.release().await.unwrap();
    assert!(locks.lock("job").no_wait().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let locks = Memory::new();
    let holder = locks
        .lock("job")
        .ttl(Duration::from_secs(60))
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (locks, order) = (locks.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = locks
                .lock("job")
                .ttl(Duration::from_secs(60))
                .wait(Duration::from_secs(600))
                .await
                .unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(1)).await;
            g.release().await.unwrap();
        }));
        // Each queues before the next arrives.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn an_acquisition_dropped_while_waiting_leaves_nothing_behind() {
    let locks = Memory::new();
    let holder = locks
        .lock("job")
        .ttl(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(locks.held(), 1);
    let waiting = locks.lock("job").wait(Duration::from_secs(60));
    // Give up after a while: the future is dropped mid-wait.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), waiting.into_future())
            .await
            .is_err()
    );
    holder.release().await.unwrap();
    assert!(locks.close(Duration::from_secs(5)).await);
    assert_eq!(locks.held(), 0);
    // And the next one gets it at once.
    locks
        .lock("job")
        .no_wait()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_input_is_a_usage_error_and_sends_nothing() {
    let locks = Memory::new();
    let e = locks.lock("").await.unwrap_err();
    assert!(
        matches!(e, lucky::Error::Usage(UsageError::EmptyKey)),
        "{e}"
    );
    let e = locks.lock("x").ttl(Duration::ZERO).await.unwrap_err();
    assert!(matches!(e, lucky::Error::Usage(UsageError::TtlZero)), "{e}");
    let e = locks
        .lock("x")
        .ttl(Duration::from_secs(400 * 24 * 3600))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    let e = locks.lock("x".repeat(600)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    assert_eq!(locks.held(), 0);
}
