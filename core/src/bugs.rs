//! Deliberate protocol bugs, compiled in only with the `bugs` feature, so the simulator can
//! prove that its oracle catches each one. Never enable this feature in production.
// Without the feature only the machines' `bug()` checks name it (always false then).
#![cfg_attr(not(feature = "bugs"), allow(dead_code, unreachable_pub))]

/// A deliberately wrong behaviour of a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// Validity is `start + ttl`: no allowance for clock drift.
    IgnoreDrift,
    /// A reply counts for a node's pending slot whatever op it answers (stale or duplicated).
    CountStaleReplies,
    /// A failed attempt does not release the nodes that granted it.
    NoReleaseOnFailure,
    /// The hold goes on past its deadline while an extension is in flight, and an extension
    /// won after the deadline revives it.
    ExtendAfterExpiry,
    /// The naive RedLock fence: each granting node INCRs its counter and the fence is the max
    /// of the quorum's, with no write-back (not monotonic across quorums).
    FenceMaxOfIncr,
    /// The RedLock fence counter without the node's clock mixed in: a node that restarts
    /// without its data reads 0 and can pull the next fence below one already issued.
    FenceCounterOnly,
    /// A SET granted after its attempt ended is released again only if its reply is `+OK`:
    /// a fenced grant (an integer) is kept, and blocks the node for a ttl whenever the
    /// attempt's release overtook the SET.
    LateGrantOkOnly,
    /// A failed acquisition reports `Failed` at once, its releases still in flight: a caller
    /// that exits then leaves the keys behind for a ttl.
    FailBeforeCleanup,
    /// etcd: a failed acquisition reports `Failed` at once, its lease revoke still in flight.
    EtcdFailBeforeCleanup,
    /// etcd: the lease deadline counts from when a keepalive's answer was read, not from when
    /// the keepalive was sent (a delayed answer or a pause stretches the lock past the lease).
    EtcdLostFromReceiveTime,
    /// etcd: every waiter watches the whole lock prefix instead of its predecessor (a release
    /// wakes them all: the thundering herd).
    EtcdWatchAll,
    /// etcd: a waiter whose predecessor's key was deleted claims the lock without reading the
    /// queue again (the predecessor may have been a waiter that gave up or crashed).
    EtcdSkipRecheck,
    /// etcd cluster: an error from one member is the request's answer (no fail-over to
    /// another member), as a plain balancer that may pick a dead member does.
    EtcdNoFailover,
}

impl Bug {
    /// Every bug, in a stable order.
    pub const ALL: [Bug; 13] = [
        Bug::IgnoreDrift,
        Bug::CountStaleReplies,
        Bug::NoReleaseOnFailure,
        Bug::ExtendAfterExpiry,
        Bug::FenceMaxOfIncr,
        Bug::FenceCounterOnly,
        Bug::LateGrantOkOnly,
        Bug::FailBeforeCleanup,
        Bug::EtcdFailBeforeCleanup,
        Bug::EtcdLostFromReceiveTime,
        Bug::EtcdWatchAll,
        Bug::EtcdSkipRecheck,
        Bug::EtcdNoFailover,
    ];

    /// The name used on the command line, e.g. `ignore-drift`.
    pub const fn name(self) -> &'static str {
        match self {
            Bug::IgnoreDrift => "ignore-drift",
            Bug::CountStaleReplies => "count-stale-replies",
            Bug::NoReleaseOnFailure => "no-release-on-failure",
            Bug::ExtendAfterExpiry => "extend-after-expiry",
            Bug::FenceMaxOfIncr => "fence-max-of-incr",
            Bug::FenceCounterOnly => "fence-counter-only",
            Bug::LateGrantOkOnly => "late-grant-ok-only",
            Bug::FailBeforeCleanup => "fail-before-cleanup",
            Bug::EtcdFailBeforeCleanup => "etcd-fail-before-cleanup",
            Bug::EtcdLostFromReceiveTime => "etcd-lost-from-receive-time",
            Bug::EtcdWatchAll => "etcd-watch-all",
            Bug::EtcdSkipRecheck => "etcd-skip-recheck",
            Bug::EtcdNoFailover => "etcd-no-failover",
        }
    }
}

/// A set of [`Bug`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs(u32);

impl Bugs {
    /// Adds `bug`.
    pub fn insert(&mut self, bug: Bug) {
        self.0 |= 1 << bug as u32;
    }
    /// Whether `bug` is in the set.
    pub const fn contains(self, bug: Bug) -> bool {
        self.0 & (1 << bug as u32) != 0
    }
}
