//! The ZooKeeper scenarios: the lock recipe against the ensemble model, from field reports
//! of ZooKeeper lock recipes (orphaned nodes after a lost create, followers answering while
//! cut off from the leader, the sequence counter wrapping).

use lucky_core::redlock::Wait;
use lucky_core::Duration;

use crate::net::Cut;
use crate::rng::Rng;
use crate::scenario::Setup;
use crate::world::{Fault, MemberState};

use super::protocol::{Shape, ZkRunner};

const MS: u64 = 1_000_000;

static STANDALONE: ZkRunner = ZkRunner {
    shape: Shape {
        via_follower: false,
        first_seq: 0,
    },
};
static FOLLOWER: ZkRunner = ZkRunner {
    shape: Shape {
        via_follower: true,
        first_seq: 0,
    },
};
static NEAR_WRAP: ZkRunner = ZkRunner {
    shape: Shape {
        via_follower: false,
        first_seq: i32::MAX - 2,
    },
};

/// The ZooKeeper shape: one ensemble, 3 clients, session timeout 400 ms (tick 40 ms,
/// syncLimit 2), fences checked by the resource.
fn base(runner: &'static ZkRunner) -> Setup {
    let mut s = Setup::new(runner);
    s.nodes = 1;
    s.fencing = true;
    s.wait = Wait::For(Duration::from_millis(800));
    s
}

pub(super) fn holder_partitioned(rng: &mut Rng) -> Setup {
    let mut s = base(&STANDALONE);
    s.work.clients = 2 + rng.range(0, 1) as usize;
    s.work.hold_ns = Some((s.ttl(), 2 * s.ttl()));
    for _ in 0..2 {
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        let t = s.at(rng);
        s.cut_for(t, s.ttl() * 3 / 2, Some(client), &[0], Cut::Both);
    }
    s
}

/// The clients' follower loses the leader for 1.5 session timeouts: it answers reads for
/// syncLimit ticks while the leader hears none of its touches, then drops its clients.
pub(super) fn follower_cut(rng: &mut Rng) -> Setup {
    let mut s = base(&FOLLOWER);
    s.work.clients = 3;
    s.work.hold_ns = Some((s.ttl(), 2 * s.ttl()));
    s.work.think_ns = (0, 5 * MS);
    let mut t = 100 * MS + rng.range(0, 100) * MS;
    while t + 2 * s.ttl() < s.work.quiet_at {
        s.faults.push((
            t,
            Fault::Member {
                node: 0,
                member: 0,
                state: MemberState::NoLeader,
            },
        ));
        let back = t + s.ttl() * 3 / 2;
        s.faults.push((
            back,
            Fault::Member {
                node: 0,
                member: 0,
                state: MemberState::Up,
            },
        ));
        t = back + s.ttl() / 2 + rng.range(0, 100) * MS;
    }
    s
}

/// Answers are lost (a connection dropping after the request went out): a create's node
/// may exist though its answer never came.
pub(super) fn create_lost(rng: &mut Rng) -> Setup {
    let mut s = base(&STANDALONE);
    s.work.clients = 3;
    s.net.drop_ppm = 100_000 + rng.range(0, 100_000) as u32;
    s.work.progress_within = None;
    s
}

/// The parent's sequence counter starts two below `i32::MAX`: it wraps after the third node.
pub(super) fn sequence_wrap(rng: &mut Rng) -> Setup {
    let mut s = base(&NEAR_WRAP);
    s.work.clients = 3 + rng.range(0, 1) as usize;
    s.work.hold_ns = Some((20 * MS, 60 * MS));
    s.work.think_ns = (0, 2 * MS);
    s
}

/// Many contenders with short waits: waiters give up and leave the queue under others.
pub(super) fn contention(rng: &mut Rng) -> Setup {
    let mut s = base(&STANDALONE);
    s.work.clients = 5;
    s.wait = Wait::For(Duration::from_millis(30 + rng.range(0, 40)));
    s.work.hold_ns = Some((20 * MS, 80 * MS));
    s.work.think_ns = (0, 5 * MS);
    s.work.progress_within = None;
    s
}

