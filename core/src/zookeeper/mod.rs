//! The ZooKeeper lock, as a sans-IO machine: the recipe of Apache Curator's
//! `InterProcessMutex`, so Lucky, Curator and kazoo services exclude each other.
//!
//! Layout: the queue of lock `name` is the children of `<root>/<name>` (parents made as
//! container nodes, which the server removes once empty). Each contender creates one
//! ephemeral-sequential node `_c_<id>-lock-<seq>`; the owner is the lowest sequence number.
//! kazoo's default nodes (`<id>__lock__<seq>`) count as contenders too. A waiter watches only
//! its predecessor and lists the queue again whenever the watch answers (no herd). The fence
//! is our node's creation zxid: zxids only grow, so successive owners get rising fences.
//!
//! Safety rules kept here:
//! - validity: the session is the lease. Every reply carries what the driver's
//!   [`SessionProof`] says of the session (see [`proof`] for the argument from ZooKeeper's
//!   source); a lock is held only until that proof's end, re-checked every `touch_every`.
//! - our node, and the session that made it, are checked on every answer: a node gone, owned
//!   by another session, or a reply from another session means the lock is lost.
//! - a create whose answer was lost may still have made our node: before creating again, the
//!   machine lists the queue (after a `sync`) and looks for its own `_c_<id>-` node
//!   (Curator's protected mode); a found node of a session that since ended is deleted.
//! - sequence numbers are signed 32-bit and wrap: the queue is ordered by serial arithmetic,
//!   so a wrap does not reorder it (Curator and kazoo sort the text; they disagree with each
//!   other and with Lucky only across a wrap, after 2^31 nodes under one parent).
//! - release and clean-up retry the delete until it succeeds or the session is gone: a
//!   process that gave up leaves no node behind while its session lives.

/// The ZooKeeper lock's deliberate bugs, for the simulator (feature `bugs`; never in a
/// release build).
#[cfg(feature = "bugs")]
pub mod bugs;
#[cfg(not(feature = "bugs"))]
mod bugs;
mod command;
mod config;
pub mod proof;

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use bytes::{BufMut, Bytes, BytesMut};

pub use command::{Command, Reply, Session};
pub use config::{ZkConfig, ZkConfigBuilder, DEFAULT_ROOT, DEFAULT_SESSION_TIMEOUT, MAX_PATH_LEN};
pub use proof::{Ensemble, SessionProof};

use crate::error::{BackendError, LockError, NodeOutcome, UsageError};
use crate::machine::{Event, LockMachine, LostReason, NodeId, OpId, Output, State, Transmit};
use crate::settings::Attempts;
use crate::time::{Duration, Instant};
use bugs::ZkBug as Bug;

/// The ZooKeeper lock machine for one lock name. It talks to one node: the ensemble, through
/// the driver's session.
#[derive(Debug)]
pub struct ZkLock {
    cfg: ZkConfig,
    /// `<root>/<name>`.
    dir: Bytes,
    token: [u8; 16],
    now: Instant,
    next_op: u64,
    out: VecDeque<Output<Command>>,
    phase: Phase,
    main: Option<Pending>,
    /// The check of a held lock in flight.
    check: Option<Pending>,
    next_check: Instant,
    attempts: Attempts,
    /// Creates made so far (each gets its own id).
    creates: u32,
    /// `_c_<id>-` of the current create.
    id: Bytes,
    /// A create of `id` was sent and its outcome is not known: find the node before
    /// creating another.
    unresolved: bool,
    node: Option<Node>,
    /// The node a find turned up, until its read says whose it is.
    found: Option<Bytes>,
    /// Owner by the queue, the session not proven yet: read our node again at this time.
    confirm_at: Option<Instant>,
    last_error: Option<LockError>,
    failure: Option<LockError>,
}

/// Our node in the queue.
#[derive(Clone, Debug)]
struct Node {
    name: Bytes,
    seq: i32,
    czxid: i64,
    session: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Create,
    /// Listing after a create with unknown outcome: look for our `_c_<id>-` node.
    Find,
    /// Reading the node the listing found.
    FindStat,
    List,
    Watch,
    /// Owner by the queue, waiting for a proof of the session: read our node again.
    Confirm,
    /// Periodic check of a held lock.
    Check,
    /// Deleting a node of ours that must go before the next create (stale, orphan).
    Sweep,
    /// Deleting our node to release (or after a loss, or when giving up).
    Delete,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    op: OpId,
    kind: Kind,
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
    /// Deleting our node after a release or a loss; `Released` follows.
    Releasing,
    /// Deleting our node after the acquisition failed for good; `Failed` follows.
    Failing,
    /// Waiting to retry a delete that failed (connection loss): the node must go.
    DeleteLater {
        at: Instant,
        failing: bool,
    },
    Done,
}

