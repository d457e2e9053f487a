//! lucky-sim: a deterministic simulator that runs Lucky's real lock machines against models of
//! their servers, injects faults, and checks what the lock promises.
//!
//! One u64 seed drives a whole run through the simulator's own PRNG ([`rng::Rng`], with a
//! named stream per subsystem); there is no wall clock, no `thread_rng` and no hash-order
//! iteration, so a seed replays bit for bit on any machine. Events are ordered by
//! (true time, sequence number). Each actor has its own [`clock::Clock`] (drift, jumps);
//! pauses stop a client while true time runs on. The [`oracle`] sees true time and judges.
//!
//! The pieces are public so you can reuse them: [`rng`], [`clock`], [`net`], the
//! [`redis::RedisNode`] model, the [`oracle`], and [`world::World`] generic over any
//! [`Protocol`]. Scenarios ([`scenario`]) are named, seeded setups.
//!
//! # Embedding a Lucky machine in your own simulation
//!
//! A machine only needs `now`, replies and polling, so any event loop can host it. Here one
//! RedLock client runs against three [`redis::RedisNode`] models with a 1 ms network, driven
//! by a minimal event queue of your own:
//!
//! ```
//! use std::collections::BTreeMap;
//! use lucky_core::redlock::{RedLock, RedLockConfig};
//! use lucky_core::{Duration, Event, Instant, LockMachine, Output};
//! use lucky_sim::{redis::RedisNode, Server};
//!
//! let cfg = RedLockConfig::builder().node_count(3).ttl(Duration::from_secs(1)).build()?;
//! let mut lock = RedLock::new(&cfg, b"job", &[1; 16], 7)?;
//! let mut nodes = vec![RedisNode::new(); 3];
//! // Your simulation's queue: (time ns, seq) -> what happens.
//! let mut queue = BTreeMap::new();
//! let mut seq = 0u64;
//! let mut now = 0u64;
//! lock.acquire(Instant::from_nanos(now))?;
//! let mut acquired = None;
//! loop {
//!     while let Some(out) = lock.poll_output() {
//!         match out {
//!             Output::Transmit(t) => {
//!                 // 1 ms to the node, applied there, 1 ms back.
//!                 let reply = nodes[t.node.index()].apply(now + 1_000_000, &t.command);
//!                 seq += 1;
//!                 queue.insert((now + 2_000_000, seq), (t.node, t.op, reply));
//!             }
//!             Output::Event(Event::Acquired { valid_until, .. }) => acquired = Some(valid_until),
//!             Output::Event(_) => {}
//!         }
//!     }
//!     let Some(((at, _), (node, op, reply))) = queue.pop_first() else { break };
//!     now = at;
//!     lock.handle_reply(Instant::from_nanos(now), node, op, reply);
//! }
//! // Held from the first send at 0: 1 s minus 10 000 ppm and 2 ms of drift allowance.
//! assert_eq!(acquired, Some(Instant::from_nanos(988_000_000)));
//! # Ok::<(), lucky_core::UsageError>(())
//! ```

use std::fmt::Debug;

use lucky_core::LockMachine;

pub mod cli;
pub mod clock;
pub mod etcd;
pub mod etcd_cluster;
pub mod etcd_lock;
pub mod net;
pub mod oracle;
pub mod redis;
pub mod redlock;
pub mod rng;
pub mod scenario;
mod scenario_cluster;
mod scenario_etcd;
pub mod sweep;
pub mod world;

/// A model of one server node.
pub trait Server {
    /// The commands it executes.
    type Command: Clone + Debug;
    /// The replies it gives.
    type Reply: Clone + Debug;
    /// Executes `command` at the node's local time `now` (ns).
    fn apply(&mut self, now: u64, command: &Self::Command) -> Self::Reply;
    /// Loses every key (a crash without persistence).
    fn wipe(&mut self);
    /// Keys still live at local time `now`.
    fn live_keys(&self, now: u64) -> usize;
    /// What a client reads from a crashed node (connection refused).
    fn unavailable() -> Self::Reply;

    /// Executes `command`, which the node may answer later (a watch): `None` means it is kept
    /// under `id` and its answer comes out of [`fired`](Self::fired).
    fn submit(&mut self, now: u64, command: &Self::Command, _id: u64) -> Option<Self::Reply> {
        Some(self.apply(now, command))
    }
    /// Moves the answers to kept commands that became due into `out`, as `(id, reply)`.
    fn fired(&mut self, _out: &mut Vec<(u64, Self::Reply)>) {}
    /// The next local time at which the node acts on its own (a lease expiring).
    fn next_timer(&self) -> Option<u64> {
        None
    }
    /// Does everything due at local time `now`.
    fn tick(&mut self, _now: u64) {}
    /// Forgets every kept command (the connections carrying them broke).
    fn forget_kept(&mut self) {}
    /// The node serves again after a crash or leader loss, at local time `now`.
    fn recovered(&mut self, _now: u64) {}
    /// The most watches one deletion answered (the thundering-herd check).
    fn max_woken(&self) -> usize {
        0
    }
    /// One member of a clustered node changes state at local time `now` (the etcd cluster
    /// view); a node without members ignores it.
    fn member(&mut self, _now: u64, _member: usize, _state: etcd_cluster::MemberState) {}
    /// Every member serves again (faults stopped).
    fn heal_members(&mut self, _now: u64) {}
}

/// A lock protocol the simulator can run: its machine and its server model.
pub trait Protocol {
    /// The server model.
    type Server: Server;
    /// The client machine, speaking the server's commands and replies.
    type Machine: LockMachine<
        Command = <Self::Server as Server>::Command,
        Reply = <Self::Server as Server>::Reply,
    >;
    /// Number of server nodes.
    fn nodes(&self) -> usize;
    /// A fresh machine for `client`, with its token and jitter seed drawn from `rng`.
    fn machine(&self, client: usize, rng: &mut rng::Rng) -> Self::Machine;
    /// A fresh node model.
    fn server(&self, node: usize) -> Self::Server;
    /// The lease ttl (ns): the bound used to judge restarts and pauses.
    fn ttl_ns(&self) -> u64;
    /// The relative clock drift rate the protocol is configured to tolerate (ppm).
    fn drift_ppm(&self) -> u32;
    /// Whether the resource skips its fence check (the `fence-unchecked` bug).
    fn fence_unchecked(&self) -> bool {
        false
    }
    /// Whether the protocol's fences keep rising after a node restarts without its data, once
    /// it was away longer than its clock lags the others' (the claim the oracle then holds
    /// it to).
    fn fences_survive_state_loss(&self) -> bool {
        false
    }
    /// Whether the backend keeps serving throughout (a cluster that keeps its quorum): then
    /// an acquisition failing as "unreachable" or a lost hold is a violation.
    fn must_stay_available(&self) -> bool {
        false
    }
}
