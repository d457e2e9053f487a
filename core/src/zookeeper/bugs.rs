//! The ZooKeeper lock's deliberate bugs (feature `bugs`; never in a release build), each
//! caught by a simulator scenario.
// Without the feature only the machine's `bug()` checks name it (always false then).
#![cfg_attr(not(feature = "bugs"), allow(dead_code))]

crate::bugs::declare_bugs! {
    /// A deliberately wrong behaviour of the ZooKeeper machine or of its session proof.
    pub enum ZkBug {
        /// Any answer proves the session alive on the leader (as if every server were the
        /// leader): a follower cut off from the leader keeps answering while the leader
        /// expires the session.
        AckProvesLeader => "zk-ack-proves-leader",
        /// After a create whose answer was lost, create again without first looking for the
        /// node the first create may have made (Curator's "protected" mode left out): the
        /// orphan blocks the lock until the session ends.
        NoProtectedFind => "zk-no-protected-find",
        /// Order the queue by the sequence text instead of by serial arithmetic: after the
        /// 32-bit counter wraps, a new node sorts before the holder's.
        TextOrder => "zk-text-order",
        /// A waiter whose predecessor went claims the lock without listing the queue again
        /// (the predecessor may have been a waiter that gave up).
        SkipRelist => "zk-skip-relist",
        /// Every waiter watches the whole lock directory instead of its predecessor (one
        /// deletion wakes them all: the herd).
        WatchAll => "zk-watch-all",
        /// The session proof counts from when an answer was read, not from when its request
        /// was sent (a slow answer stretches the lock past the session).
        ValidityFromRead => "zk-validity-from-read",
    }
}
