//! The lease-record lock: one record per lock name in a store that judges expiry on its own
//! clock (`name -> { owner, fence, expires_at }`). The in-memory table, PostgreSQL, MySQL and
//! MongoDB all hold a lock this way; each only encodes the four [`Command`]s.
//!
//! - **Owner**: the machine's token and its acquisition counter. A retried take of one
//!   acquisition is idempotent (the record is already ours: same fence, fresh expiry); a new
//!   acquisition is a new owner, so a late release of an earlier one never frees it.
//! - **Fence**: the record's, raised by the store on every takeover and never reset (release
//!   clears the owner, never deletes the record): strictly increasing per name across holders,
//!   expiries and releases, as long as the store keeps its data.
//! - **Validity**: the send time of the last acknowledged take or renewal + ttl - drift
//!   allowance, never more. A reply read late only shortens the hold.
//! - **Unknown outcomes** (a timeout or a dropped connection after a write was sent): a take
//!   is resolved by inspecting the record before anything is claimed; an inspected record of
//!   ours is held until the inspect's send time + the time it had left - drift.
//! - **Waiting**: no spinning. The next attempt starts after the retry delay (jittered), or
//!   when the holder's record runs out if that is sooner (the store reports its time left),
//!   or at once on a release hint ([`release_channel`](LockMachine::release_channel) names
//!   the lock; the in-memory table and PostgreSQL give hints).
//! - **Loss and give-up**: a lost lock and a failed acquisition that may have taken the
//!   record both send a release before they end, so nothing of ours blocks others.

/// The lease-record protocol's deliberate bugs, for the simulator (feature `bugs`; never in a
/// release build).
#[cfg(feature = "bugs")]
pub mod bugs;
#[cfg(not(feature = "bugs"))]
mod bugs;
mod command;
mod config;

use alloc::collections::VecDeque;
use alloc::vec;
use bytes::{BufMut, Bytes, BytesMut};

pub use command::{Command, Reply};
pub use config::{LeaseConfig, LeaseConfigBuilder};

use crate::error::{BackendError, LockError, NodeOutcome, UsageError};
use crate::fence::Fence;
use crate::machine::{Event, LockMachine, LostReason, NodeId, OpId, Output, State, Transmit};
use crate::settings::{Attempts, MAX_KEY_LEN};
use crate::time::{Duration, Instant};
use bugs::LeaseBug as Bug;

pub use crate::settings::{MAX_TOKEN_LEN, MIN_TOKEN_LEN};

/// The lease-record machine for one lock name. It talks to one node: the store.
#[derive(Debug)]
pub struct LeaseLock {
    cfg: LeaseConfig,
    name: Bytes,
    token: Bytes,
    /// Acquisitions started; part of the owner.
    acquisition: u64,
    owner: Bytes,
    now: Instant,
    next_op: u64,
    out: VecDeque<Output<Command>>,
    phase: Phase,
    /// The one request in flight.
    pending: Option<Pending>,
    attempts: Attempts,
    /// A take of this acquisition was sent: the record may be ours.
    touched: bool,
    fence: Option<Fence>,
    next_renew: Instant,
    extensions: u32,
    /// The last renewal error, reported if the lock is then lost.
    renew_error: Option<LockError>,
    /// The error a failing acquisition reports once its release is answered.
    failure: Option<LockError>,
    /// A release asked for while a take was in flight: sent once the take is answered.
    release_after: bool,
    /// Takes that timed out (their answer may still come) with their owner: a late grant
    /// that no acquisition of ours uses is released again.
    late_takes: VecDeque<(OpId, Bytes)>,
}

/// Timed-out takes remembered for a late answer.
const LATE_TAKES: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Take,
    Renew,
    /// Resolves an unknown take or renewal.
    Inspect(Resolving),
    Release,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolving {
    Take,
    Renew,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    op: OpId,
    kind: Kind,
    sent: Instant,
    deadline: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Acquiring,
    Waiting {
        retry_at: Instant,
    },
    Held {
        valid_until: Instant,
    },
    Releasing,
    /// The acquisition failed for good; the release of what it may have taken is in flight.
    /// `Failed` follows its answer or timeout.
    Failing,
    Done,
}

