//! The RedLock backend: the [`RedisNode`] server model ([`node`]), the protocol glue that
//! builds the real RedLock machine from a scenario's setup ([`protocol`]), and RedLock's
//! scenarios ([`scenarios`]). [`BACKEND`] registers them and RedLock's machine bugs.

use crate::scenario::Backend;

pub mod node;
pub mod protocol;
pub mod scenarios;

pub use node::RedisNode;
pub use protocol::{RedLockRunner, RedLockSim};
pub use scenarios::base;

/// RedLock's scenarios and the bugs of its machine.
pub const BACKEND: Backend = Backend {
    name: "redlock",
    scenarios: scenarios::SCENARIOS,
    bugs: BUGS,
};

/// The deliberate bugs of the RedLock machine (none without the `bugs` feature).
#[cfg(feature = "bugs")]
const BUGS: &[&str] = lucky_core::redlock::bugs::RedLockBug::NAMES;
#[cfg(not(feature = "bugs"))]
const BUGS: &[&str] = &[];
