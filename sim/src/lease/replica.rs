//! The lease store as a MongoDB replica set: a primary that applies writes at once, and the
//! majority-committed state that a failover keeps. A write commits once a secondary has it
//! (`lag` after the primary applied it, while a secondary is up); its answer waits for that
//! under `w: "majority"`, or comes at once under `w: 1` (the injected bug `mongo-w1`).
//! A write not committed within `wtimeout` is answered with a write-concern error: an unknown
//! outcome, for it stays applied on the primary and may still commit, or be rolled back.
//! Reads (inspect) are majority reads: they see the committed state only.
//!
//! Members: 0 is the primary (Down: it fails over; a secondary with every committed write
//! takes over, everything else is rolled back and the writes waiting for a majority are
//! answered with an error); 1 and 2 are the secondaries (Silent or Down: nothing commits
//! while both are away).

use std::collections::VecDeque;

use lucky_core::lease::{Command, Reply};

use super::store::LeaseStore;
use crate::world::MemberState;

/// How the replica set acknowledges writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// `w: "majority"`: once a secondary has the write too (Lucky's).
    Majority,
    /// `w: 1`: as soon as the primary applied it (bug `mongo-w1`).
    Primary,
}

/// A replica set's timing and acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Replication lag: a write commits this long after the primary applied it.
    pub lag_ns: u64,
    /// How long a write waits for a majority before its write-concern error.
    pub wtimeout_ns: u64,
    /// How writes are acknowledged.
    pub ack: Ack,
    /// Two takes of one new name this close (the second finds no document when it starts,
    /// and one already exists when it inserts): the loser's upsert fails with a duplicate
    /// key, and the adapter sends it again, which lands this much later.
    pub upsert_race_ns: u64,
    /// Commands are judged on clocks up to this far from the node's either way: a sharded
    /// cluster's mongos routers each set `$$NOW` from their own clock.
    pub clock_skew_ns: u64,
}

/// One write the primary applied that a majority has not confirmed yet.
#[derive(Clone, Debug)]
struct Entry {
    /// The primary's local time when it applied the write.
    at: u64,
    /// The time it was judged at (the routing mongos's clock): a replay judges it the same.
    judged: u64,
    command: Command,
    /// A write that changed nothing (held, not ours): under `w: "majority"` its answer still
    /// waits for the majority to reach the primary's latest write, but there is nothing to
    /// replay.
    noop: bool,
    /// The kept answer, while the client still waits for it: (id, reply).
    waiting: Option<(u64, Reply)>,
}

/// The replication state beside the primary's records.
#[derive(Clone, Debug)]
pub(super) struct Replicas {
    shape: Shape,
    /// What a majority has: what a failover keeps and majority reads see.
    committed: LeaseStore,
    /// Applied on the primary, not yet committed, oldest first.
    oplog: VecDeque<Entry>,
    /// Secondaries 1 and 2: up or away.
    secondary_up: [bool; 2],
    /// Answers due, for [`fired`](crate::Server::fired).
    due: Vec<(u64, Reply)>,
    /// Documents the primary created: name, creator, when (for the upsert race).
    created: Vec<(bytes::Bytes, bytes::Bytes, u64)>,
    /// Takes that lost an upsert race, sent again by the adapter: (local time it lands, id,
    /// command).
    resent: Vec<(u64, u64, Command)>,
    /// Upsert races seen (a scenario checks it produced them).
    pub(super) races: u64,
}

impl Replicas {
    pub(super) fn new(shape: Shape) -> Replicas {
        Replicas {
            shape,
            committed: LeaseStore::new(),
            oplog: VecDeque::new(),
            secondary_up: [true; 2],
            due: Vec::new(),
            created: Vec::new(),
            resent: Vec::new(),
            races: 0,
        }
    }

    /// Whether the take `command` at `now` lost an upsert race: another owner's take created
    /// the document less than the race window ago, so this one (sent as close) found none
    /// and its insert hit the duplicate key. Then it is kept, and lands again later.
    pub(super) fn lost_race(&mut self, now: u64, command: &Command, id: u64) -> bool {
        let Command::Take { name, owner, .. } = command else {
            return false;
        };
        let window = self.shape.upsert_race_ns;
        self.created.retain(|(_, _, at)| at + window > now);
        if self.created.iter().any(|(n, o, _)| n == name && o != owner) {
            self.races += 1;
            self.resent.push((now + window, id, command.clone()));
            return true;
        }
        false
    }

    /// The primary created the document of `name` for `owner` at `now`.
    pub(super) fn created(&mut self, now: u64, name: &bytes::Bytes, owner: &bytes::Bytes) {
        if self.shape.upsert_race_ns > 0 {
            self.created.push((name.clone(), owner.clone(), now));
        }
    }

    /// The resent takes due by `now`.
    pub(super) fn resent_due(&mut self, now: u64) -> Vec<(u64, Command)> {
        let mut due = Vec::new();
        self.resent.retain(|(at, id, c)| {
            if *at <= now {
                due.push((*id, c.clone()));
                false
            } else {
                true
            }
        });
        due
    }

