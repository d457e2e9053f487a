//! An etcd cluster as its clients see it: several members in front of one linearizable store.
//!
//! [`EtcdCluster`] is the cluster (the [`EtcdNode`] store, one World node) with members that
//! can be up, down (killed: connections refused, streams broken), silent (stopped, or cut
//! off from the client: requests and streams on it hang, and requests it queued are applied
//! when it comes back) or without a leader (partitioned from the leader: it answers
//! "no leader" and cancels its watches, as etcd does for clients that require a leader).
//!
//! A request names its member ([`Routed`]); the client side, which picks the member, is
//! [`ClusterClient`](super::cluster_client::ClusterClient).

use std::collections::BTreeMap;

use lucky_core::etcd::{Command, Reply};

use crate::oracle::Violation;
use crate::world::MemberState;
use crate::Server;

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
