//! Session-lock configuration: the shared lease settings (the ttl bounds how long a lock is
//! trusted without a fresh probe) and the probe interval.

use crate::error::UsageError;
use crate::lease::{LeaseConfig, LeaseConfigBuilder};
use crate::settings::Lease;
use crate::time::Duration;

/// A validated session-lock configuration. Build it with [`SessionConfig::builder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub(crate) lease: LeaseConfig,
    #[cfg(feature = "bugs")]
    pub(crate) bugs: crate::bugs::Bugs<super::bugs::SessionBug>,
}

impl SessionConfig {
    /// Starts a configuration with the defaults of [`LeaseConfig::builder`] (ttl 30 s, no
    /// automatic probing).
    pub fn builder() -> SessionConfigBuilder {
        SessionConfigBuilder::default()
    }
    /// How long a lock is trusted after the send time of its last confirmation.
    pub fn ttl(&self) -> Duration {
        self.lease.ttl
    }
    /// How long one request waits for its answer (beyond a lock's own server wait).
    pub fn op_timeout(&self) -> Duration {
        self.lease.op_timeout
    }
    /// The drift bound (ppm).
    pub fn drift_ppm(&self) -> u32 {
        self.lease.drift_ppm
    }
    /// Time between automatic probes, if on.
    pub fn probe_every(&self) -> Option<Duration> {
        self.lease.renew_every
    }
}

/// Builder for [`SessionConfig`]; every check happens in [`build`](Self::build).
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `build()`"]
pub struct SessionConfigBuilder {
    lease: LeaseConfigBuilder,
    #[cfg(feature = "bugs")]
    bugs: crate::bugs::Bugs<super::bugs::SessionBug>,
}

impl SessionConfigBuilder {
    /// The shared lease settings: ttl (how long a lock is trusted after its last
    /// confirmation), drift, request timeout, wait, retry.
    pub fn lease(mut self, lease: Lease) -> Self {
        self.lease = self.lease.lease(lease);
        self
    }
    /// Probe the held lock automatically every `every` (default ttl/3), at most
    /// `max_extensions` times; each answered probe extends the trust by the ttl.
    pub fn auto_extend(mut self, every: Option<Duration>, max_extensions: Option<u32>) -> Self {
        self.lease = self.lease.auto_extend(every, max_extensions);
        self
    }
    /// Turns on a deliberately wrong behaviour, so the simulator can prove it catches it.
    #[cfg(feature = "bugs")]
    pub fn inject_bug(mut self, bug: super::bugs::SessionBug) -> Self {
        self.bugs.insert(bug);
        self
    }
    /// Checks everything and returns the configuration, or the first problem found.
    pub fn build(self) -> Result<SessionConfig, UsageError> {
        Ok(SessionConfig {
            lease: self.lease.build()?,
            #[cfg(feature = "bugs")]
            bugs: self.bugs,
        })
    }
}
