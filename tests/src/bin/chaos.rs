//! Real-world chaos: the README's RedLock guarantee table checked on real `redis-server`
//! processes with real faults. Each run builds its own network namespaces (five Redis nodes,
//! `CLIENTS` client processes, one bridge; addresses in 10.177.0.0/16 only, nothing routed
//! out), starts the nodes, starts client processes of this binary that lock, hold, write to a
//! PostgreSQL table with their fence (and to an unfenced log beside it) and release, injects
//! the row's faults on a schedule drawn from the seed, then checks the recorded history and
//! prints one verdict line with the seed. Everything is torn down at exit, and a run first
//! removes what a killed harness left.
//!
//! ```text
//! chaos run --row redis-partition --seed 7 [--secs 20]
//! chaos suite [--runs 20] [--rows a,b] [--secs 20] [--require-breaks no]
//!                                                    # every row; a table at the end
//! chaos rows                                         # the rows and what the README says
//! chaos cleanup                                      # remove a killed run's namespaces
//! ```
//!
//! Needs root, `ip` and `nft` (`bash scripts/services.sh chaos-deps`), `redis-server`, `cc`
//! for the clock shim (`tests/chaos/clockshim.c`), and the machine's PostgreSQL on its Unix
//! socket (reached from inside the namespaces: a Unix socket is not namespaced, so the
//! resource itself is never cut off).
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a harness reads the clock

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lucky_sim::rng::Rng;
use lucky_tests::chaos::check::{Category, History, Violation};
use lucky_tests::chaos::net::{self, Host, Topology};
use lucky_tests::chaos::{mono_ns, mono_of};

/// The lock's ttl in every run.
const TTL_MS: u64 = 1000;
/// Client processes per run.
const CLIENTS: usize = 4;
/// Redis nodes per run.
const NODES: usize = 5;
/// The lock every client takes.
const LOCK: &str = "chaos";
/// PostgreSQL, through its Unix socket.
const PG: &str = "host=/var/run/postgresql user=postgres dbname=postgres";
/// After the last fault heals, clients go on this long: the lock must move again in it.
const QUIET_MS: u64 = 4000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = Opts::parse(args.get(1..).unwrap_or_default());
    match args.first().map(String::as_str) {
        Some("run") | Some("suite") => cleanup_on_signal(),
        _ => {}
    }
    match args.first().map(String::as_str) {
        Some("client") => client::main(&opts),
        Some("run") => {
            let row = opts.get("row").unwrap_or("redis-partition");
            let Some(row) = ROWS.iter().find(|r| r.name == row) else {
                eprintln!("no row `{row}`; `chaos rows` lists them");
                std::process::exit(2);
            };
            let seed = opts.num("seed", 1);
            let ok = harness::run_row(row, seed, opts.num("secs", 20));
            std::process::exit(if ok.is_some_and(|o| o.agrees) { 0 } else { 1 });
        }
        Some("suite") => {
            let ok = harness::suite(&opts);
            std::process::exit(if ok { 0 } else { 1 });
        }
        Some("rows") => {
            for r in ROWS {
                println!("{:22} {}\n{:22} README: {}", r.name, r.about, "", r.table);
            }
        }
        Some("cleanup") => net::cleanup_leftovers(),
        _ => {
            eprintln!("usage: chaos run --row R --seed S [--secs N] | suite [--runs N] [--rows a,b] [--secs N] | rows | cleanup");
            std::process::exit(2);
        }
    }
}

/// On SIGINT or SIGTERM, removes the run's namespaces (and the processes in them) before
/// exiting; a harness killed outright leaves them to the next run's clean-up.
fn cleanup_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            net::cleanup_leftovers();
            std::process::exit(130);
        });
    });
}

/// `--key value` options.
struct Opts(BTreeMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut m = BTreeMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            if let Some(k) = k.strip_prefix("--") {
                m.insert(k.to_owned(), it.next().cloned().unwrap_or_default());
            }
        }
        Opts(m)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn num(&self, k: &str, default: u64) -> u64 {
        self.get(k).and_then(|v| v.parse().ok()).unwrap_or(default)
    }
}

