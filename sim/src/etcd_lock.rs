//! The etcd lease lock in the simulator: the real lucky-core machine against the
//! [`EtcdNode`] cluster model.

use lucky_core::etcd::{EtcdConfig, EtcdLock};
use lucky_core::time::nanos;

use crate::etcd::EtcdNode;
use crate::rng::Rng;
use crate::Protocol;

/// The etcd lock with a given configuration.
#[derive(Clone, Debug)]
pub struct EtcdSim {
    /// The configuration every client uses.
    pub cfg: EtcdConfig,
    /// The cluster compacts after every write.
    pub compact_always: bool,
    /// The injected `fence-unchecked` bug: the resource accepts any fence.
    pub fence_unchecked: bool,
}

impl Protocol for EtcdSim {
    type Server = EtcdNode;
    type Machine = EtcdLock;

    fn nodes(&self) -> usize {
        1
    }

    fn machine(&self, _client: usize, rng: &mut Rng) -> EtcdLock {
        // The name is valid by construction; a failure is a simulator bug.
        EtcdLock::new(&self.cfg, b"lock", rng.next_u64()).expect("valid lock name")
    }

    fn server(&self, _node: usize) -> EtcdNode {
        let mut n = EtcdNode::new();
        n.compact_always = self.compact_always;
        n
    }

    fn ttl_ns(&self) -> u64 {
        nanos(self.cfg.ttl())
    }

    fn drift_ppm(&self) -> u32 {
        self.cfg.drift_ppm()
    }

    fn fence_unchecked(&self) -> bool {
        self.fence_unchecked
    }
}
