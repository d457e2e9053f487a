//! The etcd scenarios: the etcd lease lock against the cluster model, one node that stands for
//! the whole (linearizable) cluster.

use lucky_core::redlock::Wait;
use lucky_core::Duration;

use crate::net::Cut;
use crate::rng::Rng;
use crate::scenario::Setup;
use crate::world::Fault;

use super::lock::EtcdRunner;

const MS: u64 = 1_000_000;

/// The etcd shape: one cluster, 3 clients, lease ttl 400 ms, fences checked by the resource.
fn base(_rng: &mut Rng) -> Setup {
    let mut s = Setup::new(&EtcdRunner {
        compact_always: false,
    });
    s.nodes = 1;
    s.fencing = true;
    s.wait = Wait::For(Duration::from_millis(800));
    s
}

/// Cron-style tries on etcd: one `no_wait` try per client at nearly the same instant, each
/// client exiting for good when its try ends; a failed try's key must not stay in the queue.
pub(super) fn no_wait_exit(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.wait = Wait::None;
    s.work.clients = 12;
    s.work.exit_after_try = true;
    s.work.think_ns = (0, 2 * MS);
    s.work.hold_ns = Some((5 * MS, 20 * MS));
    s.work.progress_within = None;
    s
}

pub(super) fn holder_partitioned(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 2 + rng.range(0, 1) as usize;
    s.work.hold_ns = Some((s.ttl(), 2 * s.ttl()));
    for _ in 0..2 {
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        let t = s.at(rng);
        s.cut_for(t, s.ttl() * 3 / 2, Some(client), &[0], Cut::Both);
    }
    s
}

pub(super) fn keepalive_stall(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 2;
    s.work.hold_ns = Some((s.ttl(), 3 * s.ttl()));
    s.work.think_ns = (0, MS);
    s.wait = Wait::Forever;
    // Long enough that a stalled keepalive's answer still counts when it comes.
    s.op_timeout = Some(Duration::from_millis(150));
    s.work.quiet_at = 1_600 * MS;
    s.work.stop_at = 2_400 * MS;
    let mut t = 50 * MS;
    while t + 2 * s.ttl() < s.work.quiet_at {
        // Answers to one client stall (its keepalives still reach the cluster), then its
        // requests are cut too: the lease runs out from the last keepalive that arrived.
        let client = rng.range(0, 1) as usize;
        t = stall_then_cut(&mut s, t, client) + rng.range(10 * MS, 100 * MS);
    }
    // Leader losses: requests wait, leases get a fresh ttl afterwards.
    for _ in 0..rng.range(0, 2) {
        let at = s.at(rng);
        let for_ns = rng.range(s.ttl() / 10, s.ttl());
        s.faults.push((at, Fault::Stall { node: 0, for_ns }));
    }
    s
}

/// From `t`, answers to `client` stall for ttl/4 (its requests still reach the cluster), then
/// its requests are cut too for 1.5 ttl; returns when both end.
fn stall_then_cut(s: &mut Setup, t: u64, client: usize) -> u64 {
    let slow = s.ttl() / 4;
    s.faults.push((
        t,
        Fault::SlowReplies {
            client,
            extra_ns: slow,
        },
    ));
    let cut_at = t + s.ttl() / 2;
    let back = cut_at + s.ttl() * 3 / 2;
    s.cut_for(cut_at, s.ttl() * 3 / 2, Some(client), &[0], Cut::ToNode);
    s.faults.push((
        back,
        Fault::SlowReplies {
            client,
            extra_ns: 0,
        },
    ));
    back
}

pub(super) fn watch_compacted(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.runner = &EtcdRunner {
        compact_always: true,
    };
    s.work.clients = 4;
    s.work.hold_ns = Some((MS, 30 * MS));
    s.work.think_ns = (0, 5 * MS);
    s.net.delay_ns = (100_000, 3 * MS);
    s.wait = Wait::Forever;
    s
}

pub(super) fn predecessor_crash(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 4;
    s.work.hold_ns = Some((s.ttl(), 2 * s.ttl()));
    s.work.think_ns = (0, MS);
    s.wait = Wait::Forever;
    s.work.quiet_at = 1_600 * MS;
    s.work.stop_at = 2_600 * MS;
    let first = rng.range(0, 3) as usize;
    let second = (first + 1 + rng.range(0, 2) as usize) % 4;
    for client in [first, second] {
        let t = s.at(rng);
        s.faults.push((t, Fault::CrashClient { client }));
    }
    s
}

pub(super) fn holder_pause_fenced(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.pause_after_check_ns = Some(2 * s.ttl());
    s.work.pause_only_client = Some(0);
    s.work.quiet_at = 1_600 * MS;
    s.work.stop_at = 1_600 * MS;
    s.work.progress_within = None;
    s
}