/// One row of the README's RedLock table, as a fault schedule.
struct Row {
    name: &'static str,
    about: &'static str,
    /// What the README's table says for it.
    table: &'static str,
    /// The guarantees that break under this fault (each must be seen broken over a suite);
    /// every other one must hold in every run. Two holders at once write the unfenced log
    /// out of turn, so a row that breaks exclusion breaks the unfenced writes too.
    breaks: &'static [Category],
    /// Nodes keep their data across a crash (AOF, fsync always).
    persist: bool,
    /// Chance (ppm) that a client pauses 1.5 ttl between its validity check and its write.
    gc_ppm: u32,
    /// The faults: (ms from the start, action), drawn from the seed for a run of `ms`.
    draw: fn(&mut Rng, u64) -> Vec<(u64, Action)>,
}

const ROWS: &[Row] = &[
    Row {
        name: "redis-partition",
        about: "any split of nodes and clients, one-way cuts, for 0.3-2.5 ttl at a time",
        table: "partitions, one-way cuts: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        draw: faults::partitions,
    },
    Row {
        name: "redis-loss",
        about: "random packet loss of 5-50 % on every node, redrawn every 0.5-2 ttl",
        table: "lost / late / duplicated messages: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        draw: faults::loss,
    },
    Row {
        name: "redis-node-pause",
        about: "nodes SIGSTOPped for 0.2-2 ttl, up to all of them",
        table: "(late messages) holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        draw: faults::node_pause,
    },
    Row {
        name: "redis-client-pause",
        about: "clients SIGSTOPped for 0.5-3 ttl, and 20 % of writes paused 1.5 ttl after the check",
        table: "client pause between check and write: the lock holds, unfenced writes land late (expected) | holds",
        breaks: &[Category::UnfencedWrites],
        persist: true,
        gc_ppm: 200_000,
        draw: faults::client_pause,
    },
    Row {
        name: "redis-crash-persist",
        about: "nodes killed (SIGKILL) and restarted after 0-2 ttl, keeping their data (AOF, fsync always)",
        table: "node crash keeping data: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        draw: faults::crash_delayed_any,
    },
    Row {
        name: "redis-crash-delayed",
        about: "nodes killed and restarted empty, each after more than the ttl",
        table: "crash losing data, restart delayed past the ttl: holds | holds while node clocks agree",
        breaks: &[],
        persist: false,
        gc_ppm: 0,
        draw: faults::crash_delayed_past_ttl,
    },
    Row {
        name: "redis-crash-immediate",
        about: "three nodes killed and restarted empty at once, while a lock is likely held",
        table: "crash losing data, immediate restart: broken (expected) | broken too (expected)",
        breaks: &[Category::MutualExclusion, Category::UnfencedWrites],
        persist: false,
        gc_ppm: 0,
        draw: faults::crash_immediate,
    },
    Row {
        name: "redis-clock-jump",
        about: "three nodes' wall clocks jump forward by 1.5 ttl at once (LD_PRELOAD shim)",
        table: "node clock jump: broken (expected) | holds",
        breaks: &[Category::MutualExclusion, Category::UnfencedWrites],
        persist: true,
        gc_ppm: 0,
        draw: faults::clock_jump,
    },
];

/// One fault.
#[derive(Clone, Debug)]
enum Action {
    /// Replace a node's nftables rules (empty: heal it).
    Rules {
        node: usize,
        rules: Vec<(&'static str, String)>,
        what: String,
    },
    StopNode(usize),
    ContNode(usize),
    StopClient(usize),
    ContClient(usize),
    KillNode(usize),
    StartNode(usize),
    /// Set a node's wall-clock offset, in ms.
    Clock {
        node: usize,
        offset_ms: i64,
    },
}

fn client_addr(c: usize) -> String {
    format!("10.177.2.{}", c + 1)
}

mod faults {
    use super::*;

    fn subset(rng: &mut Rng, n: usize) -> Vec<usize> {
        loop {
            let v: Vec<usize> = (0..n).filter(|_| rng.chance(500_000)).collect();
            if !v.is_empty() {
                return v;
            }
        }
    }

    fn ttl(rng: &mut Rng, lo_pct: u64, hi_pct: u64) -> u64 {
        rng.range(TTL_MS * lo_pct / 100, TTL_MS * hi_pct / 100)
    }

