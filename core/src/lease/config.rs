//! Lease-record lock configuration: validated once, shared by every lock of a client.

use crate::error::UsageError;
use crate::settings::{Lease, Retry, Wait};
use crate::time::{drift_allowance, Duration};

/// A validated lease-record configuration. Build it with [`LeaseConfig::builder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub(crate) ttl: Duration,
    pub(crate) drift_ppm: u32,
    pub(crate) drift_floor: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) retry: Retry,
    pub(crate) wait: Wait,
    pub(crate) renew_every: Option<Duration>,
    pub(crate) max_extensions: Option<u32>,
    #[cfg(feature = "bugs")]
    pub(crate) bugs: crate::bugs::Bugs<super::bugs::LeaseBug>,
}

impl LeaseConfig {
    /// Starts a configuration with the defaults: ttl 30 s, drift 10 000 ppm + 2 ms, request
    /// timeout ttl/20 (at most 5 s), wait 10 s, retry 50-250 ms, no automatic renewal.
    pub fn builder() -> LeaseConfigBuilder {
        LeaseConfigBuilder::default()
    }
    /// Time to live of the record.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    /// Drift allowance kept back from a record of `ttl`.
    pub fn drift_for(&self, ttl: Duration) -> Duration {
        drift_allowance(ttl, self.drift_ppm, self.drift_floor)
    }
    /// The drift bound (ppm).
    pub fn drift_ppm(&self) -> u32 {
        self.drift_ppm
    }
    /// How long one request waits for its answer.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }
    /// How long an acquisition keeps trying.
    pub fn wait(&self) -> Wait {
        self.wait
    }
    /// Delay between attempts.
    pub fn retry(&self) -> Retry {
        self.retry
    }
    /// Time between automatic renewals, if on.
    pub fn renew_every(&self) -> Option<Duration> {
        self.renew_every
    }
}

/// Builder for [`LeaseConfig`]; every check happens in [`build`](Self::build).
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `build()`"]
pub struct LeaseConfigBuilder {
    lease: Lease,
    auto_extend: Option<(Option<Duration>, Option<u32>)>,
    #[cfg(feature = "bugs")]
    bugs: crate::bugs::Bugs<super::bugs::LeaseBug>,
}

impl LeaseConfigBuilder {
    crate::settings::lease_setters!(
        ttl: "Time to live of the record: positive, at most [`MAX_TTL`](crate::settings::MAX_TTL).",
        timeout: op_timeout,
        "Timeout of each request (default ttl/20, at most 5 s); must be shorter than the validity."
    );
    /// Renew automatically every `every` (default ttl/3), at most `max_extensions` times.
    pub fn auto_extend(mut self, every: Option<Duration>, max_extensions: Option<u32>) -> Self {
        self.auto_extend = Some((every, max_extensions));
        self
    }
    /// Turns on a deliberately wrong behaviour, so the simulator can prove it catches it.
    #[cfg(feature = "bugs")]
    pub fn inject_bug(mut self, bug: super::bugs::LeaseBug) -> Self {
        self.bugs.insert(bug);
        self
    }

    /// Checks everything and returns the configuration, or the first problem found.
    pub fn build(self) -> Result<LeaseConfig, UsageError> {
        let lease = self.lease.check(None, |ttl, validity| {
            (ttl / 20).min(Duration::from_secs(5)).min(validity / 2)
        })?;
        let (renew_every, max_extensions) = match self.auto_extend {
            None => (None, None),
            Some((every, max)) => {
                let every = every.unwrap_or(lease.ttl / 3);
                if every.is_zero() || every >= lease.validity {
                    return Err(UsageError::BadExtendInterval {
                        every,
                        validity: lease.validity,
                    });
                }
                (Some(every), max)
            }
        };
        Ok(LeaseConfig {
            ttl: lease.ttl,
            drift_ppm: self.lease.drift_ppm,
            drift_floor: self.lease.drift_floor,
            op_timeout: lease.op_timeout,
            retry: self.lease.retry,
            wait: self.lease.wait,
            renew_every,
            max_extensions,
            #[cfg(feature = "bugs")]
            bugs: self.bugs,
        })
    }
}
