//! Keepers: a few tasks per client that drive its held locks (renewal, loss, release), up to
//! [`KEEPER_SIZE`] locks each, instead of one task per lock.
//!
//! A held lock may wait hours between two renewals, and a scheduler holds a hundred thousand of
//! them: a tokio task per lock costs its header and its future's state (about 500 bytes) for
//! that whole time. A keeper keeps its locks in a slab and gives each one a waker of its own
//! that queues the lock's index, so a poll of the keeper drives only the locks that something
//! woke (a reply, a timer, the guard), in the order they were woken. Several keepers per
//! client let a runtime's worker threads share the locks' work.
//!
//! Nothing here knows about locks: a [`Kept`] is polled until it is done, then wound up.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

/// The most locks one keeper drives: a hundred thousand held locks run on about a hundred
/// tasks, which the runtime spreads over its threads.
const KEEPER_SIZE: usize = 1024;

/// The most locks a keeper polls in one go before it lets its thread run other tasks (and
/// gets a fresh share of tokio's cooperative budget).
const BATCH: usize = 64;

/// What a keeper drives: a held lock's driver, type-erased.
pub(crate) trait Kept: Send {
    /// Drives the lock; ready once it has nothing left to do.
    fn poll_keep(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// Called once `poll_keep` was ready: what is left (handing the machine back, answering
    /// whoever waits) happens here, where the lock is owned.
    fn finish(self: Box<Self>);
}

/// The keepers of one client; new locks go to the newest keeper until it is full.
#[derive(Default)]
pub(crate) struct Keepers {
    current: Mutex<Option<Arc<Shared>>>,
}

impl std::fmt::Debug for Keepers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keepers")
    }
}

impl Keepers {
    /// Hands `kept` to a keeper on `rt`, starting one if none has room.
    pub(crate) fn keep(&self, rt: &tokio::runtime::Handle, kept: Box<dyn Kept>) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let kept = match current.as_ref() {
            Some(k) => match k.push(kept) {
                Ok(()) => return,
                Err(kept) => kept,
            },
            None => kept,
        };
        let shared = Arc::new(Shared::default());
        // A fresh keeper is open and empty: the push cannot be refused.
        let _ = shared.push(kept);
        let mut keeper = Keeper {
            shared: shared.clone(),
            slots: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
        };
        rt.spawn(std::future::poll_fn(move |cx| keeper.poll(cx)));
        *current = Some(shared);
    }
}

/// What a keeper shares with the wakers of its locks and with [`Keepers::keep`].
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Locks handed over, not yet in the slab.
    incoming: Vec<Box<dyn Kept>>,
    /// Slab indices woken since the keeper last looked, each once.
    ready: Vec<u32>,
    /// Which slab indices are in `ready`.
    queued: Vec<bool>,
    /// The keeper task's waker.
    waker: Option<Waker>,
    /// Locks in the slab or incoming.
    count: usize,
    /// The keeper ended (it ran out of locks): it takes no more.
    closed: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `kept` to this keeper, or hands it back when the keeper is full or ended.
    fn push(&self, kept: Box<dyn Kept>) -> Result<(), Box<dyn Kept>> {
        let mut s = self.state();
        if s.closed || s.count >= KEEPER_SIZE {
            return Err(kept);
        }
        s.count += 1;
        s.incoming.push(kept);
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues slab index `index` for the keeper's next poll.
    fn wake_slot(&self, index: u32) {
        let mut s = self.state();
        let i = index as usize;
        if s.queued.len() <= i {
            s.queued.resize(i + 1, false);
        }
        if s.queued[i] {
            return;
        }
        s.queued[i] = true;
        s.ready.push(index);
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The waker of one slab slot. A wake that arrives after its lock ended and the slot was
/// given to another costs that other lock a spurious poll, nothing more.
struct SlotWake {
    keeper: Arc<Shared>,
    index: u32,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.keeper.wake_slot(self.index);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.keeper.wake_slot(self.index);
    }
}

struct Slot {
    kept: Box<dyn Kept>,
    waker: Waker,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // The runtime dropped the task (it shut down): take no more locks, and drop those
        // handed over (their leases run out at their ttl, as without a runtime).
        let incoming = {
            let mut s = self.shared.state();
            s.closed = true;
            std::mem::take(&mut s.incoming)
        };
        drop(incoming);
    }
}

