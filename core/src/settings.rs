//! Settings every lease protocol shares: how long to wait and how to space attempts, the
//! drift allowance and its defaults, the largest ttl and key, checked in one place; and the
//! attempt bookkeeping (count, wait deadline, jittered retry) every machine keeps alike.

use crate::error::UsageError;
use crate::rng::SplitMix64;
use crate::time::{nanos, Duration, Instant};

/// Default ttl of every protocol: long enough that a renewal every ttl/3 costs little, short
/// enough that a crashed holder's lock frees within half a minute.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Longest ttl accepted: one year. Longer leases are almost surely a unit mistake, and the
/// value stays far inside Redis's PX range and our nanosecond arithmetic.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest key (prefix + name) accepted, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Shortest token accepted (bytes): 128 bits.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 64;
/// Default clock drift rate bound, in parts per million (1%, as the Redis page suggests).
pub const DEFAULT_DRIFT_PPM: u32 = 10_000;
/// Default constant added to the drift allowance (timer and scheduling slack).
pub const DEFAULT_DRIFT_FLOOR: Duration = Duration::from_millis(2);

/// How long an acquisition keeps trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// One attempt only.
    None,
    /// Start attempts until this long after `acquire` was called.
    For(Duration),
    /// Keep trying until acquired or cancelled.
    Forever,
}

/// Delay between attempts: `delay + uniform(0..=jitter)`, from the caller-given seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Fixed part of the delay.
    pub delay: Duration,
    /// Upper bound of the random part.
    pub jitter: Duration,
}

impl Default for Retry {
    /// 50 to 250 ms, as go-redsync.
    fn default() -> Self {
        Retry {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(200),
        }
    }
}

/// The settings every lease protocol shares, checked by one rule set (run by
/// every protocol's config builder): how long the lock lives, how much of that is kept back for
/// clock drift, how long one request may take, and how an acquisition waits and retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Time to live: positive, at most [`MAX_TTL`] (a protocol may ask for a coarser unit).
    pub ttl: Duration,
    /// Clock drift rate bound, in parts per million.
    pub drift_ppm: u32,
    /// Constant added to the drift allowance.
    pub drift_floor: Duration,
    /// Timeout of one request to one node; `None`: the protocol's default (about ttl/20).
    pub op_timeout: Option<Duration>,
    /// How long an acquisition keeps trying.
    pub wait: Wait,
    /// Delay between attempts.
    pub retry: Retry,
}

impl Default for Lease {
    /// ttl 30 s, drift 10 000 ppm + 2 ms, the protocol's request timeout, wait 10 s, retry
    /// 50-250 ms.
    fn default() -> Self {
        Lease {
            ttl: DEFAULT_TTL,
            drift_ppm: DEFAULT_DRIFT_PPM,
            drift_floor: DEFAULT_DRIFT_FLOOR,
            op_timeout: None,
            wait: Wait::For(Duration::from_secs(10)),
            retry: Retry::default(),
        }
    }
}

/// A [`Lease`] that passed [`Lease::check`], with what follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CheckedLease {
    pub(crate) ttl: Duration,
    pub(crate) drift: Duration,
    pub(crate) validity: Duration,
    pub(crate) op_timeout: Duration,
}

impl Lease {
    /// Checks the settings: ttl positive and at most [`MAX_TTL`], drift at most half the ttl,
    /// attempts that cannot spin, a request timeout (`default_op(ttl, validity)` when none is
    /// given) positive and shorter than the validity.
    pub(crate) fn check(
        &self,
        max_attempts: Option<u32>,
        default_op: impl FnOnce(Duration, Duration) -> Duration,
    ) -> Result<CheckedLease, UsageError> {
        let ttl = self.ttl;
        if ttl.is_zero() {
            return Err(UsageError::TtlZero);
        }
        if ttl > MAX_TTL {
            return Err(UsageError::TtlTooLarge { ttl, max: MAX_TTL });
        }
        let drift = crate::time::drift_allowance(ttl, self.drift_ppm, self.drift_floor);
        check_drift(drift, ttl)?;
        check_retry(self.retry, self.wait, max_attempts)?;
        let validity = ttl - drift;
        let op_timeout = self.op_timeout.unwrap_or_else(|| default_op(ttl, validity));
        if op_timeout.is_zero() {
            return Err(UsageError::NodeTimeoutZero);
        }
        if op_timeout >= validity {
            return Err(UsageError::NodeTimeoutTooLarge {
                timeout: op_timeout,
                validity,
            });
        }
        Ok(CheckedLease {
            ttl,
            drift,
            validity,
            op_timeout,
        })
    }
}

