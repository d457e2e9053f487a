//! The session lock: a named lock the server holds for one of our sessions for as long as
//! that session lives. PostgreSQL advisory locks and MySQL `GET_LOCK` on a dedicated
//! connection hold a lock this way (and `flock` on an open file); each backend only encodes
//! the five [`Command`]s.
//!
//! - **Session**: one per lock, opened for it ([`Command::Open`]) and ended with it. The
//!   server frees the lock when the session ends, so every doubtful outcome (no answer, a
//!   broken connection) is resolved by ending the session ([`Command::Close`] with
//!   `clean: false`), never by guessing. A session that holds nothing may be reused.
//! - **Same session**: every answer names the server session that ran it (backend pid,
//!   connection id); a lock is trusted only while that is the session opened for it, so a
//!   driver or pooler that silently swapped the session (the server ended the first) loses
//!   the lock at the next answer instead of believing it.
//! - **Fence**: a counter the session raises together with taking the lock (one statement
//!   where the server allows): strictly increasing across holders as long as the lock
//!   excludes and the counter's data is kept.
//! - **Validity**: the server keeps the lock until the session ends, with no lease of its
//!   own. The machine trusts it until the send time of its last confirmation (the lock, then
//!   each probe) + ttl - drift allowance, and probes every ttl/3 under auto-extension. The
//!   server may end the session sooner (a killed connection, a restart): that loss is seen at
//!   the next probe, so loss detection is bounded by the probe interval, not by a lease, and
//!   only fences protect a resource in between.
//! - **Waiting**: on the server where it can ([`Command::Lock`]'s `wait`, at most
//!   [`MAX_SERVER_WAIT`] per request, so a cancel is answered within that); a `Busy` that comes
//!   back before its wait ran out means the server did not wait, and the next try follows the
//!   retry delay.

/// The session-lock protocol's deliberate bugs, for the simulator (feature `bugs`; never in a
/// release build).
#[cfg(feature = "bugs")]
pub mod bugs;
#[cfg(not(feature = "bugs"))]
mod bugs;
mod command;
mod config;

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use bytes::Bytes;

pub use command::{Command, Reply, SessionId};
pub use config::{SessionConfig, SessionConfigBuilder};

use crate::error::{BackendError, LockError, NodeOutcome, UsageError};
use crate::fence::Fence;
use crate::machine::{Event, LockMachine, LostReason, NodeId, OpId, Output, State, Transmit};
use crate::settings::{Attempts, MAX_KEY_LEN};
use crate::time::{Duration, Instant};
use bugs::SessionBug as Bug;

/// The longest a single [`Command::Lock`] waits on the server.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(1);

/// Session closes the machine does not wait for, remembered to recognise their answers.
const DETACHED: usize = 4;

/// The session-lock machine for one lock name. It talks to one node: the server.
#[derive(Debug)]
pub struct SessionLock {
    cfg: SessionConfig,
    name: Bytes,
    now: Instant,
    next_op: u64,
    out: VecDeque<Output<Command>>,
    phase: Phase,
    pending: Option<Pending>,
    attempts: Attempts,
    /// The open session and the server's name for it.
    session: Option<(SessionId, u64)>,
    /// The session holds nothing (it may be reused).
    clean: bool,
    /// Send time of the lock request that took the lock.
    locked_at: Instant,
    fence: Option<Fence>,
    next_probe: Instant,
    extensions: u32,
    probe_error: Option<LockError>,
    /// What the end reports once the session is closed: `Failed(error)` or `Released`.
    failure: Option<LockError>,
    released: NodeOutcome,
    /// A release asked for while a request of the acquisition was in flight.
    release_after: bool,
    /// Closes sent without waiting for them.
    detached: VecDeque<OpId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Open,
    Lock { wait: Duration },
    Probe,
    Unlock,
    Close,
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
    /// Unlock or close in flight; `Released` follows.
    Releasing,
    /// The acquisition failed for good; its session's close is in flight, `Failed` follows.
    Failing,
    Done,
}

impl SessionLock {
    /// A machine for the lock `name`; `seed` drives the retry jitter (and the range its op
    /// ids are drawn from), and should differ between machines.
    pub fn new(cfg: &SessionConfig, name: &[u8], seed: u64) -> Result<SessionLock, UsageError> {
        crate::settings::check_key(name.len(), MAX_KEY_LEN)?;
        Ok(SessionLock {
            cfg: cfg.clone(),
            name: Bytes::copy_from_slice(name),
            now: Instant::ZERO,
            next_op: crate::rng::op_base(seed, name),
            out: VecDeque::new(),
            phase: Phase::Idle,
            pending: None,
            attempts: Attempts::new(seed),
            session: None,
            clean: true,
            locked_at: Instant::ZERO,
            fence: None,
            next_probe: Instant::MAX,
            extensions: 0,
            probe_error: None,
            failure: None,
            released: NodeOutcome::NotSent,
            release_after: false,
            detached: VecDeque::new(),
        })
    }

