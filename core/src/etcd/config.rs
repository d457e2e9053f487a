//! etcd lock configuration: validated once, shared by every lock of a client.

use crate::error::UsageError;
use crate::settings::{Lease, Retry, Wait, MAX_KEY_LEN};
use crate::time::{drift_allowance, Duration};

/// Default lease ttl (etcd's own `concurrency` default is 60 s; a shorter lease frees the lock
/// of a crashed holder sooner).
pub const DEFAULT_TTL: Duration = crate::settings::DEFAULT_TTL;

/// A validated etcd lock configuration. Build it with [`EtcdConfig::builder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    pub(crate) ttl: Duration,
    pub(crate) drift_ppm: u32,
    pub(crate) drift_floor: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) keepalive_every: Duration,
    pub(crate) recheck: Duration,
    pub(crate) retry: Retry,
    pub(crate) wait: Wait,
    #[cfg(feature = "bugs")]
    pub(crate) bugs: crate::bugs::Bugs<super::bugs::EtcdBug>,
}

impl EtcdConfig {
    /// Starts a configuration with the defaults: lease ttl 30 s, drift 10 000 ppm + 2 ms,
    /// request timeout ttl/20 (at most 5 s), keepalive every ttl/3, watch re-check every ttl,
    /// wait 10 s, retry 50-250 ms.
    pub fn builder() -> EtcdConfigBuilder {
        EtcdConfigBuilder::default()
    }
    /// Requested lease time to live: the configured one rounded up to whole seconds.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    /// The lease ttl in the whole seconds etcd counts (the ttl is a whole number of seconds).
    pub fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }
    /// Drift allowance subtracted from a lease of `ttl`.
    pub fn drift_for(&self, ttl: Duration) -> Duration {
        drift_allowance(ttl, self.drift_ppm, self.drift_floor)
    }
    /// The drift bound this configuration tolerates (ppm).
    pub fn drift_ppm(&self) -> u32 {
        self.drift_ppm
    }
    /// How long one request waits for its reply.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }
    /// Time between keepalives, counted from the send of the last acknowledged one.
    pub fn keepalive_every(&self) -> Duration {
        self.keepalive_every
    }
    /// How long a waiter trusts one watch before reading the queue again.
    pub fn recheck(&self) -> Duration {
        self.recheck
    }
    /// Retry delay after a failed request.
    pub fn retry(&self) -> Retry {
        self.retry
    }
    /// How long an acquisition keeps trying (queued or retrying).
    pub fn wait(&self) -> Wait {
        self.wait
    }
}

/// Builder for [`EtcdConfig`]; every check happens in [`build`](Self::build).
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `build()`"]
pub struct EtcdConfigBuilder {
    lease: Lease,
    keepalive_every: Option<Duration>,
    recheck: Option<Duration>,
    #[cfg(feature = "bugs")]
    bugs: crate::bugs::Bugs<super::bugs::EtcdBug>,
}

impl EtcdConfigBuilder {
    crate::settings::lease_setters!(
        ttl: "Lease time to live: positive, at most [`MAX_TTL`](crate::settings::MAX_TTL). etcd counts whole seconds: the ttl is rounded up. etcd may grant more (its minimum is 1.5x its election timeout, 2 s by default) or less: the machine relies on the smaller of granted and asked.",
        timeout: op_timeout,
        "Timeout of each request (not of watches; default ttl/20, at most 5 s); must be shorter than the validity."
    );
    /// Time between keepalives (default ttl/3, as etcd's own client).
    pub fn keepalive_every(mut self, every: Duration) -> Self {
        self.keepalive_every = Some(every);
        self
    }
    /// How long a waiter trusts a watch before it reads the queue again (default ttl): a
    /// safety net for a watch the transport lost without saying so.
    pub fn recheck(mut self, every: Duration) -> Self {
        self.recheck = Some(every);
        self
    }
    /// Turns on a deliberately wrong behaviour, so the simulator can prove it catches it.
    #[cfg(feature = "bugs")]
    pub fn inject_bug(mut self, bug: super::bugs::EtcdBug) -> Self {
        self.bugs.insert(bug);
        self
    }

    /// Checks everything and returns the configuration, or the first problem found.
    pub fn build(self) -> Result<EtcdConfig, UsageError> {
        // etcd grants whole seconds: the lease asked for (and relied on) is the ttl rounded
        // up, so every check below judges the lease that will exist.
        let mut asked = self.lease;
        if asked.ttl.subsec_nanos() > 0 {
            asked.ttl = Duration::from_secs(asked.ttl.as_secs().saturating_add(1));
        }
        let lease = asked.check(None, |ttl, validity| {
            (ttl / 20).min(Duration::from_secs(5)).min(validity / 2)
        })?;
        let (ttl, validity, op_timeout) = (lease.ttl, lease.validity, lease.op_timeout);
        let every = self.keepalive_every.unwrap_or(ttl / 3);
        if every.is_zero() || every >= validity {
            return Err(UsageError::BadExtendInterval { every, validity });
        }
        let recheck = self.recheck.unwrap_or(ttl).max(op_timeout);
        Ok(EtcdConfig {
            ttl,
            drift_ppm: self.lease.drift_ppm,
            drift_floor: self.lease.drift_floor,
            op_timeout,
            keepalive_every: every,
            recheck,
            retry: self.lease.retry,
            wait: self.lease.wait,
            #[cfg(feature = "bugs")]
            bugs: self.bugs,
        })
    }
}

/// Longest lock name accepted, in bytes (the key adds `/` and up to 16 hex digits).
pub const MAX_NAME_LEN: usize = MAX_KEY_LEN - 17;
