//! RedLock: one lock over N independent Redis nodes (the algorithm of the Redis page
//! "Distributed Locks with Redis"), as a sans-IO machine.
//!
//! One machine serves one lock name, for any number of successive acquisitions. Each round
//! (acquire, extend, release) sends one command to every node at once and counts the replies
//! with a [`Tally`]; a round is decided as soon as a quorum is won or has become impossible.
//!
//! Safety rules kept here:
//! - validity: a round that starts at `t` can hold the lock only until `t + ttl - drift`;
//!   it is never reported acquired or extended at or after that instant.
//! - every attempt that does not end acquired releases on all nodes, not only those that said
//!   OK (a late SET may still land on a node that timed out); a SET still unanswered when its
//!   attempt ends is remembered, and if it is granted late (its release overtook it), that node
//!   is released again.
//! - an acquisition reports `Failed` only once its releases were answered or timed out.
//! - each attempt stores a fresh value (`token` in hex, then `.` and an attempt serial), so a
//!   late release of an earlier attempt can never delete a later attempt's key.
//! - a failed extension deletes nothing; the lock is reported lost exactly at the old deadline.

/// RedLock's deliberate bugs, for the simulator (feature `bugs`; never in a release build).
#[cfg(feature = "bugs")]
pub mod bugs;
#[cfg(not(feature = "bugs"))]
mod bugs;
mod command;
mod config;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use bytes::{BufMut, Bytes, BytesMut};

pub use command::{
    Command, Reply, ACQUIRE_FENCED_SCRIPT, ACQUIRE_FENCED_SHA1, EXTEND_SCRIPT, EXTEND_SHA1,
    FENCE_KEY_SUFFIX, FENCE_SCRIPT, FENCE_SHA1, RELEASE_CHANNEL_PREFIX, RELEASE_QUIET_SCRIPT,
    RELEASE_QUIET_SHA1, RELEASE_SCRIPT, RELEASE_SHA1,
};
pub use config::{AutoExtend, RedLockConfig, RedLockConfigBuilder, DEFAULT_TTL, MAX_NODES};
// The shared settings, where RedLock users have always found them.
pub use crate::settings::{
    Retry, Wait, DEFAULT_DRIFT_FLOOR, DEFAULT_DRIFT_PPM, MAX_KEY_LEN, MAX_TTL,
};

use crate::error::{BackendError, LockError, NodeOutcome, UsageError};
use crate::machine::{Event, LockMachine, LostReason, NodeId, OpId, Output, State, Transmit};
use crate::quorum::{Decision, Tally};
use crate::settings::Attempts;
use crate::time::{Duration, Instant};

use bugs::RedLockBug as Bug;

pub use crate::settings::{MAX_TOKEN_LEN, MIN_TOKEN_LEN};

/// The RedLock machine for one lock name.
#[derive(Debug)]
pub struct RedLock {
    cfg: RedLockConfig,
    key: Bytes,
    /// The fence counter's key: `key` + [`FENCE_KEY_SUFFIX`].
    fence_key: Bytes,
    /// Hex of the caller's token followed by `.`; each attempt appends its serial.
    token_hex: Bytes,
    /// The value of the current (or last) attempt.
    value: Bytes,
    now: Instant,
    next_op: u64,
    serial: u64,
    phase: Phase,
    /// One slot per node for the round in flight.
    slots: Vec<Slot>,
    out: VecDeque<Output<Command>>,
    /// SETs whose attempt no longer waits for them (abandoned, or won without them): if one
    /// is granted late while its value does not hold the lock, that node is released again.
    orphans: Vec<Orphan>,
    /// The error a failing acquisition reports once its clean-up is done.
    failure: Option<Box<LockError>>,
    attempts: Attempts,
    extensions: u32,
    last_extend_error: Option<Box<LockError>>,
    /// A quick retry after a split vote may be taken (once per wake-up; see `fail_attempt`).
    quick_retry: bool,
}

#[derive(Clone, Debug, Default)]
struct Slot {
    /// The op this node's reply must carry to count; `None` once counted or when idle.
    op: Option<OpId>,
    outcome: NodeOutcome,
    /// The fence counter the node reported when it granted a fenced acquire.
    counter: u64,
    /// A SET of the value being released was granted late while this node's release was in
    /// flight: release again unless that release reports it deleted our key.
    recheck: bool,
}

