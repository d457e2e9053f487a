//! The lease-record backend: the [`LeaseStore`] model of a store holding one record per lock
//! name on its own clock ([`store`]), the glue that builds the real lease-record machine from
//! a scenario's setup ([`protocol`]), and its scenarios ([`scenarios`]). [`BACKEND`] registers
//! them and the lease-record machine's bugs.

use crate::scenario::{Backend, Scenario};

mod mongo_scenarios;
pub mod protocol;
pub mod replica;
pub mod scenarios;
mod sql_scenarios;
pub mod store;

pub use protocol::{LeaseRunner, LeaseSim};
pub use store::LeaseStore;

/// The lease-record scenarios and the bugs of its machine (and of a store's encoding).
pub const BACKEND: Backend = Backend {
    name: "lease",
    scenarios: SCENARIOS,
    bugs: BUGS,
};

/// The deliberate bugs of the lease-record machine (none without the `bugs` feature).
#[cfg(feature = "bugs")]
const BUGS: &[&str] = lucky_core::lease::bugs::LeaseBug::NAMES;
#[cfg(not(feature = "bugs"))]
const BUGS: &[&str] = &[];

/// The lease-record scenarios.
const SCENARIOS: &[Scenario] = &[
    Scenario { name: "lease-holder-pause-fenced", about: "lease: holder pauses 2 ttl between check and write; the resource rejects its stale fence", draw: scenarios::holder_pause_fenced, cost: 1 },
    Scenario { name: "lease-late-release", about: "lease: releases delayed (and duplicated) past the next owner's take never free it", draw: scenarios::late_release, cost: 1 },
    Scenario { name: "lease-cancel-in-flight", about: "lease: one-shot tries cancelled in flight over reordering links; clients exit: nothing left held", draw: scenarios::cancel_in_flight, cost: 1 },
    Scenario { name: "lease-unknown-outcome", about: "lease: replies to applied takes and renewals are lost (cuts, drops): unknown outcomes resolved by inspecting", draw: scenarios::unknown_outcome, cost: 1 },
    Scenario { name: "lease-slow-grant", about: "lease: answers arrive late and clients pause with answers in flight; holders keep the lock to its deadline", draw: scenarios::slow_grant, cost: 1 },
    Scenario { name: "lease-clock-step", about: "lease: the store clock steps forward by the ttl under holders: overlap expected, fences still rise", draw: scenarios::clock_step, cost: 1 },
    Scenario { name: "lease-data-loss", about: "lease: the store loses its records, back at once or after the ttl: fences restart, holders may overlap (expected)", draw: scenarios::data_loss, cost: 1 },
    Scenario { name: "lease-random-chaos", about: "lease: every assumption-keeping fault at rates drawn per seed", draw: scenarios::random_chaos, cost: 1 },
    Scenario { name: "sql-killed-connection", about: "SQL stores: connections killed right after statements were sent (pg_terminate_backend, KILL, pooler timeouts): unknown outcomes settled by reading the row", draw: sql_scenarios::killed_connection, cost: 1 },
    Scenario { name: "sql-replica-promoted", about: "SQL stores: an async replica promoted without the last commits: acknowledged takes and renewals vanish: overlap and fence reuse expected", draw: sql_scenarios::replica_promoted, cost: 1 },
    Scenario { name: "my-server-stopped", about: "MySQL/MariaDB: the server stopped past the ttl (kill -STOP of mysqld) under holders: statements run when it resumes, on a clock that moved on; holders end at their deadlines", draw: sql_scenarios::server_stopped, cost: 1 },
    Scenario { name: "mongo-failover-rollback", about: "MongoDB: elections under busy holders roll back what a majority had not confirmed; w:majority acknowledged none of it, so nobody loses what it was told", draw: mongo_scenarios::failover_rollback, cost: 1 },
    Scenario { name: "mongo-wtimeout", about: "MongoDB: secondaries behind past wtimeout: write-concern errors on applied writes (unknown outcomes), later committed or rolled back by an election; settled by majority reads", draw: mongo_scenarios::write_concern_timeout, cost: 1 },
    Scenario { name: "mongo-upsert-race", about: "MongoDB: processes upsert a new name at once: the losers' duplicate-key errors are resent as updates, never failures, never two holders", draw: mongo_scenarios::upsert_race, cost: 1 },
    Scenario { name: "mongo-mongos-clocks", about: "MongoDB: a sharded cluster whose routers' clocks differ within the drift allowance judge each command on their own $$NOW, under elections: holds", draw: mongo_scenarios::mongos_clocks, cost: 1 },
    Scenario { name: "mongo-primary-clock-step", about: "MongoDB: each election brings up a primary whose clock is a ttl ahead: overlap expected, fences still rise", draw: mongo_scenarios::primary_clock_step, cost: 1 },
    Scenario { name: "pg-backend-paused", about: "PostgreSQL: a holder's backend answers more than a ttl late while the server serves others: the holder ends at its deadline, late answers extend nothing", draw: sql_scenarios::backend_paused, cost: 1 },
];
