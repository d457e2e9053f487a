//! proptest strategies over Lucky's inputs (feature `proptest`), for your own invariant suites
//! over any of the machines: valid configurations, the replies a server might send (well-formed
//! ones weighted up, and errors, unknown outcomes, transport failures, garbage), time steps
//! (also backwards) and the user's and the network's [`Action`]s.
//!
//! | protocol | machine | configuration | replies |
//! |---|---|---|---|
//! | RedLock | [`RedLock`](crate::redlock::RedLock) | [`redlock_config`] | [`redis_reply`] |
//! | etcd | [`EtcdLock`](crate::etcd::EtcdLock) | [`etcd_config`] | [`etcd_reply`] |
//! | lease record (in-memory, PostgreSQL, MySQL) | [`LeaseLock`](crate::lease::LeaseLock) | [`lease_config`] | [`lease_reply`] (then [`lease_reply_for`]) |
//! | session lock (PostgreSQL advisory, MySQL `GET_LOCK`, `flock`) | [`SessionLock`](crate::session::SessionLock) | [`session_config`] | [`session_reply`] |
//! | ZooKeeper (Curator's and kazoo's lock recipe) | [`ZkLock`](crate::zookeeper::ZkLock) | [`zookeeper_config`] | [`zookeeper_reply`] (then [`zookeeper_reply_for`]) |
//!
//! Shared: [`lease_settings`], [`wait`], [`retry`], [`token`], [`time_step`], [`time_back`],
//! and [`action`], which mixes a protocol's replies with user requests and time into the
//! [`Action`]s a harness applies one by one. Each protocol's `Command` implements [`Grant`]:
//! the answer of a server that grants it, for [`Action::Grant`].
//!
//! Replies are drawn without knowing which command they will answer: a harness hands each to
//! some command the machine sent ([`Action::Reply`]), so a reply may be the right one, one of
//! the wrong shape for that command, a second answer to an op already answered, or the late
//! answer to an op the machine gave up on. Every one of them is legal input: a machine must
//! judge it, never panic on it (see the drive contract in the crate documentation). Since a
//! random reply seldom fits the command it answers, [`Action::Grant`] answers as a granting
//! server would, so that locks do get held and extended and the paths after that get tested.
//!
//! A sketch of a harness (`lucky-core/examples/user_invariant.rs` is a whole one):
//!
//! ```
//! use lucky_core::lease::{Command, LeaseLock};
//! use lucky_core::strategies::{
//!     action, lease_config, lease_reply, lease_reply_for, Action, Grant,
//! };
//! use lucky_core::{Instant, LockMachine, Output, State, Transmit};
//! use proptest::prelude::*;
//! use proptest::test_runner::TestRunner;
//!
//! let cases = (lease_config(), proptest::collection::vec(action(lease_reply()), 1..100));
//! TestRunner::default()
//!     .run(&cases, |(cfg, actions)| {
//!         let mut m = LeaseLock::new(&cfg, b"job", &[7; 16], 1).expect("valid name and token");
//!         let mut now = Instant::from_nanos(1_000_000_000);
//!         let mut sent: Vec<Transmit<Command>> = Vec::new();
//!         for a in actions {
//!             // `pick` counts back from the latest command sent.
//!             let picked = |pick: usize| sent.iter().rev().nth(pick % sent.len().max(1)).cloned();
//!             match a {
//!                 Action::Acquire => drop(m.acquire(now)),
//!                 Action::Reply { pick, reply } => {
//!                     if let Some(t) = picked(pick) {
//!                         let reply = lease_reply_for(reply, m.owner());
//!                         m.handle_reply(now, t.node, t.op, reply);
//!                     }
//!                 }
//!                 Action::Grant { pick, n } => {
//!                     if let Some(t) = picked(pick) {
//!                         let reply = lease_reply_for(t.command.grant(n), m.owner());
//!                         m.handle_reply(now, t.node, t.op, reply);
//!                     }
//!                 }
//!                 Action::Tick(d) => {
//!                     now = now + d;
//!                     m.handle_timeout(now);
//!                 }
//!                 _ => {} // the other actions, as their documentation says
//!             }
//!             while let Some(out) = m.poll_output() {
//!                 if let Output::Transmit(t) = out {
//!                     sent.push(t);
//!                 }
//!             }
//!             if let State::Held { valid_until } = m.state() {
//!                 prop_assert!(now < valid_until);
//!             }
//!         }
//!         Ok(())
//!     })
//!     .expect("the machine keeps its deadline");
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;
use proptest::prelude::*;

use crate::etcd::EtcdConfig;
use crate::lease::LeaseConfig;
use crate::redlock::{RedLockConfig, Reply};
use crate::session::SessionConfig;
use crate::settings::{Lease, Retry, Wait};
use crate::time::{Duration, Instant};
use crate::zookeeper::{Ensemble, Session, ZkConfig};

// ---------------------------------------------------------------------------------------------
// Shared settings
// ---------------------------------------------------------------------------------------------

/// Every wait mode: one attempt, a bounded wait of up to 5 s, forever.
pub fn wait() -> impl Strategy<Value = Wait> {
    prop_oneof![
        Just(Wait::None),
        (0u64..=5_000).prop_map(|ms| Wait::For(Duration::from_millis(ms))),
        Just(Wait::Forever)
    ]
}

/// Retry spacing: delay and jitter 0 to 100 ms each (both zero is refused by the builders
/// when retries are possible, so configurations built from it are filtered).
pub fn retry() -> impl Strategy<Value = Retry> {
    (0u64..=100, 0u64..=100).prop_map(|(delay, jitter)| Retry {
        delay: Duration::from_millis(delay),
        jitter: Duration::from_millis(jitter),
    })
}

