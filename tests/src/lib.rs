//! Shared helpers for Lucky's integration tests, property suites and benchmarks.

use lucky_core::redlock::{Command, Reply};
use lucky_core::{Event, Instant, LockMachine, Output, Transmit};
pub use lucky_sim::redis::RedisNode;
use lucky_sim::Server;

/// Drains a machine's outputs into commands and events.
pub fn drain<M: LockMachine>(m: &mut M) -> (Vec<Transmit<M::Command>>, Vec<Event>) {
    let mut sent = Vec::new();
    let mut events = Vec::new();
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(t) => sent.push(t),
            Output::Event(e) => events.push(e),
        }
    }
    (sent, events)
}

/// Runs a RedLock machine against `nodes` with zero network delay, answering every command at
/// `now`, until no output is left. Returns the events seen.
pub fn run_instant<M>(m: &mut M, nodes: &mut [RedisNode], now: Instant) -> Vec<Event>
where
    M: LockMachine<Command = Command, Reply = Reply>,
{
    let mut events = Vec::new();
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(t) => {
                let reply = nodes[t.node.index()].apply(now.as_nanos(), &t.command);
                m.handle_reply(now, t.node, t.op, reply);
            }
            Output::Event(e) => events.push(e),
        }
    }
    events
}

/// Helpers of the benchmark binaries.
#[allow(clippy::disallowed_methods)] // benchmarks read the clock
pub mod bench {
    use std::time::{Duration, Instant};

    /// The length of each timed run: `LUCKY_BENCH_SECS` (default 3 s).
    pub fn secs() -> Duration {
        let s = std::env::var("LUCKY_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0);
        Duration::from_secs_f64(s)
    }

    /// The `p` quantile (0..=1) of `v`, sorting it.
    pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
        if v.is_empty() {
            return Duration::ZERO;
        }
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }

    /// What a contended hand-off run measured.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Handoff {
        /// Acquisitions in all.
        pub n: usize,
        /// 99th percentile of the wait for the lock.
        pub p99: Duration,
        /// Longest wait.
        pub max: Duration,
        /// Fewest acquisitions of one task over most (1.0: perfectly fair).
        pub fairness: f64,
    }

    impl Handoff {
        /// Summarises the waits each task recorded.
        pub fn from_tasks(per_task: Vec<Vec<Duration>>) -> Handoff {
            let counts: Vec<usize> = per_task.iter().map(Vec::len).collect();
            let mut all: Vec<Duration> = per_task.into_iter().flatten().collect();
            let p99 = percentile(&mut all, 0.99);
            let mn = counts.iter().min().copied().unwrap_or(0);
            let mx = counts.iter().max().copied().unwrap_or(1).max(1);
            Handoff {
                n: all.len(),
                p99,
                max: all.last().copied().unwrap_or_default(),
                fairness: mn as f64 / mx as f64,
            }
        }
    }

    /// The runtime every bench binary uses: two worker threads, as the machine has two cores.
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    }

    /// CPU time this process has used (all threads), from `/proc/self/stat`; None elsewhere.
    pub fn process_cpu() -> Option<Duration> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) start at field 3.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // USER_HZ is 100 on every Linux this runs on.
        Some(Duration::from_millis(ticks * 10))
    }

    /// A boxed future of one benchmark cycle.
    pub type Cycle = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

    /// One throughput case: a name and `cycle(task, n)`.
    pub type Case = (
        &'static str,
        std::sync::Arc<dyn Fn(usize, u64) -> Cycle + Send + Sync>,
    );

    /// One acquire (no wait, ttl 30 s) and release of `<prefix>/<task>` through any client:
    /// the `lucky` case of a benchmark.
    pub fn lock_cycle<L>(
        locks: L,
        prefix: String,
    ) -> std::sync::Arc<dyn Fn(usize, u64) -> Cycle + Send + Sync>
    where
        L: lucky::Locker + Clone + 'static,
    {
        std::sync::Arc::new(move |task: usize, _n: u64| {
            let (locks, name) = (locks.clone(), format!("{prefix}/{task}"));
            Box::pin(async move {
                let g = locks
                    .acquire(&name, Duration::from_secs(30), lucky::WaitFor::No)
                    .await
                    .expect("the benchmark's own name is free");
                g.release().await.expect("a release");
            }) as Cycle
        })
    }

    /// What one throughput case measured over its slices.
    #[derive(Clone, Debug)]
    pub struct Throughput {
        /// The case's name.
        pub name: &'static str,
        /// Cycles per second in each slice.
        pub rates: Vec<f64>,
        /// Client CPU per cycle (this process, all threads) in each slice.
        pub cpu: Vec<Duration>,
    }

    impl Throughput {
        /// Median cycles per second.
        pub fn rate(&self) -> f64 {
            median(&self.rates)
        }
        /// Median client CPU per cycle.
        pub fn cpu(&self) -> Duration {
            let mut v = self.cpu.clone();
            percentile(&mut v, 0.5)
        }
        /// The median over slices of this case's rate over `base`'s in the same round.
        pub fn ratio(&self, base: &Throughput) -> f64 {
            let r: Vec<f64> = self
                .rates
                .iter()
                .zip(&base.rates)
                .map(|(a, b)| a / b)
                .collect();
            median(&r)
        }
    }

    fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    /// Runs every case with `tasks` tasks in `rounds` rounds of alternating slices (case A,
    /// B, C, A, B, C, ...), `total` split over them: a slow moment of a busy machine then
    /// hits every case alike, and each round gives one ratio between cases.
    pub async fn throughput_rounds(
        tasks: usize,
        rounds: usize,
        total: Duration,
        cases: &[Case],
    ) -> Vec<Throughput> {
        let slice = total / (rounds * cases.len()).max(1) as u32;
        let mut out: Vec<Throughput> = cases
            .iter()
            .map(|(name, _)| Throughput {
                name,
                rates: Vec::new(),
                cpu: Vec::new(),
            })
            .collect();
        for _ in 0..rounds {
            for (i, (_, cycle)) in cases.iter().enumerate() {
                let cpu0 = process_cpu().unwrap_or_default();
                let start = Instant::now();
                let end = start + slice;
                let handles: Vec<_> = (0..tasks)
                    .map(|t| {
                        let cycle = cycle.clone();
                        tokio::spawn(async move {
                            let mut n = 0u64;
                            while Instant::now() < end {
                                cycle(t, n).await;
                                n += 1;
                            }
                            n
                        })
                    })
                    .collect();
                let mut total = 0u64;
                for h in handles {
                    total += h.await.unwrap_or(0);
                }
                let secs = start.elapsed().as_secs_f64();
                let cpu = process_cpu().unwrap_or_default().saturating_sub(cpu0);
                out[i].rates.push(total as f64 / secs);
                out[i].cpu.push(cpu / total.max(1) as u32);
            }
        }
        out
    }

    impl Handoff {
        /// Waits for the contending tasks and summarises the waits they recorded.
        pub async fn join(handles: Vec<tokio::task::JoinHandle<Vec<Duration>>>) -> Handoff {
            let mut per_task = Vec::with_capacity(handles.len());
            for h in handles {
                per_task.push(h.await.expect("a hand-off task panicked"));
            }
            Handoff::from_tasks(per_task)
        }

        /// One line for the report: `what` (the setting) and `label` (the client).
        pub fn line(&self, what: &str, label: &str) -> String {
            format!(
                "hand-off, {what}: {label}: {} acquisitions, wait p99 {:?}, max {:?}, min/max per task {:.2}",
                self.n, self.p99, self.max, self.fairness
            )
        }
    }

    /// The hand-off of the lock `name` of `locks` between `tasks` tasks for the bench time:
    /// each takes it (ttl 30 s, waiting up to four bench times), holds it 1 ms, releases it
    /// and asks again at once; their waits, summarised.
    pub async fn handoff<L>(locks: L, name: String, tasks: usize) -> Handoff
    where
        L: lucky::Locker + Clone + 'static,
    {
        let end = Instant::now() + secs();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (locks, name) = (locks.clone(), name.clone());
                tokio::spawn(async move {
                    let mut waits = Vec::new();
                    while Instant::now() < end {
                        let t = Instant::now();
                        let wait = lucky::WaitFor::For(secs() * 4);
                        let g = locks
                            .acquire(&name, Duration::from_secs(30), wait)
                            .await
                            .expect("the hand-off lock within four bench times");
                        waits.push(t.elapsed());
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        g.release().await.expect("a release");
                    }
                    waits
                })
            })
            .collect();
        Handoff::join(handles).await
    }

    /// The median latency of each case's cycle, run as task `task`: one cycle of each case in
    /// turn, `iters` times (a slow moment of a busy machine then hits every case alike).
    pub async fn serial_p50s(iters: usize, task: usize, cases: &[Case]) -> Vec<Duration> {
        let mut lat: Vec<Vec<Duration>> = vec![Vec::with_capacity(iters); cases.len()];
        for i in 0..iters {
            for (c, (_, cycle)) in cases.iter().enumerate() {
                let t = Instant::now();
                cycle(task, i as u64).await;
                lat[c].push(t.elapsed());
            }
        }
        lat.iter_mut().map(|l| percentile(l, 0.5)).collect()
    }

    /// The median latency of `iters` calls of `cycle(i)`, one after the other.
    pub async fn serial_p50<F, Fut>(iters: usize, mut cycle: F) -> Duration
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut lat = Vec::with_capacity(iters);
        for i in 0..iters {
            let t = Instant::now();
            cycle(i as u64).await;
            lat.push(t.elapsed());
        }
        percentile(&mut lat, 0.5)
    }
}