    /// The clock offset of the router that judges command `id` (the same for one command).
    pub(super) fn skew(&self, id: u64) -> i64 {
        let span = self.shape.clock_skew_ns;
        if span == 0 {
            return 0;
        }
        // A fixed mix of the id: routers are picked per command, deterministically per run.
        let h = id.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        (h % (2 * span + 1)) as i64 - span as i64
    }

    fn replicating(&self) -> bool {
        self.secondary_up.iter().any(|&up| up)
    }

    /// A write the primary applied at `now` with answer `reply`: kept until it commits when
    /// the acknowledgement waits for a majority, else answered at once.
    pub(super) fn applied(
        &mut self,
        now: u64,
        judged: u64,
        command: &Command,
        reply: Reply,
        id: u64,
    ) -> Option<Reply> {
        let changed = matches!(
            reply,
            Reply::Granted { .. } | Reply::Renewed | Reply::Released
        );
        // A write that changed nothing waits only while earlier writes are uncommitted.
        let wait = self.shape.ack == Ack::Majority && (changed || !self.oplog.is_empty());
        if changed || wait {
            self.oplog.push_back(Entry {
                at: now,
                judged,
                command: command.clone(),
                noop: !changed,
                waiting: wait.then(|| (id, reply.clone())),
            });
        }
        (!wait).then_some(reply)
    }

    /// A majority read.
    pub(super) fn read(&mut self, now: u64, command: &Command) -> Reply {
        crate::Server::apply(&mut self.committed, now, command)
    }

    /// Commits what the secondaries have by `now`, and answers the writes that waited for
    /// them or waited past `wtimeout`.
    pub(super) fn tick(&mut self, now: u64) {
        if self.replicating() {
            while let Some(e) = self.oplog.front() {
                if e.at + self.shape.lag_ns > now {
                    break;
                }
                let Some(e) = self.oplog.pop_front() else {
                    break;
                };
                // The oplog replays in order, at the primary's time: the same outcome.
                if !e.noop {
                    crate::Server::apply(&mut self.committed, e.judged, &e.command);
                }
                if let Some(answer) = e.waiting {
                    self.due.push(answer);
                }
            }
        }
        for e in self.oplog.iter_mut() {
            if e.at + self.shape.wtimeout_ns <= now {
                if let Some((id, _)) = e.waiting.take() {
                    self.due.push((
                        id,
                        Reply::Unknown("write concern: waiting for replication timed out".into()),
                    ));
                }
            }
        }
    }

    /// The next local time something commits or times out.
    pub(super) fn next_timer(&self) -> Option<u64> {
        let commit = self
            .oplog
            .front()
            .filter(|_| self.replicating())
            .map(|e| e.at + self.shape.lag_ns);
        let timeout = self
            .oplog
            .iter()
            .filter(|e| e.waiting.is_some())
            .map(|e| e.at + self.shape.wtimeout_ns)
            .min();
        let resent = self.resent.iter().map(|(at, _, _)| *at).min();
        [commit, timeout, resent].into_iter().flatten().min()
    }

    /// An answer due now.
    pub(super) fn push_due(&mut self, id: u64, reply: Reply) {
        self.due.push((id, reply));
    }

    pub(super) fn fired(&mut self, out: &mut Vec<(u64, Reply)>) {
        out.append(&mut self.due);
    }

    /// The primary fails over at `now`: the secondary that wins the election has the
    /// writes older than half the lag (they survive, committed now), and the rest are rolled
    /// back. Every write still waiting for the majority is answered with an error, whether
    /// it survived or not: an unknown outcome. Returns the new primary's records.
    pub(super) fn fail_over(&mut self, now: u64) -> LeaseStore {
        let reached = now.saturating_sub(self.shape.lag_ns / 2);
        for e in self.oplog.drain(..) {
            if e.at <= reached && !e.noop {
                crate::Server::apply(&mut self.committed, e.judged, &e.command);
            }
            if let Some((id, _)) = e.waiting {
                self.due.push((
                    id,
                    Reply::Unknown("primary stepped down (InterruptedDueToReplStateChange)".into()),
                ));
            }
        }
        self.committed.clone()
    }

    /// Member `member` changes state; true when the primary failed over.
    pub(super) fn member(&mut self, member: usize, state: MemberState) -> bool {
        match (member, state) {
            (0, MemberState::Down | MemberState::NoLeader) => true,
            (1 | 2, s) => {
                self.secondary_up[member - 1] = s == MemberState::Up;
                false
            }
            _ => false,
        }
    }

    pub(super) fn heal(&mut self) {
        self.secondary_up = [true; 2];
    }

    /// Connections broke: nobody waits for the kept answers any more.
    pub(super) fn forget_kept(&mut self) {
        for e in self.oplog.iter_mut() {
            e.waiting = None;
        }
        self.due.clear();
        self.resent.clear();
    }

    pub(super) fn wipe(&mut self) {
        self.committed.wipe_records();
        self.oplog.clear();
        self.due.clear();
        self.created.clear();
        self.resent.clear();
    }
}
