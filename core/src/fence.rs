//! Fencing tokens: a number that strictly increases across successive holders of one lock.

use core::fmt;

/// A fencing token. A resource that remembers the highest fence it accepted, and refuses any
/// write carrying a lower or equal one, cannot be corrupted by a holder whose lease ran out
/// while it was paused (Kleppmann, "How to do distributed locking").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence(pub u64);

impl Fence {
    /// The token as a plain number, for storing next to the protected data.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
