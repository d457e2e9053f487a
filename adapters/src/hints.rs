//! Release hints shared by every waiter of one client: per channel (a lock's release
//! channel), the local waiters in arrival order. A release announcement wakes only the
//! longest-waiting one: one contender per process, in order, instead of a stampede into a
//! split vote. Backends feed it from what their server announces (Redis pub/sub, PostgreSQL
//! `NOTIFY`).
//!
//! A backend may also keep the hand-off in order inside the process: for [`HAND_OFF`] after
//! a wake-up, [`Hints::held_for`] tells the other local contenders of that channel (newcomers
//! included) to wait, so the woken waiter's take is not overtaken by the releasing task's
//! own next one. It orders local contenders only; the server still decides who holds.
// Not every build has a backend with hints (an in-memory-only build has none), nor one that
// keeps the local hand-off order.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::driver::Subscription;

/// How long a woken waiter has the channel to itself among local contenders.
pub(crate) const HAND_OFF: Duration = Duration::from_millis(50);

/// The waiters of one channel and the one a wake-up went to.
#[derive(Debug, Default)]
struct Line {
    waiters: Vec<(u64, Arc<Notify>)>,
    woken: Option<(u64, tokio::time::Instant)>,
}

/// The waiters of one client, by channel.
#[derive(Debug, Default)]
pub(crate) struct Hints {
    lines: Mutex<BTreeMap<Vec<u8>, Line>>,
    next_id: AtomicU64,
}

impl Hints {
    /// A release was announced on `channel`: wakes its longest-waiting local waiter.
    pub(crate) fn notify(&self, channel: &[u8]) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(line) = lines.get_mut(channel) {
            if let Some((id, n)) = line.waiters.first() {
                line.woken = Some((*id, tokio::time::Instant::now()));
                n.notify_one();
            }
        }
    }

    /// Puts a waiter of `channel` in line until the returned subscription is dropped; its id.
    pub(crate) fn register(self: &Arc<Self>, channel: Vec<u8>) -> (Subscription, u64) {
        let notify = Arc::new(Notify::new());
        let id = 1 + self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel.clone())
            .or_default()
            .waiters
            .push((id, notify.clone()));
        let sub = Subscription {
            notify,
            _keep: Box::new(Leave {
                hints: self.clone(),
                channel,
                id,
            }),
        };
        (sub, id)
    }

    /// How long contender `me` (0: not in line) should leave `channel` to the waiter a
    /// release just woke, if it is not that waiter.
    pub(crate) fn held_for(&self, channel: &[u8], me: u64) -> Option<Duration> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let (id, at) = lines.get(channel)?.woken?;
        let left = HAND_OFF.checked_sub(at.elapsed())?;
        (id != me && !left.is_zero()).then_some(left)
    }
}

/// Takes a waiter out of line when dropped; a wake-up it had not used passes to the next.
struct Leave {
    hints: Arc<Hints>,
    channel: Vec<u8>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut lines = self.hints.lines.lock().unwrap_or_else(|e| e.into_inner());
        let Some(line) = lines.get_mut(&self.channel) else {
            return;
        };
        line.waiters.retain(|(id, _)| *id != self.id);
        if line.woken.is_some_and(|(id, _)| id == self.id) {
            line.woken = None;
        }
        if line.waiters.is_empty() && line.woken.is_none() {
            lines.remove(&self.channel);
        }
    }
}
