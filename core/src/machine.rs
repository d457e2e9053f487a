//! The shape every lock protocol shares, so drivers and the simulator are generic over it.

use alloc::vec::Vec;
use core::fmt::Debug;

use crate::error::{LockError, NodeOutcome, UsageError};
use crate::fence::Fence;
use crate::time::{Duration, Instant};

/// Index of a node in the configured node list (`0..n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u16);

impl NodeId {
    /// The index as `usize`, for indexing per-node arrays.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Tag of one command. Unique within a machine, and drawn from a range of the machine's own
/// (seeded by its jitter seed), so a reply routed to the wrong machine matches nothing there
/// and [`LockMachine::handle_reply`] returns `false`. A reply carries the tag of its command so
/// the machine can ignore replies to ops it no longer waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// A command for the driver to send to one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit<C> {
    /// Which node to send it to.
    pub node: NodeId,
    /// The tag to hand back with the reply.
    pub op: OpId,
    /// What to send.
    pub command: C,
}

/// What a machine asks of its driver, drained with [`LockMachine::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<C> {
    /// Send a command to a node and feed the reply back with [`LockMachine::handle_reply`].
    Transmit(Transmit<C>),
    /// Tell the user something happened.
    Event(Event),
}

/// Why a held lock was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// The local deadline passed with no extension asked for (manual mode, or the auto-extend
    /// cap was reached).
    Expired,
    /// An extension was tried and did not win a quorum before the deadline.
    ExtendFailed(LockError),
}

/// What happened, for the user. Every acquisition ends in exactly one of `Acquired`, `Failed`
/// or, when [`LockMachine::release`] cancelled it, `Released`; a held lock ends in `Lost` or
/// `Released` (a `Lost` lock is then cleaned up and `Released` follows). `Failed` comes only
/// after the failed attempt's clean-up is done (every node answered or timed out), so a
/// process may exit right after it without leaving anything that blocks others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The lock is held until `valid_until` on the caller's clock, unless extended.
    Acquired {
        /// Fencing token, when the protocol provides one.
        fence: Option<Fence>,
        /// The local deadline: the lock must not be relied on at or after it.
        valid_until: Instant,
    },
    /// An attempt failed; another starts at `retry_at` (or sooner on [`LockMachine::wake`]).
    Retrying {
        /// Attempts made so far.
        attempt: u32,
        /// When the next attempt starts.
        retry_at: Instant,
    },
    /// An extension won; the lock is now held until `valid_until`.
    Extended {
        /// The new local deadline.
        valid_until: Instant,
    },
    /// An extension did not win. The lock is still held until the old `valid_until`; in
    /// auto-extend mode the machine tries again before then.
    ExtendFailed {
        /// The unchanged local deadline.
        valid_until: Instant,
        /// Why it failed.
        error: LockError,
    },
    /// The lock is no longer held: at the local deadline when no extension won (exactly then,
    /// when the driver wakes on time), or earlier when a server shows the lock gone (etcd:
    /// the lease or our key no longer exists).
    Lost {
        /// Why.
        reason: LostReason,
    },
    /// Release finished (every node answered or timed out). One outcome per node:
    /// `Granted` = our key was deleted, `Refused` = our key was not there.
    Released {
        /// Per-node outcome.
        nodes: Vec<NodeOutcome>,
    },
    /// The acquisition gave up: wait deadline, attempt limit, or a single try failed. Its
    /// clean-up is done.
    Failed(LockError),
    /// The caller passed a `now` earlier than one it passed before: a bug in the driver's
    /// clock, made visible. The machine moved every deadline it keeps `by` earlier (never
    /// later), so whichever of the two readings was wrong, no deadline lies later than it
    /// would under the right one. `valid_until` is the held lock's new deadline, if held.
    TimeWentBack {
        /// How far `now` stepped back.
        by: Duration,
        /// The held lock's new, earlier deadline.
        valid_until: Option<Instant>,
    },
}