impl LeaseLock {
    /// A machine for the lock `name` with `token` (16 to 64 bytes, 128+ random bits, unique
    /// to this machine); `seed` drives the retry jitter (and the range its op ids are drawn
    /// from).
    pub fn new(
        cfg: &LeaseConfig,
        name: &[u8],
        token: &[u8],
        seed: u64,
    ) -> Result<LeaseLock, UsageError> {
        crate::settings::check_key(name.len(), MAX_KEY_LEN)?;
        crate::settings::check_token(token)?;
        Ok(LeaseLock {
            cfg: cfg.clone(),
            name: Bytes::copy_from_slice(name),
            token: Bytes::copy_from_slice(token),
            acquisition: 0,
            owner: Bytes::new(),
            now: Instant::ZERO,
            next_op: crate::rng::op_base(seed, token),
            out: VecDeque::new(),
            phase: Phase::Idle,
            pending: None,
            attempts: Attempts::new(seed),
            touched: false,
            fence: None,
            next_renew: Instant::MAX,
            extensions: 0,
            renew_error: None,
            failure: None,
            release_after: false,
            late_takes: VecDeque::new(),
        })
    }

    /// The lock name.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The owner of the current (or last) acquisition: the token and the acquisition counter.
    pub fn owner(&self) -> &[u8] {
        &self.owner
    }

    fn bug(&self, _bug: Bug) -> bool {
        #[cfg(feature = "bugs")]
        {
            self.cfg.bugs.contains(_bug)
        }
        #[cfg(not(feature = "bugs"))]
        {
            false
        }
    }

    fn send(&mut self, kind: Kind, command: Command) {
        self.next_op = self.next_op.wrapping_add(1);
        let op = OpId(self.next_op);
        self.pending = Some(Pending {
            op,
            kind,
            sent: self.now,
            deadline: self.now + self.cfg.op_timeout,
        });
        self.out.push_back(Output::Transmit(Transmit {
            node: NodeId(0),
            op,
            command,
        }));
    }

    fn emit(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }

    fn error(&self, outcome: NodeOutcome) -> LockError {
        let attempts = self.attempts.count;
        let nodes = vec![outcome];
        match nodes[0] {
            NodeOutcome::Refused => LockError::Taken { attempts, nodes },
            _ => LockError::NoQuorum { attempts, nodes },
        }
    }

    /// The deadline a write acknowledged after being sent at `sent` gives (`now`, under the
    /// receive-time bug).
    fn valid_from(&self, sent: Instant, ttl: Duration) -> Instant {
        let from = if self.bug(Bug::ValidityFromReceive) {
            self.now
        } else {
            sent
        };
        from.saturating_add(ttl.saturating_sub(self.cfg.drift_for(ttl)))
    }

    fn start_attempt(&mut self) {
        self.attempts.start();
        self.phase = Phase::Acquiring;
        self.touched = true;
        let command = Command::Take {
            name: self.name.clone(),
            owner: self.owner.clone(),
            ttl: self.cfg.ttl,
        };
        self.send(Kind::Take, command);
    }

    fn send_release(&mut self) {
        let command = Command::Release {
            name: self.name.clone(),
            owner: self.owner.clone(),
        };
        self.send(Kind::Release, command);
    }

    fn send_renew(&mut self) {
        let command = Command::Renew {
            name: self.name.clone(),
            owner: self.owner.clone(),
            ttl: self.cfg.ttl,
        };
        self.send(Kind::Renew, command);
    }

    fn send_inspect(&mut self, resolving: Resolving) {
        let command = Command::Inspect {
            name: self.name.clone(),
        };
        self.send(Kind::Inspect(resolving), command);
    }

