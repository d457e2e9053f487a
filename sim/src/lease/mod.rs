//! The lease-record backend: the [`LeaseStore`] model of a store holding one record per lock
//! name on its own clock ([`store`]), the glue that builds the real lease-record machine from
//! a scenario's setup ([`protocol`]), and its scenarios ([`scenarios`]). [`BACKEND`] registers
//! them and the lease-record machine's bugs.

use crate::scenario::Backend;

pub mod protocol;
pub mod scenarios;
mod sql_scenarios;
pub mod store;

pub use protocol::{LeaseRunner, LeaseSim};
pub use store::LeaseStore;

/// The lease-record scenarios and the bugs of its machine (and of a store's encoding).
pub const BACKEND: Backend = Backend {
    name: "lease",
    scenarios: scenarios::SCENARIOS,
    bugs: BUGS,
};

/// The deliberate bugs of the lease-record machine (none without the `bugs` feature).
#[cfg(feature = "bugs")]
const BUGS: &[&str] = lucky_core::lease::bugs::LeaseBug::NAMES;
#[cfg(not(feature = "bugs"))]
const BUGS: &[&str] = &[];