/// Answers to one client stall by a third of the session timeout, then its requests are cut
/// for 1.5 timeouts: the session expires from the last request that reached the ensemble.
pub(super) fn reply_stall(rng: &mut Rng) -> Setup {
    let mut s = base(&STANDALONE);
    s.work.clients = 2;
    s.work.hold_ns = Some((s.ttl(), 3 * s.ttl()));
    s.work.think_ns = (0, MS);
    s.wait = Wait::Forever;
    s.op_timeout = Some(Duration::from_millis(150));
    s.work.quiet_at = 1_600 * MS;
    s.work.stop_at = 2_400 * MS;
    let mut t = 50 * MS;
    while t + 2 * s.ttl() < s.work.quiet_at {
        let client = rng.range(0, 1) as usize;
        s.faults.push((
            t,
            Fault::SlowReplies {
                client,
                extra_ns: s.ttl() / 3,
            },
        ));
        let cut_at = t + s.ttl() / 2;
        s.cut_for(cut_at, s.ttl() * 3 / 2, Some(client), &[0], Cut::ToNode);
        s.faults.push((
            cut_at + s.ttl() * 3 / 2,
            Fault::SlowReplies {
                client,
                extra_ns: 0,
            },
        ));
        t = cut_at + s.ttl() * 3 / 2 + rng.range(10 * MS, 100 * MS);
    }
    s
}

/// Queued clients (and holders) crash for good: their nodes stay until their sessions
/// expire on the leader, and the queue moves on past them.
pub(super) fn predecessor_crash(rng: &mut Rng) -> Setup {
    let mut s = base(&STANDALONE);
    s.work.clients = 4;
    s.work.hold_ns = Some((s.ttl() / 2, s.ttl()));
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

/// A client's answers are cut (its requests still arrive) for 1.5 session timeouts, through
/// a follower that lags: its session expires with its creates applied unanswered, and the new
/// session's listing may still show the old session's node, which must not be taken for ours.
pub(super) fn stale_ephemeral(rng: &mut Rng) -> Setup {
    let mut s = base(&FOLLOWER);
    s.work.clients = 3;
    s.work.hold_ns = Some((10 * MS, 60 * MS));
    s.work.think_ns = (0, 2 * MS);
    s.wait = Wait::Forever;
    s.work.progress_within = None;
    let mut t = 50 * MS + rng.range(0, 50) * MS;
    while t + 2 * s.ttl() < s.work.quiet_at {
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        s.cut_for(t, s.ttl() * 3 / 2, Some(client), &[0], Cut::FromNode);
        t += s.ttl() * 3 / 2 + rng.range(10, 100) * MS;
    }
    s
}

/// Answers are cut for a fifth of the session timeout at a time, often, under short holds:
/// releases meet connection loss and must retry the delete until it is done (an orphan node
/// of a live session would block the lock for good, which the progress check catches).
pub(super) fn release_lost(rng: &mut Rng) -> Setup {
    let mut s = base(&STANDALONE);
    s.work.clients = 3;
    s.work.hold_ns = Some((5 * MS, 30 * MS));
    s.work.think_ns = (0, 2 * MS);
    s.wait = Wait::Forever;
    let mut t = 20 * MS + rng.range(0, 20) * MS;
    while t + s.ttl() < s.work.quiet_at {
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        s.cut_for(t, s.ttl() / 5, Some(client), &[0], Cut::FromNode);
        t += s.ttl() / 5 + rng.range(5, 40) * MS;
    }
    s
}

/// Every fault the assumptions allow, at rates drawn per seed: client cuts (releases and
/// creates among them), lost and slow messages, the follower losing the leader.
pub(super) fn random_chaos(rng: &mut Rng) -> Setup {
    let mut s = base(&FOLLOWER);
    s.work.clients = 3 + rng.range(0, 2) as usize;
    s.net.drop_ppm = rng.range(0, 50_000) as u32;
    s.net.delay_ns = (100_000, rng.range(1, 8) * MS);
    s.work.progress_within = None;
    for _ in 0..rng.range(1, 4) {
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        let t = s.at(rng);
        let d = rng.range(s.ttl() / 10, 2 * s.ttl());
        s.cut_for(t, d, Some(client), &[0], Cut::Both);
    }
    for _ in 0..rng.range(0, 2) {
        let t = s.at(rng);
        s.faults.push((
            t,
            Fault::Member {
                node: 0,
                member: 0,
                state: MemberState::NoLeader,
            },
        ));
        s.faults.push((
            t + rng.range(s.ttl() / 4, 2 * s.ttl()),
            Fault::Member {
                node: 0,
                member: 0,
                state: MemberState::Up,
            },
        ));
    }
    s
}
