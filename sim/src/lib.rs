//! lucky-sim: a deterministic simulator that runs Lucky's real lock machines against models of
//! their servers, injects faults, and checks what the lock promises.
//!
//! You want to know what a lock guarantees under the faults your system sees (pauses, clock
//! jumps, partitions, crashes, lost replies) before production shows you: run `lucky-sim
//! sweep --scenario all --seeds N`, replay any failure with `lucky-sim run --scenario NAME
//! --seed S`, or host the machines in a simulation of your own (below).
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
//! # Layout
//!
//! The engine knows no backend: [`world`] (event queue, clients, workload, fenced resource,
//! servers, faults, report), [`oracle`], [`scenario`] (setups, outcomes, the [`scenario::Backend`]
//! registration), [`sweep`], and the seam [`Protocol`] / [`Server`]. Each backend is a folder
//! ([`redis`], [`etcd`], [`lease`], [`session`]) with its server model, its protocol glue,
//! its scenarios and its bugs, registered by one line in [`registry`]; [`cli`] reads the
//! registry, and [`svg`] draws a run's report as a timeline.
//!
//! Adding a backend: a folder `sim/src/<name>/` with its server model (a [`Server`]), its
//! protocol glue (a [`Protocol`] pairing the real machine with the model, and a
//! [`scenario::Runner`] that builds it from a [`scenario::Setup`]), its scenarios and a
//! [`scenario::Backend`] naming them and its machine's bugs; then `pub mod <name>;` here and
//! one line in [`registry::BACKENDS`]. Nothing in the engine changes.
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

#![warn(missing_docs)]

pub mod cli;
pub mod clock;
pub mod etcd;
pub mod lease;
pub mod net;
pub mod oracle;
mod protocol;
pub mod redis;
pub mod registry;
pub mod rng;
pub mod scenario;
pub mod session;
pub mod svg;
pub mod sweep;
pub mod world;
pub mod zookeeper;

pub use protocol::{Protocol, Server, Slot};
