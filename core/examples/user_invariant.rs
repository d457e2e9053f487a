//! A user-side invariant over Lucky's machines, checked with the proptest strategies that
//! lucky-core exports (feature `proptest`): **my service never acts on a lock past
//! `valid_until`.**
//!
//! ```text
//! cargo run -p lucky-core --features proptest --example user_invariant
//! ```
//!
//! Cases per machine and service: `PROPTEST_CASES` (default 256).
//!
//! The service is what a user writes around a lock: it learns the deadline only from the
//! machine's events (`Acquired` and `Extended` set it, `TimeWentBack` moves it back, `Lost`,
//! `Released` and `Failed` end it, and it drops it itself when it asks for a release), and it
//! writes only while `now` is before that deadline on its own clock. The harness drives a
//! machine (lease record, etcd, session lock, ZooKeeper, RedLock) with random configurations
//! and random [`Action`]s: user requests, replies of every kind (well-formed, wrong shape,
//! errors, unknown outcomes, garbage) and granting answers to any command sent (first answers,
//! duplicates, stale ones), replies misrouted from another machine, time passing, timers
//! firing on time or late, stalls through the renewals to just past the deadline, and the
//! clock stepping back. After every time step the service tries to write *before* the machine
//! is told of it (its timer has not fired yet: the machine still says `Held`), and again after
//! the machine handled each input. Whenever it writes, the machine must be
//! `Held { valid_until }` with `now < valid_until`.
//!
//! The check can fail. Two broken services run after the correct one, each against every
//! machine, and each must be caught (the run exits 1 otherwise):
//! - one that ignores `TimeWentBack`: after the clock stepped back by `by`, the machine's
//!   deadline is `by` earlier, the service's is not, and it writes in between;
//! - one that takes "Acquired at `now`, so valid until `now + ttl`" instead of `valid_until`
//!   (which counts from the command's send time and keeps back the drift allowance): it writes
//!   after the real deadline, before the machine's timer fires.
//!
//! They see a fixed sequence of cases (a deterministic RNG), and each is caught in it and
//! shrunk to a few actions, for example (the correct service passes all of these):
//!
//! ```text
//! lease record  IgnoresTimeWentBack: caught: the service wrote at Instant(1003000000) before
//!   the machine heard of the time, its deadline Some(Instant(1010000000)), while the machine
//!   is Held { valid_until: Instant(1003000000) }
//!   minimal case (4 actions): Acquire, Grant { pick: 0, n: 1 }, Backwards(7ms), Tick(10ms)
//! lease record  ArrivalPlusTtl: caught: the service wrote at Instant(1009000000) before the
//!   machine heard of the time, its deadline Some(Instant(1010000000)), while the machine is
//!   Held { valid_until: Instant(1009000000) }
//!   minimal case (3 actions): Acquire, Grant { pick: 0, n: 1 }, Tick(9ms)
//! ```
//!
//! (A 10 ms ttl with a 1 ms drift allowance: the lock is valid until 1.009 s, the broken
//! services think 1.010 s.)

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::process::ExitCode;

use lucky_core::etcd::{EtcdConfig, EtcdLock};
use lucky_core::lease::{LeaseConfig, LeaseLock};
use lucky_core::redlock::{RedLock, RedLockConfig};
use lucky_core::session::{SessionConfig, SessionLock};
use lucky_core::strategies::{self, Action, Grant};
use lucky_core::zookeeper::{ZkConfig, ZkLock};
use lucky_core::{Duration, Event, Instant, LockMachine, NodeId, OpId, Output, State, Transmit};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

// ---- the user's service ---------------------------------------------------------------------

/// How the service learns its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// From `valid_until` in `Acquired`, `Extended` and `TimeWentBack`.
    Correct,
    /// Broken: as `Correct`, but a step back of the clock is ignored.
    IgnoresTimeWentBack,
    /// Broken: the time `Acquired` (or `Extended`) arrived plus the ttl.
    ArrivalPlusTtl,
}

/// A tiny service that writes to a shared resource only under the lock.
#[derive(Debug)]
struct Service {
    policy: Policy,
    ttl: Duration,
    /// Its own record of the deadline; `None`: no lock.
    until: Option<Instant>,
}

impl Service {
    fn on_event(&mut self, now: Instant, e: &Event) {
        match e {
            Event::Acquired { valid_until, .. } | Event::Extended { valid_until } => {
                self.until = Some(match self.policy {
                    Policy::ArrivalPlusTtl => now + self.ttl,
                    _ => *valid_until,
                });
            }
            Event::TimeWentBack { valid_until, .. } => {
                if self.policy != Policy::IgnoresTimeWentBack {
                    self.until = *valid_until;
                }
            }
            Event::Lost { .. } | Event::Released { .. } | Event::Failed(_) => self.until = None,
            // The deadline is unchanged; nothing to do.
            Event::ExtendFailed { .. } | Event::Retrying { .. } => {}
        }
    }

