//! The lease-record lock in the simulator: the real lucky-core [`LeaseLock`] against the
//! [`LeaseStore`] model, built from a scenario's [`Setup`], and the oracle's assumptions.

#[cfg(feature = "bugs")]
use lucky_core::lease::bugs::LeaseBug;
use lucky_core::lease::{LeaseConfig, LeaseLock};
use lucky_core::time::nanos;
use lucky_core::Duration;

use crate::rng::Rng;
use crate::scenario::{Injected, Runner, Setup};
use crate::world::Report;
use crate::Protocol;

use super::replica::{Ack, Shape};
use super::store::{LeaseStore, OnRelease};

/// The lease-record lock with a given configuration. Fencing is always on: the record's
/// fence is always there, and the resource checks it.
#[derive(Clone, Debug)]
pub struct LeaseSim {
    /// The configuration every client uses.
    pub cfg: LeaseConfig,
    /// The injected `fence-unchecked` bug: the resource accepts any fence.
    pub fence_unchecked: bool,
    /// What the store does on a release (a wrong one under `lease-delete-on-release`).
    pub on_release: OnRelease,
    /// The store as a MongoDB replica set of this shape, or a single store.
    pub replica: Option<Shape>,
}

impl Protocol for LeaseSim {
    type Server = LeaseStore;
    type Machine = LeaseLock;

    fn nodes(&self) -> usize {
        1
    }

    fn machine(&self, _client: usize, rng: &mut Rng) -> LeaseLock {
        let mut token = [0u8; 16];
        rng.fill(&mut token);
        let seed = rng.next_u64();
        // The name and token are valid by construction; a failure is a simulator bug.
        LeaseLock::new(&self.cfg, b"lock", &token, seed).expect("valid lock name and token")
    }

    fn server(&self, _node: usize) -> LeaseStore {
        match self.replica {
            Some(shape) => LeaseStore::replica_set(shape, self.on_release),
            None => LeaseStore::with_release(self.on_release),
        }
    }

    fn ttl_ns(&self) -> u64 {
        nanos(self.cfg.ttl())
    }

    fn drift_ppm(&self) -> u32 {
        self.cfg.drift_ppm()
    }

    fn fence_unchecked(&self) -> bool {
        self.fence_unchecked
    }

    /// The fence is a field of the record: a store that lost its records lost its fences, and
    /// the next takeover starts again at 1, however late the store comes back.
    fn fences_survive_state_loss(&self, _fastest_then: u64, _local: u64) -> bool {
        false
    }
}

/// Runs a setup as the lease-record lock against one store.
#[derive(Clone, Copy, Debug)]
pub struct LeaseRunner;

impl Runner for LeaseRunner {
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report {
        setup.run_world(&protocol(setup, bug), seed)
    }
}

/// Runs a setup as the lease-record lock against a MongoDB replica set: writes commit `lag`
/// after the primary applied them, Lucky's adapter waits for the majority up to a `wtimeout`
/// of half the request timeout (or, under `mongo-w1`, takes the primary's word), and races
/// of two upserts of a new name cost the loser a resend.
#[derive(Clone, Copy, Debug)]
pub struct MongoRunner {
    /// Replication lag (ns).
    pub lag_ns: u64,
    /// The resend after a lost upsert race (ns).
    pub upsert_race_ns: u64,
    /// How far the clocks judging commands stray from the node's, either way (ns).
    pub clock_skew_ns: u64,
}

impl Runner for MongoRunner {
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report {
        let mut p = protocol(setup, bug);
        #[cfg(feature = "bugs")]
        let w1 = Injected::machine(bug).and_then(LeaseBug::from_name) == Some(LeaseBug::MongoW1);
        #[cfg(not(feature = "bugs"))]
        let w1 = false;
        p.replica = Some(Shape {
            lag_ns: self.lag_ns,
            wtimeout_ns: nanos(p.cfg.op_timeout()) / 2,
            ack: if w1 { Ack::Primary } else { Ack::Majority },
            upsert_race_ns: self.upsert_race_ns,
            clock_skew_ns: self.clock_skew_ns,
        });
        setup.run_world(&p, seed)
    }
}

