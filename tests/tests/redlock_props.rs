//! Property suite: random interleavings of user requests, replies (well-formed, malformed,
//! duplicated, stale) and time steps against the RedLock machine, checking its invariants
//! after every step. Built from the strategies that lucky-core exports (feature `proptest`).
//!
//! Cases per run: `PROPTEST_CASES` (default 512).
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use lucky_core::redlock::{Command, RedLock, RedLockConfig, Reply};
use lucky_core::strategies::{redis_reply, redlock_config, time_step};
use lucky_core::{Duration, Event, Instant, LockMachine, Output, State, Transmit};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Action {
    Acquire,
    Extend,
    Release,
    Wake,
    /// Answer the `pick`-th command ever sent (modulo the count): may be stale or a duplicate.
    Reply {
        pick: usize,
        reply: Reply,
    },
    /// Answer the oldest unanswered command with a well-formed, positive reply.
    Grant,
    /// Let time pass and tell the machine.
    Tick(Duration),
    /// Wake exactly at the machine's deadline.
    Timeout,
    /// An input stamped earlier than the last one: the driver's clock stepped back.
    Backwards(Duration),
    /// A reply meant for another machine: an op id this machine never issued.
    Misrouted {
        op: u64,
        node: u16,
        reply: Reply,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => Just(Action::Acquire),
        1 => Just(Action::Extend),
        1 => Just(Action::Release),
        1 => Just(Action::Wake),
        6 => (any::<usize>(), redis_reply()).prop_map(|(pick, reply)| Action::Reply { pick, reply }),
        4 => Just(Action::Grant),
        2 => time_step().prop_map(Action::Tick),
        2 => Just(Action::Timeout),
        1 => (1u64..50).prop_map(|ms| Action::Backwards(Duration::from_millis(ms))),
        1 => (any::<u64>(), 0u16..8, redis_reply())
            .prop_map(|(op, node, reply)| Action::Misrouted { op, node, reply }),
    ]
}

/// Everything the harness has seen, to check the machine against.
struct Harness {
    m: RedLock,
    cfg: RedLockConfig,
    now: Instant,
    sent: Vec<Transmit<Command>>,
    /// When each command was sent.
    sent_at: Vec<Instant>,
    /// The latest time ever fed, and the sum of the steps back: the machine forgets an
    /// unanswered SET a ttl after it stopped waiting for it, on its own (stepped-back) clock.
    high: Instant,
    back: Duration,
    /// (value, node) whose release answered "deleted": that node's key of that value is gone,
    /// whatever answer its SET gets later (a value is written by one SET per node).
    deleted: BTreeSet<(Bytes, u16)>,
    /// (value, node) granted late while a release of it was in flight: the machine decides
    /// on that release's answer (release again unless it deleted the key).
    /// For each: a release of (value, node) must be sent at or after this index of `sent`
    /// once every release of it that was in flight at the grant (the listed indices) answered
    /// without deleting; an answer "deleted" drops the entry.
    recheck: Vec<(Bytes, u16, usize, Vec<usize>)>,
    answered: BTreeSet<usize>,
    ops: BTreeSet<u64>,
    /// Per attempt value: nodes an Acquire went to, nodes a Release went to.
    acquire_to: BTreeMap<Bytes, BTreeSet<u16>>,
    release_to: BTreeMap<Bytes, BTreeSet<u16>>,
    /// Per attempt value: nodes whose Acquire op we answered `+OK` (first answer only).
    granted: BTreeMap<Bytes, BTreeSet<u16>>,
}

impl Harness {
    fn new(cfg: RedLockConfig) -> Self {
        let mut m = RedLock::new(&cfg, b"lock", &[9; 16], 1).unwrap();
        // The machine's clock starts where the harness's does.
        m.handle_timeout(Instant::from_nanos(1));
        Harness {
            m,
            cfg,
            now: Instant::from_nanos(1),
            sent: Vec::new(),
            sent_at: Vec::new(),
            high: Instant::from_nanos(1),
            back: Duration::ZERO,
            deleted: BTreeSet::new(),
            recheck: Vec::new(),
            answered: BTreeSet::new(),
            ops: BTreeSet::new(),
            acquire_to: BTreeMap::new(),
            release_to: BTreeMap::new(),
            granted: BTreeMap::new(),
        }
    }

