//! One etcd lease shared by every lock of a client, as etcd's own `concurrency.Session`:
//! keepalive traffic does not grow with the number of locks, and the loss of the lease loses
//! every lock on it at the same deadline.
//!
//! The session grants its lease when a lock first needs one, keeps it alive every
//! `keepalive_every` (or a third of a shorter grant) from the send of the last acknowledged
//! keepalive, and revokes it on [`close`](Session::close). Its [`SessionView`] says what a lock
//! may rely on: the lease id, the time until which the lease surely lives (`send time of the
//! last acknowledged grant or keepalive + granted ttl - drift`, never more), and an `epoch`
//! that moves whenever a keepalive failed, so a held lock re-reads its ownership before it
//! trusts a later extension (the same rule a lock with its own lease keeps).
//!
//! A lease found gone (a keepalive answered with ttl 0, `lease not found` from a keepalive or
//! from a lock's take) is forgotten: every key on it is gone with it on the server. The next
//! lock that needs a lease makes the session grant a fresh one.

use alloc::collections::VecDeque;

use bytes::Bytes;

use super::{guard_of, Command, EtcdConfig, Reply};
use crate::machine::{NodeId, OpId, Transmit};
use crate::time::{Duration, Instant};

/// What a lock may rely on of its client's session lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// The lease id.
    pub lease: i64,
    /// Local time until which the lease surely lives (drift already taken off).
    pub until: Instant,
    /// Moves on every keepalive failure: a held lock re-reads its ownership when it changed.
    pub epoch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Grant,
    KeepAlive,
    Revoke,
    Abandon,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    op: OpId,
    sent: Instant,
    deadline: Instant,
}

/// The session machine: sans-IO like the locks. Drive it with the same clock: feed replies
/// to [`handle_reply`](Session::handle_reply), call [`handle_timeout`](Session::handle_timeout)
/// at [`poll_timeout`](Session::poll_timeout), send what [`poll_transmit`](Session::poll_transmit)
/// yields.
#[derive(Debug)]
pub struct Session {
    cfg: EtcdConfig,
    now: Instant,
    next_op: u64,
    out: VecDeque<Transmit<Command>>,
    view: Option<SessionView>,
    /// Time between keepalives: the configured interval, or a third of a shorter grant.
    every: Duration,
    next_keepalive: Instant,
    grant: Option<Pending>,
    keepalive: Option<Pending>,
    /// A lock is waiting for a lease.
    wanted: bool,
    epoch: u64,
    closed: bool,
    /// Leases granted so far (a fresh lease after a lost one is a new session).
    grants: u64,
    /// Keys of its locks whose clean-up is not known done, oldest first: retried until done
    /// or until the lease is gone (with them).
    abandons: VecDeque<Bytes>,
    /// The clean-up in flight.
    abandoning: Option<Pending>,
    /// When the next clean-up try may go.
    abandon_at: Instant,
    /// Grants given up on (timed out, or in flight at the close): a lease they still bring
    /// is revoked at once rather than left to run out its ttl. The newest few are kept.
    late_grants: VecDeque<OpId>,
}

/// How many given-up grants the session still watches for.
const LATE_GRANTS: usize = 8;

impl Session {
    /// A session for locks of `cfg` (its ttl, drift, request timeout and keepalive interval);
    /// `seed` picks the range its op ids are drawn from (distinct from its locks').
    pub fn new(cfg: &EtcdConfig, seed: u64) -> Session {
        Session {
            cfg: cfg.clone(),
            now: Instant::ZERO,
            next_op: crate::rng::op_base(seed, b"\0session"),
            out: VecDeque::new(),
            view: None,
            every: cfg.keepalive_every,
            next_keepalive: Instant::MAX,
            grant: None,
            keepalive: None,
            wanted: false,
            epoch: 0,
            closed: false,
            grants: 0,
            abandons: VecDeque::new(),
            abandoning: None,
            abandon_at: Instant::ZERO,
            late_grants: VecDeque::new(),
        }
    }

    /// Cleans up `key` of one of its locks (an attempt's key that may exist, or may still
    /// be created by a take in flight): guard it and delete it, again until that is done.
    /// On a session lease that lives on, an orphan key would block its lock for good.
    pub fn abandon(&mut self, now: Instant, key: Bytes) {
        self.advance(now);
        if self.view.is_some() {
            self.abandons.push_back(key);
        }
        self.advance(self.now);
    }

    /// Clean-ups not yet known done.
    pub fn abandons_pending(&self) -> usize {
        self.abandons.len()
    }

    /// The lease as a lock may rely on it, if there is one.
    pub fn view(&self) -> Option<SessionView> {
        self.view
    }