/// The setters of the shared [`Lease`] settings, written once for every protocol's config
/// builder (a builder with a `lease: Lease` field): `lease`, `ttl`, `drift`, the request
/// timeout (named as the protocol names it), `retry`, `wait`.
macro_rules! lease_setters {
    (ttl: $ttl_doc:literal, timeout: $timeout:ident, $timeout_doc:literal) => {
        /// Every shared lease setting at once (ttl, drift, request timeout, wait, retry).
        pub fn lease(mut self, lease: $crate::settings::Lease) -> Self {
            self.lease = lease;
            self
        }
        #[doc = $ttl_doc]
        pub fn ttl(mut self, ttl: $crate::time::Duration) -> Self {
            self.lease.ttl = ttl;
            self
        }
        /// Clock drift rate bound in parts per million and the constant floor added to it.
        pub fn drift(mut self, ppm: u32, floor: $crate::time::Duration) -> Self {
            self.lease.drift_ppm = ppm;
            self.lease.drift_floor = floor;
            self
        }
        #[doc = $timeout_doc]
        pub fn $timeout(mut self, timeout: $crate::time::Duration) -> Self {
            self.lease.op_timeout = Some(timeout);
            self
        }
        /// Delay between attempts.
        pub fn retry(mut self, retry: $crate::settings::Retry) -> Self {
            self.lease.retry = retry;
            self
        }
        /// How long to keep trying.
        pub fn wait(mut self, wait: $crate::settings::Wait) -> Self {
            self.lease.wait = wait;
            self
        }
    };
}
pub(crate) use lease_setters;

/// A lock key (`len` bytes, prefix included) must be non-empty and at most `max` bytes.
pub(crate) fn check_key(len: usize, max: usize) -> Result<(), UsageError> {
    if len == 0 {
        return Err(UsageError::EmptyKey);
    }
    if len > max {
        return Err(UsageError::KeyTooLong { len, max });
    }
    Ok(())
}

/// A token proves a key is ours: [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] bytes.
pub(crate) fn check_token(token: &[u8]) -> Result<(), UsageError> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(UsageError::TokenTooShort {
            len: token.len(),
            min: MIN_TOKEN_LEN,
        });
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(UsageError::TokenTooLong {
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    Ok(())
}

/// A drift allowance above half the ttl leaves a lock too short to be of use (and says the
/// bound is almost surely a unit mistake).
fn check_drift(drift: Duration, ttl: Duration) -> Result<(), UsageError> {
    if drift > ttl / 2 {
        return Err(UsageError::DriftTooLarge { drift, ttl });
    }
    Ok(())
}

/// Attempts with no delay between them would spin; zero attempts cannot acquire.
fn check_retry(retry: Retry, wait: Wait, max_attempts: Option<u32>) -> Result<(), UsageError> {
    if max_attempts == Some(0) {
        return Err(UsageError::MaxAttemptsZero);
    }
    let retries = wait != Wait::None && max_attempts != Some(1);
    if retries && retry.delay.is_zero() && retry.jitter.is_zero() {
        return Err(UsageError::RetrySpins);
    }
    Ok(())
}

/// The least round trip a quick retry after a split vote assumes: replies read together (a
/// busy client, a simulator with no delay) must not make it an immediate retry.
const MIN_QUICK_ROUND_TRIP: Duration = Duration::from_micros(500);

/// Attempts of one acquisition: how many were made, until when new ones may start, and the
/// jitter of the delay between them (seeded by the caller).
#[derive(Clone, Debug)]
pub(crate) struct Attempts {
    /// Attempts started in this acquisition.
    pub(crate) count: u32,
    /// No attempt starts at or after this.
    pub(crate) wait_until: Instant,
    rng: SplitMix64,
}

impl Attempts {
    pub(crate) const fn new(seed: u64) -> Attempts {
        Attempts {
            count: 0,
            wait_until: Instant::ZERO,
            rng: SplitMix64::new(seed),
        }
    }

    /// A new acquisition at `now` that may keep trying as `wait` says.
    pub(crate) fn begin(&mut self, now: Instant, wait: Wait) {
        self.count = 0;
        self.wait_until = match wait {
            Wait::None => now,
            Wait::For(d) => now + d,
            Wait::Forever => Instant::MAX,
        };
    }

    /// Counts an attempt starting.
    pub(crate) fn start(&mut self) {
        self.count = self.count.saturating_add(1);
    }

    /// When the next attempt may start, if the wait and attempt limits allow one: after
    /// `retry`'s delay and jitter, or after 1-3 `quick` round trips when that is sooner.
    pub(crate) fn next_retry(
        &mut self,
        now: Instant,
        retry: Retry,
        max_attempts: Option<u32>,
        quick: Option<Duration>,
    ) -> Option<Instant> {
        if max_attempts.is_some_and(|max| self.count >= max) || now >= self.wait_until {
            return None;
        }
        let jitter = self.rng.below_or_eq(nanos(retry.jitter));
        let mut at = now + retry.delay + Duration::from_nanos(jitter);
        if let Some(rtt) = quick {
            let rtt = nanos(rtt.max(MIN_QUICK_ROUND_TRIP));
            let spread = self.rng.below_or_eq(rtt.saturating_mul(2));
            let soon = now + Duration::from_nanos(rtt.saturating_add(spread));
            at = at.min(soon);
        }
        Some(at.min(self.wait_until))
    }

    /// The caller's clock stepped back by `by`.
    pub(crate) fn rebase_back(&mut self, by: Duration) {
        self.wait_until = self.wait_until.rebase_back(by);
    }
}
