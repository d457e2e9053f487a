//! Lucky: distributed locks on the servers you already run.
//!
//! You want one process at a time in a critical section, across machines or processes: pick
//! the backend you already run, connect a client once, and `client.lock(name).await` a
//! [`Guard`] that says until when it may be relied on (`valid_until`), carries a fencing token
//! for the resource you protect (`fence`), tells you when it is lost (`lost()`), and releases
//! on drop. One client shape for every backend ([`Builder`], [`LockRequest`], [`Locker`] for a
//! backend chosen at run time, one [`Error`]).
//!
//! Every protocol is a sans-IO state machine in [`lucky_core`] (re-exported here); this crate
//! adds thin tokio drivers, one module per backend behind a cargo feature:
//! - `redis`: [`redis::Redis`], RedLock over independent Redis nodes.
//! - `etcd`: [`etcd::Etcd`], the lease lock of etcd's `concurrency.Mutex` on an etcd cluster.
//! - `memory`: [`memory::Memory`], a process-local lock table on the lease-record machine.
//! - `postgres`: [`postgres::Postgres`], lease rows in a PostgreSQL table, or PostgreSQL's
//!   advisory locks (`.advisory()`).
//! - `mysql`: [`mysql::Mysql`], lease rows in a MySQL/MariaDB table, or `GET_LOCK`
//!   (`.get_lock()`).
//! - `mongodb`: [`mongodb::Mongo`], lease documents in a MongoDB collection (experimental).
//! - `file`: [`file::Files`], `flock` on a lock file per name, for processes on one machine.
//!
//! A driver owns the connections, sends what the machine asks, stamps each reply with the
//! clock, and sleeps until the machine's deadline. Every protocol decision stays in the machine.

#![warn(missing_docs)]

pub use lucky_core::*;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
mod clock;
#[cfg(feature = "client")]
mod driver;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "client")]
mod hints;
#[cfg(feature = "client")]
mod hold;

#[cfg(feature = "client")]
mod keeper;
#[cfg(feature = "lease-family")]
mod lease_family;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "mongodb")]
pub mod mongodb;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "file"))]
mod session_family;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

#[cfg(feature = "client")]
pub use client::{
    Backend, Builder, LockFuture, LockRequest, Locker, WaitFor, DEFAULT_MAX_IN_FLIGHT,
};
#[cfg(feature = "client")]
pub use driver::Guard;

/// Who is to blame, for every backend's error: what a caller branches on (skip the work when
/// taken, retry later when unreachable, call an operator on a backend error, fix the call on
/// usage, stop acting on a lost lock).
#[cfg(feature = "client")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller's input was invalid; nothing was sent.
    Usage,
    /// Someone else holds the lock.
    Taken,
    /// Too few servers could be reached or answered in time.
    Unreachable,
    /// The servers answered, with errors or replies the protocol does not allow (a server
    /// refusing writes, a wrong password, a proxy answering for the server): retrying will
    /// not help until someone fixes the server side.
    Backend,
    /// The lock was held and is no longer: expired, released, or its renewal failed.
    Lost,
    /// This process could not go on: the OS random source failed, or the runtime that drove
    /// the lock is shutting down.
    Local,
}

#[cfg(feature = "client")]
fn lock_error_kind(e: &LockError) -> ErrorKind {
    let answered_wrongly = e.nodes().iter().any(|o| {
        matches!(
            o,
            NodeOutcome::Failed(BackendError::ErrorReply(_) | BackendError::UnexpectedReply { .. })
        )
    });
    match e {
        LockError::Taken { .. } => ErrorKind::Taken,
        LockError::NoQuorum { .. } if answered_wrongly => ErrorKind::Backend,
        LockError::NoQuorum { .. } | LockError::TooSlow { .. } => ErrorKind::Unreachable,
    }
}

/// What can go wrong, for every backend. [`kind`](Error::kind) says who is to blame.
#[cfg(feature = "client")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input from the caller (name, ttl, node list, ...); nothing was sent.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// A node's address could not be used; nothing was sent.
    #[error("bad {backend} address {endpoint}: {reason}")]
    BadEndpoint {
        /// The backend (`Redis`, `etcd`, ...).
        backend: &'static str,
        /// The address, password removed.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// Too few nodes could be reached when connecting.
    #[error("only {reachable} of {total} {backend} nodes reachable, {needed} needed: {details}")]
    Unreachable {
        /// The backend (`Redis`, `etcd`, ...).
        backend: &'static str,
        /// Nodes that answered.
        reachable: usize,
        /// Nodes configured.
        total: usize,
        /// Nodes needed.
        needed: usize,
        /// Per failing node, why (passwords removed).
        details: String,
    },
    /// The lock was not acquired or not extended: taken by someone else, or too few nodes
    /// answered well (every node's outcome is inside).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The lock is no longer held (expired, released, or its renewal failed): nothing can be
    /// extended.
    #[error("the lock is no longer held")]
    Lost,
    /// The OS random source failed; no token could be made.
    #[error("the OS random source failed: {0}")]
    Random(String),
    /// The background driver stopped (the runtime is shutting down).
    #[error("the lock driver stopped")]
    DriverGone,
    /// The client already runs as many first attempts as it allows (`max_in_flight`) and no
    /// slot came free within the request's wait.
    #[error("client busy: {in_flight} acquisitions already in their first attempt, none done within the wait of {waited:?} (raise max_in_flight or the wait)")]
    Overloaded {
        /// The client's bound.
        in_flight: usize,
        /// How long this request waited for a slot.
        waited: std::time::Duration,
    },
}

#[cfg(feature = "client")]
impl Error {
    /// Who is to blame: the same kinds for every backend.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage(_) | Error::BadEndpoint { .. } => ErrorKind::Usage,
            Error::Unreachable { .. } => ErrorKind::Unreachable,
            Error::Lock(e) => lock_error_kind(e),
            Error::Lost => ErrorKind::Lost,
            Error::Random(_) | Error::DriverGone | Error::Overloaded { .. } => ErrorKind::Local,
        }
    }
    /// Whether someone else holds the lock.
    pub fn is_taken(&self) -> bool {
        self.kind() == ErrorKind::Taken
    }
    /// Whether too few nodes could be reached (or answered in time).
    pub fn is_unreachable(&self) -> bool {
        self.kind() == ErrorKind::Unreachable
    }
}

/// Replaces the password of every `scheme://user:password@host` in `s` with `***` (for
/// messages and logs; the command-line tool uses it too).
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(['/', ' ', ';', ',']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(c) => {
                        out.push_str(&userinfo[..c]);
                        out.push_str(":***");
                    }
                    None if !userinfo.is_empty() => out.push_str("***"),
                    None => {}
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}
