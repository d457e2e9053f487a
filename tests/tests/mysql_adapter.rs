//! The MySQL/MariaDB backend against the MariaDB on this machine (`LUCKY_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`), with real faults: the holder's connection killed by
//! the server (`KILL`). Each test uses its own table. Skips when the server is absent unless
//! `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::time::Duration;

use lucky::mysql::Mysql;
use lucky::ErrorKind;
use lucky_tests::servers::{required, unique};

fn url() -> String {
    std::env::var("LUCKY_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A client on its own table, or None (skip) when the server is absent.
async fn client(table: &str) -> Option<Mysql> {
    match Mysql::builder(&url()).table(table).connect().await {
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

async fn sql(statement: &str) -> Vec<mysql_async::Row> {
    use mysql_async::prelude::Queryable;
    let mut c = mysql_async::Conn::from_url(url()).await.unwrap();
    let rows = c.query(statement).await.unwrap();
    c.disconnect().await.unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_fences_and_rows_that_outlive_releases() {
    let table = unique("lucky_t");
    let Some(a) = client(&table).await else {
        return;
    };
    let b = client(&table).await.unwrap();
    let g = a.lock("job").ttl(Duration::from_secs(10)).await.unwrap();
    let e = b.lock("job").no_wait().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Taken, "{e}");
    let f1 = g.fence().unwrap().get();
    assert_eq!(f1, 1);
    g.release().await.unwrap();
    let rows = sql(&format!(
        "SELECT owner IS NULL, fence FROM {table} WHERE name = 'job'"
    ))
    .await;
    let (cleared, fence): (i64, i64) = mysql_async::from_row(rows[0].clone());
    assert_eq!(
        (cleared, fence as u64),
        (1, f1),
        "the row stays, owner cleared, fence kept"
    );
    let mut last = f1;
    for _ in 0..50 {
        let g = b.lock("job").no_wait().await.unwrap();
        let f = g.fence().unwrap().get();
        assert!(f > last, "fences strictly increase: {f} after {last}");
        last = f;
        g.release().await.unwrap();
    }
    // A retake by the live owner keeps its fence; renewals extend.
    let g = a.lock("job").ttl(Duration::from_secs(3)).await.unwrap();
    let f = g.fence().unwrap().get();
    assert_eq!(f, last + 1);
    let before = g.valid_until();
    g.extend().await.unwrap();
    assert!(g.valid_until() > before);
    g.release().await.unwrap();
    sql(&format!("DROP TABLE {table}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_does_not_lose_the_lease() {
    let table = unique("lucky_t");
    let Some(b) = client(&table).await else {
        return;
    };
    // The holder works in a database of its own, so its connections can be told apart.
    let db = unique("lucky_kill");
    sql(&format!("CREATE DATABASE {db}")).await;
    let holder_url = url().replacen("/test", &format!("/{db}"), 1);
    let a = Mysql::builder(&holder_url)
        .table(format!("test.{table}"))
        .connect()
        .await
        .unwrap();
    let g = a.lock("job").ttl(Duration::from_secs(3)).await.unwrap();
    let fence = g.fence().unwrap().get();
    let ids = sql(&format!(
        "SELECT id FROM information_schema.processlist WHERE db = '{db}'"
    ))
    .await;
    assert!(!ids.is_empty());
    for r in ids {
        let id: u64 = mysql_async::from_row(r);
        sql(&format!("KILL {id}")).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        g.is_held(),
        "the lease lives in the row, not in the connection"
    );
    let e = b.lock("job").no_wait().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Taken, "{e}");
    assert_eq!(g.fence().unwrap().get(), fence);
    g.release().await.unwrap();
    sql(&format!("DROP TABLE {table}")).await;
    sql(&format!("DROP DATABASE {db}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_behind_runs_out_and_the_next_holder_gets_a_higher_fence() {
    let table = unique("lucky_t");
    let Some(a) = client(&table).await else {
        return;
    };
    let b = client(&table).await.unwrap();
    let g = a
        .lock("job")
        .ttl(Duration::from_secs(2))
        .auto_extend(false)
        .await
        .unwrap();
    let f1 = g.fence().unwrap().get();
    // The holder vanishes without releasing (forgotten guard, no renewal): the row's expiry,
    // on the server's clock, frees it.
    std::mem::forget(g);
    let g2 = b.lock("job").wait(Duration::from_secs(10)).await.unwrap();
    assert!(g2.fence().unwrap().get() > f1);
    g2.release().await.unwrap();
    sql(&format!("DROP TABLE {table}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error() {
    let table = unique("lucky_t");
    let Some(c) = client(&table).await else {
        return;
    };
    let e = Mysql::builder(&url())
        .table("x; DROP TABLE y")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    let e = Mysql::connect("mysql://u:s3cret@127.0.0.1:1/db")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert_eq!(c.lock("").await.unwrap_err().kind(), ErrorKind::Usage);
    sql(&format!("DROP TABLE {table}")).await;
}