    /// Faults from 1.5 s to `ms`, each lasting a drawn time, with a drawn gap between.
    fn timeline(
        rng: &mut Rng,
        ms: u64,
        mut one: impl FnMut(&mut Rng, u64, &mut Vec<(u64, Action)>) -> u64,
    ) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        let mut t = 1500;
        while t < ms {
            let lasted = one(rng, t, &mut out);
            t += lasted + ttl(rng, 20, 100);
        }
        out.retain(|(at, _)| *at < ms);
        out
    }

    pub fn partitions(rng: &mut Rng, ms: u64) -> Vec<(u64, Action)> {
        timeline(rng, ms, |rng, t, out| {
            let nodes = subset(rng, NODES);
            let clients = subset(rng, CLIENTS);
            // 0: both ways, 1: requests cut, 2: answers cut.
            let way = rng.range(0, 2);
            let d = ttl(rng, 30, 250);
            for &n in &nodes {
                let mut rules = Vec::new();
                for &c in &clients {
                    if way != 2 {
                        rules.push(("input", format!("ip saddr {} drop", client_addr(c))));
                    }
                    if way != 1 {
                        rules.push(("output", format!("ip daddr {} drop", client_addr(c))));
                    }
                }
                let what = format!(
                    "cut {} clients {clients:?}",
                    ["both ways from", "requests of", "answers to"][way as usize]
                );
                out.push((
                    t,
                    Action::Rules {
                        node: n,
                        rules,
                        what,
                    },
                ));
                out.push((
                    t + d,
                    Action::Rules {
                        node: n,
                        rules: Vec::new(),
                        what: "healed".into(),
                    },
                ));
            }
            d
        })
    }

    pub fn loss(rng: &mut Rng, ms: u64) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        let mut t = 1500;
        while t < ms {
            for n in 0..NODES {
                let pct = rng.range(5, 50);
                out.push((
                    t,
                    Action::Rules {
                        node: n,
                        rules: vec![
                            ("input", format!("numgen random mod 100 < {pct} drop")),
                            ("output", format!("numgen random mod 100 < {pct} drop")),
                        ],
                        what: format!("{pct} % loss each way"),
                    },
                ));
            }
            t += ttl(rng, 50, 200);
        }
        out
    }

    pub fn node_pause(rng: &mut Rng, ms: u64) -> Vec<(u64, Action)> {
        timeline(rng, ms, |rng, t, out| {
            let d = ttl(rng, 20, 200);
            for n in subset(rng, NODES) {
                out.push((t, Action::StopNode(n)));
                out.push((t + d, Action::ContNode(n)));
            }
            d
        })
    }

    pub fn client_pause(rng: &mut Rng, ms: u64) -> Vec<(u64, Action)> {
        timeline(rng, ms, |rng, t, out| {
            let d = ttl(rng, 50, 300);
            for c in subset(rng, CLIENTS) {
                out.push((t, Action::StopClient(c)));
                out.push((t + d, Action::ContClient(c)));
            }
            d
        })
    }

    pub fn crash_delayed_any(rng: &mut Rng, ms: u64) -> Vec<(u64, Action)> {
        timeline(rng, ms, |rng, t, out| {
            let d = ttl(rng, 0, 200);
            for n in subset(rng, NODES) {
                out.push((t, Action::KillNode(n)));
                out.push((t + d, Action::StartNode(n)));
            }
            d
        })
    }

    pub fn crash_delayed_past_ttl(rng: &mut Rng, ms: u64) -> Vec<(u64, Action)> {
        timeline(rng, ms, |rng, t, out| {
            let d = ttl(rng, 150, 300);
            for n in subset(rng, NODES) {
                out.push((t, Action::KillNode(n)));
                out.push((t + d, Action::StartNode(n)));
            }
            d
        })
    }

    pub fn crash_immediate(rng: &mut Rng, ms: u64) -> Vec<(u64, Action)> {
        timeline(rng, ms, |rng, t, out| {
            let mut nodes: Vec<usize> = (0..NODES).collect();
            while nodes.len() > 3 {
                nodes.remove(rng.range(0, nodes.len() as u64 - 1) as usize);
            }
            for n in nodes {
                out.push((t, Action::KillNode(n)));
                out.push((t + 1, Action::StartNode(n)));
            }
            ttl(rng, 100, 200)
        })
    }

    pub fn clock_jump(rng: &mut Rng, ms: u64) -> Vec<(u64, Action)> {
        let mut offsets = [0i64; NODES];
        timeline(rng, ms, |rng, t, out| {
            let mut nodes: Vec<usize> = (0..NODES).collect();
            while nodes.len() > 3 {
                nodes.remove(rng.range(0, nodes.len() as u64 - 1) as usize);
            }
            for n in nodes {
                offsets[n] += (TTL_MS * 3 / 2) as i64;
                out.push((
                    t,
                    Action::Clock {
                        node: n,
                        offset_ms: offsets[n],
                    },
                ));
            }
            ttl(rng, 150, 300)
        })
    }
}