    /// The record is ours until `valid_until` with `fence`: held, unless that is already past.
    fn granted(&mut self, fence: u64, valid_until: Instant, sent: Instant) {
        if self.now >= valid_until {
            let e = LockError::TooSlow {
                attempts: self.attempts.count,
                nodes: vec![NodeOutcome::Granted],
            };
            self.fail_attempt(e, None);
            return;
        }
        let fence = Some(Fence(fence));
        self.fence = fence;
        self.phase = Phase::Held { valid_until };
        self.extensions = 0;
        self.renew_error = None;
        self.next_renew = match self.cfg.renew_every {
            Some(every) => sent.saturating_add(every),
            None => Instant::MAX,
        };
        self.emit(Event::Acquired { fence, valid_until });
    }

    /// An attempt failed: wait and try again (after the retry delay, or when the record's
    /// holder runs out if that is sooner; a release hint cuts the wait short), or give up.
    fn fail_attempt(&mut self, error: LockError, left: Option<Duration>) {
        let retry = self.cfg.retry;
        match self.attempts.next_retry(self.now, retry, None, None) {
            Some(backoff) => {
                let expiry = left.map_or(Instant::MAX, |l| self.now.saturating_add(l));
                let retry_at = backoff.min(expiry).min(self.attempts.wait_until);
                self.phase = Phase::Waiting { retry_at };
                self.emit(Event::Retrying {
                    attempt: self.attempts.count,
                    retry_at,
                });
            }
            None => self.give_up(error),
        }
    }

    /// The acquisition is over: release what it may have taken, then report `error`.
    fn give_up(&mut self, error: LockError) {
        if self.touched {
            self.failure = Some(error);
            self.phase = Phase::Failing;
            self.send_release();
        } else {
            self.phase = Phase::Done;
            self.emit(Event::Failed(error));
        }
    }

    /// The held lock is gone: report it, then release best-effort.
    fn lose(&mut self, error: Option<LockError>) {
        self.emit(Event::Lost {
            reason: match error {
                Some(e) => LostReason::ExtendFailed(e),
                None => LostReason::Expired,
            },
        });
        self.fence = None;
        self.phase = Phase::Releasing;
        self.send_release();
    }

    /// A renewal did not succeed; the lock stays held until its deadline, and another renewal
    /// goes out after the retry delay.
    fn renew_failed(&mut self, error: LockError) {
        if let Phase::Held { valid_until } = self.phase {
            self.renew_error = Some(error.clone());
            self.next_renew = self
                .now
                .saturating_add(self.cfg.retry.delay.max(Duration::from_millis(1)));
            self.emit(Event::ExtendFailed { valid_until, error });
        }
    }

    /// Extends the hold to `until` (never shortens it).
    fn renewed(&mut self, sent: Instant, until: Instant) {
        if let Phase::Held { valid_until } = self.phase {
            let valid_until = valid_until.max(until);
            self.phase = Phase::Held { valid_until };
            self.extensions = self.extensions.saturating_add(1);
            self.renew_error = None;
            self.next_renew = match (self.cfg.renew_every, self.cfg.max_extensions) {
                (Some(_), Some(max)) if self.extensions >= max => Instant::MAX,
                (Some(every), _) => sent.saturating_add(every),
                (None, _) => Instant::MAX,
            };
            self.emit(Event::Extended { valid_until });
        }
    }

    /// The release (of a give-up, a loss or the caller) is answered: the end.
    fn finish_release(&mut self, outcome: NodeOutcome) {
        self.phase = Phase::Done;
        match self.failure.take() {
            Some(error) => self.emit(Event::Failed(error)),
            None => self.emit(Event::Released {
                nodes: vec![outcome],
            }),
        }
    }

    /// Releases now, or once the take in flight is answered (so the release lands after it).
    fn begin_release(&mut self) {
        self.phase = Phase::Releasing;
        let taking = matches!(
            self.pending.map(|p| p.kind),
            Some(Kind::Take | Kind::Inspect(Resolving::Take))
        );
        if taking {
            self.release_after = true;
        } else {
            self.send_release();
        }
    }

