//! Release hints shared by every waiter of one client: per channel (a lock's release
//! channel), the local waiters in arrival order. A release announcement wakes only the
//! longest-waiting one: one contender per process, in order, instead of a stampede into a
//! split vote. Backends feed it from what their server announces (Redis pub/sub, PostgreSQL
//! `NOTIFY`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::driver::Subscription;

/// Per channel, its local waiters in arrival order (id, wake-up).
type Waiters = BTreeMap<Vec<u8>, Vec<(u64, Arc<Notify>)>>;

/// The waiters of one client, by channel.
#[derive(Debug, Default)]
pub(crate) struct Hints {
    waiters: Mutex<Waiters>,
    next_id: AtomicU64,
}

impl Hints {
    /// A release was announced on `channel`: wakes its longest-waiting local waiter.
    pub(crate) fn notify(&self, channel: &[u8]) {
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = waiters.get(channel).and_then(|list| list.first()) {
            n.notify_one();
        }
    }

    /// Puts a waiter of `channel` in line until the returned subscription is dropped.
    pub(crate) fn register(self: &Arc<Self>, channel: Vec<u8>) -> Subscription {
        let notify = Arc::new(Notify::new());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel.clone())
            .or_default()
            .push((id, notify.clone()));
        Subscription {
            notify,
            _keep: Box::new(Leave {
                hints: self.clone(),
                channel,
                id,
            }),
        }
    }
}

/// Takes a waiter out of line when dropped.
struct Leave {
    hints: Arc<Hints>,
    channel: Vec<u8>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut w = self.hints.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = w.get_mut(&self.channel) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                w.remove(&self.channel);
            }
        }
    }
}