/// The sequence number of a contender's node name, if it is one: a name ending in
/// `lock-<seq>` (Curator, Lucky) or `__lock__<seq>` (kazoo), `<seq>` ZooKeeper's `%010d` of
/// a signed 32-bit counter.
pub fn sequence(name: &[u8]) -> Option<i32> {
    let digits = name.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 10 {
        return None;
    }
    let mut end = name.len() - digits;
    let negative = end > 0
        && name[end - 1] == b'-'
        && (name[..end - 1].ends_with(b"lock-") || name[..end - 1].ends_with(b"__lock__"));
    if negative {
        end -= 1;
    }
    let head = &name[..end];
    if !(head.ends_with(b"lock-") || head.ends_with(b"__lock__")) {
        return None;
    }
    let mut v: i64 = 0;
    for &b in &name[name.len() - digits..] {
        v = v * 10 + i64::from(b - b'0');
    }
    if negative {
        v = -v;
    }
    i32::try_from(v).ok()
}

/// Whether sequence `a` comes before `b`, by serial arithmetic: correct across the 32-bit
/// wrap while fewer than 2^31 nodes lie between them.
pub fn before(a: i32, b: i32) -> bool {
    a.wrapping_sub(b) < 0
}

impl ZkLock {
    /// A machine for the lock `name` (one or more `/`-separated ZooKeeper path segments);
    /// `token` (16-64 random bytes) makes its node ids, `seed` drives the retry jitter.
    pub fn new(cfg: &ZkConfig, name: &[u8], token: &[u8], seed: u64) -> Result<ZkLock, UsageError> {
        crate::settings::check_token(token)?;
        let name = config::check_name(name)?;
        let mut dir = BytesMut::with_capacity(cfg.root.len() + 1 + name.len());
        dir.put_slice(&cfg.root);
        dir.put_u8(b'/');
        dir.put_slice(name.as_bytes());
        if dir.len() > MAX_PATH_LEN {
            return Err(UsageError::KeyTooLong {
                len: dir.len(),
                max: MAX_PATH_LEN,
            });
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&token[..16]);
        for (i, b) in token[16..].iter().enumerate() {
            t[i % 16] ^= b;
        }
        Ok(ZkLock {
            cfg: cfg.clone(),
            dir: dir.freeze(),
            token: t,
            now: Instant::ZERO,
            next_op: crate::rng::op_base(seed, token),
            out: VecDeque::new(),
            phase: Phase::Idle,
            main: None,
            check: None,
            next_check: Instant::MAX,
            attempts: Attempts::new(seed),
            creates: 0,
            id: Bytes::new(),
            unresolved: false,
            node: None,
            found: None,
            confirm_at: None,
            last_error: None,
            failure: None,
        })
    }

    /// `<root>/<name>`: the directory whose children are the queue.
    pub fn dir(&self) -> &[u8] {
        &self.dir
    }

    /// Our node's name in the directory, while we have one.
    pub fn node(&self) -> Option<&[u8]> {
        self.node.as_ref().map(|n| &n.name[..])
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

    fn path(&self, name: &[u8]) -> Bytes {
        let mut p = BytesMut::with_capacity(self.dir.len() + 1 + name.len());
        p.put_slice(&self.dir);
        p.put_u8(b'/');
        p.put_slice(name);
        p.freeze()
    }

    fn send(&mut self, command: Command) -> OpId {
        self.next_op = self.next_op.wrapping_add(1);
        let op = OpId(self.next_op);
        self.out.push_back(Output::Transmit(Transmit {
            node: NodeId(0),
            op,
            command,
        }));
        op
    }

    fn send_main(&mut self, kind: Kind, command: Command) {
        let timeout = if kind == Kind::Watch {
            self.cfg.recheck
        } else {
            self.cfg.op_timeout
        };
        let op = self.send(command);
        self.main = Some(Pending {
            op,
            kind,
            deadline: self.now + timeout,
        });
    }

    fn emit(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }

    /// A fresh `_c_<uuid>-` for the next create: the token with the create count folded in,
    /// printed as a UUID (Curator's protected prefix).
    fn new_id(&mut self) {
        self.creates = self.creates.wrapping_add(1);
        let mut b = self.token;
        for (i, x) in self.creates.to_be_bytes().iter().enumerate() {
            b[12 + i] ^= x;
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = BytesMut::with_capacity(3 + 36 + 1);
        id.put_slice(b"_c_");
        for (i, x) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                id.put_u8(b'-');
            }
            id.put_u8(HEX[usize::from(x >> 4)]);
            id.put_u8(HEX[usize::from(x & 0xf)]);
        }
        id.put_u8(b'-');
        self.id = id.freeze();
    }

