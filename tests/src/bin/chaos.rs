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
//! chaos suite --peer rslock|node-redlock [...]        # the Redis rows with a peer library
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

/// Client processes per run.
const CLIENTS: usize = 4;
/// The lock every client takes.
const LOCK: &str = "chaos";
/// PostgreSQL, through its Unix socket.
const PG: &str = "host=/var/run/postgresql user=postgres dbname=postgres";
/// After the last fault heals, clients go on this long: the lock must move again in it.
/// (At least 4 s, and 2.5 ttl: a session or lease a cut-off holder left must run out first.)
fn quiet_ms(ttl_ms: u64) -> u64 {
    (ttl_ms * 5 / 2).max(4000)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = Opts::parse(args.get(1..).unwrap_or_default());
    match args.first().map(String::as_str) {
        Some("run") | Some("suite") => cleanup_on_signal(),
        _ => {}
    }
    match args.first().map(String::as_str) {
        Some("client") => client::main(&opts),
        Some("proxy") => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(lucky_tests::chaos::proxy::run(
                opts.get("listen").unwrap_or_default(),
                opts.get("to").unwrap_or_default(),
                PathBuf::from(opts.get("control").unwrap_or_default()),
                opts.num("seed", 1),
            ));
            if let Err(e) = r {
                eprintln!("proxy: {e}");
                std::process::exit(1);
            }
        }
        Some("run") => {
            let row = opts.get("row").unwrap_or("redis-partition");
            let Some(row) = ROWS.iter().find(|r| r.name == row) else {
                eprintln!("no row `{row}`; `chaos rows` lists them");
                std::process::exit(2);
            };
            let seed = opts.num("seed", 1);
            let ok = harness::run_row(row, seed, opts.num("secs", 20), peer(&opts));
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
            eprintln!("usage: chaos run --row R --seed S [--secs N] [--peer P] | suite [--runs N] [--rows a,b] [--secs N] [--peer P] | rows | cleanup");
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

/// `--peer rslock|node-redlock`: a peer library's clients instead of Lucky's.
fn peer(opts: &Opts) -> Option<Kind> {
    match opts.get("peer") {
        Some("rslock") => Some(Kind::Rslock),
        Some("node-redlock") => Some(Kind::NodeRedlock),
        _ => None,
    }
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

/// The backend a row runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// RedLock over five independent redis-servers.
    Redis,
    /// The etcd lock on a three-member cluster (Debian's etcd 3.4).
    Etcd,
    /// The ZooKeeper lock on a three-member ensemble (Debian's ZooKeeper 3.8; tickTime
    /// 200 ms, syncLimit 5).
    Zk,
    /// The peer library rslock (crates.io) on the same five redis-servers, run through the
    /// Redis rows for comparison (`suite --peer rslock`).
    Rslock,
    /// The peer library node-redlock 4 (npm) on ioredis, the same way (`--peer node-redlock`;
    /// `tests/chaos/node-redlock/client.js`).
    NodeRedlock,
}

impl Kind {
    /// The servers' client port.
    fn port(self) -> u16 {
        match self {
            Kind::Redis | Kind::Rslock | Kind::NodeRedlock => 6379,
            Kind::Etcd => 2379,
            Kind::Zk => 2181,
        }
    }

    fn nodes(self) -> usize {
        match self {
            Kind::Redis | Kind::Rslock | Kind::NodeRedlock => 5,
            Kind::Etcd | Kind::Zk => 3,
        }
    }

    /// The lock's ttl (etcd grants whole seconds and needs elections to fit well inside).
    fn ttl_ms(self) -> u64 {
        match self {
            Kind::Redis | Kind::Rslock | Kind::NodeRedlock => 1000,
            Kind::Etcd => 2000,
            // The session timeout: the proof through a follower gives up `lag` (6 ticks
            // + 200 ms) and a leader margin (2 ticks) of it.
            Kind::Zk => 4000,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Etcd => "etcd",
            Kind::Zk => "zookeeper",
            Kind::Rslock => "rslock",
            Kind::NodeRedlock => "node-redlock",
        }
    }
}

/// What a fault schedule is drawn for.
struct Ctx {
    /// Faults end here (ms from the start).
    ms: u64,
    nodes: usize,
    ttl: u64,
}

/// One row of a README guarantee table, as a fault schedule.
struct Row {
    name: &'static str,
    kind: Kind,
    about: &'static str,
    /// What the README's table says for it.
    table: &'static str,
    /// The guarantees that break under this fault (each must be seen broken over a suite);
    /// every other one must hold in every run. Two holders at once write the unfenced log
    /// out of turn, so a row that breaks exclusion breaks the unfenced writes too.
    breaks: &'static [Category],
    /// Nodes keep their data across a crash (Redis: AOF, fsync always; etcd always does;
    /// `false` there means the whole cluster's data is wiped before it restarts).
    persist: bool,
    /// Chance (ppm) that a client pauses 1.5 ttl between its validity check and its write.
    gc_ppm: u32,
    /// Clients reach the servers through the harness's proxy (delay, jitter, stalls).
    proxied: bool,
    /// The clients' own clocks (monotonic ones included) run at a rate drawn per client
    /// from this range, in ppm, through the clock shim; `(0, 0)`: the real clock.
    client_ppm: (i64, i64),
    /// The faults: (ms from the start, action), drawn from the seed for a run of `ms`.
    draw: fn(&mut Rng, &Ctx) -> Vec<(u64, Action)>,
}

const NO_DRIFT: (i64, i64) = (0, 0);

const ROWS: &[Row] = &[
    Row {
        kind: Kind::Redis,
        name: "redis-partition",
        about: "any split of nodes and clients, one-way cuts, for 0.3-2.5 ttl at a time",
        table: "partitions, one-way cuts: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::partitions,
    },
    Row {
        kind: Kind::Redis,
        name: "redis-loss",
        about: "random packet loss of 5-50 % on every node, redrawn every 0.5-2 ttl",
        table: "lost / late / duplicated messages: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::loss,
    },
        Row {
        kind: Kind::Redis,
        name: "redis-slow-links",
        about: "links to nodes delayed 0-30 % of the ttl with jitter, and stalled for 0.5-1.5 ttl (TCP proxy)",
        table: "late messages, stalled replies: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: true,
        client_ppm: NO_DRIFT,
        draw: faults::slow_links,
    },
    Row {
        kind: Kind::Redis,
        name: "redis-node-pause",
        about: "nodes SIGSTOPped for 0.2-2 ttl, up to all of them",
        table: "(late messages) holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::node_pause,
    },
    Row {
        kind: Kind::Redis,
        name: "redis-client-pause",
        about: "clients SIGSTOPped for 0.5-3 ttl, and 20 % of writes paused 1.5 ttl after the check",
        table: "client pause between check and write: the lock holds, unfenced writes land late (expected) | holds",
        breaks: &[Category::UnfencedWrites],
        persist: true,
        gc_ppm: 200_000,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::client_pause,
    },
        Row {
        kind: Kind::Redis,
        name: "redis-client-drift-within",
        about: "every client's clock runs 1 000-5 000 ppm fast or slow (within its 10 000 ppm allowance)",
        table: "client clock drift within the bound: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: (-5_000, 5_000),
        draw: faults::none,
    },
    Row {
        kind: Kind::Redis,
        name: "redis-client-drift-beyond",
        about: "two clients' clocks run 70-80 % slow, far beyond the allowance: their renewals come after the servers let the lock go",
        table: "client clock drift beyond the bound: broken (expected) | holds",
        breaks: &[Category::MutualExclusion, Category::UnfencedWrites],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: (-800_000, -700_000),
        draw: faults::none,
    },
    Row {
        kind: Kind::Redis,
        name: "redis-crash-persist",
        about: "nodes killed (SIGKILL) and restarted after 0-2 ttl, keeping their data (AOF, fsync always)",
        table: "node crash keeping data: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::crash_delayed_any,
    },
    Row {
        kind: Kind::Redis,
        name: "redis-crash-delayed",
        about: "nodes killed and restarted empty, each after more than the ttl",
        table: "crash losing data, restart delayed past the ttl: holds | holds while node clocks agree",
        breaks: &[],
        persist: false,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::crash_delayed_past_ttl,
    },
    Row {
        kind: Kind::Redis,
        name: "redis-crash-immediate",
        about: "three nodes killed and restarted empty at once, while a lock is likely held",
        table: "crash losing data, immediate restart: broken (expected) | broken in the simulator, whose restart takes no time; a real restart outlasts the clocks' disagreement: holds",
        breaks: &[Category::MutualExclusion, Category::UnfencedWrites],
        persist: false,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::crash_immediate,
    },
    Row {
        kind: Kind::Redis,
        name: "redis-clock-jump",
        about: "three nodes' wall clocks jump forward by 1.5 ttl at once (LD_PRELOAD shim)",
        table: "node clock jump: broken (expected) | holds",
        breaks: &[Category::MutualExclusion, Category::UnfencedWrites],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::clock_jump,
    },
        Row {
        kind: Kind::Redis,
        name: "redis-clock-drift-within",
        about: "three nodes' clocks run 1 000-5 000 ppm fast or slow (within the client's 10 000 ppm allowance)",
        table: "node clocks drifting within the bound: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::drift_within,
    },
        Row {
        kind: Kind::Zk,
        name: "zk-partition",
        about: "any split of members and clients (a member cut from the others too), one-way cuts, 0.3-2.5 ttl at a time",
        table: "a holder (or its follower) cut off for longer than the session: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::partitions,
    },
    Row {
        kind: Kind::Zk,
        name: "zk-loss",
        about: "random packet loss of 5-50 % on every member (client and quorum traffic), redrawn every 0.5-2 ttl",
        table: "lost messages, creates applied without an answer: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::loss,
    },
    Row {
        kind: Kind::Zk,
        name: "zk-member-pause",
        about: "members SIGSTOPped for 0.2-2 ttl, up to all of them (leader losses, quorum losses)",
        table: "the member under a session stopped; quorum lost: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::node_pause,
    },
    Row {
        kind: Kind::Zk,
        name: "zk-client-pause",
        about: "clients SIGSTOPped for 0.5-3 ttl, and 20 % of writes paused 1.5 ttl after the check",
        table: "client pause between check and write: the lock holds, a late unfenced write lands (expected) | holds",
        breaks: &[Category::UnfencedWrites],
        persist: true,
        gc_ppm: 200_000,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::client_pause,
    },
    Row {
        kind: Kind::Zk,
        name: "zk-client-crash",
        about: "clients killed (SIGKILL) while holding or queued, a new process started after 0-2 ttl",
        table: "queued clients and holders crash for good: holds, the queue moves on | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::client_crash,
    },
    Row {
        kind: Kind::Zk,
        name: "zk-crash-persist",
        about: "members killed (SIGKILL) and restarted with their data after 0-2 ttl, up to all of them",
        table: "a server killed and restarted within the session timeout: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::crash_delayed_any,
    },
    Row {
        kind: Kind::Etcd,
        name: "etcd-partition",
        about: "any split of members and clients (a member cut from the others too), one-way cuts, 0.3-2.5 ttl at a time",
        table: "partition client-cluster, one-way cuts: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::partitions,
    },
    Row {
        kind: Kind::Etcd,
        name: "etcd-loss",
        about: "random packet loss of 5-50 % on every member (client and raft traffic), redrawn every 0.5-2 ttl",
        table: "lost / late / duplicated messages: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::loss,
    },
        Row {
        kind: Kind::Etcd,
        name: "etcd-slow-links",
        about: "clients' links to members delayed 0-30 % of the ttl with jitter, and stalled for 0.5-1.5 ttl (TCP proxy)",
        table: "client pause with replies in flight, stalled replies: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: true,
        client_ppm: NO_DRIFT,
        draw: faults::slow_links,
    },
    Row {
        kind: Kind::Etcd,
        name: "etcd-member-pause",
        about: "members SIGSTOPped for 0.2-2 ttl, up to all of them (leader losses)",
        table: "leader loss: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::node_pause,
    },
    Row {
        kind: Kind::Etcd,
        name: "etcd-client-pause",
        about: "clients SIGSTOPped for 0.5-3 ttl, and 20 % of writes paused 1.5 ttl after the check",
        table: "client pause between check and write: the lock holds, a late unfenced write lands (expected) | holds",
        breaks: &[Category::UnfencedWrites],
        persist: true,
        gc_ppm: 200_000,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::client_pause,
    },
        Row {
        kind: Kind::Etcd,
        name: "etcd-client-drift-within",
        about: "every client's clock runs 1 000-5 000 ppm fast or slow (within its 10 000 ppm allowance)",
        table: "client clock drift within the bound: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: (-5_000, 5_000),
        draw: faults::none,
    },
    Row {
        kind: Kind::Etcd,
        name: "etcd-client-drift-beyond",
        about: "two clients' clocks run 70-80 % slow, far beyond the allowance: their renewals come after the servers let the lock go",
        table: "client clock drift beyond the bound: broken (expected) | holds",
        breaks: &[Category::MutualExclusion, Category::UnfencedWrites],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: (-800_000, -700_000),
        draw: faults::none,
    },
    Row {
        kind: Kind::Etcd,
        name: "etcd-client-crash",
        about: "clients killed (SIGKILL) while holding or queued, a new process started after 0-2 ttl",
        table: "a queued client crashes for good: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::client_crash,
    },
        Row {
        kind: Kind::Etcd,
        name: "etcd-compaction",
        about: "the cluster's history compacted to its current revision every 0.05-0.2 ttl",
        table: "compacted watches: holds, waiters re-read | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::compactions,
    },
    Row {
        kind: Kind::Etcd,
        name: "etcd-crash-persist",
        about: "members killed (SIGKILL) and restarted with their data after 0-2 ttl, up to all of them",
        table: "cluster crash keeping data: holds | holds",
        breaks: &[],
        persist: true,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::crash_delayed_any,
    },
    Row {
        kind: Kind::Etcd,
        name: "etcd-data-loss-immediate",
        about: "the whole cluster killed, its data wiped, a new cluster started at once",
        table: "cluster loses its data, immediate restart: broken (expected) | broken: revisions restart (expected)",
        breaks: &[Category::MutualExclusion, Category::UnfencedWrites, Category::Fences],
        persist: false,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::cluster_wipe_immediate,
    },
    Row {
        kind: Kind::Etcd,
        name: "etcd-data-loss-delayed",
        about: "the whole cluster killed, its data wiped, a new cluster started after 1.5-2 ttl",
        table: "cluster loses its data, restart delayed past the ttl: holds | broken: revisions restart (expected)",
        breaks: &[Category::Fences],
        persist: false,
        gc_ppm: 0,
        proxied: false,
        client_ppm: NO_DRIFT,
        draw: faults::cluster_wipe_delayed,
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
    /// Kill every node (etcd: the whole cluster).
    KillAll,
    /// Start every node that is down (wiped first unless the row persists).
    StartAll,
    /// Kill a client process (SIGKILL): it leaves what it held to its lease.
    KillClient(usize),
    /// Start a new process for a killed client.
    StartClient(usize),
    /// Compact the etcd cluster's history up to its current revision (waiters' watches
    /// then start compacted).
    Compact,
    /// Set the proxy in front of a node: delay and jitter (ms), stalled.
    Link {
        node: usize,
        delay_ms: u64,
        jitter_ms: u64,
        stalled: bool,
    },
    /// Set a node's wall clock: an offset from the real one (ms) and a rate (ppm, drift
    /// counted from when the rate changed).
    Clock {
        node: usize,
        offset_ms: i64,
        rate_ppm: i64,
    },
}

fn client_addr(c: usize) -> String {
    format!("10.177.2.{}", c + 1)
}

fn node_addr(n: usize) -> String {
    format!("10.177.1.{}", n + 1)
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

    /// `k` distinct nodes of `n`.
    fn pick(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
        let mut nodes: Vec<usize> = (0..n).collect();
        while nodes.len() > k {
            nodes.remove(rng.range(0, nodes.len() as u64 - 1) as usize);
        }
        nodes
    }

    /// A duration between `lo_pct` and `hi_pct` % of the ttl.
    fn ttl(rng: &mut Rng, cx: &Ctx, lo_pct: u64, hi_pct: u64) -> u64 {
        rng.range(cx.ttl * lo_pct / 100, cx.ttl * hi_pct / 100)
    }

    /// Faults from 1.5 s to the end, each lasting a drawn time, with a drawn gap between.
    fn timeline(
        rng: &mut Rng,
        cx: &Ctx,
        mut one: impl FnMut(&mut Rng, u64, &mut Vec<(u64, Action)>) -> u64,
    ) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        let mut t = 1500;
        while t < cx.ms {
            let lasted = one(rng, t, &mut out);
            t += lasted + ttl(rng, cx, 20, 100);
        }
        out.retain(|(at, _)| *at < cx.ms);
        out
    }

    /// Spans of one fault on a drawn subset of `n` targets: `on` at the start, `off` after
    /// `lo..hi` % of the ttl.
    fn spans(
        rng: &mut Rng,
        cx: &Ctx,
        n: usize,
        (lo, hi): (u64, u64),
        on: fn(usize) -> Action,
        off: fn(usize) -> Action,
    ) -> Vec<(u64, Action)> {
        timeline(rng, cx, |rng, t, out| {
            let d = ttl(rng, cx, lo, hi);
            for x in subset(rng, n) {
                out.push((t, on(x)));
                out.push((t + d, off(x)));
            }
            d
        })
    }

    pub fn partitions(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        timeline(rng, cx, |rng, t, out| {
            let nodes = subset(rng, cx.nodes);
            let clients = subset(rng, CLIENTS);
            // 0: both ways, 1: requests cut, 2: answers cut.
            let way = rng.range(0, 2);
            // One time in three, the first node is also cut off from the other nodes (for
            // etcd: a member, perhaps the leader, alone; Redis nodes never talk to each other).
            let alone = rng.chance(333_333);
            let d = ttl(rng, cx, 30, 250);
            for (k, &n) in nodes.iter().enumerate() {
                let mut rules = Vec::new();
                let mut peers: Vec<String> = clients.iter().map(|&c| client_addr(c)).collect();
                if alone && k == 0 {
                    peers.extend((0..cx.nodes).filter(|&m| m != n).map(node_addr));
                }
                for a in &peers {
                    if way != 2 {
                        rules.push(("input", format!("ip saddr {a} drop")));
                    }
                    if way != 1 {
                        rules.push(("output", format!("ip daddr {a} drop")));
                    }
                }
                let what = format!(
                    "cut {} clients {clients:?}{}",
                    ["both ways from", "requests of", "answers to"][way as usize],
                    if alone && k == 0 {
                        " and from the other nodes"
                    } else {
                        ""
                    }
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

    pub fn loss(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        let mut t = 1500;
        while t < cx.ms {
            for n in 0..cx.nodes {
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
            t += ttl(rng, cx, 50, 200);
        }
        out
    }

    /// Compactions every 0.05-0.2 ttl.
    pub fn compactions(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        let mut t = 1500;
        while t < cx.ms {
            out.push((t, Action::Compact));
            t += ttl(rng, cx, 5, 20);
        }
        out
    }

    /// No server fault: the row's faults are the clients' own clocks.
    pub fn none(_rng: &mut Rng, _cx: &Ctx) -> Vec<(u64, Action)> {
        Vec::new()
    }

    pub fn slow_links(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        timeline(rng, cx, |rng, t, out| {
            let stall = rng.chance(333_333);
            let d = if stall {
                ttl(rng, cx, 50, 150)
            } else {
                ttl(rng, cx, 50, 300)
            };
            for n in subset(rng, cx.nodes) {
                out.push((
                    t,
                    Action::Link {
                        node: n,
                        delay_ms: ttl(rng, cx, 0, 30),
                        jitter_ms: ttl(rng, cx, 0, 10),
                        stalled: stall,
                    },
                ));
                out.push((
                    t + d,
                    Action::Link {
                        node: n,
                        delay_ms: 0,
                        jitter_ms: 0,
                        stalled: false,
                    },
                ));
            }
            d
        })
    }

    pub fn node_pause(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        spans(
            rng,
            cx,
            cx.nodes,
            (20, 200),
            Action::StopNode,
            Action::ContNode,
        )
    }

    pub fn client_pause(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        spans(
            rng,
            cx,
            CLIENTS,
            (50, 300),
            Action::StopClient,
            Action::ContClient,
        )
    }

    pub fn client_crash(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        timeline(rng, cx, |rng, t, out| {
            let d = ttl(rng, cx, 0, 200);
            let c = rng.range(0, CLIENTS as u64 - 1) as usize;
            out.push((t, Action::KillClient(c)));
            out.push((t + d, Action::StartClient(c)));
            d
        })
    }

    pub fn crash_delayed_any(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        spans(
            rng,
            cx,
            cx.nodes,
            (0, 200),
            Action::KillNode,
            Action::StartNode,
        )
    }

    pub fn crash_delayed_past_ttl(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        spans(
            rng,
            cx,
            cx.nodes,
            (150, 300),
            Action::KillNode,
            Action::StartNode,
        )
    }

    pub fn crash_immediate(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        timeline(rng, cx, |rng, t, out| {
            for n in pick(rng, cx.nodes, cx.nodes / 2 + 1) {
                out.push((t, Action::KillNode(n)));
                out.push((t + 1, Action::StartNode(n)));
            }
            ttl(rng, cx, 100, 200)
        })
    }

    pub fn cluster_wipe_immediate(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        timeline(rng, cx, |rng, t, out| {
            out.push((t, Action::KillAll));
            out.push((t + 1, Action::StartAll));
            ttl(rng, cx, 150, 250)
        })
    }

    pub fn cluster_wipe_delayed(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        timeline(rng, cx, |rng, t, out| {
            let d = ttl(rng, cx, 150, 200);
            out.push((t, Action::KillAll));
            out.push((t + d, Action::StartAll));
            d + ttl(rng, cx, 100, 150)
        })
    }

    /// Three nodes' clocks run fast or slow from the start of the run,
    /// each at one rate between `min_ppm` and `max_ppm`.
    fn drift(rng: &mut Rng, cx: &Ctx, min_ppm: u64, max_ppm: u64) -> Vec<(u64, Action)> {
        pick(rng, cx.nodes, cx.nodes / 2 + 1)
            .into_iter()
            .map(|n| {
                let ppm = rng.range(min_ppm, max_ppm) as i64;
                let sign = if rng.chance(500_000) { 1 } else { -1 };
                (
                    1,
                    Action::Clock {
                        node: n,
                        offset_ms: 0,
                        rate_ppm: sign * ppm,
                    },
                )
            })
            .collect()
    }

    /// Within the drift the client allows for (10 000 ppm by default): half of it at most.
    pub fn drift_within(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        drift(rng, cx, 1_000, 5_000)
    }

    pub fn clock_jump(rng: &mut Rng, cx: &Ctx) -> Vec<(u64, Action)> {
        let mut offsets = vec![0i64; cx.nodes];
        timeline(rng, cx, |rng, t, out| {
            for n in pick(rng, cx.nodes, cx.nodes / 2 + 1) {
                offsets[n] += (cx.ttl * 3 / 2) as i64;
                out.push((
                    t,
                    Action::Clock {
                        node: n,
                        offset_ms: offsets[n],
                        rate_ppm: 0,
                    },
                ));
            }
            ttl(rng, cx, 150, 300)
        })
    }
}

mod harness {
    use super::*;

    /// One server (a redis-server, an etcd member) in its namespace.
    struct Node {
        kind: Kind,
        /// Its number: `n<index>`, etcd member `m<index>`.
        index: usize,
        /// How many members its cluster has (etcd).
        of: usize,
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
            match self.kind {
                Kind::Etcd => return self.start_etcd(),
                Kind::Zk => return self.start_zk(),
                _ => {}
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
            self.launch(cmd, "redis-server")
        }

        /// Starts `cmd` as this node's server; its output goes to `<what>.out` in its folder.
        fn launch(&mut self, mut cmd: Command, what: &str) -> Result<(), String> {
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{what}.out")))
                .map_err(|e| e.to_string())?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let child = cmd
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("{what}: {e}"))?;
            self.child = Some(child);
            self.stopped = false;
            Ok(())
        }

        /// An etcd member of a cluster of `of` on the bridge. Its data is wiped first when the
        /// row does not persist (the whole cluster restarts as a new one).
        fn start_etcd(&mut self) -> Result<(), String> {
            let data = self.dir.join("data");
            if !self.persist {
                let _ = std::fs::remove_dir_all(&data);
            }
            let addr = self.host.addr;
            let cluster: Vec<String> = (0..self.of)
                .map(|m| format!("m{m}=http://{}:2380", node_addr(m)))
                .collect();
            let mut cmd = Topology::exec(&self.host, "etcd");
            cmd.args(["--name", &format!("m{}", self.index)])
                .args(["--data-dir", data.to_str().unwrap()])
                .args(["--listen-client-urls", &format!("http://{addr}:2379")])
                .args(["--advertise-client-urls", &format!("http://{addr}:2379")])
                .args(["--listen-peer-urls", &format!("http://{addr}:2380")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://{addr}:2380"),
                ])
                .args(["--initial-cluster", &cluster.join(",")])
                .args(["--initial-cluster-token", "lucky-chaos"])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"]);
            self.launch(cmd, "etcd")
        }

        /// A ZooKeeper ensemble member (the JVM of Debian's `zookeeper`), its data kept.
        fn start_zk(&mut self) -> Result<(), String> {
            let data = self.dir.join("data");
            let _ = std::fs::create_dir_all(&data);
            let _ = std::fs::write(data.join("myid"), format!("{}\n", self.index + 1));
            let mut cfg = format!(
                "tickTime=200\ninitLimit=20\nsyncLimit=5\ndataDir={}\nclientPort=2181\n\
                 clientPortAddress={}\nminSessionTimeout=400\nmaxSessionTimeout=60000\n\
                 admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,mntr,dump\n",
                data.display(),
                self.host.addr
            );
            for m in 0..self.of {
                let _ = writeln!(cfg, "server.{}={}:2888:3888", m + 1, node_addr(m));
            }
            let conf = self.dir.join("zoo.cfg");
            std::fs::write(&conf, cfg).map_err(|e| e.to_string())?;
            let mut cmd = Topology::exec(&self.host, "java");
            cmd
                .arg("-Xmx192m")
                .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
                .arg("-Dzookeeper.snapshot.trust.empty=true")
                .args(["-cp", "/usr/share/java/zookeeper.jar:/usr/share/java/zookeeper-jute.jar:/etc/zookeeper/conf"])
                .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                .arg(&conf);
            self.launch(cmd, "zookeeper")
        }

        /// A four-letter command to this member, from inside its namespace.
        fn four(&self, cmd: &str) -> Option<String> {
            let script = format!(
                "exec 3<>/dev/tcp/{}/2181 && printf {cmd} >&3 && cat <&3",
                self.host.addr
            );
            let o = Topology::exec(&self.host, "timeout")
                .args(["2", "bash", "-c", &script])
                .output()
                .ok()?;
            Some(String::from_utf8_lossy(&o.stdout).into_owned())
        }

        /// `etcdctl` against this member, from inside its namespace.
        fn etcdctl(&self, args: &[&str]) -> Option<String> {
            let o = Topology::exec(&self.host, "etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints=http://{}:2379", self.host.addr))
                .arg("--command-timeout=2s")
                .args(args)
                .output()
                .ok()?;
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        }

        fn ready(&self, within: Duration) -> bool {
            let end = std::time::Instant::now() + within;
            while std::time::Instant::now() < end {
                let ok = match self.kind {
                    // It says so on stderr; its status is what counts.
                    Kind::Etcd => self.etcdctl(&["endpoint", "health"]).is_some(),
                    Kind::Zk => self.four("srvr").is_some_and(|o| {
                        o.contains("Mode: leader") || o.contains("Mode: follower")
                    }),
                    Kind::Redis | Kind::Rslock | Kind::NodeRedlock => Command::new("redis-cli")
                        .args(["-s", self.sock().to_str().unwrap(), "ping"])
                        .output()
                        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG")),
                };
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

        fn set_clock(&self, offset_ms: i64, rate_ppm: i64) {
            let ns = offset_ms as i128 * 1_000_000;
            // Written whole, then renamed: the shim never reads half a file.
            let tmp = self.dir.join("clock.tmp");
            let _ = std::fs::write(&tmp, format!("{ns} {rate_ppm}\n"));
            let _ = std::fs::rename(&tmp, self.dir.join("clock"));
        }

        /// Lock keys left (Redis: fence counters excluded, through the Unix socket; etcd: keys
        /// under the lock's prefix and leases).
        fn leftover(&self) -> Option<usize> {
            if self.kind == Kind::Zk {
                // Ephemeral nodes of live sessions in the lock's directory.
                let dump = self.four("dump")?;
                return Some(
                    dump.lines()
                        .filter(|l| l.contains(&format!("/lucky/{LOCK}/")))
                        .count(),
                );
            }
            if self.kind == Kind::Etcd {
                let keys =
                    self.etcdctl(&["get", "--prefix", &format!("{LOCK}/"), "--keys-only"])?;
                let leases = self.etcdctl(&["lease", "list"])?;
                let n_leases = leases
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
                let n = keys.lines().filter(|l| !l.is_empty()).count() + n_leases;
                if n > 0 {
                    // What was left, for the run's folder: keys, and each lease's time to live.
                    let mut detail = format!("keys:\n{keys}\n{leases}\n");
                    for id in leases.lines().skip(1) {
                        let id = id.trim().trim_start_matches("id(").trim_end_matches(')');
                        if let Some(t) = self.etcdctl(&["lease", "timetolive", id, "--keys"]) {
                            detail.push_str(&t);
                        }
                    }
                    let _ = std::fs::write(self.dir.join("leftover.txt"), detail);
                }
                return Some(n);
            }
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
        // One file per harness, built under another name and renamed: a process never loads
        // a shim another harness is still writing.
        let so = out.join(format!("clockshim-{}so", net::prefix()));
        let tmp = out.join(format!("clockshim-{}tmp.so", net::prefix()));
        let ok = Command::new("cc")
            .args(["-O2", "-shared", "-fPIC", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        (ok && std::fs::rename(&tmp, &so).is_ok()).then_some(so)
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
    /// `peer`: run a Redis row's workload and faults with a peer library's clients instead.
    pub fn run_row(row: &Row, seed: u64, secs: u64, peer: Option<Kind>) -> Option<Outcome> {
        match run(row, seed, secs, peer) {
            Ok(o) => Some(o),
            Err(e) => {
                println!("verdict {} seed={seed}: ERROR {e}", row.name);
                net::cleanup_leftovers();
                None
            }
        }
    }

    fn run(row: &Row, seed: u64, secs: u64, peer: Option<Kind>) -> Result<Outcome, String> {
        net::can_build()?;
        net::cleanup_leftovers();
        if peer.is_some() && (row.kind != Kind::Redis || row.client_ppm != NO_DRIFT) {
            // (A drifting client clock would move a peer's own history stamps: node reads
            // its clock through libc.)
            return Err("the peers run the Redis rows without client clock drift only".into());
        }
        let label = match peer {
            Some(p) => format!("{}:{}", p.name(), row.name),
            None => row.name.to_owned(),
        };
        // Named with the namespace prefix too: two harnesses at once never share a folder
        // (nor a resource row).
        let folder = format!("{}{}-{seed}", net::prefix(), label.replace(':', "-"));
        let base = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/chaos")
            .join(&folder);
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
        let shim = build_shim(base.parent().unwrap());
        if (row.name.starts_with("redis-clock") || row.client_ppm != NO_DRIFT) && shim.is_none() {
            return Err("the clock shim did not build (cc tests/chaos/clockshim.c)".into());
        }
        let mut log = std::fs::File::create(base.join("faults.log")).map_err(|e| e.to_string())?;
        let kind = peer.unwrap_or(row.kind);
        let ttl_ms = kind.ttl_ms();
        let mut topo = Topology::build(kind.nodes(), CLIENTS).map_err(|e| e.to_string())?;
        let mut nodes: Vec<Node> = topo
            .nodes
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let dir = base.join(format!("n{i}"));
                let _ = std::fs::create_dir_all(&dir);
                Node {
                    kind,
                    index: i,
                    of: kind.nodes(),
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
            if !n.ready(Duration::from_secs(10)) {
                return Err(format!("{} did not start", n.host.ns));
            }
        }
        let run_id = folder.clone();
        pg_setup(&run_id)?;
        let urls: Vec<String> = topo
            .nodes
            .iter()
            .map(|h| {
                let port = kind.port() + if row.proxied { 10000 } else { 0 };
                match kind {
                    Kind::Redis | Kind::Rslock | Kind::NodeRedlock => {
                        format!("redis://{}:{port}", h.addr)
                    }
                    Kind::Etcd => format!("http://{}:{port}", h.addr),
                    Kind::Zk => format!("{}:{port}", h.addr),
                }
            })
            .collect();
        // The proxies, one in each node's namespace, in front of its client port.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut proxies = Vec::new();
        if row.proxied {
            for n in &nodes {
                let control = n.dir.join("link");
                lucky_tests::chaos::proxy::set(&control, 0, 0, false);
                let p = Topology::exec(&n.host, exe.to_str().unwrap())
                    .args(["proxy", "--control", control.to_str().unwrap()])
                    .args([
                        "--listen",
                        &format!("{}:{}", n.host.addr, kind.port() + 10000),
                    ])
                    .args(["--to", &format!("{}:{}", n.host.addr, kind.port())])
                    .args(["--seed", &(seed + n.index as u64).to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("proxy: {e}"))?;
                proxies.push(p);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let start = mono_ns();
        let ms = secs * 1000;
        let end = start + ms * 1_000_000;
        // A client process; `life` numbers the processes one client slot had (after kills),
        // so their claims stay apart in the history.
        // Each client's clock rate (ppm), drawn from the seed; only the two first clients
        // drift when the row drifts beyond the allowance (the others take over from them).
        let mut clock_rng = Rng::stream(seed, "client clocks");
        let rates: Vec<i64> = (0..CLIENTS)
            .map(|i| {
                let (lo, hi) = row.client_ppm;
                if (lo, hi) == NO_DRIFT || (hi < -100_000 && i >= 2) {
                    0
                } else {
                    lo + clock_rng.range(0, (hi - lo) as u64) as i64
                }
            })
            .collect();
        let spawn = |i: usize, life: u64| -> Result<Child, String> {
            let out = base.join(format!("c{i}.hist"));
            let err = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(base.join(format!("c{i}.err")))
                .map_err(|e| e.to_string())?;
            let mut cmd = Topology::exec(&topo.clients[i], "env");
            if let (Some(shim), rate) = (&shim, rates[i]) {
                if rate != 0 {
                    let clock = base.join(format!("c{i}.clock"));
                    std::fs::write(&clock, format!("0 {rate}\n")).map_err(|e| e.to_string())?;
                    cmd.arg(format!("LD_PRELOAD={}", shim.display()))
                        .arg(format!("LUCKY_CLOCK_FILE={}", clock.display()))
                        .arg("LUCKY_CLOCK_MONOTONIC=1");
                }
            }
            if kind == Kind::NodeRedlock {
                cmd.arg("node").arg(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("chaos/node-redlock/client.js"),
                );
            } else {
                cmd.arg(exe.to_str().unwrap()).arg("client");
            }
            cmd.args(["--id", &i.to_string(), "--nodes", &urls.join(",")])
                .args(["--backend", kind.name(), "--ttl-ms", &ttl_ms.to_string()])
                .args(["--run", &run_id, "--end", &end.to_string()])
                .args(["--gc-ppm", &row.gc_ppm.to_string()])
                .args(["--seed", &(seed * 1000 + i as u64 + life * 100).to_string()])
                .args(["--seq-base", &(life * 1_000_000).to_string()])
                .args(["--clock-ppm", &rates[i].to_string()])
                .args(["--out", out.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .map_err(|e| format!("client: {e}"))
        };
        let mut clients: Vec<Option<Child>> = Vec::new();
        let mut lives = [0u64; CLIENTS];
        for i in 0..CLIENTS {
            clients.push(Some(spawn(i, 0)?));
        }
        // Faults, in time order, until the quiet time before the end; then everything heals.
        let mut rng = Rng::stream(seed, row.name);
        let quiet = quiet_ms(ttl_ms);
        let fault_ms = ms.saturating_sub(quiet);
        let cx = Ctx {
            ms: fault_ms,
            nodes: kind.nodes(),
            ttl: ttl_ms,
        };
        let mut plan = (row.draw)(&mut rng, &cx);
        plan.sort_by_key(|(at, _)| *at);
        let at_ns = |ms: u64| start + ms * 1_000_000;
        let mut marks: Vec<(u64, String)> = Vec::new();
        let mut wall_log = |what: String| {
            let now = mono_ns();
            marks.push((now, what.clone()));
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
        for (i, r) in rates.iter().enumerate().filter(|(_, r)| **r != 0) {
            wall_log(format!("c{i}: clock rate {r:+} ppm from the start"));
        }
        let mut faults = 0;
        for (at, action) in plan {
            sleep_until(at_ns(at));
            faults += 1;
            let what = match action {
                Action::KillClient(c) => {
                    if let Some(mut p) = clients[c].take() {
                        let _ = p.kill();
                        let _ = p.wait();
                    }
                    format!("c{c}: SIGKILL")
                }
                Action::StartClient(c) => {
                    if clients[c].is_none() {
                        lives[c] += 1;
                        clients[c] = Some(spawn(c, lives[c])?);
                    }
                    format!("c{c}: a new process")
                }
                a => apply(&topo, &mut nodes, &clients, &a),
            };
            wall_log(what);
        }
        sleep_until(at_ns(fault_ms));
        // Heal: rules off, every process running, every node up.
        for (i, n) in nodes.iter_mut().enumerate() {
            let _ = Topology::set_rules(&topo.nodes[i], &[]);
            if row.proxied {
                lucky_tests::chaos::proxy::set(&n.dir.join("link"), 0, 0, false);
            }
            if n.stopped {
                n.signal("-CONT");
                n.stopped = false;
            }
            if n.child.is_none() {
                n.start()?;
            }
        }
        for n in &nodes {
            if !n.ready(Duration::from_secs(10)) {
                wall_log(format!("{} not serving 10 s after the heal", n.host.ns));
            }
        }
        for (i, c) in clients.iter_mut().enumerate() {
            match c {
                Some(c) => {
                    let _ = Command::new("kill")
                        .args(["-CONT", &c.id().to_string()])
                        .status();
                }
                None => {
                    lives[i] += 1;
                    *c = Some(spawn(i, lives[i])?);
                }
            }
        }
        let healed = mono_ns();
        wall_log("healed: rules off, every process running, every node up".into());
        // Clients stop trying at `end`, release and close: give them a few seconds more.
        let deadline = end + 15_000_000_000;
        for c in clients.iter_mut().flatten() {
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
        // Whatever a killed client held goes with its ttl (etcd: its lease, in whole seconds).
        std::thread::sleep(Duration::from_millis(ttl_ms + 1500));
        let mut history = History::default();
        for i in 0..CLIENTS {
            let text = std::fs::read_to_string(base.join(format!("c{i}.hist"))).unwrap_or_default();
            history.read(&text);
        }
        // Liveness is judged from the heal to 0.5 s before the quiet time ends, never past
        // the clients' end; a heal that ran so late that less than a ttl of it is left is
        // not judged (said on the verdict line).
        let live_until = (healed + (quiet - 500) * 1_000_000).min(end);
        let judged = live_until >= healed + ttl_ms * 1_000_000;
        let mut violations = history.check(judged.then_some((healed, live_until)));
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
        for mut p in proxies {
            let _ = p.kill();
            let _ = p.wait();
        }
        topo.teardown();
        // The servers' data goes (etcd preallocates 120 MB of log per member); their logs stay
        // with the run's history and picture.
        for n in &nodes {
            for d in ["data", "appendonlydir"] {
                let _ = std::fs::remove_dir_all(n.dir.join(d));
            }
            let _ = std::fs::remove_file(n.dir.join("dump.rdb"));
        }
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
                        "verdict {label} seed={seed}:{cols} | {} acquisitions, {} failed tries, {writes} fenced writes ({rejected} rejected), {faults} faults{}{}",
            history.claims.len(),
            history.fails.len(),
if history.bad_lines > 0 {
                format!(", {} bad lines", history.bad_lines)
            } else if !judged {
                ", liveness not judged (the heal ran late)".to_owned()
            } else {
                String::new()
            },
            if unexpected.is_empty() { String::new() } else { format!(" | first: {}", unexpected[0]) },
        );
        let mut report = String::new();
        for v in &violations {
            let _ = writeln!(report, "{v}");
        }
        let _ = std::fs::write(base.join("violations.txt"), report);
        let title = format!("{label} seed {seed}: {}", cols.trim());
        let svg = lucky_tests::chaos::svg::timeline(
            &title,
            &history,
            &marks,
            &violations,
            start,
            mono_ns().min(end + 5_000_000_000),
        );
        let _ = std::fs::write(base.join("timeline.svg"), svg);
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

    fn apply(topo: &Topology, nodes: &mut [Node], clients: &[Option<Child>], a: &Action) -> String {
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
                if let Some(p) = &clients[*c] {
                    sig(p.id(), "-STOP");
                }
                format!("c{c}: SIGSTOP")
            }
            Action::ContClient(c) => {
                if let Some(p) = &clients[*c] {
                    sig(p.id(), "-CONT");
                }
                format!("c{c}: SIGCONT")
            }
            Action::KillClient(_) | Action::StartClient(_) => String::new(),
            Action::Compact => {
                let rev = nodes[0]
                    .etcdctl(&["endpoint", "status", "-w", "json"])
                    .and_then(|o| {
                        let at = o.find("\"revision\":")? + 11;
                        let digits: String =
                            o[at..].chars().take_while(char::is_ascii_digit).collect();
                        digits.parse::<u64>().ok()
                    });
                match rev {
                    Some(r) => {
                        let ok = nodes[0].etcdctl(&["compact", &r.to_string()]).is_some();
                        format!("compacted to {r}{}", if ok { "" } else { " (FAILED)" })
                    }
                    None => "compaction: no revision read".into(),
                }
            }
            Action::KillAll => {
                for n in nodes.iter_mut() {
                    n.kill();
                }
                "every node: SIGKILL".into()
            }
            Action::StartAll => {
                let mut started = Vec::new();
                for n in nodes.iter_mut() {
                    if n.child.is_none() && n.start().is_ok() {
                        started.push(n.index);
                    }
                }
                let up = nodes.iter().all(|n| n.ready(Duration::from_secs(10)));
                format!(
                    "nodes {started:?} restarted {} ({})",
                    if nodes.first().is_some_and(|n| n.persist) {
                        "with their data"
                    } else {
                        "empty"
                    },
                    if up { "serving" } else { "NOT serving" }
                )
            }
            Action::KillNode(n) => {
                nodes[*n].kill();
                format!("n{n}: SIGKILL")
            }
            Action::StartNode(n) => {
                let r = nodes[*n].start();
                // An etcd member alone in a dead cluster is not "healthy": do not wait long.
                let up = r.is_ok() && nodes[*n].ready(Duration::from_secs(3));
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
            Action::Link {
                node,
                delay_ms,
                jitter_ms,
                stalled,
            } => {
                lucky_tests::chaos::proxy::set(
                    &nodes[*node].dir.join("link"),
                    *delay_ms,
                    *jitter_ms,
                    *stalled,
                );
                if *stalled {
                    format!("n{node}: link stalled")
                } else if *delay_ms == 0 && *jitter_ms == 0 {
                    format!("n{node}: link healed")
                } else {
                    format!("n{node}: link delay {delay_ms} ms, jitter {jitter_ms} ms")
                }
            }
            Action::Clock {
                node,
                offset_ms,
                rate_ppm,
            } => {
                nodes[*node].set_clock(*offset_ms, *rate_ppm);
                if *rate_ppm == 0 {
                    format!("n{node}: wall clock offset now {offset_ms} ms")
                } else {
                    format!("n{node}: wall clock rate {rate_ppm:+} ppm")
                }
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
        // `--peer rslock|node-redlock`: the Redis rows with a peer's clients; reported, not
        // judged.
        let peer = peer(opts);
        let mut table = Vec::new();
        let mut all_ok = true;
        for row in ROWS {
            if only.as_ref().is_some_and(|o| !o.contains(&row.name))
                || (peer.is_some() && (row.kind != Kind::Redis || row.client_ppm != NO_DRIFT))
            {
                continue;
            }
            let mut agreed = 0;
            let mut seen: Vec<Category> = Vec::new();
            let mut acquisitions = 0;
            let mut errors = 0;
            for seed in first..first + runs {
                match run_row(row, seed, secs, peer) {
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
            all_ok &= ok || peer.is_some();
            table.push(format!(
                "| {} | {} | {runs} | {agreed} | {} | {acquisitions} | {}{} |",
                row.name,
                row.table,
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
                },
                if peer.is_some() {
                    "a peer: reported, not judged"
                } else if ok {
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
    use lucky::etcd::Etcd;
    use lucky::redis::Redis;
    use lucky::zookeeper::ZooKeeper;
    use lucky::{Locker, WaitFor};

    struct Rec(std::fs::File);

    impl Rec {
        /// One `write` per line: a process killed mid-way leaves whole lines only.
        fn line(&mut self, s: String) {
            let _ = self.0.write_all(format!("{s}\n").as_bytes());
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
        // This process's clock rate under the shim (0: the real clock).
        let clock_ppm: i64 = opts
            .get("clock-ppm")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let run = opts.get("run").unwrap_or("run").to_owned();
        let mut rng = Rng::new(opts.num("seed", 1));
        let ttl_ms = opts.num("ttl-ms", 1000);
        let backend = opts.get("backend").unwrap_or("redis").to_owned();
        // Appended: a client slot's later processes (after a kill) add to its history.
        let mut rec = Rec(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.get("out").unwrap_or("/dev/null"))
            .unwrap());
        let urls: Vec<String> = opts
            .get("nodes")
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect();
        let ttl = Duration::from_millis(ttl_ms);
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
        let seq = opts.num("seq-base", 0);
        if opts.get("backend") == Some("rslock") {
            let w = Workload {
                id,
                end,
                gc_ppm,
                ttl_ms,
                run: &run,
                pg: &pg,
                unfenced: &unfenced,
            };
            return rslock_loop(&w, &urls, seq, &mut rng, &mut rec).await;
        }
        let locks = loop {
            if mono_ns() > end {
                return;
            }
            let connected: Result<Box<dyn Locker>, lucky::Error> = if backend == "zookeeper" {
                ZooKeeper::builder(urls.clone())
                    .ttl(ttl)
                    .ensemble(Duration::from_millis(200), 5)
                    .connect_timeout(Duration::from_millis(2000))
                    .connect()
                    .await
                    .map(|l| Box::new(l) as Box<dyn Locker>)
            } else if backend == "etcd" {
                Etcd::builder(urls.clone())
                    .ttl(ttl)
                    .connect_timeout(Duration::from_millis(1000))
                    .connect()
                    .await
                    .map(|l| Box::new(l) as Box<dyn Locker>)
            } else {
                Redis::builder(urls.clone())
                    .ttl(ttl)
                    .connect_timeout(Duration::from_millis(500))
                    .connect()
                    .await
                    .map(|l| Box::new(l) as Box<dyn Locker>)
            };
            match connected {
                Ok(l) => break l,
                Err(e) => {
                    eprintln!("connect: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut seq = seq;
        while mono_ns() < end {
            let t_req = mono_ns();
            match locks.acquire(LOCK, ttl, WaitFor::For(ttl * 2)).await {
                Ok(guard) => {
                    seq += 1;
                    let t_acq = mono_ns();
                    let mut until = mono_of(guard.valid_until(), clock_ppm);
                    let fence = guard.fence().map(|f| f.get());
                    let fence_txt = fence.map_or("-".to_owned(), |f| f.to_string());
                    rec.line(format!(
                        "acq {id} {seq} {t_req} {t_acq} {until} {fence_txt}"
                    ));
                    // Mostly short holds; one in ten spans extensions.
                    let hold = hold_ms(&mut rng, ttl_ms);
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    let now_until = mono_of(guard.valid_until(), clock_ppm);
                    if now_until > until {
                        until = now_until;
                        rec.line(format!("ext {id} {seq} {until}"));
                    }
                    // The check, as a user makes it on the process's own clock: still held,
                    // with a fifth of the ttl to spare. Made again before each write.
                    let spare = Duration::from_millis(ttl_ms / 5);
                    let valid = |g: &lucky::Guard| {
                        g.is_held() && std::time::Instant::now() + spare < g.valid_until()
                    };
                    if valid(&guard) {
                        let gc = rng.chance(gc_ppm);
                        if gc {
                            // A pause between the check and the write (a GC, a page fault).
                            std::thread::sleep(Duration::from_millis(ttl_ms * 3 / 2));
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
                        // Without a pause, the unfenced write is made only while still valid
                        // (the fenced one's round trip took some of the validity); after one,
                        // it lands late, as the paused user's would.
                        if gc || valid(&guard) {
                            let t0 = mono_ns();
                            let r = pg.query_one(&unfenced, &[&run, &f, &(id as i32)]).await;
                            let t1 = mono_ns();
                            if let Ok(row) = r {
                                let order: i64 = row.get(0);
                                rec.line(format!("write {id} {seq} 0 {t0} {t1} 1 {order}"));
                            }
                        }
                    }
                    let now_until = mono_of(guard.valid_until(), clock_ppm);
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

    /// How long a client holds (ms): 5-60 % of the ttl, and one hold in ten 1.2-2 ttl,
    /// across renewals.
    fn hold_ms(rng: &mut Rng, ttl_ms: u64) -> u64 {
        if rng.chance(100_000) {
            rng.range(ttl_ms * 12 / 10, ttl_ms * 2)
        } else {
            rng.range(ttl_ms / 20, ttl_ms * 6 / 10)
        }
    }

    /// What both client loops share.
    struct Workload<'a> {
        id: u64,
        end: u64,
        gc_ppm: u32,
        ttl_ms: u64,
        run: &'a str,
        pg: &'a tokio_postgres::Client,
        unfenced: &'a tokio_postgres::Statement,
    }

    /// The same workload through rslock. It gives no fence, so only the unfenced log is
    /// written; a claim ends where a user reading the lock would think: `validity_time` after
    /// `lock()` returned. No extension: a hold longer than that skips its write.
    async fn rslock_loop(
        w: &Workload<'_>,
        urls: &[String],
        mut seq: u64,
        rng: &mut Rng,
        rec: &mut Rec,
    ) {
        let id = w.id;
        let lm = rslock::LockManager::new(urls.to_vec());
        let ttl = Duration::from_millis(w.ttl_ms);
        while mono_ns() < w.end {
            let t_req = mono_ns();
            let wait_end = t_req + 2 * w.ttl_ms * 1_000_000;
            let lock = loop {
                match lm.lock(LOCK.as_bytes(), ttl).await {
                    Ok(l) => break Some(l),
                    Err(_) if mono_ns() < wait_end => {
                        tokio::time::sleep(Duration::from_millis(rng.range(0, 49))).await
                    }
                    Err(_) => break None,
                }
            };
            let Some(lock) = lock else {
                rec.line(format!("fail {id} {t_req} {} unavailable", mono_ns()));
                continue;
            };
            seq += 1;
            let t_acq = mono_ns();
            let until = t_acq + lock.validity_time as u64 * 1_000_000;
            rec.line(format!("acq {id} {seq} {t_req} {t_acq} {until} -"));
            let hold = hold_ms(rng, w.ttl_ms);
            tokio::time::sleep(Duration::from_millis(hold)).await;
            if mono_ns() + w.ttl_ms * 1_000_000 / 5 < until {
                if rng.chance(w.gc_ppm) {
                    std::thread::sleep(Duration::from_millis(w.ttl_ms * 3 / 2));
                }
                let t0 = mono_ns();
                let r =
                    w.pg.query_one(w.unfenced, &[&w.run, &0i64, &(id as i32)])
                        .await;
                let t1 = mono_ns();
                if let Ok(row) = r {
                    let order: i64 = row.get(0);
                    rec.line(format!("write {id} {seq} 0 {t0} {t1} 1 {order}"));
                }
            }
            let t0 = mono_ns();
            lm.unlock(&lock).await;
            rec.line(format!("rel {id} {seq} {t0} {}", mono_ns()));
            tokio::time::sleep(Duration::from_millis(rng.range(0, 29))).await;
        }
    }
}
