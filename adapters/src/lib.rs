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
#[cfg(any(feature = "redis", feature = "etcd"))]
pub mod locker;
#[cfg(feature = "redis")]
pub mod redis;

#[cfg(any(feature = "redis", feature = "etcd"))]
pub use driver::Guard;
#[cfg(any(feature = "redis", feature = "etcd"))]
pub use locker::{AnyError, Locker, WaitFor};

/// Who said no, for every backend's error: what a caller branches on (skip the work when
/// taken, retry later when unreachable, fix the call when usage).
#[cfg(any(feature = "redis", feature = "etcd"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller's input was invalid; nothing was sent.
    Usage,
    /// Someone else holds the lock.
    Taken,
    /// Too few servers could be reached or answered in time.
    Unreachable,
    /// This process could not go on: the OS random source failed, or the runtime that drove
    /// the lock is shutting down.
    Local,
}

#[cfg(any(feature = "redis", feature = "etcd"))]
fn lock_error_kind(e: &LockError) -> ErrorKind {
    match e {
        LockError::Taken { .. } => ErrorKind::Taken,
        LockError::NoQuorum { .. } | LockError::TooSlow { .. } => ErrorKind::Unreachable,
    }
}

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

#[cfg(any(feature = "redis", feature = "etcd"))]
impl Error {
    /// Who said no.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage(_) => ErrorKind::Usage,
            Error::Lock(e) => lock_error_kind(e),
            Error::DriverGone => ErrorKind::Local,
        }
    }
}
