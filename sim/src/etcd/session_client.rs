//! The etcd lock on a shared session lease in the simulator: the real lucky-core
//! [`EtcdLock::in_session`] and [`Session`] driven together as Lucky's adapter drives them
//! (the session grants when a lock wants a lease, keeps it alive on its own, hears of a lease
//! a lock found gone; the lock is told every change of the session's lease), against the
//! same [`EtcdNode`] cluster model as the lock with a lease of its own. The locks of one
//! simulated process (several names per client) share its one session, as an adapter's do.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use lucky_core::etcd::{Command, EtcdLock, Reply, Session, SessionView};
use lucky_core::{Instant, LockMachine, NodeId, OpId, Output, State, UsageError};

use crate::rng::Rng;
use crate::scenario::{Injected, Runner, Setup};
use crate::world::Report;
use crate::{Protocol, Slot};

use super::lock::{protocol, whole_seconds, EtcdSim};
use super::EtcdNode;

/// One lock of a client process, on the process's session.
#[derive(Debug)]
pub struct SessionClient {
    session: Rc<RefCell<Session>>,
    /// Whether this lock's timer also runs the session's (the process's first lock does).
    drives: bool,
    lock: EtcdLock,
    /// The view the lock was last told.
    told: Option<SessionView>,
    out: VecDeque<Output<Command>>,
}

impl SessionClient {
    /// Passes what each side has for the other, then collects what both send.
    fn sync(&mut self, now: Instant) {
        let mut session = self.session.borrow_mut();
        session.link(now, &mut self.lock, now, &mut self.told);
        while let Some(t) = session.poll_transmit() {
            self.out.push_back(Output::Transmit(t));
        }
    }

    /// Catches up with what the process's other locks changed in the session: whether it
    /// now has outputs or a new view (which may move its timer).
    fn catch_up(&mut self, now: Instant) -> bool {
        let told = self.told;
        // The time first, as any input brings it: a lock of a process that resumes from a
        // pause must see its deadline passed before anyone reads its state (its own timer
        // may come later at the same instant, behind a sibling's input).
        let was = self.lock.state();
        self.lock.handle_timeout(now);
        self.sync(now);
        let moved = self.lock.state() != was;
        while let Some(o) = self.lock.poll_output() {
            self.out.push_back(o);
        }
        moved || told != self.told || !self.out.is_empty()
    }
}

impl LockMachine for SessionClient {
    type Command = Command;
    type Reply = Reply;

    fn node_count(&self) -> usize {
        1
    }

    fn acquire(&mut self, now: Instant) -> Result<(), UsageError> {
        self.session.borrow_mut().handle_timeout(now);
        let r = self.lock.acquire(now);
        self.sync(now);
        r
    }

    fn extend(&mut self, now: Instant) -> Result<(), UsageError> {
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
        let session = self.session.borrow().owns(op);
        let used = if session {
            self.session.borrow_mut().handle_reply(now, op, reply)
        } else {
            self.lock.handle_reply(now, node, op, reply)
        };
        self.sync(now);
        used
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.session.borrow_mut().handle_timeout(now);
        self.sync(now);
        self.lock.handle_timeout(now);
        self.sync(now);
    }

    fn poll_output(&mut self) -> Option<Output<Command>> {
        if let Some(o) = self.out.pop_front() {
            return Some(o);
        }
        let o = self.lock.poll_output();
        if o.is_none() {
            let mut session = self.session.borrow_mut();
            while let Some(t) = session.poll_transmit() {
                self.out.push_back(Output::Transmit(t));
            }
            return self.out.pop_front();
        }
        o
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let session = self
            .drives
            .then(|| self.session.borrow().poll_timeout())
            .flatten();
        match (self.lock.poll_timeout(), session) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn state(&self) -> State {
        self.lock.state()
    }

    fn held_key(&self) -> Option<bytes::Bytes> {
        self.lock.held_key()
    }

    fn renews_while_held(&self) -> bool {
        false
    }
}

/// The etcd lock on a shared session lease, with a given configuration.
#[derive(Clone, Debug)]
pub struct EtcdSessionSim {
    /// The lock's configuration.
    pub sim: EtcdSim,
    /// Whether each lock takes its slot's own name (`lock-<n>`) rather than the one `lock`.
    pub many_names: bool,
}

impl Protocol for EtcdSessionSim {
    type Server = EtcdNode;
    type Machine = SessionClient;

    fn nodes(&self) -> usize {
        1
    }

    fn machine(&self, client: usize, rng: &mut Rng) -> SessionClient {
        let slot = Slot {
            client,
            name: 0,
            process: client,
        };
        let mut one = self.process_machines(&[slot], rng);
        one.pop().expect("one slot, one machine")
    }

    fn process_machines(&self, slots: &[Slot], rng: &mut Rng) -> Vec<SessionClient> {
        let cfg = &self.sim.cfg;
        let mut session: Option<Rc<RefCell<Session>>> = None;
        let mut out = Vec::with_capacity(slots.len());
        for s in slots {
            let name = if self.many_names {
                format!("lock-{}", s.name)
            } else {
                "lock".to_owned()
            };
            // The name is valid by construction; a failure is a simulator bug.
            let lock =
                EtcdLock::in_session(cfg, name.as_bytes(), s.client as u64 + 1, rng.next_u64())
                    .expect("valid lock name");
            let drives = session.is_none();
            let session = session
                .get_or_insert_with(|| Rc::new(RefCell::new(Session::new(cfg, rng.next_u64()))))
                .clone();
            out.push(SessionClient {
                session,
                drives,
                lock,
                told: None,
                out: VecDeque::new(),
            });
        }
        out
    }

    fn many_names(&self) -> bool {
        self.many_names
    }

    fn catch_up(&self, m: &mut SessionClient, now: Instant) -> bool {
        m.catch_up(now)
    }

    fn server(&self, node: usize) -> EtcdNode {
        self.sim.server(node)
    }

    fn ttl_ns(&self) -> u64 {
        self.sim.ttl_ns()
    }

    fn drift_ppm(&self) -> u32 {
        self.sim.drift_ppm()
    }

    fn fence_unchecked(&self) -> bool {
        self.sim.fence_unchecked()
    }
}

/// Runs a setup as the etcd lock on a shared session lease.
#[derive(Clone, Copy, Debug)]
pub struct EtcdSessionRunner;

impl Runner for EtcdSessionRunner {
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report {
        let setup = whole_seconds(setup);
        let sim = EtcdSessionSim {
            sim: protocol(&setup, false, bug),
            many_names: setup.work.names > 1,
        };
        setup.run_world(&sim, seed)
    }
}
