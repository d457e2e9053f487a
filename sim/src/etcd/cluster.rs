//! The client's view of an etcd cluster: several members in front of one linearizable store.
//!
//! [`EtcdCluster`] is the cluster (the [`EtcdNode`] store, one World node) with members that
//! can be up, down (killed: connections refused, streams broken), silent (stopped, or cut
//! off from the client: requests and streams on it hang, and requests it queued are applied
//! when it comes back) or without a leader (partitioned from the leader: it answers
//! "no leader" and cancels its watches, as etcd does for clients that require a leader).
//!
//! [`ClusterClient`] is what the tokio adapter does between the machine and the members,
//! sans-IO: each request goes to a member chosen by lucky-core's
//! [`Endpoints`] rule and is sent to the next member when
//! one fails (an "unavailable" answer, or silence past its share of the request timeout); a
//! watch stays on its member, is probed with a progress request after a request timeout of
//! silence, and ends "unavailable" when its member fails, so the machine reads the queue
//! again elsewhere. The machine inside is the real [`EtcdLock`].

use std::collections::{BTreeMap, VecDeque};

use lucky_core::endpoints::{Attempt, Endpoints, Resend};
use lucky_core::etcd::{Command, EtcdConfig, EtcdLock, Reply};
use lucky_core::time::nanos;
use lucky_core::{
    Duration, Instant, LockMachine, NodeId, OpId, Output, State, Transmit, UsageError,
};

use crate::oracle::Violation;
use crate::rng::Rng;
use crate::scenario::{Injected, Runner, Setup};
use crate::world::{MemberState, Report};
use crate::{Protocol, Server};

use super::lock::protocol;
use super::EtcdNode;

/// A request as the client sends it: to one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// An etcd request for `member`.
    Etcd {
        /// The member.
        member: usize,
        /// The request.
        command: Command,
    },
    /// A watch progress request to `member` (is the member behind the watch alive?).
    Progress {
        /// The member.
        member: usize,
    },
}

impl Routed {
    fn member(&self) -> usize {
        match self {
            Routed::Etcd { member, .. } | Routed::Progress { member } => *member,
        }
    }
}

/// The cluster: one store, several members.
#[derive(Clone, Debug)]
pub struct EtcdCluster {
    store: EtcdNode,
    members: Vec<MemberState>,
    /// Requests a silent member received: (id, member, request), applied when it serves.
    queued: Vec<(u64, usize, Routed)>,
    /// Watches the store keeps, by id: the member carrying each.
    watch_member: BTreeMap<u64, usize>,
    fired: Vec<(u64, Reply)>,
}

impl EtcdCluster {
    /// A cluster of `members` members, all up.
    pub fn new(members: usize, compact_always: bool) -> EtcdCluster {
        let mut store = EtcdNode::new();
        store.compact_always = compact_always;
        EtcdCluster {
            store,
            members: vec![MemberState::Up; members.max(1)],
            queued: Vec::new(),
            watch_member: BTreeMap::new(),
            fired: Vec::new(),
        }
    }

    /// Ends the watches carried by `member`: answered `reply`, or never (None).
    fn end_watches(&mut self, member: usize, reply: Option<Reply>) {
        let ids: Vec<u64> = self
            .watch_member
            .iter()
            .filter(|(_, m)| **m == member)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.watch_member.remove(&id);
            self.store.drop_watch(id);
            if let Some(r) = &reply {
                self.fired.push((id, r.clone()));
            }
        }
    }

    fn serve(&mut self, now: u64, member: usize, routed: &Routed, id: u64) -> Option<Reply> {
        match routed {
            Routed::Progress { .. } => Some(Reply::Done),
            Routed::Etcd { command, .. } => {
                let r = self.store.submit(now, command, id);
                if r.is_none() {
                    self.watch_member.insert(id, member);
                }
                r
            }
        }
    }
}

impl Server for EtcdCluster {
    type Command = Routed;
    type Reply = Reply;

    fn apply(&mut self, now: u64, command: &Routed) -> Reply {
        self.submit(now, command, 0)
            .unwrap_or_else(|| Reply::Error("answered later".into()))
    }