/// A SET the machine no longer waits for.
#[derive(Clone, Debug)]
struct Orphan {
    node: NodeId,
    op: OpId,
    value: Bytes,
    /// After this, a reply to it is treated as lost (the list stays bounded).
    forget_at: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Round {
    /// When the first command of the round was handed out.
    start: Instant,
    /// Per-node timeout of this round.
    deadline: Instant,
    /// `start + ttl - drift`: the most this round can hold the lock until.
    valid_until: Instant,
    tally: Tally,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Idle,
    Acquiring(Round),
    /// A quorum granted; the fence is being written back to the nodes that granted.
    Fencing {
        round: Round,
        fence: u64,
    },
    Waiting {
        retry_at: Instant,
    },
    Held {
        valid_until: Instant,
        next_extend: Option<Instant>,
        extending: Option<Round>,
    },
    Releasing {
        deadline: Instant,
    },
    /// The acquisition failed for good; its releases are in flight. `Failed` follows once
    /// every node answered or `deadline` passed.
    Failing {
        deadline: Instant,
    },
    Done,
}

impl Round {
    fn rebase_back(&mut self, by: Duration) {
        self.start = self.start.rebase_back(by);
        self.deadline = self.deadline.rebase_back(by);
        self.valid_until = self.valid_until.rebase_back(by);
    }
}

impl RedLock {
    /// A machine for the lock `name` (the key is the configured prefix followed by `name`).
    ///
    /// `token` is 16 to 64 bytes, at least 128 random bits from a CSPRNG (the simulator passes
    /// seeded ones), and unique to this machine: it is what proves a key is ours, so two
    /// machines sharing a token delete and extend each other's keys. `seed` drives the retry
    /// jitter.
    ///
    /// A key (prefix + name) is any 1 to [`MAX_KEY_LEN`] bytes not ending in
    /// [`FENCE_KEY_SUFFIX`], which names the fence counters; it is stored as given, as
    /// redsync, node-redlock and rslock store theirs.
    pub fn new(
        cfg: &RedLockConfig,
        name: &[u8],
        token: &[u8],
        seed: u64,
    ) -> Result<RedLock, UsageError> {
        if name.is_empty() {
            return Err(UsageError::EmptyKey);
        }
        let len = cfg.key_prefix.len() + name.len();
        crate::settings::check_key(len, MAX_KEY_LEN)?;
        crate::settings::check_token(token)?;
        let mut key = BytesMut::with_capacity(len);
        key.put_slice(&cfg.key_prefix);
        key.put_slice(name);
        let mut token_hex = BytesMut::with_capacity(token.len() * 2 + 1);
        for b in token {
            token_hex.put_u8(HEX[usize::from(b >> 4)]);
            token_hex.put_u8(HEX[usize::from(b & 15)]);
        }
        token_hex.put_u8(b'.');
        let n = cfg.nodes();
        let key = key.freeze();
        if key.ends_with(FENCE_KEY_SUFFIX.as_bytes()) {
            return Err(UsageError::ReservedName {
                key: lossy(&key),
                suffix: FENCE_KEY_SUFFIX,
            });
        }
        let mut fence_key = BytesMut::with_capacity(key.len() + FENCE_KEY_SUFFIX.len());
        fence_key.put_slice(&key);
        fence_key.put_slice(FENCE_KEY_SUFFIX.as_bytes());
        Ok(RedLock {
            cfg: cfg.clone(),
            key,
            fence_key: fence_key.freeze(),
            token_hex: token_hex.freeze(),
            value: Bytes::new(),
            now: Instant::ZERO,
            next_op: crate::rng::op_base(seed, token),
            serial: 0,
            phase: Phase::Idle,
            slots: alloc::vec![Slot::default(); n],
            orphans: Vec::new(),
            failure: None,
            out: VecDeque::with_capacity(n + 2),
            attempts: Attempts::new(seed),
            extensions: 0,
            last_extend_error: None,
            quick_retry: true,
        })
    }

    /// The key this machine locks on every node.
    pub fn key(&self) -> &Bytes {
        &self.key
    }

    /// The value stored by the current (or last) attempt.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// The configuration.
    pub fn config(&self) -> &RedLockConfig {
        &self.cfg
    }

    /// Successful extensions of the current hold.
    pub fn extensions(&self) -> u32 {
        self.extensions
    }

    /// Every node's outcome in the round in flight or the last one.
    pub fn node_outcomes(&self) -> impl Iterator<Item = &NodeOutcome> {
        self.slots.iter().map(|s| &s.outcome)
    }

    /// Whether a deliberately injected bug is on (feature `bugs`, simulator only).
    #[inline]
    fn bug(&self, _bug: Bug) -> bool {
        #[cfg(feature = "bugs")]
        return self.cfg.bugs.contains(_bug);
        #[cfg(not(feature = "bugs"))]
        false
    }

    // ----- time -----