    fn rebase_back(&mut self, by: Duration) {
        if let Some(p) = &mut self.pending {
            p.sent = p.sent.rebase_back(by);
            p.deadline = p.deadline.rebase_back(by);
        }
        self.next_renew = self.next_renew.rebase_back(by);
        self.attempts.rebase_back(by);
        let mut held = None;
        match &mut self.phase {
            Phase::Held { valid_until } => {
                *valid_until = valid_until.rebase_back(by);
                held = Some(*valid_until);
            }
            Phase::Waiting { retry_at } => *retry_at = retry_at.rebase_back(by),
            _ => {}
        }
        self.emit(Event::TimeWentBack {
            by,
            valid_until: held,
        });
    }

    /// Applies everything due at `now`.
    fn advance(&mut self, now: Instant) {
        if now < self.now {
            self.rebase_back(self.now - now);
        }
        self.now = now;
        if let Phase::Held { valid_until } = self.phase {
            if now >= valid_until {
                self.pending = None;
                let error = self.renew_error.take();
                self.lose(error);
                return;
            }
        }
        if let Some(p) = self.pending {
            if now >= p.deadline {
                self.pending = None;
                if p.kind == Kind::Take {
                    if self.late_takes.len() == LATE_TAKES {
                        self.late_takes.pop_front();
                    }
                    self.late_takes.push_back((p.op, self.owner.clone()));
                }
                self.on_reply(
                    p,
                    Reply::Unknown("no answer within the request timeout".into()),
                );
            }
        }
        match self.phase {
            Phase::Waiting { retry_at } if now >= retry_at => self.start_attempt(),
            Phase::Held { .. } if self.pending.is_none() && now >= self.next_renew => {
                self.send_renew();
            }
            _ => {}
        }
    }

    /// The answer to a take that had timed out. A grant that no acquisition of ours is using
    /// (an earlier acquisition's, or this one's after it ended) is released again, so it
    /// does not block others until it expires. Returns whether `op` was such a take.
    fn late_answer(&mut self, op: OpId, reply: &Reply) -> bool {
        let Some(i) = self.late_takes.iter().position(|(o, _)| *o == op) else {
            return false;
        };
        let Some((_, owner)) = self.late_takes.remove(i) else {
            return false;
        };
        let ended = matches!(
            self.phase,
            Phase::Idle | Phase::Done | Phase::Releasing | Phase::Failing
        );
        if matches!(reply, Reply::Granted { .. }) && (owner != self.owner || ended) {
            self.next_op = self.next_op.wrapping_add(1);
            let command = Command::Release {
                name: self.name.clone(),
                owner,
            };
            self.out.push_back(Output::Transmit(Transmit {
                node: NodeId(0),
                op: OpId(self.next_op),
                command,
            }));
        }
        true
    }

    fn on_reply(&mut self, p: Pending, reply: Reply) {
        if self.release_after && matches!(p.kind, Kind::Take | Kind::Inspect(Resolving::Take)) {
            // Released while this take was in flight: now that it is answered, release.
            self.release_after = false;
            self.send_release();
            return;
        }
        match p.kind {
            Kind::Take => self.on_take(p, reply),
            Kind::Renew => self.on_renew(p, reply),
            Kind::Inspect(resolving) => self.on_inspect(p, resolving, reply),
            Kind::Release => self.finish_release(release_outcome(reply)),
        }
    }

