//! The etcd lock's deliberate bugs (feature `bugs`; never in a release build), each caught by
//! a simulator scenario.
// Without the feature only the machine's `bug()` checks name it (always false then).
#![cfg_attr(not(feature = "bugs"), allow(dead_code))]

crate::bugs::declare_bugs! {
    /// A deliberately wrong behaviour of the etcd machine or of its fail-over.
    pub enum EtcdBug {
        /// A failed acquisition reports `Failed` at once, its lease revoke still in flight.
        FailBeforeCleanup => "etcd-fail-before-cleanup",
        /// The lease deadline counts from when a keepalive's answer was read, not from when
        /// the keepalive was sent (a delayed answer or a pause stretches the lock past the
        /// lease).
        LostFromReceiveTime => "etcd-lost-from-receive-time",
        /// Every waiter watches the whole lock prefix instead of its predecessor (a release
        /// wakes them all: the thundering herd).
        WatchAll => "etcd-watch-all",
        /// A waiter whose predecessor's key was deleted claims the lock without reading the
        /// queue again (the predecessor may have been a waiter that gave up or crashed).
        SkipRecheck => "etcd-skip-recheck",
        /// An error from one member is the request's answer (no fail-over to another
        /// member), as a plain balancer that may pick a dead member does.
        NoFailover => "etcd-no-failover",
        /// On a shared session lease, takes carry no guard: a take still in flight when its
        /// attempt was abandoned creates the key afterwards, an orphan the living session
        /// keeps in the queue.
        SessionNoGuard => "etcd-session-no-guard",
    }
}