mod harness {
    use super::*;

    /// One redis-server in its namespace.
    struct Node {
        host: Host,
        dir: PathBuf,
        persist: bool,
        child: Option<Child>,
        stopped: bool,
        shim: Option<PathBuf>,
    }

    impl Node {
        fn sock(&self) -> PathBuf {
            self.dir.join("redis.sock")
        }

        fn start(&mut self) -> Result<(), String> {
            if self.child.is_some() {
                return Ok(());
            }
            if !self.persist {
                let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
                let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
            }
            let mut cmd = Topology::exec(&self.host, "env");
            if let Some(shim) = &self.shim {
                cmd.arg(format!("LD_PRELOAD={}", shim.display()));
                cmd.arg(format!(
                    "LUCKY_CLOCK_FILE={}",
                    self.dir.join("clock").display()
                ));
            }
            cmd.arg("redis-server")
                .args(["--bind", &self.host.addr.to_string(), "--port", "6379"])
                .args(["--unixsocket", self.sock().to_str().unwrap()])
                .args(["--unixsocketperm", "700", "--save", ""])
                .args(["--dir", self.dir.to_str().unwrap()])
                .args(["--protected-mode", "no", "--daemonize", "no"])
                .args(["--logfile", self.dir.join("redis.log").to_str().unwrap()]);
            if self.persist {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
            } else {
                cmd.args(["--appendonly", "no"]);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("redis-server: {e}"))?;
            self.child = Some(child);
            self.stopped = false;
            Ok(())
        }

        fn ready(&self, within: Duration) -> bool {
            let end = std::time::Instant::now() + within;
            while std::time::Instant::now() < end {
                let ok = Command::new("redis-cli")
                    .args(["-s", self.sock().to_str().unwrap(), "ping"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
                if ok {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }

        fn signal(&mut self, sig: &str) {
            if let Some(c) = &self.child {
                let _ = Command::new("kill")
                    .args([sig, &c.id().to_string()])
                    .status();
            }
        }

        fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            self.stopped = false;
        }

        fn set_clock(&self, offset_ms: i64) {
            let ns = offset_ms as i128 * 1_000_000;
            // Written whole, then renamed: the shim never reads half a file.
            let tmp = self.dir.join("clock.tmp");
            let _ = std::fs::write(&tmp, format!("{ns} 0\n"));
            let _ = std::fs::rename(&tmp, self.dir.join("clock"));
        }

        /// Lock keys left (fence counters excluded), through the Unix socket.
        fn leftover(&self) -> Option<usize> {
            let o = Command::new("redis-cli")
                .args(["-s", self.sock().to_str().unwrap(), "--scan"])
                .args(["--pattern", &format!("{LOCK}*")])
                .output()
                .ok()?;
            if !o.status.success() {
                return None;
            }
            Some(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|k| {
                        !k.ends_with(lucky_core::redlock::FENCE_KEY_SUFFIX) && !k.is_empty()
                    })
                    .count(),
            )
        }
    }

    /// The clock shim, built from `tests/chaos/clockshim.c` into `target/chaos`.
    fn build_shim(out: &Path) -> Option<PathBuf> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("chaos/clockshim.c");
        if !src.exists() {
            return None;
        }
        let so = out.join("clockshim.so");
        let ok = Command::new("cc")
            .args(["-O2", "-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(so)
    }

    fn pg_setup(run: &str) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("PostgreSQL on its Unix socket: {e}"))?;
            tokio::spawn(conn);
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS lucky_chaos_resource (run text PRIMARY KEY, fence bigint NOT NULL);
                 CREATE TABLE IF NOT EXISTS lucky_chaos_writes (id bigserial PRIMARY KEY, run text NOT NULL,
                   client int NOT NULL, fence bigint, fenced bool NOT NULL, accepted bool NOT NULL);",
            )
            .await
            .map_err(|e| e.to_string())?;
            c.execute(
                "INSERT INTO lucky_chaos_resource (run, fence) VALUES ($1, 0) ON CONFLICT (run) DO UPDATE SET fence = 0",
                &[&run],
            )
            .await
            .map_err(|e| e.to_string())?;
            c.execute("DELETE FROM lucky_chaos_writes WHERE run = $1", &[&run])
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    }

