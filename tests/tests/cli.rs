//! The `lucky` command-line tool against the real servers (`scripts/services.sh start`): two
//! `lucky exec` never overlap, a SIGKILLed lucky's lock frees after the ttl, a lost lock
//! terminates the command (exit 76), `--no-wait` on a held lock exits 75, signals reach the
//! command, bad input exits 64. Needs the binary: `cargo build -p lucky --features cli` (the
//! workspace test run builds it).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap, read the clock, sleep

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lucky_tests::servers::{
    etcd_available, etcd_endpoints, redis_available, redis_urls, EtcdProcess,
};

/// The `lucky` command line, built by cargo for this test.
fn lucky_bin() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_lucky-under-test").into()
}

fn unique(name: &str) -> String {
    format!("lucky-cli-test/{name}/{}", std::process::id())
}

/// `scheme://host:port,host:port` from the test servers' URLs.
fn backend(scheme: &str, urls: &[String]) -> String {
    let hosts: Vec<&str> = urls
        .iter()
        .map(|u| u.split_once("://").map_or(u.as_str(), |(_, h)| h))
        .collect();
    format!("{scheme}://{}", hosts.join(","))
}

fn redis_backend() -> String {
    backend("redis", &redis_urls())
}

fn etcd_backend() -> String {
    backend("etcd", &etcd_endpoints())
}

/// The backends whose servers are up.
fn backends() -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut v = Vec::new();
    if rt.block_on(redis_available(&redis_urls())) {
        v.push(redis_backend());
    }
    if rt.block_on(etcd_available(&etcd_endpoints())) {
        v.push(etcd_backend());
    }
    if rt.block_on(postgres_available()) {
        v.push(postgres_backend());
    }
    if rt.block_on(mysql_available()) {
        v.push(mysql_backend());
    }
    if lucky_tests::servers::zk_serves(2181) {
        v.push("zk://127.0.0.1:2181?standalone=true".to_owned());
    } else {
        assert!(
            !lucky_tests::servers::required(),
            "ZooKeeper on 127.0.0.1:2181 is not serving and LUCKY_REQUIRE_SERVERS=1"
        );
    }
    v
}

