//! RedLock in the simulator: the real lucky-core machine against [`RedisNode`] models, built
//! from a scenario's [`Setup`], and the rule by which its fences survive a node's lost data.

#[cfg(feature = "bugs")]
use lucky_core::redlock::bugs::RedLockBug;
use lucky_core::redlock::{RedLock, RedLockConfig};
use lucky_core::time::nanos;
use lucky_core::Duration;

use crate::rng::Rng;
use crate::scenario::{Injected, Runner, Setup};
use crate::world::Report;
use crate::Protocol;

use super::node::FenceScript;
use super::RedisNode;

/// RedLock with a given configuration.
#[derive(Clone, Debug)]
pub struct RedLockSim {
    /// The configuration every client uses.
    pub cfg: RedLockConfig,
    /// The drift bound it was built with (ppm).
    pub drift_ppm: u32,
    /// The injected `fence-unchecked` bug: the resource accepts any fence.
    pub fence_unchecked: bool,
    /// The fenced acquire script the nodes run (a wrong one under a fence bug).
    pub fence_script: FenceScript,
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
        RedisNode::with_fence_script(self.fence_script)
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

    /// The fenced acquire reads the counter raised to the node's clock in microseconds
    /// (`TIME`). Every fence issued before the node went down is at most the fastest node's
    /// clock at that moment, plus one per acquisition (1 ms of microseconds covers them): the
    /// fences keep rising if the restarted node's clock is past that.
    fn fences_survive_state_loss(&self, fastest_then: u64, local: u64) -> bool {
        local > fastest_then.saturating_add(1_000_000)
    }
}

/// Runs a setup as RedLock over `setup.nodes` Redis nodes.
#[derive(Clone, Copy, Debug)]
pub struct RedLockRunner;

impl Runner for RedLockRunner {
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report {
        setup.run_world(&protocol(setup, bug), seed)
    }
}

/// The RedLock configuration of `s`, with `bug` injected.
pub fn protocol(s: &Setup, bug: Option<Injected>) -> RedLockSim {
    let mut b = RedLockConfig::builder()
        .node_count(s.nodes)
        .ttl(Duration::from_millis(s.ttl_ms))
        .drift(s.drift_ppm, Duration::from_millis(2))
        .retry(s.retry)
        .wait(s.wait)
        .fencing(s.fencing);
    if let Some(t) = s.op_timeout {
        b = b.node_timeout(t);
    }
    if let Some((every, cap)) = s.auto_extend {
        b = b.auto_extend(every, cap);
    }
    #[cfg(feature = "bugs")]
    if let Some(bug) = Injected::machine(bug).and_then(RedLockBug::from_name) {
        b = b.inject_bug(bug);
    }
    let fence_script = fence_script(bug);
    let cfg = b.build().expect("scenario configurations are valid");
    RedLockSim {
        cfg,
        drift_ppm: s.drift_ppm,
        fence_unchecked: bug == Some(Injected::FenceUnchecked),
        fence_script,
    }
}

/// The fenced acquire script the nodes run: Lucky's, or the wrong one a fence bug needs on
/// the server side.
fn fence_script(_bug: Option<Injected>) -> FenceScript {
    #[cfg(feature = "bugs")]
    {
        match Injected::machine(_bug).and_then(RedLockBug::from_name) {
            Some(RedLockBug::FenceMaxOfIncr) => return FenceScript::Incr,
            Some(RedLockBug::FenceCounterOnly) => return FenceScript::CounterOnly,
            _ => {}
        }
    }
    FenceScript::Clock
}