    fn step(&mut self, action: Action) -> Result<(), TestCaseError> {
        let before = self.m.state();
        let mut input_now = self.now;
        match action {
            Action::Acquire => drop(self.m.acquire(self.now)),
            Action::Extend => drop(self.m.extend(self.now)),
            Action::Release => drop(self.m.release(self.now)),
            Action::Wake => self.m.wake(self.now),
            Action::Reply { pick, reply } => {
                if self.sent.is_empty() {
                    return Ok(());
                }
                let i = pick % self.sent.len();
                self.reply(i, reply);
            }
            Action::Grant => {
                let Some(i) = (0..self.sent.len()).find(|i| !self.answered.contains(i)) else {
                    return Ok(());
                };
                let reply = match self.sent[i].command {
                    Command::Acquire { .. } => Reply::Status("OK".into()),
                    Command::AcquireFenced { .. } => Reply::Int(i as i64),
                    _ => Reply::Int(1),
                };
                self.reply(i, reply);
            }
            Action::Tick(d) => {
                self.now = self.now + d;
                input_now = self.now;
                self.m.handle_timeout(self.now);
            }
            Action::Timeout => {
                if let Some(t) = self.m.poll_timeout() {
                    prop_assert!(t > self.now, "deadline {t:?} not after now {:?}", self.now);
                    self.now = self.now.max(t);
                    input_now = self.now;
                    self.m.handle_timeout(self.now);
                }
            }
            Action::Backwards(d) => {
                let earlier = self.now.saturating_sub(d);
                let held_before = match before {
                    State::Held { valid_until } => Some(valid_until),
                    _ => None,
                };
                self.m.handle_timeout(earlier);
                let step = self.now - earlier;
                self.back += step;
                self.now = earlier;
                input_now = earlier;
                // The step is reported, and a held lock's deadline moved back by it (or the
                // lock was lost at the new reading).
                let mut reported = false;
                let mut outs = Vec::new();
                while let Some(out) = self.m.poll_output() {
                    if let Output::Event(Event::TimeWentBack { by, valid_until }) = &out {
                        prop_assert_eq!(*by, step);
                        prop_assert_eq!(*valid_until, held_before.map(|v| v.rebase_back(step)));
                        reported = true;
                    }
                    outs.push(out);
                }
                prop_assert!(step.is_zero() || reported, "a step back went unreported");
                if let (Some(v), State::Held { valid_until }) = (held_before, self.m.state()) {
                    prop_assert!(
                        valid_until <= v.rebase_back(step),
                        "a step back lengthened the lock"
                    );
                }
                return self.check_outputs(before, input_now, outs);
            }
            Action::Misrouted { op, node, reply } => {
                if self.ops.contains(&op) {
                    return Ok(());
                }
                let used = self.m.handle_reply(
                    self.now,
                    lucky_core::NodeId(node),
                    lucky_core::OpId(op),
                    reply,
                );
                prop_assert!(!used, "a reply to op {op}, never issued here, was used");
                prop_assert!(
                    self.m.poll_output().is_none(),
                    "a misrouted reply had an effect"
                );
                return Ok(());
            }
        }
        self.check(before, input_now)
    }

    fn reply(&mut self, i: usize, reply: Reply) {
        let t = self.sent[i].clone();
        // Values are unique per attempt, so a first OK to an Acquire is a grant of exactly
        // that attempt's value.
        let live = !self.answered.contains(&i);
        let granted = match (&t.command, &reply) {
            (Command::Acquire { value, .. }, Reply::Status(s)) if &s[..] == b"OK" => Some(value),
            (Command::AcquireFenced { value, .. }, Reply::Int(c)) if *c >= 0 => Some(value),
            _ => None,
        };
        if let (true, Some(value)) = (live, granted) {
            self.granted
                .entry(value.clone())
                .or_default()
                .insert(t.node.0);
            // The key exists from now on: a release sent before this grant (which it may
            // have overtaken) no longer counts, unless the machine may have forgotten the SET
            // (a reply later than a ttl after the send).
            let gone = self.deleted.contains(&(value.clone(), t.node.0));
            if !gone && self.high.max(self.now) + self.back < self.sent_at[i] + self.cfg.ttl() {
                let in_flight: Vec<usize> = (0..self.sent.len())
                    .filter(|j| {
                        !self.answered.contains(j)
                            && self.sent[*j].node == t.node
                            && matches!(&self.sent[*j].command, Command::Release { value: v, .. } if v == value)
                    })
                    .collect();
                if !in_flight.is_empty() {
                    self.recheck
                        .push((value.clone(), t.node.0, self.sent.len(), in_flight));
                } else if let Some(r) = self.release_to.get_mut(value) {
                    r.remove(&t.node.0);
                }
            }
        }
        if let (true, Command::Release { value, .. }) = (live, &t.command) {
            let key = (value.clone(), t.node.0);
            if reply == Reply::Int(1) {
                self.deleted.insert(key.clone());
            }
            // A late grant waited on this answer: deleted, nothing is due; otherwise a
            // release sent after the grant is.
            let deleted = reply == Reply::Int(1);
            self.recheck.retain_mut(|(_, _, _, waiting)| {
                let was = waiting.len();
                waiting.retain(|j| *j != i);
                !(deleted && waiting.len() < was)
            });
        }
        self.answered.insert(i);
        self.m.handle_reply(self.now, t.node, t.op, reply);
    }

