//! The ZooKeeper lock in the simulator: the real lucky-core [`ZkLock`] driven as Lucky's
//! adapter drives it (one session per client, every answer fed to the session's
//! [`SessionProof`], a new session after expiry), against the [`ZkEnsemble`] model.

use std::collections::BTreeMap;

use bytes::Bytes;
use lucky_core::time::nanos;
#[cfg(feature = "bugs")]
use lucky_core::zookeeper::bugs::ZkBug;
use lucky_core::zookeeper::{Ensemble, Reply, SessionProof, ZkConfig, ZkLock};
use lucky_core::{
    Duration, Instant, LockMachine, NodeId, OpId, Output, State, Transmit, UsageError,
};

use crate::rng::Rng;
use crate::scenario::{Injected, Runner, Setup};
use crate::world::Report;
use crate::Protocol;

use super::server::{ZkCommand, ZkEnsemble};

/// The ensemble's shape in a run.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Clients talk to a follower.
    pub via_follower: bool,
    /// Every directory's first sequence number.
    pub first_seq: i32,
}

/// The ZooKeeper lock with a given configuration and ensemble shape.
#[derive(Clone, Debug)]
pub struct ZkSim {
    /// The configuration every client uses.
    pub cfg: ZkConfig,
    /// The ensemble's tick (ns) and syncLimit.
    pub tick_ns: u64,
    /// syncLimit, in ticks.
    pub sync_limit: u64,
    /// The ensemble's shape.
    pub shape: Shape,
    /// The injected `fence-unchecked` bug: the resource accepts any fence.
    pub fence_unchecked: bool,
}

/// A client: the lock machine and what its driver keeps (the session it sends on, the
/// proof of that session, when each request went out).
#[derive(Debug)]
pub struct ZkClient {
    lock: ZkLock,
    cfg: ZkConfig,
    tag: u64,
    session: Option<i64>,
    proof: Option<SessionProof>,
    sent: BTreeMap<OpId, Instant>,
    now: Instant,
}

impl ZkClient {
    fn patch(&mut self, sent: Instant, now: Instant, reply: Reply) -> Reply {
        let s = match &reply {
            Reply::Created { session, .. }
            | Reply::Children { session, .. }
            | Reply::Stat { session, .. } => Some(*session),
            Reply::SessionExpired => {
                // The driver connects anew: a fresh session, and a fresh proof.
                if self.session.take().is_some() {
                    self.tag += 1;
                }
                self.proof = None;
                return reply;
            }
            _ => None,
        };
        if let Some(s) = s {
            if self.session != Some(s.id) {
                self.session = Some(s.id);
                let mut p = self.cfg.proof(s.timeout);
                p.connected(sent);
                self.proof = Some(p);
            }
        }
        let Some(p) = &mut self.proof else {
            return reply;
        };
        if !matches!(reply, Reply::Unavailable(_) | Reply::Error(_)) {
            p.answered(sent, now);
        }
        let until = p.until();
        match reply {
            Reply::Created {
                path,
                czxid,
                mut session,
            } => {
                session.until = until;
                Reply::Created {
                    path,
                    czxid,
                    session,
                }
            }
            Reply::Children { names, mut session } => {
                session.until = until;
                Reply::Children { names, session }
            }
            Reply::Stat {
                czxid,
                ephemeral_owner,
                mut session,
            } => {
                session.until = until;
                Reply::Stat {
                    czxid,
                    ephemeral_owner,
                    session,
                }
            }
            other => other,
        }
    }

    fn clock(&mut self, now: Instant) {
        if now < self.now {
            if let Some(p) = &mut self.proof {
                p.rebase_back(self.now - now);
            }
            for t in self.sent.values_mut() {
                *t = t.rebase_back(self.now - now);
            }
        }
        self.now = now;
    }
}

