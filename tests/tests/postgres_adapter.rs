//! The PostgreSQL backend against the server on this machine (`LUCKY_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), with real faults: the holder's connection
//! terminated by the server, the holder's backend process stopped past the ttl. Each test uses
//! its own table and its own `application_name`, so tests never touch each other's locks.
//! Skips when the server is absent unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::time::Duration;

use lucky::postgres::{begin_guarded, Postgres};
use lucky::ErrorKind;
use lucky_tests::servers::{postgres_client, postgres_url, unique};

/// A client on table `table` whose connections are named `app`.
async fn client(table: &str, app: &str) -> Postgres {
    let url = format!("{}?application_name={app}", postgres_url());
    Postgres::builder(&url)
        .table(table)
        .connect()
        .await
        .unwrap()
}

async fn drop_table(admin: &tokio_postgres::Client, table: &str) {
    admin
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .unwrap();
}

/// Backend pids of the connections named `app`.
async fn backends(admin: &tokio_postgres::Client, app: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_fences_and_rows_that_outlive_releases() {
    let Some(admin) = postgres_client().await else {
        return;
    };
    let table = unique("lucky_t");
    let (a, b) = (
        client(&table, &unique("a")).await,
        client(&table, &unique("b")).await,
    );
    let g = a.lock("job").ttl(Duration::from_secs(10)).await.unwrap();
    let e = b.lock("job").no_wait().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Taken, "{e}");
    let f1 = g.fence().unwrap().get();
    g.release().await.unwrap();
    // The row stays, owner cleared, fence kept: the next holder's fence is higher.
    let row = admin
        .query_one(
            &format!("SELECT owner IS NULL, fence FROM {table} WHERE name = 'job'"),
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i64>(1) as u64, f1);
    let mut last = f1;
    for _ in 0..50 {
        let g = b.lock("job").no_wait().await.unwrap();
        let f = g.fence().unwrap().get();
        assert!(f > last, "fences strictly increase: {f} after {last}");
        last = f;
        g.release().await.unwrap();
    }
    assert!(a.close(Duration::from_secs(5)).await && b.close(Duration::from_secs(5)).await);
    drop_table(&admin, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_the_release_notification() {
    let Some(admin) = postgres_client().await else {
        return;
    };
    let table = unique("lucky_t");
    let (a, b) = (
        client(&table, &unique("a")).await,
        client(&table, &unique("b")).await,
    );
    let g = a.lock("job").ttl(Duration::from_secs(20)).await.unwrap();
    // Without a hint this waiter would try again only after 30 s (its retry delay) or when
    // the holder's 20 s ran out: both after its 10 s wait. Only the NOTIFY can get it in.
    let waiter = tokio::spawn(async move {
        let r = b
            .lock("job")
            .retry(Duration::from_secs(30), Duration::ZERO)
            .wait(Duration::from_secs(10))
            .await;
        (r.map(|g| g.fence().unwrap().get()), b)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let f1 = g.fence().unwrap().get();
    g.release().await.unwrap();
    let (r, _b) = waiter.await.unwrap();
    assert!(r.unwrap() > f1);
    drop_table(&admin, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_connection_does_not_lose_the_lease() {
    let Some(admin) = postgres_client().await else {
        return;
    };
    let table = unique("lucky_t");
    let app = unique("holder");
    let a = client(&table, &app).await;
    let b = client(&table, &unique("b")).await;
    let g = a.lock("job").ttl(Duration::from_secs(3)).await.unwrap();
    let fence = g.fence().unwrap().get();
    let pids = backends(&admin, &app).await;
    assert!(!pids.is_empty());
    for pid in pids {
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
    }
    // Two ttls later the lease is still ours: renewals reconnected.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        g.is_held(),
        "the lease lives in the row, not in the connection"
    );
    let e = b.lock("job").no_wait().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Taken, "{e}");
    assert_eq!(g.fence().unwrap().get(), fence);
    g.release().await.unwrap();
    drop_table(&admin, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_holder_backend_loses_to_a_higher_fence_and_cannot_commit() {
    let Some(admin) = postgres_client().await else {
        return;
    };
    let table = unique("lucky_t");
    let app = unique("holder");
    let a = client(&table, &app).await;
    let b = client(&table, &unique("b")).await;
    let g = a.lock("job").ttl(Duration::from_secs(2)).await.unwrap();
    let f1 = g.fence().unwrap().get();
    // The holder's own connection for guarded writes, and the resource table.
    let (mut holder_db, conn) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, fence) = begin_guarded(&mut holder_db, &a, &g)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fence, f1);
    tx.commit().await.unwrap();
    // Stop the holder's backend past the ttl: its renewals hang, the lease runs out.
    let pids = backends(&admin, &app).await;
    for &pid in &pids {
        assert!(std::process::Command::new("kill")
            .arg("-STOP")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success());
    }
    let taken = b.lock("job").wait(Duration::from_secs(10)).await;
    for &pid in &pids {
        std::process::Command::new("kill")
            .arg("-CONT")
            .arg(pid.to_string())
            .status()
            .unwrap();
    }
    let g2 = taken.unwrap();
    assert!(
        g2.fence().unwrap().get() > f1,
        "a takeover raises the fence"
    );
    // The old holder is lost (at its deadline at the latest) and can no longer commit.
    tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .unwrap();
    assert!(begin_guarded(&mut holder_db, &a, &g)
        .await
        .unwrap()
        .is_none());
    let (tx, f2) = begin_guarded(&mut holder_db, &b, &g2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f2, g2.fence().unwrap().get());
    tx.rollback().await.unwrap();
    g2.release().await.unwrap();
    drop_table(&admin, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error() {
    let Some(_admin) = postgres_client().await else {
        return;
    };
    let e = Postgres::builder(&postgres_url())
        .table("locks; DROP TABLE x")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    let e = Postgres::connect("postgres://u:s3cret@127.0.0.1:5432/db?bogus=1")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let e = Postgres::builder("postgres://u:s3cret@127.0.0.1:1/db")
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let table = unique("lucky_t");
    let pg = client(&table, &unique("x")).await;
    assert_eq!(pg.lock("").await.unwrap_err().kind(), ErrorKind::Usage);
    let Some(admin) = postgres_client().await else {
        return;
    };
    drop_table(&admin, &table).await;
}