/// The settings every lease protocol shares, not yet checked: ttl 10 ms to 60 s (whole
/// milliseconds, as RedLock requires), drift 0 to 5 % plus a floor of 0 to 3 ms, the
/// protocol's default request timeout or a third to a fortieth of the ttl (always shorter
/// than the validity a passing drift check leaves), every wait mode, retry 0 to 100 ms.
/// Each config strategy below checks them through its builder and keeps the valid ones.
pub fn lease_settings() -> impl Strategy<Value = Lease> {
    (
        10u64..=60_000,
        0u32..=50_000,
        0u64..=3,
        proptest::option::weighted(0.25, 3u32..=40),
        wait(),
        retry(),
    )
        .prop_map(|(ttl_ms, ppm, floor_ms, op_div, wait, retry)| {
            let ttl = Duration::from_millis(ttl_ms);
            Lease {
                ttl,
                drift_ppm: ppm,
                drift_floor: Duration::from_millis(floor_ms),
                op_timeout: op_div.map(|d| ttl / d),
                wait,
                retry,
            }
        })
}

/// Automatic renewal, when on: `every` the default (ttl / 3) or a third to a tenth of `ttl`,
/// and a cap of 0 to 5 renewals or none.
fn auto_extend(ttl: Duration) -> impl Strategy<Value = (Option<Duration>, Option<u32>)> {
    (
        proptest::option::of(3u32..=10),
        proptest::option::of(0u32..=5),
    )
        .prop_map(move |(div, cap)| (div.map(|d| ttl / d), cap))
}

/// Lock tokens: 16 to 64 random bytes, the range the machines that take one accept
/// ([`RedLock::new`](crate::redlock::RedLock::new), [`LeaseLock::new`](crate::lease::LeaseLock::new)).
pub fn token() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 16..=64)
}

// ---------------------------------------------------------------------------------------------
// RedLock
// ---------------------------------------------------------------------------------------------

/// Valid RedLock configurations: 1 to 7 nodes, ttl 10 ms to 60 s, drift 0 to 5 %, every wait
/// mode, with and without auto-extension, with and without fencing.
pub fn redlock_config() -> impl Strategy<Value = RedLockConfig> {
    (
        1usize..=7,
        10u64..=60_000,
        0u32..=50_000,
        0u64..=3,
        wait(),
        proptest::option::of(1u32..=5),
        proptest::option::of(proptest::option::of(0u32..=4)),
        retry(),
        any::<bool>(),
    )
        .prop_filter_map(
            "drift or timeouts leave no validity",
            |(n, ttl_ms, ppm, floor_ms, wait, max_attempts, auto, retry, fencing)| {
                let mut b = RedLockConfig::builder()
                    .node_count(n)
                    .ttl(Duration::from_millis(ttl_ms))
                    .drift(ppm, Duration::from_millis(floor_ms))
                    .wait(wait)
                    .fencing(fencing)
                    .retry(retry);
                if let Some(m) = max_attempts {
                    b = b.max_attempts(m);
                }
                if let Some(cap) = auto {
                    b = b.auto_extend(None, cap);
                }
                b.build().ok()
            },
        )
}

