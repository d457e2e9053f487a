//! One session lease per client (per lease configuration) shared by its locks, as etcd's own
//! `concurrency.Session`: the lucky-core [`Session`] machine runs in a task of its own
//! ([`SessionHost`]), and each lock's [`EtcdLock::in_session`] runs inside [`SharedLock`],
//! which tells it every change of the session's lease and hands the session what the lock
//! reports (a lease found gone, keys to clean up, the need for a lease). Keepalive traffic is
//! one request per interval per client, whatever the number of locks.
//!
//! A lock learns of changes through one long-poll per lock: a request its transport answers
//! when the session's lease differs from what the lock was last told (a first lease, a later
//! expiry, a lost lease), or when the lock is done.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use lucky_core::etcd::{Command, EtcdConfig, EtcdLock, Reply, Session, SessionView};
use lucky_core::{Instant, LockMachine, NodeId, OpId, Output, State, Transmit, UsageError};

use super::transport::{Changes, Cluster, Told, LONG_POLL};
use crate::clock::Clock;

/// The session of one lease configuration, run by a task of its own.
pub(super) struct SessionHost {
    session: Mutex<Session>,
    /// The session's lease as published, and the locks' long-polls waiting for a change.
    published: Mutex<Published>,
    /// Wakes the session's task (a lock needs a lease, a clean-up to send, a reply).
    wake: Arc<tokio::sync::Notify>,
    cluster: Arc<Cluster>,
    clock: Clock,
    op_timeout: Duration,
    /// Numbers of this session's locks (part of their keys).
    next_lock: AtomicU64,
}

/// The session's lease as last published: one waker per waiting long-poll instead of a
/// watch channel's pending future in each (a held lock keeps its long-poll for hours).
#[derive(Default)]
struct Published {
    view: Option<SessionView>,
    /// Changes published so far.
    epoch: u64,
    /// The long-polls to wake at the next change.
    waiting: Vec<std::task::Waker>,
    /// Places in `waiting` whose long-poll ended before the change: reused, so that locks
    /// taken and released between two changes do not grow the list.
    free: Vec<usize>,
}

impl std::fmt::Debug for SessionHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHost")
            .field("view", &self.published().view)
            .finish_non_exhaustive()
    }
}

