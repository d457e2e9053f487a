//! RedLock's deliberate bugs (feature `bugs`; never in a release build), each caught by a
//! simulator scenario.
// Without the feature only the machine's `bug()` checks name it (always false then).
#![cfg_attr(not(feature = "bugs"), allow(dead_code))]

crate::bugs::declare_bugs! {
    /// A deliberately wrong behaviour of the RedLock machine.
    pub enum RedLockBug {
        /// Validity is `start + ttl`: no allowance for clock drift.
        IgnoreDrift => "ignore-drift",
        /// A reply counts for a node's pending slot whatever op it answers (stale or
        /// duplicated).
        CountStaleReplies => "count-stale-replies",
        /// A failed attempt does not release the nodes that granted it.
        NoReleaseOnFailure => "no-release-on-failure",
        /// The hold goes on past its deadline while an extension is in flight, and an
        /// extension won after the deadline revives it.
        ExtendAfterExpiry => "extend-after-expiry",
        /// The naive RedLock fence: each granting node INCRs its counter and the fence is the
        /// max of the quorum's, with no write-back (not monotonic across quorums).
        FenceMaxOfIncr => "fence-max-of-incr",
        /// The fence counter without the node's clock mixed in: a node that restarts without
        /// its data reads 0 and can pull the next fence below one already issued.
        FenceCounterOnly => "fence-counter-only",
        /// A SET granted after its attempt ended is released again only if its reply is
        /// `+OK`: a fenced grant (an integer) is kept, and blocks the node for a ttl whenever
        /// the attempt's release overtook the SET.
        LateGrantOkOnly => "late-grant-ok-only",
        /// A failed acquisition reports `Failed` at once, its releases still in flight: a
        /// caller that exits then leaves the keys behind for a ttl.
        FailBeforeCleanup => "fail-before-cleanup",
    }
}