    /// Moves the clock and fires every deadline reached. A `now` earlier than the last one
    /// moves every deadline back by the step (see [`Event::TimeWentBack`]).
    fn advance(&mut self, now: Instant) {
        if now < self.now {
            self.rebase_back(self.now - now);
        }
        self.now = now;
        self.orphans.retain(|o| now < o.forget_at);
        // Each step either changes phase or returns; a round's deadline fires once.
        loop {
            let now = self.now;
            match self.phase {
                Phase::Acquiring(mut r) if now >= r.deadline || now >= r.valid_until => {
                    self.orphan_pending();
                    self.time_out_pending(&mut r.tally);
                    self.finish_acquire_round(r);
                }
                Phase::Fencing { mut round, fence }
                    if now >= round.deadline || now >= round.valid_until =>
                {
                    self.time_out_pending(&mut round.tally);
                    self.finish_fence_round(round, fence);
                }
                Phase::Waiting { retry_at } if now >= retry_at => self.start_attempt(),
                Phase::Held {
                    valid_until,
                    extending,
                    ..
                } if now >= valid_until
                    && !(extending.is_some() && self.bug(Bug::ExtendAfterExpiry)) =>
                {
                    self.lose()
                }
                Phase::Held {
                    extending: Some(mut r),
                    valid_until,
                    next_extend,
                } if now >= r.deadline => {
                    self.time_out_pending(&mut r.tally);
                    self.finish_extend_round(r, valid_until, next_extend);
                }
                Phase::Held {
                    extending: None,
                    next_extend: Some(at),
                    ..
                } if now >= at => {
                    self.start_extend();
                }
                Phase::Releasing { deadline } | Phase::Failing { deadline } if now >= deadline => {
                    // A late grant waited on a release that never answered: release again
                    // without waiting (the clean-up is bounded by its deadline).
                    for i in 0..self.slots.len() {
                        if core::mem::take(&mut self.slots[i].recheck) {
                            self.release_one(i, self.value.clone());
                        }
                    }
                    self.time_out_pending(&mut Tally::checked(self.cfg.nodes, self.cfg.quorum));
                    self.finish_release(true);
                }
                _ => return,
            }
        }
    }

    /// The caller's clock stepped back by `by`: every deadline moves back as much, so none
    /// lies later than under either reading of the clock.
    fn rebase_back(&mut self, by: Duration) {
        self.attempts.rebase_back(by);
        // Orphans keep their `forget_at`: remembering a SET longer is the safe side.
        let mut held = None;
        self.phase = match self.phase {
            Phase::Acquiring(mut r) => {
                r.rebase_back(by);
                Phase::Acquiring(r)
            }
            Phase::Fencing { mut round, fence } => {
                round.rebase_back(by);
                Phase::Fencing { round, fence }
            }
            Phase::Waiting { retry_at } => Phase::Waiting {
                retry_at: retry_at.rebase_back(by),
            },
            Phase::Held {
                valid_until,
                next_extend,
                extending,
            } => {
                let valid_until = valid_until.rebase_back(by);
                held = Some(valid_until);
                Phase::Held {
                    valid_until,
                    next_extend: next_extend.map(|t| t.rebase_back(by)),
                    extending: extending.map(|mut r| {
                        r.rebase_back(by);
                        r
                    }),
                }
            }
            Phase::Releasing { deadline } => Phase::Releasing {
                deadline: deadline.rebase_back(by),
            },
            Phase::Failing { deadline } => Phase::Failing {
                deadline: deadline.rebase_back(by),
            },
            p @ (Phase::Idle | Phase::Done) => p,
        };
        self.emit(Event::TimeWentBack {
            by,
            valid_until: held,
        });
    }

    /// Counts every node that has not answered as timed out (a no vote).
    fn time_out_pending(&mut self, tally: &mut Tally) {
        for s in &mut self.slots {
            if s.op.take().is_some() {
                s.outcome = NodeOutcome::TimedOut;
                tally.no();
            }
        }
    }

    // ----- rounds -----

    fn round(&self) -> Round {
        let cfg = &self.cfg;
        Round {
            start: self.now,
            deadline: self.now + cfg.node_timeout,
            valid_until: if self.bug(Bug::IgnoreDrift) {
                self.now + cfg.ttl
            } else {
                self.now + cfg.validity()
            },
            tally: Tally::checked(cfg.nodes, cfg.quorum),
        }
    }

    /// Arms node `i`'s slot for a new op of the round in flight.
    fn arm(&mut self, i: usize) -> OpId {
        self.next_op = self.next_op.wrapping_add(1);
        let op = OpId(self.next_op);
        self.slots[i] = Slot {
            op: Some(op),
            outcome: NodeOutcome::Pending,
            counter: 0,
            recheck: false,
        };
        op
    }

    /// Sends `command(node)` to every node, arming one slot per node.
    fn broadcast(&mut self, command: impl Fn(&RedLock) -> Command) {
        for i in 0..self.slots.len() {
            let op = self.arm(i);
            let node = NodeId(i as u16);
            let command = command(self);
            self.queue(Output::Transmit(Transmit { node, op, command }));
        }
    }

