//! Scenarios of the SQL stores (PostgreSQL, MySQL/MariaDB) on the lease-record model, named
//! after the field reports they come from: a connection killed by the server or a proxy right
//! after a statement was sent (`pg_terminate_backend`, `KILL`, an idle-timeout in a pooler),
//! and a holder's backend process that stops answering (a stuck backend, `SIGSTOP`, a long
//! checkpoint) while the rest of the server serves others.

use lucky_core::{Duration, Retry};

use crate::net::Cut;
use crate::rng::Rng;
use crate::scenario::Setup;
use crate::world::Fault;

use super::scenarios::base;

const MS: u64 = 1_000_000;

/// Connections killed under holders and contenders: each kill cuts one client's link both
/// ways for a moment, so statements in flight (takes, renewals, releases) end with no answer,
/// some already committed; the client goes on over a new connection. Unknown outcomes are
/// settled by reading the row; nothing is claimed on a guess, nothing stays held.
pub(super) fn killed_connection(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.auto_extend = Some((None, None));
    s.work.clients = 4;
    s.work.hold_ns = Some((MS, 2 * s.ttl()));
    s.op_timeout = Some(Duration::from_millis(30));
    s.retry = Retry {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(10),
    };
    for _ in 0..rng.range(8, 20) {
        let t = s.at(rng);
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        s.cut_for(t, rng.range(MS, 15 * MS), Some(client), &[0], Cut::Both);
    }
    s
}

/// A holder's backend stops answering for longer than the ttl while the server serves the
/// others: its renewals are answered late (after another client took the expired row), and
/// its lock must end at its own deadline; the late answers extend nothing, and the resource
/// rejects the stale holder's fence.
pub(super) fn backend_paused(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.auto_extend = Some((None, None));
    s.work.hold_ns = Some((s.ttl(), 3 * s.ttl()));
    let mut t = s.at(rng);
    while t + 2 * s.ttl() < s.work.quiet_at {
        let client = rng.range(0, s.work.clients as u64 - 1) as usize;
        let extra_ns = rng.range(s.ttl() / 2, 2 * s.ttl());
        s.faults.push((t, Fault::SlowReplies { client, extra_ns }));
        let back = t + rng.range(s.ttl(), 2 * s.ttl());
        s.faults.push((
            back,
            Fault::SlowReplies {
                client,
                extra_ns: 0,
            },
        ));
        t = back + rng.range(50 * MS, 200 * MS);
    }
    s
}

/// A primary fails and an asynchronous replica is promoted without its last commits
/// (streaming or binlog replication behind by a moment): takes and renewals the old primary
/// acknowledged are gone, so a holder's row may be free again or carry an older fence. The
/// lease cannot survive this; the violations are expected and named.
pub(super) fn replica_promoted(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.auto_extend = Some((None, None));
    s.work.clients = 5;
    s.work.think_ns = (0, MS);
    s.work.hold_ns = Some((s.ttl() / 4, s.ttl() / 2));
    s.must_violate = true;
    for _ in 0..rng.range(4, 8) {
        let t = s.at(rng);
        let for_ns = rng.range(s.ttl() / 2, s.ttl());
        s.faults.push((t, Fault::RollBack { node: 0, for_ns }));
    }
    s
}

/// The whole server stopped past the ttl (`kill -STOP` of mysqld, a VM paused, a long
/// stop-the-world flush): statements wait and are executed when it resumes, on a clock that
/// moved on; holders end at their own deadlines meanwhile, and nobody holds a row the server
/// then judges expired by mistake.
pub(super) fn server_stopped(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.auto_extend = Some((None, None));
    s.work.clients = 4;
    s.work.hold_ns = Some((MS, 2 * s.ttl()));
    let mut t = rng.range(0, 100 * MS);
    while t < s.work.quiet_at {
        let for_ns = rng.range(s.ttl() / 2, 3 * s.ttl() / 2);
        s.faults.push((t, Fault::Stall { node: 0, for_ns }));
        t += for_ns + rng.range(50 * MS, 200 * MS);
    }
    s
}
