//! Lucky's PostgreSQL and MySQL/MariaDB backends against their floors and peers, in the same
//! run, on the servers of this machine (`LUCKY_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `LUCKY_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`).
//!
//! - Lease mode: the floor is the raw statements of one cycle (the taking upsert, the
//!   releasing update), PostgreSQL on one connection as Lucky shares one, MySQL on a pool as
//!   Lucky's.
//! - Session modes (advisory, `GET_LOCK`): floors on a connection of their own per task,
//!   prepared: the raw lock and unlock, and the same with the durable fence increment Lucky
//!   makes (the fair floor: Lucky's lock always raises a fence). Peers with feature `peers`:
//!   the `distributed-lock-postgres` and `distributed-lock-mysql` crates (no fence), against
//!   the raw lock and unlock.
//!
//! Cases: serial acquire+release p50 (one cycle of each case in turn), 32 tasks on distinct
//! names (throughput, alternating slices), and the hand-off of one name between 8 tasks that
//! hold it 1 ms. Run: `cargo run --release -p lucky-tests --features peers --bin sql-bench`
//! (`LUCKY_BENCH_SECS`, default 3). The last line is a machine-readable summary.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a benchmark reads the clock

use std::sync::Arc;

use lucky::postgres::Postgres;
use lucky_tests::bench::{handoff, lock_cycle, secs, serial_p50s, throughput_rounds, Case, Cycle};

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
    let rt = lucky_tests::bench::runtime();
    let pg = rt.block_on(run());
    let my = rt.block_on(run_mysql());
    println!("summary {pg} {my}");
}

/// The peers' figures (cases after the first five), against the raw session-lock case
/// `raw` (the same work without a fence: the peers give none).
fn peer_lines(
    cases: &[Case],
    serial: &[std::time::Duration],
    rates: &[lucky_tests::bench::Throughput],
    raw: usize,
) -> String {
    let mut summary = String::new();
    for i in 5..cases.len() {
        let key = cases[i].0.replace('-', "_");
        summary.push_str(&format!(
            " {key}_serial_vs_raw={:.2} {key}_parallel_vs_raw={:.2}",
            serial[i].as_secs_f64() / serial[raw].as_secs_f64(),
            rates[i].rate() / rates[raw].rate(),
        ));
        println!(
            "  peer {}: serial p50 {:?} ({:.2}x raw), 32 tasks {:.0}/s ({:.2}x raw)",
            cases[i].0,
            serial[i],
            serial[i].as_secs_f64() / serial[raw].as_secs_f64(),
            rates[i].rate(),
            rates[i].rate() / rates[raw].rate(),
        );
    }
    summary
}

/// The MySQL floor's statements: a take and a release, written by hand.
const MY_TAKE: &str = "INSERT INTO lucky_bench (name, owner, fence, expires_at) \
    VALUES (?, ?, LAST_INSERT_ID(1), UTC_TIMESTAMP(6) + INTERVAL 30 SECOND) \
    ON DUPLICATE KEY UPDATE fence = IF(owner IS NULL OR expires_at <= UTC_TIMESTAMP(6), \
    LAST_INSERT_ID(fence + 1), fence), owner = IF(owner IS NULL OR expires_at <= \
    UTC_TIMESTAMP(6), VALUES(owner), owner), expires_at = IF(owner = VALUES(owner), \
    VALUES(expires_at), expires_at)";
const MY_RELEASE: &str =
    "UPDATE lucky_bench SET owner = NULL, expires_at = NULL WHERE name = ? AND owner = ?";