    /// Remembers the SETs of the attempt in flight that have not been answered yet: the
    /// attempt stops waiting for them (it ended, or won without them).
    fn orphan_pending(&mut self) {
        let forget_at = self.now + self.cfg.ttl;
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(op) = slot.op {
                self.orphans.push(Orphan {
                    node: NodeId(i as u16),
                    op,
                    value: self.value.clone(),
                    forget_at,
                });
            }
        }
    }

    /// Sends one release to `node` for `value`, without waiting for the reply.
    fn release_one(&mut self, node: usize, value: Bytes) -> OpId {
        self.next_op = self.next_op.wrapping_add(1);
        // Cleanup of an attempt that never held the lock: nobody waits on it.
        let command = Command::Release {
            key: self.key.clone(),
            value,
            notify: false,
        };
        let t = Transmit {
            node: NodeId(node as u16),
            op: OpId(self.next_op),
            command,
        };
        self.queue(Output::Transmit(t));
        OpId(self.next_op)
    }

    /// Sends a release to every node without waiting for the replies (after a failed attempt).
    fn release_unwatched(&mut self) {
        if self.bug(Bug::NoReleaseOnFailure) {
            return;
        }
        for i in 0..self.slots.len() {
            self.release_one(i, self.value.clone());
        }
    }

    fn start_attempt(&mut self) {
        self.attempts.start();
        self.serial += 1;
        let mut value = BytesMut::with_capacity(self.token_hex.len() + 20);
        value.put_slice(&self.token_hex);
        push_decimal(&mut value, self.serial);
        self.value = value.freeze();
        let round = self.round();
        let ttl_ms = self.cfg.ttl_ms();
        if self.cfg.fencing {
            self.broadcast(|m| Command::AcquireFenced {
                key: m.key.clone(),
                fence_key: m.fence_key.clone(),
                value: m.value.clone(),
                ttl_ms,
            });
        } else {
            self.broadcast(|m| Command::Acquire {
                key: m.key.clone(),
                value: m.value.clone(),
                ttl_ms,
            });
        }
        self.phase = Phase::Acquiring(round);
    }

    /// Ends the round in flight: replies still to come are stale from now on.
    fn disarm(&mut self) {
        for s in &mut self.slots {
            s.op = None;
        }
    }

    fn finish_acquire_round(&mut self, r: Round) {
        if r.tally.decision() != Decision::Pending {
            // Won or lost, the round waits for no more SETs; a late grant is handled as an
            // orphan (released unless its value holds the lock).
            self.orphan_pending();
            self.disarm();
        }
        match r.tally.decision() {
            Decision::Pending => self.phase = Phase::Acquiring(r),
            Decision::Won if self.now < r.valid_until => {
                let granted = self
                    .slots
                    .iter()
                    .filter(|s| s.outcome == NodeOutcome::Granted);
                let max = granted.map(|s| s.counter).max().unwrap_or(0);
                if !self.cfg.fencing {
                    self.hold(r, None);
                } else if self.bug(Bug::FenceMaxOfIncr) {
                    // The naive scheme: every node INCRed its counter; take the max, no
                    // write-back.
                    self.hold(r, Some(max));
                } else {
                    self.start_fence(r, max.saturating_add(1));
                }
            }
            decision => {
                let error = self.round_error(decision == Decision::Won);
                // Some nodes granted, yet no quorum: most likely several contenders split
                // the nodes as the lock came free, and nobody will announce a release.
                let granted = self.slots.iter().any(|s| s.outcome == NodeOutcome::Granted);
                let split = granted && matches!(error, LockError::Taken { .. });
                let round_trip = self.now.saturating_duration_since(r.start);
                self.fail_attempt(error, split.then_some(round_trip));
            }
        }
    }

    /// The lock is held from round `r` on, with `fence` if fencing.
    fn hold(&mut self, r: Round, fence: Option<u64>) {
        self.extensions = 0;
        self.last_extend_error = None;
        let next_extend = self.cfg.auto_extend.map(|a| r.start + a.every);
        self.phase = Phase::Held {
            valid_until: r.valid_until,
            next_extend,
            extending: None,
        };
        self.emit(Event::Acquired {
            fence: fence.map(crate::fence::Fence),
            valid_until: r.valid_until,
        });
    }