impl SessionHost {
    /// A session for locks of `cfg`, with its task running.
    pub(super) fn start(cfg: &EtcdConfig, cluster: Arc<Cluster>, clock: Clock) -> Arc<Self> {
        let host = Arc::new(SessionHost {
            // The session's answers come back to it alone (its own task sends its requests),
            // never to a lock: any op-id range will do.
            session: Mutex::new(Session::new(cfg, 0)),
            published: Mutex::default(),
            wake: Arc::default(),
            cluster,
            clock,
            op_timeout: cfg.op_timeout(),
            next_lock: AtomicU64::new(1),
        });
        tokio::spawn(run(Arc::downgrade(&host)));
        host
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request timeout of its locks.
    pub(super) fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// A number for a new lock of this session.
    pub(super) fn lock_id(&self) -> u64 {
        self.next_lock.fetch_add(1, Ordering::Relaxed)
    }

    /// Applies `f` to the session now, then wakes its task if `f` fed it (returned true) or it
    /// has commands to send. The clock is read under the session's lock, so the session never
    /// sees time go back.
    fn with(&self, f: impl FnOnce(&mut Session, Instant) -> bool) {
        let mut s = self.session();
        let now = self.clock.now();
        let fed = f(&mut s, now);
        self.publish(&s);
        let wake = fed || s.has_transmit();
        drop(s);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Publishes the session's view. Called with the session locked, so views are published
    /// in the order the session produced them (a stale one never overwrites a newer one).
    fn publish(&self, s: &Session) {
        let v = s.view();
        let waiting = {
            let mut p = self.published();
            if p.view == v {
                return;
            }
            p.view = v;
            p.epoch += 1;
            p.free.clear();
            std::mem::take(&mut p.waiting)
        };
        for w in waiting {
            w.wake();
        }
    }

    fn published(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Changes for SessionHost {
    fn poll_changed(
        &self,
        seen: &Option<SessionView>,
        at: &mut Option<(u64, usize)>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let mut p = self.published();
        if p.view != *seen {
            return std::task::Poll::Ready(());
        }
        match *at {
            Some((epoch, i)) if epoch == p.epoch && i < p.waiting.len() => {
                if !p.waiting[i].will_wake(cx.waker()) {
                    p.waiting[i] = cx.waker().clone();
                }
            }
            _ => {
                let i = match p.free.pop() {
                    Some(i) => {
                        p.waiting[i] = cx.waker().clone();
                        i
                    }
                    None => {
                        p.waiting.push(cx.waker().clone());
                        p.waiting.len() - 1
                    }
                };
                *at = Some((p.epoch, i));
            }
        }
        std::task::Poll::Pending
    }

    fn forget(&self, at: (u64, usize)) {
        let mut p = self.published();
        let (epoch, i) = at;
        if epoch == p.epoch && i < p.waiting.len() {
            p.waiting[i] = std::task::Waker::noop().clone();
            p.free.push(i);
        }
    }
}

impl SessionHost {
    /// Ends the session: revokes its lease (every key on it goes). Waits for the answer.
    pub(super) async fn close(&self) -> bool {
        let revoke = {
            let mut s = self.session();
            let now = self.clock.now();
            s.close(now);
            self.publish(&s);
            let mut out = Vec::new();
            while let Some(t) = s.poll_transmit() {
                out.push(t.command);
            }
            out
        };
        let mut all = true;
        for command in revoke {
            all &= matches!(
                self.cluster.request(command, self.op_timeout).await,
                Reply::Done | Reply::LeaseNotFound
            );
        }
        all
    }
}

/// The session's task: sends what the session emits, feeds it the answers, publishes its
/// lease, sleeps until its next deadline or a wake. Ends once the client and its locks are
/// gone (the lease then runs out on the server within its ttl).
async fn run(host: Weak<SessionHost>) {
    loop {
        let Some(h) = host.upgrade() else { return };
        let (sends, next) = {
            let mut s = h.session();
            s.handle_timeout(h.clock.now());
            h.publish(&s);
            let mut sends = Vec::new();
            while let Some(t) = s.poll_transmit() {
                sends.push(t);
            }
            (sends, s.poll_timeout())
        };
        for t in sends {
            let weak = host.clone();
            let cluster = h.cluster.clone();
            let budget = h.op_timeout;
            let token = cluster.tasks.enter();
            tokio::spawn(async move {
                let reply = cluster.request(t.command, budget).await;
                if let Some(h) = weak.upgrade() {
                    h.with(|s, now| s.handle_reply(now, t.op, reply));
                }
                drop(token);
            });
        }
        let wake = h.wake.clone();
        let sleep_to = next.map(|t| h.clock.to_tokio(t));
        drop(h);
        let woken = wake.notified();
        match sleep_to {
            Some(at) => {
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => {
                // Nothing due: wake on a lock's request, and look again now and then (the
                // client may be gone).
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// A lock on its client's session: the machine the driver runs.
#[derive(Debug)]
pub(super) struct SharedLock {
    lock: EtcdLock,
    host: Arc<SessionHost>,
    told: Arc<Told>,
    /// The long-poll in flight.
    asking: Option<OpId>,
    next_op: u64,
    out: VecDeque<Output<Command>>,
}

impl SharedLock {
    pub(super) fn new(lock: EtcdLock, host: Arc<SessionHost>, told: Arc<Told>) -> SharedLock {
        SharedLock {
            lock,
            host,
            told,
            asking: None,
            // Far from the lock's own op ids (drawn from its seed).
            next_op: 0xE7CD_5E55_0000_0000,
            out: VecDeque::new(),
        }
    }

    /// Passes what the lock has for the session and the session's lease to the lock; keeps
    /// a long-poll in flight while the lock is active.
    fn sync(&mut self, now: Instant) {
        // Under the session's lock (the session's view and what the lock was told move
        // together), each machine on its own clock reading.
        let (lock, told) = (&mut self.lock, &self.told);
        self.host.with(|s, t| {
            let mut seen = told.view.lock().unwrap_or_else(|e| e.into_inner());
            s.link(t, lock, now, &mut seen)
        });
        let active = !matches!(self.lock.state(), State::Idle | State::Done);
        if !active {
            self.told.finished.store(true, Ordering::Release);
            let waker = self
                .told
                .waker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(w) = waker {
                w.wake();
            }
        } else if self.asking.is_none() {
            self.told.finished.store(false, Ordering::Release);
            self.next_op = self.next_op.wrapping_add(1);
            let op = OpId(self.next_op);
            self.asking = Some(op);
            self.out.push_back(Output::Transmit(Transmit {
                node: NodeId(0),
                op,
                // Answered by the transport when the session's lease changes (see `Route`).
                command: Command::KeepAlive { lease: LONG_POLL },
            }));
        }
    }
}

impl LockMachine for SharedLock {
    type Command = Command;
    type Reply = Reply;

    fn node_count(&self) -> usize {
        1
    }

    fn acquire(&mut self, now: Instant) -> Result<(), UsageError> {
        let r = self.lock.acquire(now);
        self.sync(now);
        r
    }

    fn extend(&mut self, now: Instant) -> Result<(), UsageError> {
        // The session keeps the lease alive: an extension is what it last confirmed.
        let r = self.lock.extend(now);
        self.sync(now);
        r
    }

    fn release(&mut self, now: Instant) -> Result<(), UsageError> {
        let r = self.lock.release(now);
        self.sync(now);
        r
    }

    fn wake(&mut self, now: Instant) {
        self.lock.wake(now);
        self.sync(now);
    }

    fn handle_reply(&mut self, now: Instant, node: NodeId, op: OpId, reply: Reply) -> bool {
        if self.asking == Some(op) {
            self.asking = None;
            self.sync(now);
            return true;
        }
        let used = self.lock.handle_reply(now, node, op, reply);
        self.sync(now);
        used
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.sync(now);
        self.lock.handle_timeout(now);
        self.sync(now);
    }

    fn poll_output(&mut self) -> Option<Output<Command>> {
        self.out.pop_front().or_else(|| self.lock.poll_output())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.lock.poll_timeout()
    }

    fn state(&self) -> State {
        self.lock.state()
    }

    fn release_channel(&self) -> Option<Bytes> {
        self.lock.release_channel()
    }

    fn renews_while_held(&self) -> bool {
        // The long-poll must be read while held: it carries the session's extensions.
        true
    }

    fn held_key(&self) -> Option<Bytes> {
        self.lock.held_key()
    }

    fn shrink(&mut self) {
        self.lock.shrink();
        self.out.shrink_to_fit();
    }
}