/// Replies a Redis node might send, weighted towards the well-formed ones, including error
/// replies, wrong types, out-of-range integers, garbage strings and transport failures.
pub fn redis_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        4 => Just(Reply::Status("OK".into())),
        3 => Just(Reply::Nil),
        3 => Just(Reply::Int(1)),
        3 => Just(Reply::Int(0)),
        1 => any::<i64>().prop_map(Reply::Int),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| Reply::Status(v.into())),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| Reply::Bulk(v.into())),
        1 => Just(Reply::Error("ERR something went wrong".into())),
        1 => Just(Reply::Error("READONLY You can't write against a read only replica.".into())),
        1 => any::<String>().prop_map(Reply::Other),
        1 => Just(Reply::Unavailable("connection reset by peer".into())),
        2 => (0i64..1_000).prop_map(Reply::Int),
        1 => Just(Reply::Int(-1)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// Time steps forward: mostly sub-millisecond to tens of milliseconds (round trips), sometimes
/// zero (replies read together), sometimes seconds (long enough to cross a ttl, a renewal
/// interval or a whole wait).
pub fn time_step() -> impl Strategy<Value = Duration> {
    prop_oneof![
        1 => Just(Duration::ZERO),
        6 => (0u64..20_000_000).prop_map(Duration::from_nanos),
        2 => (0u64..2_000).prop_map(Duration::from_millis),
        1 => (0u64..120).prop_map(Duration::from_secs),
    ]
}

/// Steps of the driver's clock backwards (never zero): mostly a nanosecond to 50 ms (an NTP
/// slew, a virtualised clock), sometimes seconds. A machine must report each one
/// ([`Event::TimeWentBack`](crate::Event::TimeWentBack)) and move its deadlines back by it.
/// A harness stops at its own epoch when a step is longer than the time since.
pub fn time_back() -> impl Strategy<Value = Duration> {
    prop_oneof![
        2 => (1u64..1_000_000).prop_map(Duration::from_nanos),
        6 => (1u64..50).prop_map(Duration::from_millis),
        1 => (1u64..30).prop_map(Duration::from_secs),
    ]
}

// ---------------------------------------------------------------------------------------------
// Actions: what happens next to a machine
// ---------------------------------------------------------------------------------------------

/// One thing that happens to a machine under test: a user request, a reply from the network
/// (well-formed or not, on time, late, duplicated or misrouted), or time passing. `R` is the
/// protocol's reply type. A harness keeps every command the machine sent, in order, and its
/// own clock `now`; it applies the action, then drains the outputs and checks its invariants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<R> {
    /// [`acquire`](crate::LockMachine::acquire) at `now` (a usage error when busy is fine).
    Acquire,
    /// [`extend`](crate::LockMachine::extend) at `now`.
    Extend,
    /// [`release`](crate::LockMachine::release) at `now`: releases, or cancels an
    /// acquisition in flight.
    Release,
    /// [`wake`](crate::LockMachine::wake) at `now`: a release hint, which must never affect
    /// safety.
    Wake,
    /// Answer a command the machine sent with `reply`, at that command's node and op, at
    /// `now`: the latest command sent when `pick` is 0, the one before it when 1, and so on
    /// (modulo the number sent). Mostly one of the last few (so requests in flight get
    /// answered), sometimes any: a first answer, a duplicate of one already given, or a stale
    /// one for an op the machine no longer waits for; and `reply` may be of the wrong shape
    /// for the command. Nothing when nothing was sent yet.
    Reply {
        /// Which command, counted back from the latest (modulo the number sent).
        pick: usize,
        /// The answer.
        reply: R,
    },
    /// Answer the command picked as in [`Action::Reply`] the way a server that grants every
    /// request would ([`Grant::grant`] of the command, with `n`): what gets a lock acquired,
    /// extended and released, since a random reply seldom has the right shape for the command
    /// it answers. Picked like a reply, it may still be a duplicate or a stale answer.
    Grant {
        /// Which command, counted back from the latest (modulo the number sent).
        pick: usize,
        /// The number the server puts in its answer (see [`Grant::grant`]).
        n: u64,
    },
    /// A reply meant for another machine: `op` on `node` (possibly out of range). The harness
    /// skips it when the machine did issue `op`; otherwise
    /// [`handle_reply`](crate::LockMachine::handle_reply) must return `false` and change
    /// nothing.
    Misrouted {
        /// An op id this machine (most likely) never issued.
        op: u64,
        /// A node, 0 to 7.
        node: u16,
        /// The answer.
        reply: R,
    },
    /// `now` moves forward by this much; then
    /// [`handle_timeout`](crate::LockMachine::handle_timeout). A step past a deadline is a
    /// timer that fired late.
    Tick(Duration),
    /// `now` moves to the machine's [`poll_timeout`](crate::LockMachine::poll_timeout) (if
    /// any and later), then `handle_timeout`: a timer that fired on time.
    Timeout,
    /// `now` moves back by this much (to no earlier than the harness's epoch), then
    /// `handle_timeout`: the driver's clock stepped back.
    Backwards(Duration),
    /// The process stalls (a long GC pause, a suspended VM) through its renewals: `now` jumps
    /// to this much after the held lock's deadline (the `valid_until` of
    /// [`State::Held`](crate::State::Held); forward by this much when not held), then
    /// `handle_timeout`. What the user's side does at that instant, before the machine has
    /// heard of the time, is where a wrong deadline shows.
    Stall(Duration),
}

/// Which command an answer goes to, counted back from the latest: mostly the latest two (the
/// requests in flight), often one of the eight latest, sometimes any.
fn pick() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..2, 2 => 2usize..8, 1 => any::<usize>()]
}

/// Actions mixing `reply` (one of the reply strategies here, or your own) with user requests
/// and time: mostly answers (random replies and grants, so attempts get answered and locks get
/// held), then time passing and timers firing, then user requests, and now and then a step
/// back, a stall past the deadline or a misrouted reply.
pub fn action<R, S>(reply: S) -> impl Strategy<Value = Action<R>>
where
    R: Clone + core::fmt::Debug + 'static,
    S: Strategy<Value = R> + 'static,
{
    let reply = reply.boxed();
    prop_oneof![
        2 => Just(Action::Acquire),
        1 => Just(Action::Extend),
        1 => Just(Action::Release),
        1 => Just(Action::Wake),
        6 => (pick(), reply.clone()).prop_map(|(pick, reply)| Action::Reply { pick, reply }),
        4 => (pick(), 1u64..=60).prop_map(|(pick, n)| Action::Grant { pick, n }),
        1 => (any::<u64>(), 0u16..8, reply)
            .prop_map(|(op, node, reply)| Action::Misrouted { op, node, reply }),
        2 => time_step().prop_map(Action::Tick),
        2 => Just(Action::Timeout),
        1 => time_back().prop_map(Action::Backwards),
        1 => past_deadline().prop_map(Action::Stall),
    ]
}

/// How far past a deadline a stalled process wakes: exactly at it, within a millisecond, or
/// up to 50 ms.
fn past_deadline() -> impl Strategy<Value = Duration> {
    prop_oneof![
        2 => Just(Duration::ZERO),
        1 => (1u64..1_000_000).prop_map(Duration::from_nanos),
        1 => (1u64..50).prop_map(Duration::from_millis),
    ]
}

/// The answer of a server that grants every request: implemented by each protocol's
/// `Command`, for [`Action::Grant`]. `n` (1 to 60 from [`action`]) is the number the server
/// puts where its answer carries one; each implementation says where.
pub trait Grant {
    /// The protocol's reply.
    type Reply;
    /// The granting answer to this command.
    fn grant(&self, n: u64) -> Self::Reply;
}

