//! MySQL/MariaDB `get_lock` mode against the MariaDB on this machine (`LUCKY_MYSQL_URL`,
//! default `mysql://root@127.0.0.1:3306/test`): Lucky and plain `GET_LOCK` on the same name
//! exclude each other (a name over 64 characters is `SHA2(name, 256)`); the holder's
//! connection killed by the server (`KILL`) is reported lost at the next probe while the
//! next holder gets a higher fence; a waiter is woken by the server. Names are drawn per run.
//! Skips when the server is absent unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::time::Duration;

use lucky::mysql::Mysql;
use lucky::ErrorKind;
use lucky_tests::servers::{required, unique};
use mysql_async::prelude::Queryable;

fn url() -> String {
    std::env::var("LUCKY_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A `get_lock` client with `ttl`, or None (skip) when the server is absent.
async fn client(ttl: Duration) -> Option<Mysql> {
    match Mysql::builder(&url()).get_lock().ttl(ttl).connect().await {
        Ok(c) => Some(c),
        Err(e) if e.kind() == ErrorKind::Unreachable => {
            assert!(
                !required(),
                "MySQL unreachable and LUCKY_REQUIRE_SERVERS=1: {e}"
            );
            eprintln!("skipping: MySQL unreachable: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// A plain connection, as the mysql client would hold it.
async fn plain() -> mysql_async::Conn {
    mysql_async::Conn::from_url(url()).await.unwrap()
}

async fn get_lock(c: &mut mysql_async::Conn, name: &str) -> bool {
    let r: Option<i64> = c
        .exec_first("SELECT GET_LOCK(?, 0)", (name,))
        .await
        .unwrap();
    r == Some(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lucky_and_plain_get_lock_exclude_each_other() {
    let Some(my) = client(Duration::from_secs(10)).await else {
        return;
    };
    let mut other = plain().await;
    let name = unique("x");
    let g = my.lock(name.as_str()).no_wait().await.unwrap();
    assert!(
        !get_lock(&mut other, &name).await,
        "GET_LOCK took a name Lucky holds"
    );
    g.release().await.unwrap();
    assert!(
        get_lock(&mut other, &name).await,
        "the name is free after release"
    );
    let e = my.lock(name.as_str()).no_wait().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Taken, "{e}");
    other
        .query_drop("SELECT RELEASE_ALL_LOCKS()")
        .await
        .unwrap();
    // A name over 64 characters is SHA2(name, 256).
    let long = format!("{}{}", unique("long"), "/segment".repeat(10));
    let g = my.lock(long.as_str()).no_wait().await.unwrap();
    let r: Option<i64> = other
        .exec_first("SELECT GET_LOCK(SHA2(?, 256), 0)", (&long,))
        .await
        .unwrap();
    assert_eq!(
        r,
        Some(0),
        "GET_LOCK(SHA2(name)) taken while Lucky holds name"
    );
    g.release().await.unwrap();
    other.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_connection_is_lost_at_the_next_probe_and_fences_rise() {
    let Some(my) = client(Duration::from_secs(3)).await else {
        return;
    };
    let name = unique("killed");
    let g = my.lock(name.as_str()).no_wait().await.unwrap();
    let first = g.fence().unwrap().get();
    let mut admin = plain().await;
    let holder: Option<u64> = admin
        .exec_first("SELECT IS_USED_LOCK(?)", (&name,))
        .await
        .unwrap();
    admin
        .query_drop(format!("KILL {}", holder.unwrap()))
        .await
        .unwrap();
    // Another client takes it (the server freed it with the session) ...
    let other = client(Duration::from_secs(3)).await.unwrap();
    let g2 = other
        .lock(name.as_str())
        .wait(Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        g2.fence().unwrap().get() > first,
        "fences rise across holders"
    );
    // ... and the old holder learns at its next probe (every ttl/3 = 1 s).
    tokio::time::timeout(Duration::from_secs(3), g.lost())
        .await
        .expect("the killed holder is reported lost");
    g2.release().await.unwrap();
    let _ = g.release().await;
    admin.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_the_server() {
    let Some(my) = client(Duration::from_secs(10)).await else {
        return;
    };
    let name = unique("handoff");
    let a = my.lock(name.as_str()).no_wait().await.unwrap();
    let first = a.fence().unwrap().get();
    let (my2, n2) = (my.clone(), name.clone());
    // A retry delay longer than the wait: only GET_LOCK's own wait hands the lock over.
    let waiter = tokio::spawn(async move {
        my2.lock(n2.as_str())
            .wait(Duration::from_secs(5))
            .retry(Duration::from_secs(10), Duration::ZERO)
            .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.release().await.unwrap();
    let g = waiter.await.unwrap().expect("woken by the server");
    assert!(g.fence().unwrap().get() > first);
    g.release().await.unwrap();
}