/// The lease-record configuration of `s`, with `bug` injected (in the machine, or in the
/// store for a store-side bug).
pub fn protocol(s: &Setup, bug: Option<Injected>) -> LeaseSim {
    let mut b = LeaseConfig::builder()
        .ttl(Duration::from_millis(s.ttl_ms))
        .drift(s.drift_ppm, Duration::from_millis(2))
        .retry(s.retry)
        .wait(s.wait);
    if let Some(t) = s.op_timeout {
        b = b.op_timeout(t);
    }
    if let Some((every, cap)) = s.auto_extend {
        b = b.auto_extend(every, cap);
    }
    #[cfg(feature = "bugs")]
    if let Some(bug) = Injected::machine(bug).and_then(LeaseBug::from_name) {
        b = b.inject_bug(bug);
    }
    let cfg = b.build().expect("scenario configurations are valid");
    LeaseSim {
        cfg,
        fence_unchecked: bug == Some(Injected::FenceUnchecked),
        on_release: on_release(bug),
        replica: None,
    }
}

/// What the store does on a release: Lucky's, or the wrong one a store-side bug needs.
fn on_release(_bug: Option<Injected>) -> OnRelease {
    #[cfg(feature = "bugs")]
    if let Some(LeaseBug::DeleteOnRelease) = Injected::machine(_bug).and_then(LeaseBug::from_name) {
        return OnRelease::Delete;
    }
    OnRelease::ClearOwner
}

#[cfg(test)]
mod tests {
    //! The engine's message loss covers a store that applied a write whose answer never came
    //! back: the machine sees an unknown outcome. This checks that `lease-unknown-outcome`
    //! really produces it, for takes and renewals, by watching both ends of the wire.

    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use bytes::Bytes;
    use lucky_core::lease::{Command, Reply};
    use lucky_core::{Instant, LockMachine, NodeId, OpId, Output, State, UsageError};

    use super::*;
    use crate::{registry, Server};

