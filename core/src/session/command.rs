//! What the session-lock machine asks of a server and what it reads back. The server holds a
//! named lock for one of our sessions (a dedicated connection, an open file) as long as that
//! session lives; a backend (PostgreSQL advisory locks, MySQL `GET_LOCK`, `flock`) only
//! encodes these six commands.

use alloc::string::String;
use bytes::Bytes;

use crate::time::Duration;

/// A session of ours on the server, as the driver numbers them.
pub type SessionId = u64;

/// One request to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Opens a session of our own for the lock `name` (a new or idle dedicated connection;
    /// an open file). The server may end it once it has heard nothing from it for `idle`
    /// (the driver sets that where the server can: PostgreSQL's `idle_session_timeout`,
    /// MySQL's `wait_timeout`), so a client that vanished does not block the lock for long;
    /// never sooner, so a lock is never ended while its holder still trusts it. Reply:
    /// [`Reply::Opened`].
    Open {
        /// The lock name.
        name: Bytes,
        /// How long the server may keep a silent session (the ttl, at least).
        idle: Duration,
    },
    /// Locks `name` in `session`, waiting on the server at most `wait` for a holder to let
    /// go (zero: one try), and when it is locked raises the lock's fence counter by one in
    /// the same session (in the same statement where the server allows): the fence is known
    /// only together with the lock. Reply: [`Reply::Locked`] or [`Reply::Busy`].
    Lock {
        /// The session.
        session: SessionId,
        /// The lock name.
        name: Bytes,
        /// How long the server may wait for the lock.
        wait: Duration,
    },
    /// Asks whether `session` still holds `name`, and which server session answers.
    /// Reply: [`Reply::Probed`].
    Probe {
        /// The session.
        session: SessionId,
        /// The lock name.
        name: Bytes,
    },
    /// Unlocks `name` in `session`. Reply: [`Reply::Unlocked`] (`held: false` when the
    /// session did not hold it).
    Unlock {
        /// The session.
        session: SessionId,
        /// The lock name.
        name: Bytes,
    },
    /// Ends `session`. `clean`: it holds nothing of ours, so the driver may keep it for a
    /// later [`Command::Open`]; otherwise the driver must end it for good (close the
    /// connection or file), and the server frees whatever it held. Reply: [`Reply::Closed`].
    Close {
        /// The session.
        session: SessionId,
        /// Whether the session may be reused.
        clean: bool,
    },
}

impl Command {
    /// The command's name, for messages.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Open { .. } => "open",
            Command::Lock { .. } => "lock",
            Command::Probe { .. } => "probe",
            Command::Unlock { .. } => "unlock",
            Command::Close { .. } => "close",
        }
    }
}

/// What the server answered, as the driver read it. `server` is the server's own name for
/// the session that ran the command (PostgreSQL's backend pid, MySQL's connection id, the
/// file's inode): the machine trusts a lock only while it is the one the session opened with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A session is open.
    Opened {
        /// The driver's number for it.
        session: SessionId,
        /// The server's name for it.
        server: u64,
    },
    /// The lock is held by the session, with its new fence.
    Locked {
        /// The server session that locked it.
        server: u64,
        /// The fence counter, raised.
        fence: u64,
    },
    /// Another session holds the lock (the server's wait, if any, ran out).
    Busy,
    /// The probe's answer.
    Probed {
        /// Whether the answering session holds the lock.
        held: bool,
        /// The server session that answered.
        server: u64,
    },
    /// Unlocked; `held`: whether the session held the lock.
    Unlocked {
        /// Whether the session held the lock.
        held: bool,
    },
    /// The session is closed (or kept idle, when clean).
    Closed,
    /// The command was sent, and the session broke or no answer came: what happened is
    /// unknown, and the session can no longer be trusted.
    Unknown(String),
    /// The server answered with an error; the session is intact.
    Error(String),
    /// The command could not be sent (no session could be opened, or it is gone).
    Unavailable(String),
}
