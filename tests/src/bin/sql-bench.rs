//! Lucky's PostgreSQL backend against its floor, in the same run, on the PostgreSQL of this
//! machine (`LUCKY_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`):
//! the floor is the raw statements of one cycle (the taking upsert, the releasing update) on
//! one connection, as Lucky shares one connection; and `pg_try_advisory_lock` /
//! `pg_advisory_unlock` for scale. Cases: serial acquire+release p50 (one cycle of each case
//! in turn), 32 tasks on distinct names (throughput, alternating slices), and the hand-off of
//! one name between 8 tasks that hold it 1 ms. Run: `cargo run --release -p lucky-tests --bin
//! sql-bench` (`LUCKY_BENCH_SECS`, default 3). The last line is a machine-readable summary.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a benchmark reads the clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use lucky::postgres::Postgres;
use lucky_tests::bench::{secs, serial_p50s, throughput_rounds, Case, Cycle, Handoff};

const TABLE: &str = "lucky_bench";

/// The floor's statements: what Lucky sends for a take and a release, written by hand.
const TAKE: &str = "INSERT INTO lucky_bench AS l (name, owner, fence, expires_at) \
    VALUES ($1, $2, 1, clock_timestamp() + interval '30 seconds') \
    ON CONFLICT (name) DO UPDATE SET fence = l.fence + 1, owner = EXCLUDED.owner, \
    expires_at = EXCLUDED.expires_at \
    WHERE l.owner IS NULL OR l.expires_at <= clock_timestamp() RETURNING fence";
const RELEASE: &str =
    "UPDATE lucky_bench SET owner = NULL, expires_at = NULL WHERE name = $1 AND owner = $2";

fn main() {
    lucky_tests::bench::runtime().block_on(run());
}

async fn run() {
    let url = std::env::var("LUCKY_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let Ok(pg) = Postgres::builder(&url)
        .table(TABLE)
        .auto_extend(false)
        .connect()
        .await
    else {
        eprintln!("skipping: PostgreSQL at {url} not reachable");
        return;
    };
    let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let raw = Arc::new(raw);
    let (take, release) = (
        raw.prepare(TAKE).await.unwrap(),
        raw.prepare(RELEASE).await.unwrap(),
    );
    let pid = std::process::id();
    println!(
        "PostgreSQL backend, one local server, {:?} per throughput and hand-off run",
        secs()
    );

    let floor_cycle = {
        let (raw, take, release) = (raw.clone(), take.clone(), release.clone());
        Arc::new(move |task: usize, _n: u64| {
            let (raw, take, release) = (raw.clone(), take.clone(), release.clone());
            Box::pin(async move {
                let name = format!("bench/{pid}/raw/{task}");
                let owner: &[u8] = b"floor-owner-0123";
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&name, &owner];
                let r = raw.query_one(&take, &params).await.unwrap();
                let _: i64 = r.get(0);
                raw.execute(&release, &params).await.unwrap();
            }) as Cycle
        })
    };
    let lucky_cycle = {
        let pg = pg.clone();
        Arc::new(move |task: usize, _n: u64| {
            let pg = pg.clone();
            Box::pin(async move {
                let g = pg
                    .lock(format!("bench/{pid}/lucky/{task}"))
                    .no_wait()
                    .await
                    .unwrap();
                g.release().await.unwrap();
            }) as Cycle
        })
    };
    let advisory_cycle = {
        let raw = raw.clone();
        Arc::new(move |task: usize, _n: u64| {
            let raw = raw.clone();
            Box::pin(async move {
                let key = i64::from(pid) * 1000 + task as i64;
                let r = raw
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .await
                    .unwrap();
                assert!(r.get::<_, bool>(0));
                raw.query_one("SELECT pg_advisory_unlock($1)", &[&key])
                    .await
                    .unwrap();
            }) as Cycle
        })
    };
    let cases: Vec<Case> = vec![
        ("floor", floor_cycle),
        ("lucky", lucky_cycle),
        ("advisory", advisory_cycle),
    ];
    let serial = serial_p50s(2_000, 0, &cases).await;
    let serial_vs_floor = serial[1].as_secs_f64() / serial[0].as_secs_f64();
    println!(
        "serial acquire+release p50: floor (the same two statements, raw) {:?}, lucky {:?} ({serial_vs_floor:.2}x), advisory lock/unlock {:?} ({:.2}x)",
        serial[0],
        serial[1],
        serial[2],
        serial[2].as_secs_f64() / serial[0].as_secs_f64()
    );
    let rates = throughput_rounds(32, 3, secs() * 3, &cases).await;
    let parallel_vs_floor = rates[1].rate() / rates[0].rate();
    println!(
        "32 tasks, distinct names: floor {:.0}/s, lucky {:.0}/s ({parallel_vs_floor:.2}x), advisory {:.0}/s",
        rates[0].rate(),
        rates[1].rate(),
        rates[2].rate()
    );

    let name = format!("bench/{pid}/handoff");
    let end = Instant::now() + secs();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (pg, name) = (pg.clone(), name.clone());
            tokio::spawn(async move {
                let mut waits = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    let g = pg.lock(&name).wait(secs() * 4).await.unwrap();
                    waits.push(t.elapsed());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    g.release().await.unwrap();
                }
                waits
            })
        })
        .collect();
    let h = Handoff::join(handles).await;
    println!("{}", h.line("8 tasks on one name, hold 1 ms", "lucky"));
    raw.batch_execute(&format!(
        "DELETE FROM {TABLE} WHERE name LIKE 'bench/{pid}/%'"
    ))
    .await
    .unwrap();
    println!(
        "summary serial_vs_floor={serial_vs_floor:.2} parallel_vs_floor={parallel_vs_floor:.2} handoff_acquisitions={} handoff_p99_ms={:.2} handoff_max_ms={:.2} fairness={:.2}",
        h.n,
        h.p99.as_secs_f64() * 1e3,
        h.max.as_secs_f64() * 1e3,
        h.fairness
    );
}