    fn submit(&mut self, now: u64, command: &Routed, id: u64) -> Option<Reply> {
        self.store.tick(now);
        let m = command.member();
        match self.members.get(m).copied() {
            None | Some(MemberState::Down) => Some(Reply::Unavailable("connection refused".into())),
            Some(MemberState::NoLeader) => Some(Reply::Unavailable("etcdserver: no leader".into())),
            Some(MemberState::Silent) => {
                self.queued.push((id, m, command.clone()));
                None
            }
            Some(MemberState::Up) => self.serve(now, m, command, id),
        }
    }

    fn fired(&mut self, out: &mut Vec<(u64, Reply)>) {
        let mut fired = Vec::new();
        self.store.fired(&mut fired);
        for (id, r) in fired {
            self.watch_member.remove(&id);
            out.push((id, r));
        }
        out.append(&mut self.fired);
    }

    fn next_timer(&self) -> Option<u64> {
        self.store.next_timer()
    }

    fn tick(&mut self, now: u64) {
        self.store.tick(now);
    }

    fn forget_kept(&mut self) {
        self.store.forget_kept();
        self.watch_member.clear();
        self.queued.clear();
    }

    fn recovered(&mut self, now: u64) {
        self.store.recovered(now);
    }

    fn check_at_end(&self, node: usize, found: &mut Vec<Violation>) {
        self.store.check_at_end(node, found);
    }

    fn wipe(&mut self) {
        self.store.wipe();
        self.watch_member.clear();
        self.queued.clear();
    }

    fn live_keys(&self, now: u64) -> usize {
        self.store.live_keys(now)
    }

    fn unavailable() -> Reply {
        Reply::Unavailable("connection refused".into())
    }

    fn member(&mut self, now: u64, member: usize, state: MemberState) {
        let Some(old) = self.members.get(member).copied() else {
            return;
        };
        if old == state {
            return;
        }
        self.members[member] = state;
        match state {
            MemberState::Down => {
                // Its streams break; what it had queued dies with it.
                self.end_watches(member, Some(Reply::Unavailable("stream reset".into())));
                let (lost, kept) = self.queued.drain(..).partition(|q| q.1 == member);
                self.queued = kept;
                let lost: Vec<(u64, usize, Routed)> = lost;
                for (id, _, _) in lost {
                    self.fired
                        .push((id, Reply::Unavailable("connection reset".into())));
                }
            }
            MemberState::NoLeader => {
                self.end_watches(
                    member,
                    Some(Reply::Unavailable("etcdserver: no leader".into())),
                );
            }
            // A silent member's watches say nothing more.
            MemberState::Silent => self.end_watches(member, None),
            MemberState::Up => {
                // What it received meanwhile is applied now, late.
                let (mine, kept) = self.queued.drain(..).partition(|q| q.1 == member);
                self.queued = kept;
                let mine: Vec<(u64, usize, Routed)> = mine;
                for (id, m, routed) in mine {
                    self.store.tick(now);
                    if let Some(r) = self.serve(now, m, &routed, id) {
                        self.fired.push((id, r));
                    }
                }
            }
        }
    }

    fn heal_members(&mut self, now: u64) {
        for m in 0..self.members.len() {
            self.member(now, m, MemberState::Up);
        }
    }
}

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

    /// Turns on a deliberately wrong fail-over rule.
    pub fn inject_bug(&mut self, bug: lucky_core::bugs::Bug) {
        self.endpoints.inject_bug(bug);
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
    /// A fail-over bug injected into every client.
    pub bug: Option<lucky_core::bugs::Bug>,
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
        let mut c = ClusterClient::new(m, &self.cfg, self.members);
        if let Some(b) = self.bug {
            c.inject_bug(b);
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
        let etcd = protocol(setup, false, bug);
        let cluster = EtcdClusterSim {
            cfg: etcd.cfg,
            members: self.members,
            fence_unchecked: etcd.fence_unchecked,
            bug: Injected::machine(bug),
        };
        setup.run_world(&cluster, seed)
    }
}
