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
