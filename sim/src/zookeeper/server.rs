//! A model of a ZooKeeper ensemble as the lock recipe meets it: one data tree (the leader's),
//! sessions expiring on the leader's clock (`last leader touch + timeout`, never sooner),
//! ephemeral nodes deleted with their session, a per-parent signed 32-bit sequence counter
//! that wraps, one-shot deletion watches, and a zxid for every write.
//!
//! Clients may reach it through a **follower** (`via_follower`): a request then touches its
//! session on the follower only, and the follower passes its touches to the leader every
//! half tick, in its answer to the leader's ping. A follower cut off from the leader
//! ([`MemberState::NoLeader`]) keeps answering reads for `sync_limit` ticks while its
//! touches are lost and its writes hang; then it drops its clients, which reconnect to
//! another server (the leader's view, where an expired session stays expired).

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use lucky_core::zookeeper::{Command, Reply, Session};
use lucky_core::Duration;

use crate::world::MemberState;
use crate::Server;

/// A command of one client, tagged with the client's current session (client number and
/// generation: a client whose session expired connects anew with the next generation).
#[derive(Clone, Debug)]
pub struct ZkCommand {
    /// The session the driver sends on.
    pub session: u64,
    /// The request.
    pub command: Command,
}

#[derive(Clone, Debug)]
struct Sess {
    id: i64,
    /// Leader-clock time of the last touch the leader heard.
    touched: u64,
    expired: bool,
}

#[derive(Clone, Debug)]
struct Node {
    czxid: i64,
    owner: i64,
}

/// The ensemble's state. Time is the leader's clock, in nanoseconds.
#[derive(Clone, Debug)]
pub struct ZkEnsemble {
    timeout_ns: u64,
    tick_ns: u64,
    sync_limit: u64,
    via_follower: bool,
    /// The follower is cut off from the leader since this time.
    cut_since: Option<u64>,
    /// Touches the follower has not passed on yet: session tag -> time.
    pending: BTreeMap<u64, u64>,
    next_flush: u64,
    sessions: BTreeMap<u64, Sess>,
    next_session: i64,
    /// path -> node (the lock directories' children).
    nodes: BTreeMap<Bytes, Node>,
    /// Next sequence number per directory.
    seq: BTreeMap<Bytes, i32>,
    first_seq: i32,
    zxid: i64,
    /// Watches: (kept id, path).
    watches: Vec<(u64, Bytes)>,
    /// Most directory watches one deletion fired (more than one: a herd).
    max_woken: usize,
    fired: Vec<(u64, Reply)>,
}

impl ZkEnsemble {
    /// An ensemble granting sessions of `timeout_ns`, with the given tick and syncLimit;
    /// `via_follower`: clients talk to a follower; `first_seq`: every directory's first
    /// sequence number (near `i32::MAX` to wrap within a run).
    pub fn new(
        timeout_ns: u64,
        tick_ns: u64,
        sync_limit: u64,
        via_follower: bool,
        first_seq: i32,
    ) -> ZkEnsemble {
        ZkEnsemble {
            timeout_ns,
            tick_ns,
            sync_limit,
            via_follower,
            cut_since: None,
            pending: BTreeMap::new(),
            next_flush: 0,
            sessions: BTreeMap::new(),
            next_session: 0x100,
            nodes: BTreeMap::new(),
            seq: BTreeMap::new(),
            first_seq,
            zxid: 1,
            watches: Vec::new(),
            max_woken: 0,
            fired: Vec::new(),
        }
    }

    /// Whether the follower still serves its clients (not cut off for `sync_limit` ticks).
    fn follower_serves(&self, now: u64) -> bool {
        self.cut_since
            .is_none_or(|t| now < t + self.sync_limit * self.tick_ns)
    }

    /// Requests go through the follower now (it is configured, and has not dropped us).
    fn through_follower(&self, now: u64) -> bool {
        self.via_follower && self.follower_serves(now)
    }

