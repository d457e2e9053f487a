//! RedLock configuration: validated once, shared by every lock of a client.

use bytes::Bytes;

use crate::error::UsageError;
use crate::quorum::Tally;
use crate::settings::{Lease, Retry, Wait, MAX_KEY_LEN};
use crate::time::Duration;

/// Most nodes a RedLock may span.
pub const MAX_NODES: usize = 255;
/// Default ttl (the one every protocol shares).
pub const DEFAULT_TTL: Duration = crate::settings::DEFAULT_TTL;

/// Automatic extension of a held lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoExtend {
    /// Time between extensions, counted from the start of the last successful round.
    pub every: Duration,
    /// Stop after this many successful extensions (then the lock expires), or never.
    pub max_extensions: Option<u32>,
}

/// A validated RedLock configuration. Build it with [`RedLockConfig::builder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedLockConfig {
    pub(crate) nodes: u16,
    pub(crate) quorum: u16,
    pub(crate) ttl: Duration,
    pub(crate) drift: Duration,
    pub(crate) node_timeout: Duration,
    pub(crate) retry: Retry,
    pub(crate) wait: Wait,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) auto_extend: Option<AutoExtend>,
    pub(crate) key_prefix: Bytes,
    pub(crate) fencing: bool,
    #[cfg(feature = "bugs")]
    pub(crate) bugs: crate::bugs::Bugs<super::bugs::RedLockBug>,
}

impl RedLockConfig {
    /// Starts a configuration with the defaults: ttl 30 s, drift 10 000 ppm + 2 ms, per-node
    /// timeout ttl/20, wait 10 s, retry 50-250 ms, no auto-extension, no key prefix.
    pub fn builder() -> RedLockConfigBuilder {
        RedLockConfigBuilder::default()
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        usize::from(self.nodes)
    }
    /// Votes needed: `nodes / 2 + 1`.
    pub fn quorum(&self) -> usize {
        usize::from(self.quorum)
    }
    /// Time to live of the key on each node.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    /// Drift allowance subtracted from the ttl: `ttl * drift_ppm / 1e6 + floor`.
    pub fn drift(&self) -> Duration {
        self.drift
    }
    /// How long a lock is held after the round that won it started: `ttl - drift`.
    pub fn validity(&self) -> Duration {
        self.ttl - self.drift
    }
    /// How long one round waits for a node before counting it as failed.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }
    /// Retry delay policy.
    pub fn retry(&self) -> Retry {
        self.retry
    }
    /// How long an acquisition keeps trying.
    pub fn wait(&self) -> Wait {
        self.wait
    }
    /// Attempt limit, if any.
    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }
    /// Auto-extension, if enabled.
    pub fn auto_extend(&self) -> Option<AutoExtend> {
        self.auto_extend
    }
    /// Whether acquisitions carry a quorum fence (a second round trip).
    pub fn fencing(&self) -> bool {
        self.fencing
    }
    /// Prefix put before every lock name to form the key.
    pub fn key_prefix(&self) -> &[u8] {
        &self.key_prefix
    }
    pub(crate) fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Builder for [`RedLockConfig`]; every check happens in [`build`](Self::build).
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct RedLockConfigBuilder {
    nodes: Result<usize, UsageError>,
    lease: Lease,
    max_attempts: Option<u32>,
    auto_extend: Option<(Option<Duration>, Option<u32>)>,
    key_prefix: Bytes,
    fencing: bool,
    #[cfg(feature = "bugs")]
    bugs: crate::bugs::Bugs<super::bugs::RedLockBug>,
}

impl Default for RedLockConfigBuilder {
    fn default() -> Self {
        RedLockConfigBuilder {
            nodes: Err(UsageError::NoNodes),
            lease: Lease::default(),
            max_attempts: None,
            auto_extend: None,
            key_prefix: Bytes::new(),
            fencing: false,
            #[cfg(feature = "bugs")]
            bugs: crate::bugs::Bugs::default(),
        }
    }
}