    fn send_create(&mut self) {
        if self.unresolved && !self.bug(Bug::NoProtectedFind) {
            self.send_find();
            return;
        }
        if !self.unresolved {
            self.new_id();
        }
        let mut prefix = BytesMut::with_capacity(self.id.len() + 5);
        prefix.put_slice(&self.id);
        prefix.put_slice(b"lock-");
        self.unresolved = true;
        self.send_main(
            Kind::Create,
            Command::Create {
                dir: self.dir.clone(),
                prefix: prefix.freeze(),
            },
        );
    }

    fn send_find(&mut self) {
        self.send_main(
            Kind::Find,
            Command::Children {
                dir: self.dir.clone(),
                sync: true,
            },
        );
    }

    fn send_list(&mut self) {
        self.send_main(
            Kind::List,
            Command::Children {
                dir: self.dir.clone(),
                sync: false,
            },
        );
    }

    fn send_stat(&mut self, kind: Kind) {
        let Some(n) = &self.node else { return };
        let path = self.path(&n.name.clone());
        if kind == Kind::Check {
            let op = self.send(Command::Stat { path });
            self.check = Some(Pending {
                op,
                kind,
                deadline: self.now + self.cfg.op_timeout,
            });
        } else {
            self.send_main(kind, Command::Stat { path });
        }
    }

    fn start_attempt(&mut self) {
        self.attempts.start();
        self.confirm_at = None;
        self.phase = Phase::Acquiring;
        match self.node {
            // A node from an earlier attempt of ours may still stand: list and go on from it.
            Some(_) => self.send_list(),
            None => self.send_create(),
        }
    }

    fn error(&self, outcome: NodeOutcome, taken: bool) -> LockError {
        let nodes = vec![outcome];
        let attempts = self.attempts.count;
        if taken {
            LockError::Taken { attempts, nodes }
        } else {
            LockError::NoQuorum { attempts, nodes }
        }
    }