    fn session(&mut self, now: u64, tag: u64) -> &mut Sess {
        let next = &mut self.next_session;
        self.sessions.entry(tag).or_insert_with(|| {
            // A connect: the leader creates (and so touches) the session.
            *next += 1;
            Sess {
                id: *next,
                touched: now,
                expired: false,
            }
        })
    }

    fn touch(&mut self, now: u64, tag: u64) {
        if self.through_follower(now) {
            if self.cut_since.is_none() {
                self.pending.insert(tag, now);
            }
        } else if let Some(s) = self.sessions.get_mut(&tag) {
            s.touched = s.touched.max(now);
        }
    }

    fn delete(&mut self, path: &Bytes) -> bool {
        if self.nodes.remove(path).is_none() {
            return false;
        }
        self.zxid += 1;
        // A watch on the node, or on its directory (a children watch), fires.
        let dir = &path[..path.iter().rposition(|b| *b == b'/').unwrap_or(0)];
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .watches
            .drain(..)
            .partition(|(_, p)| p == path || p[..] == *dir);
        self.watches = kept;
        // Stale watches on the same node (a waiter that relisted, or gave up) are not a
        // herd; watches on the whole directory, all woken at once, are.
        let dir_watches = gone.iter().filter(|(_, p)| p[..] == *dir).count();
        self.max_woken = self.max_woken.max(dir_watches);
        for (id, _) in gone {
            self.fired.push((id, Reply::Deleted));
        }
        true
    }

    fn expire(&mut self, now: u64) {
        let due: Vec<(u64, i64)> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.expired && now >= s.touched + self.timeout_ns)
            .map(|(t, s)| (*t, s.id))
            .collect();
        for (tag, id) in due {
            if let Some(s) = self.sessions.get_mut(&tag) {
                s.expired = true;
            }
            let paths: Vec<Bytes> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.owner == id)
                .map(|(p, _)| p.clone())
                .collect();
            for p in paths {
                self.delete(&p);
            }
        }
    }

    /// The leader's ping to the follower, every half tick: the follower's answer carries
    /// its touches (each counted from when the follower made it, the earliest the leader
    /// could apply it).
    fn flush(&mut self, now: u64) {
        if !self.via_follower || now < self.next_flush {
            return;
        }
        let half = (self.tick_ns / 2).max(1);
        self.next_flush = (now / half + 1) * half;
        if self.cut_since.is_some() {
            return;
        }
        for (tag, t) in std::mem::take(&mut self.pending) {
            if let Some(s) = self.sessions.get_mut(&tag) {
                s.touched = s.touched.max(t);
            }
        }
    }

    fn session_of(&self, tag: u64) -> Session {
        Session {
            id: self.sessions.get(&tag).map_or(0, |s| s.id),
            timeout: Duration::from_nanos(self.timeout_ns),
            until: None,
        }
    }

    fn is_write(c: &Command) -> bool {
        matches!(c, Command::Create { .. } | Command::Delete { .. })
    }

    fn exec(&mut self, tag: u64, command: &Command, id: u64) -> Option<Reply> {
        let s = self.session_of(tag);
        let children = |nodes: &BTreeMap<Bytes, Node>, dir: &Bytes| -> Vec<Bytes> {
            nodes
                .keys()
                .filter(|p| p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/')
                .map(|p| p.slice(dir.len() + 1..))
                .collect()
        };
        Some(match command {
            Command::Create { dir, prefix } => {
                let seq = self.seq.entry(dir.clone()).or_insert(self.first_seq);
                let n = *seq;
                *seq = seq.wrapping_add(1);
                let mut path = BytesMut::new();
                path.put_slice(dir);
                path.put_u8(b'/');
                path.put_slice(prefix);
                path.put_slice(format!("{n:010}").as_bytes());
                let path = path.freeze();
                self.zxid += 1;
                self.nodes.insert(
                    path.clone(),
                    Node {
                        czxid: self.zxid,
                        owner: s.id,
                    },
                );
                Reply::Created {
                    path,
                    czxid: self.zxid,
                    session: s,
                }
            }
            Command::Children { dir, .. } => Reply::Children {
                names: children(&self.nodes, dir),
                session: s,
            },
            Command::Stat { path } => match self.nodes.get(path) {
                Some(n) => Reply::Stat {
                    czxid: n.czxid,
                    ephemeral_owner: n.owner,
                    session: s,
                },
                None => Reply::NoNode,
            },
            Command::WaitDelete { path } => {
                let is_dir = self
                    .nodes
                    .keys()
                    .any(|p| p.len() > path.len() && p.starts_with(path) && p[path.len()] == b'/');
                if self.nodes.contains_key(path) || is_dir {
                    self.watches.push((id, path.clone()));
                    return None;
                }
                Reply::Deleted
            }
            Command::Delete { path } => {
                if self.delete(path) {
                    Reply::Done
                } else {
                    Reply::NoNode
                }
            }
        })
    }
}

