//! Errors, split by who is to blame: the caller ([`UsageError`], returned at once) or a server
//! ([`BackendError`], [`LockError`], reported as events).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::time::Duration;

/// The caller misused the API or gave a bad configuration. Returned at once; nothing was sent.
// Each variant is documented by its `#[error]` message.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("no nodes given: a lock needs at least one node (three or more for fault tolerance)")]
    NoNodes,
    #[error("node {second} is the same as node {first}: each node must be listed once")]
    DuplicateNode { first: usize, second: usize },
    #[error("{count} nodes given; at most {max} are supported")]
    TooManyNodes { count: usize, max: usize },
    #[error("ttl is zero: a lock needs a positive time to live")]
    TtlZero,
    #[error("ttl {ttl:?} is above the maximum {max:?}")]
    TtlTooLarge { ttl: Duration, max: Duration },
    #[error("ttl {0:?} is not a whole number of milliseconds (the backend counts milliseconds)")]
    TtlNotWholeMillis(Duration),
    #[error(
        "drift allowance {drift:?} is more than half of ttl {ttl:?}: lower the drift bound \
         (default 10 000 ppm = 1 %) or its floor, or raise the ttl"
    )]
    DriftTooLarge { drift: Duration, ttl: Duration },
    #[error(
        "retry delay and jitter are both zero while more than one attempt is allowed: attempts \
         would spin; give a delay or jitter of at least 1 ms, or wait for one attempt only"
    )]
    RetrySpins,
    #[error("max_attempts is zero: an acquisition makes at least one attempt")]
    MaxAttemptsZero,
    #[error("quorum {quorum} of {n} voters: a quorum must be between 1 and the number of voters")]
    BadQuorum { n: u16, quorum: u16 },
    #[error("per-node timeout is zero")]
    NodeTimeoutZero,
    #[error("per-node timeout {timeout:?} must be shorter than the lock's validity {validity:?}")]
    NodeTimeoutTooLarge {
        timeout: Duration,
        validity: Duration,
    },
    #[error("auto-extend interval {every:?} must be positive and shorter than the validity {validity:?}")]
    BadExtendInterval { every: Duration, validity: Duration },
    #[error("lock name is empty")]
    EmptyKey,
    #[error("lock key is {len} bytes; at most {max} are allowed")]
    KeyTooLong { len: usize, max: usize },
    #[error("lock token is {len} bytes; at least {min} random bytes are required")]
    TokenTooShort { len: usize, min: usize },
    #[error("lock token is {len} bytes; at most {max} are allowed (16 random bytes suffice)")]
    TokenTooLong { len: usize, max: usize },
    #[error("lock key {key:?} ends in {suffix:?}, which Lucky reserves for its own keys")]
    ReservedName { key: String, suffix: &'static str },
    #[error(
        "session timeout {timeout:?} leaves no validity after the ensemble's margins and the \
         check interval ({margin:?}): ask for a longer session timeout (ZooKeeper grants up \
         to 20 ticks) or state the ensemble's real tickTime and syncLimit"
    )]
    SessionTooShort { timeout: Duration, margin: Duration },
    #[error("lock name {name:?} is not allowed: {why}")]
    BadName { name: String, why: &'static str },
    #[error("the lock is not held")]
    NotHeld,
    #[error("an acquisition is already in progress or held")]
    Busy,
}

/// A server answered something the protocol does not allow, or could not be reached.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The server replied with an error (for Redis: `-ERR ...`, `-READONLY ...`, `-OOM ...`).
    #[error("server error: {0}")]
    ErrorReply(String),
    /// The reply had a type or value this command never returns.
    #[error("unexpected reply to {command}: {got}")]
    UnexpectedReply { command: &'static str, got: String },
    /// The driver could not deliver the command or read a reply (refused, reset, closed).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// What one node said to one round of a lock protocol. What "granted" and "refused" mean
/// depends on the round the outcome reports:
///
/// | round | `Granted` | `Refused` |
/// |---|---|---|
/// | acquire ([`LockError`] of a failed acquisition) | the node gave us the lock | another owner holds it |
/// | extend ([`LockError`] in `ExtendFailed` / `Lost`) | the node extended our hold | our hold was gone there |
/// | release (`Event::Released`) | our hold was removed there | nothing of ours was there |
///
/// `NotSent` in a release means the call sent nothing (the lock was already released).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodeOutcome {
    /// Nothing was sent to this node in this round.
    #[default]
    NotSent,
    /// Sent; no reply counted yet.
    Pending,
    /// The node granted the request (acquired, extended, deleted our key).
    Granted,
    /// The node refused: another owner holds the key, or our key was gone.
    Refused,
    /// The node answered wrongly or could not be reached.
    Failed(BackendError),
    /// No reply within the per-node timeout.
    TimedOut,
}

/// Why an acquisition or extension did not win a quorum. Carries every node's outcome.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Enough nodes answered, and too many of them said someone else holds the lock.
    #[error(
        "lock is taken by someone else after {attempts} attempt(s) ({})",
        Summary(nodes)
    )]
    Taken {
        attempts: u32,
        nodes: Vec<NodeOutcome>,
    },
    /// Too many nodes failed or timed out for a quorum to be possible (for a backend reached
    /// as one node, such as an etcd cluster: the backend did not answer in time).
    #[error(
        "no quorum of nodes reachable after {attempts} attempt(s) ({})",
        Summary(nodes)
    )]
    NoQuorum {
        attempts: u32,
        nodes: Vec<NodeOutcome>,
    },
    /// A quorum answered yes, but only after the lock's validity had run out.
    #[error(
        "a quorum answered only after the validity ran out ({})",
        Summary(nodes)
    )]
    TooSlow {
        attempts: u32,
        nodes: Vec<NodeOutcome>,
    },
}

impl LockError {
    /// Every node's outcome in the last round.
    pub fn nodes(&self) -> &[NodeOutcome] {
        match self {
            LockError::Taken { nodes, .. }
            | LockError::NoQuorum { nodes, .. }
            | LockError::TooSlow { nodes, .. } => nodes,
        }
    }
}

struct Summary<'a>(&'a [NodeOutcome]);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |p: fn(&NodeOutcome) -> bool| self.0.iter().filter(|o| p(o)).count();
        write!(
            f,
            "{} granted, {} refused, {} failed, {} timed out of {}",
            count(|o| matches!(o, NodeOutcome::Granted)),
            count(|o| matches!(o, NodeOutcome::Refused)),
            count(|o| matches!(o, NodeOutcome::Failed(_))),
            count(|o| matches!(o, NodeOutcome::TimedOut)),
            self.0.len()
        )?;
        if let Some(NodeOutcome::Failed(e)) =
            self.0.iter().find(|o| matches!(o, NodeOutcome::Failed(_)))
        {
            write!(f, "; first failure: {e}")?;
        }
        Ok(())
    }
}