    /// What one run showed.
    pub struct Outcome {
        pub agrees: bool,
        pub broken: Vec<Category>,
        pub acquisitions: usize,
    }

    /// Runs `row` once; prints its verdict line. `None`: the harness itself could not run.
    pub fn run_row(row: &Row, seed: u64, secs: u64) -> Option<Outcome> {
        match run(row, seed, secs) {
            Ok(o) => Some(o),
            Err(e) => {
                println!("verdict {} seed={seed}: ERROR {e}", row.name);
                net::cleanup_leftovers();
                None
            }
        }
    }

    fn run(row: &Row, seed: u64, secs: u64) -> Result<Outcome, String> {
        net::can_build()?;
        net::cleanup_leftovers();
        let base = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/chaos")
            .join(format!("{}-{seed}", row.name));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
        let shim = build_shim(base.parent().unwrap());
        if row.name == "redis-clock-jump" && shim.is_none() {
            return Err("the clock shim did not build (cc tests/chaos/clockshim.c)".into());
        }
        let mut log = std::fs::File::create(base.join("faults.log")).map_err(|e| e.to_string())?;
        let mut topo = Topology::build(NODES, CLIENTS).map_err(|e| e.to_string())?;
        let mut nodes: Vec<Node> = topo
            .nodes
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let dir = base.join(format!("n{i}"));
                let _ = std::fs::create_dir_all(&dir);
                Node {
                    host: h.clone(),
                    dir,
                    persist: row.persist,
                    child: None,
                    stopped: false,
                    shim: shim.clone(),
                }
            })
            .collect();
        for n in &mut nodes {
            n.start()?;
        }
        for n in &nodes {
            if !n.ready(Duration::from_secs(5)) {
                return Err(format!("{} did not start", n.host.ns));
            }
        }
        let run_id = format!("{}-{seed}", row.name);
        pg_setup(&run_id)?;
        let urls: Vec<String> = topo
            .nodes
            .iter()
            .map(|h| format!("redis://{}:6379", h.addr))
            .collect();
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let start = mono_ns();
        let ms = secs * 1000;
        let end = start + ms * 1_000_000;
        let mut clients: Vec<Child> = Vec::new();
        for (i, h) in topo.clients.iter().enumerate() {
            let out = base.join(format!("c{i}.hist"));
            let err =
                std::fs::File::create(base.join(format!("c{i}.err"))).map_err(|e| e.to_string())?;
            let child = Topology::exec(h, exe.to_str().unwrap())
                .args(["client", "--id", &i.to_string(), "--nodes", &urls.join(",")])
                .args(["--run", &run_id, "--end", &end.to_string()])
                .args(["--gc-ppm", &row.gc_ppm.to_string()])
                .args(["--seed", &(seed * 1000 + i as u64).to_string()])
                .args(["--out", out.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .map_err(|e| format!("client: {e}"))?;
            clients.push(child);
        }
        // Faults, in time order, until QUIET_MS before the end; then everything heals.
        let mut rng = Rng::stream(seed, row.name);
        let fault_ms = ms.saturating_sub(QUIET_MS);
        let mut plan = (row.draw)(&mut rng, fault_ms);
        plan.sort_by_key(|(at, _)| *at);
        let at_ns = |ms: u64| start + ms * 1_000_000;
        let mut wall_log = |what: String| {
            let now = mono_ns();
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let _ = writeln!(
                log,
                "{:>9.3} s  {}.{:03}  {what}",
                (now - start) as f64 / 1e9,
                wall.as_secs(),
                wall.subsec_millis()
            );
        };
        let mut faults = 0;
        for (at, action) in plan {
            sleep_until(at_ns(at));
            faults += 1;
            wall_log(apply(&mut topo, &mut nodes, &clients, &action));
        }
        sleep_until(at_ns(fault_ms));
        // Heal: rules off, every process running, every node up.
        for (i, n) in nodes.iter_mut().enumerate() {
            let _ = Topology::set_rules(&topo.nodes[i], &[]);
            if n.stopped {
                n.signal("-CONT");
                n.stopped = false;
            }
            if n.child.is_none() {
                n.start()?;
            }
        }
        for c in &clients {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        let healed = mono_ns();
        wall_log("healed: rules off, every process running, every node up".into());
        // Clients stop trying at `end`, release and close: give them a few seconds more.
        let deadline = end + 15_000_000_000;
        for c in &mut clients {
            loop {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                if mono_ns() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    wall_log("a client did not exit in time: killed".into());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::thread::sleep(Duration::from_millis(TTL_MS + 500));
        let mut history = History::default();
        for i in 0..CLIENTS {
            let text = std::fs::read_to_string(base.join(format!("c{i}.hist"))).unwrap_or_default();
            history.read(&text);
        }
        let mut violations = history.check(Some((healed, healed + (QUIET_MS - 500) * 1_000_000)));
        for n in &nodes {
            match n.leftover() {
                Some(0) => {}
                Some(k) => violations.push(Violation::LeftBehind {
                    node: n.host.ns.clone(),
                    keys: k,
                }),
                None => return Err(format!("cannot scan {}", n.host.ns)),
            }
        }
        for n in &mut nodes {
            n.kill();
        }
        topo.teardown();
        let mut broken: Vec<Category> = violations.iter().map(Violation::category).collect();
        broken.sort();
        broken.dedup();
        let unexpected: Vec<&Violation> = violations
            .iter()
            .filter(|v| !row.breaks.contains(&v.category()))
            .collect();
        let mut cols = String::new();
        for c in Category::ALL {
            let state = if broken.contains(&c) {
                if row.breaks.contains(&c) {
                    "broken(expected)"
                } else {
                    "BROKEN"
                }
            } else {
                "holds"
            };
            let _ = write!(cols, " {}={state}", c.name());
        }
        let writes = history.writes.iter().filter(|w| w.fenced).count();
        let rejected = history
            .writes
            .iter()
            .filter(|w| w.fenced && !w.accepted)
            .count();
        println!(
            "verdict {} seed={seed}:{cols} | {} acquisitions, {} failed tries, {writes} fenced writes ({rejected} rejected), {faults} faults{}{}",
            row.name,
            history.claims.len(),
            history.fails.len(),
            if history.bad_lines > 0 { format!(", {} bad lines", history.bad_lines) } else { String::new() },
            if unexpected.is_empty() { String::new() } else { format!(" | first: {}", unexpected[0]) },
        );
        let mut report = String::new();
        for v in &violations {
            let _ = writeln!(report, "{v}");
        }
        let _ = std::fs::write(base.join("violations.txt"), report);
        Ok(Outcome {
            agrees: unexpected.is_empty() && history.bad_lines == 0,
            broken,
            acquisitions: history.claims.len(),
        })
    }

    fn sleep_until(t: u64) {
        let now = mono_ns();
        if t > now {
            std::thread::sleep(Duration::from_nanos(t - now));
        }
    }

    fn apply(topo: &mut Topology, nodes: &mut [Node], clients: &[Child], a: &Action) -> String {
        let sig = |pid: u32, s: &str| {
            let _ = Command::new("kill").args([s, &pid.to_string()]).status();
        };
        match a {
            Action::Rules { node, rules, what } => {
                let r = Topology::set_rules(&topo.nodes[*node], rules);
                format!(
                    "n{node}: {what}{}",
                    r.err()
                        .map(|e| format!(" (FAILED: {e})"))
                        .unwrap_or_default()
                )
            }
            Action::StopNode(n) => {
                if nodes[*n].child.is_some() {
                    nodes[*n].signal("-STOP");
                    nodes[*n].stopped = true;
                }
                format!("n{n}: SIGSTOP")
            }
            Action::ContNode(n) => {
                nodes[*n].signal("-CONT");
                nodes[*n].stopped = false;
                format!("n{n}: SIGCONT")
            }
            Action::StopClient(c) => {
                sig(clients[*c].id(), "-STOP");
                format!("c{c}: SIGSTOP")
            }
            Action::ContClient(c) => {
                sig(clients[*c].id(), "-CONT");
                format!("c{c}: SIGCONT")
            }
            Action::KillNode(n) => {
                nodes[*n].kill();
                format!("n{n}: SIGKILL")
            }
            Action::StartNode(n) => {
                let r = nodes[*n].start();
                let up = r.is_ok() && nodes[*n].ready(Duration::from_secs(5));
                format!(
                    "n{n}: restarted {} ({})",
                    if nodes[*n].persist {
                        "with its data"
                    } else {
                        "empty"
                    },
                    if up { "serving" } else { "NOT serving" }
                )
            }
            Action::Clock { node, offset_ms } => {
                nodes[*node].set_clock(*offset_ms);
                format!("n{node}: wall clock offset now {offset_ms} ms")
            }
        }
    }

    /// Every row (or `--rows`), `--runs` seeds each: a verdict line per run, then a table.
    pub fn suite(opts: &Opts) -> bool {
        let runs = opts.num("runs", 20);
        let secs = opts.num("secs", 20);
        let first = opts.num("seed", 1);
        let only: Option<Vec<&str>> = opts.get("rows").map(|r| r.split(',').collect());
        let require_breaks = opts.get("require-breaks") != Some("no");
        let mut table = Vec::new();
        let mut all_ok = true;
        for row in ROWS {
            if only.as_ref().is_some_and(|o| !o.contains(&row.name)) {
                continue;
            }
            let mut agreed = 0;
            let mut seen: Vec<Category> = Vec::new();
            let mut acquisitions = 0;
            let mut errors = 0;
            for seed in first..first + runs {
                match run_row(row, seed, secs) {
                    Some(o) => {
                        agreed += o.agrees as u64;
                        acquisitions += o.acquisitions;
                        seen.extend(o.broken);
                    }
                    None => errors += 1,
                }
            }
            seen.sort();
            seen.dedup();
            // One run may miss a break that needs the fault to meet a held lock: a short
            // suite (`--require-breaks no`, CI's) asks only that nothing unexpected broke.
            let shown = !require_breaks || row.breaks.iter().all(|c| seen.contains(c));
            let ok = agreed == runs && shown;
            all_ok &= ok;
            table.push(format!(
                "| {} | {} | {runs} | {agreed} | {} | {acquisitions} | {}{} |",
                row.name,
                row.table,
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
                },
                if ok {
                    "agrees"
                } else if !shown {
                    "DISAGREES: the expected break was not seen"
                } else {
                    "DISAGREES"
                },
                if errors > 0 {
                    format!(" ({errors} runs could not start)")
                } else {
                    String::new()
                },
            ));
        }
        println!("| row | README says (exclusion \\| fences) | runs | runs agreeing | broken in some run | acquisitions | verdict |");
        println!("|---|---|---|---|---|---|---|");
        for l in table {
            println!("{l}");
        }
        all_ok
    }
}

mod client {
    use super::*;
    use lucky::redis::Redis;

    struct Rec(std::fs::File);

    impl Rec {
        fn line(&mut self, s: String) {
            let _ = writeln!(self.0, "{s}");
        }
    }

    /// A client process: lock, hold, write with the fence, release, until `--end`.
    pub fn main(opts: &Opts) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(opts));
    }

    async fn run(opts: &Opts) {
        let id = opts.num("id", 0);
        let end = opts.num("end", 0);
        let gc_ppm = opts.num("gc-ppm", 0) as u32;
        let run = opts.get("run").unwrap_or("run").to_owned();
        let mut rng = Rng::new(opts.num("seed", 1));
        let mut rec = Rec(std::fs::File::create(opts.get("out").unwrap_or("/dev/null")).unwrap());
        let urls: Vec<String> = opts
            .get("nodes")
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect();
        let ttl = Duration::from_millis(TTL_MS);
        let pg = loop {
            match tokio_postgres::connect(PG, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    break c;
                }
                Err(e) => {
                    eprintln!("postgres: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let fenced = pg
            .prepare(
                "WITH u AS (UPDATE lucky_chaos_resource SET fence = $2 WHERE run = $1 AND fence <= $2 RETURNING 1)
                 INSERT INTO lucky_chaos_writes (run, client, fence, fenced, accepted)
                 SELECT $1, $3, $2, true, EXISTS (SELECT 1 FROM u) RETURNING id, accepted",
            )
            .await
            .unwrap();
        let unfenced = pg
            .prepare(
                "INSERT INTO lucky_chaos_writes (run, client, fence, fenced, accepted)
                 VALUES ($1, $3, $2, false, true) RETURNING id",
            )
            .await
            .unwrap();
        let locks = loop {
            if mono_ns() > end {
                return;
            }
            match Redis::builder(urls.clone())
                .ttl(ttl)
                .connect_timeout(Duration::from_millis(500))
                .connect()
                .await
            {
                Ok(l) => break l,
                Err(e) => {
                    eprintln!("connect: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut seq = 0u64;
        while mono_ns() < end {
            let t_req = mono_ns();
            match locks.lock(LOCK).wait(ttl * 2).await {
                Ok(guard) => {
                    seq += 1;
                    let t_acq = mono_ns();
                    let mut until = mono_of(guard.valid_until());
                    let fence = guard.fence().map(|f| f.get());
                    let fence_txt = fence.map_or("-".to_owned(), |f| f.to_string());
                    rec.line(format!(
                        "acq {id} {seq} {t_req} {t_acq} {until} {fence_txt}"
                    ));
                    // Mostly short holds; one in ten spans extensions.
                    let hold = if rng.chance(100_000) {
                        rng.range(TTL_MS * 12 / 10, TTL_MS * 2)
                    } else {
                        rng.range(TTL_MS / 20, TTL_MS * 6 / 10)
                    };
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    let now_until = mono_of(guard.valid_until());
                    if now_until > until {
                        until = now_until;
                        rec.line(format!("ext {id} {seq} {until}"));
                    }
                    // The check: still held, with a fifth of the ttl to spare.
                    if guard.is_held() && mono_ns() + TTL_MS * 1_000_000 / 5 < until {
                        if rng.chance(gc_ppm) {
                            // A pause between the check and the write (a GC, a page fault).
                            std::thread::sleep(Duration::from_millis(TTL_MS * 3 / 2));
                        }
                        let f = fence.map_or(0, |f| f as i64);
                        let t0 = mono_ns();
                        let r = pg.query_one(&fenced, &[&run, &f, &(id as i32)]).await;
                        let t1 = mono_ns();
                        if let Ok(row) = r {
                            let order: i64 = row.get(0);
                            let acc: bool = row.get(1);
                            rec.line(format!(
                                "write {id} {seq} 1 {t0} {t1} {} {order}",
                                acc as u8
                            ));
                        }
                        let t0 = mono_ns();
                        let r = pg.query_one(&unfenced, &[&run, &f, &(id as i32)]).await;
                        let t1 = mono_ns();
                        if let Ok(row) = r {
                            let order: i64 = row.get(0);
                            rec.line(format!("write {id} {seq} 0 {t0} {t1} 1 {order}"));
                        }
                    }
                    let now_until = mono_of(guard.valid_until());
                    if now_until > until {
                        rec.line(format!("ext {id} {seq} {now_until}"));
                    }
                    let t0 = mono_ns();
                    let _ = guard.release().await;
                    rec.line(format!("rel {id} {seq} {t0} {}", mono_ns()));
                }
                Err(e) => {
                    let kind = format!("{:?}", e.kind()).to_lowercase();
                    rec.line(format!("fail {id} {t_req} {} {kind}", mono_ns()));
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.range(0, 29))).await;
        }
        locks.close(Duration::from_secs(5)).await;
    }
}
