//! The state a guard shares with its driver task: the local deadline and whether the hold has
//! ended (lost or released). The driver is the only writer; guards read it from any thread.
//!
//! Invariants (checked by the loom model below, `RUSTFLAGS="--cfg lucky_loom"`):
//! - once the hold has ended it never reads as held again: an extension that races the
//!   release or the loss cannot revive it;
//! - the hold ends exactly once: of a release and a loss racing, one wins, and only the
//!   winner reports it (so `lost()` fires once).

#[cfg(lucky_loom)]
use loom::sync::atomic::{AtomicU64, AtomicU8, Ordering};
#[cfg(not(lucky_loom))]
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

const HELD: u8 = 0;
const LOST: u8 = 1;
const RELEASED: u8 = 2;

/// How a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Lost,
    Released,
}

/// Deadline (nanoseconds on the driver's clock) and state of one hold.
#[derive(Debug)]
pub(crate) struct Hold {
    valid_until: AtomicU64,
    state: AtomicU8,
}

impl Hold {
    /// A hold valid until `valid_until`.
    pub(crate) fn new(valid_until: u64) -> Hold {
        Hold {
            valid_until: AtomicU64::new(valid_until),
            state: AtomicU8::new(HELD),
        }
    }

    /// Moves the deadline forward to `valid_until`, unless the hold has ended. Returns
    /// whether the hold is still on.
    pub(crate) fn extend(&self, valid_until: u64) -> bool {
        if self.state.load(Ordering::Acquire) != HELD {
            return false;
        }
        self.valid_until.fetch_max(valid_until, Ordering::AcqRel);
        self.state.load(Ordering::Acquire) == HELD
    }

    /// Ends the hold; true only for the first call.
    pub(crate) fn end(&self, how: End) -> bool {
        let to = match how {
            End::Lost => LOST,
            End::Released => RELEASED,
        };
        self.state
            .compare_exchange(HELD, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the hold has ended.
    pub(crate) fn ended(&self) -> bool {
        self.state.load(Ordering::Acquire) != HELD
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
            assert!(hold.end(End::Released));
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
                thread::spawn(move || hold.end(End::Lost))
            };
            let released = hold.end(End::Released);
            let lost = timer.join().unwrap();
            assert!(
                lost ^ released,
                "ended {} times",
                u8::from(lost) + u8::from(released)
            );
            assert!(hold.ended());
        });
    }
}