    /// The service is about to give the lock back: it stops writing now.
    fn releasing(&mut self) {
        self.until = None;
    }

    /// Whether the service writes at `now`.
    fn may_write(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }
}

// ---- the five machines, as the harness sees them ---------------------------------------------

/// What the harness needs of a protocol: its strategies, how to build a machine, its ttl.
trait Subject: LockMachine<Reply: Clone + 'static> + Sized {
    type Config: Clone + Debug + 'static;
    const NAME: &'static str;
    fn config() -> BoxedStrategy<Self::Config>;
    fn reply() -> BoxedStrategy<Self::Reply>;
    fn build(cfg: &Self::Config, seed: u64) -> Result<Self, lucky_core::UsageError>;
    fn ttl(cfg: &Self::Config) -> Duration;
    /// What a server that grants `command` answers ([`Grant`]).
    fn grant(command: &Self::Command, n: u64) -> Self::Reply;
    /// Fills in what a strategy cannot know (the lease record's current owner, the ZooKeeper
    /// machine's node and the time its session proof counts from): the reply arriving at `now`.
    fn prepare(&self, _now: Instant, reply: Self::Reply) -> Self::Reply {
        reply
    }
}

const NAME: &[u8] = b"orders/nightly";

impl Subject for LeaseLock {
    type Config = LeaseConfig;
    const NAME: &'static str = "lease record";
    fn config() -> BoxedStrategy<LeaseConfig> {
        strategies::lease_config().boxed()
    }
    fn reply() -> BoxedStrategy<Self::Reply> {
        strategies::lease_reply().boxed()
    }
    fn build(cfg: &LeaseConfig, seed: u64) -> Result<Self, lucky_core::UsageError> {
        LeaseLock::new(cfg, NAME, &seed.to_le_bytes().repeat(2), seed)
    }
    fn ttl(cfg: &LeaseConfig) -> Duration {
        cfg.ttl()
    }
    fn grant(command: &Self::Command, n: u64) -> Self::Reply {
        command.grant(n)
    }
    fn prepare(&self, _now: Instant, reply: Self::Reply) -> Self::Reply {
        strategies::lease_reply_for(reply, self.owner())
    }
}

impl Subject for EtcdLock {
    type Config = EtcdConfig;
    const NAME: &'static str = "etcd";
    fn config() -> BoxedStrategy<EtcdConfig> {
        strategies::etcd_config().boxed()
    }
    fn reply() -> BoxedStrategy<Self::Reply> {
        strategies::etcd_reply().boxed()
    }
    fn build(cfg: &EtcdConfig, seed: u64) -> Result<Self, lucky_core::UsageError> {
        EtcdLock::new(cfg, NAME, seed)
    }
    fn ttl(cfg: &EtcdConfig) -> Duration {
        cfg.ttl()
    }
    fn grant(command: &Self::Command, n: u64) -> Self::Reply {
        command.grant(n)
    }
}

impl Subject for SessionLock {
    type Config = SessionConfig;
    const NAME: &'static str = "session lock";
    fn config() -> BoxedStrategy<SessionConfig> {
        strategies::session_config().boxed()
    }
    fn reply() -> BoxedStrategy<Self::Reply> {
        strategies::session_reply().boxed()
    }
    fn build(cfg: &SessionConfig, seed: u64) -> Result<Self, lucky_core::UsageError> {
        SessionLock::new(cfg, NAME, seed)
    }
    fn ttl(cfg: &SessionConfig) -> Duration {
        cfg.ttl()
    }
    fn grant(command: &Self::Command, n: u64) -> Self::Reply {
        command.grant(n)
    }
}

impl Subject for ZkLock {
    type Config = ZkConfig;
    const NAME: &'static str = "ZooKeeper";
    fn config() -> BoxedStrategy<ZkConfig> {
        strategies::zookeeper_config().boxed()
    }
    fn reply() -> BoxedStrategy<Self::Reply> {
        strategies::zookeeper_reply().boxed()
    }
    fn build(cfg: &ZkConfig, seed: u64) -> Result<Self, lucky_core::UsageError> {
        ZkLock::new(cfg, NAME, &seed.to_le_bytes().repeat(2), seed)
    }
    fn ttl(cfg: &ZkConfig) -> Duration {
        cfg.session_timeout()
    }
    fn grant(command: &Self::Command, n: u64) -> Self::Reply {
        command.grant(n)
    }
    fn prepare(&self, now: Instant, reply: Self::Reply) -> Self::Reply {
        strategies::zookeeper_reply_for(reply, now, self.node())
    }
}