impl RedLockConfigBuilder {
    crate::settings::lease_setters!(
        ttl: "Time to live: positive, whole milliseconds, at most [`MAX_TTL`](crate::settings::MAX_TTL).",
        timeout: node_timeout,
        "Per-node timeout of each round (default ttl/20); must be shorter than the validity."
    );
    /// The nodes, by whatever identifies them to the caller (URLs, addresses). Only their
    /// count and distinctness matter here; node `i` of the machine is the `i`-th given.
    pub fn nodes<T: PartialEq>(mut self, nodes: &[T]) -> Self {
        self.nodes = check_nodes(nodes);
        self
    }
    /// `n` distinct nodes, when the caller has already checked their identities.
    pub fn node_count(mut self, n: usize) -> Self {
        self.nodes = if n == 0 {
            Err(UsageError::NoNodes)
        } else if n > MAX_NODES {
            Err(UsageError::TooManyNodes {
                count: n,
                max: MAX_NODES,
            })
        } else {
            Ok(n)
        };
        self
    }
    /// At most this many attempts (in addition to the wait bound); at least one.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }
    /// Extend automatically every `every` (default: ttl / 3), at most `max_extensions` times.
    pub fn auto_extend(mut self, every: Option<Duration>, max_extensions: Option<u32>) -> Self {
        self.auto_extend = Some((every, max_extensions));
        self
    }
    /// Prefix put before every lock name (default none: the key is the name, as in redsync,
    /// node-redlock and rslock, so Lucky and those clients exclude each other).
    pub fn key_prefix(mut self, prefix: impl Into<Bytes>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Turns on a deliberately wrong behaviour, so the simulator can prove it catches it.
    #[cfg(feature = "bugs")]
    pub fn inject_bug(mut self, bug: super::bugs::RedLockBug) -> Self {
        self.bugs.insert(bug);
        self
    }

    /// Fencing tokens (default off here; the `lucky` adapters turn it on). On, each
    /// acquisition reads the fence counter on every granting node, takes `T = max + 1`, and
    /// counts only once a majority stored `T` (compare-and-raise, while it owns the key) inside
    /// the validity: one more round trip, and fences strictly increase across holders as long
    /// as no node loses its counter. Off, `Acquired.fence` is `None` and the key is plain
    /// `SET NX PX`.
    pub fn fencing(mut self, on: bool) -> Self {
        self.fencing = on;
        self
    }

    /// Checks everything and returns the configuration, or the first problem found.
    pub fn build(self) -> Result<RedLockConfig, UsageError> {
        let nodes = self.nodes?;
        let ttl = self.lease.ttl;
        // In the order the shared checks run: zero and too large are reported as such.
        if ttl.subsec_nanos() % 1_000_000 != 0 && !ttl.is_zero() && ttl <= crate::settings::MAX_TTL
        {
            return Err(UsageError::TtlNotWholeMillis(ttl));
        }
        let lease = self.lease.check(self.max_attempts, |ttl, validity| {
            (ttl / 20).min(validity / 2)
        })?;
        let validity = lease.validity;
        let auto_extend = match self.auto_extend {
            None => None,
            Some((every, max_extensions)) => {
                let every = every.unwrap_or(ttl / 3);
                if every.is_zero() || every >= validity {
                    return Err(UsageError::BadExtendInterval { every, validity });
                }
                Some(AutoExtend {
                    every,
                    max_extensions,
                })
            }
        };
        if self.key_prefix.len() >= MAX_KEY_LEN {
            return Err(UsageError::KeyTooLong {
                len: self.key_prefix.len(),
                max: MAX_KEY_LEN,
            });
        }
        let nodes = u16::try_from(nodes).unwrap_or(u16::MAX);
        Ok(RedLockConfig {
            nodes,
            quorum: Tally::majority(nodes),
            ttl,
            drift: lease.drift,
            node_timeout: lease.op_timeout,
            retry: self.lease.retry,
            wait: self.lease.wait,
            max_attempts: self.max_attempts,
            auto_extend,
            key_prefix: self.key_prefix,
            fencing: self.fencing,
            #[cfg(feature = "bugs")]
            bugs: self.bugs,
        })
    }
}

fn check_nodes<T: PartialEq>(nodes: &[T]) -> Result<usize, UsageError> {
    if nodes.is_empty() {
        return Err(UsageError::NoNodes);
    }
    if nodes.len() > MAX_NODES {
        return Err(UsageError::TooManyNodes {
            count: nodes.len(),
            max: MAX_NODES,
        });
    }
    for (second, node) in nodes.iter().enumerate() {
        if let Some(first) = nodes[..second].iter().position(|n| n == node) {
            return Err(UsageError::DuplicateNode { first, second });
        }
    }
    Ok(nodes.len())
}
