//! The etcd lease lock, as a sans-IO machine: the queue of etcd's own `concurrency.Mutex`,
//! without the server-side `v3lock` RPC (etcd 3.4 can report it acquired after the lease
//! expired, etcd-io/etcd#11456).
//!
//! Keys are `<name>/<lease id in hex>`, one per lease; the owner is the key with the lowest
//! create_revision under `<name>/`, so Lucky, `etcdctl lock <name>` and Go services using
//! `concurrency.Mutex` exclude each other. The fence is our key's create_revision: etcd
//! revisions only grow, so successive owners get strictly increasing fences.
//!
//! One machine keeps one lease across its acquisitions (a session): the first acquisition
//! grants it; later ones renew it in parallel with the taking transaction, so an uncontended
//! cycle writes twice (take, delete). A machine that lost its lease grants a new one.
//!
//! Safety rules kept here:
//! - validity: the lease is known to live until `send time of the last acknowledged grant or
//!   keepalive + granted ttl - drift`; the lock is never reported held at or after that.
//! - a waiter watches only its predecessor (the last key created before its own), and after
//!   every watch answer (deleted, compacted, failed, or silent for `recheck`) reads the queue
//!   again; it owns the lock only when that read shows no predecessor and its own key.
//! - after a keepalive failed, a later success extends the lock only once a read shows we
//!   still own it.
//! - a lost lock revokes its lease, which deletes its key on the server.
//! - a failed acquisition reports `Failed` only once its lease revoke was answered (or timed
//!   out), so a caller that exits right after leaves no key in the queue.
//! - validity and keepalive cadence follow the ttl the server granted, never more than the
//!   ttl asked for: a longer grant is used as the asked ttl, a shorter one is renewed at a
//!   third of itself.
//!
//! Names: the queue of lock `a` is every key under `a/`, so lock `a` also counts the keys of
//! lock `a/b` as contenders (as etcd's own `concurrency.Mutex` does, whose layout Lucky keeps
//! for interop). Do not nest lock names if the locks are meant to be independent.

/// The etcd lock's deliberate bugs, for the simulator (feature `bugs`; never in a release
/// build).
#[cfg(feature = "bugs")]
pub mod bugs;
#[cfg(not(feature = "bugs"))]
mod bugs;
mod command;
mod config;
pub mod session;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use bytes::{BufMut, Bytes, BytesMut};

pub use command::{Command, Reply};
pub use config::{EtcdConfig, EtcdConfigBuilder, DEFAULT_TTL, MAX_NAME_LEN};
pub use session::{Session, SessionView};

use crate::error::{BackendError, LockError, NodeOutcome, UsageError};
use crate::machine::{Event, LockMachine, LostReason, NodeId, OpId, Output, State, Transmit};
use crate::settings::Attempts;
use crate::time::{Duration, Instant};
use bugs::EtcdBug as Bug;

/// The etcd lock machine for one lock name. It talks to one node: the cluster.
#[derive(Debug)]
pub struct EtcdLock {
    cfg: EtcdConfig,
    prefix: Bytes,
    now: Instant,
    next_op: u64,
    out: VecDeque<Output<Command>>,
    lease: Option<Lease>,
    /// Our key for the current lease.
    key: Bytes,
    /// Our key's create_revision in this acquisition (0: not known yet).
    rev: i64,
    phase: Phase,
    /// The request of the acquisition or release chain in flight.
    main: Option<Pending>,
    /// The keepalive in flight.
    keepalive: Option<Pending>,
    /// When to send the next keepalive while active.
    next_keepalive: Instant,
    /// A keepalive failed since ownership was last read: re-read before extending again.
    suspect: bool,
    /// Ownership was read; the lock is claimed once the keepalive in flight confirms the lease.
    owner_ready: bool,
    /// A validity confirmed by a keepalive, waiting for the ownership re-read.
    pending_until: Option<Instant>,
    attempts: Attempts,
    last_error: Option<Box<LockError>>,
    /// The lease was granted during the current acquisition.
    fresh_lease: bool,
    /// The error a failing acquisition reports once its lease revoke is answered.
    failure: Option<Box<LockError>>,
    /// In a client's shared session: what this lock knows of the session's lease.
    shared: Option<Shared>,
}

/// A lock on its client's shared session lease ([`Session`]): it never grants, renews or
/// revokes; each attempt has a key of its own, and an abandoned attempt's key is deleted
/// behind a guard that no take in flight can pass.
#[derive(Clone, Debug)]
struct Shared {
    /// This lock's number in its client (part of its keys).
    lock_id: u64,
    /// Attempts made (part of its keys).
    attempt: u64,
    /// The session's lease as last told.
    view: Option<SessionView>,
    /// The session's epoch when ownership was last read.
    verified_epoch: u64,
    /// A take of the current attempt was sent: its key may exist.
    touched: bool,
    /// Waiting for the session to have a lease, until this time (the request timeout, as a
    /// grant of its own would be bounded): then the attempt fails as a timed-out grant.
    wants: Option<Instant>,
    /// We own the lock but the session's lease is not known alive: the session's next
    /// keepalive decides, and if none confirms it by this time the attempt fails.
    confirm_by: Option<Instant>,
    /// A lease a reply showed gone, for the driver to tell the session.
    gone: Option<i64>,
    /// Keys whose clean-up is not known done, for the session to retry until it is.
    handoff: VecDeque<Bytes>,
}

