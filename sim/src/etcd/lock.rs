//! The etcd lease lock in the simulator: the real lucky-core machine against the
//! [`EtcdNode`] cluster model, built from a scenario's [`Setup`].

#[cfg(feature = "bugs")]
use lucky_core::etcd::bugs::EtcdBug;
use lucky_core::etcd::{EtcdConfig, EtcdLock};
use lucky_core::time::nanos;
use lucky_core::Duration;

use crate::rng::Rng;
use crate::scenario::{Injected, Runner, Setup};
use crate::world::Report;
use crate::Protocol;

use super::EtcdNode;

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

/// Runs a setup as the etcd lock against one cluster model.
#[derive(Clone, Copy, Debug)]
pub struct EtcdRunner {
    /// The cluster compacts after every write.
    pub compact_always: bool,
}

impl Runner for EtcdRunner {
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report {
        let setup = whole_seconds(setup);
        setup.run_world(&protocol(&setup, self.compact_always, bug), seed)
    }
}

/// The etcd configuration of `s`, with `bug` injected.
pub fn protocol(s: &Setup, compact_always: bool, bug: Option<Injected>) -> EtcdSim {
    let mut b = EtcdConfig::builder()
        .ttl(Duration::from_millis(s.ttl_ms))
        .drift(s.drift_ppm, Duration::from_millis(2))
        .retry(s.retry)
        .wait(s.wait);
    if let Some(t) = s.op_timeout {
        b = b.op_timeout(t);
    }
    #[cfg(feature = "bugs")]
    if let Some(bug) = Injected::machine(bug).and_then(EtcdBug::from_name) {
        b = b.inject_bug(bug);
    }
    let cfg = b.build().expect("scenario configurations are valid");
    EtcdSim {
        cfg,
        compact_always,
        fence_unchecked: bug == Some(Injected::FenceUnchecked),
    }
}

/// The etcd scenarios are drawn with a 400 ms ttl; etcd grants whole seconds, so they run
/// dilated 2.5x in time: a 1 s lease, and every other duration in proportion.
pub fn whole_seconds(setup: &Setup) -> Setup {
    setup.dilated(5, 2)
}