/// The coarse state of a machine, for drivers and invariant checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Never asked to acquire.
    Idle,
    /// An attempt is in flight.
    Acquiring,
    /// Between attempts.
    Waiting,
    /// Held until `valid_until`.
    Held {
        /// The local deadline.
        valid_until: Instant,
    },
    /// Release commands are in flight.
    Releasing,
    /// Finished (released, failed or lost and cleaned up); `acquire` may start again.
    Done,
}

/// A lock protocol as a sans-IO state machine.
///
/// See the crate documentation for the drive loop every implementation follows.
pub trait LockMachine {
    /// What the machine asks a node to do.
    type Command: Clone + Debug;
    /// What a node answers, as the driver read it off the wire.
    type Reply: Debug;

    /// Number of nodes this machine talks to; `NodeId`s are `0..node_count()`.
    fn node_count(&self) -> usize;

    /// Starts acquiring. Errors if an acquisition is already in flight or held.
    fn acquire(&mut self, now: Instant) -> Result<(), UsageError>;

    /// Extends a held lock by its ttl. Errors if the lock is not held at `now`. While an
    /// extension is already in flight it returns `Ok` and sends nothing more: the one in
    /// flight answers with `Extended` or `ExtendFailed`.
    fn extend(&mut self, now: Instant) -> Result<(), UsageError>;

    /// Releases the lock, or cancels an acquisition in flight (releasing on every node it
    /// touched). Idempotent: a second call sends nothing and still ends in `Released` (with
    /// every node `NotSent` once the first release finished). Errors only if nothing was ever
    /// acquired.
    fn release(&mut self, now: Instant) -> Result<(), UsageError>;

    /// A hint that the lock may have become free (for example a release notification): a
    /// machine waiting between attempts retries at once. Never affects safety.
    fn wake(&mut self, now: Instant);

    /// Feeds the reply to command `op` sent to `node`. Returns whether the reply answered an
    /// op this machine was waiting for; replies to ops it no longer waits for (late,
    /// duplicated, from an earlier attempt) are ignored, and so are replies meant for another
    /// machine (a driver that sees `false` for a reply it just read may have misrouted it).
    fn handle_reply(&mut self, now: Instant, node: NodeId, op: OpId, reply: Self::Reply) -> bool;

    /// Tells the machine the time is `now`; call it when the deadline from
    /// [`poll_timeout`](Self::poll_timeout) is reached.
    fn handle_timeout(&mut self, now: Instant);

    /// The next command to send or event to report; drain until `None` after every input.
    fn poll_output(&mut self) -> Option<Output<Self::Command>>;

    /// When to call [`handle_timeout`](Self::handle_timeout) next, if anything is scheduled.
    fn poll_timeout(&self) -> Option<Instant>;

    /// The coarse state.
    fn state(&self) -> State;

    /// Where the backend announces that this lock was released, for a driver that can
    /// listen (RedLock: a Redis pub/sub channel); `None` when the protocol has no such hint
    /// (etcd waits on watches). Listening helps only while the machine waits between attempts
    /// ([`State::Waiting`]); feed each announcement back with [`wake`](Self::wake).
    fn release_channel(&self) -> Option<bytes::Bytes> {
        None
    }

    /// Whether a held lock has work before its deadline (renewal), so a driver must keep
    /// running the machine while it is held; `false` means nothing happens until the caller
    /// asks or the deadline passes (a driver then needs no task of its own).
    fn renews_while_held(&self) -> bool {
        match self.state() {
            State::Held { valid_until } => self.poll_timeout().is_some_and(|t| t < valid_until),
            _ => true,
        }
    }

    /// The key the lock is held under on the servers, while held, for writes guarded by it
    /// (etcd: `<name>/<lease hex>`, whose create revision is the fence).
    fn held_key(&self) -> Option<bytes::Bytes> {
        None
    }

    /// Gives back the room of buffers that are empty (a round's commands, late answers): a
    /// driver holding thousands of locks for hours calls it once a hold settles, a driver
    /// cycling one lock fast does not (the next round would allocate it again).
    fn shrink(&mut self) {}
}