    fn on_take(&mut self, p: Pending, reply: Reply) {
        if self.phase != Phase::Acquiring {
            return;
        }
        match reply {
            Reply::Granted { fence } => {
                let until = self.valid_from(p.sent, self.cfg.ttl);
                self.granted(fence, until, p.sent);
            }
            Reply::Held { left } => {
                let e = self.error(NodeOutcome::Refused);
                self.fail_attempt(e, Some(left));
            }
            Reply::Unknown(_) if self.bug(Bug::UnknownAsGranted) => {
                let until = self.valid_from(p.sent, self.cfg.ttl);
                let fence = self.fence.map_or(1, |f| f.get().saturating_add(1));
                self.granted(fence, until, p.sent);
            }
            // Perhaps applied: read the record before claiming anything.
            Reply::Unknown(_) => self.send_inspect(Resolving::Take),
            other => {
                let e = self.error(failure(other, "take"));
                self.fail_attempt(e, None);
            }
        }
    }

    fn on_renew(&mut self, p: Pending, reply: Reply) {
        if !matches!(self.phase, Phase::Held { .. }) {
            return;
        }
        match reply {
            Reply::Renewed => {
                let until = self.valid_from(p.sent, self.cfg.ttl);
                self.renewed(p.sent, until);
            }
            Reply::NotOwner => {
                let e = self.error(NodeOutcome::Refused);
                self.pending = None;
                self.lose(Some(e));
            }
            Reply::Unknown(_) => self.send_inspect(Resolving::Renew),
            other => {
                let e = self.error(failure(other, "renew"));
                self.renew_failed(e);
            }
        }
    }

    fn on_inspect(&mut self, p: Pending, resolving: Resolving, reply: Reply) {
        let (owner, fence, left) = match reply {
            Reply::State { owner, fence, left } => (owner, fence, left),
            other => {
                let e = self.error(failure(other, "inspect"));
                match resolving {
                    Resolving::Take if self.phase == Phase::Acquiring => self.fail_attempt(e, None),
                    Resolving::Renew => self.renew_failed(e),
                    Resolving::Take => {}
                }
                return;
            }
        };
        let ours = owner.as_deref() == Some(&self.owner[..]) && !left.is_zero();
        // Ours at the inspect's send time at the latest, for `left` more on the store's clock.
        let until = p
            .sent
            .saturating_add(left.saturating_sub(self.cfg.drift_for(left)));
        match resolving {
            Resolving::Take if self.phase == Phase::Acquiring => {
                if ours {
                    self.granted(fence, until, p.sent);
                } else if owner.is_some() {
                    let e = self.error(NodeOutcome::Refused);
                    self.fail_attempt(e, Some(left));
                } else {
                    let e = self.error(NodeOutcome::Failed(BackendError::Unavailable(
                        "the take's outcome was unknown and it is not applied".into(),
                    )));
                    self.fail_attempt(e, None);
                }
            }
            Resolving::Renew if ours => self.renewed(p.sent, until),
            Resolving::Renew => {
                let e = self.error(NodeOutcome::Refused);
                self.lose(Some(e));
            }
            Resolving::Take => {}
        }
    }
}

/// A reply that does not answer the command as it should, as a node outcome.
fn failure(reply: Reply, command: &'static str) -> NodeOutcome {
    match reply {
        Reply::Unavailable(e) => NodeOutcome::Failed(BackendError::Unavailable(e)),
        Reply::Unknown(e) if e.starts_with("no answer") => NodeOutcome::TimedOut,
        Reply::Unknown(e) => NodeOutcome::Failed(BackendError::Unavailable(e)),
        Reply::Error(e) => NodeOutcome::Failed(BackendError::ErrorReply(e)),
        other => NodeOutcome::Failed(BackendError::UnexpectedReply {
            command,
            got: alloc::format!("{other:?}"),
        }),
    }
}

fn release_outcome(reply: Reply) -> NodeOutcome {
    match reply {
        Reply::Released => NodeOutcome::Granted,
        Reply::NotOwner => NodeOutcome::Refused,
        other => failure(other, "release"),
    }
}

/// `token` followed by the acquisition counter (big-endian).
fn owner_of(token: &[u8], acquisition: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(token.len() + 8);
    b.put_slice(token);
    b.put_u64(acquisition);
    b.freeze()
}

impl LockMachine for LeaseLock {
    type Command = Command;
    type Reply = Reply;

