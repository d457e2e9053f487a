//! Time as a parameter: a monotonic instant owned by the caller, in integer nanoseconds.
//!
//! The machines never read a clock. Drivers map their own clock onto [`Instant`] (for example
//! nanoseconds since the driver started); the simulator passes each actor's drifting clock.

use core::ops::{Add, Sub};
pub use core::time::Duration;

/// A point on the caller's monotonic clock, in nanoseconds since the caller's own epoch.
///
/// Arithmetic saturates: an instant never wraps, so "forever" is [`Instant::MAX`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The caller's epoch.
    pub const ZERO: Instant = Instant(0);
    /// The far future; used for "no deadline".
    pub const MAX: Instant = Instant(u64::MAX);

    /// An instant `nanos` nanoseconds after the caller's epoch.
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant(nanos)
    }

    /// Nanoseconds since the caller's epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at [`Instant::MAX`].
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(nanos(d)))
    }

    /// `self - d`, saturating at [`Instant::ZERO`].
    pub fn saturating_sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(nanos(d)))
    }

    /// Moves a deadline `d` earlier, keeping [`Instant::MAX`] ("never") as it is. Machines
    /// apply it to every deadline they keep when the caller's clock steps back by `d`.
    pub fn rebase_back(self, d: Duration) -> Instant {
        if self == Instant::MAX {
            self
        } else {
            self.saturating_sub(d)
        }
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (about 584 years).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `ttl * ppm / 1e6 + floor`: the clock-drift allowance of a lease, in integer arithmetic.
pub fn drift_allowance(ttl: Duration, drift_ppm: u32, floor: Duration) -> Duration {
    let scaled = u128::from(nanos(ttl)) * u128::from(drift_ppm) / 1_000_000;
    let scaled = u64::try_from(scaled).unwrap_or(u64::MAX);
    Duration::from_nanos(scaled.saturating_add(nanos(floor)))
}
