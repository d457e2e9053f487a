//! The session-lock scenarios (PostgreSQL advisory locks, MySQL `GET_LOCK`), named after the
//! field reports they come from: the server restarting under holders (their locks end with
//! their sessions), a driver or pooler that silently replaces a session the server ended,
//! holders cut off from the server (the server ends their idle sessions after the ttl).

use lucky_core::{Duration, Wait};

use crate::net::Cut;
use crate::rng::Rng;
use crate::scenario::Setup;
use crate::world::Fault;

use super::SessionRunner;

const MS: u64 = 1_000_000;

static PLAIN: SessionRunner = SessionRunner { reconnect: false };
static RECONNECTING: SessionRunner = SessionRunner { reconnect: true };

/// The session shape: the engine's (3 clients, ttl 400 ms, faults for 1 s, then 1 s of
/// quiet) over one server, probing every ttl/3, fences checked.
fn base(runner: &'static SessionRunner) -> Setup {
    let mut s = Setup::new(runner);
    s.fencing = true;
    s.auto_extend = Some((None, None));
    s.wait = Wait::For(Duration::from_millis(800));
    s.work.hold_ns = Some((5 * MS, 2 * s.ttl()));
    s
}

/// Server restarts (data kept) at random times: every session ends with its locks, and the
/// next holder may take a lock whose old holder learns of it only at its next probe (within a
/// ttl): that overlap is expected, and fences keep rising (the counter rows survive).
fn restarts(s: &mut Setup, rng: &mut Rng) {
    for _ in 0..rng.range(1, 3) {
        let t = s.at(rng);
        s.faults.push((
            t,
            Fault::Crash {
                node: 0,
                lose_state: false,
            },
        ));
        s.faults
            .push((t + rng.range(MS, 40 * MS), Fault::Restart { node: 0 }));
    }
}

pub(super) fn restart(rng: &mut Rng) -> Setup {
    let mut s = base(&PLAIN);
    restarts(&mut s, rng);
    s
}

/// As `restart`, with drivers that reconnect silently: a holder's next command runs in a
/// fresh server session, which the holder must notice (the session's id changed, the lock
/// is not held there). Holds are long, so a holder that did not notice would still claim
/// well after a ttl.
pub(super) fn reconnected(rng: &mut Rng) -> Setup {
    let mut s = base(&RECONNECTING);
    s.work.hold_ns = Some((2 * s.ttl(), 4 * s.ttl()));
    s.work.quiet_at = 1_500 * MS;
    s.work.stop_at = 3_000 * MS;
    let t = rng.range(100 * MS, 400 * MS);
    s.faults.push((
        t,
        Fault::Crash {
            node: 0,
            lose_state: false,
        },
    ));
    s.faults
        .push((t + rng.range(MS, 20 * MS), Fault::Restart { node: 0 }));
    s
}

/// Holders and contenders cut off from the server for up to two ttl: the server ends a
/// session it heard nothing from for a ttl, after its holder stopped trusting it (the last
/// probe's send + ttl - drift); no overlap.
pub(super) fn partitioned(rng: &mut Rng) -> Setup {
    let mut s = base(&PLAIN);
    s.work.clients = 4;
    for _ in 0..rng.range(3, 8) {
        let t = s.at(rng);
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        let cut = [Cut::Both, Cut::ToNode, Cut::FromNode][rng.range(0, 2) as usize];
        s.cut_for(t, rng.range(10 * MS, 2 * s.ttl()), Some(client), &[0], cut);
    }
    s
}

/// Cuts, restarts, pauses of clients past the ttl and slow answers at once.
pub(super) fn chaos(rng: &mut Rng) -> Setup {
    let mut s = partitioned(rng);
    if rng.range(0, 1) == 0 {
        restarts(&mut s, rng);
    }
    for _ in 0..rng.range(0, 3) {
        let t = s.at(rng);
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        let for_ns = rng.range(10 * MS, 2 * s.ttl());
        s.faults.push((t, Fault::Pause { client, for_ns }));
    }
    s
}

/// `get_lock` / advisory mode with the whole server stopped past the ttl (`kill -STOP`):
/// probes go unanswered, holders stop trusting their locks and end their sessions; the
/// server, resumed, ends nothing early (its idle clock restarts) and frees the dropped
/// sessions' locks as their closes arrive.
pub(super) fn server_stopped(rng: &mut Rng) -> Setup {
    let mut s = base(&PLAIN);
    s.work.clients = 4;
    let mut t = rng.range(0, 100 * MS);
    while t < s.work.quiet_at {
        let for_ns = rng.range(s.ttl() / 2, 3 * s.ttl() / 2);
        s.faults.push((t, Fault::Stall { node: 0, for_ns }));
        t += for_ns + rng.range(50 * MS, 200 * MS);
    }
    s
}
