//! The process-local lock table: the store the lease-record machine talks to, one record per
//! lock name, judged on the caller's clock. It is plain data behind one mutex, so the async
//! client, a blocking program and a test all drive it the same way: [`Table::execute`].
//!
//! Fences come from one counter for the whole table: a record with no live owner can be
//! dropped (the table stays as small as what is held) without ever lowering a fence.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

#[cfg(lucky_loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(lucky_loom))]
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use lucky_core::lease::{Command, Reply};
use lucky_core::{Duration, Instant};

/// What wakes a waiter: tokio's `Notify` for the client; the loom model's own signal.
pub trait Wake: Send + Sync + std::fmt::Debug {
    /// Wakes the waiter (a wake-up with nobody waiting is kept for the next wait).
    fn wake_one(&self);
}

impl Wake for tokio::sync::Notify {
    fn wake_one(&self) {
        self.notify_one();
    }
}

/// A lock table shared by every handle cloned from it.
#[derive(Debug)]
pub struct Table<W: Wake = tokio::sync::Notify> {
    inner: Mutex<Inner<W>>,
}

impl<W: Wake> Default for Table<W> {
    fn default() -> Self {
        Table {
            inner: Mutex::new(Inner {
                records: BTreeMap::new(),
                fence: 0,
                lines: BTreeMap::new(),
                next_waiter: 0,
            }),
        }
    }
}

#[derive(Debug)]
struct Inner<W> {
    records: BTreeMap<Bytes, Record>,
    /// The last fence handed out, for any name.
    fence: u64,
    /// Per name, who waits for a release, in arrival order.
    lines: BTreeMap<Bytes, Line<W>>,
    next_waiter: u64,
}

/// The waiters of one name, and whom a release handed the record to.
#[derive(Debug)]
struct Line<W> {
    waiters: VecDeque<(u64, Arc<W>)>,
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

impl<W> Default for Line<W> {
    fn default() -> Self {
        Line {
            waiters: VecDeque::new(),
            reserved: None,
        }
    }
}

impl Table {
    /// An empty table.
    pub fn new() -> Table {
        Table::default()
    }
}

impl<W: Wake> Table<W> {
    fn lock(&self) -> MutexGuard<'_, Inner<W>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one command of the lease-record machine at `now` (the caller's monotonic clock;
    /// every caller of one table must use the same clock).
    pub fn execute(&self, now: Instant, command: &Command) -> Reply {
        self.execute_as(now, command, None)
    }

