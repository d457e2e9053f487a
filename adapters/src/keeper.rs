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

/// The keepers of one client, per runtime: a lock goes to a keeper of the runtime it was
/// acquired on (its timer and connections belong to that runtime), the first with room.
#[derive(Default)]
pub(crate) struct Keepers {
    open: Mutex<Vec<(tokio::runtime::Id, Arc<Shared>)>>,
    /// Keepers started so far.
    started: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Keepers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keepers")
    }
}

impl Keepers {
    /// Hands `kept` to a keeper on `rt` with room, starting one if none has.
    pub(crate) fn keep(&self, rt: &tokio::runtime::Handle, kept: Box<dyn Kept>) {
        let id = rt.id();
        let keeper = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            // Ended keepers go; a keeper with room takes the lock (so that a few long-lived
            // locks do not each keep a keeper of their own).
            open.retain(|(_, k)| !k.state().closed);
            let mut kept = kept;
            for (_, k) in open.iter().filter(|(on, _)| *on == id) {
                match k.push(kept) {
                    Ok(()) => return,
                    Err(l) => kept = l,
                }
            }
            let shared = Arc::new(Shared::default());
            // A fresh keeper is open and empty: the push cannot be refused.
            let _ = shared.push(kept);
            open.push((id, shared.clone()));
            Keeper {
                shared,
                slots: Vec::new(),
                free: Vec::new(),
                ready: Vec::new(),
            }
        };
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Spawned outside the lock: on a runtime that is shutting down, the keeper (and the
        // lock in it) is dropped at once.
        let mut keeper = keeper;
        rt.spawn(std::future::poll_fn(move |cx| keeper.poll(cx)));
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
    /// Nothing to poll: the keeper ends once it has no lock, else waits for a wake.
    fn rest(s: &mut State, cx: &mut Context<'_>) -> Poll<()> {
        if s.count == 0 {
            s.closed = true;
            return Poll::Ready(());
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

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
                return Self::rest(s, cx);
            }
        }
        let take = self.ready.len().min(BATCH);
        let mut ended = 0;
        for index in self.ready.drain(..take) {
            let Some(Some(slot)) = self.slots.get_mut(index as usize) else {
                continue;
            };
            let mut slot_cx = Context::from_waker(&slot.waker);
            // A lock that panics ends alone, not with the locks that share its keeper.
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                slot.kept.poll_keep(&mut slot_cx)
            }));
            let done = match polled {
                Ok(Poll::Pending) => continue,
                Ok(Poll::Ready(())) => true,
                Err(_) => {
                    tracing::error!("a held lock's driver panicked; the lock is dropped");
                    false
                }
            };
            if let Some(slot) = self.slots[index as usize].take() {
                if done {
                    let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        slot.kept.finish()
                    }));
                    if finished.is_err() {
                        tracing::error!("a held lock's driver panicked while finishing");
                    }
                }
            }
            self.free.push(index);
            ended += 1;
        }
        if ended > 0 {
            self.shared.state().count -= ended;
            // Give back the slab's free tail, so a keeper that once held many locks and
            // keeps a few does not keep their room.
            while matches!(self.slots.last(), Some(None)) {
                self.slots.pop();
            }
            let len = self.slots.len();
            self.free.retain(|&i| (i as usize) < len);
            if self.slots.capacity() > 4 * len.max(16) {
                self.slots.shrink_to(2 * len);
                self.free.shrink_to(len);
            }
        }
        if self.ready.is_empty() {
            let mut s = self.shared.state();
            if s.ready.is_empty() && s.incoming.is_empty() {
                // Nothing woken meanwhile: the next wake (or hand-over) polls again.
                return Self::rest(&mut s, cx);
            }
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

    /// Pending until woken `wakes` times (panics instead, if `panics`); counts its finish.
    struct Item {
        wakes: usize,
        panics: bool,
        board: Arc<Mutex<Vec<Waker>>>,
        finished: Arc<AtomicUsize>,
    }

    impl Kept for Item {
        fn poll_keep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            if self.wakes == 0 {
                assert!(!self.panics, "a driver's bug");
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

    /// Hands `n` items to `keepers` (every `panic_every`-th one panics at its end), wakes
    /// them until all that do not panic finished; returns how many finished.
    async fn run_items(keepers: &Keepers, n: usize, wakes: usize, panic_every: usize) -> usize {
        let board = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Handle::current();
        for i in 0..n {
            let item = Item {
                wakes,
                panics: panic_every > 0 && i % panic_every == 0,
                board: board.clone(),
                finished: finished.clone(),
            };
            keepers.keep(&rt, Box::new(item));
        }
        let want = n - if panic_every > 0 {
            n.div_ceil(panic_every)
        } else {
            0
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while finished.load(Ordering::SeqCst) < want && tokio::time::Instant::now() < deadline {
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

    fn started(keepers: &Keepers) -> usize {
        keepers.started.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn every_lock_is_driven_to_its_end_by_keepers_of_bounded_size() {
        let keepers = Keepers::default();
        let n = 3 * KEEPER_SIZE + 7;
        assert_eq!(run_items(&keepers, n, 3, 0).await, n);
        assert_eq!(
            started(&keepers),
            4,
            "{n} locks on keepers of {KEEPER_SIZE}"
        );
        // The keepers ran out of locks and ended: new locks start a new one.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(run_items(&keepers, 10, 1, 0).await, 10);
        assert_eq!(started(&keepers), 5);
    }

    #[tokio::test]
    async fn a_keeper_with_room_takes_new_locks() {
        let keepers = Keepers::default();
        let board = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Handle::current();
        // One lock that never ends keeps its keeper open with room to spare.
        let long = Item {
            wakes: usize::MAX,
            panics: false,
            board: board.clone(),
            finished: finished.clone(),
        };
        keepers.keep(&rt, Box::new(long));
        tokio::task::yield_now().await;
        assert_eq!(run_items(&keepers, 100, 2, 0).await, 100);
        assert_eq!(started(&keepers), 1, "later locks join the open keeper");
    }

    #[tokio::test]
    async fn a_panicking_lock_ends_alone() {
        let keepers = Keepers::default();
        // One lock in ten panics at its end; the others, in the same keepers, finish.
        assert_eq!(run_items(&keepers, 200, 2, 10).await, 180);
    }

    #[test]
    fn locks_stay_on_the_runtime_they_were_taken_on() {
        let keepers = Keepers::default();
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime")
        };
        // A lock that never ends keeps a keeper open on the first runtime, which then sits
        // idle (nothing drives it) while the second runtime's locks run.
        let (first, second) = (runtime(), runtime());
        let long = Item {
            wakes: usize::MAX,
            panics: false,
            board: Arc::default(),
            finished: Arc::default(),
        };
        keepers.keep(first.handle(), Box::new(long));
        assert_eq!(second.block_on(run_items(&keepers, 5, 1, 0)), 5);
        assert_eq!(started(&keepers), 2, "one keeper per runtime");
    }
}