/// The MySQL/MariaDB half; its summary fields.
async fn run_mysql() -> String {
    use mysql_async::prelude::Queryable;
    let url = std::env::var("LUCKY_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let Ok(my) = lucky::mysql::Mysql::builder(&url)
        .table(TABLE)
        .auto_extend(false)
        .connect()
        .await
    else {
        eprintln!("skipping: MySQL at {url} not reachable");
        return String::new();
    };
    // Connections are not reset when returned, as Lucky's pool (a reset costs two round
    // trips per statement, which the floor should not pay).
    let opts = mysql_async::Opts::from_url(url.as_str()).expect("MySQL URL");
    let pool_opts = opts.pool_opts().clone().with_reset_connection(false);
    let pool =
        mysql_async::Pool::new(mysql_async::OptsBuilder::from_opts(opts).pool_opts(pool_opts));
    let pid = std::process::id();
    println!("MySQL/MariaDB backend, one local server, a connection pool on both sides");
    let floor_cycle = {
        let pool = pool.clone();
        Arc::new(move |task: usize, _n: u64| {
            let pool = pool.clone();
            Box::pin(async move {
                let name = format!("bench/{pid}/raw/{task}");
                let owner: &[u8] = b"floor-owner-0123";
                let mut c = pool.get_conn().await.unwrap();
                c.exec_drop(MY_TAKE, (&name, owner)).await.unwrap();
                assert!(c.affected_rows() > 0);
                c.exec_drop(MY_RELEASE, (&name, owner)).await.unwrap();
            }) as Cycle
        })
    };
    let lucky_cycle = lock_cycle(my.clone(), format!("bench/{pid}/lucky"));
    let named = lucky::mysql::Mysql::builder(&url)
        .get_lock()
        .table(TABLE)
        .auto_extend(false)
        .connect()
        .await
        .unwrap();
    let named_cycle = lock_cycle(named.clone(), format!("bench/{pid}/named"));
    // The raw GET_LOCK floors hold session locks too: a connection of their own per task.
    let mut conns = Vec::new();
    for _ in 0..32 {
        let c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
            .await
            .unwrap();
        conns.push(Arc::new(tokio::sync::Mutex::new(c)));
    }
    let conns = Arc::new(conns);
    let get_lock_cycle = {
        let conns = conns.clone();
        Arc::new(move |task: usize, _n: u64| {
            let c = conns[task % conns.len()].clone();
            Box::pin(async move {
                let name = format!("bench/{pid}/gl/{task}");
                let mut c = c.lock().await;
                let got: Option<i64> = c
                    .exec_first("SELECT GET_LOCK(?, 0)", (&name,))
                    .await
                    .unwrap();
                assert_eq!(got, Some(1));
                let _: Option<i64> = c
                    .exec_first("SELECT RELEASE_LOCK(?)", (&name,))
                    .await
                    .unwrap();
            }) as Cycle
        })
    };
    let fenced_get_lock_cycle = {
        let conns = conns.clone();
        Arc::new(move |task: usize, _n: u64| {
            let c = conns[task % conns.len()].clone();
            Box::pin(async move {
                let name = format!("bench/{pid}/glf/{task}");
                let mut c = c.lock().await;
                let got: Option<i64> = c
                    .exec_first("SELECT GET_LOCK(?, 0)", (&name,))
                    .await
                    .unwrap();
                assert_eq!(got, Some(1));
                c.exec_drop(
                    "INSERT INTO lucky_bench_fences (name, fence) VALUES (?, LAST_INSERT_ID(1)) \
                     ON DUPLICATE KEY UPDATE fence = LAST_INSERT_ID(fence + 1)",
                    (&name,),
                )
                .await
                .unwrap();
                let _: Option<i64> = c
                    .exec_first("SELECT RELEASE_LOCK(?)", (&name,))
                    .await
                    .unwrap();
            }) as Cycle
        })
    };
    #[allow(unused_mut)] // the peer joins with feature `peers`
    let mut cases: Vec<Case> = vec![
        ("floor", floor_cycle),
        ("lucky", lucky_cycle),
        ("get_lock", get_lock_cycle),
        ("get_lock+fence", fenced_get_lock_cycle),
        ("lucky get_lock", named_cycle),
    ];
    #[cfg(feature = "peers")]
    {
        use distributed_lock_core::prelude::*;
        let provider = Arc::new(
            distributed_lock_mysql::MySqlLockProvider::builder()
                .connection_string(&url)
                .build()
                .await
                .unwrap(),
        );
        cases.push((
            "distributed-lock-mysql",
            Arc::new(move |task: usize, _n: u64| {
                let provider = provider.clone();
                Box::pin(async move {
                    let lock = provider.create_lock(&format!("bench/{pid}/peer/{task}"));
                    let h = lock.try_acquire().await.unwrap().unwrap();
                    h.release().await.unwrap();
                }) as Cycle
            }),
        ));
    }
    let serial = serial_p50s(2_000, 0, &cases).await;
    let my_serial = serial[1].as_secs_f64() / serial[0].as_secs_f64();
    let named_vs_raw = serial[4].as_secs_f64() / serial[2].as_secs_f64();
    let named_vs_fenced = serial[4].as_secs_f64() / serial[3].as_secs_f64();
    println!(
        "serial acquire+release p50: floor (the same two statements, raw) {:?}, lucky {:?} ({my_serial:.2}x)",
        serial[0], serial[1],
    );
    println!(
        "  get_lock mode: raw GET_LOCK/RELEASE_LOCK {:?}, raw with the durable fence increment {:?}, lucky get_lock {:?} ({named_vs_raw:.2}x raw, {named_vs_fenced:.2}x raw+fence)",
        serial[2], serial[3], serial[4],
    );
    let rates = throughput_rounds(32, 3, secs() * 3, &cases).await;
    let peers = peer_lines(&cases, &serial, &rates, 2);
    let my_parallel = rates[1].rate() / rates[0].rate();
    println!(
        "32 tasks, distinct names: floor {:.0}/s, lucky {:.0}/s ({my_parallel:.2}x); GET_LOCK raw {:.0}/s, raw+fence {:.0}/s, lucky get_lock {:.0}/s ({:.2}x raw+fence)",
        rates[0].rate(),
        rates[1].rate(),
        rates[2].rate(),
        rates[3].rate(),
        rates[4].rate(),
        rates[4].rate() / rates[3].rate(),
    );
    let hn = handoff(named.clone(), format!("bench/{pid}/named-handoff"), 8).await;
    println!(
        "{}",
        hn.line("get_lock mode, 8 tasks on one name, hold 1 ms", "lucky")
    );
    let h = handoff(my.clone(), format!("bench/{pid}/handoff"), 8).await;
    println!("{}", h.line("8 tasks on one name, hold 1 ms", "lucky"));
    let mut c = pool.get_conn().await.unwrap();
    c.query_drop(format!(
        "DELETE FROM {TABLE} WHERE name LIKE 'bench/{pid}/%'"
    ))
    .await
    .unwrap();
    c.query_drop(format!("DROP TABLE IF EXISTS {TABLE}_fences"))
        .await
        .unwrap();
    format!(
        "my_serial_vs_floor={my_serial:.2} my_parallel_vs_floor={my_parallel:.2} my_handoff_p99_ms={:.2} my_fairness={:.2} named_serial_vs_raw={named_vs_raw:.2} named_serial_vs_raw_fence={named_vs_fenced:.2} named_parallel_vs_raw_fence={:.2} named_handoff_p99_ms={:.2} named_fairness={:.2}{peers}",
        h.p99.as_secs_f64() * 1e3,
        h.fairness,
        rates[4].rate() / rates[3].rate(),
        hn.p99.as_secs_f64() * 1e3,
        hn.fairness,
    )
}

/// The PostgreSQL half; its summary fields.
async fn run() -> String {
    let url = std::env::var("LUCKY_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let Ok(pg) = Postgres::builder(&url)
        .table(TABLE)
        .auto_extend(false)
        .connect()
        .await
    else {
        eprintln!("skipping: PostgreSQL at {url} not reachable");
        return String::new();
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
    let lucky_cycle = lock_cycle(pg.clone(), format!("bench/{pid}/lucky"));
    // Advisory mode: Lucky on a dedicated connection per lock, against the raw advisory
    // lock and unlock, and against them with the same durable fence increment Lucky makes.
    let adv = Postgres::builder(&url)
        .advisory()
        .table(TABLE)
        .auto_extend(false)
        .connect()
        .await
        .unwrap();
    let adv_cycle = lock_cycle(adv.clone(), format!("bench/{pid}/adv"));
    raw.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE}_fences (name text PRIMARY KEY, fence bigint NOT NULL)"
    ))
    .await
    .unwrap();
    // The raw advisory floors hold session locks too: a connection of their own per task,
    // statements prepared once.
    let mut sessions = Vec::new();
    for _ in 0..32 {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let lock = c.prepare("SELECT pg_try_advisory_lock($1)").await.unwrap();
        let unlock = c.prepare("SELECT pg_advisory_unlock($1)").await.unwrap();
        let fenced = c
            .prepare(
                "WITH l AS MATERIALIZED (SELECT pg_try_advisory_lock($1) AS got), \
                 f AS (INSERT INTO lucky_bench_fences AS t (name, fence) \
                 SELECT $1::text, 1 FROM l WHERE l.got ON CONFLICT (name) \
                 DO UPDATE SET fence = t.fence + 1 RETURNING t.fence) \
                 SELECT (SELECT got FROM l), (SELECT fence FROM f)",
            )
            .await
            .unwrap();
        sessions.push(Arc::new((c, lock, unlock, fenced)));
    }
    let sessions = Arc::new(sessions);
    let advisory_cycle = {
        let sessions = sessions.clone();
        Arc::new(move |task: usize, _n: u64| {
            let s = sessions[task % sessions.len()].clone();
            Box::pin(async move {
                let key = i64::from(pid) * 1000 + task as i64;
                let r = s.0.query_one(&s.1, &[&key]).await.unwrap();
                assert!(r.get::<_, bool>(0));
                s.0.query_one(&s.2, &[&key]).await.unwrap();
            }) as Cycle
        })
    };
    let fenced_advisory_cycle = {
        let sessions = sessions.clone();
        Arc::new(move |task: usize, _n: u64| {
            let s = sessions[task % sessions.len()].clone();
            Box::pin(async move {
                let key = i64::from(pid) * 1000 + 500 + task as i64;
                let r = s.0.query_one(&s.3, &[&key]).await.unwrap();
                assert!(r.get::<_, bool>(0));
                s.0.query_one(&s.2, &[&key]).await.unwrap();
            }) as Cycle
        })
    };
    #[allow(unused_mut)] // the peer joins with feature `peers`
    let mut cases: Vec<Case> = vec![
        ("floor", floor_cycle),
        ("lucky", lucky_cycle),
        ("advisory", advisory_cycle),
        ("advisory+fence", fenced_advisory_cycle),
        ("lucky advisory", adv_cycle),
    ];
    #[cfg(feature = "peers")]
    {
        use distributed_lock_core::prelude::*;
        let provider = Arc::new(
            distributed_lock_postgres::PostgresLockProvider::builder()
                .connection_string(&url)
                .build()
                .await
                .unwrap(),
        );
        cases.push((
            "distributed-lock-postgres",
            Arc::new(move |task: usize, _n: u64| {
                let provider = provider.clone();
                Box::pin(async move {
                    let lock = provider.create_lock(&format!("bench/{pid}/peer/{task}"));
                    let h = lock.try_acquire().await.unwrap().unwrap();
                    h.release().await.unwrap();
                }) as Cycle
            }),
        ));
    }
    let serial = serial_p50s(2_000, 0, &cases).await;
    let serial_vs_floor = serial[1].as_secs_f64() / serial[0].as_secs_f64();
    let adv_vs_raw = serial[4].as_secs_f64() / serial[2].as_secs_f64();
    let adv_vs_fenced = serial[4].as_secs_f64() / serial[3].as_secs_f64();
    println!(
        "serial acquire+release p50: floor (the same two statements, raw) {:?}, lucky {:?} ({serial_vs_floor:.2}x)",
        serial[0], serial[1],
    );
    println!(
        "  advisory mode: raw pg_try_advisory_lock/unlock {:?}, raw with the durable fence increment {:?}, lucky advisory {:?} ({adv_vs_raw:.2}x raw, {adv_vs_fenced:.2}x raw+fence)",
        serial[2], serial[3], serial[4],
    );
    let rates = throughput_rounds(32, 3, secs() * 3, &cases).await;
    let peers = peer_lines(&cases, &serial, &rates, 2);
    let parallel_vs_floor = rates[1].rate() / rates[0].rate();
    println!(
        "32 tasks, distinct names: floor {:.0}/s, lucky {:.0}/s ({parallel_vs_floor:.2}x); advisory raw {:.0}/s, raw+fence {:.0}/s, lucky advisory {:.0}/s ({:.2}x raw+fence)",
        rates[0].rate(),
        rates[1].rate(),
        rates[2].rate(),
        rates[3].rate(),
        rates[4].rate(),
        rates[4].rate() / rates[3].rate(),
    );
    let ha = handoff(adv.clone(), format!("bench/{pid}/adv-handoff"), 8).await;
    println!(
        "{}",
        ha.line("advisory mode, 8 tasks on one name, hold 1 ms", "lucky")
    );

    let h = handoff(pg.clone(), format!("bench/{pid}/handoff"), 8).await;
    println!("{}", h.line("8 tasks on one name, hold 1 ms", "lucky"));
    raw.batch_execute(&format!(
        "DELETE FROM {TABLE} WHERE name LIKE 'bench/{pid}/%'"
    ))
    .await
    .unwrap();
    raw.batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}_fences"))
        .await
        .unwrap();
    format!(
        "serial_vs_floor={serial_vs_floor:.2} parallel_vs_floor={parallel_vs_floor:.2} handoff_acquisitions={} handoff_p99_ms={:.2} handoff_max_ms={:.2} fairness={:.2} adv_serial_vs_raw={adv_vs_raw:.2} adv_serial_vs_raw_fence={adv_vs_fenced:.2} adv_parallel_vs_raw_fence={:.2} adv_handoff_p99_ms={:.2} adv_fairness={:.2}{peers}",
        h.n,
        h.p99.as_secs_f64() * 1e3,
        h.max.as_secs_f64() * 1e3,
        h.fairness,
        rates[4].rate() / rates[3].rate(),
        ha.p99.as_secs_f64() * 1e3,
        ha.fairness,
    )
}
