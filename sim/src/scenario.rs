//! Named scenarios and what they are made of, for any backend: a [`Setup`] (settings,
//! workload, network, fault schedule) drawn from a seed, run by its backend's [`Runner`],
//! judged as an [`Outcome`]. Each backend declares its scenarios and bugs in a [`Backend`]
//! from its own folder; [`crate::registry`] lists the backends.

use std::fmt;

use lucky_core::{Duration, Retry, Wait};

use crate::net::{Cut, NetParams};
use crate::rng::Rng;
use crate::world::{Fault, Report, Workload, World};
use crate::Protocol;

const MS: u64 = 1_000_000;

/// A backend as the simulator knows it: its scenarios and the bugs of its machine, declared
/// in its own folder and listed once in [`crate::registry`].
#[derive(Clone, Copy, Debug)]
pub struct Backend {
    /// Its name.
    pub name: &'static str,
    /// Its scenarios, in the order `list` and `sweep --scenario all` show them.
    pub scenarios: &'static [Scenario],
    /// The names of its machine's deliberate bugs (`--inject-bug`), from the protocol's own
    /// bug enum in lucky-core (feature `bugs`; none without it); they can change only its
    /// own scenarios.
    pub bugs: &'static [&'static str],
}

/// How a backend runs a [`Setup`]: builds its [`Protocol`] from the setup's settings (and its
/// own, such as a cluster's members) with `bug` injected, and runs it ([`Setup::run_world`]).
pub trait Runner: fmt::Debug + Sync {
    /// Runs `setup` with the simulation seed `seed`.
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report;
}

/// Everything one run needs.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The backend that runs it, with its own settings.
    pub runner: &'static dyn Runner,
    /// Server nodes (Redis nodes; 1 for an etcd cluster).
    pub nodes: usize,
    /// Lease ttl (ms).
    pub ttl_ms: u64,
    /// Drift bound the client is configured with (ppm).
    pub drift_ppm: u32,
    /// Retry delay and jitter.
    pub retry: Retry,
    /// How long an acquisition keeps trying.
    pub wait: Wait,
    /// Auto-extension interval (None = ttl/3) and cap, if on.
    pub auto_extend: Option<(Option<Duration>, Option<u32>)>,
    /// The clients' workload.
    pub work: Workload,
    /// Initial link behaviour.
    pub net: NetParams,
    /// Fault schedule (true time ns, fault).
    pub faults: Vec<(u64, Fault)>,
    /// Whether this run breaks an assumption on purpose and must find a violation.
    pub must_violate: bool,
    /// Whether locks carry fences and the resource checks them (for protocols where fencing
    /// is optional).
    pub fencing: bool,
    /// Per-request timeout (None: the protocol's default).
    pub op_timeout: Option<Duration>,
}

impl Setup {
    /// The common shape, run by `runner`: one node, 3 clients, ttl 400 ms, drift bound
    /// 10 000 ppm, clocks within ±2 000 ppm, a calm LAN, faults for 1 s, then 1 s of quiet.
    pub fn new(runner: &'static dyn Runner) -> Setup {
        let ttl_ms = 400;
        Setup {
            runner,
            nodes: 1,
            ttl_ms,
            drift_ppm: 10_000,
            retry: Retry {
                delay: Duration::from_millis(2),
                jitter: Duration::from_millis(20),
            },
            wait: Wait::For(Duration::from_millis(300)),
            auto_extend: None,
            work: Workload {
                clients: 3,
                names: 1,
                per_process: 1,
                hold_ns: Some((5 * MS, 60 * MS)),
                think_ns: (0, 30 * MS),
                write_delay_ns: (0, 3 * MS),
                write_every_ns: (5 * MS, 20 * MS),
                pause_after_check_ns: None,
                pause_only_client: None,
                cancel: None,
                clock_ppm: 2_000,
                client_ppm: None,
                quiet_at: 1_000 * MS,
                stop_at: 2_000 * MS,
                progress_within: Some(ttl_ms * MS * 11 / 10 + 300 * MS),
                node_offset_ns: 1 << 40,
                exit_after_try: false,
            },
            net: NetParams {
                delay_ns: (100_000, 1_500_000),
                drop_ppm: 0,
                dup_ppm: 0,
                reorder: false,
            },
            faults: Vec::new(),
            must_violate: false,
            fencing: false,
            op_timeout: None,
        }
    }