/// The prefix of abandoned attempts' guards: outside every lock's `<name>/` prefix (names
/// cannot start with a NUL byte).
pub const GUARD_PREFIX: &[u8] = b"\0lucky/abandoned/";

/// The guard of `key`: while it exists, no take can create `key`.
pub(crate) fn guard_of(key: &[u8]) -> Bytes {
    let mut g = BytesMut::with_capacity(GUARD_PREFIX.len() + key.len());
    g.put_slice(GUARD_PREFIX);
    g.put_slice(key);
    g.freeze()
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    id: i64,
    /// Local time until which the lease surely lives (drift already taken off).
    until: Instant,
    /// Time between keepalives: the configured interval, or a third of a shorter grant.
    every: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Grant,
    KeepAlive,
    Take,
    Queue,
    Watch,
    /// Re-read of ownership while held, after a keepalive failure.
    Check,
    Delete,
    Revoke,
    /// A shared session's clean-up of an attempt (guard, then delete).
    Abandon,
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
    /// The acquisition failed for good; the revoke of its lease is in flight. `Failed`
    /// follows its answer or timeout.
    Failing,
    Done,
}

impl EtcdLock {
    /// A machine for the lock `name`; `seed` drives the retry jitter (and the range its op
    /// ids are drawn from).
    pub fn new(cfg: &EtcdConfig, name: &[u8], seed: u64) -> Result<EtcdLock, UsageError> {
        if name.is_empty() {
            return Err(UsageError::EmptyKey);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(UsageError::KeyTooLong {
                len: name.len(),
                max: MAX_NAME_LEN,
            });
        }
        if name[0] == 0 {
            return Err(UsageError::BadName {
                name: alloc::string::String::from_utf8_lossy(name).into_owned(),
                why: "an etcd lock name cannot start with a NUL byte (Lucky's own keys do)",
            });
        }
        let mut prefix = BytesMut::with_capacity(name.len() + 1);
        prefix.put_slice(name);
        prefix.put_u8(b'/');
        Ok(EtcdLock {
            cfg: cfg.clone(),
            prefix: prefix.freeze(),
            now: Instant::ZERO,
            next_op: crate::rng::op_base(seed, name),
            out: VecDeque::new(),
            lease: None,
            key: Bytes::new(),
            rev: 0,
            phase: Phase::Idle,
            main: None,
            keepalive: None,
            next_keepalive: Instant::MAX,
            suspect: false,
            owner_ready: false,
            pending_until: None,
            attempts: Attempts::new(seed),
            last_error: None,
            fresh_lease: false,
            failure: None,
            shared: None,
        })
    }

    /// A machine for the lock `name` on its client's shared session lease ([`Session`]):
    /// `lock_id` is unique among the client's locks. The driver tells it the session's lease
    /// with [`set_session`](Self::set_session), asks the session for one when
    /// [`wants_session`](Self::wants_session), and hands the session what
    /// [`take_lease_gone`](Self::take_lease_gone) reports.
    pub fn in_session(
        cfg: &EtcdConfig,
        name: &[u8],
        lock_id: u64,
        seed: u64,
    ) -> Result<EtcdLock, UsageError> {
        let mut m = EtcdLock::new(cfg, name, seed)?;
        m.shared = Some(Shared {
            lock_id,
            attempt: 0,
            view: None,
            verified_epoch: 0,
            touched: false,
            wants: None,
            confirm_by: None,
            gone: None,
            handoff: VecDeque::new(),
        });
        Ok(m)
    }

    /// A key whose clean-up this lock could not confirm: the session retries it
    /// ([`Session::abandon`]) until it is done or the lease is gone.
    pub fn take_abandoned(&mut self) -> Option<Bytes> {
        self.shared.as_mut().and_then(|s| s.handoff.pop_front())
    }

    fn hand_off(&mut self, key: Bytes) {
        let lease = self.lease.map(|l| l.id);
        if let Some(sh) = &mut self.shared {
            // A key on a lease the session no longer has went with that lease.
            if lease.is_some() && sh.view.map(|v| v.lease) == lease {
                sh.handoff.push_back(key);
            }
        }
    }

