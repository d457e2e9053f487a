//! The state a guard shares with its driver: the local deadline, whether the hold has ended
//! (lost or released), and who is waiting in `Guard::lost()` for the end. The driver is the
//! only writer of the deadline and the end; guards read them from any thread.
//!
//! Invariants (checked by the loom models below, `RUSTFLAGS="--cfg lucky_loom"`):
//! - once the hold has ended it never reads as held again: an extension that races the
//!   release or the loss cannot revive it;
//! - the hold ends exactly once: of a release and a loss racing, one wins, and only the
//!   winner reports it (so `lost()` fires once);
//! - no lost wake-up: a waiter that registered and saw the hold still on is woken by the end
//!   (the ender sees it registered), while an end with nobody registered costs no wake-up.

#[cfg(lucky_loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(lucky_loom))]
use std::sync::atomic::{AtomicU64, Ordering};

/// The low two bits of `Hold::word`: how the hold stands.
const STATE: u64 = 0b11;
const HELD: u64 = 0;
const LOST: u64 = 1;
const RELEASED: u64 = 2;
/// One waiter, counted in the bits above the state. The state and the waiters share one word
/// so that ending and registering are read-modify-writes of the same atomic: whichever comes
/// second sees the other (two words would need sequentially consistent fences).
const WAITER: u64 = 0b100;

/// How a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Lost,
    Released,
}

/// Deadline (nanoseconds on the driver's clock), state and waiters of one hold.
#[derive(Debug)]
pub(crate) struct Hold {
    valid_until: AtomicU64,
    /// State (low bits) and the number of `lost()` calls waiting (high bits).
    word: AtomicU64,
    /// Wakes the waiters; only touched when the word says someone is there (outside the loom
    /// models, which check the handshake that decides it).
    pub(crate) notify: tokio::sync::Notify,
}

impl Hold {
    /// A hold valid until `valid_until`.
    pub(crate) fn new(valid_until: u64) -> Hold {
        Hold {
            valid_until: AtomicU64::new(valid_until),
            word: AtomicU64::new(HELD),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Moves the deadline forward to `valid_until`, unless the hold has ended. Returns
    /// whether the hold is still on.
    pub(crate) fn extend(&self, valid_until: u64) -> bool {
        if self.ended() {
            return false;
        }
        self.valid_until.fetch_max(valid_until, Ordering::AcqRel);
        !self.ended()
    }

    /// Moves the deadline back to `valid_until` (the machine saw the clock step back).
    pub(crate) fn shorten(&self, valid_until: u64) {
        self.valid_until.fetch_min(valid_until, Ordering::AcqRel);
    }

    /// Ends the hold. Returns whether this call ended it (true only once) and whether
    /// someone waits to hear it (then the caller wakes them).
    pub(crate) fn end(&self, how: End) -> (bool, bool) {
        let to = match how {
            End::Lost => LOST,
            End::Released => RELEASED,
        };
        let ended = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w & STATE == HELD).then_some(w | to)
            });
        match ended {
            Ok(before) => (true, before >= WAITER),
            Err(_) => (false, false),
        }
    }

    /// A waiter arrives; returns false if the hold has already ended (nothing to wait for).
    /// The waiter must be ready to be woken before calling this.
    pub(crate) fn register(&self) -> bool {
        self.word.fetch_add(WAITER, Ordering::AcqRel) & STATE == HELD
    }

    /// A waiter leaves.
    pub(crate) fn unregister(&self) {
        self.word.fetch_sub(WAITER, Ordering::AcqRel);
    }

    /// Whether the hold has ended.
    pub(crate) fn ended(&self) -> bool {
        self.word.load(Ordering::Acquire) & STATE != HELD
    }

    /// The current deadline.
    pub(crate) fn deadline(&self) -> u64 {
        self.valid_until.load(Ordering::Acquire)
    }

    /// Held at `now`: not ended and before the deadline.
    pub(crate) fn is_held(&self, now: u64) -> bool {
        !self.ended() && now < self.deadline()
    }
}

#[cfg(all(test, lucky_loom))]
mod loom_model {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// A renewal racing a release: after the release returns, the hold never reads as held,
    /// whatever the interleaving.
    #[test]
    fn release_racing_renewal_never_revives() {
        loom::model(|| {
            let hold = Arc::new(Hold::new(100));
            let renew = {
                let hold = hold.clone();
                thread::spawn(move || hold.extend(200))
            };
            assert!(hold.end(End::Released).0);
            assert!(!hold.is_held(0), "held after release returned");
            let extended = renew.join().unwrap();
            assert!(!hold.is_held(0), "an extension revived a released hold");
            assert!(
                !extended || hold.deadline() == 200,
                "reported extended, deadline not moved"
            );
        });
    }

    /// A loss (deadline timer) racing a release: the hold ends exactly once.
    #[test]
    fn lost_and_released_end_the_hold_exactly_once() {
        loom::model(|| {
            let hold = Arc::new(Hold::new(100));
            let timer = {
                let hold = hold.clone();
                thread::spawn(move || hold.end(End::Lost).0)
            };
            let released = hold.end(End::Released).0;
            let lost = timer.join().unwrap();
            assert!(
                lost ^ released,
                "ended {} times",
                u8::from(lost) + u8::from(released)
            );
            assert!(hold.ended());
        });
    }

    /// A `lost()` waiter arriving as the hold ends: if it decided to wait, the ender decided
    /// to wake it (no wake-up is lost), and the end is announced once.
    #[test]
    fn a_waiter_is_never_left_waiting_for_an_end() {
        loom::model(|| {
            let hold = Arc::new(Hold::new(100));
            let ender = {
                let hold = hold.clone();
                thread::spawn(move || hold.end(End::Lost))
            };
            let waits = hold.register();
            let (first, wake) = ender.join().unwrap();
            assert!(first, "the only end is the first");
            assert!(!waits || wake, "the waiter waits, and nobody wakes it");
            hold.unregister();
        });
    }
}
