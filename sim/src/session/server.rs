//! A model of a server holding session locks (PostgreSQL advisory locks, MySQL `GET_LOCK`):
//! sessions opened by clients, each a server session with its own id; a named lock held by at
//! most one session and freed when it ends; a fence counter row per name that outlives
//! sessions (and restarts, but not a loss of data); lock requests that wait on the server,
//! granted in arrival order. A session the server hears nothing from for `idle_ns` of its
//! clock is ended (what Lucky sets with `idle_session_timeout` / `wait_timeout`), and a crash
//! ends every session. With `reconnect`, the client's driver hides a session's end: the next
//! command runs in a fresh server session (JDBC's `autoReconnect`, a pooler handing out
//! another backend).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use lucky_core::session::{Command, Reply, SessionId};
use lucky_core::time::nanos;

use crate::Server;

#[derive(Clone, Debug)]
struct Session {
    /// The server's id of the session now behind the driver's.
    server: u64,
    /// Whether it is live (false: the server ended it).
    live: bool,
    /// Local time of the last command heard.
    heard: u64,
}

#[derive(Clone, Debug)]
struct Waiter {
    id: u64,
    session: SessionId,
    name: Bytes,
    until: u64,
}

/// The server's state. Time is its local clock, in nanoseconds.
#[derive(Clone, Debug)]
pub struct SessionServer {
    idle_ns: u64,
    reconnect: bool,
    next_session: SessionId,
    next_server: u64,
    sessions: BTreeMap<SessionId, Session>,
    /// name -> the server session holding it.
    locks: BTreeMap<Bytes, u64>,
    fences: BTreeMap<Bytes, u64>,
    waiters: VecDeque<Waiter>,
    fired: Vec<(u64, Reply)>,
}

impl SessionServer {
    /// A server ending sessions idle for `idle_ns`; `reconnect`: drivers hide session ends.
    pub fn new(idle_ns: u64, reconnect: bool) -> SessionServer {
        SessionServer {
            idle_ns,
            reconnect,
            next_session: 0,
            next_server: 1000,
            sessions: BTreeMap::new(),
            locks: BTreeMap::new(),
            fences: BTreeMap::new(),
            waiters: VecDeque::new(),
            fired: Vec::new(),
        }
    }

    /// The server session holding `name`, if any.
    pub fn holder(&self, name: &[u8]) -> Option<u64> {
        self.locks.get(name).copied()
    }

    fn new_server_session(&mut self) -> u64 {
        self.next_server += 1;
        self.next_server
    }

    /// Ends the server session `server`: its locks go to the next waiter or are freed.
    fn end(&mut self, server: u64) {
        let names: Vec<Bytes> = self
            .locks
            .iter()
            .filter(|(_, s)| **s == server)
            .map(|(n, _)| n.clone())
            .collect();
        for s in self.sessions.values_mut().filter(|s| s.server == server) {
            s.live = false;
        }
        for name in names {
            self.locks.remove(&name);
            self.grant_next(&name);
        }
        // Its own waits end with it.
        let ended: Vec<u64> = self
            .waiters
            .iter()
            .filter(|w| self.sessions.get(&w.session).is_none_or(|s| !s.live))
            .map(|w| w.id)
            .collect();
        self.waiters.retain(|w| !ended.contains(&w.id));
        for id in ended {
            self.fired
                .push((id, Reply::Unknown("the session ended".into())));
        }
    }

    /// The longest waiter for `name` (in a live session) gets it.
    fn grant_next(&mut self, name: &Bytes) {
        let Some(i) = self.waiters.iter().position(|w| w.name == *name) else {
            return;
        };
        let Some(w) = self.waiters.remove(i) else {
            return;
        };
        if let Some(s) = self.sessions.get(&w.session).filter(|s| s.live) {
            let server = s.server;
            self.locks.insert(name.clone(), server);
            let fence = self.raise(name);
            self.fired.push((w.id, Reply::Locked { server, fence }));
        }
    }

    /// Raises and returns the fence counter of `name`.
    fn raise(&mut self, name: &Bytes) -> u64 {
        let f = self.fences.entry(name.clone()).or_default();
        *f += 1;
        *f
    }

    /// The live server session behind `session` at `now`, after a reconnect if the driver
    /// hides ends; `None` when it is gone.
    fn session(&mut self, now: u64, session: SessionId) -> Option<u64> {
        let reconnect = self.reconnect;
        let fresh = self.next_server + 1;
        let s = self.sessions.get_mut(&session)?;
        if !s.live {
            if !reconnect {
                return None;
            }
            s.live = true;
            s.server = fresh;
            self.next_server = fresh;
        }
        s.heard = now;
        Some(s.server)
    }

