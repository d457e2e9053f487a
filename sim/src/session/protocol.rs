//! The session lock in the simulator: the real lucky-core [`SessionLock`] against the
//! [`SessionServer`] model, built from a scenario's [`Setup`], and the oracle's assumptions.

#[cfg(feature = "bugs")]
use lucky_core::session::bugs::SessionBug;
use lucky_core::session::{SessionConfig, SessionLock};
use lucky_core::time::nanos;
use lucky_core::{Duration, Lease};

use crate::rng::Rng;
use crate::scenario::{Injected, Runner, Setup};
use crate::world::Report;
use crate::Protocol;

use super::server::SessionServer;

/// The session lock with a given configuration, against a server that ends a session idle
/// for a ttl (the timeout Lucky sets on its sessions).
#[derive(Clone, Debug)]
pub struct SessionSim {
    /// The configuration every client uses.
    pub cfg: SessionConfig,
    /// The injected `fence-unchecked` bug: the resource accepts any fence.
    pub fence_unchecked: bool,
    /// Whether the clients' drivers hide a session's end by reconnecting.
    pub reconnect: bool,
}

impl Protocol for SessionSim {
    type Server = SessionServer;
    type Machine = SessionLock;

    fn nodes(&self) -> usize {
        1
    }

    fn machine(&self, _client: usize, rng: &mut Rng) -> SessionLock {
        // The name is valid by construction; a failure is a simulator bug.
        SessionLock::new(&self.cfg, b"lock", rng.next_u64()).expect("valid lock name")
    }

    fn server(&self, _node: usize) -> SessionServer {
        SessionServer::new(nanos(self.cfg.ttl()), self.reconnect)
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

    /// The counter rows are data: a loss of data loses them.
    fn fences_survive_state_loss(&self, _fastest_then: u64, _local: u64) -> bool {
        false
    }

    fn sessions_end_on_crash(&self) -> bool {
        true
    }
}

/// Runs a setup as the session lock against one server; `reconnect`: the clients' drivers
/// reconnect silently when the server ends a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionRunner {
    /// Whether drivers hide session ends.
    pub reconnect: bool,
}

impl Runner for SessionRunner {
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report {
        setup.run_world(&protocol(setup, self.reconnect, bug), seed)
    }
}

/// The session-lock configuration builder of `s` (every session-family backend's).
pub(super) fn builder(s: &Setup) -> lucky_core::session::SessionConfigBuilder {
    let lease = Lease {
        ttl: Duration::from_millis(s.ttl_ms),
        drift_ppm: s.drift_ppm,
        drift_floor: Duration::from_millis(2),
        op_timeout: s.op_timeout,
        retry: s.retry,
        wait: s.wait,
    };
    let b = SessionConfig::builder().lease(lease);
    match s.auto_extend {
        Some((every, cap)) => b.auto_extend(every, cap),
        None => b,
    }
}

/// The session-lock configuration of `s`, with `bug` injected.
pub fn protocol(s: &Setup, reconnect: bool, bug: Option<Injected>) -> SessionSim {
    #[allow(unused_mut)] // bugs are injected only with the `bugs` feature
    let mut b = builder(s);
    #[cfg(feature = "bugs")]
    if let Some(bug) = Injected::machine(bug).and_then(SessionBug::from_name) {
        b = b.inject_bug(bug);
    }
    let cfg = b.build().expect("scenario configurations are valid");
    SessionSim {
        cfg,
        fence_unchecked: bug == Some(Injected::FenceUnchecked),
        reconnect,
    }
}