    /// Whether this lock waits for its session to have a lease.
    pub fn wants_session(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.wants.is_some())
    }

    /// A lease one of this lock's requests found gone, once (for the session).
    pub fn take_lease_gone(&mut self) -> Option<i64> {
        self.shared.as_mut().and_then(|s| s.gone.take())
    }

    /// The session's lease as it stands (`None`: it has none, or lost it). A lease other
    /// than the one this lock's key is on means that key is gone with its lease.
    pub fn set_session(&mut self, now: Instant, view: Option<SessionView>) {
        self.advance(now);
        let Some(sh) = &mut self.shared else { return };
        sh.view = view;
        match (self.lease, view) {
            (Some(l), Some(v)) if l.id == v.lease => {
                self.session_renewed(v);
            }
            (Some(_), _) => self.lease_gone(),
            (None, Some(_)) => {
                if let Some(sh) = &mut self.shared {
                    if sh.wants.take().is_some() {
                        self.start_attempt();
                    }
                }
            }
            (None, None) => {}
        }
        self.advance(self.now);
    }

    /// The session's lease lives longer (or its epoch moved).
    fn session_renewed(&mut self, v: SessionView) {
        let verified = self.shared.as_ref().map_or(0, |s| s.verified_epoch);
        if let Some(l) = &mut self.lease {
            l.until = l.until.max(v.until);
        }
        match self.phase {
            Phase::Held { valid_until } if v.until > valid_until => {
                if v.epoch != verified {
                    // The session missed keepalives since ownership was read: read again
                    // before extending.
                    self.pending_until = Some(v.until);
                    if self.main.is_none() {
                        self.send_queue(Kind::Check);
                    }
                } else {
                    self.phase = Phase::Held {
                        valid_until: v.until,
                    };
                    self.emit(Event::Extended {
                        valid_until: v.until,
                    });
                }
            }
            Phase::Acquiring if self.owner_ready && self.now < v.until => self.owned(),
            _ => {}
        }
    }

    /// The guard of the current key.
    fn guard(&self) -> Bytes {
        guard_of(&self.key)
    }

    /// Cleans up the current attempt's key, if a take of it was sent: sent now and waited
    /// for (`wait`), or handed to the session, which retries it until it is done.
    ///
    /// `rev` is the key's revision when the take was answered (0 if not): the key is then
    /// deleted at that revision without a guard, as a release does, so failed tries do not
    /// pile guards up on the session's lease.
    fn send_abandon(&mut self, wait: Option<Kind>, rev: i64) -> bool {
        let touched = self.shared.as_ref().is_some_and(|s| s.touched);
        let Some(l) = self.lease.filter(|_| touched) else {
            return false;
        };
        if let Some(sh) = &mut self.shared {
            sh.touched = false;
        }
        match wait {
            Some(kind) if rev != 0 => {
                let command = Command::Delete {
                    key: self.key.clone(),
                    revision: rev,
                };
                self.send_main(kind, command);
            }
            Some(kind) => {
                let command = Command::Abandon {
                    key: self.key.clone(),
                    guard: self.guard(),
                    lease: l.id,
                };
                self.send_main(kind, command);
            }
            None => self.hand_off(self.key.clone()),
        }
        true
    }

    /// The lease this machine holds, if any (for a driver that revokes it on shutdown).
    pub fn lease(&self) -> Option<i64> {
        self.lease.map(|l| l.id)
    }

    /// Our key under the current lease (empty before the first grant).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// `<name>/`: the prefix every contender's key is under.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
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
            sent: self.now,
            deadline: self.now + timeout,
        });
    }

    fn send_keepalive(&mut self) {
        if self.shared.is_some() {
            // The session keeps its lease alive.
            return;
        }
        let Some(lease) = self.lease else { return };
        if self.keepalive.is_some() {
            return;
        }
        let op = self.send(Command::KeepAlive { lease: lease.id });
        self.keepalive = Some(Pending {
            op,
            kind: Kind::KeepAlive,
            sent: self.now,
            deadline: self.now + self.cfg.op_timeout,
        });
    }

    fn set_lease(&mut self, id: i64) {
        let mut key = BytesMut::with_capacity(self.prefix.len() + 50);
        key.put_slice(&self.prefix);
        push_hex(&mut key, id as u64);
        if let Some(sh) = &self.shared {
            key.put_u8(b'_');
            push_hex(&mut key, sh.lock_id);
            key.put_u8(b'_');
            push_hex(&mut key, sh.attempt);
        }
        self.key = key.freeze();
        self.lease = Some(Lease {
            id,
            until: Instant::ZERO,
            every: self.cfg.keepalive_every,
        });
    }

    /// The lease is known to live until `sent + ttl - drift`, where `ttl` is what the server
    /// granted, capped at what was asked (a grant longer than asked is not relied on beyond
    /// the asked ttl; a shorter one is renewed at a third of itself).
    fn confirm_lease(&mut self, sent: Instant, granted: Duration) {
        let ttl = granted.min(self.cfg.ttl);
        let from = if self.bug(Bug::LostFromReceiveTime) {
            self.now
        } else {
            sent
        };
        let until = from + ttl.saturating_sub(self.cfg.drift_for(ttl));
        let every = self
            .cfg
            .keepalive_every
            .min(ttl / 3)
            .max(Duration::from_millis(1));
        if let Some(l) = &mut self.lease {
            l.until = l.until.max(until);
            l.every = every;
        }
        self.next_keepalive = sent + every;
    }

    fn lease_until(&self) -> Instant {
        self.lease.map_or(Instant::ZERO, |l| l.until)
    }

    fn start_attempt(&mut self) {
        self.attempts.start();
        self.phase = Phase::Acquiring;
        self.owner_ready = false;
        self.rev = 0;
        if let Some(sh) = &mut self.shared {
            sh.attempt += 1;
            sh.touched = false;
            match sh.view {
                None => {
                    // No lease yet: the session grants one, and the take follows.
                    sh.wants = Some(self.now + self.cfg.op_timeout);
                    self.lease = None;
                }
                Some(v) => {
                    sh.wants = None;
                    let every = self.cfg.keepalive_every;
                    self.set_lease(v.lease);
                    self.lease = Some(Lease {
                        id: v.lease,
                        until: v.until,
                        every,
                    });
                    self.send_take();
                }
            }
            return;
        }
        match self.lease {
            None => self.send_main(
                Kind::Grant,
                Command::LeaseGrant {
                    ttl_secs: self.cfg.ttl_secs(),
                },
            ),
            Some(_) => {
                // A lease renewed less than a keepalive interval ago still backs a whole
                // hold: take at once. Otherwise renew and take in parallel (one round trip).
                if self.now >= self.next_keepalive {
                    self.send_keepalive();
                }
                self.send_take();
            }
        }
    }

    fn send_take(&mut self) {
        let Some(lease) = self.lease else { return };
        let guard = (self.shared.is_some() && !self.bug(Bug::SessionNoGuard)).then(|| self.guard());
        if let Some(sh) = &mut self.shared {
            sh.touched = true;
        }
        self.send_main(
            Kind::Take,
            Command::Take {
                key: self.key.clone(),
                prefix: self.prefix.clone(),
                lease: lease.id,
                guard,
            },
        );
    }

    fn send_queue(&mut self, kind: Kind) {
        self.send_main(
            kind,
            Command::Queue {
                key: self.key.clone(),
                prefix: self.prefix.clone(),
                below: self.rev,
            },
        );
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

    fn next_retry(&mut self) -> Option<Instant> {
        self.attempts
            .next_retry(self.now, self.cfg.retry, None, None)
    }

    /// This attempt failed: clean up what it may have written, then retry or give up.
    fn fail_attempt(&mut self, error: LockError) {
        match self.next_retry() {
            Some(retry_at) => {
                self.abandon();
                self.phase = Phase::Waiting { retry_at };
                self.emit(Event::Retrying {
                    attempt: self.attempts.count,
                    retry_at,
                });
            }
            None => self.give_up(error),
        }
    }

    /// The acquisition failed for good: revoke the lease (which deletes whatever key it
    /// wrote), and report `Failed` once etcd answered the revoke or the request timed out.
    fn give_up(&mut self, error: LockError) {
        if self.shared.is_some() {
            let rev = self.rev;
            self.drop_chain();
            if !self.bug(Bug::FailBeforeCleanup) && self.send_abandon(Some(Kind::Abandon), rev) {
                self.failure = Some(Box::new(error));
                self.phase = Phase::Failing;
            } else {
                self.phase = Phase::Done;
                self.emit(Event::Failed(error));
            }
            return;
        }
        match self.lease {
            Some(l) if !self.bug(Bug::FailBeforeCleanup) => {
                self.drop_chain();
                self.lease = None;
                self.failure = Some(Box::new(error));
                self.phase = Phase::Failing;
                self.send_main(Kind::Revoke, Command::Revoke { lease: l.id });
            }
            _ => {
                self.abandon();
                self.phase = Phase::Done;
                self.emit(Event::Failed(error));
            }
        }
    }

    /// The revoke of a failing acquisition was answered or timed out.
    fn failed(&mut self) {
        self.key = Bytes::new();
        self.phase = Phase::Done;
        if let Some(error) = self.failure.take().map(|e| *e) {
            self.emit(Event::Failed(error));
        }
    }

    /// Drops the chain in flight and revokes the lease, which deletes whatever key this
    /// attempt may have written, now or late (a take arriving after the revoke finds no
    /// lease). The next attempt grants a fresh lease, so its key has another name and no
    /// request of this attempt can touch it.
    fn abandon(&mut self) {
        self.drop_chain();
        if self.shared.is_some() {
            // The session's lease stays; this attempt's key goes behind its guard, and the
            // next attempt takes a key of its own.
            self.send_abandon(None, 0);
            return;
        }
        if let Some(l) = self.lease.take() {
            self.send(Command::Revoke { lease: l.id });
        }
    }

    /// Stops waiting for the chain and keepalive in flight; this attempt's key is forgotten.
    fn drop_chain(&mut self) {
        self.main = None;
        self.keepalive = None;
        self.owner_ready = false;
        self.rev = 0;
        if let Some(sh) = &mut self.shared {
            sh.confirm_by = None;
        }
    }

    /// The chain read that we own the lock.
    fn owned(&mut self) {
        self.main = None;
        if self.keepalive.is_some() {
            self.owner_ready = true;
            return;
        }
        if self.now >= self.lease_until() {
            // Our lease may be gone with our key: renew it and decide on the answer (in a
            // shared session, on the session's next keepalive, within a request's time).
            self.owner_ready = true;
            let by = self.now + self.cfg.op_timeout;
            if let Some(sh) = &mut self.shared {
                sh.confirm_by.get_or_insert(by);
            }
            self.send_keepalive();
            return;
        }
        self.owner_ready = false;
        if let Some(sh) = &mut self.shared {
            sh.verified_epoch = sh.view.map_or(0, |v| v.epoch);
            sh.confirm_by = None;
        }
        let valid_until = self.lease_until();
        self.suspect = false;
        self.phase = Phase::Held { valid_until };
        self.last_error = None;
        self.emit(Event::Acquired {
            fence: u64::try_from(self.rev).ok().map(crate::fence::Fence),
            valid_until,
        });
    }

    /// Revokes the lease without waiting (its key goes with it) and grants a fresh one next
    /// time.
    fn forget_lease(&mut self) {
        if self.shared.is_some() {
            // The key is not known deleted: delete it behind its guard.
            if let Some(sh) = &mut self.shared {
                sh.touched = true;
            }
            self.send_abandon(None, 0);
            return;
        }
        if let Some(l) = self.lease.take() {
            self.send(Command::Revoke { lease: l.id });
        }
    }

    /// The lease is gone on the server (and every key on it).
    fn lease_gone(&mut self) {
        if let Some(sh) = &mut self.shared {
            if let Some(l) = self.lease {
                // Its keys went with it; tell the session, and take nothing more on it.
                sh.gone = Some(l.id);
                if sh.view.is_some_and(|v| v.lease == l.id) {
                    sh.view = None;
                }
            }
            sh.touched = false;
            self.lease = None;
            self.keepalive = None;
            match self.phase {
                Phase::Acquiring => {
                    let e = self.error(NodeOutcome::Refused, false);
                    self.fail_attempt(e);
                }
                Phase::Held { .. } => self.lose(Some(self.error(NodeOutcome::Refused, false))),
                _ => {}
            }
            return;
        }
        self.lease = None;
        self.keepalive = None;
        match self.phase {
            Phase::Acquiring if !self.fresh_lease => {
                // The session's lease ran out while idle: start again on a fresh one, at once.
                self.main = None;
                self.rev = 0;
                self.start_attempt();
            }
            Phase::Acquiring => {
                let e = self.error(NodeOutcome::Refused, false);
                self.fail_attempt(e);
            }
            Phase::Held { .. } => self.lose(Some(self.error(NodeOutcome::Refused, false))),
            _ => {}
        }
    }

    fn lose(&mut self, error: Option<LockError>) {
        let reason = match error.or_else(|| self.last_error.take().map(|e| *e)) {
            Some(e) => LostReason::ExtendFailed(e),
            None => LostReason::Expired,
        };
        self.emit(Event::Lost { reason });
        self.main = None;
        self.keepalive = None;
        self.pending_until = None;
        if self.shared.is_some() {
            // The session's lease stays: delete exactly our key, if the lease still lives.
            let rev = core::mem::take(&mut self.rev);
            if self.lease.is_some() && rev != 0 {
                self.phase = Phase::Releasing;
                let key = self.key.clone();
                self.send_main(Kind::Delete, Command::Delete { key, revision: rev });
            } else {
                self.phase = Phase::Done;
                self.emit(Event::Released {
                    nodes: vec![NodeOutcome::Refused],
                });
            }
            return;
        }
        match self.lease.take() {
            // Revoking deletes our key with the lease, wherever the lease stands.
            Some(l) => {
                self.phase = Phase::Releasing;
                self.send_main(Kind::Revoke, Command::Revoke { lease: l.id });
            }
            None => {
                self.phase = Phase::Done;
                self.emit(Event::Released {
                    nodes: vec![NodeOutcome::Refused],
                });
            }
        }
    }

    fn emit(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }

    /// The caller's clock stepped back by `by`: every deadline moves back as much, so none
    /// lies later than under either reading of the clock.
    fn rebase_back(&mut self, by: Duration) {
        if let Some(l) = &mut self.lease {
            l.until = l.until.rebase_back(by);
        }
        for p in [&mut self.main, &mut self.keepalive].into_iter().flatten() {
            p.sent = p.sent.rebase_back(by);
            p.deadline = p.deadline.rebase_back(by);
        }
        self.next_keepalive = self.next_keepalive.rebase_back(by);
        self.attempts.rebase_back(by);
        self.pending_until = self.pending_until.map(|t| t.rebase_back(by));
        if let Some(sh) = &mut self.shared {
            sh.wants = sh.wants.map(|t| t.rebase_back(by));
            sh.confirm_by = sh.confirm_by.map(|t| t.rebase_back(by));
            if let Some(v) = &mut sh.view {
                v.until = v.until.rebase_back(by);
            }
        }
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

    /// Applies everything due at `now`. A `now` earlier than the last one moves every
    /// deadline back by the step (see [`Event::TimeWentBack`]).
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
        if let Some(k) = self.keepalive {
            if now >= k.deadline {
                self.keepalive = None;
                self.keepalive_failed(NodeOutcome::TimedOut);
            }
        }
        if let Some(p) = self.main {
            if now >= p.deadline {
                self.main = None;
                self.main_timed_out(p);
            }
        }
        if self.phase == Phase::Acquiring {
            let waited_out = self.shared.as_mut().and_then(|sh| {
                let lease = sh.wants.take_if(|until| now >= *until);
                let confirm = sh.confirm_by.take_if(|until| now >= *until);
                lease.or(confirm)
            });
            if waited_out.is_some() {
                // The session got no lease, or no keepalive confirmed ours, in a request's
                // time (etcd unreachable, or refusing).
                let e = self.error(NodeOutcome::TimedOut, false);
                self.fail_attempt(e);
            }
        }
        match self.phase {
            Phase::Waiting { retry_at } if now >= retry_at => self.start_attempt(),
            Phase::Acquiring
                if now >= self.attempts.wait_until && self.main_kind() == Some(Kind::Watch) =>
            {
                // Queued behind a holder for the whole wait: give up.
                let e = self.error(NodeOutcome::Refused, true);
                self.give_up(e);
            }
            _ => {}
        }
        if matches!(self.phase, Phase::Acquiring | Phase::Held { .. })
            && self.keepalive.is_none()
            && now >= self.next_keepalive
        {
            self.send_keepalive();
        }
    }

    fn main_kind(&self) -> Option<Kind> {
        self.main.map(|p| p.kind)
    }

    fn main_timed_out(&mut self, p: Pending) {
        match (p.kind, self.phase) {
            // A watch that stayed silent: read the queue again.
            (Kind::Watch, Phase::Acquiring) => self.send_queue(Kind::Queue),
            (Kind::Grant | Kind::Take | Kind::Queue, Phase::Acquiring) => {
                let e = self.error(NodeOutcome::TimedOut, false);
                self.fail_attempt(e);
            }
            (Kind::Check, Phase::Held { .. }) => {
                self.pending_until = None;
            }
            (Kind::Abandon, Phase::Failing) => {
                self.hand_off(self.key.clone());
                self.failed();
            }
            (Kind::Revoke, Phase::Failing) => self.failed(),
            (Kind::Delete | Kind::Revoke | Kind::Abandon, Phase::Releasing) => {
                if p.kind == Kind::Abandon {
                    self.hand_off(self.key.clone());
                }
                self.forget_lease();
                self.phase = Phase::Done;
                self.emit(Event::Released {
                    nodes: vec![NodeOutcome::TimedOut],
                });
            }
            _ => {}
        }
    }

    fn keepalive_failed(&mut self, outcome: NodeOutcome) {
        self.suspect = true;
        let error = self.error(outcome, false);
        self.last_error = Some(Box::new(error.clone()));
        // Try again soon, well inside the remaining validity.
        let every = self.lease.map_or(self.cfg.keepalive_every, |l| l.every);
        self.next_keepalive = self.now + every / 4;
        match self.phase {
            Phase::Held { valid_until } => self.emit(Event::ExtendFailed { valid_until, error }),
            Phase::Acquiring if self.owner_ready => {
                self.owner_ready = false;
                self.fail_attempt(error);
            }
            _ => {}
        }
    }

    fn on_keepalive(&mut self, k: Pending, reply: Reply) {
        match reply {
            Reply::KeepAlive { ttl } if !ttl.is_zero() => {
                self.confirm_lease(k.sent, ttl);
                let until = self.lease_until();
                match self.phase {
                    Phase::Held { valid_until } if until > valid_until => {
                        if self.suspect {
                            // Reconnected after a failure: read ownership before extending.
                            self.pending_until = Some(until);
                            if self.main.is_none() {
                                self.send_queue(Kind::Check);
                            }
                        } else {
                            self.phase = Phase::Held { valid_until: until };
                            self.emit(Event::Extended { valid_until: until });
                        }
                    }
                    Phase::Acquiring if self.owner_ready => self.owned(),
                    _ => {}
                }
            }
            Reply::KeepAlive { .. } | Reply::LeaseNotFound => self.lease_gone(),
            other => self.keepalive_failed(failure(other, "LeaseKeepAlive")),
        }
    }

    fn on_main(&mut self, p: Pending, reply: Reply) {
        match (p.kind, reply) {
            (Kind::Grant, Reply::Lease { id, ttl }) if !ttl.is_zero() => {
                self.set_lease(id);
                self.fresh_lease = true;
                self.confirm_lease(p.sent, ttl);
                self.suspect = false;
                self.send_take();
            }
            (
                Kind::Take,
                Reply::Taken {
                    create_revision,
                    owner_revision,
                    ..
                },
            ) if create_revision > 0 => {
                self.rev = create_revision;
                if owner_revision == create_revision {
                    self.owned();
                } else if self.now >= self.attempts.wait_until {
                    let e = self.error(NodeOutcome::Refused, true);
                    self.give_up(e);
                } else {
                    self.send_queue(Kind::Queue);
                }
            }
            (Kind::Take | Kind::Queue | Kind::Check, Reply::LeaseNotFound) => self.lease_gone(),
            (
                Kind::Queue,
                Reply::Queue {
                    mine,
                    predecessor,
                    revision,
                },
            ) => {
                if mine != Some(self.rev) && self.shared.is_some() {
                    // Our key is gone, the session's lease maybe not: a take on it says.
                    // The next attempt takes a key of its own.
                    self.rev = 0;
                    let e = self.error(NodeOutcome::Refused, false);
                    self.fail_attempt(e);
                } else if mine != Some(self.rev) {
                    // Our key is gone (its lease expired, or someone deleted it): start again
                    // on a fresh lease.
                    self.rev = 0;
                    self.lease_gone();
                } else if let Some(pred) = predecessor {
                    let (key, prefix) = if self.bug(Bug::WatchAll) {
                        (self.prefix.clone(), true)
                    } else {
                        (pred, false)
                    };
                    self.send_main(
                        Kind::Watch,
                        Command::WaitDelete {
                            key,
                            prefix,
                            from: revision.saturating_add(1),
                            watcher: self.key.clone(),
                        },
                    );
                } else {
                    self.owned();
                }
            }
            (Kind::Watch, Reply::Deleted) if self.bug(Bug::SkipRecheck) => self.owned(),
            // Whatever the watch said, read the queue again.
            (Kind::Watch, _) => self.send_queue(Kind::Queue),
            (
                Kind::Check,
                Reply::Queue {
                    mine, predecessor, ..
                },
            ) => {
                if mine == Some(self.rev) && predecessor.is_none() {
                    self.suspect = false;
                    if let Some(sh) = &mut self.shared {
                        sh.verified_epoch = sh.view.map_or(0, |v| v.epoch);
                    }
                    if let Some(until) = self.pending_until.take() {
                        if let Phase::Held { valid_until } = self.phase {
                            if until > valid_until {
                                self.phase = Phase::Held { valid_until: until };
                                self.emit(Event::Extended { valid_until: until });
                            }
                        }
                    }
                } else {
                    let e = self.error(NodeOutcome::Refused, true);
                    self.lose(Some(e));
                }
            }
            (Kind::Check, _) => self.pending_until = None,
            (Kind::Abandon, reply) if self.phase == Phase::Failing => {
                if !matches!(reply, Reply::Done | Reply::LeaseNotFound) {
                    self.hand_off(self.key.clone());
                }
                self.failed();
            }
            (Kind::Revoke, _) if self.phase == Phase::Failing => self.failed(),
            (Kind::Delete | Kind::Revoke | Kind::Abandon, reply) => {
                let outcome = match reply {
                    Reply::Done => NodeOutcome::Granted,
                    Reply::LeaseNotFound => NodeOutcome::Refused,
                    other => failure(other, "Txn(delete)"),
                };
                if p.kind == Kind::Revoke {
                    self.key = Bytes::new();
                } else if p.kind == Kind::Abandon {
                    if !matches!(outcome, NodeOutcome::Granted | NodeOutcome::Refused) {
                        // Not known done: the session retries it.
                        self.hand_off(self.key.clone());
                    }
                } else if outcome != NodeOutcome::Granted {
                    // Not known deleted: do not take this key up again in a later
                    // acquisition (it would come back with its old fence).
                    self.forget_lease();
                }
                self.phase = Phase::Done;
                self.emit(Event::Released {
                    nodes: vec![outcome],
                });
            }
            (Kind::Grant | Kind::Take | Kind::Queue, reply) => {
                let command = if p.kind == Kind::Grant {
                    "LeaseGrant"
                } else {
                    "Txn"
                };
                let e = self.error(failure(reply, command), false);
                self.fail_attempt(e);
            }
            // Keepalives travel beside the chain (`on_keepalive`), never in it.
            (Kind::KeepAlive, _) => {}
        }
    }
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

fn push_hex(buf: &mut BytesMut, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        buf.put_u8(HEX[((n >> (i * 4)) & 0xf) as usize]);
    }
}

