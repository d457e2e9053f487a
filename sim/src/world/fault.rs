//! What can go wrong: the [`Fault`]s a scenario schedules and the [`MemberState`]s of a
//! node's members. How the world applies each is in `faults.rs`.

use crate::net::{Cut, NetParams};

/// A fault, applied at a true time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut links between `client` (None = every client) and `node`.
    Partition {
        /// Which client, or all.
        client: Option<usize>,
        /// Which node.
        node: usize,
        /// Which direction.
        cut: Cut,
    },
    /// Heal the links between `client` (None = every client) and `node`.
    Heal {
        /// Which client, or all.
        client: Option<usize>,
        /// Which node.
        node: usize,
    },
    /// Crash a node; it answers nothing until restarted. `lose_state` wipes its keys.
    Crash {
        /// Which node.
        node: usize,
        /// Whether its keys are lost (no persistence).
        lose_state: bool,
    },
    /// The node serves nothing for `for_ns` (leader loss): requests wait and are answered
    /// after it, and nothing expires meanwhile; then it recovers (leases get a fresh ttl).
    Stall {
        /// Which node.
        node: usize,
        /// For how long.
        for_ns: u64,
    },
    /// The node fails over to a standby that lacks the writes of the last `for_ns` of its
    /// clock (asynchronous replication): they are lost; it serves on at once.
    RollBack {
        /// Which node.
        node: usize,
        /// How much of its recent history is lost.
        for_ns: u64,
    },
    /// Every reply to `client` arrives `extra_ns` later than normal (0: back to normal).
    SlowReplies {
        /// Which client.
        client: usize,
        /// Extra delay, ns.
        extra_ns: u64,
    },
    /// A client process dies for good: it sends nothing more and its claim ends.
    CrashClient {
        /// Which client.
        client: usize,
    },
    /// Restart a crashed node.
    Restart {
        /// Which node.
        node: usize,
    },
    /// Move a node's clock by `by_ns`.
    ClockJump {
        /// Which node.
        node: usize,
        /// How far, in nanoseconds (positive: forwards).
        by_ns: i64,
    },
    /// Stop a client process for `for_ns` while true time runs on.
    Pause {
        /// Which client.
        client: usize,
        /// For how long.
        for_ns: u64,
    },
    /// One member of a node reached through several endpoints (a cluster's members) changes
    /// state: see [`MemberState`].
    Member {
        /// Which node.
        node: usize,
        /// Which member.
        member: usize,
        /// What it does from now on.
        state: MemberState,
    },
    /// Change link behaviour.
    Net(NetParams),
    /// Faults stop: heal everything, restart every node, calm network. Liveness is judged
    /// from here.
    Quiet,
}

/// What one member of a node reached through several endpoints does (the members of an etcd
/// cluster; a ZooKeeper ensemble's servers). The node model decides what each state means to
/// its clients ([`Server::member`](crate::Server::member)); a node without members ignores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Serves.
    Up,
    /// Killed: refuses connections; its streams break.
    Down,
    /// Stopped, or cut off from the client: answers nothing; what it received is applied when
    /// it serves again.
    Silent,
    /// Cut off from the leader: answers "no leader" at once and cancels its watches.
    NoLeader,
}
