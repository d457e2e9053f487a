//! The etcd lock on a shared session lease in the simulator: the real lucky-core
//! [`EtcdLock::in_session`] and [`Session`] driven together as Lucky's adapter drives them
//! (the session grants when a lock wants a lease, keeps it alive on its own, hears of a lease
//! a lock found gone; the lock is told every change of the session's lease), against the
//! same [`EtcdNode`] cluster model as the lock with a lease of its own.

use std::collections::VecDeque;

use lucky_core::etcd::{Command, EtcdLock, Reply, Session, SessionView};
use lucky_core::{Instant, LockMachine, NodeId, OpId, Output, State, UsageError};

use crate::rng::Rng;
use crate::scenario::{Injected, Runner, Setup};
use crate::world::Report;
use crate::Protocol;

use super::lock::{protocol, whole_seconds, EtcdSim};
use super::EtcdNode;

/// A client: its session and one lock on it.
#[derive(Debug)]
pub struct SessionClient {
    session: Session,
    lock: EtcdLock,
    /// The view the lock was last told.
    told: Option<SessionView>,
    out: VecDeque<Output<Command>>,
}

impl SessionClient {
    /// Passes what each side has for the other, then collects what both send.
    fn sync(&mut self, now: Instant) {
        self.session.link(now, &mut self.lock, now, &mut self.told);
        while let Some(t) = self.session.poll_transmit() {
            self.out.push_back(Output::Transmit(t));
        }
    }
}

impl LockMachine for SessionClient {
    type Command = Command;
    type Reply = Reply;

    fn node_count(&self) -> usize {
        1
    }

    fn acquire(&mut self, now: Instant) -> Result<(), UsageError> {
        self.session.handle_timeout(now);
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
        let used = if self.session.owns(op) {
            self.session.handle_reply(now, op, reply)
        } else {
            self.lock.handle_reply(now, node, op, reply)
        };
        self.sync(now);
        used
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
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
            while let Some(t) = self.session.poll_transmit() {
                self.out.push_back(Output::Transmit(t));
            }
            return self.out.pop_front();
        }
        o
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.lock.poll_timeout(), self.session.poll_timeout()) {
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
pub struct EtcdSessionSim(pub EtcdSim);

impl Protocol for EtcdSessionSim {
    type Server = EtcdNode;
    type Machine = SessionClient;

    fn nodes(&self) -> usize {
        1
    }

    fn machine(&self, client: usize, rng: &mut Rng) -> SessionClient {
        let cfg = &self.0.cfg;
        // The name is valid by construction; a failure is a simulator bug.
        let lock = EtcdLock::in_session(cfg, b"lock", client as u64 + 1, rng.next_u64())
            .expect("valid lock name");
        SessionClient {
            session: Session::new(cfg, rng.next_u64()),
            lock,
            told: None,
            out: VecDeque::new(),
        }
    }

    fn server(&self, node: usize) -> EtcdNode {
        self.0.server(node)
    }

    fn ttl_ns(&self) -> u64 {
        self.0.ttl_ns()
    }

    fn drift_ppm(&self) -> u32 {
        self.0.drift_ppm()
    }

    fn fence_unchecked(&self) -> bool {
        self.0.fence_unchecked()
    }
}

/// Runs a setup as the etcd lock on a shared session lease.
#[derive(Clone, Copy, Debug)]
pub struct EtcdSessionRunner;

impl Runner for EtcdSessionRunner {
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report {
        let setup = whole_seconds(setup);
        setup.run_world(&EtcdSessionSim(protocol(&setup, false, bug)), seed)
    }
}