impl LockMachine for ZkClient {
    type Command = ZkCommand;
    type Reply = Reply;
    fn node_count(&self) -> usize {
        1
    }
    fn acquire(&mut self, now: Instant) -> Result<(), UsageError> {
        self.clock(now);
        self.lock.acquire(now)
    }
    fn extend(&mut self, now: Instant) -> Result<(), UsageError> {
        self.clock(now);
        self.lock.extend(now)
    }
    fn release(&mut self, now: Instant) -> Result<(), UsageError> {
        self.clock(now);
        self.lock.release(now)
    }
    fn wake(&mut self, now: Instant) {
        self.clock(now);
        self.lock.wake(now);
    }
    fn handle_reply(&mut self, now: Instant, node: NodeId, op: OpId, reply: Reply) -> bool {
        self.clock(now);
        let Some(sent) = self.sent.remove(&op) else {
            return self.lock.handle_reply(now, node, op, reply);
        };
        let reply = self.patch(sent, now, reply);
        self.lock.handle_reply(now, node, op, reply)
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.clock(now);
        self.lock.handle_timeout(now);
    }
    fn poll_output(&mut self) -> Option<Output<ZkCommand>> {
        Some(match self.lock.poll_output()? {
            Output::Event(e) => Output::Event(e),
            Output::Transmit(t) => {
                self.sent.insert(t.op, self.now);
                if self.sent.len() > 256 {
                    // Ops whose answers never came (dropped): forget the oldest.
                    let first = *self.sent.keys().next().unwrap_or(&t.op);
                    self.sent.remove(&first);
                }
                Output::Transmit(Transmit {
                    node: t.node,
                    op: t.op,
                    command: ZkCommand {
                        session: self.tag,
                        command: t.command,
                    },
                })
            }
        })
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.lock.poll_timeout()
    }
    fn state(&self) -> State {
        self.lock.state()
    }
    fn renews_while_held(&self) -> bool {
        self.lock.renews_while_held()
    }
    fn held_key(&self) -> Option<Bytes> {
        self.lock.held_key()
    }
}

impl Protocol for ZkSim {
    type Server = ZkEnsemble;
    type Machine = ZkClient;

    fn nodes(&self) -> usize {
        1
    }

    fn machine(&self, client: usize, rng: &mut Rng) -> ZkClient {
        let mut token = [0u8; 16];
        token[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        token[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        // The name and token are valid by construction; a failure is a simulator bug.
        let lock =
            ZkLock::new(&self.cfg, b"lock", &token, rng.next_u64()).expect("valid lock name");
        ZkClient {
            lock,
            cfg: self.cfg.clone(),
            tag: (client as u64) << 16,
            session: None,
            proof: None,
            sent: BTreeMap::new(),
            now: Instant::ZERO,
        }
    }

    fn server(&self, _node: usize) -> ZkEnsemble {
        ZkEnsemble::new(
            nanos(self.cfg.session_timeout()),
            self.tick_ns,
            self.sync_limit,
            self.shape.via_follower,
            self.shape.first_seq,
        )
    }

    fn ttl_ns(&self) -> u64 {
        nanos(self.cfg.session_timeout())
    }

    fn drift_ppm(&self) -> u32 {
        self.cfg.drift_ppm()
    }

    fn fence_unchecked(&self) -> bool {
        self.fence_unchecked
    }
}

/// Runs a setup as the ZooKeeper lock against the ensemble model.
#[derive(Clone, Copy, Debug)]
pub struct ZkRunner {
    /// The ensemble's shape.
    pub shape: Shape,
}

impl Runner for ZkRunner {
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report {
        setup.run_world(&protocol(setup, self.shape, bug), seed)
    }
}

/// The ZooKeeper configuration of `s` (tick = ttl/10, syncLimit 2), with `bug` injected.
pub fn protocol(s: &Setup, shape: Shape, bug: Option<Injected>) -> ZkSim {
    let ttl = Duration::from_millis(s.ttl_ms);
    let tick = ttl / 10;
    let sync_limit = 2;
    let mut b = ZkConfig::builder()
        .ttl(ttl)
        .drift(s.drift_ppm, Duration::from_millis(2))
        .retry(s.retry)
        .wait(s.wait)
        .ensemble(if shape.via_follower {
            Ensemble::new(tick, sync_limit as u32, Duration::from_millis(5))
        } else {
            Ensemble::STANDALONE
        });
    if let Some(t) = s.op_timeout {
        b = b.op_timeout(t);
    }
    #[cfg(feature = "bugs")]
    if let Some(bug) = Injected::machine(bug).and_then(ZkBug::from_name) {
        b = b.inject_bug(bug);
    }
    let cfg = b.build().expect("scenario configurations are valid");
    ZkSim {
        cfg,
        tick_ns: nanos(tick),
        sync_limit,
        shape,
        fence_unchecked: bug == Some(Injected::FenceUnchecked),
    }
}
