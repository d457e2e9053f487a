//! Maps the process's monotonic clock onto lucky-core's [`Instant`](lucky_core::Instant).
#![allow(clippy::disallowed_methods)] // the adapters own the clock; the machines never read it

use lucky_core::Instant;

/// Nanoseconds since this clock was made, on tokio's clock: the process's monotonic clock,
/// or the test's virtual one under `tokio::time::pause()` (so locks expire on the time a
/// deterministic test controls).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            epoch: tokio::time::Instant::now(),
        }
    }

    /// Now, for the machine.
    pub(crate) fn now(&self) -> Instant {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.epoch);
        Instant::from_nanos(lucky_core::time::nanos(elapsed))
    }

    /// A machine instant on tokio's clock.
    pub(crate) fn to_tokio(self, t: Instant) -> tokio::time::Instant {
        let d = std::time::Duration::from_nanos(t.as_nanos());
        self.epoch
            .checked_add(d)
            .unwrap_or_else(|| self.epoch + std::time::Duration::from_secs(86_400 * 365 * 30))
    }

    /// A machine instant as a `std::time::Instant` (tokio's instant underneath).
    pub(crate) fn to_std(self, t: Instant) -> std::time::Instant {
        self.to_tokio(t).into_std()
    }
}

/// The wall clock, for what only it can judge: the age of a file's mtime (the file backend's
/// heartbeat). Never for a lock's own deadlines.
#[cfg(feature = "file")]
pub(crate) fn wall_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}