    /// This attempt failed: retry later (our node, if any, stays in the queue: a retry
    /// lists and goes on from it), or give up.
    fn fail_attempt(&mut self, error: LockError) {
        self.main = None;
        self.last_error = Some(error.clone());
        match self
            .attempts
            .next_retry(self.now, self.cfg.retry, None, None)
        {
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

    /// The acquisition failed for good: delete whatever node it may have made, then report.
    fn give_up(&mut self, error: LockError) {
        self.failure = Some(error);
        self.cleanup(true);
    }

    /// Deletes our node (finding it first if a create's outcome is unknown); `Failed` (when
    /// `failing`) or `Released` follows once it is gone or the session is.
    fn cleanup(&mut self, failing: bool) {
        self.main = None;
        self.confirm_at = None;
        self.check = None;
        self.phase = if failing {
            Phase::Failing
        } else {
            Phase::Releasing
        };
        if let Some(n) = self.node.clone() {
            let path = self.path(&n.name);
            self.send_main(Kind::Delete, Command::Delete { path });
        } else if self.unresolved {
            self.send_find();
        } else {
            self.finish(NodeOutcome::NotSent);
        }
    }

    fn finish(&mut self, outcome: NodeOutcome) {
        self.main = None;
        self.check = None;
        self.node = None;
        self.unresolved = false;
        let failing = matches!(
            self.phase,
            Phase::Failing | Phase::DeleteLater { failing: true, .. }
        );
        self.phase = Phase::Done;
        match self.failure.take() {
            Some(e) if failing => self.emit(Event::Failed(e)),
            _ => self.emit(Event::Released {
                nodes: vec![outcome],
            }),
        }
    }

    /// The session of our node is gone (expired, or replaced): so is the node.
    fn session_gone(&mut self) {
        self.node = None;
        self.unresolved = false;
        match self.phase {
            Phase::Held { .. } => self.lose(Some(self.error(NodeOutcome::Refused, false))),
            Phase::Acquiring => {
                let e = self.error(
                    NodeOutcome::Failed(BackendError::Unavailable("session expired".into())),
                    false,
                );
                self.fail_attempt(e);
            }
            Phase::Releasing | Phase::Failing | Phase::DeleteLater { .. } => {
                self.finish(NodeOutcome::Refused)
            }
            _ => {}
        }
    }

    fn lose(&mut self, error: Option<LockError>) {
        let reason = match error.or_else(|| self.last_error.take()) {
            Some(e) => LostReason::ExtendFailed(e),
            None => LostReason::Expired,
        };
        self.emit(Event::Lost { reason });
        self.failure = None;
        self.cleanup(false);
    }

    /// The session as the reply reports it: `false` when it is not the session of our node.
    fn same_session(&self, s: &Session) -> bool {
        self.node.as_ref().is_none_or(|n| n.session == s.id)
    }

    fn owned(&mut self, proof: Option<Instant>) {
        let until = proof.unwrap_or(Instant::ZERO);
        if until <= self.now {
            // Owner by the queue, but the session is not proven alive yet: read our node
            // again (each answer feeds the driver's proof) until it is, or the wait ends.
            if self.now >= self.attempts.wait_until {
                let e = self.error(
                    NodeOutcome::Failed(BackendError::Unavailable(
                        "the session could not be proven alive on the leader in time".into(),
                    )),
                    false,
                );
                self.give_up(e);
            } else {
                // Each answer feeds the proof; pace the reads over the ensemble's lag.
                let pace = (self.cfg.ensemble.lag / 8).max(Duration::from_millis(1));
                self.confirm_at = Some(self.now + pace);
            }
            return;
        }
        let Some(n) = &self.node else { return };
        let fence = u64::try_from(n.czxid).ok().map(crate::fence::Fence);
        self.phase = Phase::Held { valid_until: until };
        self.last_error = None;
        self.next_check = self.now + self.cfg.touch_every;
        self.emit(Event::Acquired {
            fence,
            valid_until: until,
        });
    }

    fn on_list(&mut self, names: &[Bytes], session: &Session) {
        let Some(me) = self.node.clone() else { return };
        if me.session != session.id || !names.contains(&me.name) {
            // Our node is gone (its session ended, or someone deleted it).
            self.node = None;
            self.unresolved = false;
            if self.now >= self.attempts.wait_until {
                let e = self.error(NodeOutcome::Refused, false);
                self.give_up(e);
            } else {
                self.send_create();
            }
            return;
        }
        let text = self.bug(Bug::TextOrder);
        let mut pred: Option<(&Bytes, i32)> = None;
        for name in names {
            if *name == me.name {
                continue;
            }
            let Some(seq) = sequence(name) else { continue };
            let earlier = if text {
                (seq_text(name).as_slice(), &name[..])
                    < (seq_text(&me.name).as_slice(), &me.name[..])
            } else {
                before(seq, me.seq) || (seq == me.seq && name[..] < me.name[..])
            };
            if !earlier {
                continue;
            }
            let later_than_pred = match pred {
                None => true,
                Some((_, p)) if text => seq_text(name) > seq_text_i32(p),
                Some((_, p)) => before(p, seq),
            };
            if later_than_pred {
                pred = Some((name, seq));
            }
        }
        match pred {
            None => self.owned(session.until),
            Some(_) if self.now >= self.attempts.wait_until => {
                let e = self.error(NodeOutcome::Refused, true);
                self.give_up(e);
            }
            Some((name, _)) => {
                let path = if self.bug(Bug::WatchAll) {
                    self.dir.clone()
                } else {
                    self.path(name)
                };
                self.send_main(Kind::Watch, Command::WaitDelete { path });
            }
        }
    }

    fn on_find(&mut self, names: &[Bytes]) {
        match names.iter().find(|n| n.starts_with(&self.id)) {
            Some(name) => {
                // Our create did make a node: read who owns it before going on from it (until
                // that answer comes, the create stays unresolved).
                let path = self.path(name);
                self.found = Some(name.clone());
                self.send_main(Kind::FindStat, Command::Stat { path });
            }
            None => {
                self.unresolved = false;
                match self.phase {
                    Phase::Acquiring => self.send_create(),
                    _ => self.finish(NodeOutcome::Granted),
                }
            }
        }
    }

    fn advance(&mut self, now: Instant) {
        if now < self.now {
            self.rebase_back(self.now - now);
        }
        self.now = now;
        if let Phase::Held { valid_until } = self.phase {
            if now >= valid_until {
                self.lose(None);
                return;
            }
        }
        if let Some(c) = self.check {
            if now >= c.deadline {
                self.check = None;
                self.check_failed(NodeOutcome::TimedOut);
            }
        }
        if let Some(p) = self.main {
            if now >= p.deadline {
                self.main = None;
                self.main_timed_out(p);
            }
        }
        match self.phase {
            Phase::Waiting { retry_at } if now >= retry_at => self.start_attempt(),
            Phase::DeleteLater { at, failing } if now >= at => self.cleanup(failing),
            Phase::Acquiring if self.confirm_at.is_some_and(|t| now >= t) => {
                self.confirm_at = None;
                self.send_stat(Kind::Confirm);
            }
            Phase::Acquiring
                if now >= self.attempts.wait_until
                    && self.main.is_some_and(|p| p.kind == Kind::Watch) =>
            {
                let e = self.error(NodeOutcome::Refused, true);
                self.give_up(e);
            }
            Phase::Held { .. } if self.check.is_none() && now >= self.next_check => {
                self.send_stat(Kind::Check)
            }
            _ => {}
        }
    }

    fn rebase_back(&mut self, by: Duration) {
        for p in [&mut self.main, &mut self.check].into_iter().flatten() {
            p.deadline = p.deadline.rebase_back(by);
        }
        self.next_check = self.next_check.rebase_back(by);
        self.confirm_at = self.confirm_at.map(|t| t.rebase_back(by));
        self.attempts.rebase_back(by);
        let mut held = None;
        match &mut self.phase {
            Phase::Held { valid_until } => {
                *valid_until = valid_until.rebase_back(by);
                held = Some(*valid_until);
            }
            Phase::Waiting { retry_at } => *retry_at = retry_at.rebase_back(by),
            Phase::DeleteLater { at, .. } => *at = at.rebase_back(by),
            _ => {}
        }
        self.emit(Event::TimeWentBack {
            by,
            valid_until: held,
        });
    }

    fn main_timed_out(&mut self, p: Pending) {
        match (p.kind, self.phase) {
            (Kind::Watch, Phase::Acquiring) => self.send_list(),
            (Kind::Create, Phase::Acquiring) => self.send_find(),
            (_, Phase::Acquiring) => {
                let e = self.error(NodeOutcome::TimedOut, false);
                self.fail_attempt(e);
            }
            (_, Phase::Releasing | Phase::Failing) => self.delete_later(),
            _ => {}
        }
    }

    /// A delete (or the find before it) failed without an answer: try again after the retry
    /// delay, until it succeeds or the session is gone.
    fn delete_later(&mut self) {
        let failing = self.phase == Phase::Failing;
        let at = self.now + self.cfg.retry.delay.max(Duration::from_millis(1));
        self.main = None;
        self.phase = Phase::DeleteLater { at, failing };
    }

    fn check_failed(&mut self, outcome: NodeOutcome) {
        let error = self.error(outcome, false);
        self.last_error = Some(error.clone());
        self.next_check = self.now + self.cfg.touch_every / 4;
        if let Phase::Held { valid_until } = self.phase {
            self.emit(Event::ExtendFailed { valid_until, error });
        }
    }

    fn on_check(&mut self, reply: Reply) {
        let Phase::Held { valid_until } = self.phase else {
            return;
        };
        match reply {
            Reply::Stat {
                czxid,
                ephemeral_owner,
                session,
            } => {
                let mine = self
                    .node
                    .as_ref()
                    .is_some_and(|n| n.czxid == czxid && n.session == ephemeral_owner);
                if !mine || !self.same_session(&session) {
                    self.node = None;
                    let e = self.error(NodeOutcome::Refused, true);
                    self.lose(Some(e));
                    return;
                }
                self.next_check = self.now + self.cfg.touch_every;
                if let Some(until) = session.until.filter(|u| *u > valid_until) {
                    self.phase = Phase::Held { valid_until: until };
                    self.last_error = None;
                    self.emit(Event::Extended { valid_until: until });
                }
            }
            Reply::NoNode => {
                self.node = None;
                let e = self.error(NodeOutcome::Refused, true);
                self.lose(Some(e));
            }
            Reply::SessionExpired => self.session_gone(),
            other => self.check_failed(failure(other, "exists")),
        }
    }

    fn on_main(&mut self, p: Pending, reply: Reply) {
        if let Reply::SessionExpired = reply {
            self.session_gone();
            return;
        }
        match (p.kind, reply) {
            (
                Kind::Create,
                Reply::Created {
                    path,
                    czxid,
                    session,
                },
            ) => {
                let name = path
                    .rsplit(|b| *b == b'/')
                    .next()
                    .map_or(path.clone(), |n| path.slice_ref(n));
                if czxid <= 0 || !name.starts_with(&self.id) || sequence(&name).is_none() {
                    // Not the answer to this create (zxids are positive, the name is ours):
                    // the create's outcome is unknown, so look for our node.
                    self.send_find();
                    return;
                }
                self.unresolved = false;
                self.node = Some(Node {
                    seq: sequence(&name).unwrap_or(0),
                    name,
                    czxid,
                    session: session.id,
                });
                self.send_list();
            }
            // The create's outcome is unknown: it may have made our node. Look for it.
            (Kind::Create, Reply::Unavailable(_)) => self.send_find(),
            (Kind::Find, Reply::Children { names, .. }) => self.on_find(&names),
            (Kind::Find, Reply::NoNode) => self.on_find(&[]),
            // A zxid is positive: a read answering otherwise is garbage, failing the attempt.
            (
                Kind::FindStat,
                Reply::Stat {
                    czxid,
                    ephemeral_owner,
                    session,
                },
            ) if czxid > 0 => {
                let Some(name) = self.found.take() else {
                    return;
                };
                self.unresolved = false;
                let live = ephemeral_owner == session.id;
                self.node = Some(Node {
                    seq: sequence(&name).unwrap_or(0),
                    name,
                    czxid,
                    session: ephemeral_owner,
                });
                match self.phase {
                    Phase::Acquiring if live => self.send_list(),
                    // A node of a session that ended (or a cleanup): delete it.
                    Phase::Acquiring => {
                        let path = self.node.take().map(|n| self.path(&n.name));
                        if let Some(path) = path {
                            self.send_main(Kind::Sweep, Command::Delete { path });
                        }
                    }
                    _ => self.cleanup(self.phase == Phase::Failing),
                }
            }
            (Kind::FindStat, Reply::NoNode) => {
                self.found = None;
                self.node = None;
                self.unresolved = false;
                match self.phase {
                    Phase::Acquiring => self.send_create(),
                    _ => self.finish(NodeOutcome::Granted),
                }
            }
            (Kind::Sweep, Reply::Done | Reply::NoNode) => self.send_create(),
            (Kind::List, Reply::Children { names, session }) => self.on_list(&names, &session),
            (Kind::List, Reply::NoNode) => self.on_list(&[], &Session::UNKNOWN),
            (Kind::Watch, Reply::Deleted) if self.bug(Bug::SkipRelist) => {
                self.owned(Some(self.now + self.cfg.touch_every))
            }
            (Kind::Watch, _) => self.send_list(),
            (
                Kind::Confirm,
                Reply::Stat {
                    czxid,
                    ephemeral_owner,
                    session,
                },
            ) if czxid > 0 => {
                let mine = self
                    .node
                    .as_ref()
                    .is_some_and(|n| n.czxid == czxid && n.session == ephemeral_owner);
                if mine && self.same_session(&session) {
                    self.owned(session.until);
                } else {
                    self.node = None;
                    self.send_create();
                }
            }
            (Kind::Confirm, Reply::NoNode) => {
                self.node = None;
                self.send_create();
            }
            (Kind::Delete, Reply::Done | Reply::NoNode) => self.finish(NodeOutcome::Granted),
            (Kind::Delete, Reply::Unavailable(_) | Reply::Error(_)) => self.delete_later(),
            (Kind::Find | Kind::FindStat, _) if self.phase != Phase::Acquiring => {
                self.delete_later()
            }
            (Kind::Delete | Kind::Sweep | Kind::Check, _) => {
                if self.phase == Phase::Acquiring {
                    let e = self.error(NodeOutcome::TimedOut, false);
                    self.fail_attempt(e);
                }
            }
            (kind, reply) => {
                let command = match kind {
                    Kind::Create => "create",
                    Kind::Find | Kind::List => "getChildren",
                    _ => "exists",
                };
                let e = self.error(failure(reply, command), false);
                self.fail_attempt(e);
            }
        }
    }
}

impl Session {
    /// A session nothing is known of (a reply that carries none).
    pub const UNKNOWN: Session = Session {
        id: 0,
        timeout: Duration::ZERO,
        until: None,
    };
}

/// The sequence text as compared by text (only for the `zk-text-order` bug).
fn seq_text(name: &[u8]) -> Vec<u8> {
    let digits = name
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit() || **b == b'-')
        .count();
    name[name.len() - digits..].to_vec()
}

fn seq_text_i32(seq: i32) -> Vec<u8> {
    let mut v = Vec::new();
    let s = alloc::format!("{seq:010}");
    v.extend_from_slice(s.as_bytes());
    v
}

fn failure(reply: Reply, command: &'static str) -> NodeOutcome {
    NodeOutcome::Failed(match reply {
        Reply::Error(e) => BackendError::ErrorReply(e),
        Reply::Unavailable(e) => BackendError::Unavailable(e),
        other => BackendError::UnexpectedReply {
            command,
            got: alloc::format!("{other:?}"),
        },
    })
}

impl LockMachine for ZkLock {
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
        self.attempts.begin(self.now, self.cfg.wait);
        self.last_error = None;
        self.failure = None;
        self.start_attempt();
        Ok(())
    }