/// RedLock: `+OK` to a `SET NX`, the node's fence counter `n` to a fenced acquire, 1 (done,
/// ours) to the fence, extend and release scripts.
impl Grant for crate::redlock::Command {
    type Reply = Reply;
    fn grant(&self, n: u64) -> Reply {
        use crate::redlock::Command as C;
        match self {
            C::Acquire { .. } => Reply::Status("OK".into()),
            C::AcquireFenced { .. } => Reply::Int(i64::try_from(n).unwrap_or(i64::MAX)),
            C::Fence { .. } | C::Extend { .. } | C::Release { .. } => Reply::Int(1),
        }
    }
}

/// etcd: a lease with id `n` for the ttl asked; a keepalive renewed for `n` seconds; a take
/// that created our key at revision `n` and finds it first (we own the lock); a queue read
/// that shows our key (at the revision the machine asked below) with no predecessor; a watch
/// that saw its key deleted; a delete or revoke done.
impl Grant for crate::etcd::Command {
    type Reply = crate::etcd::Reply;
    fn grant(&self, n: u64) -> crate::etcd::Reply {
        use crate::etcd::{Command as C, Reply as R};
        let n_i64 = i64::try_from(n).unwrap_or(i64::MAX);
        match self {
            C::LeaseGrant { ttl_secs } => R::Lease {
                id: n_i64,
                ttl: Duration::from_secs(u64::try_from(*ttl_secs).unwrap_or(0)),
            },
            C::KeepAlive { .. } => R::KeepAlive {
                ttl: Duration::from_secs(n),
            },
            C::Take { .. } => R::Taken {
                create_revision: n_i64,
                owner_revision: n_i64,
                revision: n_i64,
            },
            C::Queue { below, .. } => R::Queue {
                mine: Some(*below),
                predecessor: None,
                revision: *below,
            },
            C::WaitDelete { .. } => R::Deleted,
            C::Delete { .. } | C::Revoke { .. } | C::Abandon { .. } => R::Done,
        }
    }
}

/// Lease record: a take granted with fence `n`; renewed; released; a read that shows the
/// record ours ([`LEASE_OURS`], so pass it through [`lease_reply_for`]) with fence `n` and
/// `n` seconds left.
impl Grant for crate::lease::Command {
    type Reply = crate::lease::Reply;
    fn grant(&self, n: u64) -> crate::lease::Reply {
        use crate::lease::{Command as C, Reply as R};
        match self {
            C::Take { .. } => R::Granted { fence: n },
            C::Renew { .. } => R::Renewed,
            C::Release { .. } => R::Released,
            C::Inspect { .. } => R::State {
                owner: Some(Bytes::from_static(LEASE_OURS)),
                fence: n,
                left: Duration::from_secs(n),
            },
        }
    }
}

/// The server session every granted session-lock answer comes from.
pub const GRANT_SERVER: u64 = 1;

/// Session lock: session `n` opened, in server session [`GRANT_SERVER`]; locked there with
/// fence `n`; a probe that finds it held there; unlocked (it was held); closed.
impl Grant for crate::session::Command {
    type Reply = crate::session::Reply;
    fn grant(&self, n: u64) -> crate::session::Reply {
        use crate::session::{Command as C, Reply as R};
        match self {
            C::Open { .. } => R::Opened {
                session: n,
                server: GRANT_SERVER,
            },
            C::Lock { .. } => R::Locked {
                server: GRANT_SERVER,
                fence: n,
            },
            C::Probe { .. } => R::Probed {
                held: true,
                server: GRANT_SERVER,
            },
            C::Unlock { .. } => R::Unlocked { held: true },
            C::Close { .. } => R::Closed,
        }
    }
}

/// The ZooKeeper session every granted answer runs in (and owns every node a grant creates).
pub const ZK_SESSION: i64 = 1;

/// ZooKeeper: a create that made `<dir>/<prefix><n>` (sequence `n`, `%010d`) with creation
/// zxid `n`; a listing that shows our node alone ([`ZK_OURS`]: pass it through
/// [`zookeeper_reply_for`]); a read of a node that finds it owned by [`ZK_SESSION`], its
/// czxid its sequence number (as the granted create made it; `n` when the name has none); a
/// watch that saw its node deleted; a delete done. Every answer runs in session
/// [`ZK_SESSION`] of `n` × 100 ms, proven alive for all of it from the answer's arrival (a
/// length [`zookeeper_reply_for`] turns into an instant).
impl Grant for crate::zookeeper::Command {
    type Reply = crate::zookeeper::Reply;
    fn grant(&self, n: u64) -> crate::zookeeper::Reply {
        use crate::zookeeper::{Command as C, Reply as R};
        let n_i64 = i64::try_from(n).unwrap_or(i64::MAX);
        let session = zk_grant_session(n);
        match self {
            C::Create { dir, prefix } => {
                let mut path = Vec::with_capacity(dir.len() + 1 + prefix.len() + 10);
                path.extend_from_slice(dir);
                path.push(b'/');
                path.extend_from_slice(prefix);
                path.extend_from_slice(alloc::format!("{n:010}").as_bytes());
                R::Created {
                    path: Bytes::from(path),
                    czxid: n_i64,
                    session,
                }
            }
            C::Children { .. } => R::Children {
                names: alloc::vec![Bytes::from_static(ZK_OURS)],
                session,
            },
            C::Stat { path } => {
                let name = path.rsplit(|b| *b == b'/').next().unwrap_or(&path[..]);
                let czxid = crate::zookeeper::sequence(name)
                    .map(i64::from)
                    .filter(|c| *c > 0)
                    .unwrap_or(n_i64);
                R::Stat {
                    czxid,
                    ephemeral_owner: ZK_SESSION,
                    session,
                }
            }
            C::WaitDelete { .. } => R::Deleted,
            C::Delete { .. } => R::Done,
        }
    }
}