    fn node_count(&self) -> usize {
        1
    }

    fn acquire(&mut self, now: Instant) -> Result<(), UsageError> {
        self.advance(now);
        if !matches!(self.phase, Phase::Idle | Phase::Done) {
            return Err(UsageError::Busy);
        }
        self.acquisition = self.acquisition.wrapping_add(1);
        self.owner = owner_of(&self.token, self.acquisition);
        self.attempts.begin(self.now, self.cfg.wait);
        self.touched = false;
        self.fence = None;
        self.failure = None;
        self.release_after = false;
        self.start_attempt();
        Ok(())
    }

    fn extend(&mut self, now: Instant) -> Result<(), UsageError> {
        self.advance(now);
        match self.phase {
            Phase::Held { .. } => {
                if self.pending.is_none() {
                    self.send_renew();
                }
                Ok(())
            }
            _ => Err(UsageError::NotHeld),
        }
    }

    fn release(&mut self, now: Instant) -> Result<(), UsageError> {
        self.advance(now);
        match self.phase {
            Phase::Idle => Err(UsageError::NotHeld),
            Phase::Acquiring | Phase::Waiting { .. } | Phase::Held { .. } => {
                self.fence = None;
                if self.touched {
                    if !matches!(
                        self.pending.map(|p| p.kind),
                        Some(Kind::Take | Kind::Inspect(Resolving::Take))
                    ) {
                        self.pending = None;
                    }
                    self.begin_release();
                } else {
                    self.pending = None;
                    self.phase = Phase::Done;
                    self.emit(Event::Released {
                        nodes: vec![NodeOutcome::NotSent],
                    });
                }
                Ok(())
            }
            Phase::Releasing => Ok(()),
            Phase::Failing => {
                // Cancelled while the failed attempt releases: the same release ends it,
                // reported as `Released` instead of `Failed`.
                self.failure = None;
                self.phase = Phase::Releasing;
                Ok(())
            }
            Phase::Done => {
                self.emit(Event::Released {
                    nodes: vec![NodeOutcome::NotSent],
                });
                Ok(())
            }
        }
    }

    fn wake(&mut self, now: Instant) {
        self.advance(now);
        if let Phase::Waiting { .. } = self.phase {
            self.start_attempt();
        }
    }

    fn handle_reply(&mut self, now: Instant, node: NodeId, op: OpId, reply: Reply) -> bool {
        self.advance(now);
        if node.0 != 0 {
            return false;
        }
        let Some(p) = self.pending.filter(|p| p.op == op) else {
            return self.late_answer(op, &reply);
        };
        self.pending = None;
        self.on_reply(p, reply);
        self.advance(self.now);
        true
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    fn poll_output(&mut self) -> Option<Output<Command>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut at = match self.phase {
            Phase::Idle | Phase::Done => return None,
            Phase::Waiting { retry_at } => retry_at,
            Phase::Held { valid_until } => valid_until.min(if self.pending.is_none() {
                self.next_renew
            } else {
                Instant::MAX
            }),
            Phase::Acquiring | Phase::Releasing | Phase::Failing => Instant::MAX,
        };
        if let Some(p) = self.pending {
            at = at.min(p.deadline);
        }
        let held = matches!(self.phase, Phase::Held { .. });
        (held || at != Instant::MAX).then_some(at)
    }

    fn state(&self) -> State {
        match self.phase {
            Phase::Idle => State::Idle,
            Phase::Acquiring | Phase::Failing => State::Acquiring,
            Phase::Waiting { .. } => State::Waiting,
            Phase::Held { valid_until } => State::Held { valid_until },
            Phase::Releasing => State::Releasing,
            Phase::Done => State::Done,
        }
    }

    fn release_channel(&self) -> Option<Bytes> {
        Some(self.name.clone())
    }

    fn held_key(&self) -> Option<Bytes> {
        matches!(self.phase, Phase::Held { .. }).then(|| self.owner.clone())
    }
}