    fn check(&mut self, before: State, input_now: Instant) -> Result<(), TestCaseError> {
        self.high = self.high.max(self.now);
        let outs = std::iter::from_fn(|| self.m.poll_output()).collect();
        self.check_outputs(before, input_now, outs)
    }

    fn check_outputs(
        &mut self,
        before: State,
        input_now: Instant,
        outs: Vec<Output<Command>>,
    ) -> Result<(), TestCaseError> {
        let now = self.now;
        let mut events = Vec::new();
        for out in outs {
            match out {
                Output::Transmit(t) => {
                    prop_assert!(self.ops.insert(t.op.0), "op id {} used twice", t.op.0);
                    prop_assert!(t.node.index() < self.cfg.nodes(), "node out of range");
                    match &t.command {
                        Command::Acquire { value, .. } | Command::AcquireFenced { value, .. } => {
                            self.acquire_to
                                .entry(value.clone())
                                .or_default()
                                .insert(t.node.0);
                        }
                        Command::Release { value, .. } => {
                            self.release_to
                                .entry(value.clone())
                                .or_default()
                                .insert(t.node.0);
                        }
                        Command::Extend { value, .. } | Command::Fence { value, .. } => {
                            prop_assert!(
                                self.granted
                                    .get(value)
                                    .is_some_and(|g| g.len() >= self.cfg.quorum()),
                                "extend sent for a value that never won"
                            );
                        }
                    }
                    self.sent.push(t);
                    self.sent_at.push(now);
                }
                Output::Event(e) => events.push(e),
            }
        }
        for e in &events {
            match e {
                Event::Acquired { valid_until, .. } => {
                    prop_assert!(
                        *valid_until > now,
                        "Acquired with valid_until {valid_until:?} <= now {now:?}"
                    );
                    let won = self.granted.get(self.m.value()).map_or(0, BTreeSet::len);
                    prop_assert!(
                        won >= self.cfg.quorum(),
                        "Acquired with {won} live grants, quorum {}",
                        self.cfg.quorum()
                    );
                    prop_assert!(
                        *valid_until <= now + self.cfg.validity(),
                        "validity longer than ttl - drift from now"
                    );
                }
                Event::Extended { valid_until } => {
                    prop_assert!(*valid_until > now, "Extended into the past");
                }
                _ => {}
            }
        }
        // A held lock is always inside its validity after an input.
        if let State::Held { valid_until } = self.m.state() {
            prop_assert!(
                valid_until > now,
                "Held at {now:?} past valid_until {valid_until:?}"
            );
        }
        // A deadline reached while held ends the hold with Lost in that same input, unless
        // the user released first.
        if let State::Held { valid_until } = before {
            if input_now >= valid_until {
                let lost = events.iter().any(|e| matches!(e, Event::Lost { .. }));
                prop_assert!(
                    lost,
                    "deadline {valid_until:?} passed at {input_now:?} without Lost"
                );
            }
        }
        // A late grant decided on its node's release answer: released again after it.
        for (value, node, from, waiting) in &self.recheck {
            if waiting.is_empty() {
                let again = self.sent[*from..].iter().any(|t| {
                    t.node.0 == *node
                        && matches!(&t.command, Command::Release { value: v, .. } if v == value)
                });
                prop_assert!(
                    again,
                    "late grant of {value:?} on node {node} never released again"
                );
            }
        }
        // Every attempt that is not live has released on every node it touched.
        let live = match self.m.state() {
            State::Acquiring | State::Held { .. } => Some(self.m.value().clone()),
            _ => None,
        };
        for (value, nodes) in &self.acquire_to {
            if Some(value) == live.as_ref() {
                continue;
            }
            let released = self.release_to.get(value);
            for n in nodes {
                prop_assert!(
                    released.is_some_and(|r| r.contains(n)),
                    "attempt {value:?} touched node {n} and never released it"
                );
            }
        }
        Ok(())
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn redlock_keeps_its_invariants(
        cfg in redlock_config(),
        actions in proptest::collection::vec(action(), 1..200),
    ) {
        let mut h = Harness::new(cfg);
        for a in actions {
            h.step(a)?;
        }
    }
}