    /// An attempt did not win: release every node, then retry or give up. After a split
    /// vote (`split`: the attempt's round trip), the retry comes after one to three round
    /// trips instead of the usual delay: by then the contenders' cleanups have landed, and
    /// the spread lets the first of them win. Once per wake-up, so a waiter that keeps taking
    /// a minority of nodes from a holder does not spin.
    fn fail_attempt(&mut self, error: LockError, split: Option<Duration>) {
        let quick = match split {
            Some(rtt) if self.quick_retry => {
                self.quick_retry = false;
                Some(rtt)
            }
            _ => None,
        };
        let (now, retry, max) = (self.now, self.cfg.retry, self.cfg.max_attempts);
        match self.attempts.next_retry(now, retry, max, quick) {
            Some(retry_at) => {
                self.release_unwatched();
                self.phase = Phase::Waiting { retry_at };
                self.emit(Event::Retrying {
                    attempt: self.attempts.count,
                    retry_at,
                });
            }
            None if self.bug(Bug::FailBeforeCleanup) || self.bug(Bug::NoReleaseOnFailure) => {
                self.release_unwatched();
                self.phase = Phase::Done;
                self.emit(Event::Failed(error));
            }
            None => {
                // Give up only once the releases were answered (or timed out), so a caller
                // that exits right after `Failed` leaves no key behind.
                self.failure = Some(Box::new(error));
                let deadline = self.broadcast_release(false);
                self.phase = Phase::Failing { deadline };
            }
        }
    }

    /// Writes `fence` back to every node that granted the acquire (they hold our key); the
    /// lock counts only once a quorum took it, inside the acquire round's validity. Any later
    /// holder's quorum then meets this one, so it reads a counter >= `fence` and its own fence
    /// is higher.
    fn start_fence(&mut self, acquired: Round, fence: u64) {
        let mut sent = 0u16;
        for i in 0..self.slots.len() {
            if self.slots[i].outcome != NodeOutcome::Granted {
                self.slots[i] = Slot::default();
                continue;
            }
            let op = self.arm(i);
            let command = Command::Fence {
                key: self.key.clone(),
                fence_key: self.fence_key.clone(),
                value: self.value.clone(),
                fence,
            };
            let t = Transmit {
                node: NodeId(i as u16),
                op,
                command,
            };
            self.queue(Output::Transmit(t));
            sent += 1;
        }
        let round = Round {
            start: acquired.start,
            deadline: (self.now + self.cfg.node_timeout).min(acquired.valid_until),
            valid_until: acquired.valid_until,
            tally: Tally::checked(sent, self.cfg.quorum),
        };
        self.phase = Phase::Fencing { round, fence };
    }

    fn finish_fence_round(&mut self, r: Round, fence: u64) {
        match r.tally.decision() {
            Decision::Pending => self.phase = Phase::Fencing { round: r, fence },
            Decision::Won if self.now < r.valid_until => {
                self.disarm();
                self.hold(r, Some(fence));
            }
            decision => {
                self.disarm();
                let error = self.round_error(decision == Decision::Won);
                self.fail_attempt(error, None);
            }
        }
    }

    /// Classifies a lost round by who said no: no quorum if failures and timeouts alone
    /// made a quorum of the round's voters impossible, else taken (refusals by another owner
    /// were needed to lose). A write-back round's voters are the nodes that granted.
    fn round_error(&self, won_too_late: bool) -> LockError {
        let nodes: Vec<NodeOutcome> = self.slots.iter().map(|s| s.outcome.clone()).collect();
        let attempts = self.attempts.count;
        let voters = nodes
            .iter()
            .filter(|o| !matches!(o, NodeOutcome::NotSent))
            .count();
        let failed = nodes
            .iter()
            .filter(|o| matches!(o, NodeOutcome::Failed(_) | NodeOutcome::TimedOut))
            .count();
        if won_too_late {
            LockError::TooSlow { attempts, nodes }
        } else if voters - failed >= self.cfg.quorum() {
            LockError::Taken { attempts, nodes }
        } else {
            LockError::NoQuorum { attempts, nodes }
        }
    }

    fn start_extend(&mut self) {
        if let Phase::Held {
            valid_until,
            next_extend,
            ..
        } = self.phase
        {
            let round = self.round();
            let ttl_ms = self.cfg.ttl_ms();
            self.broadcast(|m| Command::Extend {
                key: m.key.clone(),
                value: m.value.clone(),
                ttl_ms,
            });
            self.phase = Phase::Held {
                valid_until,
                next_extend,
                extending: Some(round),
            };
        }
    }