impl Server for ZkEnsemble {
    type Command = ZkCommand;
    type Reply = Reply;

    fn apply(&mut self, now: u64, command: &ZkCommand) -> Reply {
        self.submit(now, command, u64::MAX)
            .unwrap_or_else(|| Reply::Unavailable("no answer".into()))
    }

    fn submit(&mut self, now: u64, command: &ZkCommand, id: u64) -> Option<Reply> {
        self.tick(now);
        let tag = command.session;
        if self.sessions.get(&tag).is_some_and(|s| s.expired) {
            return Some(Reply::SessionExpired);
        }
        if self.via_follower && self.cut_since.is_some() && self.follower_serves(now) {
            // The follower still answers reads from its (now stale) tree; writes hang.
            if ZkEnsemble::is_write(&command.command) {
                return None;
            }
        }
        self.session(now, tag);
        self.touch(now, tag);
        self.exec(tag, &command.command, id)
    }

    fn fired(&mut self, out: &mut Vec<(u64, Reply)>) {
        out.append(&mut self.fired);
    }

    fn next_timer(&self) -> Option<u64> {
        let expiry = self
            .sessions
            .values()
            .filter(|s| !s.expired)
            .map(|s| s.touched + self.timeout_ns)
            .min();
        let flush = (!self.pending.is_empty()).then_some(self.next_flush);
        match (expiry, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn tick(&mut self, now: u64) {
        self.flush(now);
        self.expire(now);
    }

    /// Waiters must watch only their predecessor: one deletion waking several is a herd.
    fn check_at_end(&self, node: usize, found: &mut Vec<crate::oracle::Violation>) {
        if self.max_woken > 1 {
            found.push(crate::oracle::Violation::Herd {
                node,
                woken: self.max_woken,
            });
        }
    }

    fn forget_kept(&mut self) {
        self.watches.clear();
    }

    fn wipe(&mut self) {
        // ZooKeeper keeps its data on disk; the scenarios never wipe it.
        self.nodes.clear();
        self.sessions.clear();
        self.pending.clear();
        self.watches.clear();
    }

    fn live_keys(&self, now: u64) -> usize {
        self.nodes
            .values()
            .filter(|n| {
                self.sessions
                    .values()
                    .any(|s| s.id == n.owner && !s.expired && now < s.touched + self.timeout_ns)
            })
            .count()
    }

    fn unavailable() -> Reply {
        Reply::Unavailable("connection refused".into())
    }

    fn member(&mut self, now: u64, _member: usize, state: MemberState) {
        self.tick(now);
        match state {
            MemberState::NoLeader | MemberState::Silent | MemberState::Down => {
                if self.cut_since.is_none() {
                    self.cut_since = Some(now);
                    self.pending.clear();
                }
            }
            MemberState::Up => self.cut_since = None,
        }
    }

    fn heal_members(&mut self, now: u64) {
        self.member(now, 0, MemberState::Up);
    }
}