    /// The lock name.
    pub fn name(&self) -> &[u8] {
        &self.name
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

    fn op(&mut self) -> OpId {
        self.next_op = self.next_op.wrapping_add(1);
        OpId(self.next_op)
    }

    fn send(&mut self, kind: Kind, command: Command) {
        let op = self.op();
        let extra = match kind {
            Kind::Lock { wait } => wait,
            _ => Duration::ZERO,
        };
        self.pending = Some(Pending {
            op,
            kind,
            sent: self.now,
            deadline: self.now + extra + self.cfg.lease.op_timeout,
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

    fn trusted_from(&self, sent: Instant) -> Instant {
        let ttl = self.cfg.lease.ttl;
        sent.saturating_add(ttl.saturating_sub(self.cfg.lease.drift_for(ttl)))
    }

    /// Whether `server` is the session the lock was opened in (or the check is skipped).
    fn same_session(&self, server: u64) -> bool {
        self.bug(Bug::NoSessionCheck) || self.session.is_some_and(|(_, s)| s == server)
    }

    fn start_attempt(&mut self) {
        self.attempts.start();
        self.phase = Phase::Acquiring;
        match self.session {
            Some(_) => self.send_lock(),
            None => {
                let command = Command::Open {
                    name: self.name.clone(),
                    idle: self.cfg.lease.ttl,
                };
                self.send(Kind::Open, command);
            }
        }
    }

    fn send_lock(&mut self) {
        let Some((session, _)) = self.session else {
            return;
        };
        let left = self.attempts.wait_until.saturating_duration_since(self.now);
        let wait = left.min(MAX_SERVER_WAIT);
        self.clean = false;
        let command = Command::Lock {
            session,
            name: self.name.clone(),
            wait,
        };
        self.send(Kind::Lock { wait }, command);
    }

    fn send_on_session(&mut self, kind: Kind) {
        let Some((session, _)) = self.session else {
            return;
        };
        let name = self.name.clone();
        let command = match kind {
            Kind::Probe => Command::Probe { session, name },
            _ => Command::Unlock { session, name },
        };
        self.send(kind, command);
    }

    /// Ends the session: waited for when `wait` (the end of a release or a give-up), sent
    /// on its own otherwise (between attempts).
    fn close(&mut self, wait: bool) -> bool {
        let Some((session, _)) = self.session.take() else {
            return false;
        };
        let command = Command::Close {
            session,
            clean: self.clean,
        };
        self.clean = true;
        if wait {
            self.send(Kind::Close, command);
        } else {
            let op = self.op();
            if self.detached.len() == DETACHED {
                self.detached.pop_front();
            }
            self.detached.push_back(op);
            self.out.push_back(Output::Transmit(Transmit {
                node: NodeId(0),
                op,
                command,
            }));
        }
        true
    }

    /// The session can no longer be trusted: end it (the server frees what it held).
    fn drop_session(&mut self) {
        self.clean = false;
        self.close(false);
    }

    /// An attempt failed: try again after the retry delay (at once when `now`), or give up.
    fn fail_attempt(&mut self, error: LockError, now: bool) {
        let next = if now && self.now < self.attempts.wait_until {
            Some(self.now)
        } else {
            self.attempts
                .next_retry(self.now, self.cfg.lease.retry, None, None)
        };
        match next {
            Some(retry_at) if retry_at <= self.now => self.start_attempt(),
            Some(retry_at) => {
                self.phase = Phase::Waiting { retry_at };
                self.emit(Event::Retrying {
                    attempt: self.attempts.count,
                    retry_at,
                });
            }
            None => self.give_up(error),
        }
    }

    /// The acquisition is over: end its session, then report `error`.
    fn give_up(&mut self, error: LockError) {
        if self.close(true) {
            self.failure = Some(error);
            self.phase = Phase::Failing;
        } else {
            self.phase = Phase::Done;
            self.emit(Event::Failed(error));
        }
    }

    /// The held lock is gone (or no longer to be trusted): report it, then end the session.
    fn lose(&mut self, error: Option<LockError>) {
        self.emit(Event::Lost {
            reason: match error {
                Some(e) => LostReason::ExtendFailed(e),
                None => LostReason::Expired,
            },
        });
        self.fence = None;
        self.clean = false;
        self.end_release(NodeOutcome::NotSent);
    }

    /// Closes the session and reports `Released` with `outcome` once it is closed.
    fn end_release(&mut self, outcome: NodeOutcome) {
        self.phase = Phase::Releasing;
        self.released = outcome;
        if !self.close(true) {
            self.finish();
        }
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        match self.failure.take() {
            Some(error) => self.emit(Event::Failed(error)),
            None => {
                let outcome = core::mem::replace(&mut self.released, NodeOutcome::NotSent);
                self.emit(Event::Released {
                    nodes: vec![outcome],
                });
            }
        }
    }

    fn held(&mut self, fence: u64) {
        let valid_until = self.trusted_from(self.locked_at);
        if self.now >= valid_until {
            let e = LockError::TooSlow {
                attempts: self.attempts.count,
                nodes: vec![NodeOutcome::Granted],
            };
            self.drop_session();
            self.fail_attempt(e, false);
            return;
        }
        self.fence = Some(Fence(fence));
        self.phase = Phase::Held { valid_until };
        self.extensions = 0;
        self.probe_error = None;
        self.next_probe = match self.cfg.lease.renew_every {
            Some(every) => self.locked_at.saturating_add(every),
            None => Instant::MAX,
        };
        self.emit(Event::Acquired {
            fence: self.fence,
            valid_until,
        });
    }

    fn probed(&mut self, sent: Instant) {
        let Phase::Held { valid_until } = self.phase else {
            return;
        };
        let valid_until = valid_until.max(self.trusted_from(sent));
        self.phase = Phase::Held { valid_until };
        self.extensions = self.extensions.saturating_add(1);
        self.probe_error = None;
        let lease = &self.cfg.lease;
        self.next_probe = match (lease.renew_every, lease.max_extensions) {
            (Some(_), Some(max)) if self.extensions >= max => Instant::MAX,
            (Some(every), _) => sent.saturating_add(every),
            (None, _) => Instant::MAX,
        };
        self.emit(Event::Extended { valid_until });
    }

    fn rebase_back(&mut self, by: Duration) {
        if let Some(p) = &mut self.pending {
            p.sent = p.sent.rebase_back(by);
            p.deadline = p.deadline.rebase_back(by);
        }
        self.locked_at = self.locked_at.rebase_back(by);
        self.next_probe = self.next_probe.rebase_back(by);
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

    fn advance(&mut self, now: Instant) {
        if now < self.now {
            self.rebase_back(self.now - now);
        }
        self.now = now;
        if let Phase::Held { valid_until } = self.phase {
            if now >= valid_until {
                self.pending = None;
                let error = self.probe_error.take();
                self.lose(error);
                return;
            }
        }
        if let Some(p) = self.pending {
            if now >= p.deadline {
                self.pending = None;
                let reply = Reply::Unknown(String::from("no answer within the request timeout"));
                self.on_reply(p, reply);
            }
        }
        match self.phase {
            Phase::Waiting { retry_at } if now >= retry_at => self.start_attempt(),
            Phase::Held { .. } if self.pending.is_none() && now >= self.next_probe => {
                self.send_on_session(Kind::Probe);
            }
            _ => {}
        }
    }

    fn on_reply(&mut self, p: Pending, reply: Reply) {
        if self.release_after && matches!(p.kind, Kind::Open | Kind::Lock { .. }) {
            self.release_after = false;
            return self.cancelled(p.kind, reply);
        }
        match p.kind {
            Kind::Open => self.on_open(reply),
            Kind::Lock { wait } => self.on_lock(p, wait, reply),
            Kind::Probe => self.on_probe(p, reply),
            Kind::Unlock => self.on_unlock(reply),
            Kind::Close => self.finish(),
        }
    }

    /// The answer to a request of an acquisition that was released meanwhile.
    fn cancelled(&mut self, kind: Kind, reply: Reply) {
        match (kind, reply) {
            (Kind::Open, Reply::Opened { session, server }) => {
                self.session = Some((session, server));
                self.clean = true;
            }
            (Kind::Lock { .. }, Reply::Busy) => self.clean = true,
            (Kind::Lock { .. }, Reply::Locked { .. }) => {
                // Ours: unlock it, so the session can be reused.
                self.phase = Phase::Releasing;
                self.send_on_session(Kind::Unlock);
                return;
            }
            _ => self.clean = false,
        }
        self.end_release(NodeOutcome::NotSent);
    }

    fn on_open(&mut self, reply: Reply) {
        if self.phase != Phase::Acquiring {
            return;
        }
        match reply {
            Reply::Opened { session, server } => {
                self.session = Some((session, server));
                self.clean = true;
                self.send_lock();
            }
            other => {
                let e = self.error(failure(other, "open"));
                self.fail_attempt(e, false);
            }
        }
    }

    fn on_lock(&mut self, p: Pending, wait: Duration, reply: Reply) {
        if self.phase != Phase::Acquiring {
            return;
        }
        match reply {
            Reply::Locked { server, fence } if self.same_session(server) => {
                self.locked_at = p.sent;
                self.held(fence);
            }
            Reply::Locked { .. } => {
                let e = self.error(NodeOutcome::Failed(BackendError::Unavailable(
                    "the lock was taken by another server session than the one opened for it"
                        .into(),
                )));
                self.drop_session();
                self.fail_attempt(e, false);
            }
            Reply::Busy => {
                self.clean = true;
                // The server waited as asked: try again at once while the wait lasts.
                let waited = !wait.is_zero() && self.now >= p.sent + wait;
                let e = self.error(NodeOutcome::Refused);
                self.fail_attempt(e, waited);
            }
            Reply::Unknown(_) | Reply::Unavailable(_) if self.bug(Bug::ClaimUnconfirmed) => {
                self.locked_at = p.sent;
                let fence = self.fence.map_or(1, |f| f.get().saturating_add(1));
                self.held(fence);
            }
            Reply::Error(e) => {
                // Refused by the server: nothing was taken, the session is intact.
                self.clean = true;
                let e = self.error(NodeOutcome::Failed(BackendError::ErrorReply(e)));
                self.fail_attempt(e, false);
            }
            other => {
                let e = self.error(failure(other, "lock"));
                self.drop_session();
                self.fail_attempt(e, false);
            }
        }
    }

    fn on_probe(&mut self, p: Pending, reply: Reply) {
        if !matches!(self.phase, Phase::Held { .. }) {
            return;
        }
        match reply {
            Reply::Probed { held, server } if held && self.same_session(server) => {
                self.probed(p.sent);
            }
            Reply::Probed { .. } if self.bug(Bug::NoSessionCheck) => self.probed(p.sent),
            Reply::Probed { .. } => {
                let e = self.error(NodeOutcome::Refused);
                self.lose(Some(e));
            }
            Reply::Error(e) => {
                // The session answered with an error: it still holds the lock as far as we
                // know; probe again after the retry delay, lost at the deadline at the latest.
                let e = self.error(NodeOutcome::Failed(BackendError::ErrorReply(e)));
                if let Phase::Held { valid_until } = self.phase {
                    self.probe_error = Some(e.clone());
                    let delay = self.cfg.lease.retry.delay.max(Duration::from_millis(1));
                    self.next_probe = self.now.saturating_add(delay);
                    self.emit(Event::ExtendFailed {
                        valid_until,
                        error: e,
                    });
                }
            }
            other => {
                // The session broke: the server frees the lock with it.
                let e = self.error(failure(other, "probe"));
                self.lose(Some(e));
            }
        }
    }

    fn on_unlock(&mut self, reply: Reply) {
        let outcome = match reply {
            Reply::Unlocked { held: true } => {
                self.clean = true;
                NodeOutcome::Granted
            }
            Reply::Unlocked { held: false } => {
                self.clean = false;
                NodeOutcome::Refused
            }
            other => {
                self.clean = false;
                failure(other, "unlock")
            }
        };
        self.end_release(outcome);
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

impl LockMachine for SessionLock {
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
        self.attempts.begin(self.now, self.cfg.lease.wait);
        self.fence = None;
        self.failure = None;
        self.release_after = false;
        self.start_attempt();
        Ok(())
    }

    /// Probes the held lock now; an answered probe extends the trust by the ttl.
    fn extend(&mut self, now: Instant) -> Result<(), UsageError> {
        self.advance(now);
        match self.phase {
            Phase::Held { .. } => {
                if self.pending.is_none() {
                    self.send_on_session(Kind::Probe);
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
            Phase::Acquiring => {
                self.fence = None;
                self.phase = Phase::Releasing;
                if self.pending.is_some() {
                    self.release_after = true;
                } else {
                    self.end_release(NodeOutcome::NotSent);
                }
                Ok(())
            }
            Phase::Waiting { .. } => {
                self.end_release(NodeOutcome::NotSent);
                Ok(())
            }
            Phase::Held { .. } => {
                // A probe in flight is dropped: the unlock answers for the session.
                self.pending = None;
                self.fence = None;
                self.phase = Phase::Releasing;
                self.send_on_session(Kind::Unlock);
                Ok(())
            }
            Phase::Releasing => Ok(()),
            Phase::Failing => {
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

    /// No release hints: the server's own wait wakes a waiter.
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
            let detached = self.detached.iter().position(|o| *o == op);
            return detached.and_then(|i| self.detached.remove(i)).is_some();
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
                self.next_probe
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
}