    fn finish_extend_round(
        &mut self,
        r: Round,
        valid_until: Instant,
        next_extend: Option<Instant>,
    ) {
        if r.tally.decision() != Decision::Pending {
            self.disarm();
        }
        match r.tally.decision() {
            Decision::Pending => {
                self.phase = Phase::Held {
                    valid_until,
                    next_extend,
                    extending: Some(r),
                };
            }
            // `advance` fires the old deadline before any reply, so a win here is inside the
            // current validity, and `r.valid_until > valid_until` since the round started later.
            Decision::Won => {
                self.extensions = self.extensions.saturating_add(1);
                self.last_extend_error = None;
                let capped = self
                    .cfg
                    .auto_extend
                    .and_then(|a| a.max_extensions)
                    .is_some_and(|max| self.extensions >= max);
                let next_extend = match self.cfg.auto_extend {
                    Some(a) if !capped => Some(r.start + a.every),
                    _ => None,
                };
                let valid_until = r.valid_until.max(valid_until);
                self.phase = Phase::Held {
                    valid_until,
                    next_extend,
                    extending: None,
                };
                self.emit(Event::Extended { valid_until });
            }
            Decision::Lost => {
                let error = self.round_error(false);
                // Auto mode tries again after the retry delay while time remains.
                let next_extend = self
                    .cfg
                    .auto_extend
                    .map(|_| self.now + self.cfg.retry.delay)
                    .filter(|at| *at < valid_until);
                self.last_extend_error = Some(Box::new(error.clone()));
                self.phase = Phase::Held {
                    valid_until,
                    next_extend,
                    extending: None,
                };
                self.emit(Event::ExtendFailed { valid_until, error });
            }
        }
    }

    fn lose(&mut self) {
        let reason = match self.last_extend_error.take().map(|e| *e) {
            Some(e) => LostReason::ExtendFailed(e),
            None => LostReason::Expired,
        };
        self.emit(Event::Lost { reason });
        self.start_release();
    }

    fn start_release(&mut self) {
        let deadline = self.broadcast_release(true);
        self.phase = Phase::Releasing { deadline };
    }

    /// Sends the current value's release to every node, waiting for each answer until the
    /// returned deadline; `notify` tells waiters (a lock that was held or asked for).
    fn broadcast_release(&mut self, notify: bool) -> Instant {
        self.broadcast(|m| Command::Release {
            key: m.key.clone(),
            value: m.value.clone(),
            notify,
        });
        self.now + self.cfg.node_timeout
    }

    /// Ends a release or a failing acquisition's clean-up once every node answered its
    /// release and every SET of the attempt was answered (a late grant is released again
    /// first), or when `deadline_passed` counted the rest as timed out.
    fn finish_release(&mut self, deadline_passed: bool) {
        let waiting = self.slots.iter().any(|s| s.op.is_some())
            || self.orphans.iter().any(|o| o.value == self.value);
        if waiting && !deadline_passed {
            return;
        }
        let failing = matches!(self.phase, Phase::Failing { .. });
        self.phase = Phase::Done;
        match self.failure.take().map(|e| *e) {
            Some(error) if failing => self.emit(Event::Failed(error)),
            _ => {
                let nodes = self.slots.iter().map(|s| s.outcome.clone()).collect();
                self.emit(Event::Released { nodes });
            }
        }
    }

    fn emit(&mut self, event: Event) {
        self.queue(Output::Event(event));
    }

    /// Queues an output; an empty queue gets room for a whole round at once.
    fn queue(&mut self, o: Output<Command>) {
        if self.out.capacity() == 0 {
            self.out.reserve(self.slots.len() + 2);
        }
        self.out.push_back(o);
    }

    /// Orphan `i` (a SET no attempt waits for) was answered. If it took the key while its
    /// value does not hold the lock, its release may have overtaken it (or none was sent):
    /// release that node again, and wait for that answer too when a release or clean-up is
    /// in flight.
    fn late_grant(&mut self, i: usize, reply: &Reply) {
        let orphan = self.orphans.swap_remove(i);
        let granted = if self.bug(Bug::LateGrantOkOnly) {
            Expect::Ok.matches(reply)
        } else if self.cfg.fencing {
            Expect::Counter.matches(reply)
        } else {
            Expect::Ok.matches(reply)
        };
        let current = orphan.value == self.value;
        let holding = matches!(self.phase, Phase::Held { .. } | Phase::Fencing { .. }) && current;
        if granted && !holding && !self.bug(Bug::NoReleaseOnFailure) {
            let node = orphan.node.index();
            if !(self.cleaning() && current) {
                // Nothing of ours in flight covers it: release that node again.
                self.release_one(node, orphan.value);
            } else if self.slots[node].op.is_some() {
                // Decide on that node's release answer: deleted, it ran after this SET.
                self.slots[node].recheck = true;
            } else if self.slots[node].outcome != NodeOutcome::Granted {
                // That release deleted nothing (a release that deletes a key of this value
                // deletes this SET's key: values are unique per attempt): release again.
                self.rearm_release(node);
            }
        }
        if self.cleaning() {
            self.finish_release(false);
        }
    }

    /// A release or a failing acquisition's clean-up is in flight.
    fn cleaning(&self) -> bool {
        matches!(self.phase, Phase::Releasing { .. } | Phase::Failing { .. })
    }

