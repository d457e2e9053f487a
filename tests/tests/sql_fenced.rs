//! The SQL fenced-write pattern against the PostgreSQL on the machine, with fences from real
//! RedLock guards: a write carries the holder's fence and lands only if no newer fence wrote.
//!
//! ```sql
//! UPDATE resource SET data = $2, fence = $1 WHERE id = $3 AND fence <= $1
//! ```
//! (0 rows updated: a newer holder already wrote; `<=` lets one holder write repeatedly.)
//!
//! `LUCKY_POSTGRES` (default `host=127.0.0.1 user=postgres dbname=test`); skips when absent
//! unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::time::Duration;

use lucky::redis::Redis;
use lucky_tests::servers::{redis_available, redis_urls, required};

async fn postgres() -> Option<tokio_postgres::Client> {
    let conf = std::env::var("LUCKY_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".to_owned());
    match tokio_postgres::connect(&conf, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Some(client)
        }
        Err(e) => {
            assert!(
                !required(),
                "PostgreSQL ({conf}) unreachable and LUCKY_REQUIRE_SERVERS=1: {e}"
            );
            eprintln!("skipping: PostgreSQL unreachable: {e}");
            None
        }
    }
}

const FENCED_UPDATE: &str =
    "UPDATE lucky_fenced SET data = $2, fence = $1 WHERE id = $3 AND fence <= $1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rejects_a_stale_fence() {
    let urls = redis_urls();
    if !redis_available(&urls).await {
        return;
    }
    let Some(db) = postgres().await else { return };
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS lucky_fenced (id text PRIMARY KEY, data text, fence bigint NOT NULL)",
    )
    .await
    .unwrap();
    let id = format!("row-{}", std::process::id());
    db.execute(
        "INSERT INTO lucky_fenced VALUES ($1, '', 0) ON CONFLICT (id) DO UPDATE SET fence = 0",
        &[&id],
    )
    .await
    .unwrap();

    let locks = Redis::connect(&urls).await.unwrap();
    let name = format!("lucky-test/sql/{}", std::process::id());
    let a = locks
        .lock(&name)
        .ttl(Duration::from_millis(300))
        .auto_extend(false)
        .await
        .unwrap();
    let fa = i64::try_from(a.fence().unwrap().get()).unwrap();
    assert_eq!(
        db.execute(FENCED_UPDATE, &[&fa, &"from A", &id])
            .await
            .unwrap(),
        1
    );
    a.lost().await; // A stalls past its lease
    let b = locks
        .lock(&name)
        .wait(Duration::from_secs(2))
        .await
        .unwrap();
    let fb = i64::try_from(b.fence().unwrap().get()).unwrap();
    assert_eq!(
        db.execute(FENCED_UPDATE, &[&fb, &"from B", &id])
            .await
            .unwrap(),
        1
    );
    // A's late write matches no row: its fence is older.
    assert_eq!(
        db.execute(FENCED_UPDATE, &[&fa, &"late A", &id])
            .await
            .unwrap(),
        0
    );
    let row = db
        .query_one("SELECT data, fence FROM lucky_fenced WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "from B");
    assert_eq!(row.get::<_, i64>(1), fb);
    db.execute("DELETE FROM lucky_fenced WHERE id = $1", &[&id])
        .await
        .unwrap();
    b.release().await.unwrap();
    drop(a);
}
