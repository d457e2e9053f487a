//! The file backend's scenarios (`flock` on one host), named after the field reports they come
//! from: a lock file deleted or replaced under its holder (a clean-up job, a deploy), the host
//! crashing at any point (also in the middle of writing the fence), holders paused past the
//! ttl, and a lock directory on a network mount whose locks are local to each host.

use lucky_core::{Duration, Wait};

use crate::rng::Rng;
use crate::scenario::Setup;
use crate::world::Fault;

use super::FileRunner;

const MS: u64 = 1_000_000;

static ONE_HOST: FileRunner = FileRunner {
    tables: 1,
    replaces: 0,
};
static REPLACED: FileRunner = FileRunner {
    tables: 1,
    replaces: 4,
};
static NETWORK_MOUNT: FileRunner = FileRunner {
    tables: 2,
    replaces: 0,
};

/// The file shape: the engine's (3 clients, ttl 400 ms, faults for 1 s, then 1 s of quiet),
/// probing every ttl/3, fences checked.
fn base(runner: &'static FileRunner) -> Setup {
    let mut s = Setup::new(runner);
    s.fencing = true;
    s.auto_extend = Some((None, None));
    s.wait = Wait::For(Duration::from_millis(1_500));
    s
}

/// Contention on one host with short holds and processes paused past the ttl (the OS keeps
/// a paused process's flock: nobody else gets it meanwhile); once faults stop, some process
/// must get the lock within half a ttl: a hand-off never waits out a heartbeat.
pub(super) fn handoff(rng: &mut Rng) -> Setup {
    let mut s = base(&ONE_HOST);
    s.work.clients = 4;
    s.work.hold_ns = Some((MS, 20 * MS));
    s.work.think_ns = (0, 5 * MS);
    s.work.progress_within = Some(s.ttl() / 2);
    for _ in 0..rng.range(1, 4) {
        // Pauses end before the faults stop (a paused holder keeps its flock).
        let for_ns = rng.range(s.ttl() / 2, 3 * s.ttl() / 2);
        let t = rng.range(0, s.work.quiet_at - for_ns - 50 * MS);
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        s.faults.push((t, Fault::Pause { client, for_ns }));
    }
    s
}

/// The lock file deleted or replaced under holders and waiters, four times: each holder of
/// the old file is told at its next probe, and a holder of the new file only starts once
/// the old holder's heartbeat is a ttl old: never two holders.
pub(super) fn path_replaced(_rng: &mut Rng) -> Setup {
    let mut s = base(&REPLACED);
    s.work.clients = 4;
    s.work.hold_ns = Some((10 * MS, 2 * s.ttl()));
    s.work.progress_within = Some(2 * s.ttl() + 300 * MS);
    s
}

/// The host crashes (every open file closes, what was not written durably is lost) and comes
/// back, at random points of the clients' work, the fence writes included: fences never
/// repeat. Holders learn of their lost flock at their next probe (within a ttl: expected).
pub(super) fn host_crash(rng: &mut Rng) -> Setup {
    let mut s = base(&ONE_HOST);
    s.work.clients = 4;
    s.work.hold_ns = Some((MS, 30 * MS));
    s.work.think_ns = (0, 5 * MS);
    for _ in 0..rng.range(2, 5) {
        let t = s.at(rng);
        s.faults.push((
            t,
            Fault::Crash {
                node: 0,
                lose_state: false,
            },
        ));
        s.faults
            .push((t + rng.range(MS, 30 * MS), Fault::Restart { node: 0 }));
    }
    s
}

/// The lock directory on a network mount whose locks are local to each host (clients on two
/// hosts): two holders at once; the overlap is expected, and it is why the adapter refuses
/// network file systems by default.
pub(super) fn network_mount(_rng: &mut Rng) -> Setup {
    let mut s = base(&NETWORK_MOUNT);
    s.work.clients = 4;
    s.work.hold_ns = Some((20 * MS, 100 * MS));
    s.must_violate = true;
    s
}