    /// Releases the current value on `node` again, and waits for that answer.
    fn rearm_release(&mut self, node: usize) {
        let op = self.release_one(node, self.value.clone());
        self.slots[node].op = Some(op);
        self.slots[node].outcome = NodeOutcome::Pending;
    }

    /// Interprets `reply` to the command kind of the round in flight.
    fn outcome(&self, reply: Reply) -> NodeOutcome {
        let (command, granted, refused) = match self.phase {
            Phase::Acquiring(_) if self.cfg.fencing => {
                ("fenced acquire script", Expect::Counter, Expect::MinusOne)
            }
            Phase::Acquiring(_) => ("SET NX PX", Expect::Ok, Expect::Nil),
            Phase::Fencing { .. } => ("fence script", Expect::One, Expect::Zero),
            Phase::Held { .. } => ("extend script", Expect::One, Expect::Zero),
            _ => ("release script", Expect::One, Expect::Zero),
        };
        if granted.matches(&reply) {
            return NodeOutcome::Granted;
        }
        if refused.matches(&reply) {
            return NodeOutcome::Refused;
        }
        NodeOutcome::Failed(match reply {
            Reply::Error(e) => BackendError::ErrorReply(lossy(&e)),
            Reply::Unavailable(e) => BackendError::Unavailable(e),
            other => BackendError::UnexpectedReply {
                command,
                got: describe(&other),
            },
        })
    }
}

#[derive(Clone, Copy)]
enum Expect {
    Counter,
    MinusOne,
    Ok,
    Nil,
    One,
    Zero,
}

impl Expect {
    fn matches(self, reply: &Reply) -> bool {
        match (self, reply) {
            (Expect::Ok, Reply::Status(s)) => s.as_ref() == b"OK",
            (Expect::Nil, Reply::Nil) => true,
            (Expect::Counter, Reply::Int(c)) => *c >= 0,
            (Expect::MinusOne, Reply::Int(-1)) => true,
            (Expect::One, Reply::Int(1)) => true,
            (Expect::Zero, Reply::Int(0)) => true,
            _ => false,
        }
    }
}

impl LockMachine for RedLock {
    type Command = Command;
    type Reply = Reply;

    fn node_count(&self) -> usize {
        self.slots.len()
    }

    fn acquire(&mut self, now: Instant) -> Result<(), UsageError> {
        self.advance(now);
        if !matches!(self.phase, Phase::Idle | Phase::Done) {
            return Err(UsageError::Busy);
        }
        self.attempts.begin(self.now, self.cfg.wait);
        self.quick_retry = true;
        self.start_attempt();
        Ok(())
    }

    fn extend(&mut self, now: Instant) -> Result<(), UsageError> {
        self.advance(now);
        match self.phase {
            Phase::Held {
                extending: None, ..
            } => {
                self.start_extend();
                Ok(())
            }
            Phase::Held {
                extending: Some(_), ..
            } => Ok(()),
            _ => Err(UsageError::NotHeld),
        }
    }

    fn release(&mut self, now: Instant) -> Result<(), UsageError> {
        self.advance(now);
        match self.phase {
            Phase::Idle => Err(UsageError::NotHeld),
            Phase::Acquiring(_)
            | Phase::Fencing { .. }
            | Phase::Waiting { .. }
            | Phase::Held { .. } => {
                if let Phase::Acquiring(_) = self.phase {
                    self.orphan_pending();
                }
                self.start_release();
                Ok(())
            }
            Phase::Releasing { .. } => Ok(()),
            Phase::Failing { deadline } => {
                // Cancelled while the failed attempt cleans up: the same releases end it,
                // reported as `Released` instead of `Failed`.
                self.failure = None;
                self.phase = Phase::Releasing { deadline };
                Ok(())
            }
            Phase::Done => {
                let nodes = alloc::vec![NodeOutcome::NotSent; self.slots.len()];
                self.emit(Event::Released { nodes });
                Ok(())
            }
        }
    }

    fn wake(&mut self, now: Instant) {
        self.advance(now);
        if let Phase::Waiting { .. } = self.phase {
            // A release was announced: a split vote after it may again be retried quickly.
            self.quick_retry = true;
            self.start_attempt();
        }
    }