/// The session of a granted ZooKeeper answer: [`ZK_SESSION`], `n` × 100 ms, proven for all of
/// it (as a length from [`Instant::ZERO`], see [`zookeeper_reply_for`]).
fn zk_grant_session(n: u64) -> Session {
    let timeout = Duration::from_millis(n.saturating_mul(100));
    Session {
        id: ZK_SESSION,
        timeout,
        until: Some(Instant::ZERO + timeout),
    }
}

// ---------------------------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------------------------

/// Valid etcd lock configurations: ttl 10 ms to 60 s (rounded up to whole seconds by the
/// builder, as etcd grants them), drift 0 to 5 %, every wait mode, the default request
/// timeout or a shorter one, the default keepalive interval (ttl / 3) or a third to a tenth
/// of the ttl, the default watch re-check (ttl) or 10 ms to 5 s.
pub fn etcd_config() -> impl Strategy<Value = EtcdConfig> {
    (
        lease_settings(),
        proptest::option::of(3u32..=10),
        proptest::option::weighted(0.25, 10u64..=5_000),
    )
        .prop_filter_map(
            "drift or timeouts leave no validity",
            |(lease, keepalive_div, recheck_ms)| {
                // The builder rounds the ttl up to whole seconds; intervals are taken from
                // the ttl it will use, so they stay inside its validity.
                let secs = lease.ttl.as_secs() + u64::from(lease.ttl.subsec_nanos() > 0);
                let ttl = Duration::from_secs(secs);
                let mut b = EtcdConfig::builder().lease(lease);
                if let Some(div) = keepalive_div {
                    b = b.keepalive_every(ttl / div);
                }
                if let Some(ms) = recheck_ms {
                    b = b.recheck(Duration::from_millis(ms));
                }
                b.build().ok()
            },
        )
}

/// Revisions: mostly small (1 to 7), so that a reply's revisions often match the machine's
/// own key (owner = ours, `mine` = our key) and locks get held; sometimes any `i64`
/// (zero, negative, huge: garbage).
fn revision() -> impl Strategy<Value = i64> {
    prop_oneof![6 => 1i64..8, 1 => any::<i64>()]
}

/// Replies an etcd cluster might send to any request, well-formed or not: leases granted for
/// zero to 120 s (or absurd ttls), keepalives (zero: the lease is gone), taking transactions
/// that show us the owner (create = owner revision) or queued behind another, queue reads
/// with and without our key and a predecessor, watch answers, lease-not-found, error replies
/// with any text, and transport failures.
pub fn etcd_reply() -> impl Strategy<Value = crate::etcd::Reply> {
    use crate::etcd::Reply as R;
    let ttl = || {
        prop_oneof![
            8 => (0u64..120_000).prop_map(Duration::from_millis),
            1 => Just(Duration::ZERO),
            1 => any::<u64>().prop_map(Duration::from_secs),
        ]
    };
    let key = proptest::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from);
    prop_oneof![
        3 => (any::<i64>(), ttl()).prop_map(|(id, ttl)| R::Lease { id, ttl }),
        3 => ttl().prop_map(|ttl| R::KeepAlive { ttl }),
        2 => (revision(), revision()).prop_map(|(c, r)| R::Taken {
            create_revision: c,
            owner_revision: c,
            revision: r
        }),
        2 => (revision(), revision(), revision()).prop_map(|(c, o, r)| R::Taken {
            create_revision: c,
            owner_revision: o,
            revision: r
        }),
        4 => (proptest::option::weighted(0.8, revision()), proptest::option::of(key), revision())
            .prop_map(|(mine, predecessor, revision)| R::Queue { mine, predecessor, revision }),
        2 => Just(R::Deleted),
        1 => Just(R::Compacted),
        2 => Just(R::Done),
        1 => Just(R::LeaseNotFound),
        1 => any::<String>().prop_map(R::Error),
        1 => Just(R::Unavailable("connection reset by peer".into())),
    ]
}

// ---------------------------------------------------------------------------------------------
// Lease record (in-memory table, PostgreSQL, MySQL)
// ---------------------------------------------------------------------------------------------

/// Valid lease-record configurations: the shared [`lease_settings`], with automatic renewal
/// off, or on every ttl / 3 to ttl / 10 with or without a cap.
pub fn lease_config() -> impl Strategy<Value = LeaseConfig> {
    lease_settings()
        .prop_flat_map(|lease| (Just(lease), proptest::option::of(auto_extend(lease.ttl))))
        .prop_filter_map("drift or timeouts leave no validity", |(lease, auto)| {
            let mut b = LeaseConfig::builder().lease(lease);
            if let Some((every, cap)) = auto {
                b = b.auto_extend(every, cap);
            }
            b.build().ok()
        })
}

/// The owner [`lease_reply`] puts in a `State` reply that says the record is the machine's
/// own. The machine's owner changes with every acquisition, so a strategy cannot know it:
/// [`lease_reply_for`] puts the machine's current owner in its place.
pub const LEASE_OURS: &[u8] = b"\xfflucky-strategies:ours";

/// `reply` as the machine whose owner is currently `owner`
/// ([`LeaseLock::owner`](crate::lease::LeaseLock::owner)) would read it: a `State` whose
/// owner is [`LEASE_OURS`] names `owner` instead. Other replies are returned as they are.
pub fn lease_reply_for(reply: crate::lease::Reply, owner: &[u8]) -> crate::lease::Reply {
    use crate::lease::Reply as R;
    match reply {
        R::State {
            owner: Some(o),
            fence,
            left,
        } if &o[..] == LEASE_OURS => R::State {
            owner: Some(Bytes::copy_from_slice(owner)),
            fence,
            left,
        },
        other => other,
    }
}