pub(super) fn clock_jump(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.hold_ns = Some((s.ttl() / 2, s.ttl() * 3 / 4));
    s.work.think_ns = (0, MS);
    s.wait = Wait::Forever;
    let mut t = 200 * MS;
    while t < s.work.quiet_at {
        s.faults.push((
            t,
            Fault::ClockJump {
                node: 0,
                by_ns: s.ttl() as i64,
            },
        ));
        t += rng.range(80 * MS, 200 * MS);
    }
    s.must_violate = true;
    s
}

pub(super) fn client_drift(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 2;
    // Long holds: a cut of the holder's keepalives lets its lease run out under it.
    s.work.hold_ns = Some((2 * s.ttl(), 3 * s.ttl()));
    s.work.think_ns = (0, MS);
    s.wait = Wait::Forever;
    let bound = s.drift_ppm as i32;
    if rng.range(0, 1) == 0 {
        s.work.clock_ppm = bound / 2;
    } else {
        // Clients run slow by 4-6x the bound: they believe in their lease past its expiry.
        s.work.clock_ppm = 0;
        s.work.client_ppm = Some((-6 * bound, -4 * bound));
        s.must_violate = true;
    }
    // Cut each client's keepalives in turn, so the lease of whoever holds runs out.
    let mut t = 100 * MS;
    let mut client = rng.range(0, 1) as usize;
    for _ in 0..4 {
        s.cut_for(t, s.ttl() * 11 / 10, Some(client), &[0], Cut::ToNode);
        t += s.ttl() * 11 / 10 + rng.range(20 * MS, 60 * MS);
        client = 1 - client;
    }
    s.work.quiet_at = t;
    s.work.stop_at = t + 600 * MS;
    s
}

pub(super) fn data_loss(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.hold_ns = Some((s.ttl() / 2, s.ttl() * 3 / 4));
    s.work.think_ns = (0, MS);
    s.wait = Wait::Forever;
    // Half the seeds restart at once, half only after the ttl: revisions restart either way,
    // so fences go back (and with an immediate restart, holders overlap too).
    let delayed = rng.range(0, 1) == 1;
    let mut t = 150 * MS;
    loop {
        let down = if delayed {
            s.ttl() * 11 / 10 + rng.range(0, 50 * MS)
        } else {
            MS
        };
        // Every restart happens before faults stop (quiet restarts whatever is down).
        if t + down >= s.work.quiet_at {
            break;
        }
        s.faults.push((
            t,
            Fault::Crash {
                node: 0,
                lose_state: true,
            },
        ));
        s.faults.push((t + down, Fault::Restart { node: 0 }));
        t += down + rng.range(100 * MS, 250 * MS);
    }
    s.must_violate = true;
    s
}

pub(super) fn random_chaos(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 2 + rng.range(0, 2) as usize;
    let on = |rng: &mut Rng| rng.range(0, 1) == 1;
    if on(rng) {
        s.work.hold_ns = Some((MS, 2 * s.ttl()));
    }
    if on(rng) {
        s.runner = &EtcdRunner {
            compact_always: true,
        };
    }
    if on(rng) {
        s.wait = Wait::Forever;
    }
    if on(rng) {
        s.net.drop_ppm = rng.range(0, 100_000) as u32;
    }
    if on(rng) {
        s.net.dup_ppm = rng.range(0, 100_000) as u32;
    }
    s.net.reorder = on(rng);
    if on(rng) {
        s.net.delay_ns = (100_000, rng.range(MS, 20 * MS));
    }
    let clients = s.work.clients as u64;
    if on(rng) {
        for _ in 0..rng.range(1, 5) {
            let t = s.at(rng);
            let client = if on(rng) {
                None
            } else {
                Some(rng.range(0, clients - 1) as usize)
            };
            let cut = [Cut::Both, Cut::ToNode, Cut::FromNode][rng.range(0, 2) as usize];
            s.cut_for(t, rng.range(MS, 2 * s.ttl()), client, &[0], cut);
        }
    }
    if on(rng) {
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
                .push((t + rng.range(MS, 200 * MS), Fault::Restart { node: 0 }));
        }
    }
    if on(rng) {
        for _ in 0..rng.range(1, 3) {
            let t = s.at(rng);
            let for_ns = rng.range(MS, s.ttl());
            s.faults.push((t, Fault::Stall { node: 0, for_ns }));
        }
    }
    if on(rng) {
        for _ in 0..rng.range(1, 4) {
            let t = s.at(rng);
            let client = rng.range(0, clients - 1) as usize;
            let for_ns = rng.range(MS, s.ttl() / 2 - MS);
            s.faults.push((t, Fault::Pause { client, for_ns }));
        }
    }
    if on(rng) {
        let t = s.at(rng);
        let client = rng.range(0, clients - 1) as usize;
        let extra_ns = rng.range(MS, s.ttl() / 4);
        s.faults.push((t, Fault::SlowReplies { client, extra_ns }));
        s.faults.push((
            t + rng.range(MS, s.ttl()),
            Fault::SlowReplies {
                client,
                extra_ns: 0,
            },
        ));
    }
    if on(rng) {
        let t = s.at(rng);
        let client = rng.range(0, clients - 1) as usize;
        s.faults.push((t, Fault::CrashClient { client }));
    }
    s
}

