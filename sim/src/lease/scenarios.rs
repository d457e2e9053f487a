//! The lease-record scenarios: the lease-record machine against one
//! [`LeaseStore`](super::LeaseStore) under faults. Fences are always checked by the resource (the record's
//! fence is always there).

use lucky_core::{Duration, Retry, Wait};

use crate::net::{Cut, NetParams};
use crate::rng::Rng;
use crate::scenario::Setup;
use crate::world::Fault;

use super::LeaseRunner;

const MS: u64 = 1_000_000;

/// The lease shape: the engine's (3 clients, ttl 400 ms, drift bound 10 000 ppm, clocks within
/// ±2 000 ppm, a calm LAN, faults for 1 s, then 1 s of quiet) over one store, fences checked.
pub fn base(_rng: &mut Rng) -> Setup {
    let mut s = Setup::new(&LeaseRunner);
    s.nodes = 1;
    s.fencing = true;
    s.wait = Wait::For(Duration::from_millis(800));
    s
}

pub(super) fn holder_pause_fenced(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.pause_after_check_ns = Some(2 * s.ttl());
    // Only client 0 stalls, so later holders write before its stale write lands.
    s.work.pause_only_client = Some(0);
    s.work.quiet_at = 1_600 * MS;
    s.work.stop_at = 1_600 * MS;
    s.work.progress_within = None;
    s
}

/// Releases (and everything else) arrive late, out of order and twice; for bursts, links are
/// slower than the ttl, so a holder's release lands after its record expired and the next
/// owner took it. Short think times make the same client take again right after its own
/// release, so a late copy of that release meets the client's next acquisition.
pub(super) fn late_release(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 4;
    s.work.think_ns = (0, MS);
    s.work.hold_ns = Some((MS, 30 * MS));
    s.net = NetParams {
        delay_ns: (100_000, 15 * MS),
        drop_ppm: 0,
        dup_ppm: 200_000,
        reorder: true,
    };
    s.op_timeout = Some(Duration::from_millis(40));
    let calm = s.net;
    let mut t = s.at(rng);
    while t + s.ttl() < s.work.quiet_at {
        let slow = NetParams {
            delay_ns: (MS, s.ttl() * 3 / 2),
            ..calm
        };
        s.faults.push((t, Fault::Net(slow)));
        let back = t + rng.range(5 * MS, 40 * MS);
        s.faults.push((back, Fault::Net(calm)));
        t = back + rng.range(50 * MS, 200 * MS);
    }
    s
}

/// Cron-style one-shot tries, many cancelled while their take is in flight, over links that
/// reorder (delays within the request timeout): every client exits once its try ends, and
/// nothing it took may be left held.
pub(super) fn cancel_in_flight(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.wait = if rng.range(0, 1) == 0 {
        Wait::None
    } else {
        Wait::For(Duration::from_millis(50))
    };
    s.work.clients = 16;
    s.work.exit_after_try = true;
    s.work.think_ns = (0, 2 * MS);
    s.work.hold_ns = Some((5 * MS, 20 * MS));
    s.work.cancel = Some((500_000, (0, 4 * MS)));
    s.net = NetParams {
        delay_ns: (100_000, 8 * MS),
        drop_ppm: 0,
        dup_ppm: 0,
        reorder: true,
    };
    // Clients exit after one try: there is nobody left to make progress.
    s.work.progress_within = None;
    s
}

/// Replies are lost after the store applied the write: short one-way cuts of the store's
/// replies to one client (the requests get through), and random drops both ways. Renewals
/// run, so renewals' outcomes are unknown too.
pub(super) fn unknown_outcome(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.auto_extend = Some((None, None));
    s.work.hold_ns = Some((MS, 2 * s.ttl()));
    s.net.drop_ppm = rng.range(20_000, 150_000) as u32;
    s.retry = Retry {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(10),
    };
    for _ in 0..rng.range(6, 16) {
        let t = s.at(rng);
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        s.cut_for(t, rng.range(MS, 30 * MS), Some(client), &[0], Cut::FromNode);
    }
    s
}

/// Answers to takes and renewals are read late: replies slowed by up to half the request
/// timeout, and clients paused (up to the ttl) while an answer is in flight. Holders keep the
/// lock to their deadline and waiters retry at the record's expiry, so a validity counted from
/// anything later than the send overlaps the next holder.
pub(super) fn slow_grant(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.hold_ns = None;
    s.work.think_ns = (0, MS);
    s.wait = Wait::Forever;
    s.op_timeout = Some(Duration::from_millis(100));
    let clients = s.work.clients as u64;
    for _ in 0..rng.range(2, 5) {
        let t = s.at(rng);
        let client = rng.range(0, clients - 1) as usize;
        let extra_ns = rng.range(10 * MS, 50 * MS);
        s.faults.push((t, Fault::SlowReplies { client, extra_ns }));
        s.faults.push((
            t + rng.range(s.ttl() / 2, 2 * s.ttl()),
            Fault::SlowReplies {
                client,
                extra_ns: 0,
            },
        ));
    }
    for _ in 0..8 {
        let client = rng.range(0, clients - 1) as usize;
        let for_ns = rng.range(s.ttl() / 10, s.ttl());
        s.faults.push((s.at(rng), Fault::Pause { client, for_ns }));
    }
    s
}

pub(super) fn clock_step(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 4;
    s.work.hold_ns = Some((s.ttl() / 4, s.ttl() * 3 / 4));
    s.work.think_ns = (0, MS);
    // Waiters give up after a short wait and try afresh: the store is asked often, so a
    // take soon follows a step that expired the holder's record early.
    s.wait = Wait::For(Duration::from_millis(40));
    let mut t = 100 * MS;
    while t < s.work.quiet_at {
        s.faults.push((
            t,
            Fault::ClockJump {
                node: 0,
                by_ns: s.ttl() as i64,
            },
        ));
        t += rng.range(60 * MS, 150 * MS);
    }
    s.must_violate = true;
    s
}

pub(super) fn data_loss(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.hold_ns = Some((s.ttl() / 2, s.ttl() * 3 / 4));
    s.work.think_ns = (0, MS);
    s.wait = Wait::Forever;
    // Half the seeds restart at once, half only after the ttl: the fence restarts either way
    // (and with an immediate restart, holders overlap too).
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
        s.auto_extend = Some((None, None));
        s.work.hold_ns = Some((MS, 2 * s.ttl()));
    }
    if on(rng) {
        s.wait = Wait::Forever;
    }
    if on(rng) {
        s.net.drop_ppm = rng.range(0, 150_000) as u32;
    }
    if on(rng) {
        s.net.dup_ppm = rng.range(0, 150_000) as u32;
    }
    s.net.reorder = on(rng);
    if on(rng) {
        s.net.delay_ns = (100_000, rng.range(MS, 30 * MS));
    }
    if on(rng) {
        s.work.cancel = Some((rng.range(0, 300_000) as u32, (0, 5 * MS)));
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
        // Crashes keep the records (a durable store).
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