/// Time left on the store's clock: mostly up to 5 s, sometimes zero, sometimes absurd
/// (up to a year, or the longest `Duration`).
fn left() -> impl Strategy<Value = Duration> {
    prop_oneof![
        8 => (0u64..5_000).prop_map(Duration::from_millis),
        1 => Just(Duration::ZERO),
        1 => (0u64..=365 * 24 * 3600).prop_map(Duration::from_secs),
        1 => Just(Duration::MAX),
    ]
}

/// Replies a lease-record store might send to any command: grants (fences mostly small,
/// sometimes any `u64`), held by another, renewed, not the owner, released, record reads
/// owned by the machine ([`LEASE_OURS`]: pass the reply through [`lease_reply_for`]), by a
/// stranger or by no one, unknown outcomes (a write that may or may not have been applied),
/// error replies with any text, and transport failures.
pub fn lease_reply() -> impl Strategy<Value = crate::lease::Reply> {
    use crate::lease::Reply as R;
    let fence = || prop_oneof![8 => 0u64..10, 1 => any::<u64>()];
    let owner = prop_oneof![
        3 => Just(Some(Bytes::from_static(LEASE_OURS))),
        1 => Just(Some(Bytes::from_static(b"someone else"))),
        1 => Just(None),
    ];
    prop_oneof![
        4 => fence().prop_map(|fence| R::Granted { fence }),
        2 => left().prop_map(|left| R::Held { left }),
        3 => Just(R::Renewed),
        1 => Just(R::NotOwner),
        1 => Just(R::Released),
        3 => (owner, fence(), left()).prop_map(|(owner, fence, left)| R::State { owner, fence, left }),
        2 => Just(R::Unknown("connection reset after the write was sent".into())),
        1 => Just(R::Unknown("no answer within the request timeout".into())),
        1 => any::<String>().prop_map(R::Error),
        1 => Just(R::Unavailable("connection refused".into())),
    ]
}

// ---------------------------------------------------------------------------------------------
// Session locks (PostgreSQL advisory locks, MySQL GET_LOCK, flock)
// ---------------------------------------------------------------------------------------------

/// Valid session-lock configurations: the shared [`lease_settings`] (the ttl bounds how long a
/// lock is trusted without a fresh probe), with automatic probing off, or on every ttl / 3 to
/// ttl / 10 with or without a cap.
pub fn session_config() -> impl Strategy<Value = SessionConfig> {
    lease_settings()
        .prop_flat_map(|lease| (Just(lease), proptest::option::of(auto_extend(lease.ttl))))
        .prop_filter_map("drift or timeouts leave no validity", |(lease, auto)| {
            let mut b = SessionConfig::builder().lease(lease);
            if let Some((every, cap)) = auto {
                b = b.auto_extend(every, cap);
            }
            b.build().ok()
        })
}