/// One keeper task's own state.
struct Keeper {
    shared: Arc<Shared>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Indices taken from `Shared::ready`, polled in order, at most [`BATCH`] per poll.
    ready: Vec<u32>,
}

impl Keeper {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ready.is_empty() {
            let mut s = self.shared.state();
            for kept in std::mem::take(&mut s.incoming) {
                let index = match self.free.pop() {
                    Some(i) => i,
                    None => {
                        self.slots.push(None);
                        (self.slots.len() - 1) as u32
                    }
                };
                let waker = Waker::from(Arc::new(SlotWake {
                    keeper: self.shared.clone(),
                    index,
                }));
                self.slots[index as usize] = Some(Slot { kept, waker });
                // First poll: queued like any wake.
                self.ready.push(index);
            }
            let s = &mut *s;
            for &i in &s.ready {
                s.queued[i as usize] = false;
            }
            self.ready.append(&mut s.ready);
            if self.ready.is_empty() {
                if s.count == 0 {
                    s.closed = true;
                    return Poll::Ready(());
                }
                if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
        }
        let take = self.ready.len().min(BATCH);
        let mut ended = 0;
        for index in self.ready.drain(..take) {
            let Some(Some(slot)) = self.slots.get_mut(index as usize) else {
                continue;
            };
            let mut slot_cx = Context::from_waker(&slot.waker);
            if slot.kept.poll_keep(&mut slot_cx).is_ready() {
                if let Some(done) = self.slots[index as usize].take() {
                    done.kept.finish();
                }
                self.free.push(index);
                ended += 1;
            }
        }
        if ended > 0 {
            self.shared.state().count -= ended;
        }
        // More to do: come back after the runtime's other tasks had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(all(test, not(lucky_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Pending until woken `wakes` times; counts its finish.
    struct Item {
        wakes: usize,
        board: Arc<Mutex<Vec<Waker>>>,
        finished: Arc<AtomicUsize>,
    }

    impl Kept for Item {
        fn poll_keep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            if self.wakes == 0 {
                return Poll::Ready(());
            }
            self.wakes -= 1;
            self.board.lock().expect("board").push(cx.waker().clone());
            Poll::Pending
        }

        fn finish(self: Box<Self>) {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn run_items(keepers: &Keepers, n: usize, wakes: usize) -> usize {
        let board = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Handle::current();
        for _ in 0..n {
            let item = Item {
                wakes,
                board: board.clone(),
                finished: finished.clone(),
            };
            keepers.keep(&rt, Box::new(item));
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while finished.load(Ordering::SeqCst) < n && tokio::time::Instant::now() < deadline {
            let woken: Vec<Waker> = std::mem::take(&mut *board.lock().expect("board"));
            for w in woken {
                // Twice: a lock woken while queued is queued once; a finished lock's slot
                // woken again (or given to another lock) costs a spurious poll, no more.
                w.wake_by_ref();
                w.wake();
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        finished.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn every_lock_is_driven_to_its_end_across_several_keepers() {
        let keepers = Keepers::default();
        let n = 3 * KEEPER_SIZE + 7;
        assert_eq!(run_items(&keepers, n, 3).await, n);
        // The last keeper ran out of locks and ended: a new lock starts a new one.
        let current = keepers
            .current
            .lock()
            .expect("keepers")
            .clone()
            .expect("a keeper");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !current.state().closed && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(current.state().closed, "an empty keeper ends");
        assert_eq!(run_items(&keepers, 10, 1).await, 10);
    }
}
