//! Scenarios of MongoDB on the lease-record model, with the store as a replica set
//! ([`super::replica`]): failovers that roll back what a majority had not confirmed, secondaries
//! that fall behind past the write concern's `wtimeout`, two upserts racing to create a
//! name's document, and a new primary whose clock is ahead.

use lucky_core::{Duration, Wait};

use crate::rng::Rng;
use crate::scenario::Setup;
use crate::world::{Fault, MemberState};

use super::protocol::MongoRunner;

const MS: u64 = 1_000_000;

/// Replication lag 15 ms; a take that lost an upsert race is resent 2 ms later.
static MONGO: MongoRunner = MongoRunner {
    lag_ns: 15 * MS,
    upsert_race_ns: 2 * MS,
    clock_skew_ns: 0,
};

/// A sharded cluster: the same, with each command judged on one of several mongos clocks
/// up to 2 ms from the shard's either way (4 ms apart at most, inside the 6 ms drift
/// allowance of a 400 ms ttl).
static MONGOS: MongoRunner = MongoRunner {
    clock_skew_ns: 2 * MS,
    ..MONGO
};

/// The MongoDB shape: the lease shape over a three-member replica set, renewals on, a request
/// timeout of 80 ms (so `wtimeout` is 40 ms, above the lag).
fn base(_rng: &mut Rng) -> Setup {
    on(&MONGO)
}

fn on(runner: &'static MongoRunner) -> Setup {
    let mut s = Setup::new(runner);
    s.nodes = 1;
    s.fencing = true;
    s.wait = Wait::For(Duration::from_millis(800));
    s.auto_extend = Some((None, None));
    s.op_timeout = Some(Duration::from_millis(80));
    s
}

fn member(member: usize, state: MemberState) -> Fault {
    Fault::Member {
        node: 0,
        member,
        state,
    }
}

/// Failovers under busy holders (field reports: locks on `w: 1` lost after an election, two
/// holders at once). Each election rolls back the writes a majority had not confirmed; with
/// `w: "majority"` none of them was acknowledged, so no holder loses what it was told.
pub(super) fn failover_rollback(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 5;
    s.work.think_ns = (0, 2 * MS);
    s.work.hold_ns = Some((5 * MS, s.ttl() / 2));
    let mut t = rng.range(20 * MS, 80 * MS);
    while t < s.work.quiet_at {
        s.faults.push((t, member(0, MemberState::Down)));
        // Half the elections leave the set without a primary for a while: commands wait
        // (the driver's server selection) and run on the new primary.
        if rng.range(0, 1) == 0 {
            let for_ns = rng.range(5 * MS, 60 * MS);
            s.faults.push((t, Fault::Stall { node: 0, for_ns }));
        }
        s.faults.push((t + MS, member(0, MemberState::Up)));
        t += rng.range(20 * MS, 120 * MS);
    }
    s
}

/// A sharded cluster whose mongos routers' clocks differ by up to 4 ms (within the drift
/// allowance): each command is judged on the clock of the router it went through, with
/// elections under busy holders. Holds as long as the routers' clocks agree within the
/// allowance, which is what the README asks of a sharded deployment.
pub(super) fn mongos_clocks(rng: &mut Rng) -> Setup {
    let mut s = failover_rollback(rng);
    s.runner = &MONGOS;
    // Holders that stop renewing (paused past the ttl): the next takes come at the
    // document's expiry, where a router's clock ahead would hand the lock out early.
    s.wait = Wait::Forever;
    for _ in 0..rng.range(3, 6) {
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        let for_ns = rng.range(s.ttl(), 2 * s.ttl());
        s.faults.push((s.at(rng), Fault::Pause { client, for_ns }));
    }
    s
}

/// Secondaries fall behind (a slow disk, a partition between members) for longer than
/// `wtimeout`: writes applied on the primary are answered with a write-concern error, an
/// unknown outcome. Some come back and commit those writes; some windows end in an election
/// that rolls them back. Each is settled by a majority read before anything is claimed.
pub(super) fn write_concern_timeout(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 4;
    s.work.hold_ns = Some((MS, s.ttl()));
    let mut t = s.at(rng);
    while t + 300 * MS < s.work.quiet_at {
        s.faults.push((t, member(1, MemberState::Silent)));
        s.faults.push((t, member(2, MemberState::Silent)));
        let back = t + rng.range(50 * MS, 250 * MS);
        if rng.range(0, 1) == 0 {
            s.faults.push((back - MS, member(0, MemberState::Down)));
            s.faults.push((back, member(0, MemberState::Up)));
        }
        s.faults.push((back, member(1, MemberState::Up)));
        s.faults.push((back, member(2, MemberState::Up)));
        t = back + rng.range(30 * MS, 150 * MS);
    }
    s
}

/// Many processes take a name nobody took before at the same moment: each upsert finds no
/// document, one inserts, the others' inserts fail with a duplicate key (E11000) and are sent
/// again, as updates. One-shot tries among them: a lost race is "held by another", never a
/// failure, and never two holders.
pub(super) fn upsert_race(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 8;
    s.work.think_ns = (0, MS);
    s.work.hold_ns = Some((MS, 30 * MS));
    if rng.range(0, 1) == 0 {
        s.wait = Wait::None;
    }
    s
}

/// Each election brings up a primary whose clock is a ttl ahead (an unsynchronised member):
/// it judges every holder's document expired at once. The lease assumes the server's clock
/// runs true: overlap expected, and named; fences still rise.
pub(super) fn primary_clock_step(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 4;
    s.work.hold_ns = Some((s.ttl() / 4, s.ttl() * 3 / 4));
    s.work.think_ns = (0, MS);
    s.wait = Wait::For(Duration::from_millis(40));
    let mut t = 100 * MS;
    while t < s.work.quiet_at {
        s.faults.push((t, member(0, MemberState::Down)));
        s.faults.push((
            t,
            Fault::ClockJump {
                node: 0,
                by_ns: s.ttl() as i64,
            },
        ));
        s.faults.push((t + MS, member(0, MemberState::Up)));
        t += rng.range(60 * MS, 150 * MS);
    }
    s.must_violate = true;
    s
}