impl Subject for RedLock {
    type Config = RedLockConfig;
    const NAME: &'static str = "RedLock";
    fn config() -> BoxedStrategy<RedLockConfig> {
        strategies::redlock_config().boxed()
    }
    fn reply() -> BoxedStrategy<Self::Reply> {
        strategies::redis_reply().boxed()
    }
    fn build(cfg: &RedLockConfig, seed: u64) -> Result<Self, lucky_core::UsageError> {
        RedLock::new(cfg, NAME, &seed.to_le_bytes().repeat(2), seed)
    }
    fn ttl(cfg: &RedLockConfig) -> Duration {
        cfg.ttl()
    }
    fn grant(command: &Self::Command, n: u64) -> Self::Reply {
        command.grant(n)
    }
}

// ---- the harness -----------------------------------------------------------------------------

/// Counts over the cases of one run, to show the check is not vacuous.
#[derive(Debug, Default)]
struct Tally {
    writes: Cell<u64>,
    acquired: Cell<u64>,
    steps_back: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

struct Harness<'t, M: Subject> {
    m: M,
    service: Service,
    now: Instant,
    /// Every command sent, in order: what `Action::Reply` and `Action::Grant` pick from.
    sent: Vec<Transmit<M::Command>>,
    issued: BTreeSet<u64>,
    tally: &'t Tally,
}

/// The harness's epoch; time starts a second later, so steps back have room.
const EPOCH: Instant = Instant::from_nanos(1);

impl<M: Subject> Harness<'_, M> {
    /// The service writes now if its own record says it may; then the machine must hold the
    /// lock with `now` before its deadline.
    fn write(&mut self, when: &str) -> Result<(), TestCaseError> {
        if !self.service.may_write(self.now) {
            return Ok(());
        }
        bump(&self.tally.writes);
        match self.m.state() {
            State::Held { valid_until } if self.now < valid_until => Ok(()),
            state => Err(TestCaseError::fail(format!(
                "the service wrote at {:?} {when}, its deadline {:?}, while the machine is {state:?}",
                self.now, self.service.until
            ))),
        }
    }

    fn step(&mut self, action: Action<M::Reply>) -> Result<(), TestCaseError> {
        let now = self.now;
        match action {
            Action::Acquire => drop(self.m.acquire(now)),
            Action::Extend => drop(self.m.extend(now)),
            Action::Release => {
                self.service.releasing();
                drop(self.m.release(now));
            }
            Action::Wake => self.m.wake(now),
            Action::Reply { pick, reply } => {
                if let Some(t) = self.picked(pick) {
                    let reply = self.m.prepare(now, reply);
                    self.m.handle_reply(now, t.node, t.op, reply);
                }
            }
            Action::Grant { pick, n } => {
                if let Some(t) = self.picked(pick) {
                    let reply = self.m.prepare(now, M::grant(&t.command, n));
                    self.m.handle_reply(now, t.node, t.op, reply);
                }
            }
            Action::Misrouted { op, node, reply } => {
                if !self.issued.contains(&op) {
                    let used = self.m.handle_reply(now, NodeId(node), OpId(op), reply);
                    prop_assert!(!used, "a reply to op {op}, never issued here, was used");
                }
            }
            Action::Tick(d) => self.time(now + d)?,
            Action::Timeout => {
                if let Some(t) = self.m.poll_timeout() {
                    self.time(now.max(t))?;
                }
            }
            Action::Stall(d) => match self.m.state() {
                State::Held { valid_until } => self.time(now.max(valid_until + d))?,
                _ => self.time(now + d)?,
            },
            Action::Backwards(d) => {
                bump(&self.tally.steps_back);
                self.time(now.saturating_sub(d).max(EPOCH))?;
            }
        }
        while let Some(out) = self.m.poll_output() {
            match out {
                Output::Transmit(t) => {
                    self.issued.insert(t.op.0);
                    self.sent.push(t);
                }
                Output::Event(e) => {
                    if matches!(e, Event::Acquired { .. }) {
                        bump(&self.tally.acquired);
                    }
                    self.service.on_event(self.now, &e);
                }
            }
        }
        self.write("after the machine handled the input")
    }

    /// The command `pick` places before the latest one sent (modulo the number sent).
    fn picked(&self, pick: usize) -> Option<Transmit<M::Command>> {
        let back = pick.checked_rem(self.sent.len())?;
        self.sent.iter().rev().nth(back).cloned()
    }

    /// The clock reads `now`: the service may write before the machine hears of it (its
    /// timer has not fired yet), then the machine is told.
    fn time(&mut self, now: Instant) -> Result<(), TestCaseError> {
        self.now = now;
        self.write("before the machine heard of the time")?;
        self.m.handle_timeout(now);
        Ok(())
    }
}

