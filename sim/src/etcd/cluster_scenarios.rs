//! The etcd cluster scenarios: the etcd lock through the client's view of a three-member
//! cluster ([`super::cluster_client`]). One member at a time is down, silent, or cut off from the
//! leader; the cluster keeps its quorum, so no acquisition may fail as "unreachable" and no
//! hold may be lost (the oracle's availability check), besides every usual check.

use lucky_core::redlock::Wait;
use lucky_core::Duration;

use crate::rng::Rng;
use crate::scenario::Setup;
use crate::world::{Fault, MemberState};

use super::cluster_client::ClusterRunner;

const MS: u64 = 1_000_000;
const MEMBERS: usize = 3;

/// Three members, 3 clients, lease ttl 400 ms (requests time out after 20 ms, so a silent
/// member is left after 10 ms), fences checked; half the seeds try without waiting (each try
/// must say "taken", never "unreachable"), half wait up to 800 ms.
fn base(rng: &mut Rng) -> Setup {
    let mut s = Setup::new(&ClusterRunner { members: MEMBERS });
    s.nodes = 1;
    s.fencing = true;
    s.work.hold_ns = Some((s.ttl(), 3 * s.ttl()));
    s.work.think_ns = (0, 5 * MS);
    s.wait = if rng.range(0, 1) == 0 {
        Wait::None
    } else {
        Wait::For(Duration::from_millis(800))
    };
    s
}

fn member(member: usize, state: MemberState) -> Fault {
    Fault::Member {
        node: 0,
        member,
        state,
    }
}

/// One member at a time is killed (refuses, its streams break) or stopped (silent; what it
/// received is applied when it resumes), for ttl/4 to 2 ttl, round and round.
pub(super) fn member_down(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    // Holds long enough for keepalives, short enough for many hand-offs.
    s.work.hold_ns = Some((s.ttl() / 3, 2 * s.ttl()));
    s.work.think_ns = (0, 20 * MS);
    let mut t = 50 * MS;
    while t + 50 * MS < s.work.quiet_at {
        let m = rng.range(0, MEMBERS as u64 - 1) as usize;
        let state = if rng.range(0, 2) == 0 {
            MemberState::Silent
        } else {
            MemberState::Down
        };
        let down = rng.range(s.ttl() / 4, 2 * s.ttl());
        s.faults.push((t, member(m, state)));
        s.faults.push((t + down, member(m, MemberState::Up)));
        t += down + rng.range(5 * MS, 50 * MS);
    }
    s
}

/// The leader is killed while holders keep their leases alive: the cluster elects another
/// (requests wait 10-80 ms; leases get a fresh ttl from the new leader), the old leader comes
/// back later. Acquisitions wait (etcd serves nobody during an election).
pub(super) fn leader_change_keepalive(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 2 + rng.range(0, 1) as usize;
    s.work.hold_ns = Some((2 * s.ttl(), 3 * s.ttl()));
    s.work.think_ns = (0, MS);
    s.wait = Wait::Forever;
    let mut leader = rng.range(0, MEMBERS as u64 - 1) as usize;
    let mut t = 50 * MS + rng.range(0, s.ttl() / 3);
    while t + 50 * MS < s.work.quiet_at {
        let election = rng.range(10 * MS, 80 * MS);
        s.faults.push((t, member(leader, MemberState::Down)));
        s.faults.push((
            t,
            Fault::Stall {
                node: 0,
                for_ns: election,
            },
        ));
        let back = t + election + rng.range(20 * MS, 300 * MS);
        s.faults.push((back, member(leader, MemberState::Up)));
        leader = (leader + 1 + rng.range(0, 1) as usize) % MEMBERS;
        t = back + rng.range(20 * MS, 150 * MS);
    }
    s
}

/// A member is cut off from the leader for ttl to 2 ttl: first it hangs for its election
/// timeout (requests and watches on it stay silent), then it answers "no leader" and cancels
/// its watches (half the seeds), or it stays silent throughout (a stopped process). The
/// members are cut off in turn, starting with the one every client prefers at first.
pub(super) fn pinned_partitioned_member(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    let no_leader = rng.range(0, 1) == 0;
    let mut m = 0;
    let mut t = 30 * MS + rng.range(0, 50 * MS);
    while t + 50 * MS < s.work.quiet_at {
        let cut = rng.range(s.ttl(), 2 * s.ttl());
        s.faults.push((t, member(m, MemberState::Silent)));
        if no_leader {
            let election = rng.range(s.ttl() / 10, s.ttl() / 4);
            s.faults
                .push((t + election, member(m, MemberState::NoLeader)));
        }
        s.faults.push((t + cut, member(m, MemberState::Up)));
        m = (m + 1) % MEMBERS;
        t += cut + rng.range(5 * MS, 60 * MS);
    }
    s
}