    /// Cuts `client`'s links (None: every client) to `nodes` at `t`, healed `dur` later.
    pub fn cut_for(&mut self, t: u64, dur: u64, client: Option<usize>, nodes: &[usize], cut: Cut) {
        for &node in nodes {
            self.faults
                .push((t, Fault::Partition { client, node, cut }));
            self.faults.push((t + dur, Fault::Heal { client, node }));
        }
    }

    /// The ttl in nanoseconds.
    pub fn ttl(&self) -> u64 {
        self.ttl_ms * MS
    }

    /// The same run with every duration and instant multiplied by `num / den` (settings,
    /// workload, network delays, fault times and lengths): a pure dilation of time, for a
    /// backend whose server counts in coarser units than a scenario was drawn in (etcd grants
    /// whole-second leases). Rates (drift, loss) are kept.
    pub fn dilated(&self, num: u64, den: u64) -> Setup {
        let t = |ns: u64| ns.saturating_mul(num) / den;
        let d =
            |x: Duration| Duration::from_nanos(t(u64::try_from(x.as_nanos()).unwrap_or(u64::MAX)));
        let pair = |(a, b): (u64, u64)| (t(a), t(b));
        let mut s = self.clone();
        s.ttl_ms = t(s.ttl_ms);
        s.retry = Retry {
            delay: d(s.retry.delay),
            jitter: d(s.retry.jitter),
        };
        if let Wait::For(w) = s.wait {
            s.wait = Wait::For(d(w));
        }
        s.auto_extend = s.auto_extend.map(|(every, cap)| (every.map(d), cap));
        s.op_timeout = s.op_timeout.map(d);
        let w = &mut s.work;
        w.hold_ns = w.hold_ns.map(pair);
        w.think_ns = pair(w.think_ns);
        w.write_delay_ns = pair(w.write_delay_ns);
        w.write_every_ns = pair(w.write_every_ns);
        w.pause_after_check_ns = w.pause_after_check_ns.map(t);
        w.cancel = w.cancel.map(|(n, range)| (n, pair(range)));
        w.quiet_at = t(w.quiet_at);
        w.stop_at = t(w.stop_at);
        w.progress_within = w.progress_within.map(t);
        s.net.delay_ns = pair(s.net.delay_ns);
        for (at, fault) in &mut s.faults {
            *at = t(*at);
            match fault {
                Fault::Stall { for_ns, .. }
                | Fault::Pause { for_ns, .. }
                | Fault::RollBack { for_ns, .. } => *for_ns = t(*for_ns),
                Fault::SlowReplies { extra_ns, .. } => *extra_ns = t(*extra_ns),
                Fault::ClockJump { by_ns, .. } => {
                    let by = by_ns.unsigned_abs().saturating_mul(num) / den;
                    let by = i64::try_from(by).unwrap_or(i64::MAX);
                    *by_ns = if *by_ns < 0 { -by } else { by };
                }
                Fault::Net(params) => params.delay_ns = pair(params.delay_ns),
                Fault::Partition { .. }
                | Fault::Heal { .. }
                | Fault::Crash { .. }
                | Fault::CrashClient { .. }
                | Fault::Restart { .. }
                | Fault::Member { .. }
                | Fault::Quiet => {}
            }
        }
        s
    }

    /// Random instants within the faulty phase.
    pub fn at(&self, rng: &mut Rng) -> u64 {
        rng.range(50 * MS, self.work.quiet_at - 50 * MS)
    }

