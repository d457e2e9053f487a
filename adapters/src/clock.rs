//! Maps the process's monotonic clock onto lucky-core's [`Instant`](lucky_core::Instant).
#![allow(clippy::disallowed_methods)] // the adapters own the clock; the machines never read it

use lucky_core::Instant;

/// Nanoseconds since this clock was made, on `std::time::Instant`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: std::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            epoch: std::time::Instant::now(),
        }
    }

    /// Now, for the machine.
    pub(crate) fn now(&self) -> Instant {
        Instant::from_nanos(lucky_core::time::nanos(self.epoch.elapsed()))
    }

    /// A machine instant on the std clock.
    pub(crate) fn to_std(self, t: Instant) -> std::time::Instant {
        let d = std::time::Duration::from_nanos(t.as_nanos());
        self.epoch
            .checked_add(d)
            .unwrap_or_else(|| self.epoch + std::time::Duration::from_secs(86_400 * 365 * 30))
    }

    /// A machine instant on tokio's clock.
    pub(crate) fn to_tokio(self, t: Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.to_std(t))
    }
}
