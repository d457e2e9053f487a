//! The process-local lock table: the store the lease-record machine talks to, one record per
//! lock name, judged on the caller's clock. It is plain data behind one mutex, so the async
//! client, a blocking program and a test all drive it the same way: [`Table::execute`].
//!
//! Fences come from one counter for the whole table: a record with no live owner can be
//! dropped (the table stays as small as what is held) without ever lowering a fence.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use lucky_core::lease::{Command, Reply};
use lucky_core::{Duration, Instant};

/// A lock table shared by every handle cloned from it.
#[derive(Debug, Default)]
pub struct Table {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: BTreeMap<Bytes, Record>,
    /// The last fence handed out, for any name.
    fence: u64,
    /// Per name, who waits for a release, in arrival order.
    lines: BTreeMap<Bytes, Line>,
    next_waiter: u64,
}

/// The waiters of one name, and whom a release handed the record to.
#[derive(Debug, Default)]
struct Line {
    waiters: VecDeque<(u64, Arc<tokio::sync::Notify>)>,
    /// After a release, the first waiter may take the free record until then; others are
    /// told it is held (no barging past the line).
    reserved: Option<(u64, Instant)>,
}

/// How long a released record waits for the waiter it was handed to: long enough for a
/// woken task to be scheduled, short enough that a waiter that stopped being polled delays
/// the others little.
const HAND_OFF: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Record {
    owner: Bytes,
    fence: u64,
    expires_at: Instant,
}

impl Table {
    /// An empty table.
    pub fn new() -> Table {
        Table::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one command of the lease-record machine at `now` (the caller's monotonic clock;
    /// every caller of one table must use the same clock).
    pub fn execute(&self, now: Instant, command: &Command) -> Reply {
        self.execute_as(now, command, None)
    }

    /// [`execute`](Self::execute) for the waiter `waiter` (its place in the line of its name).
    pub(crate) fn execute_as(&self, now: Instant, command: &Command, waiter: Option<u64>) -> Reply {
        let mut t = self.lock();
        match command {
            Command::Take { name, owner, ttl } => {
                if let Some(line) = t.lines.get_mut(name) {
                    match line.reserved {
                        Some((id, until)) if now < until && waiter != Some(id) => {
                            return Reply::Held {
                                left: until.saturating_duration_since(now),
                            };
                        }
                        Some(_) => line.reserved = None,
                        None => {}
                    }
                }
                let expires_at = now.saturating_add(*ttl);
                let next = t.fence + 1;
                let (reply, raised) = match t.records.get_mut(name) {
                    Some(r) if r.expires_at > now && r.owner != *owner => (
                        Reply::Held {
                            left: r.expires_at.saturating_duration_since(now),
                        },
                        false,
                    ),
                    Some(r) if r.expires_at > now => {
                        // Already ours: a retry of the same acquisition keeps its fence.
                        r.expires_at = expires_at;
                        (Reply::Granted { fence: r.fence }, false)
                    }
                    _ => {
                        t.records.insert(
                            name.clone(),
                            Record {
                                owner: owner.clone(),
                                fence: next,
                                expires_at,
                            },
                        );
                        (Reply::Granted { fence: next }, true)
                    }
                };
                if raised {
                    t.fence = next;
                }
                reply
            }
            Command::Renew { name, owner, ttl } => match t.records.get_mut(name) {
                Some(r) if r.expires_at > now && r.owner == *owner => {
                    r.expires_at = now.saturating_add(*ttl);
                    Reply::Renewed
                }
                _ => Reply::NotOwner,
            },
            Command::Release { name, owner } => {
                let ours = t
                    .records
                    .get(name)
                    .is_some_and(|r| r.expires_at > now && r.owner == *owner);
                if !ours {
                    return Reply::NotOwner;
                }
                // The fence counter is the table's: dropping the record lowers nothing.
                t.records.remove(name);
                // Hand the record to the longest waiter of this name (FIFO, no stampede).
                if let Some(line) = t.lines.get_mut(name) {
                    if let Some((id, n)) = line.waiters.front() {
                        line.reserved = Some((*id, now.saturating_add(HAND_OFF)));
                        n.notify_one();
                    }
                }
                Reply::Released
            }
            Command::Inspect { name } => match t.records.get(name) {
                Some(r) if r.expires_at > now => Reply::State {
                    owner: Some(r.owner.clone()),
                    fence: r.fence,
                    left: r.expires_at.saturating_duration_since(now),
                },
                _ => Reply::State {
                    owner: None,
                    fence: 0,
                    left: Duration::ZERO,
                },
            },
        }
    }

    /// Records that are held now (expired ones are dropped on the way).
    pub fn held(&self, now: Instant) -> usize {
        let mut t = self.lock();
        t.records.retain(|_, r| r.expires_at > now);
        t.records.len()
    }

    /// Registers a waiter of `name`; it is woken (once per release) while first in line.
    pub(crate) fn wait(&self, name: Bytes, notify: Arc<tokio::sync::Notify>) -> u64 {
        let mut t = self.lock();
        t.next_waiter += 1;
        let id = t.next_waiter;
        t.lines
            .entry(name)
            .or_default()
            .waiters
            .push_back((id, notify));
        id
    }

    /// Removes waiter `id` of `name` (it acquired, or gave up). A hand-off reserved for it
    /// passes to the next in line, so a release is never lost on a waiter that left.
    pub(crate) fn unwait(&self, name: &[u8], id: u64) {
        let mut t = self.lock();
        let Some(line) = t.lines.get_mut(name) else {
            return;
        };
        line.waiters.retain(|(w, _)| *w != id);
        if let Some((reserved, until)) = line.reserved {
            if reserved == id {
                line.reserved = line.waiters.front().map(|(next, n)| {
                    n.notify_one();
                    (*next, until)
                });
            }
        }
        if line.waiters.is_empty() && line.reserved.is_none() {
            t.lines.remove(name);
        }
    }
}