    /// Runs this setup (its fault schedule as it stands) with the simulation seed `seed`.
    pub fn run(&self, seed: u64, bug: Option<Injected>) -> Outcome {
        Outcome {
            must_violate: self.must_violate,
            report: self.runner.run(self, seed, bug),
        }
    }

    /// Runs `protocol` under this setup's workload, network and faults: what a [`Runner`]
    /// does once it built its protocol.
    pub fn run_world<P: Protocol>(&self, protocol: &P, seed: u64) -> Report {
        World::new(protocol, self.work.clone(), self.net, &self.faults, seed).run(EVENT_LIMIT)
    }
}

/// A named scenario.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Its name on the command line.
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// Draws a setup from the scenario's stream.
    pub draw: fn(&mut Rng) -> Setup,
    /// What one run costs, in runs of an ordinary scenario (about 1): a sweep of N seeds
    /// runs the first N / cost of its seeds, at least one.
    pub cost: u64,
}

impl Scenario {
    /// How many of a sweep's `seeds` this scenario runs.
    pub fn sweep_seeds(&self, seeds: u64) -> u64 {
        (seeds / self.cost.max(1)).max(1).min(seeds)
    }

    /// Runs one seed, with `bug` injected.
    pub fn run(&self, seed: u64, bug: Option<Injected>) -> Outcome {
        self.setup(seed).run(seed, bug)
    }

    /// The setup this scenario draws for `seed`.
    pub fn setup(&self, seed: u64) -> Setup {
        let mut rng = Rng::stream(seed, self.name);
        (self.draw)(&mut rng)
    }
}

/// Events one run may process before it is cut off (a run that long is itself a bug).
pub const EVENT_LIMIT: u64 = 5_000_000;

/// One run's result and verdict.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Whether the run had to find a violation.
    pub must_violate: bool,
    /// What the run saw.
    pub report: Report,
}

impl Outcome {
    /// A run passes when it found no unexpected violation and, if it broke an assumption on
    /// purpose, found the violation that allows.
    pub fn passed(&self) -> bool {
        self.report.unexpected().next().is_none()
            && (!self.must_violate || self.report.expected().next().is_some())
    }
    /// Whether it found the violation it had to.
    pub fn expected_found(&self) -> bool {
        self.must_violate && self.report.expected().next().is_some()
    }
    /// The verdict as `lucky-sim run` prints it: `pass` or `FAIL`, and for a run that had to
    /// find a violation, whether it did.
    pub fn verdict(&self) -> String {
        let verdict = if self.passed() { "pass" } else { "FAIL" };
        let why = if !self.must_violate {
            ""
        } else if self.expected_found() {
            " (found the violation its broken assumption allows)"
        } else {
            " (its broken assumption produced no violation)"
        };
        format!("{verdict}{why}")
    }
}

/// A deliberately injected bug: in the machine (lucky-core feature `bugs`; each backend
/// names its own in its [`Backend`]) or in the simulated resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// A bug in the lock machine, by name (its backend maps it to its protocol's bug).
    Machine(&'static str),
    /// The resource accepts every write, whatever its fence.
    FenceUnchecked,
}

impl Injected {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Injected::Machine(b) => b,
            Injected::FenceUnchecked => "fence-unchecked",
        }
    }

    /// Whether this bug can change a run of `backend`'s scenarios: a machine bug only its
    /// own backend's, the resource's bug every backend's.
    pub fn applies_to(self, backend: &Backend) -> bool {
        match self {
            Injected::FenceUnchecked => true,
            Injected::Machine(b) => backend.bugs.contains(&b),
        }
    }

    /// The machine bug to build a machine with, if this is one.
    pub fn machine(bug: Option<Injected>) -> Option<&'static str> {
        match bug {
            Some(Injected::Machine(b)) => Some(b),
            _ => None,
        }
    }
}