/// Replies a session-lock server might send to any command. Server sessions are mostly 1 or
/// 2, so an answer often comes from the session the machine opened and often from another one
/// (a reconnect the driver hid; the machine must not trust it); sometimes any `u64`. Also:
/// busy, probes held or not, unlocks, closes, unknown outcomes (the session broke after the
/// command was sent), error replies with any text, and transport failures.
pub fn session_reply() -> impl Strategy<Value = crate::session::Reply> {
    use crate::session::Reply as R;
    let server = || prop_oneof![8 => 1u64..3, 1 => any::<u64>()];
    let fence = prop_oneof![8 => 0u64..10, 1 => any::<u64>()];
    let session = prop_oneof![8 => 0u64..4, 1 => any::<u64>()];
    prop_oneof![
        3 => (session, server()).prop_map(|(session, server)| R::Opened { session, server }),
        4 => (server(), fence).prop_map(|(server, fence)| R::Locked { server, fence }),
        2 => Just(R::Busy),
        3 => (any::<bool>(), server()).prop_map(|(held, server)| R::Probed { held, server }),
        1 => any::<bool>().prop_map(|held| R::Unlocked { held }),
        1 => Just(R::Closed),
        2 => Just(R::Unknown("connection reset after the command was sent".into())),
        1 => Just(R::Unknown("no answer within the request timeout".into())),
        1 => any::<String>().prop_map(R::Error),
        1 => Just(R::Unavailable("connection refused".into())),
    ]
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper
// ---------------------------------------------------------------------------------------------

/// Valid ZooKeeper lock configurations: the shared [`lease_settings`] (the ttl is the session
/// timeout asked for), every form of root (the default `/lucky`, `/`, nested, a trailing
/// `/`, non-ASCII), the ensemble's timing (the default: tickTime 2 s, syncLimit 5, which only
/// sessions above its ~16 s of margins pass; standalone; or a tick of a twelfth to an eightieth
/// of the session timeout, syncLimit 1 to 10, up to a fiftieth of it between servers), the
/// default session proof interval (timeout / 10) or a third to a twentieth of the timeout,
/// the default watch re-check (the timeout) or 10 ms to 5 s.
pub fn zookeeper_config() -> impl Strategy<Value = ZkConfig> {
    let root = prop_oneof![
        3 => Just(None),
        1 => Just(Some("/")),
        1 => Just(Some("/locks")),
        1 => Just(Some("/locks/")),
        1 => Just(Some("/a/b/c")),
        1 => Just(Some("/verrous-\u{e9}t\u{e9}")),
    ];
    lease_settings()
        .prop_flat_map(move |lease| {
            let ttl = lease.ttl;
            let ensemble = prop_oneof![
                1 => Just(None),
                2 => Just(Some(Ensemble::STANDALONE)),
                2 => (12u32..=80, 1u32..=10, proptest::option::of(50u32..=1_000)).prop_map(
                    move |(tick_div, sync_limit, net_div)| {
                        let net = net_div.map_or(Duration::ZERO, |d| ttl / d);
                        Some(Ensemble::new(ttl / tick_div, sync_limit, net))
                    }
                ),
            ];
            (
                Just(lease),
                root.clone(),
                ensemble,
                proptest::option::of(3u32..=20),
                proptest::option::weighted(0.25, 10u64..=5_000),
            )
        })
        .prop_filter_map(
            "drift, timeouts or the ensemble's margins leave no validity",
            |(lease, root, ensemble, touch_div, recheck_ms)| {
                let ttl = lease.ttl;
                let mut b = ZkConfig::builder().lease(lease);
                if let Some(root) = root {
                    b = b.root(root);
                }
                if let Some(ensemble) = ensemble {
                    b = b.ensemble(ensemble);
                }
                if let Some(div) = touch_div {
                    b = b.touch_every(ttl / div);
                }
                if let Some(ms) = recheck_ms {
                    b = b.recheck(Duration::from_millis(ms));
                }
                b.build().ok()
            },
        )
}

/// The child name [`zookeeper_reply`] puts in a listing for the machine's own node. The
/// machine's node changes with every create, so a strategy cannot know it:
/// [`zookeeper_reply_for`] puts the machine's current node in its place (or drops it when
/// the machine has none).
pub const ZK_OURS: &[u8] = b"\xfflucky-strategies:ours";

/// `reply` as it reaches the machine at `now`, whose node is `ours`
/// ([`ZkLock::node`](crate::zookeeper::ZkLock::node)): a drawn reply cannot know when it
/// arrives, so each [`Session::until`] it carries is a length, counted from [`Instant::ZERO`];
/// it becomes that long after `now` (saturating). A [`ZK_OURS`] child of a listing becomes
/// `ours`, or goes when `ours` is `None`. Other replies are returned as they are.
///
/// A server that grants everything gets a lock held:
///
/// ```
/// use lucky_core::strategies::{zookeeper_reply_for, Grant};
/// use lucky_core::zookeeper::{Ensemble, ZkConfig, ZkLock};
/// use lucky_core::{Duration, Instant, LockMachine, Output, State};
///
/// let cfg = ZkConfig::builder().ensemble(Ensemble::STANDALONE).build()?;
/// let mut m = ZkLock::new(&cfg, b"job", &[7; 16], 1)?;
/// let now = Instant::from_nanos(1_000_000_000);
/// m.acquire(now)?;
/// // The create, then the listing that shows our node alone.
/// while let Some(Output::Transmit(t)) = m.poll_output() {
///     let reply = zookeeper_reply_for(t.command.grant(30), now, m.node());
///     m.handle_reply(now, t.node, t.op, reply);
/// }
/// // Proven for 30 × 100 ms from the listing's arrival.
/// let valid_until = now + Duration::from_secs(3);
/// assert_eq!(m.state(), State::Held { valid_until });
/// # Ok::<(), lucky_core::UsageError>(())
/// ```
pub fn zookeeper_reply_for(
    reply: crate::zookeeper::Reply,
    now: Instant,
    ours: Option<&[u8]>,
) -> crate::zookeeper::Reply {
    use crate::zookeeper::Reply as R;
    let at = |s: Session| Session {
        until: s.until.map(|u| now + (u - Instant::ZERO)),
        ..s
    };
    match reply {
        R::Created {
            path,
            czxid,
            session,
        } => R::Created {
            path,
            czxid,
            session: at(session),
        },
        R::Children { names, session } => R::Children {
            names: names
                .into_iter()
                .filter_map(|n| match &n[..] {
                    ZK_OURS => ours.map(Bytes::copy_from_slice),
                    _ => Some(n),
                })
                .collect(),
            session: at(session),
        },
        R::Stat {
            czxid,
            ephemeral_owner,
            session,
        } => R::Stat {
            czxid,
            ephemeral_owner,
            session: at(session),
        },
        other => other,
    }
}

/// 16 bytes printed as a UUID, as Curator's protected prefix `_c_<uuid>-` shows them.
fn zk_uuid(b: [u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&alloc::format!("{x:02x}"));
    }
    s
}

/// Sequence numbers: mostly small (0 to 63, so other contenders' nodes fall before and after
/// a granted node of ours, numbered 1 to 60), sometimes near the 32-bit wrap or any `i32`
/// (negative ones print as ZooKeeper prints them, `-000000005`).
fn zk_seq() -> impl Strategy<Value = i32> {
    prop_oneof![
        8 => 0i32..64,
        1 => (i32::MAX - 4)..=i32::MAX,
        1 => i32::MIN..(i32::MIN + 4),
        1 => any::<i32>(),
    ]
}

/// Children no contender makes: no sequence, a sign or letter in it, 11 digits, beyond
/// `i32`, a trailing `-` or `/`, another recipe's node (kazoo's read lock, a group member),
/// nothing.
const ZK_MALFORMED: &[&[u8]] = &[
    b"lock-",
    b"_c_x-lock-",
    b"__lock__",
    b"lock-12345678901",
    b"lock-9999999999",
    b"lock-00000000x1",
    b"lock-+000000001",
    b"lock--",
    b"lock-0000000001-",
    b"_c_x-lock-0000000001/",
    b"__rlock__0000000001",
    b"member-0000000001",
    b"",
];