/// The same scenarios with every client's lock on a shared session lease
/// ([`EtcdSessionRunner`](super::EtcdSessionRunner)): the session grants, keeps alive and
/// loses the lease; locks take keys of their own per attempt and abandon them behind guards.
macro_rules! on_session {
    ($($name:ident => $draw:ident),* $(,)?) => {
        $(
            pub(super) fn $name(rng: &mut Rng) -> Setup {
                let mut s = $draw(rng);
                s.runner = &super::EtcdSessionRunner;
                // A shared session relies on a take arriving at most once: it travels on
                // one connection (which does not duplicate) and is never resent after an
                // unknown outcome (`Resend` for a take with a guard). A copy landing after
                // the release would re-create the key for the session's whole life.
                s.net.dup_ppm = 0;
                s
            }
        )*
    };
}

on_session! {
    session_holder_partitioned => holder_partitioned,
    session_keepalive_stall => keepalive_stall,
    session_predecessor_crash => predecessor_crash,
    session_no_wait_exit => no_wait_exit,
    session_random_chaos => random_chaos,
}

/// A scheduler's shape on shared sessions: 100-200 client processes holding 4-10 names each
/// on their one session lease, four processes contending for every name. Whole processes are
/// cut off, paused and crashed; the cluster loses its leader and restarts; the network drops
/// and reorders. Every check (exclusion, fences, stale writes, liveness, cleanup, herd) is
/// judged per name.
pub(super) fn session_many_names(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.runner = &super::EtcdSessionRunner;
    // Long enough that a stalled keepalive's answer still counts when it comes.
    s.op_timeout = Some(Duration::from_millis(150));
    let processes = rng.range(100, 200) as usize;
    let per = rng.range(4, 10) as usize;
    s.work.per_process = per;
    s.work.clients = processes * per;
    s.work.names = processes * per / 4;
    s.work.hold_ns = Some((5 * MS, 120 * MS));
    s.work.think_ns = (0, 60 * MS);
    let on = |rng: &mut Rng| rng.range(0, 1) == 1;
    if on(rng) {
        s.wait = Wait::Forever;
    }
    if on(rng) {
        s.net.drop_ppm = rng.range(0, 30_000) as u32;
    }
    s.net.reorder = on(rng);
    let processes = processes as u64;
    for _ in 0..rng.range(1, 4) {
        let t = s.at(rng);
        let p = rng.range(0, processes - 1) as usize;
        let cut = [Cut::Both, Cut::ToNode, Cut::FromNode][rng.range(0, 2) as usize];
        s.cut_for(t, rng.range(MS, 2 * s.ttl()), Some(p), &[0], cut);
    }
    for _ in 0..rng.range(0, 3) {
        let t = s.at(rng);
        let client = rng.range(0, processes - 1) as usize;
        let for_ns = rng.range(MS, s.ttl() / 2 - MS);
        s.faults.push((t, Fault::Pause { client, for_ns }));
    }
    for _ in 0..rng.range(0, 2) {
        let t = s.at(rng);
        let client = rng.range(0, processes - 1) as usize;
        let extra_ns = rng.range(MS, s.ttl() / 4);
        s.faults.push((t, Fault::SlowReplies { client, extra_ns }));
        let back = t + rng.range(MS, s.ttl());
        s.faults.push((
            back,
            Fault::SlowReplies {
                client,
                extra_ns: 0,
            },
        ));
    }
    for _ in 0..rng.range(0, 2) {
        let t = s.at(rng);
        let client = rng.range(0, processes - 1) as usize;
        s.faults.push((t, Fault::CrashClient { client }));
    }
    if on(rng) {
        // A process's session keepalive answers stall, then its requests are cut: every
        // lock it holds runs out at the deadline of the last keepalive that arrived.
        let t = s.at(rng);
        stall_then_cut(&mut s, t, rng.range(0, processes - 1) as usize);
    }
    if on(rng) {
        // One process stalls for two ttl between each check and its write: its stale
        // writes reach the resource after the next holders began, and only fences stop them.
        s.work.pause_after_check_ns = Some(2 * s.ttl());
        s.work.pause_only_client = Some(rng.range(0, processes - 1) as usize);
    }
    for _ in 0..rng.range(0, 2) {
        let t = s.at(rng);
        let for_ns = rng.range(MS, s.ttl());
        s.faults.push((t, Fault::Stall { node: 0, for_ns }));
    }
    if on(rng) {
        let t = s.at(rng);
        let down = Fault::Crash {
            node: 0,
            lose_state: false,
        };
        s.faults.push((t, down));
        s.faults
            .push((t + rng.range(MS, 200 * MS), Fault::Restart { node: 0 }));
    }
    s
}
