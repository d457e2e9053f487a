//! Lucky: distributed locks on the servers you already run.
//!
//! This crate re-exports the sans-IO protocol machines of [`lucky_core`]; the tokio drivers
//! for each backend (Redis, etcd, ...) arrive behind cargo features of the same names.

pub use lucky_core::*;