    fn run(&mut self, now: u64, command: &Command, id: Option<u64>) -> Option<Reply> {
        let gone = || Reply::Unavailable("the session is gone".into());
        Some(match command {
            Command::Open { .. } => {
                self.next_session += 1;
                let server = self.new_server_session();
                let session = self.next_session;
                self.sessions.insert(
                    session,
                    Session {
                        server,
                        live: true,
                        heard: now,
                    },
                );
                Reply::Opened { session, server }
            }
            Command::Lock {
                session,
                name,
                wait,
            } => {
                let Some(server) = self.session(now, *session) else {
                    return Some(gone());
                };
                match self.locks.get(name) {
                    None => {
                        self.locks.insert(name.clone(), server);
                        let fence = self.raise(name);
                        Reply::Locked { server, fence }
                    }
                    Some(&s) if s == server => {
                        let fence = self.raise(name);
                        Reply::Locked { server, fence }
                    }
                    Some(_) if wait.is_zero() || id.is_none() => Reply::Busy,
                    Some(_) => {
                        let until = now.saturating_add(nanos(*wait));
                        self.waiters.push_back(Waiter {
                            id: id.unwrap_or_default(),
                            session: *session,
                            name: name.clone(),
                            until,
                        });
                        return None;
                    }
                }
            }
            Command::Probe { session, name } => {
                let Some(server) = self.session(now, *session) else {
                    return Some(gone());
                };
                let held = self.locks.get(name) == Some(&server);
                Reply::Probed { held, server }
            }
            Command::Unlock { session, name } => {
                let Some(server) = self.session(now, *session) else {
                    return Some(gone());
                };
                let held = self.locks.get(name) == Some(&server);
                if held {
                    self.locks.remove(name);
                    self.grant_next(name);
                }
                Reply::Unlocked { held }
            }
            Command::Close { session, clean } => {
                if let Some(s) = self.sessions.get(session).filter(|s| s.live) {
                    let server = s.server;
                    if *clean {
                        // Kept idle by the driver: the model ends it too (it holds nothing).
                        debug_assert!(!self.locks.values().any(|h| *h == server));
                    }
                    self.end(server);
                }
                self.sessions.remove(session);
                Reply::Closed
            }
        })
    }
}

impl Server for SessionServer {
    type Command = Command;
    type Reply = Reply;

    fn apply(&mut self, now: u64, command: &Command) -> Reply {
        self.tick(now);
        self.run(now, command, None)
            .unwrap_or_else(|| Reply::Error("unreachable: a wait without an id".into()))
    }

    fn submit(&mut self, now: u64, command: &Command, id: u64) -> Option<Reply> {
        self.tick(now);
        self.run(now, command, Some(id))
    }

    fn fired(&mut self, out: &mut Vec<(u64, Reply)>) {
        out.append(&mut self.fired);
    }

    fn next_timer(&self) -> Option<u64> {
        let idle = self
            .sessions
            .iter()
            .filter(|(id, s)| s.live && !self.waiters.iter().any(|w| w.session == **id))
            .map(|(_, s)| s.heard.saturating_add(self.idle_ns));
        let waits = self.waiters.iter().map(|w| w.until);
        idle.chain(waits).min()
    }

    /// Waits that ran out answer `Busy`; sessions idle too long end (a session waiting on
    /// the server is not idle).
    fn tick(&mut self, now: u64) {
        let mut busy = Vec::new();
        self.waiters.retain(|w| {
            let keep = w.until > now;
            if !keep {
                busy.push(w.id);
            }
            keep
        });
        self.fired
            .extend(busy.into_iter().map(|id| (id, Reply::Busy)));
        let waiting: Vec<SessionId> = self.waiters.iter().map(|w| w.session).collect();
        let idle: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(id, s)| {
                s.live && !waiting.contains(id) && s.heard.saturating_add(self.idle_ns) <= now
            })
            .map(|(_, s)| s.server)
            .collect();
        for server in idle {
            self.end(server);
        }
    }

    /// A loss of data: sessions, locks and fence counters.
    fn wipe(&mut self) {
        self.forget_kept();
        self.fences.clear();
    }

    /// Held locks.
    fn live_keys(&self, _now: u64) -> usize {
        self.locks.len()
    }

    /// A crash or restart ends every session (their locks with them); the counter rows stay.
    fn forget_kept(&mut self) {
        let servers: Vec<u64> = self.sessions.values().map(|s| s.server).collect();
        for server in servers {
            self.end(server);
        }
        self.waiters.clear();
        self.fired.clear();
        self.locks.clear();
    }

    fn recovered(&mut self, now: u64) {
        // Sessions are judged idle from the restart, not across the downtime.
        for s in self.sessions.values_mut() {
            s.heard = s.heard.max(now);
        }
    }

    fn unavailable() -> Reply {
        Reply::Unavailable("connection refused".into())
    }
}