    /// Leases granted so far.
    pub fn grants(&self) -> u64 {
        self.grants
    }

    /// A lock needs a lease: grant one if there is none (and none is being granted).
    pub fn want(&mut self, now: Instant) {
        self.advance(now);
        self.wanted = true;
        self.maybe_grant();
    }

    /// A lock's request found the lease `lease` gone on the server.
    pub fn lease_gone(&mut self, now: Instant, lease: i64) {
        self.advance(now);
        if self.view.is_some_and(|v| v.lease == lease) {
            self.forget();
        }
    }

    /// Ends the session: revokes the lease (every key on it goes), and grants no more.
    pub fn close(&mut self, now: Instant) {
        self.advance(now);
        self.closed = true;
        self.keepalive = None;
        if let Some(g) = self.grant.take() {
            self.give_up_grant(g.op);
        }
        // The revoke deletes every key on the lease.
        self.abandons.clear();
        self.abandoning = None;
        if let Some(v) = self.view.take() {
            self.send(Kind::Revoke, Command::Revoke { lease: v.lease });
        }
    }

    /// Whether the session was closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The next command to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit<Command>> {
        self.out.pop_front()
    }

    /// Whether a command waits to be sent.
    pub fn has_transmit(&self) -> bool {
        !self.out.is_empty()
    }

    /// The link between the session and one of its locks, for a driver to call after every
    /// input to either: hands the session what `lock` has for it (a lease found gone, keys to
    /// clean up, the need for a lease), then tells `lock` the session's lease if it changed
    /// since `told` (what `lock` was last told, kept by the driver beside it), until neither
    /// has news. Returns whether the session got anything (it may have commands to send).
    /// `now` is the session's time, `lock_now` the lock's: the same when one thread drives
    /// both; a lock driven on another thread may have read the clock a moment earlier, and
    /// each machine must only see its own clock move forward.
    pub fn link(
        &mut self,
        now: Instant,
        lock: &mut super::EtcdLock,
        lock_now: Instant,
        told: &mut Option<SessionView>,
    ) -> bool {
        let mut fed = false;
        // Each round either settles or moves the view; a few are enough (a told lock may
        // report a lease gone, which moves the view once more).
        for _ in 0..4 {
            if let Some(lease) = lock.take_lease_gone() {
                self.lease_gone(now, lease);
                fed = true;
            }
            while let Some(key) = lock.take_abandoned() {
                self.abandon(now, key);
                fed = true;
            }
            if lock.wants_session() {
                self.want(now);
                fed = true;
            }
            let view = self.view();
            if view == *told {
                break;
            }
            *told = view;
            lock.set_session(lock_now, view);
        }
        fed
    }

    /// When the session next needs [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at = Instant::MAX;
        for p in [self.grant, self.keepalive, self.abandoning]
            .into_iter()
            .flatten()
        {
            at = at.min(p.deadline);
        }
        if self.abandoning.is_none() && !self.abandons.is_empty() && self.view.is_some() {
            at = at.min(self.abandon_at);
        }
        if self.view.is_some() && self.keepalive.is_none() && !self.closed {
            at = at.min(self.next_keepalive);
        }
        (at != Instant::MAX).then_some(at)
    }

    /// Does what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The answer to one of the session's requests; false if `op` is not the session's.
    pub fn handle_reply(&mut self, now: Instant, op: OpId, reply: Reply) -> bool {
        self.advance(now);
        if let Some(g) = self.grant.filter(|g| g.op == op) {
            self.grant = None;
            match reply {
                Reply::Lease { id, ttl } if !ttl.is_zero() && !self.closed => {
                    self.grants += 1;
                    self.view = Some(SessionView {
                        lease: id,
                        until: Instant::ZERO,
                        epoch: self.epoch,
                    });
                    self.confirm(g.sent, ttl);
                    self.wanted = false;
                }
                Reply::Lease { id, .. } if self.closed => {
                    // Granted after the close: revoke it at once.
                    self.send(Kind::Revoke, Command::Revoke { lease: id });
                }
                // Refused or failed: the next lock that asks tries again.
                _ => {}
            }
            self.advance(self.now);
            return true;
        }
        if let Some(k) = self.keepalive.filter(|k| k.op == op) {
            self.keepalive = None;
            match reply {
                Reply::KeepAlive { ttl } if !ttl.is_zero() => self.confirm(k.sent, ttl),
                Reply::KeepAlive { .. } | Reply::LeaseNotFound => self.forget(),
                _ => self.keepalive_failed(),
            }
            self.advance(self.now);
            return true;
        }
        if self.abandoning.is_some_and(|a| a.op == op) {
            self.abandoning = None;
            match reply {
                Reply::Done => {
                    self.abandons.pop_front();
                }
                Reply::LeaseNotFound => self.forget(),
                // Try again after a while.
                _ => self.abandon_at = self.now + self.cfg.op_timeout,
            }
            self.advance(self.now);
            return true;
        }
        if let Some(i) = self.late_grants.iter().position(|&o| o == op) {
            self.late_grants.remove(i);
            if let Reply::Lease { id, .. } = reply {
                // Granted after we stopped waiting: no lock knows it; revoke it now.
                self.send(Kind::Revoke, Command::Revoke { lease: id });
            }
            return true;
        }
        // A revoke's answer needs nothing; an unknown op is not ours.
        false
    }

    fn give_up_grant(&mut self, op: OpId) {
        if self.late_grants.len() == LATE_GRANTS {
            self.late_grants.pop_front();
        }
        self.late_grants.push_back(op);
    }

    /// Whether `op` is one of the session's requests in flight.
    pub fn owns(&self, op: OpId) -> bool {
        [self.grant, self.keepalive, self.abandoning]
            .into_iter()
            .flatten()
            .any(|p| p.op == op)
    }

    fn send(&mut self, kind: Kind, command: Command) -> OpId {
        self.next_op = self.next_op.wrapping_add(1);
        let op = OpId(self.next_op);
        self.out.push_back(Transmit {
            node: NodeId(0),
            op,
            command,
        });
        let p = Pending {
            op,
            sent: self.now,
            deadline: self.now + self.cfg.op_timeout,
        };
        match kind {
            Kind::Grant => self.grant = Some(p),
            Kind::KeepAlive => self.keepalive = Some(p),
            Kind::Abandon => self.abandoning = Some(p),
            Kind::Revoke => {}
        }
        op
    }

    fn maybe_grant(&mut self) {
        if self.wanted && self.view.is_none() && self.grant.is_none() && !self.closed {
            self.send(
                Kind::Grant,
                Command::LeaseGrant {
                    ttl_secs: self.cfg.ttl_secs(),
                },
            );
        }
    }

    /// The lease lives until `sent + ttl - drift`, `ttl` capped at what was asked.
    fn confirm(&mut self, sent: Instant, granted: Duration) {
        let ttl = granted.min(self.cfg.ttl);
        let until = sent + ttl.saturating_sub(self.cfg.drift_for(ttl));
        self.every = self
            .cfg
            .keepalive_every
            .min(ttl / 3)
            .max(Duration::from_millis(1));
        self.next_keepalive = sent + self.every;
        if let Some(v) = &mut self.view {
            v.until = v.until.max(until);
        }
    }

    fn keepalive_failed(&mut self) {
        self.epoch += 1;
        if let Some(v) = &mut self.view {
            v.epoch = self.epoch;
        }
        // Try again soon, well inside the remaining validity.
        self.next_keepalive = self.now + self.every / 4;
    }

    /// The lease is gone on the server, with every key on it.
    fn forget(&mut self) {
        self.view = None;
        self.keepalive = None;
        // Every key on the lease went with it.
        self.abandons.clear();
        self.abandoning = None;
        self.epoch += 1;
        self.maybe_grant();
    }

    fn advance(&mut self, now: Instant) {
        if now < self.now {
            // The clock stepped back: move every deadline back as much.
            let by = self.now - now;
            if let Some(v) = &mut self.view {
                v.until = v.until.rebase_back(by);
            }
            for p in [&mut self.grant, &mut self.keepalive, &mut self.abandoning]
                .into_iter()
                .flatten()
            {
                p.sent = p.sent.rebase_back(by);
                p.deadline = p.deadline.rebase_back(by);
            }
            self.next_keepalive = self.next_keepalive.rebase_back(by);
            self.abandon_at = self.abandon_at.rebase_back(by);
        }
        if self.abandoning.is_some_and(|a| now >= a.deadline) {
            self.abandoning = None;
            self.abandon_at = now;
        }
        self.now = now;
        if let Some(g) = self.grant.filter(|g| now >= g.deadline) {
            self.grant = None;
            self.give_up_grant(g.op);
        }
        if self.keepalive.is_some_and(|k| now >= k.deadline) {
            self.keepalive = None;
            self.keepalive_failed();
        }
        if self.view.is_some_and(|v| now >= v.until) && self.keepalive.is_none() {
            // Not known alive any more: it may have expired with its keys. Keep asking; a
            // keepalive that finds it gone forgets it.
            self.next_keepalive = self.next_keepalive.min(now);
        }
        if self.view.is_some()
            && self.keepalive.is_none()
            && now >= self.next_keepalive
            && !self.closed
        {
            if let Some(v) = self.view {
                self.send(Kind::KeepAlive, Command::KeepAlive { lease: v.lease });
            }
        }
        if let (Some(v), None, Some(key)) = (self.view, self.abandoning, self.abandons.front()) {
            if now >= self.abandon_at && !self.closed {
                let command = Command::Abandon {
                    guard: guard_of(key),
                    key: key.clone(),
                    lease: v.lease,
                };
                self.send(Kind::Abandon, command);
            }
        }
        self.maybe_grant();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EtcdConfig {
        EtcdConfig::builder()
            .ttl(Duration::from_secs(3))
            .build()
            .expect("valid")
    }

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn grants_once_keeps_alive_and_revokes_on_close() {
        let mut s = Session::new(&cfg(), 1);
        assert!(
            s.poll_transmit().is_none(),
            "no lease until a lock wants one"
        );
        s.want(at(0));
        s.want(at(1));
        let t = s.poll_transmit().expect("a grant");
        assert!(matches!(t.command, Command::LeaseGrant { ttl_secs: 3 }));
        assert!(s.poll_transmit().is_none(), "one grant for both");
        assert!(s.handle_reply(
            at(5),
            t.op,
            Reply::Lease {
                id: 7,
                ttl: Duration::from_secs(3)
            }
        ));
        let v = s.view().expect("a lease");
        // 3 s from the grant's send, less 10 000 ppm + 2 ms.
        assert_eq!(v.until, at(3000 - 32));
        assert_eq!(s.poll_timeout(), Some(at(1000)));
        s.handle_timeout(at(1000));
        let k = s.poll_transmit().expect("a keepalive");
        assert_eq!(k.command, Command::KeepAlive { lease: 7 });
        s.handle_reply(
            at(1002),
            k.op,
            Reply::KeepAlive {
                ttl: Duration::from_secs(3),
            },
        );
        assert_eq!(s.view().map(|v| v.until), Some(at(4000 - 32)));
        s.close(at(1500));
        assert_eq!(
            s.poll_transmit().map(|t| t.command),
            Some(Command::Revoke { lease: 7 })
        );
        assert!(s.view().is_none());
    }

    #[test]
    fn a_failed_keepalive_moves_the_epoch_and_a_lost_lease_is_granted_anew_when_wanted() {
        let mut s = Session::new(&cfg(), 2);
        s.want(at(0));
        let t = s.poll_transmit().expect("grant");
        s.handle_reply(
            at(1),
            t.op,
            Reply::Lease {
                id: 9,
                ttl: Duration::from_secs(3),
            },
        );
        s.handle_timeout(at(1000));
        let k = s.poll_transmit().expect("keepalive");
        s.handle_reply(at(1001), k.op, Reply::Unavailable("reset".into()));
        assert_eq!(s.view().map(|v| v.epoch), Some(1));
        s.handle_timeout(at(1300));
        let k = s.poll_transmit().expect("keepalive retried soon");
        s.handle_reply(at(1301), k.op, Reply::LeaseNotFound);
        assert!(s.view().is_none(), "gone with its keys");
        assert!(s.poll_transmit().is_none(), "no lock wants one yet");
        s.want(at(1400));
        assert!(matches!(
            s.poll_transmit().map(|t| t.command),
            Some(Command::LeaseGrant { .. })
        ));
    }

    #[test]
    fn a_grant_answered_after_it_was_given_up_is_revoked() {
        let mut s = Session::new(&cfg(), 3);
        s.want(at(0));
        let late = s.poll_transmit().expect("grant");
        // The request timeout (ttl/20 = 150 ms) passes: a second grant goes.
        s.handle_timeout(at(150));
        let next = s.poll_transmit().expect("grant again");
        assert!(matches!(next.command, Command::LeaseGrant { .. }));
        let lease = |id| Reply::Lease {
            id,
            ttl: Duration::from_secs(3),
        };
        assert!(s.handle_reply(at(160), late.op, lease(1)));
        assert_eq!(
            s.poll_transmit().map(|t| t.command),
            Some(Command::Revoke { lease: 1 }),
            "the late lease is revoked"
        );
        assert!(s.view().is_none());
        assert!(s.handle_reply(at(170), next.op, lease(2)));
        assert_eq!(s.view().map(|v| v.lease), Some(2));
        // A grant in flight at the close is revoked when it answers.
        let mut s = Session::new(&cfg(), 4);
        s.want(at(0));
        let t = s.poll_transmit().expect("grant");
        s.close(at(10));
        assert!(s.poll_transmit().is_none(), "nothing to revoke yet");
        assert!(s.handle_reply(at(20), t.op, lease(3)));
        assert_eq!(
            s.poll_transmit().map(|t| t.command),
            Some(Command::Revoke { lease: 3 })
        );
        assert!(s.view().is_none());
    }
}
