//! PostgreSQL advisory mode against the server on this machine (`LUCKY_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`): Lucky and plain `pg_advisory_lock` on the
//! same key exclude each other (an integer name is the key, any other name
//! `hashtextextended(name, 0)`); the holder's connection terminated by the server is reported
//! lost at the next probe; a waiter is woken by the server; fences rise across holders; a
//! transaction-pooling PgBouncer in between is refused. Keys are drawn per run so tests
//! never meet. Skips when the server is absent unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::time::Duration;

use lucky::postgres::Postgres;
use lucky::ErrorKind;
use lucky_tests::servers::{postgres_client, postgres_url, unique};

async fn client(ttl: Duration) -> Postgres {
    Postgres::builder(&postgres_url())
        .advisory()
        .ttl(ttl)
        .connect()
        .await
        .unwrap()
}

/// A key no other test uses.
fn key() -> i64 {
    let u = unique("k");
    let n: u64 = u.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    });
    i64::try_from(n >> 2).unwrap()
}

async fn try_lock(c: &tokio_postgres::Client, key: i64) -> bool {
    c.query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn lucky_and_plain_advisory_locks_exclude_each_other() {
    let Some(other) = postgres_client().await else {
        return;
    };
    let pg = client(Duration::from_secs(10)).await;
    // An integer name is the key itself.
    let k = key();
    let name = k.to_string();
    let g = pg.lock(name.as_str()).no_wait().await.unwrap();
    assert!(!try_lock(&other, k).await, "psql took a key Lucky holds");
    g.release().await.unwrap();
    assert!(try_lock(&other, k).await, "the key is free after release");
    let e = pg.lock(name.as_str()).no_wait().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Taken, "{e}");
    let _: bool = other
        .query_one("SELECT pg_advisory_unlock($1)", &[&k])
        .await
        .unwrap()
        .get(0);
    // Any other name is hashtextextended(name, 0).
    let name = unique("jobs/nightly");
    let g = pg.lock(name.as_str()).no_wait().await.unwrap();
    let hashed: bool = other
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !hashed,
        "psql took hashtextextended(name) while Lucky holds name"
    );
    g.release().await.unwrap();
}

#[tokio::test]
async fn a_terminated_holder_connection_is_lost_at_the_next_probe_and_fences_rise() {
    let Some(admin) = postgres_client().await else {
        return;
    };
    let pg = client(Duration::from_secs(3)).await;
    let k = key();
    let name = k.to_string();
    let g = pg.lock(name.as_str()).no_wait().await.unwrap();
    let first = g.fence().unwrap().get();
    let pid: i32 = admin
        .query_one(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
             AND classid = (($1::bigint >> 32) & 4294967295)::oid \
             AND objid = ($1::bigint & 4294967295)::oid",
            &[&k],
        )
        .await
        .unwrap()
        .get(0);
    admin
        .execute("SELECT pg_terminate_backend($1, 5000)", &[&pid])
        .await
        .unwrap();
    // Another client takes it at once (the server freed it with the session) ...
    let other = client(Duration::from_secs(3)).await;
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
        .expect("the terminated holder is reported lost");
    assert!(!g.is_held());
    g2.release().await.unwrap();
    let _ = g.release().await;
}

#[tokio::test]
async fn a_waiter_is_woken_by_the_server_and_fences_rise_across_holders() {
    if postgres_client().await.is_none() {
        return;
    }
    let pg = client(Duration::from_secs(10)).await;
    let name = unique("handoff");
    let mut last = 0;
    for _ in 0..20 {
        let g = pg.lock(name.as_str()).no_wait().await.unwrap();
        let f = g.fence().unwrap().get();
        assert!(f > last, "fence {f} after {last}");
        last = f;
        g.release().await.unwrap();
    }
    let a = pg.lock(name.as_str()).no_wait().await.unwrap();
    let pg2 = pg.clone();
    let n2 = name.clone();
    // A retry delay longer than the wait: only the server's own wait (its lock queue) can
    // hand the lock over within it.
    let waiter = tokio::spawn(async move {
        pg2.lock(n2.as_str())
            .wait(Duration::from_secs(5))
            .retry(Duration::from_secs(10), Duration::ZERO)
            .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.release().await.unwrap();
    let g = waiter.await.unwrap().expect("woken by the server");
    assert!(g.fence().unwrap().get() > last);
    g.release().await.unwrap();
}

#[tokio::test]
async fn advisory_mode_through_a_transaction_pooler_is_refused() {
    if postgres_client().await.is_none() {
        return;
    }
    let Some(bouncer) = lucky_tests::servers::PgBouncer::start("transaction", 26432) else {
        return;
    };
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", bouncer.port);
    let e = Postgres::builder(&url)
        .advisory()
        .connect()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("pooler"), "{e}");
    // The lease mode works through it.
    let table = format!("lucky_bouncer_{}", std::process::id());
    let pg = Postgres::builder(&url)
        .table(&table)
        .connect()
        .await
        .unwrap();
    let g = pg.lock("x").no_wait().await.unwrap();
    g.release().await.unwrap();
    if let Some(c) = postgres_client().await {
        c.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await
            .unwrap();
    }
}
