//! The lease-record machine on the in-memory lock table, from plain threads: no async runtime.
//! Four threads take turns on one lock, woken in arrival order by the table's release hints
//! (a condition variable per thread); each checks, under the lock, that its fence is above
//! every fence written before (what a fenced store would check) and counts its turns.
//!
//! Run: `cargo run -p lucky --features memory --example memory_blocking`
#![allow(clippy::disallowed_methods)] // a driver owns the clock

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use lucky::lease::{LeaseConfig, LeaseLock};
use lucky::memory::{Table, Wake};
use lucky::{Event, Instant, LockMachine, Output, State, Wait};

/// A release hint a thread can sleep on.
#[derive(Debug, Default)]
struct Hint {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Wake for Hint {
    fn wake_one(&self) {
        *self.woken.lock().expect("not poisoned") = true;
        self.cv.notify_one();
    }
}

impl Hint {
    /// Sleeps until woken or `timeout`; whether woken.
    fn wait(&self, timeout: Duration) -> bool {
        let woken = self.woken.lock().expect("not poisoned");
        let (mut woken, _) = self
            .cv
            .wait_timeout_while(woken, timeout, |w| !*w)
            .expect("not poisoned");
        std::mem::take(&mut *woken)
    }
}

/// Runs every command of `m` on the table at once (as waiter `id`); returns the events.
fn drive(m: &mut LeaseLock, table: &Table<Hint>, now: Instant, id: Option<u64>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(t) => {
                let reply = table.execute_as(now, &t.command, id);
                m.handle_reply(now, t.node, t.op, reply);
            }
            Output::Event(e) => events.push(e),
        }
    }
    events
}

fn main() {
    let table = Arc::new(Table::<Hint>::default());
    let epoch = StdInstant::now();
    let now = move || Instant::from_nanos(epoch.elapsed().as_nanos() as u64);
    let cfg = LeaseConfig::builder()
        .ttl(Duration::from_secs(5))
        .wait(Wait::For(Duration::from_secs(10)))
        .build()
        .expect("a valid configuration");
    let last_fence = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0u8..4)
        .map(|id| {
            let (table, cfg, last_fence) = (table.clone(), cfg.clone(), last_fence.clone());
            thread::spawn(move || {
                // Tokens only need to be unique among this table's users: one per thread here.
                let mut m = LeaseLock::new(&cfg, b"jobs/nightly", &[id + 1; 16], u64::from(id))
                    .expect("a valid name and token");
                let hint = Arc::new(Hint::default());
                for _ in 0..25 {
                    m.acquire(now()).expect("not busy");
                    let mut line = None;
                    let fence = loop {
                        let events = drive(&mut m, &table, now(), line);
                        if let Some(fence) = events.iter().find_map(|e| match e {
                            Event::Acquired { fence, .. } => Some(*fence),
                            _ => None,
                        }) {
                            break fence.expect("the table fences every lock");
                        }
                        assert!(!events.iter().any(|e| matches!(e, Event::Failed(_))));
                        if m.state() == State::Waiting && line.is_none() {
                            // Busy: stand in line, then try again at once (a release may have
                            // come before we stood in line).
                            line =
                                Some(table.wait(Bytes::from_static(b"jobs/nightly"), hint.clone()));
                            m.wake(now());
                            continue;
                        }
                        // Sleep until a release hint or the machine's next deadline.
                        let wait = m.poll_timeout().map_or(Duration::from_secs(1), |at| {
                            at.saturating_duration_since(now())
                        });
                        if hint.wait(wait) {
                            m.wake(now());
                        } else {
                            m.handle_timeout(now());
                        }
                    };
                    if let Some(id) = line {
                        table.unwait(b"jobs/nightly", id);
                    }
                    {
                        let mut last = last_fence.lock().expect("not poisoned");
                        assert!(fence.get() > *last, "fences only rise");
                        *last = fence.get();
                    }
                    thread::sleep(Duration::from_micros(200)); // the work
                    m.release(now()).expect("held");
                    drive(&mut m, &table, now(), None);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no panic");
    }
    let last = *last_fence.lock().expect("not poisoned");
    println!(
        "100 turns over 4 threads; last fence {last}; held now: {}",
        table.held(now())
    );
    assert_eq!(last, 100, "one fence per turn, none skipped or reused");
}
