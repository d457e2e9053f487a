//! The etcd backend: the [`EtcdNode`] model of a linearizable cluster ([`node`]), the glue that
//! builds the real etcd lock machine from a scenario's setup ([`lock`]), the cluster as a set
//! of members ([`cluster`]) seen by a client with lucky-core's fail-over rule
//! ([`cluster_client`]), and the scenarios of each (`scenarios.rs`, `cluster_scenarios.rs`).
//! [`BACKEND`] registers them and the etcd machine's bugs.

use crate::scenario::{Backend, Scenario};

pub mod cluster;
pub mod cluster_client;
mod cluster_scenarios;
pub mod lock;
pub mod node;
mod scenarios;
pub mod session_client;

pub use cluster::EtcdCluster;
pub use cluster_client::{ClusterClient, ClusterRunner, EtcdClusterSim};
pub use lock::{EtcdRunner, EtcdSim};
pub use node::EtcdNode;
pub use session_client::{EtcdSessionRunner, EtcdSessionSim, SessionClient};

/// The etcd scenarios and the bugs of the etcd machine (and of its fail-over).
pub const BACKEND: Backend = Backend {
    name: "etcd",
    scenarios: SCENARIOS,
    bugs: BUGS,
};

/// The etcd scenarios: one cluster model, then the client's view of three members.
const SCENARIOS: &[Scenario] = &[
    Scenario { name: "etcd-holder-partitioned", about: "etcd: a client is cut off from the cluster for 1.5 ttl", draw: scenarios::holder_partitioned, cost: 1 },
    Scenario { name: "etcd-keepalive-stall", about: "etcd: replies to a client stall for ttl/3, then its keepalives are cut; leader losses", draw: scenarios::keepalive_stall, cost: 1 },
    Scenario { name: "etcd-watch-compacted", about: "etcd: the cluster compacts after every write, so watches start compacted", draw: scenarios::watch_compacted, cost: 1 },
    Scenario { name: "etcd-predecessor-crash", about: "etcd: queued clients crash for good while the owner holds", draw: scenarios::predecessor_crash, cost: 1 },
    Scenario { name: "etcd-holder-pause-fenced", about: "etcd: holder pauses 2 ttl between check and write; the resource rejects its stale revision", draw: scenarios::holder_pause_fenced, cost: 1 },
    Scenario { name: "etcd-clock-jump", about: "etcd: the cluster clock jumps forward by the ttl: overlap expected, fences hold", draw: scenarios::clock_jump, cost: 1 },
    Scenario { name: "etcd-client-drift", about: "etcd: client drift within the bound (safe) or 4-6x beyond it (overlap expected)", draw: scenarios::client_drift, cost: 1 },
    Scenario { name: "etcd-data-loss", about: "etcd: the cluster loses its data, restarts at once or after the ttl: revisions restart (expected)", draw: scenarios::data_loss, cost: 1 },
    Scenario { name: "etcd-no-wait-exit", about: "etcd: one-shot tries at once; each client exits when its try ends: no key left in the queue", draw: scenarios::no_wait_exit, cost: 1 },
    Scenario { name: "etcd-session-holder-partitioned", about: "etcd, locks on a shared session lease: a client is cut off from the cluster for 1.5 ttl", draw: scenarios::session_holder_partitioned, cost: 1 },
    Scenario { name: "etcd-session-keepalive-stall", about: "etcd, shared session: replies stall for ttl/3, then the session's keepalives are cut; leader losses", draw: scenarios::session_keepalive_stall, cost: 1 },
    Scenario { name: "etcd-session-predecessor-crash", about: "etcd, shared session: queued clients crash for good while the owner holds", draw: scenarios::session_predecessor_crash, cost: 1 },
    Scenario { name: "etcd-session-no-wait-exit", about: "etcd, shared session: one-shot tries at once, clients exit: abandoned attempts leave no key in the queue", draw: scenarios::session_no_wait_exit, cost: 1 },
    Scenario { name: "etcd-session-many-names", about: "etcd, shared sessions: 100-200 processes holding 4-10 names each, 4 contending per name; process cuts, pauses, crashes, leader losses", draw: scenarios::session_many_names, cost: 20 },
    Scenario { name: "etcd-session-random-chaos", about: "etcd, shared session: every assumption-keeping fault at rates drawn per seed (late takes after abandons included)", draw: scenarios::session_random_chaos, cost: 1 },
    Scenario { name: "etcd-member-down", about: "etcd cluster: one member at a time killed or stopped; no false unreachable, no lost hold", draw: cluster_scenarios::member_down, cost: 1 },
    Scenario { name: "etcd-leader-change-keepalive", about: "etcd cluster: the leader is killed under held leases; an election, then a fresh ttl", draw: cluster_scenarios::leader_change_keepalive, cost: 1 },
    Scenario { name: "etcd-pinned-partitioned-member", about: "etcd cluster: the clients' member is cut off from the leader (silent, then \"no leader\") past the ttl", draw: cluster_scenarios::pinned_partitioned_member, cost: 1 },
    Scenario { name: "etcd-random-chaos", about: "etcd: every assumption-keeping fault at rates drawn per seed", draw: scenarios::random_chaos, cost: 1 },
];

/// The deliberate bugs of the etcd machine (none without the `bugs` feature).
#[cfg(feature = "bugs")]
const BUGS: &[&str] = lucky_core::etcd::bugs::EtcdBug::NAMES;
#[cfg(not(feature = "bugs"))]
const BUGS: &[&str] = &[];