/// One case: a configuration, a seed (token, jitter, op ids) and the actions.
fn case<M: Subject>(
    policy: Policy,
    tally: &Tally,
    (cfg, seed, actions): (M::Config, u64, Vec<Action<M::Reply>>),
) -> Result<(), TestCaseError> {
    let m = M::build(&cfg, seed).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut h = Harness {
        m,
        service: Service {
            policy,
            ttl: M::ttl(&cfg),
            until: None,
        },
        now: Instant::from_nanos(1_000_000_000),
        sent: Vec::new(),
        issued: BTreeSet::new(),
        tally,
    };
    for a in actions {
        h.step(a)?;
    }
    Ok(())
}

/// Runs `policy` against machine `M`: `Ok` with the number of cases that passed, or the
/// failure with its minimal case.
fn run<M: Subject>(policy: Policy, tally: &Tally) -> Result<u32, String> {
    let config = Config {
        failure_persistence: None,
        // Enough to shrink a broken service's failure to a few actions.
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    // The correct service meets fresh cases on every run; the broken ones a fixed sequence
    // (at least the default 256 cases, whatever `PROPTEST_CASES` says), so whether they are
    // caught does not depend on luck.
    let mut runner = match policy {
        Policy::Correct => TestRunner::new(config),
        _ => {
            let config = Config {
                cases: config.cases.max(256),
                ..config
            };
            TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
        }
    };
    let cases = runner.config().cases;
    let strategy = (
        M::config(),
        any::<u64>(),
        proptest::collection::vec(strategies::action(M::reply()), 1..200),
    );
    match runner.run(&strategy, |input| case::<M>(policy, tally, input)) {
        Ok(()) => Ok(cases),
        Err(TestError::Abort(why)) => Err(format!("aborted: {why}")),
        Err(TestError::Fail(why, (_, _, actions))) => {
            const SHOWN: usize = 16;
            let mut shown: Vec<String> = actions
                .iter()
                .take(SHOWN)
                .map(|a| format!("{a:?}"))
                .collect();
            if actions.len() > SHOWN {
                shown.push(format!("... ({} more)", actions.len() - SHOWN));
            }
            Err(format!(
                "{why}\n    minimal case ({} actions): {}",
                actions.len(),
                shown.join(", ")
            ))
        }
    }
}

fn correct<M: Subject>() -> bool {
    let tally = Tally::default();
    match run::<M>(Policy::Correct, &tally) {
        Ok(cases) => {
            println!(
                "{:<13} {cases} cases passed: {} acquisitions, {} writes under the lock, {} steps back",
                M::NAME,
                tally.acquired.get(),
                tally.writes.get(),
                tally.steps_back.get()
            );
            let vacuous = tally.writes.get() == 0;
            if vacuous {
                println!(
                    "{:<13} FAILED: the service never wrote: the check is vacuous",
                    M::NAME
                );
            }
            !vacuous
        }
        Err(why) => {
            println!("{:<13} FAILED: {why}", M::NAME);
            false
        }
    }
}

fn broken<M: Subject>(policy: Policy) -> bool {
    match run::<M>(policy, &Tally::default()) {
        Ok(cases) => {
            println!("{:<13} {policy:?}: NOT caught in {cases} cases", M::NAME);
            false
        }
        Err(why) => {
            println!("{:<13} {policy:?}: caught: {why}", M::NAME);
            true
        }
    }
}

fn main() -> ExitCode {
    println!("the correct service (writes only while now < the valid_until it was told):");
    let mut ok = correct::<LeaseLock>();
    ok &= correct::<EtcdLock>();
    ok &= correct::<SessionLock>();
    ok &= correct::<ZkLock>();
    ok &= correct::<RedLock>();
    println!("broken services, each must be caught:");
    for policy in [Policy::IgnoresTimeWentBack, Policy::ArrivalPlusTtl] {
        ok &= broken::<LeaseLock>(policy);
        ok &= broken::<EtcdLock>(policy);
        ok &= broken::<SessionLock>(policy);
        ok &= broken::<ZkLock>(policy);
        ok &= broken::<RedLock>(policy);
    }
    if ok {
        println!("user invariant: ok");
        ExitCode::SUCCESS
    } else {
        println!("user invariant: FAILED");
        ExitCode::FAILURE
    }
}
