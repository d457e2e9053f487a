//! The file backend in the simulator: the real lucky-core [`SessionLock`] against the
//! [`FileHost`] model, built from a scenario's [`Setup`].

#[cfg(feature = "bugs")]
use lucky_core::session::bugs::SessionBug;
use lucky_core::session::{SessionConfig, SessionLock};
use lucky_core::time::nanos;

use crate::rng::Rng;
use crate::scenario::{Injected, Runner, Setup};
use crate::world::Report;
use crate::Protocol;

use super::file_host::{FileHost, Quirks};

/// The file backend with a given configuration.
#[derive(Clone, Debug)]
pub struct FileSim {
    /// The configuration every client uses.
    pub cfg: SessionConfig,
    /// The injected `fence-unchecked` bug: the resource accepts any fence.
    pub fence_unchecked: bool,
    /// Lock tables: 2 for a network mount whose locks are local to each host.
    pub tables: usize,
    /// When the lock file is deleted (`true`) or replaced, after the host's first command.
    pub replace_after: Vec<(u64, bool)>,
    /// The store's behaviour (wrong under a store bug).
    pub quirks: Quirks,
}

impl Protocol for FileSim {
    type Server = FileHost;
    type Machine = SessionLock;

    fn nodes(&self) -> usize {
        1
    }

    fn machine(&self, _client: usize, rng: &mut Rng) -> SessionLock {
        // The name is valid by construction; a failure is a simulator bug.
        SessionLock::new(&self.cfg, b"lock", rng.next_u64()).expect("valid lock name")
    }

    fn server(&self, _node: usize) -> FileHost {
        FileHost::new(self.tables, self.replace_after.clone(), self.quirks)
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

    /// A host crash closes every open file: their flocks go at once.
    fn sessions_end_on_crash(&self) -> bool {
        true
    }

    /// Two lock tables: clients on two hosts of a network mount.
    fn locks_local_to_each_host(&self) -> bool {
        self.tables > 1
    }
}

/// Runs a setup against one host: `tables` lock tables (2: a network mount), and `replaces`
/// deletions or replacements of the lock file drawn from the seed within the faults' window.
#[derive(Clone, Copy, Debug)]
pub struct FileRunner {
    /// Lock tables.
    pub tables: usize,
    /// How many times the lock file is deleted or replaced.
    pub replaces: u32,
}

impl Runner for FileRunner {
    fn run(&self, setup: &Setup, seed: u64, bug: Option<Injected>) -> Report {
        let mut rng = Rng::new(seed ^ 0x6669_6c65_5f72_6570);
        let mut replace_after: Vec<(u64, bool)> = (0..self.replaces)
            .map(|_| (rng.range(0, setup.work.quiet_at), rng.range(0, 1) == 0))
            .collect();
        replace_after.sort_unstable();
        setup.run_world(&protocol(setup, self.tables, replace_after, bug), seed)
    }
}

/// The file backend's configuration for `s`, with `bug` injected.
pub fn protocol(
    s: &Setup,
    tables: usize,
    replace_after: Vec<(u64, bool)>,
    bug: Option<Injected>,
) -> FileSim {
    #[allow(unused_mut)] // bugs are injected only with the `bugs` feature
    let mut b = super::protocol::builder(s);
    #[allow(unused_mut)]
    let mut quirks = Quirks::default();
    #[cfg(feature = "bugs")]
    if let Some(bug) = Injected::machine(bug).and_then(SessionBug::from_name) {
        match bug {
            SessionBug::FileUnlinkOnRelease => quirks.unlink_on_release = true,
            SessionBug::FileFenceNotDurable => quirks.fence_not_durable = true,
            other => b = b.inject_bug(other),
        }
    }
    let cfg = b.build().expect("scenario configurations are valid");
    FileSim {
        cfg,
        fence_unchecked: bug == Some(Injected::FenceUnchecked),
        tables,
        replace_after,
        quirks,
    }
}
