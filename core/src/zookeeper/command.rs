//! What the ZooKeeper machine asks of the ensemble and what it reads back, one variant per
//! ZooKeeper request (or short fixed sequence of them). A driver maps each to client calls on
//! the one session it keeps; the simulator's model executes them directly.

use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;

use crate::time::{Duration, Instant};

/// One request to the ensemble, always on the driver's current session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `create(<dir>/<prefix>, EPHEMERAL_SEQUENTIAL)`, creating missing parents of `dir` as
    /// container nodes (Curator's `creatingParentContainersIfNeeded`). Reply:
    /// [`Reply::Created`].
    Create {
        /// The lock's directory, `/<root>/<name>`.
        dir: Bytes,
        /// `_c_<id>-lock-`: the server appends the 10-digit sequence number.
        prefix: Bytes,
    },
    /// `getChildren(dir)`, after a `sync(dir)` when `sync` is set (so a server we reconnected
    /// to has applied every write the leader had before). Reply: [`Reply::Children`]
    /// ([`Reply::NoNode`] when `dir` is gone).
    Children {
        /// The lock's directory.
        dir: Bytes,
        /// Sync first: the listing follows a request whose outcome is unknown.
        sync: bool,
    },
    /// `exists(path)`. Reply: [`Reply::Stat`] or [`Reply::NoNode`].
    Stat {
        /// A node.
        path: Bytes,
    },
    /// `exists(path, watch)`: answer [`Reply::Deleted`] once the node is gone (at once if it
    /// already is). A driver may drop the watch once the machine no longer waits for it. (A
    /// deliberately wrong machine, bug `zk-watch-all`, names the lock directory: any change
    /// of its children answers.)
    WaitDelete {
        /// Our predecessor in the queue.
        path: Bytes,
    },
    /// `delete(path, -1)`. Reply: [`Reply::Done`] ([`Reply::NoNode`] also means gone).
    Delete {
        /// Our node (or an orphan of ours).
        path: Bytes,
    },
}

impl Command {
    /// A short name for logs and errors.
    pub const fn name(&self) -> &'static str {
        match self {
            Command::Create { .. } => "create",
            Command::Children { .. } => "getChildren",
            Command::Stat { .. } => "exists",
            Command::WaitDelete { .. } => "exists(watch)",
            Command::Delete { .. } => "delete",
        }
    }
}

/// The session a request ran in, as the client reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The session id.
    pub id: i64,
    /// The session timeout the server negotiated.
    pub timeout: Duration,
    /// Until when the session surely lives on the leader, as the driver's
    /// [`SessionProof`](super::SessionProof) says after this reply (`None`: not proven yet).
    pub until: Option<Instant>,
}

/// What the ensemble answered, as the driver read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Result of [`Command::Create`].
    Created {
        /// The node's full path, sequence included.
        path: Bytes,
        /// Its creation zxid: the fence.
        czxid: i64,
        /// The session that owns it.
        session: Session,
    },
    /// Result of [`Command::Children`]: the directory's child names (not paths).
    Children {
        /// Child names, in any order.
        names: Vec<Bytes>,
        /// The session the read ran in.
        session: Session,
    },
    /// Result of [`Command::Stat`].
    Stat {
        /// The node's creation zxid.
        czxid: i64,
        /// The session owning the node (0 for a persistent node).
        ephemeral_owner: i64,
        /// The session the read ran in.
        session: Session,
    },
    /// The watched node is gone.
    Deleted,
    /// The request succeeded (delete).
    Done,
    /// `NONODE`.
    NoNode,
    /// `SESSIONEXPIRED` (or the client closed): the session and every ephemeral node of it
    /// are gone.
    SessionExpired,
    /// Any other error reply.
    Error(String),
    /// The request's outcome is unknown: connection loss, a timeout, no server reachable.
    Unavailable(String),
}