/// Real servers for the adapter tests.
///
/// Private SQL servers ([`servers::PgCluster`], [`servers::MariaDb`]) listen on fixed ports on 127.0.0.1, each
/// port used by one test only, so no two tests meet however a runner schedules them (the
/// tests of a binary run at once): 25432 and 24306 `postgres_tls` and `mysql_tls`;
/// 25433-25435 and 24307-24311 `sql_restart`; 26432 PgBouncer in `postgres_advisory`;
/// 25181-25189 and the ensemble 25191-25193 (quorum 25291-25293, elections 25391-25393)
/// [`servers::ZkServer`]s of `zookeeper_adapter`. All
/// below Linux's ephemeral range (32768-60999): a client reconnecting to a port whose server is
/// down can be handed that very port as its own source port and connect to itself, which then
/// keeps the restarting server from binding it.
#[allow(clippy::disallowed_methods)] // tests wait for real processes
pub mod servers {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// `tag_` and 8 random hex digits: a name (table, database, application name) no other
    /// test or run uses.
    pub fn unique(tag: &str) -> String {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        format!("{tag}_{:08x}", u32::from_le_bytes(b))
    }

    /// A fresh directory `prefix-<pid>` with a test CA (`ca.pem`), another CA (`other.pem`) and
    /// a server certificate for 127.0.0.1 signed by the first (`server.pem`, `server.key`),
    /// made with openssl; None (the test skips) when openssl is missing and servers are not
    /// required.
    pub fn test_certs(prefix: &str) -> Option<std::path::PathBuf> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_err() || !make_certs(&dir) {
            assert!(
                !required(),
                "openssl is needed for the TLS test (LUCKY_REQUIRE_SERVERS=1)"
            );
            eprintln!("skipping: openssl not installed");
            return None;
        }
        Some(dir)
    }

    /// A CA and a server certificate for 127.0.0.1 in `dir`, or false if openssl is missing.
    fn make_certs(dir: &std::path::Path) -> bool {
        let run = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .is_err()
        {
            return false;
        }
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=lucky-test-ca",
        ]) && run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]) && run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-days",
            "2",
            "-subj",
            "/CN=some-other-ca",
        ]) && run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ])
    }

    /// The Redis node URLs: `LUCKY_REDIS_URLS` (comma-separated), else the five nodes that
    /// `scripts/services.sh start` runs on 127.0.0.1:7001-7005.
    pub fn redis_urls() -> Vec<String> {
        match std::env::var("LUCKY_REDIS_URLS") {
            Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_owned()).collect(),
            _ => (7001..=7005)
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
        }
    }

    /// A private PgBouncer (Debian's `pgbouncer`, run as `postgres`) on 127.0.0.1:`port` in
    /// front of the PostgreSQL on 127.0.0.1:5432, pooling as `mode` (`transaction`,
    /// `session`); stopped and its directory removed when dropped. None (the test skips)
    /// when pgbouncer or root is missing, unless `LUCKY_REQUIRE_SERVERS=1`.
    #[derive(Debug)]
    pub struct PgBouncer {
        /// Where it listens.
        pub port: u16,
        dir: std::path::PathBuf,
    }

    impl PgBouncer {
        /// Starts one and waits until it accepts connections.
        pub fn start(mode: &str, port: u16) -> Option<PgBouncer> {
            use std::process::{Command, Stdio};
            let dir =
                std::env::temp_dir().join(format!("lucky-pgbouncer-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).ok()?;
            let d = dir.display();
            let ini = format!(
                "[databases]\n* = host=127.0.0.1 port=5432 user=postgres\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = any\npool_mode = {mode}\npidfile = {d}/pgbouncer.pid\n\
                 logfile = {d}/pgbouncer.log\n"
            );
            let ok = std::fs::write(dir.join("pgbouncer.ini"), ini).is_ok()
                && Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
                && Command::new("runuser")
                    .args(["-u", "postgres", "--", "pgbouncer", "-d"])
                    .arg(dir.join("pgbouncer.ini"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            let bouncer = PgBouncer { port, dir };
            let up = ok
                && (0..50).any(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                });
            if !up {
                assert!(
                    !required(),
                    "cannot start pgbouncer (scripts/services.sh installs it)"
                );
                eprintln!("skipping: cannot start pgbouncer");
                return None;
            }
            Some(bouncer)
        }
    }

    impl Drop for PgBouncer {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The PostgreSQL of this machine (`LUCKY_POSTGRES_URL`, default
    /// `postgres://postgres@127.0.0.1:5432/postgres`).
    pub fn postgres_url() -> String {
        std::env::var("LUCKY_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// A plain connection to [`postgres_url`] (as psql would hold one), or None (the test
    /// skips) when the server is absent; panics then under `LUCKY_REQUIRE_SERVERS=1`.
    pub async fn postgres_client() -> Option<tokio_postgres::Client> {
        match tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                Some(client)
            }
            Err(e) => {
                assert!(
                    !required(),
                    "PostgreSQL unreachable and LUCKY_REQUIRE_SERVERS=1: {e}"
                );
                eprintln!("skipping: PostgreSQL unreachable: {e}");
                None
            }
        }
    }

    /// Whether a missing server fails the test (`LUCKY_REQUIRE_SERVERS=1`, set in CI) rather
    /// than skipping it.
    pub fn required() -> bool {
        std::env::var("LUCKY_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
    }

    /// Whether every URL answers PING; if not, panics when servers are required, else prints
    /// why the test is skipped and returns false.
    pub async fn redis_available(urls: &[String]) -> bool {
        for u in urls {
            let ok = async {
                let client = redis::Client::open(u.as_str()).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(2), ok)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                assert!(
                    !required(),
                    "Redis at {u} is not reachable and LUCKY_REQUIRE_SERVERS=1"
                );
                eprintln!(
                    "skipping: Redis at {u} is not reachable (run scripts/services.sh start)"
                );
                return false;
            }
        }
        true
    }

    /// Runs `cmd` (a server's set-up: `initdb`, `mariadb-install-db`), panicking with its
    /// output if it fails: its prerequisites were there, so a failure is the test's.
    fn set_up(cmd: &mut Command) {
        let out = cmd.output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "{cmd:?} failed ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("{cmd:?} did not run: {e}"),
        }
    }

    /// Sends `sig` (as `kill` spells it) to `child`, if it runs.
    fn signal(child: &Option<Child>, sig: &str) {
        if let Some(c) = child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// SIGKILLs `child` and reaps it.
    fn kill(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A redis-server process of the test's own, for real faults (SIGSTOP, kill, restart).
    #[derive(Debug)]
    pub struct RedisProcess {
        /// Its port on 127.0.0.1.
        pub port: u16,
        extra: Vec<String>,
        child: Option<Child>,
    }

    impl RedisProcess {
        /// Starts `redis-server` on `port` without persistence, or None if it is not installed
        /// (panics instead when servers are required).
        pub fn start(port: u16) -> Option<RedisProcess> {
            RedisProcess::start_with(port, &[])
        }

        /// Like [`start`](Self::start), with extra `redis-server` arguments.
        pub fn start_with(port: u16, extra: &[&str]) -> Option<RedisProcess> {
            let mut p = RedisProcess {
                port,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            if !p.spawn() {
                assert!(
                    !required(),
                    "cannot start redis-server (LUCKY_REQUIRE_SERVERS=1)"
                );
                eprintln!("skipping: redis-server not installed (run scripts/services.sh start)");
                return None;
            }
            Some(p)
        }

        fn spawn(&mut self) -> bool {
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args([
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ])
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let Ok(child) = child else { return false };
            self.child = Some(child);
            // Wait until it accepts connections.
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }

        /// Its URL.
        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        /// SIGSTOP: the process stays, its socket stays open, it answers nothing.
        pub fn pause(&self) {
            signal(&self.child, "-STOP");
        }

        /// SIGCONT.
        pub fn resume(&self) {
            signal(&self.child, "-CONT");
        }

        /// SIGKILL.
        pub fn kill(&mut self) {
            kill(&mut self.child);
        }

        /// Starts it again on the same port (empty).
        pub fn restart(&mut self) -> bool {
            self.kill();
            self.spawn()
        }
    }

    impl Drop for RedisProcess {
        fn drop(&mut self) {
            self.resume();
            self.kill();
        }
    }

    /// The etcd endpoint: `LUCKY_ETCD_ENDPOINTS` (comma-separated), else the member that
    /// `scripts/services.sh start` runs on 127.0.0.1:2379.
    pub fn etcd_endpoints() -> Vec<String> {
        match std::env::var("LUCKY_ETCD_ENDPOINTS") {
            Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_owned()).collect(),
            _ => vec!["http://127.0.0.1:2379".to_owned()],
        }
    }

    /// Whether etcd answers at `endpoints`; if not, panics when servers are required, else
    /// prints why the test is skipped and returns false.
    pub async fn etcd_available(endpoints: &[String]) -> bool {
        let ok = async {
            let mut c = etcd_client::Client::connect(endpoints, None).await.ok()?;
            c.get("lucky-probe", None).await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(3), ok)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return true;
        }
        assert!(
            !required(),
            "etcd at {endpoints:?} is not reachable and LUCKY_REQUIRE_SERVERS=1"
        );
        eprintln!(
            "skipping: etcd at {endpoints:?} is not reachable (run scripts/services.sh start)"
        );
        false
    }

    /// An etcd member of the test's own (data in a temporary folder), for real faults.
    #[derive(Debug)]
    pub struct EtcdProcess {
        /// Client port on 127.0.0.1 (the peer port is the next one).
        pub port: u16,
        dir: std::path::PathBuf,
        /// Server certificate, key and CA files: clients connect over TLS.
        tls: Option<[String; 3]>,
        child: Option<Child>,
    }

    impl EtcdProcess {
        /// Starts `etcd` on `port` (peer `port + 1`), or None if it is not installed (panics
        /// instead when servers are required).
        pub fn start(port: u16) -> Option<EtcdProcess> {
            EtcdProcess::start_tls(port, None)
        }

        /// Like [`start`](Self::start); with `tls` (certificate, key, CA files) clients must
        /// use `https://`.
        pub fn start_tls(port: u16, tls: Option<[String; 3]>) -> Option<EtcdProcess> {
            let dir =
                std::env::temp_dir().join(format!("lucky-etcd-{port}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let mut p = EtcdProcess {
                port,
                dir,
                tls,
                child: None,
            };
            if !p.spawn() {
                assert!(!required(), "cannot start etcd (LUCKY_REQUIRE_SERVERS=1)");
                eprintln!("skipping: etcd not installed (run scripts/services.sh start)");
                return None;
            }
            Some(p)
        }

        fn spawn(&mut self) -> bool {
            let client = self.endpoint();
            let peer = format!("http://127.0.0.1:{}", self.port + 1);
            let child = Command::new("etcd")
                .args(["--name", "lucky-test", "--data-dir"])
                .arg(self.dir.join("data"))
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args(["--initial-cluster", &format!("lucky-test={peer}")])
                .args(self.tls.iter().flat_map(|[cert, key, _]| {
                    ["--cert-file", cert.as_str(), "--key-file", key.as_str()]
                }))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let Ok(child) = child else { return false };
            self.child = Some(child);
            // Wait until it serves (a leader is elected).
            for _ in 0..200 {
                let ok = Command::new("etcdctl")
                    .args(
                        self.tls
                            .iter()
                            .flat_map(|[_, _, ca]| ["--cacert", ca.as_str()]),
                    )
                    .args(["--endpoints", &client, "endpoint", "health"])
                    .env("ETCDCTL_API", "3")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        }

        /// Its endpoint.
        pub fn endpoint(&self) -> String {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://127.0.0.1:{}", self.port)
        }

        /// SIGSTOP: the process stays, its socket stays open, it answers nothing.
        pub fn pause(&self) {
            signal(&self.child, "-STOP");
        }

        /// SIGCONT.
        pub fn resume(&self) {
            signal(&self.child, "-CONT");
        }

        /// SIGKILL.
        pub fn kill(&mut self) {
            kill(&mut self.child);
        }

        /// Starts it again on the same port with the same data.
        pub fn restart(&mut self) -> bool {
            self.kill();
            self.spawn()
        }
    }

    impl Drop for EtcdProcess {
        fn drop(&mut self) {
            self.resume();
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Runs `cmd` with its output discarded; whether it ran and succeeded.
    fn quiet(cmd: &mut Command) -> bool {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Sends `sig` (as `kill` spells it: `-STOP`, `-CONT`, `-TERM`) to the process `pid`.
    fn signal_pid(pid: u32, sig: &str) -> bool {
        quiet(Command::new("kill").args([sig, &pid.to_string()]))
    }

    /// The files of a [`test_certs`] folder that a private server is given.
    const CERT_FILES: [&str; 4] = ["ca.pem", "other.pem", "server.pem", "server.key"];

    /// A fresh, empty folder for a private server of kind `kind` on `port` (the port and the
    /// process id in its name: no other test or run shares it).
    fn private_dir(kind: &str, port: u16) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lucky-{kind}-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Copies the certificates of `certs` (a [`test_certs`] folder) into `dir/certs`.
    fn copy_certs(certs: &Path, dir: &Path) -> bool {
        std::fs::create_dir_all(dir.join("certs")).is_ok()
            && CERT_FILES
                .iter()
                .all(|f| std::fs::copy(certs.join(f), dir.join("certs").join(f)).is_ok())
    }

    /// Where Debian's PostgreSQL 15 keeps its programs.
    const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

    /// A PostgreSQL cluster of the test's own: made by `initdb` as the `postgres` user in a
    /// temporary folder, listening on 127.0.0.1:`port` only (trust authentication), its Unix
    /// socket in that folder. With TLS (a [`test_certs`] folder), it serves `server.pem` and
    /// takes only `hostssl` connections. Stopped (`pg_ctl -m immediate`) and its folder removed
    /// when dropped.
    #[derive(Debug)]
    pub struct PgCluster {
        /// Its port on 127.0.0.1.
        pub port: u16,
        dir: PathBuf,
    }

    impl PgCluster {
        /// Makes and starts one, waiting until it accepts connections; None (the test skips)
        /// when root or initdb is missing, unless `LUCKY_REQUIRE_SERVERS=1` (then it panics).
        /// `tls`: a [`test_certs`] folder, whose certificates are copied in (see
        /// [`cert`](Self::cert)).
        pub fn start(port: u16, tls: Option<&Path>) -> Option<PgCluster> {
            let dir = private_dir("pg", port);
            // The server reads its key as `postgres`, and only from a file no one else can
            // read.
            let made = std::fs::create_dir_all(&dir).is_ok()
                && tls.is_none_or(|certs| copy_certs(certs, &dir))
                && Path::new(PG_BIN).join("initdb").exists()
                && quiet(Command::new("chown").args(["-R", "postgres"]).arg(&dir))
                && (tls.is_none()
                    || quiet(
                        Command::new("chmod")
                            .arg("600")
                            .arg(dir.join("certs/server.key")),
                    ));
            if !made {
                let _ = std::fs::remove_dir_all(&dir);
                assert!(
                    !required(),
                    "cannot make a PostgreSQL cluster (root and initdb needed)"
                );
                eprintln!("skipping: cannot make a PostgreSQL cluster (root and initdb needed)");
                return None;
            }
            // From here on, dropping it cleans up (a cluster that never ran stops as a no-op).
            let cluster = PgCluster { port, dir };
            set_up(
                Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(Path::new(PG_BIN).join("initdb"))
                    .args(["-A", "trust", "-U", "postgres", "-D"])
                    .arg(cluster.dir.join("data")),
            );
            let d = cluster.dir.display();
            let mut conf = format!(
                "port={port}\nlisten_addresses='127.0.0.1'\nunix_socket_directories='{d}'\n"
            );
            if tls.is_some() {
                conf.push_str(&format!(
                    "ssl=on\nssl_cert_file='{d}/certs/server.pem'\n\
                     ssl_key_file='{d}/certs/server.key'\n"
                ));
            }
            let hba = if tls.is_some() { "hostssl" } else { "host" };
            let configured = std::fs::OpenOptions::new()
                .append(true)
                .open(cluster.dir.join("data/postgresql.conf"))
                .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
                .and_then(|()| {
                    std::fs::write(
                        cluster.dir.join("data/pg_hba.conf"),
                        format!("{hba} all all 127.0.0.1/32 trust\n"),
                    )
                });
            assert!(
                configured.is_ok(),
                "cannot configure the cluster: {configured:?}"
            );
            cluster.pg_ctl_start();
            Some(cluster)
        }

        /// `pg_ctl` as `postgres` with `args`, on this cluster's data; whether it succeeded.
        fn pg_ctl(&self, args: &[&str]) -> bool {
            quiet(
                Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(Path::new(PG_BIN).join("pg_ctl"))
                    .args(args)
                    .arg("-D")
                    .arg(self.dir.join("data")),
            )
        }

        /// Starts the server and waits until it accepts connections (panics with its log if
        /// it does not).
        fn pg_ctl_start(&self) {
            let log = self.dir.join("log");
            let started =
                self.pg_ctl(&["-w", "-t", "60", "-l", &log.display().to_string(), "start"]);
            assert!(
                started,
                "the PostgreSQL cluster on {} did not start: {}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }

        /// Its URL: user `postgres`, database `postgres`, plain TCP (add TLS settings for a
        /// TLS cluster).
        pub fn url(&self) -> String {
            format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
        }

        /// The file `name` of its certificates (`ca.pem`, `other.pem`, `server.pem`).
        pub fn cert(&self, name: &str) -> PathBuf {
            self.dir.join("certs").join(name)
        }

        /// The postmaster's process id (the first line of `postmaster.pid`), while it runs.
        pub fn pid(&self) -> Option<u32> {
            let text = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
            text.lines().next()?.trim().parse().ok()
        }

        /// Stops the server (`pg_ctl stop -m fast`: sessions are ended, a checkpoint
        /// written) and starts it again on the same data and port; returns once it accepts
        /// connections. Blocks: call it from `spawn_blocking` or `block_in_place`.
        pub fn restart(&self) {
            self.cont();
            let stopped = self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "stop"]);
            assert!(
                stopped,
                "the PostgreSQL cluster on {} did not stop",
                self.port
            );
            self.pg_ctl_start();
        }

        /// SIGSTOP to the postmaster: it stays, its socket stays open, it accepts no new
        /// session (the backends of open sessions go on).
        pub fn stop_signal(&self) {
            let pid = self.pid().expect("the postmaster's pid");
            assert!(signal_pid(pid, "-STOP"), "kill -STOP {pid}");
        }

        /// SIGCONT to the postmaster.
        pub fn cont(&self) {
            if let Some(pid) = self.pid() {
                signal_pid(pid, "-CONT");
            }
        }
    }

    impl Drop for PgCluster {
        fn drop(&mut self) {
            // A stopped postmaster would not act on the stop until continued.
            self.cont();
            self.pg_ctl(&["-m", "immediate", "stop"]);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Whether the program `name` is in a folder of `PATH`.
    fn on_path(name: &str) -> bool {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
    }

    /// The server binary of the installed MariaDB (MySQL's name as a fallback).
    fn mariadbd() -> Option<&'static str> {
        ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
            .into_iter()
            .find(|p| Path::new(p).exists())
    }

    /// A MariaDB server of the test's own: data made by `mariadb-install-db` in a temporary
    /// folder (root without a password), `mariadbd` run as the `mysql` user on
    /// 127.0.0.1:`port`, its socket, pid file and error log in that folder. With TLS (a
    /// [`test_certs`] folder) it serves `server.pem` and takes TLS connections only
    /// (`require_secure_transport=ON`). Killed and its folder removed when dropped.
    #[derive(Debug)]
    pub struct MariaDb {
        /// Its port on 127.0.0.1.
        pub port: u16,
        dir: PathBuf,
        args: Vec<String>,
        child: Option<Child>,
    }

    impl MariaDb {
        /// Makes and starts one, waiting until it accepts connections; None (the test skips)
        /// when root, mariadbd or mariadb-install-db is missing, unless
        /// `LUCKY_REQUIRE_SERVERS=1` (then it panics). `tls`: a [`test_certs`] folder, whose
        /// certificates are copied in (see [`cert`](Self::cert)).
        pub fn start(port: u16, tls: Option<&Path>) -> Option<MariaDb> {
            MariaDb::start_with(port, tls, &[])
        }

        /// Like [`start`](Self::start), with extra `mariadbd` options (`--wait-timeout=2`).
        pub fn start_with(port: u16, tls: Option<&Path>, extra: &[&str]) -> Option<MariaDb> {
            let dir = private_dir("mariadb", port);
            // The server runs as `mysql` and writes its data, socket, log and temporary files
            // under the folder: a server starting removes every `#sql*` file in its tmpdir, so
            // a shared /tmp would lose the temporary tables another one is installing with.
            let small = "--innodb-log-file-size=8M";
            let tmpdir = format!("--tmpdir={}", dir.join("tmp").display());
            let made = std::fs::create_dir_all(dir.join("tmp")).is_ok()
                && tls.is_none_or(|certs| copy_certs(certs, &dir))
                && mariadbd().is_some()
                && on_path("mariadb-install-db")
                && quiet(Command::new("chown").args(["-R", "mysql"]).arg(&dir))
                && (tls.is_none()
                    || quiet(
                        Command::new("chmod")
                            .arg("600")
                            .arg(dir.join("certs/server.key")),
                    ));
            if !made {
                let _ = std::fs::remove_dir_all(&dir);
                assert!(
                    !required(),
                    "cannot make a MariaDB server (root, mariadbd and mariadb-install-db needed)"
                );
                eprintln!("skipping: cannot make a MariaDB server (root, mariadbd and mariadb-install-db needed)");
                return None;
            }
            // From here on, dropping it cleans up.
            let mut server = MariaDb {
                port,
                dir,
                args: Vec::new(),
                child: None,
            };
            set_up(
                Command::new("mariadb-install-db")
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", server.dir.join("data").display()))
                    .args([
                        "--user=mysql",
                        "--auth-root-authentication-method=normal",
                        small,
                        &tmpdir,
                    ]),
            );
            let d = |f: &str| server.dir.join(f).display().to_string();
            let mut args = vec![
                "--no-defaults".to_owned(),
                format!("--datadir={}", d("data")),
                format!("--socket={}", d("mysqld.sock")),
                format!("--pid-file={}", d("mysqld.pid")),
                format!("--log-error={}", d("error.log")),
                tmpdir,
                "--user=mysql".to_owned(),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--port={port}"),
                "--skip-log-bin".to_owned(),
                small.to_owned(),
                "--innodb-buffer-pool-size=16M".to_owned(),
                "--performance-schema=OFF".to_owned(),
            ];
            if tls.is_some() {
                args.extend([
                    format!("--ssl-cert={}", d("certs/server.pem")),
                    format!("--ssl-key={}", d("certs/server.key")),
                    format!("--ssl-ca={}", d("certs/ca.pem")),
                    "--require-secure-transport=ON".to_owned(),
                ]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            server.args = args;
            server.spawn();
            Some(server)
        }

        /// Runs `mariadbd` and waits until it accepts connections; a server that exited (the
        /// port taken?) or never listens is a failure, with its log.
        fn spawn(&mut self) {
            let log = || std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
            let child = Command::new(mariadbd().expect("mariadbd"))
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mariadbd runs");
            let child = self.child.insert(child);
            for _ in 0..600 {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("mariadbd exited ({status}): {}", log());
                }
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!(
                "mariadbd did not listen on {} within 60 s: {}",
                self.port,
                log()
            );
        }

        /// Its URL: user `root`, database `test` (add TLS settings for a TLS server).
        pub fn url(&self) -> String {
            format!("mysql://root@127.0.0.1:{}/test", self.port)
        }

        /// The file `name` of its certificates (`ca.pem`, `other.pem`, `server.pem`).
        pub fn cert(&self, name: &str) -> PathBuf {
            self.dir.join("certs").join(name)
        }

        /// The process id of `mariadbd`, while it runs.
        pub fn pid(&self) -> Option<u32> {
            self.child.as_ref().map(Child::id)
        }

        /// Stops the server (SIGTERM: a clean shutdown that ends every connection; SIGKILL
        /// after 60 s) and starts it again on the same data and port; returns once it accepts
        /// connections. Blocks: call it from `spawn_blocking` or `block_in_place`.
        pub fn restart(&mut self) {
            self.cont();
            if let Some(mut child) = self.child.take() {
                signal_pid(child.id(), "-TERM");
                let until = Instant::now() + Duration::from_secs(60);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            self.spawn();
        }

        /// SIGSTOP to `mariadbd`: it stays, its sockets stay open, it answers nothing.
        pub fn stop_signal(&self) {
            let pid = self.pid().expect("mariadbd runs");
            assert!(signal_pid(pid, "-STOP"), "kill -STOP {pid}");
        }

        /// SIGCONT to `mariadbd`.
        pub fn cont(&self) {
            if let Some(pid) = self.pid() {
                signal_pid(pid, "-CONT");
            }
        }
    }

    impl Drop for MariaDb {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A private ZooKeeper server (Debian's, on the installed JRE) on 127.0.0.1:`port`,
    /// tickTime 100 ms (sessions of 0.2-60 s), its data in its own folder, for tests that
    /// stop, kill or restart it: standalone ([`ZkServer::start`]) or a member of an ensemble
    /// of the test's own ([`ZkServer::ensemble`]). Killed and its folder removed when dropped.
    #[derive(Debug)]
    pub struct ZkServer {
        /// Its client port on 127.0.0.1.
        pub port: u16,
        dir: PathBuf,
        child: Option<Child>,
    }

    impl ZkServer {
        /// Makes and starts a standalone server, waiting until it serves; None (the test
        /// skips) when Java or ZooKeeper's jars are missing, unless `LUCKY_REQUIRE_SERVERS=1`
        /// (then it panics).
        pub fn start(port: u16) -> Option<ZkServer> {
            let mut server = ZkServer::make(port, "")?;
            server.spawn();
            server.wait_serving();
            Some(server)
        }

        /// A three-member ensemble on `ports` (quorum ports `port + 100`, elections
        /// `port + 200`), syncLimit 5, started and serving; None as for [`ZkServer::start`].
        pub fn ensemble(ports: [u16; 3]) -> Option<Vec<ZkServer>> {
            let mut members = Vec::new();
            for (i, &port) in ports.iter().enumerate() {
                let peers: String = ports
                    .iter()
                    .enumerate()
                    .map(|(j, p)| format!("server.{}=127.0.0.1:{}:{}\n", j + 1, p + 100, p + 200))
                    .collect();
                let mut m = ZkServer::make(port, &format!("initLimit=20\nsyncLimit=5\n{peers}"))?;
                std::fs::write(m.dir.join("data/myid"), format!("{}\n", i + 1)).expect("myid");
                m.spawn();
                members.push(m);
            }
            for m in &mut members {
                m.wait_serving();
            }
            Some(members)
        }

        /// The folder and zoo.cfg of a server on `port`, with `extra` configuration lines.
        fn make(port: u16, extra: &str) -> Option<ZkServer> {
            let jar = Path::new("/usr/share/java/zookeeper.jar");
            if !jar.exists() || !on_path("java") {
                assert!(
                    !required(),
                    "cannot run ZooKeeper (java and Debian's zookeeper needed)"
                );
                eprintln!("skipping: cannot run ZooKeeper (java and Debian's zookeeper needed)");
                return None;
            }
            let dir = private_dir("zookeeper", port);
            let _ = std::fs::create_dir_all(dir.join("data"));
            let cfg = format!(
                "tickTime=100\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 minSessionTimeout=200\nmaxSessionTimeout=60000\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=srvr,cons\n{extra}",
                dir.join("data").display()
            );
            std::fs::write(dir.join("zoo.cfg"), cfg).expect("write zoo.cfg");
            Some(ZkServer {
                port,
                dir,
                child: None,
            })
        }

        fn spawn(&mut self) {
            let child = Command::new("java")
                .args([
                    "-Xmx128m",
                    "-Dzookeeper.snapshot.trust.empty=true",
                    "-cp",
                    "/usr/share/java/zookeeper.jar:/usr/share/java/zookeeper-jute.jar",
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                ])
                .arg(self.dir.join("zoo.cfg"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("java runs");
            self.child = Some(child);
        }

        fn wait_serving(&mut self) {
            for _ in 0..600 {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                    panic!("ZooKeeper on {} exited ({status})", self.port);
                }
                if zk_serves(self.port) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("ZooKeeper did not serve on {} within 60 s", self.port);
        }

        /// `127.0.0.1:<port>`.
        pub fn address(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        /// SIGSTOP to the server: it stays, its sockets stay open, it answers nothing, and
        /// its session clock jumps when it resumes.
        pub fn stop_signal(&self) {
            let pid = self.child.as_ref().map(Child::id).expect("ZooKeeper runs");
            assert!(signal_pid(pid, "-STOP"), "kill -STOP {pid}");
        }

        /// SIGCONT to the server.
        pub fn cont(&self) {
            if let Some(c) = &self.child {
                signal_pid(c.id(), "-CONT");
            }
        }

        /// SIGKILL to the server (its data stays in its folder).
        pub fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// Starts a killed server again on its data, without waiting (an ensemble member
        /// serves once it has rejoined a quorum: see [`ZkServer::serving`]).
        pub fn restart(&mut self) {
            self.kill();
            self.spawn();
        }

        /// Waits until the server serves again after [`ZkServer::restart`].
        pub fn serving(&mut self) {
            self.wait_serving();
        }

        /// The ids of the sessions connected to this server (`cons`), e.g. to find the
        /// member a client is on.
        pub fn sessions(&self) -> Vec<i64> {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
                return Vec::new();
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut out = String::new();
            if s.write_all(b"cons").is_err() || s.read_to_string(&mut out).is_err() {
                return Vec::new();
            }
            // ... sid=0x1000a3b2c4d0000,lop=...
            out.split("sid=0x")
                .skip(1)
                .filter_map(|t| {
                    let hex: String = t.chars().take_while(char::is_ascii_hexdigit).collect();
                    i64::from_str_radix(&hex, 16).ok()
                })
                .collect()
        }
    }

    impl Drop for ZkServer {
        fn drop(&mut self) {
            self.cont();
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Ends ZooKeeper session `id` from a second connection, as Curator's `KillSession` test
    /// helper does: connect with the session's id and password, then close it. The server
    /// deletes the session's ephemeral nodes at once. The password is the one the server
    /// derives from the id (`ZooKeeperServer.generatePasswd`: 16 bytes of
    /// `java.util.Random(id ^ 0xB3415C00)`), so no client library needs to hand it out; a
    /// wrong one would be refused (session id 0 in the answer).
    pub fn zk_close_session(port: u16, id: i64, timeout: Duration) -> Result<(), String> {
        use std::io::{Read, Write};
        let frame = |body: &[u8]| {
            let mut f = u32::try_from(body.len())
                .unwrap_or(0)
                .to_be_bytes()
                .to_vec();
            f.extend_from_slice(body);
            f
        };
        // ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId, passwd, readOnly;
        // then closeSession: RequestHeader(xid 1, type -11). Sent together: the session's own
        // client reconnects and takes the session back at once, cutting a slower connection
        // off between the two.
        let ms = i32::try_from(timeout.as_millis()).map_err(|e| e.to_string())?;
        let mut connect = Vec::new();
        connect.extend_from_slice(&0i32.to_be_bytes());
        connect.extend_from_slice(&0i64.to_be_bytes());
        connect.extend_from_slice(&ms.to_be_bytes());
        connect.extend_from_slice(&id.to_be_bytes());
        connect.extend_from_slice(&16i32.to_be_bytes());
        connect.extend_from_slice(&zk_password(id));
        connect.push(0);
        let mut bytes = frame(&connect);
        bytes.extend(frame(
            &[1i32.to_be_bytes(), (-11i32).to_be_bytes()].concat(),
        ));
        let read_frame = |s: &mut std::net::TcpStream| -> std::io::Result<Vec<u8>> {
            let mut len = [0u8; 4];
            s.read_exact(&mut len)?;
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut body)?;
            Ok(body)
        };
        let mut last = String::new();
        for attempt in 0..10 {
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return Err(format!("cannot connect to 127.0.0.1:{port}"));
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if let Err(e) = s.write_all(&bytes) {
                last = e.to_string();
                continue;
            }
            // ConnectResponse: protocolVersion, timeOut, sessionId, passwd, readOnly.
            let answer = match read_frame(&mut s) {
                Ok(a) => a,
                Err(e) => {
                    last = format!("connect answer: {e}");
                    continue;
                }
            };
            let got = answer
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes);
            match got {
                Some(g) if g == id => {}
                // Refused: a wrong password on the first try; gone after an earlier try
                // whose closeSession went through unanswered.
                Some(0) if attempt > 0 => return Ok(()),
                other => return Err(format!("session {id:#x} refused (answer names {other:?})")),
            }
            match read_frame(&mut s) {
                // ReplyHeader: xid, zxid, err.
                Ok(r) if r.get(12..16) == Some(&[0u8; 4][..]) => return Ok(()),
                Ok(r) => return Err(format!("closeSession answered {r:02x?}")),
                Err(e) => last = format!("closeSession answer: {e}"),
            }
        }
        Err(last)
    }

    /// The password ZooKeeper gives session `id`: `java.util.Random(id ^ 0xB3415C00)`'s
    /// `nextBytes(new byte[16])`.
    fn zk_password(id: i64) -> [u8; 16] {
        const MUL: u64 = 0x5_DEEC_E66D;
        const MASK: u64 = (1 << 48) - 1;
        let mut seed = ((id ^ 0xB341_5C00) as u64 ^ MUL) & MASK;
        let mut out = [0u8; 16];
        for chunk in out.chunks_mut(4) {
            seed = (seed.wrapping_mul(MUL).wrapping_add(0xB)) & MASK;
            let mut r = (seed >> 16) as u32; // next(32)
            for b in chunk {
                *b = r as u8;
                r >>= 8;
            }
        }
        out
    }

    /// Whether the ZooKeeper server on 127.0.0.1:`port` (one of `scripts/services.sh`'s)
    /// serves; if not, panics when servers are required, else says the test is skipped.
    pub fn zk_available(port: u16) -> bool {
        if zk_serves(port) {
            return true;
        }
        assert!(
            !required(),
            "ZooKeeper on 127.0.0.1:{port} is not serving and LUCKY_REQUIRE_SERVERS=1"
        );
        eprintln!("skipping: no ZooKeeper on 127.0.0.1:{port} (scripts/services.sh start)");
        false
    }

    /// Whether a ZooKeeper server on 127.0.0.1:`port` serves (`srvr` says its mode).
    pub fn zk_serves(port: u16) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut out = String::new();
        s.write_all(b"srvr").is_ok() && s.read_to_string(&mut out).is_ok() && out.contains("Mode: ")
    }
}

pub mod chaos;

/// A TCP proxy on 127.0.0.1 that can cut a client off its server: while cut, its
/// connections are reset and new ones are closed at once, like a partition the client's
/// reconnects cannot get through.
pub mod proxy {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    /// The proxy; it stops when dropped.
    #[derive(Debug)]
    pub struct CutProxy {
        /// `127.0.0.1:<port>` to connect to instead of the server.
        pub address: String,
        cut: Arc<AtomicBool>,
        generation: watch::Sender<u64>,
        task: tokio::task::JoinHandle<()>,
    }

    impl CutProxy {
        /// Starts forwarding a local port to `target` (`host:port`).
        pub async fn start(target: &str) -> std::io::Result<CutProxy> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?.to_string();
            let cut = Arc::new(AtomicBool::new(false));
            let (generation, rx) = watch::channel(0u64);
            let target = target.to_owned();
            let task = tokio::spawn({
                let cut = cut.clone();
                async move {
                    while let Ok((mut down, _)) = listener.accept().await {
                        if cut.load(Ordering::SeqCst) {
                            continue; // dropped: closed at once
                        }
                        let (target, mut rx) = (target.clone(), rx.clone());
                        tokio::spawn(async move {
                            let Ok(mut up) = TcpStream::connect(&target).await else {
                                return;
                            };
                            rx.mark_unchanged();
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                                _ = rx.changed() => {
                                    // Cut: reset both sides rather than closing politely.
                                    let _ = down.set_zero_linger();
                                    let _ = up.set_zero_linger();
                                }
                            }
                        });
                    }
                }
            });
            Ok(CutProxy {
                address,
                cut,
                generation,
                task,
            })
        }

        /// Cuts every connection and refuses new ones until [`CutProxy::heal`].
        pub fn cut(&self) {
            self.cut.store(true, Ordering::SeqCst);
            self.generation.send_modify(|g| *g += 1);
        }

        /// Lets connections through again.
        pub fn heal(&self) {
            self.cut.store(false, Ordering::SeqCst);
        }
    }

    impl Drop for CutProxy {
        fn drop(&mut self) {
            self.cut();
            self.task.abort();
        }
    }
}
