//! The client's view of an etcd cluster: [`ClusterClient`] is what the tokio adapter does
//! between the machine and the members of an [`EtcdCluster`], sans-IO. Each request goes to a
//! member chosen by lucky-core's [`Endpoints`] rule and is sent to the next member when one
//! fails (an "unavailable" answer, or silence past its share of the request timeout); a watch
//! stays on its member, is probed with a progress request after a request timeout of silence,
//! and ends "unavailable" when its member fails, so the machine reads the queue again
//! elsewhere. The machine inside is the real [`EtcdLock`]. [`EtcdClusterSim`] runs it.

use std::collections::{BTreeMap, VecDeque};

use lucky_core::endpoints::{Attempt, Endpoints, Resend};
use lucky_core::etcd::{Command, EtcdConfig, EtcdLock, Reply};
use lucky_core::time::nanos;
use lucky_core::{
    Duration, Instant, LockMachine, NodeId, OpId, Output, State, Transmit, UsageError,
};

use crate::rng::Rng;
use crate::scenario::{Injected, Runner, Setup};
use crate::world::Report;
use crate::Protocol;

use super::cluster::{EtcdCluster, Routed};
use super::lock::protocol;

/// One request of the machine on its way through the members.
#[derive(Clone, Debug)]
struct Try {
    /// The machine's op.
    inner: OpId,
    command: Command,
    attempt: Attempt,
    member: usize,
    /// This try (or, for a watch, its silence) ends here.
    until: Instant,
    watch: bool,
    /// A watch's progress request is out.
    asked: bool,
}

/// The etcd machine behind the fail-over rule of the adapter: see the module docs.
#[derive(Debug)]
pub struct ClusterClient {
    inner: EtcdLock,
    endpoints: Endpoints,
    /// The machine's request timeout: a request's tries fit in it; a watch is probed after
    /// this much silence.
    budget: Duration,
    /// Tries in flight, by the op of the current try (a watch: of the watch).
    tries: BTreeMap<OpId, Try>,
    /// Progress requests in flight: probe op -> watch op.
    probes: BTreeMap<OpId, OpId>,
    next_op: u64,
    out: VecDeque<Output<Routed>>,
}

impl ClusterClient {
    /// The machine `inner` reaching `members` members.
    pub fn new(inner: EtcdLock, cfg: &EtcdConfig, members: usize) -> ClusterClient {
        ClusterClient {
            inner,
            endpoints: Endpoints::new(members, cfg.ttl()),
            budget: cfg.op_timeout(),
            tries: BTreeMap::new(),
            probes: BTreeMap::new(),
            next_op: 0,
            out: VecDeque::new(),
        }
    }

    /// Turns on the deliberately wrong fail-over rule (`etcd-no-failover`).
    #[cfg(feature = "bugs")]
    pub fn inject_no_failover(&mut self) {
        self.endpoints.inject_no_failover();
    }

    fn transmit(&mut self, command: Routed) -> OpId {
        self.next_op += 1;
        let op = OpId(self.next_op);
        self.out.push_back(Output::Transmit(Transmit {
            node: NodeId(0),
            op,
            command,
        }));
        op
    }

    /// Moves the machine's outputs out: requests onto members, events to the caller.
    fn pump(&mut self, now: Instant) {
        while let Some(o) = self.inner.poll_output() {
            match o {
                Output::Event(e) => self.out.push_back(Output::Event(e)),
                Output::Transmit(t) => {
                    let watch = !t.command.resend_safe();
                    let attempt = self.endpoints.start(now, self.budget);
                    let t = Try {
                        inner: t.op,
                        command: t.command,
                        attempt,
                        member: 0,
                        until: now,
                        watch,
                        asked: false,
                    };
                    self.next_try(t, now);
                }
            }
        }
    }

    /// Sends `t` to its next member, or answers the machine "unavailable" when none is left.
    fn next_try(&mut self, mut t: Try, now: Instant) {
        if t.watch && t.attempt.tries() > 0 {
            // A watch is not resent: the machine reads the queue again first.
            return self.answer(t.inner, now, Reply::Unavailable("watch ended".into()));
        }
        match self.endpoints.next(&mut t.attempt, now) {
            Some((member, until)) => {
                t.member = member;
                t.until = if t.watch { now + self.budget } else { until };
                t.asked = false;
                let op = self.transmit(Routed::Etcd {
                    member,
                    command: t.command.clone(),
                });
                self.tries.insert(op, t);
            }
            None => self.answer(
                t.inner,
                now,
                Reply::Unavailable("no member answered in time".into()),
            ),
        }
    }

    fn answer(&mut self, op: OpId, now: Instant, reply: Reply) {
        self.inner.handle_reply(now, NodeId(0), op, reply);
        self.pump(now);
    }

