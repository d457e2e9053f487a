//! Lucky: distributed locks on the servers you already run.
//!
//! Every protocol is a sans-IO state machine in [`lucky_core`] (re-exported here); this crate
//! adds thin tokio drivers, one module per backend behind a cargo feature:
//! - `redis`: [`redis::Redis`], RedLock over independent Redis nodes.
//! - `etcd`: [`etcd::Etcd`], the lease lock of etcd's `concurrency.Mutex` on an etcd cluster.
//!
//! A driver owns the connections, sends what the machine asks, stamps each reply with the
//! clock, and sleeps until the machine's deadline. Every protocol decision stays in the machine.

pub use lucky_core::*;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(any(feature = "redis", feature = "etcd"))]
mod clock;
#[cfg(any(feature = "redis", feature = "etcd"))]
mod driver;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(any(feature = "redis", feature = "etcd"))]
mod hold;
#[cfg(feature = "redis")]
pub mod redis;

#[cfg(any(feature = "redis", feature = "etcd"))]
pub use driver::Guard;

/// Errors shared by every backend's driver.
#[cfg(any(feature = "redis", feature = "etcd"))]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the caller; nothing was sent.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The lock was not acquired.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The background driver stopped.
    #[error("the lock driver stopped")]
    DriverGone,
}
