//! RedLock in the simulator: the real lucky-core machine against [`RedisNode`] models.

use lucky_core::redlock::{RedLock, RedLockConfig};
use lucky_core::time::nanos;

use crate::redis::RedisNode;
use crate::rng::Rng;
use crate::Protocol;

/// RedLock with a given configuration.
#[derive(Clone, Debug)]
pub struct RedLockSim {
    /// The configuration every client uses.
    pub cfg: RedLockConfig,
    /// The drift bound it was built with (ppm).
    pub drift_ppm: u32,
    /// The injected `fence-unchecked` bug: the resource accepts any fence.
    pub fence_unchecked: bool,
}

impl Protocol for RedLockSim {
    type Server = RedisNode;
    type Machine = RedLock;

    fn nodes(&self) -> usize {
        self.cfg.nodes()
    }

    fn machine(&self, _client: usize, rng: &mut Rng) -> RedLock {
        let mut token = [0u8; 16];
        rng.fill(&mut token);
        let seed = rng.next_u64();
        // The name and token are valid by construction; a failure is a simulator bug.
        RedLock::new(&self.cfg, b"lock", &token, seed).expect("valid lock name and token")
    }

    fn server(&self, _node: usize) -> RedisNode {
        RedisNode::new()
    }

    fn ttl_ns(&self) -> u64 {
        nanos(self.cfg.ttl())
    }

    fn drift_ppm(&self) -> u32 {
        self.drift_ppm
    }

    fn fence_unchecked(&self) -> bool {
        self.fence_unchecked
    }

    /// The fenced acquire reads the counter raised to the node's clock.
    fn fences_survive_state_loss(&self) -> bool {
        true
    }
}