    /// `member` failed a try: mark it, and end the watches it carries.
    fn member_failed(&mut self, member: usize, now: Instant) {
        self.endpoints.failed(member, now);
        let ended: Vec<OpId> = self
            .tries
            .iter()
            .filter(|(_, t)| t.watch && t.member == member)
            .map(|(op, _)| *op)
            .collect();
        for op in ended {
            self.probes.retain(|_, w| *w != op);
            if let Some(t) = self.tries.remove(&op) {
                self.answer(t.inner, now, Reply::Unavailable("member failed".into()));
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let due: Vec<OpId> = self
            .tries
            .iter()
            .filter(|(_, t)| t.until <= now)
            .map(|(op, _)| *op)
            .collect();
        for op in due {
            let Some(mut t) = self.tries.remove(&op) else {
                continue;
            };
            if t.watch && !t.asked {
                // Silent for a request timeout: ask the member for progress.
                t.asked = true;
                t.until = now + self.budget;
                let probe = self.transmit(Routed::Progress { member: t.member });
                self.probes.insert(probe, op);
                self.tries.insert(op, t);
                continue;
            }
            // A try (or a probed watch) left unanswered: the member failed.
            self.probes.retain(|_, w| *w != op);
            self.member_failed(t.member, now);
            self.next_try(t, now);
        }
    }
}

impl LockMachine for ClusterClient {
    type Command = Routed;
    type Reply = Reply;

    fn node_count(&self) -> usize {
        1
    }

    fn acquire(&mut self, now: Instant) -> Result<(), UsageError> {
        self.inner.acquire(now)?;
        self.pump(now);
        Ok(())
    }

    fn extend(&mut self, now: Instant) -> Result<(), UsageError> {
        self.inner.extend(now)?;
        self.pump(now);
        Ok(())
    }

    fn release(&mut self, now: Instant) -> Result<(), UsageError> {
        self.inner.release(now)?;
        self.pump(now);
        Ok(())
    }

    fn wake(&mut self, now: Instant) {
        self.inner.wake(now);
        self.pump(now);
    }

    fn handle_reply(&mut self, now: Instant, _node: NodeId, op: OpId, reply: Reply) -> bool {
        if let Some(watch) = self.probes.remove(&op) {
            let Some(t) = self.tries.get_mut(&watch) else {
                return false;
            };
            let member = t.member;
            if let Reply::Unavailable(_) = reply {
                self.member_failed(member, now);
            } else {
                // The member is alive: the watch goes on.
                t.asked = false;
                t.until = now + self.budget;
                self.endpoints.succeeded(member);
            }
            return true;
        }
        let Some(t) = self.tries.remove(&op) else {
            // A late answer to a try given up (its request went elsewhere): ignored.
            return false;
        };
        self.probes.retain(|_, w| *w != op);
        match reply {
            Reply::Unavailable(_) => {
                self.member_failed(t.member, now);
                self.next_try(t, now);
            }
            reply => {
                self.endpoints.succeeded(t.member);
                self.answer(t.inner, now, reply);
            }
        }
        self.expire(now);
        true
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
        self.pump(now);
        self.expire(now);
    }

    fn poll_output(&mut self) -> Option<Output<Routed>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mine = self.tries.values().map(|t| t.until).min();
        match (self.inner.poll_timeout(), mine) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn state(&self) -> State {
        self.inner.state()
    }
}

/// The etcd lock through the cluster view.
#[derive(Clone, Debug)]
pub struct EtcdClusterSim {
    /// The configuration every client uses.
    pub cfg: EtcdConfig,
    /// Members of the cluster.
    pub members: usize,
    /// The injected `fence-unchecked` bug: the resource accepts any fence.
    pub fence_unchecked: bool,
    /// The fail-over bug (`etcd-no-failover`) injected into every client.
    pub no_failover: bool,
}

impl Protocol for EtcdClusterSim {
    type Server = EtcdCluster;
    type Machine = ClusterClient;

    fn nodes(&self) -> usize {
        1
    }

    fn machine(&self, _client: usize, rng: &mut Rng) -> ClusterClient {
        // The name is valid by construction; a failure is a simulator bug.
        let m = EtcdLock::new(&self.cfg, b"lock", rng.next_u64()).expect("valid lock name");
        #[cfg_attr(not(feature = "bugs"), allow(unused_mut))]
        let mut c = ClusterClient::new(m, &self.cfg, self.members);
        #[cfg(feature = "bugs")]
        if self.no_failover {
            c.inject_no_failover();
        }
        c
    }

    fn server(&self, _node: usize) -> EtcdCluster {
        EtcdCluster::new(self.members, false)
    }

    fn ttl_ns(&self) -> u64 {
        nanos(self.cfg.ttl())
    }

    fn drift_ppm(&self) -> u32 {
        self.cfg.drift_ppm()
    }

    fn fence_unchecked(&self) -> bool {
        self.fence_unchecked
    }

    fn must_stay_available(&self) -> bool {
        true
    }
}

/// Runs a setup as the etcd lock through the client's view of a cluster of `members` members.
#[derive(Clone, Copy, Debug)]
pub struct ClusterRunner {
    /// Members of the cluster.
    pub members: usize,
}

impl Runner for ClusterRunner {
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report {
        let setup = super::lock::whole_seconds(setup);
        let etcd = protocol(&setup, false, bug);
        let cluster = EtcdClusterSim {
            cfg: etcd.cfg,
            members: self.members,
            fence_unchecked: etcd.fence_unchecked,
            no_failover: no_failover(bug),
        };
        setup.run_world(&cluster, seed)
    }
}

/// Whether `bug` is the fail-over bug, which lives in the client's endpoint rule rather than in
/// the machine.
fn no_failover(_bug: Option<Injected>) -> bool {
    #[cfg(feature = "bugs")]
    {
        use lucky_core::etcd::bugs::EtcdBug;
        Injected::machine(_bug).and_then(EtcdBug::from_name) == Some(EtcdBug::NoFailover)
    }
    #[cfg(not(feature = "bugs"))]
    false
}