impl LockMachine for EtcdLock {
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
        self.fresh_lease = false;
        self.start_attempt();
        Ok(())
    }

    fn extend(&mut self, now: Instant) -> Result<(), UsageError> {
        self.advance(now);
        match self.phase {
            Phase::Held { valid_until } if self.shared.is_some() => {
                // The session keeps its lease alive on its own schedule: answer at once
                // with what it last confirmed, or that its keepalives are failing.
                let failing = self
                    .shared
                    .as_ref()
                    .and_then(|sh| sh.view.map(|v| v.epoch != sh.verified_epoch))
                    .unwrap_or(true);
                if failing {
                    let error = self.error(NodeOutcome::TimedOut, false);
                    self.emit(Event::ExtendFailed { valid_until, error });
                } else {
                    self.emit(Event::Extended { valid_until });
                }
                Ok(())
            }
            Phase::Held { .. } => {
                self.send_keepalive();
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
                let taking = self.main.is_some_and(|p| p.kind == Kind::Take);
                self.main = None;
                self.keepalive = None;
                self.owner_ready = false;
                self.pending_until = None;
                let rev = core::mem::take(&mut self.rev);
                if let Some(sh) = &mut self.shared {
                    sh.wants = None;
                    if rev != 0 && !taking && self.lease.is_some() {
                        self.phase = Phase::Releasing;
                        let key = self.key.clone();
                        self.send_main(Kind::Delete, Command::Delete { key, revision: rev });
                    } else if self.send_abandon(Some(Kind::Abandon), 0) {
                        // A take may have made the key, or may still: guard and delete it.
                        self.phase = Phase::Releasing;
                    } else {
                        self.phase = Phase::Done;
                        self.emit(Event::Released {
                            nodes: vec![NodeOutcome::NotSent],
                        });
                    }
                    return Ok(());
                }
                match self.lease {
                    // Our key and its revision are known: delete exactly it, keep the lease.
                    Some(_) if rev != 0 && !taking => {
                        self.phase = Phase::Releasing;
                        let key = self.key.clone();
                        self.send_main(Kind::Delete, Command::Delete { key, revision: rev });
                    }
                    // A take is in flight: revoke the lease, which covers a late take too.
                    Some(l) if taking => {
                        self.lease = None;
                        self.phase = Phase::Releasing;
                        self.send_main(Kind::Revoke, Command::Revoke { lease: l.id });
                    }
                    _ => {
                        self.phase = Phase::Done;
                        self.emit(Event::Released {
                            nodes: vec![NodeOutcome::NotSent],
                        });
                    }
                }
                Ok(())
            }
            Phase::Releasing => Ok(()),
            Phase::Failing => {
                // Cancelled while the failed attempt revokes its lease: the same revoke ends
                // it, reported as `Released` instead of `Failed`.
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
        let used = if let Some(k) = self.keepalive.filter(|k| k.op == op) {
            self.keepalive = None;
            self.on_keepalive(k, reply);
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

    fn shrink(&mut self) {
        self.out.shrink_to_fit();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut at = match self.phase {
            Phase::Idle | Phase::Done => return None,
            Phase::Waiting { retry_at } => retry_at,
            Phase::Held { valid_until } => valid_until,
            Phase::Acquiring | Phase::Releasing | Phase::Failing => Instant::MAX,
        };
        let held = matches!(self.phase, Phase::Held { .. });
        if let Some(sh) = &self.shared {
            for until in [sh.wants, sh.confirm_by].into_iter().flatten() {
                at = at.min(until);
            }
        }
        if let Some(p) = self.main {
            at = at.min(p.deadline);
            if p.kind == Kind::Watch {
                at = at.min(self.attempts.wait_until);
            }
        }
        match self.keepalive {
            Some(k) => at = at.min(k.deadline),
            None if matches!(self.phase, Phase::Acquiring | Phase::Held { .. })
                && self.lease.is_some() =>
            {
                at = at.min(self.next_keepalive);
            }
            None => {}
        }
        // A held lock always has a deadline, even one saturated at `Instant::MAX`.
        (held || at != Instant::MAX).then_some(at)
    }

    fn renews_while_held(&self) -> bool {
        // The lease needs keepalives whenever a lock is held (in a shared session, the
        // session sends them).
        self.shared.is_none()
    }

    fn held_key(&self) -> Option<Bytes> {
        matches!(self.phase, Phase::Held { .. }).then(|| self.key.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys() {
        let mut b = BytesMut::new();
        push_hex(&mut b, 0x694d_77aa_0000_001f);
        assert_eq!(&b[..], b"694d77aa0000001f");
        let mut b = BytesMut::new();
        push_hex(&mut b, 0);
        assert_eq!(&b[..], b"0");
    }
}