    /// [`execute`](Self::execute) for the waiter `waiter` (its id from [`wait`](Self::wait)):
    /// a record a release handed to the first waiter is taken only by that waiter.
    pub fn execute_as(&self, now: Instant, command: &Command, waiter: Option<u64>) -> Reply {
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
                        n.wake_one();
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

    /// Puts a waiter of `name` in line; `notify` is woken when a release hands it the record.
    /// After registering, take again: a release just before it woke nobody.
    pub fn wait(&self, name: Bytes, notify: Arc<W>) -> u64 {
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
    pub fn unwait(&self, name: &[u8], id: u64) {
        let mut t = self.lock();
        let Some(line) = t.lines.get_mut(name) else {
            return;
        };
        line.waiters.retain(|(w, _)| *w != id);
        if let Some((reserved, until)) = line.reserved {
            if reserved == id {
                line.reserved = line.waiters.front().map(|(next, n)| {
                    n.wake_one();
                    (*next, until)
                });
            }
        }
        if line.waiters.is_empty() && line.reserved.is_none() {
            t.lines.remove(name);
        }
    }
}

/// Loom models of the table's shared state (`RUSTFLAGS="--cfg lucky_loom" cargo test -p lucky
/// --features memory --lib loom`): every interleaving of the threads below is run.
#[cfg(all(test, lucky_loom))]
mod loom_models {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use loom::sync::Condvar;

    /// A wake-up the model can see: a flag and a condition variable.
    #[derive(Debug, Default)]
    struct Signal {
        woken: loom::sync::Mutex<bool>,
        cv: Condvar,
    }

    impl Wake for Signal {
        fn wake_one(&self) {
            *self.woken.lock().unwrap() = true;
            self.cv.notify_one();
        }
    }

    impl Signal {
        fn wait(&self) {
            let mut woken = self.woken.lock().unwrap();
            while !*woken {
                woken = self.cv.wait(woken).unwrap();
            }
            *woken = false;
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }
    fn name() -> Bytes {
        Bytes::from_static(b"job")
    }
    fn take(owner: &'static [u8], ttl_ms: u64) -> Command {
        Command::Take {
            name: name(),
            owner: Bytes::from_static(owner),
            ttl: Duration::from_millis(ttl_ms),
        }
    }
    fn release(owner: &'static [u8]) -> Command {
        Command::Release {
            name: name(),
            owner: Bytes::from_static(owner),
        }
    }

    /// A's lease runs out at 10 ms; at 10 ms A's release races B's and C's takes. Exactly one
    /// of B and C holds, and the record names it. `checked` false runs the mutation: a release
    /// that removes the record without checking the owner.
    fn release_races_expiry(checked: bool) {
        loom::model(move || {
            let t = Arc::new(Table::<Signal>::default());
            t.execute(at(0), &take(b"A", 10));
            let ta = t.clone();
            let a = loom::thread::spawn(move || {
                if checked {
                    ta.execute(at(10), &release(b"A"));
                } else {
                    ta.lock().records.remove(&name()[..]);
                }
            });
            let tb = t.clone();
            let b = loom::thread::spawn(move || tb.execute(at(10), &take(b"B", 100)));
            let c = t.execute(at(10), &take(b"C", 100));
            a.join().unwrap();
            let b = b.join().unwrap();
            let granted = [&b, &c]
                .iter()
                .filter(|r| matches!(r, Reply::Granted { .. }))
                .count();
            assert_eq!(granted, 1, "two owners at once: B {b:?}, C {c:?}");
            let Reply::State { owner, .. } = t.execute(at(10), &Command::Inspect { name: name() })
            else {
                panic!()
            };
            let winner: &[u8] = if matches!(b, Reply::Granted { .. }) {
                b"B"
            } else {
                b"C"
            };
            assert_eq!(owner.as_deref(), Some(winner));
        });
    }

    #[test]
    fn loom_a_release_racing_expiry_and_takes_never_makes_two_owners() {
        release_races_expiry(true);
    }

    #[test]
    fn loom_catches_a_release_that_does_not_check_the_owner() {
        let caught = std::panic::catch_unwind(|| release_races_expiry(false));
        assert!(caught.is_err(), "the mutation went unnoticed");
    }

    /// B finds the lock held and waits as the driver does: register in the line, take again,
    /// then take again at each wake-up. A releases at any point in between. B must get the
    /// lock (a missed wake-up leaves it blocked: loom reports the deadlock). `retake` false
    /// runs the mutation: no second take after registering.
    fn waiter_gets_the_release(retake: bool) {
        loom::model(move || {
            let t = Arc::new(Table::<Signal>::default());
            t.execute(at(0), &take(b"A", 100));
            let ta = t.clone();
            let a = loom::thread::spawn(move || ta.execute(at(1), &release(b"A")));
            let signal = Arc::new(Signal::default());
            let mut r = t.execute(at(1), &take(b"B", 100));
            if matches!(r, Reply::Held { .. }) {
                let id = t.wait(name(), signal.clone());
                if retake {
                    r = t.execute_as(at(1), &take(b"B", 100), Some(id));
                }
                while !matches!(r, Reply::Granted { .. }) {
                    signal.wait();
                    r = t.execute_as(at(1), &take(b"B", 100), Some(id));
                }
                t.unwait(b"job", id);
            }
            assert!(matches!(r, Reply::Granted { .. }), "{r:?}");
            a.join().unwrap();
        });
    }

    #[test]
    fn loom_a_waiter_never_misses_the_release() {
        waiter_gets_the_release(true);
    }

    #[test]
    fn loom_catches_a_waiter_that_does_not_take_again_after_registering() {
        let caught = std::panic::catch_unwind(|| waiter_gets_the_release(false));
        assert!(caught.is_err(), "the mutation went unnoticed");
    }
}