    fn extend(&mut self, now: Instant) -> Result<(), UsageError> {
        self.advance(now);
        match self.phase {
            Phase::Held { .. } => {
                if self.check.is_none() {
                    self.send_stat(Kind::Check);
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
                self.failure = None;
                self.cleanup(false);
                Ok(())
            }
            Phase::Failing => {
                // Cancelled while the failed attempt cleans up: reported as `Released`.
                self.failure = None;
                self.phase = Phase::Releasing;
                Ok(())
            }
            Phase::DeleteLater { at, .. } => {
                self.failure = None;
                self.phase = Phase::DeleteLater { at, failing: false };
                Ok(())
            }
            Phase::Releasing => Ok(()),
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
        let used = if let Some(_c) = self.check.filter(|c| c.op == op) {
            self.check = None;
            self.on_check(reply);
            true
        } else if let Some(p) = self.main.filter(|p| p.op == op) {
            self.main = None;
            self.on_main(p, reply);
            true
        } else {
            false
        };
        self.advance(self.now);
        used
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
            Phase::DeleteLater { at, .. } => at,
            Phase::Held { valid_until } => valid_until,
            Phase::Acquiring | Phase::Releasing | Phase::Failing => Instant::MAX,
        };
        let held = matches!(self.phase, Phase::Held { .. });
        if let (Phase::Acquiring, Some(t)) = (self.phase, self.confirm_at) {
            at = at.min(t);
        }
        if let Some(p) = self.main {
            at = at.min(p.deadline);
            if p.kind == Kind::Watch {
                at = at.min(self.attempts.wait_until);
            }
        }
        match self.check {
            Some(c) => at = at.min(c.deadline),
            None if held => at = at.min(self.next_check),
            None => {}
        }
        (held || at != Instant::MAX).then_some(at)
    }

    fn renews_while_held(&self) -> bool {
        // The session needs proving whenever a lock is held.
        true
    }

    fn held_key(&self) -> Option<Bytes> {
        match (self.phase, &self.node) {
            (Phase::Held { .. }, Some(n)) => Some(self.path(&n.name)),
            _ => None,
        }
    }

    fn state(&self) -> State {
        match self.phase {
            Phase::Idle => State::Idle,
            Phase::Acquiring | Phase::Failing => State::Acquiring,
            Phase::Waiting { .. } => State::Waiting,
            Phase::Held { valid_until } => State::Held { valid_until },
            Phase::Releasing | Phase::DeleteLater { .. } => State::Releasing,
            Phase::Done => State::Done,
        }
    }
}

#[cfg(test)]
mod tests;