/// The MariaDB/MySQL of this machine (`LUCKY_MYSQL_URL`), its locks in a table of the CLI
/// tests' own.
fn mysql_backend() -> String {
    let base = std::env::var("LUCKY_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    format!("{base}?table=lucky_cli_test")
}

async fn mysql_available() -> bool {
    let base = std::env::var("LUCKY_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let up = mysql_async::Conn::from_url(base).await.is_ok();
    assert!(
        up || !lucky_tests::servers::required(),
        "MySQL unreachable and LUCKY_REQUIRE_SERVERS=1"
    );
    up
}

/// The PostgreSQL of this machine (`LUCKY_POSTGRES_URL`), its locks in a table of the CLI
/// tests' own.
fn postgres_backend() -> String {
    let base = std::env::var("LUCKY_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    format!("{base}?table=lucky_cli_test&mode=lease")
}

async fn postgres_available() -> bool {
    let base = std::env::var("LUCKY_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let up = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .is_ok();
    assert!(
        up || !lucky_tests::servers::required(),
        "PostgreSQL unreachable and LUCKY_REQUIRE_SERVERS=1"
    );
    up
}

fn exec(backend: &str, name: &str, flags: &[&str], cmd: &[&str]) -> Command {
    let mut c = Command::new(lucky_bin());
    c.args(["exec", "--backend", backend, "--name", name])
        .args(flags)
        .arg("--")
        .args(cmd);
    c
}

fn run(c: &mut Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn two_execs_on_one_name_never_overlap() {
    for backend in backends() {
        let name = unique("overlap");
        let dir = std::env::temp_dir().join(format!("lucky-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let _ = std::fs::remove_file(&log);
        // Each child appends "start <ns>" and "end <ns>" around a short critical section.
        let script = format!(
            "echo start $(date +%s%N) $LUCKY_FENCE >> {0}; sleep 0.05; echo end $(date +%s%N) >> {0}",
            log.display()
        );
        let children: Vec<Child> = (0..3)
            .map(|_| {
                exec(
                    &backend,
                    &name,
                    &["--wait", "30s", "--ttl", "5s"],
                    &["sh", "-c", &format!("for i in 1 2 3 4; do {script}; done")],
                )
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
            })
            .collect();
        // Each lucky runs the 4-iteration loop inside one lock; run a few more rounds of
        // single sections, all contending.
        let more: Vec<Child> = (0..6)
            .map(|_| {
                exec(&backend, &name, &["--wait", "30s"], &["sh", "-c", &script])
                    .stdin(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children.into_iter().chain(more) {
            assert!(c.wait().unwrap().success(), "{backend}");
        }
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 * (3 * 4 + 6), "{backend}: {text}");
        // Every start is followed by its own end before the next start: no interleaving.
        let mut last_end = 0u128;
        let mut fences = Vec::new();
        for pair in lines.chunks(2) {
            let start: Vec<&str> = pair[0].split_whitespace().collect();
            let end: Vec<&str> = pair[1].split_whitespace().collect();
            assert_eq!((start[0], end[0]), ("start", "end"), "{backend}: {text}");
            let (s, e): (u128, u128) = (start[1].parse().unwrap(), end[1].parse().unwrap());
            assert!(s >= last_end && e >= s, "{backend}: overlap in\n{text}");
            last_end = e;
            fences.push(start[2].parse::<u64>().unwrap());
        }
        // Within one lucky run the fence stays; across runs it grows.
        assert!(
            fences.windows(2).all(|w| w[0] <= w[1]),
            "{backend}: {fences:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn no_wait_on_a_held_lock_exits_75_at_once() {
    for backend in backends() {
        let name = unique("nowait");
        let mut holder = exec(&backend, &name, &[], &["sleep", "3"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let t = Instant::now();
        let out = run(&mut exec(&backend, &name, &["--no-wait"], &["true"]));
        assert_eq!(out.status.code(), Some(75), "{backend}: {out:?}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{backend}: {:?}",
            t.elapsed()
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("not acquired"));
        holder.wait().unwrap();
    }
}

#[test]
fn a_sigkilled_luckys_lock_frees_after_the_ttl() {
    for backend in backends() {
        let name = unique("sigkill");
        // SIGKILL reaches lucky alone (as a crash would): its command lives on, orphaned, and
        // is cleaned up at the end.
        let mut holder = exec(&backend, &name, &["--ttl", "2s"], &["sleep", "29.5"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1_000));
        holder.kill().unwrap();
        holder.wait().unwrap();
        let killed = Instant::now();
        let out = run(&mut exec(&backend, &name, &["--wait", "20s"], &["true"]));
        assert_eq!(out.status.code(), Some(0), "{backend}: {out:?}");
        let waited = killed.elapsed();
        // Not at once (the lease outlives lucky), and within a few seconds of the ttl.
        assert!(
            waited >= Duration::from_millis(300),
            "{backend}: freed after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(10),
            "{backend}: freed after {waited:?}"
        );
        let _ = Command::new("pkill").args(["-f", "sleep 29.5"]).status();
    }
}

#[test]
fn a_lost_lock_terminates_the_command_and_exits_76() {
    let Some(server) = EtcdProcess::start(23_794) else {
        return;
    };
    let backend = format!("etcd://127.0.0.1:{}", server.port);
    let name = unique("lost");
    let marker = std::env::temp_dir().join(format!("lucky-cli-term-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script = format!(
        "trap 'echo term > {}; exit 0' TERM; while true; do sleep 0.1; done",
        marker.display()
    );
    let child = exec(
        &backend,
        &name,
        &["--ttl", "2s", "--grace", "3s"],
        &["sh", "-c", &script],
    )
    .stdin(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1_000));
    server.pause();
    let out = child.wait_with_output().unwrap();
    server.resume();
    assert_eq!(out.status.code(), Some(76), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("lost"));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "term");
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn sigterm_to_lucky_reaches_the_command_and_the_lock_is_released() {
    for backend in backends() {
        let name = unique("forward");
        let marker = std::env::temp_dir().join(format!("lucky-cli-fwd-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let script = format!(
            "trap 'echo got-term > {}; exit 7' TERM; while true; do sleep 0.1; done",
            marker.display()
        );
        let child = exec(&backend, &name, &[], &["sh", "-c", &script])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1_000));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(7),
            "{backend}: the command's status"
        );
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "got-term");
        // Released: another lucky gets it at once.
        let out = run(&mut exec(&backend, &name, &["--no-wait"], &["true"]));
        assert_eq!(out.status.code(), Some(0), "{backend}: {out:?}");
        let _ = std::fs::remove_file(&marker);
    }
}

#[test]
fn bad_input_exits_64_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["exec", "--name", "x", "--", "true"],
            "--backend URL is required",
        ),
        (
            &["exec", "--backend", "redis://127.0.0.1:7001", "--", "true"],
            "--name NAME is required",
        ),
        (
            &[
                "exec",
                "--backend",
                "consul://h:1",
                "--name",
                "x",
                "--",
                "true",
            ],
            "unknown backend scheme",
        ),
        (
            &[
                "exec",
                "--backend",
                "zk://h:1?standalone=true&tick=2s",
                "--name",
                "x",
                "--",
                "true",
            ],
            "standalone=true leaves no tick=",
        ),
        (
            &[
                "exec",
                "--backend",
                "zk://u:p@h:1",
                "--name",
                "x",
                "--",
                "true",
            ],
            "no credentials",
        ),
        (
            &["exec", "--backend", "nonsense", "--name", "x", "--", "true"],
            "bad backend URL",
        ),
        (
            &[
                "exec",
                "--backend",
                "redis://h:99999",
                "--name",
                "x",
                "--",
                "true",
            ],
            "bad port",
        ),
        (
            &[
                "exec",
                "--backend",
                "redis://127.0.0.1:1",
                "--name",
                "x",
                "--ttl",
                "5 parsecs",
                "--",
                "true",
            ],
            "--ttl",
        ),
        (
            &[
                "exec",
                "--backend",
                "redis://127.0.0.1:1",
                "--name",
                "x",
                "--ttl",
                "0",
                "--",
                "true",
            ],
            "must be positive",
        ),
        (
            &[
                "exec",
                "--backend",
                "redis://127.0.0.1:1",
                "--name",
                "x",
                "--wait",
                "soon",
                "--",
                "true",
            ],
            "--wait",
        ),
        (
            &[
                "exec",
                "--backend",
                "redis://127.0.0.1:1",
                "--name",
                "x",
                "--no-wait",
                "--wait",
                "1s",
                "--",
                "true",
            ],
            "together",
        ),
        (
            &[
                "exec",
                "--backend",
                "redis://127.0.0.1:1",
                "--name",
                "x",
                "--frobnicate",
                "--",
                "true",
            ],
            "unknown flag",
        ),
        (
            &["exec", "--backend", "redis://127.0.0.1:1", "--name", "x"],
            "missing `-- CMD",
        ),
        (
            &[
                "exec",
                "--backend",
                "redis://127.0.0.1:1",
                "--name",
                "x",
                "--",
            ],
            "no command",
        ),
        (&["frobnicate"], "unknown command"),
        (&[], "no command"),
    ];
    for (args, expect) in cases {
        let out = run(Command::new(lucky_bin()).args(*args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(err.contains("usage:"), "{args:?}: {err}");
    }
    let out = run(Command::new(lucky_bin()).args(["exec", "--help"]));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("LUCKY_FENCE") && help.contains("Examples:"));
    // A password in a bad URL never reaches the message.
    let out = run(Command::new(lucky_bin()).args([
        "exec",
        "--backend",
        "redis://:hunter2@h:x1",
        "--name",
        "x",
        "--",
        "true",
    ]));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

#[test]
fn lucky_sim_runs_the_simulator_with_a_summary_table() {
    let out = run(Command::new(lucky_bin()).args([
        "sim",
        "sweep",
        "--scenario",
        "etcd-clock-jump",
        "--seeds",
        "20",
    ]));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("scenario") && text.contains("verdict"),
        "{text}"
    );
    assert!(text.contains("breaks as expected"), "{text}");
    assert!(text.contains("summary runs=20 violations=0"), "{text}");
    let out =
        run(Command::new(lucky_bin()).args(["sim", "sweep", "--scenario", "nope", "--seeds", "1"]));
    assert_eq!(out.status.code(), Some(64));
}

/// A `--no-wait` try that finds the lock taken exits 75 and leaves nothing behind: no key on
/// any Redis node, no key in the etcd queue, so the next client gets the lock as soon as the
/// holder releases (not a ttl later). The Redis backend is given as a list of full URLs, the
/// form `LUCKY_REDIS_URLS` uses.
#[test]
fn a_failed_no_wait_try_leaves_nothing_behind() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis_up = rt.block_on(redis_available(&redis_urls()));
    let etcd_up = rt.block_on(etcd_available(&etcd_endpoints()));
    let mut cases = Vec::new();
    if redis_up {
        cases.push(redis_urls().join(","));
    }
    if etcd_up {
        cases.push(etcd_backend());
    }
    for backend in cases {
        let name = unique("no-wait-leftover");
        // A holder for 3 s, then a burst of no-wait tries against it.
        let mut holder = exec(&backend, &name, &["--ttl", "30s"], &["sleep", "3"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        for _ in 0..5 {
            let out = run(&mut exec(
                &backend,
                &name,
                &["--no-wait", "--ttl", "30s"],
                &["true"],
            ));
            assert_eq!(out.status.code(), Some(75), "{backend}: {out:?}");
        }
        // Only the holder's key exists now.
        let keys = rt.block_on(lock_keys(&backend, &name));
        assert!(
            keys.iter().all(|&k| k <= 1),
            "{backend}: keys per node {keys:?}"
        );
        assert!(holder.wait().unwrap().success());
        // Released: the next try gets it at once (a leftover key would block it for 30 s).
        let t = Instant::now();
        let out = run(&mut exec(&backend, &name, &["--no-wait"], &["true"]));
        assert!(out.status.success(), "{backend}: {out:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let keys = rt.block_on(lock_keys(&backend, &name));
        assert!(
            keys.iter().all(|&k| k == 0),
            "{backend}: left behind {keys:?}"
        );
    }
}

/// Keys of lock `name` on every Redis node, or in the etcd queue (one count).
async fn lock_keys(backend: &str, name: &str) -> Vec<usize> {
    if backend.starts_with("redis") {
        let mut counts = Vec::new();
        for url in redis_urls() {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let n: usize = redis::cmd("EXISTS")
                .arg(name)
                .query_async(&mut c)
                .await
                .unwrap();
            counts.push(n);
        }
        counts
    } else {
        let mut c = etcd_client::Client::connect(etcd_endpoints(), None)
            .await
            .unwrap();
        let prefix = format!("{name}/");
        let r = c
            .get(
                prefix,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .unwrap();
        vec![r.kvs().len()]
    }
}

/// `lucky exec --backend postgres://...?mode=advisory --name 42` and a plain
/// `pg_advisory_lock(42)` (what psql runs) exclude each other; likewise `mode=get_lock` and a
/// plain `GET_LOCK('x', 0)` on MySQL/MariaDB.
#[test]
fn session_modes_exclude_the_servers_own_locks() {
    let rt = lucky_tests::bench::runtime();
    let base = std::env::var("LUCKY_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if rt.block_on(postgres_available()) {
        let key = i64::from(std::process::id()) + 4_200_000_000;
        let backend = format!("{base}?mode=advisory");
        let psql = rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.execute("SELECT pg_advisory_lock($1)", &[&key])
                .await
                .unwrap();
            c
        });
        let name = key.to_string();
        let out = run(&mut exec(&backend, &name, &["--no-wait"], &["true"]));
        assert_eq!(out.status.code(), Some(75), "{out:?}");
        rt.block_on(psql.execute("SELECT pg_advisory_unlock($1)", &[&key]))
            .unwrap();
        let mut holder = exec(&backend, &name, &[], &["sleep", "2"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let taken: bool = rt
            .block_on(psql.query_one("SELECT pg_try_advisory_lock($1)", &[&key]))
            .unwrap()
            .get(0);
        assert!(!taken, "psql took the key lucky exec holds");
        assert!(holder.wait().unwrap().success());
    }
    if rt.block_on(mysql_available()) {
        let my = format!("{}&mode=get_lock", mysql_backend());
        let name = unique("getlock").replace('/', "_");
        let mut holder = exec(&my, &name, &[], &["sleep", "2"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let got: Option<i64> = rt.block_on(async {
            use mysql_async::prelude::Queryable;
            let url = std::env::var("LUCKY_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
            let mut c = mysql_async::Conn::from_url(url).await.unwrap();
            let r = c
                .exec_first("SELECT GET_LOCK(?, 0)", (&name,))
                .await
                .unwrap();
            c.disconnect().await.unwrap();
            r
        });
        assert_eq!(got, Some(0), "GET_LOCK took the name lucky exec holds");
        assert!(holder.wait().unwrap().success());
    }
}
