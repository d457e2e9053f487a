//! Lucky's lock protocols as pure state machines (sans-IO).
//!
//! You want a distributed lock inside a runtime of your own (not tokio, a plain thread, an
//! embedded loop), inside a deterministic simulation, or under a proptest suite: build a
//! machine ([`redlock`], [`etcd`], [`zookeeper`], [`lease`], [`session`]), feed it time and replies, and
//! send what it asks, following the drive contract below. Lucky's own tokio clients (crate
//! `lucky`) and its simulator (crate `lucky-sim`) drive these very machines.
//!
//! A machine never performs IO, never reads a clock, never draws randomness and never blocks.
//! It consumes inputs stamped with the caller's time and produces commands, one wake-up
//! deadline and events. The same machine runs under Lucky's tokio adapters, under the
//! deterministic simulator, in a plain-threads program, or inside your own event loop.
//!
//! # The drive contract
//!
//! Every protocol implements [`LockMachine`]. To drive one:
//!
//! 1. **Build it** from a validated config, a lock name, a token and a jitter seed. The token
//!    is 16 to 64 bytes, at least 128 bits from a CSPRNG (a seeded PRNG in simulations), and
//!    unique to the machine: it is what proves a key is ours, so machines sharing a token
//!    delete each other's keys. Bad input is a [`UsageError`] here, before anything is sent.
//! 2. **Pass time in.** [`Instant`] is nanoseconds on a monotonic clock you own. Every input
//!    carries `now`, and the input's time is applied first: deadlines due by `now` fire even
//!    when the call then returns an error. A `now` earlier than the last one is a bug of the
//!    driver's clock: the machine reports it ([`Event::TimeWentBack`]) and moves every deadline
//!    it keeps back by the step, so the bad reading can never lengthen a lock.
//! 3. **Ask** with [`acquire`](LockMachine::acquire), [`extend`](LockMachine::extend) or
//!    [`release`](LockMachine::release) (which also cancels an acquisition in flight). Misuse
//!    (extending a lock that is not held, acquiring twice) returns a [`UsageError`] and asks
//!    nothing of the servers.
//! 4. **Drain outputs** with [`poll_output`](LockMachine::poll_output) until it returns `None`,
//!    after *every* input, including one that returned an error. [`Output::Transmit`] is a
//!    command for one node, addressed by [`NodeId`] and tagged with an [`OpId`]; send it.
//!    Every command drained after an input counts as sent at that input's `now` (validity
//!    counts from it): send them before the next input; sending later only shortens the lock
//!    in truth, never lengthens it in the machine's view. [`Output::Event`] is for the user.
//! 5. **Feed replies** with [`handle_reply`](LockMachine::handle_reply)`(now, node, op, reply)`,
//!    stamping `now` when the reply was read. Transport failures are replies too (for RedLock,
//!    [`redlock::Reply::Unavailable`]). Replies to ops the machine no longer waits for (late,
//!    duplicated, from an earlier attempt or round) are ignored, never counted; `handle_reply`
//!    returns `false` for them, and for a reply meant for another machine (op ids are drawn
//!    from a range of each machine's own). Dropping a command or its reply is allowed: the
//!    per-node timeout counts it as failed.
//! 6. **Sleep** until [`poll_timeout`](LockMachine::poll_timeout) (or the next reply), then
//!    call [`handle_timeout`](LockMachine::handle_timeout) with the current time. Timers can
//!    fire late; the machine judges by the `now` you pass, so a late wake-up never extends a
//!    lock: it is reported [`Event::Lost`] at once.
//! 7. **Hints**: [`wake`](LockMachine::wake) tells a machine waiting between attempts that the
//!    lock may be free (a release notification); it retries at once. It never affects safety.
//!
//! Rules the machines keep: a lock is reported [`Event::Acquired`] only while
//! `now < valid_until`, and `valid_until` is computed from the instant the round's first
//! command was handed out, minus the drift allowance; an acquisition ends in `Acquired`,
//! `Failed` (only after its clean-up was answered or timed out: a process may exit right
//! after it and leave nothing that blocks others) or, when cancelled, `Released`; a server
//! that misbehaves (error reply, wrong reply type, garbage) is a backend error inside an
//! event, never a panic; nothing on the input side can make a machine panic.
//!
//! # Example: RedLock driven by hand
//!
//! ```
//! use lucky_core::redlock::{Command, RedLock, RedLockConfig, Reply};
//! use lucky_core::{Duration, Event, Instant, LockMachine, Output};
//!
//! // Three fake Redis nodes: a key -> value map each (no expiry, for brevity).
//! let mut nodes: Vec<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> = vec![Default::default(); 3];
//! let cfg = RedLockConfig::builder()
//!     .nodes(&["n0", "n1", "n2"])
//!     .ttl(Duration::from_secs(10))
//!     .build()?;
//! // The token proves a key is ours: 128+ random bits, unique to this machine.
//! let mut token = [0u8; 16];
//! getrandom::fill(&mut token).expect("the OS has randomness");
//! let mut lock = RedLock::new(&cfg, b"jobs/nightly", &token, 42)?;
//!
//! let mut now = Instant::from_nanos(1_000);
//! lock.acquire(now)?;
//! let mut events = Vec::new();
//! while let Some(out) = lock.poll_output() {
//!     match out {
//!         Output::Transmit(t) => {
//!             let db = &mut nodes[t.node.index()];
//!             let reply = match t.command {
//!                 Command::Acquire { key, value, .. } if !db.contains_key(&key[..]) => {
//!                     db.insert(key.to_vec(), value.to_vec());
//!                     Reply::Status("OK".into())
//!                 }
//!                 Command::Acquire { .. } => Reply::Nil,
//!                 Command::Release { key, value, .. } | Command::Extend { key, value, .. } => {
//!                     let ours = db.get(&key[..]) == Some(&value.to_vec());
//!                     Reply::Int(i64::from(ours))
//!                 }
//!                 // Fencing is off in this configuration (see `RedLockConfigBuilder::fencing`).
//!                 Command::AcquireFenced { .. } | Command::Fence { .. } => unreachable!(),
//!             };
//!             now = now + Duration::from_micros(200); // one round trip later
//!             assert!(lock.handle_reply(now, t.node, t.op, reply), "this machine's op");
//!         }
//!         Output::Event(e) => events.push(e),
//!     }
//! }
//! assert!(matches!(events[0], Event::Acquired { valid_until, .. } if valid_until > now));
//! // The lock expires at `valid_until` unless extended; the machine says when to wake.
//! assert!(lock.poll_timeout().is_some());
//! # Ok::<(), lucky_core::UsageError>(())
//! ```

#![cfg_attr(not(feature = "proptest"), no_std)]
#![warn(missing_docs)]

extern crate alloc;

/// What every protocol's deliberate bugs share (feature `bugs`; never in a release build).
#[cfg(feature = "bugs")]
pub mod bugs;
#[cfg(not(feature = "bugs"))]
mod bugs;
pub mod endpoints;
pub mod error;
pub mod etcd;
pub mod fence;
pub mod lease;
pub mod machine;
pub mod quorum;
pub mod redlock;
mod rng;
pub mod session;
pub mod settings;
#[cfg(feature = "proptest")]
pub mod strategies;
pub mod time;
pub mod zookeeper;

/// Replies carry [`Bytes`]; re-exported so embedders need no matching `bytes` version.
pub use bytes::Bytes;
pub use error::{BackendError, LockError, NodeOutcome, UsageError};
pub use fence::Fence;
pub use machine::{Event, LockMachine, LostReason, NodeId, OpId, Output, State, Transmit};
pub use quorum::{Decision, Tally};
pub use settings::{Lease, Retry, Wait};
pub use time::{Duration, Instant};