    fn handle_reply(&mut self, now: Instant, node: NodeId, op: OpId, reply: Reply) -> bool {
        self.advance(now);
        let Some(slot) = self.slots.get(node.index()) else {
            return false;
        };
        if let Some(i) = self
            .orphans
            .iter()
            .position(|o| o.op == op && o.node == node)
        {
            self.late_grant(i, &reply);
            self.advance(self.now);
            return true;
        }
        let stale_ok = slot.op.is_some() && self.bug(Bug::CountStaleReplies);
        if slot.op != Some(op) && !stale_ok {
            return false; // late, duplicated, for a round no longer in flight, or misrouted
        }
        let counter = match (&self.phase, &reply) {
            (Phase::Acquiring(_), Reply::Int(c)) if self.cfg.fencing => u64::try_from(*c).ok(),
            _ => None,
        };
        let outcome = self.outcome(reply);
        let granted = outcome == NodeOutcome::Granted;
        let slot = &mut self.slots[node.index()];
        slot.op = None;
        slot.outcome = outcome;
        slot.counter = counter.unwrap_or(0);
        let recheck = core::mem::take(&mut slot.recheck);
        if recheck && !granted && self.cleaning() {
            // A late grant of this value came while this release was in flight, and the
            // release did not delete it: it ran first. Release again and wait for that.
            self.rearm_release(node.index());
        }
        match &mut self.phase {
            Phase::Acquiring(r) => {
                vote(&mut r.tally, granted);
                let r = *r;
                self.finish_acquire_round(r);
            }
            Phase::Held {
                extending: Some(r),
                valid_until,
                next_extend,
            } => {
                vote(&mut r.tally, granted);
                let (r, v, n) = (*r, *valid_until, *next_extend);
                self.finish_extend_round(r, v, n);
            }
            Phase::Fencing { round, fence } => {
                vote(&mut round.tally, granted);
                let (r, f) = (*round, *fence);
                self.finish_fence_round(r, f);
            }
            Phase::Releasing { .. } | Phase::Failing { .. } => self.finish_release(false),
            _ => {}
        }
        // A decision may schedule work for `now` (a zero retry delay): fire it before returning.
        self.advance(self.now);
        true
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    fn poll_output(&mut self) -> Option<Output<Command>> {
        self.out.pop_front()
    }

    fn shrink(&mut self) {
        // A round's buffer holds five commands of about 128 bytes each.
        self.out.shrink_to_fit();
        self.orphans.shrink_to_fit();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle | Phase::Done => None,
            Phase::Acquiring(r) | Phase::Fencing { round: r, .. } => {
                Some(r.deadline.min(r.valid_until))
            }
            Phase::Waiting { retry_at } => Some(retry_at),
            Phase::Held {
                extending: Some(r), ..
            } if self.bug(Bug::ExtendAfterExpiry) => Some(r.deadline),
            Phase::Held {
                valid_until,
                next_extend,
                extending,
            } => {
                let mut at = valid_until;
                if let Some(r) = extending {
                    at = at.min(r.deadline);
                } else if let Some(n) = next_extend {
                    at = at.min(n);
                }
                Some(at)
            }
            Phase::Releasing { deadline } | Phase::Failing { deadline } => Some(deadline),
        }
    }

    fn release_channel(&self) -> Option<Bytes> {
        let mut channel = BytesMut::with_capacity(RELEASE_CHANNEL_PREFIX.len() + self.key.len());
        channel.put_slice(RELEASE_CHANNEL_PREFIX.as_bytes());
        channel.put_slice(&self.key);
        Some(channel.freeze())
    }

    fn renews_while_held(&self) -> bool {
        match self.phase {
            Phase::Held {
                next_extend,
                extending,
                ..
            } => next_extend.is_some() || extending.is_some(),
            _ => true,
        }
    }

    fn held_key(&self) -> Option<Bytes> {
        matches!(self.phase, Phase::Held { .. }).then(|| self.key.clone())
    }

    fn state(&self) -> State {
        match self.phase {
            Phase::Idle => State::Idle,
            Phase::Acquiring(_) | Phase::Fencing { .. } | Phase::Failing { .. } => State::Acquiring,
            Phase::Waiting { .. } => State::Waiting,
            Phase::Held { valid_until, .. } => State::Held { valid_until },
            Phase::Releasing { .. } => State::Releasing,
            Phase::Done => State::Done,
        }
    }
}

fn vote(tally: &mut Tally, granted: bool) {
    if granted {
        tally.yes();
    } else {
        tally.no();
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_decimal(buf: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

fn lossy(b: &[u8]) -> alloc::string::String {
    alloc::string::String::from_utf8_lossy(b).into_owned()
}

fn describe(reply: &Reply) -> alloc::string::String {
    use alloc::format;
    match reply {
        Reply::Status(s) => format!("status {:?}", lossy(s)),
        Reply::Int(i) => format!("integer {i}"),
        Reply::Bulk(b) => format!("bulk string of {} bytes", b.len()),
        Reply::Nil => "nil".into(),
        Reply::Error(e) => format!("error {:?}", lossy(e)),
        Reply::Other(s) => s.clone(),
        Reply::Unavailable(s) => format!("unavailable: {s}"),
    }
}