/// Names of other contenders' nodes and other children of a lock directory: Curator's
/// protected nodes (`_c_<uuid>-lock-<seq>`), kazoo's (`<hex>__lock__<seq>`), unprotected
/// ones (`lock-<seq>`), malformed names (no sequence, a bad or too long suffix, another
/// recipe's node) and any bytes.
fn zk_other_child() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => (any::<[u8; 16]>(), zk_seq()).prop_map(|(id, seq)| {
            Bytes::from(alloc::format!("_c_{}-lock-{seq:010}", zk_uuid(id)))
        }),
        3 => (any::<u128>(), zk_seq()).prop_map(|(id, seq)| {
            Bytes::from(alloc::format!("{id:032x}__lock__{seq:010}"))
        }),
        1 => zk_seq().prop_map(|seq| Bytes::from(alloc::format!("lock-{seq:010}"))),
        2 => proptest::sample::select(ZK_MALFORMED).prop_map(Bytes::from_static),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from),
    ]
}

/// Sessions a reply may report: mostly [`ZK_SESSION`] (the one granted answers run in),
/// sometimes another of ours (a new session after an expiry the driver did not report) or
/// any id (zero, negative); timeouts mostly up to 60 s, sometimes zero or absurd; proofs
/// mostly 0 to 5 s long, sometimes none yet, zero, up to a year, or endless (lengths:
/// [`zookeeper_reply_for`] counts them from the arrival).
fn zk_session() -> impl Strategy<Value = Session> {
    (
        prop_oneof![8 => Just(ZK_SESSION), 1 => 2i64..4, 1 => any::<i64>()],
        prop_oneof![
            6 => (1u64..60_000).prop_map(Duration::from_millis),
            1 => Just(Duration::ZERO),
            1 => any::<u64>().prop_map(Duration::from_secs),
        ],
        prop_oneof![
            2 => Just(None),
            6 => (0u64..5_000).prop_map(|ms| Some(Instant::ZERO + Duration::from_millis(ms))),
            1 => Just(Some(Instant::ZERO)),
            1 => (0u64..=365 * 24 * 3600).prop_map(|s| Some(Instant::ZERO + Duration::from_secs(s))),
            1 => Just(Some(Instant::MAX)),
        ],
    )
        .prop_map(|(id, timeout, until)| Session { id, timeout, until })
}

/// Replies a ZooKeeper ensemble (through the driver's session) might send to any request.
/// Listings, weighted up, hold the machine's own node ([`ZK_OURS`]: pass the reply through
/// [`zookeeper_reply_for`]) among other contenders' nodes before and after it and malformed
/// children, or hold only others. Reads find a node with a small czxid (often the one a
/// granted create gave ours) owned by [`ZK_SESSION`], another session or none (a persistent
/// node), or a zxid of zero or below (garbage). Creates answer with a node that is never the
/// machine's own (a strategy cannot know its protected id): another contender's name, a
/// malformed one, a path outside the lock directory or no path at all, with any zxid. Every
/// session-carrying reply may come from another session or with another timeout. Also:
/// watches answered, deletes done, `NONODE`, `SESSIONEXPIRED`, error replies (ZooKeeper's
/// and any text), and unknown outcomes (connection loss, timeouts).
pub fn zookeeper_reply() -> impl Strategy<Value = crate::zookeeper::Reply> {
    use crate::zookeeper::Reply as R;
    let czxid = || prop_oneof![8 => 1i64..64, 1 => Just(0i64), 1 => any::<i64>()];
    let dir = prop_oneof![
        2 => Just("/lucky/orders/nightly/"),
        1 => Just("/lucky/job/"),
        1 => Just("/other/dir/"),
        1 => Just("/"),
        1 => Just(""),
    ];
    let path = (dir, zk_other_child()).prop_map(|(dir, name)| {
        let mut p = Vec::with_capacity(dir.len() + name.len());
        p.extend_from_slice(dir.as_bytes());
        p.extend_from_slice(&name);
        Bytes::from(p)
    });
    let child = prop_oneof![
        2 => Just(Bytes::from_static(ZK_OURS)),
        3 => zk_other_child(),
    ];
    let owner = prop_oneof![
        6 => Just(ZK_SESSION),
        1 => Just(0i64),
        1 => 2i64..4,
        1 => any::<i64>(),
    ];
    prop_oneof![
        3 => (path, czxid(), zk_session())
            .prop_map(|(path, czxid, session)| R::Created { path, czxid, session }),
        3 => (proptest::collection::vec(zk_other_child(), 0..4), zk_session()).prop_map(
            |(mut names, session)| {
                names.push(Bytes::from_static(ZK_OURS));
                R::Children { names, session }
            }
        ),
        2 => (proptest::collection::vec(child, 0..6), zk_session())
            .prop_map(|(names, session)| R::Children { names, session }),
        4 => (czxid(), owner, zk_session()).prop_map(|(czxid, ephemeral_owner, session)| {
            R::Stat { czxid, ephemeral_owner, session }
        }),
        2 => Just(R::Deleted),
        2 => Just(R::Done),
        2 => Just(R::NoNode),
        1 => Just(R::SessionExpired),
        1 => proptest::sample::select(&["BADVERSION", "NOAUTH", "NOTEMPTY", "NODEEXISTS"][..])
            .prop_map(|e| R::Error(e.into())),
        1 => any::<String>().prop_map(R::Error),
        2 => Just(R::Unavailable("connection loss".into())),
        1 => Just(R::Unavailable("no answer within the request timeout".into())),
    ]
}