    type Key = (Bytes, &'static str);

    /// Per (owner, verb): successful takes and renewals applied by the store, and their
    /// successful answers the machine took.
    #[derive(Debug, Default)]
    struct Log {
        applied: BTreeMap<Key, u64>,
        answered: BTreeMap<Key, u64>,
        /// Releases that reached the store while another owner held the record live.
        late_releases: u64,
    }

    fn key(c: &Command) -> Option<Key> {
        match c {
            Command::Take { owner, .. } | Command::Renew { owner, .. } => {
                Some((owner.clone(), c.verb()))
            }
            _ => None,
        }
    }

    fn success(r: &Reply) -> bool {
        matches!(r, Reply::Granted { .. } | Reply::Renewed)
    }

    #[derive(Clone, Debug)]
    struct Watched {
        inner: LeaseSim,
        log: Rc<RefCell<Log>>,
    }

    struct Store {
        inner: LeaseStore,
        log: Rc<RefCell<Log>>,
    }

    impl Server for Store {
        type Command = Command;
        type Reply = Reply;
        fn apply(&mut self, now: u64, c: &Command) -> Reply {
            if let Command::Release { name, owner } = c {
                let other = self
                    .inner
                    .record(name)
                    .and_then(|r| r.live_owner(now))
                    .is_some_and(|o| o != owner);
                self.log.borrow_mut().late_releases += u64::from(other);
            }
            let r = self.inner.apply(now, c);
            if let (Some(k), true) = (key(c), success(&r)) {
                *self.log.borrow_mut().applied.entry(k).or_default() += 1;
            }
            r
        }
        fn wipe(&mut self) {
            self.inner.wipe();
        }
        fn live_keys(&self, now: u64) -> usize {
            self.inner.live_keys(now)
        }
        fn unavailable() -> Reply {
            LeaseStore::unavailable()
        }
    }

    struct Lock {
        inner: LeaseLock,
        log: Rc<RefCell<Log>>,
        sent: BTreeMap<OpId, Key>,
    }

    impl LockMachine for Lock {
        type Command = Command;
        type Reply = Reply;
        fn node_count(&self) -> usize {
            self.inner.node_count()
        }
        fn acquire(&mut self, now: Instant) -> Result<(), UsageError> {
            self.inner.acquire(now)
        }
        fn extend(&mut self, now: Instant) -> Result<(), UsageError> {
            self.inner.extend(now)
        }
        fn release(&mut self, now: Instant) -> Result<(), UsageError> {
            self.inner.release(now)
        }
        fn wake(&mut self, now: Instant) {
            self.inner.wake(now);
        }
        fn handle_reply(&mut self, now: Instant, node: NodeId, op: OpId, reply: Reply) -> bool {
            let ok = success(&reply);
            let used = self.inner.handle_reply(now, node, op, reply);
            if let (true, true, Some(k)) = (used, ok, self.sent.get(&op)) {
                *self.log.borrow_mut().answered.entry(k.clone()).or_default() += 1;
            }
            used
        }
        fn handle_timeout(&mut self, now: Instant) {
            self.inner.handle_timeout(now);
        }
        fn poll_output(&mut self) -> Option<Output<Command>> {
            let out = self.inner.poll_output();
            if let Some(Output::Transmit(t)) = &out {
                if let Some(k) = key(&t.command) {
                    self.sent.insert(t.op, k);
                }
            }
            out
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.inner.poll_timeout()
        }
        fn state(&self) -> State {
            self.inner.state()
        }
        fn release_channel(&self) -> Option<Bytes> {
            self.inner.release_channel()
        }
        fn held_key(&self) -> Option<Bytes> {
            self.inner.held_key()
        }
    }

    impl Protocol for Watched {
        type Server = Store;
        type Machine = Lock;
        fn nodes(&self) -> usize {
            1
        }
        fn machine(&self, client: usize, rng: &mut Rng) -> Lock {
            Lock {
                inner: self.inner.machine(client, rng),
                log: self.log.clone(),
                sent: BTreeMap::new(),
            }
        }
        fn server(&self, node: usize) -> Store {
            Store {
                inner: self.inner.server(node),
                log: self.log.clone(),
            }
        }
        fn ttl_ns(&self) -> u64 {
            self.inner.ttl_ns()
        }
        fn drift_ppm(&self) -> u32 {
            self.inner.drift_ppm()
        }
    }

    /// Runs seed `seed` of `scenario` watched; panics on an unexpected violation.
    fn watched(scenario: &str, seed: u64) -> (crate::scenario::Setup, Log) {
        let sc = registry::scenario(scenario).expect("scenario exists");
        let setup = sc.setup(seed);
        let w = Watched {
            inner: protocol(&setup, None),
            log: Rc::default(),
        };
        let report = setup.run_world(&w, seed);
        assert!(
            report.unexpected().next().is_none(),
            "{scenario} seed {seed}"
        );
        let log = w.log.take();
        (setup, log)
    }

    #[test]
    fn late_release_meets_the_next_owner() {
        let late: u64 = (0..10)
            .map(|seed| watched("lease-late-release", seed).1.late_releases)
            .sum();
        assert!(late > 0, "no release reached the store under a later owner");
    }

    #[test]
    fn unknown_outcome_loses_answers_to_applied_writes() {
        let mut lost = BTreeMap::<&'static str, u64>::new();
        for seed in 0..10 {
            let (setup, log) = watched("lease-unknown-outcome", seed);
            assert_eq!(setup.net.dup_ppm, 0, "no copies: every apply is one send");
            for (k, applied) in &log.applied {
                let answered = log.answered.get(k).copied().unwrap_or(0);
                assert!(answered <= *applied, "{k:?}: answered more than applied");
                *lost.entry(k.1).or_default() += applied - answered;
            }
        }
        // Applied, answer lost: the machine saw an unknown outcome for both kinds of write.
        assert!(lost.get("take").copied().unwrap_or(0) > 0, "{lost:?}");
        assert!(lost.get("renew").copied().unwrap_or(0) > 0, "{lost:?}");
    }
}
