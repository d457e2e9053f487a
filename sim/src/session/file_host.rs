//! A model of one host's file system and lock table for the file backend: paths naming
//! inodes, `flock` per inode held by an open file (a session), a fence file whose content is
//! durable only once written the durable way, and its mtime (the holder's heartbeat) on the
//! host's clock. Faults of its own, scheduled at construction: the lock file deleted or
//! replaced (an admin's clean-up, a deploy), and, for a network mount, two hosts whose lock
//! tables do not see each other (clients alternate between them).

use std::collections::BTreeMap;

use lucky_core::session::{Command, Reply, SessionId};
use lucky_core::time::nanos;

use crate::Server;

/// How the model's store behaves: Lucky's, or one of the injected store bugs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Delete the lock file on release.
    pub unlink_on_release: bool,
    /// Report the fence before it is durable (a crash loses it).
    pub fence_not_durable: bool,
}

#[derive(Clone, Debug)]
struct Open {
    ino: u64,
    /// Which host's lock table it locks in (a network mount has two).
    table: usize,
    ttl: u64,
}

/// The host. Time is its local clock, in nanoseconds.
#[derive(Clone, Debug)]
pub struct FileHost {
    quirks: Quirks,
    /// When the lock file is deleted (`true`) or replaced (`false`), in ns after the first
    /// command the host sees (its clock's origin is arbitrary).
    replace_after: Vec<(u64, bool)>,
    origin: Option<u64>,
    /// Lock tables: one, or two for a network mount whose locks are local to each host.
    tables: usize,
    next_ino: u64,
    next_session: SessionId,
    /// The inode the lock path names.
    path: Option<u64>,
    sessions: BTreeMap<SessionId, Open>,
    /// (table, inode) -> the session holding its flock.
    flocks: BTreeMap<(usize, u64), SessionId>,
    /// The fence file: durable `(fence, inode)`, and what a non-durable write left.
    durable: (u64, u64),
    cached: Option<(u64, u64)>,
    heartbeat: u64,
    /// Sessions opened so far, to spread them over the tables.
    opened: u64,
}

impl FileHost {
    /// A host with `tables` lock tables (2: a network mount), deleting or replacing the lock
    /// file as `replace_after` says (sorted by time), with the store's `quirks`.
    pub fn new(tables: usize, replace_after: Vec<(u64, bool)>, quirks: Quirks) -> FileHost {
        FileHost {
            quirks,
            replace_after,
            origin: None,
            tables: tables.max(1),
            next_ino: 100,
            next_session: 0,
            path: None,
            sessions: BTreeMap::new(),
            flocks: BTreeMap::new(),
            durable: (0, 0),
            cached: None,
            heartbeat: 0,
            opened: 0,
        }
    }

    fn fence_file(&self) -> (u64, u64) {
        self.cached.unwrap_or(self.durable)
    }

    fn new_inode(&mut self) -> u64 {
        self.next_ino += 1;
        self.next_ino
    }

    fn unlock_all(&mut self, session: SessionId) {
        self.flocks.retain(|_, s| *s != session);
    }

    fn lock(&mut self, now: u64, session: SessionId) -> Reply {
        let Some(o) = self.sessions.get(&session).cloned() else {
            return Reply::Unavailable("closed".into());
        };
        match self.flocks.get(&(o.table, o.ino)) {
            Some(s) if *s != session => return Reply::Busy,
            _ => {}
        }
        self.flocks.insert((o.table, o.ino), session);
        let current = self.path.unwrap_or(0);
        let (fence, recorded) = self.fence_file();
        // A replaced lock file: its old holder may trust the old one until a ttl after its
        // last heartbeat.
        let replaced = current == o.ino && recorded != 0 && recorded != o.ino;
        if replaced && now.saturating_sub(self.heartbeat) < o.ttl {
            self.flocks.remove(&(o.table, o.ino));
            return Reply::Busy;
        }
        if current != o.ino {
            return Reply::Locked {
                server: current,
                fence: 0,
            };
        }
        let next = (fence + 1, o.ino);
        if self.quirks.fence_not_durable {
            self.cached = Some(next);
        } else {
            self.durable = next;
            self.cached = None;
        }
        self.heartbeat = now;
        Reply::Locked {
            server: o.ino,
            fence: next.0,
        }
    }
}

impl Server for FileHost {
    type Command = Command;
    type Reply = Reply;

    fn apply(&mut self, now: u64, command: &Command) -> Reply {
        self.tick(now);
        match command {
            Command::Open { idle, .. } => {
                let ino = match self.path {
                    Some(i) => i,
                    None => {
                        let i = self.new_inode();
                        self.path = Some(i);
                        i
                    }
                };
                self.next_session += 1;
                let table = (self.opened % self.tables as u64) as usize;
                self.opened += 1;
                let session = self.next_session;
                self.sessions.insert(
                    session,
                    Open {
                        ino,
                        table,
                        ttl: nanos(*idle),
                    },
                );
                Reply::Opened {
                    session,
                    server: ino,
                }
            }
            Command::Lock { session, .. } => self.lock(now, *session),
            Command::Probe { session, .. } => {
                let Some(o) = self.sessions.get(session) else {
                    return Reply::Unavailable("closed".into());
                };
                let current = self.path.unwrap_or(0);
                let held = current == o.ino;
                if held {
                    self.heartbeat = now;
                }
                Reply::Probed {
                    held,
                    server: current,
                }
            }
            Command::Unlock { session, .. } => {
                let Some(o) = self.sessions.get(session).cloned() else {
                    return Reply::Unavailable("closed".into());
                };
                let held = self.flocks.get(&(o.table, o.ino)) == Some(session);
                if held {
                    self.flocks.remove(&(o.table, o.ino));
                    if self.quirks.unlink_on_release && self.path == Some(o.ino) {
                        self.path = None;
                    }
                }
                Reply::Unlocked { held }
            }
            Command::Close { session, .. } => {
                self.unlock_all(*session);
                self.sessions.remove(session);
                Reply::Closed
            }
        }
    }

    fn next_timer(&self) -> Option<u64> {
        let origin = self.origin?;
        self.replace_after.first().map(|(t, _)| origin + t)
    }

    /// The lock file is deleted or replaced when its time comes (the flocks stay on the old
    /// inode, with whoever holds it).
    fn tick(&mut self, now: u64) {
        let origin = *self.origin.get_or_insert(now);
        while self
            .replace_after
            .first()
            .is_some_and(|(t, _)| origin + t <= now)
        {
            let (_, delete) = self.replace_after.remove(0);
            self.path = if delete { None } else { Some(self.new_inode()) };
        }
    }

    /// A lost disk: everything, the fence file included.
    fn wipe(&mut self) {
        self.forget_kept();
        self.durable = (0, 0);
        self.path = None;
    }

    /// Held flocks.
    fn live_keys(&self, _now: u64) -> usize {
        self.flocks.len()
    }

    /// A host crash: every process's open files close (their flocks go), and what was not
    /// written durably is lost.
    fn forget_kept(&mut self) {
        self.sessions.clear();
        self.flocks.clear();
        self.cached = None;
    }

    fn unavailable() -> Reply {
        Reply::Unavailable("the host is down".into())
    }
}
