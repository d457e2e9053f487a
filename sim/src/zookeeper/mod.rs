//! The ZooKeeper backend: the [`ZkEnsemble`] model ([`server`]), the glue that drives the real
//! ZooKeeper lock machine as Lucky's adapter does ([`protocol`]), and its scenarios.
//! [`BACKEND`] registers them and the ZooKeeper machine's bugs.

use crate::scenario::{Backend, Scenario};

pub mod protocol;
mod scenarios;
pub mod server;

pub use protocol::{ZkClient, ZkRunner, ZkSim};
pub use server::{ZkCommand, ZkEnsemble};

/// The ZooKeeper scenarios and the bugs of the ZooKeeper machine (and of its session proof).
pub const BACKEND: Backend = Backend {
    name: "zookeeper",
    scenarios: SCENARIOS,
    bugs: BUGS,
};

const SCENARIOS: &[Scenario] = &[
    Scenario { name: "zk-holder-partitioned", about: "ZooKeeper: a client is cut off from the ensemble for 1.5 session timeouts", draw: scenarios::holder_partitioned, cost: 1 },
    Scenario { name: "zk-follower-cut", about: "ZooKeeper: the clients' follower loses the leader for 1.5 session timeouts, answering reads for syncLimit ticks", draw: scenarios::follower_cut, cost: 1 },
    Scenario { name: "zk-create-lost", about: "ZooKeeper: 10-20 % of messages lost; creates apply without an answer", draw: scenarios::create_lost, cost: 1 },
    Scenario { name: "zk-sequence-wrap", about: "ZooKeeper: the sequence counter wraps past i32::MAX under a queue", draw: scenarios::sequence_wrap, cost: 1 },
    Scenario { name: "zk-contention", about: "ZooKeeper: five contenders with short waits give up inside the queue", draw: scenarios::contention, cost: 1 },
    Scenario { name: "zk-reply-stall", about: "ZooKeeper: answers to a client stall by a third of the session timeout, then its requests are cut", draw: scenarios::reply_stall, cost: 1 },
    Scenario { name: "zk-predecessor-crash", about: "ZooKeeper: queued clients and holders crash for good; their nodes stay until their sessions expire", draw: scenarios::predecessor_crash, cost: 1 },
    Scenario { name: "zk-stale-ephemeral", about: "ZooKeeper: a client's answers cut past its session through a lagging follower; the new session lists the old session's node", draw: scenarios::stale_ephemeral, cost: 1 },
    Scenario { name: "zk-release-lost", about: "ZooKeeper: answers cut for a fifth of the session timeout, often, under short holds: releases meet connection loss", draw: scenarios::release_lost, cost: 1 },
    Scenario { name: "zk-random-chaos", about: "ZooKeeper: client cuts, lost and slow messages, the follower losing the leader, at rates drawn per seed", draw: scenarios::random_chaos, cost: 1 },
];

/// The deliberate bugs of the ZooKeeper machine (none without the `bugs` feature).
#[cfg(feature = "bugs")]
const BUGS: &[&str] = lucky_core::zookeeper::bugs::ZkBug::NAMES;
#[cfg(not(feature = "bugs"))]
const BUGS: &[&str] = &[];
