//! What the lease-record machine asks of a store and what it reads back. One record per lock
//! name, `name -> { owner, fence, expires_at }`, judged on the store's own clock. A backend
//! (the in-memory table, PostgreSQL, MySQL, MongoDB) only encodes these four commands.

use alloc::string::String;
use bytes::Bytes;

use crate::time::Duration;

/// One request to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Takes the record for `owner` until `ttl` from now on the store's clock, if it is free
    /// (no owner), expired, or already `owner`'s. The fence rises by one on a takeover (a
    /// different owner before), never on a retake by the same owner. Reply:
    /// [`Reply::Granted`] or [`Reply::Held`].
    Take {
        /// The lock name (the record's key).
        name: Bytes,
        /// The owner: the machine's token and its acquisition counter.
        owner: Bytes,
        /// How long the record stays ours unless renewed.
        ttl: Duration,
    },
    /// Moves the expiry to `ttl` from now, only while the record is `owner`'s and not expired.
    /// Reply: [`Reply::Renewed`] or [`Reply::NotOwner`].
    Renew {
        /// The lock name.
        name: Bytes,
        /// The owner.
        owner: Bytes,
        /// The new time to live.
        ttl: Duration,
    },
    /// Clears the owner, only while the record is `owner`'s. The record stays, with its
    /// fence: deleting it would restart the fence. Reply: [`Reply::Released`] or
    /// [`Reply::NotOwner`].
    Release {
        /// The lock name.
        name: Bytes,
        /// The owner.
        owner: Bytes,
    },
    /// Reads the record. Reply: [`Reply::State`].
    Inspect {
        /// The lock name.
        name: Bytes,
    },
}

impl Command {
    /// The command's name, for messages.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Take { .. } => "take",
            Command::Renew { .. } => "renew",
            Command::Release { .. } => "release",
            Command::Inspect { .. } => "inspect",
        }
    }
}

/// What the store answered, as the driver read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The record is ours (taken now, or already ours); its fence.
    Granted {
        /// The record's fence.
        fence: u64,
    },
    /// Another owner holds the record for `left` more on the store's clock.
    Held {
        /// Time until the holder's expiry.
        left: Duration,
    },
    /// Renewed.
    Renewed,
    /// The record is not ours (renew, release).
    NotOwner,
    /// Released.
    Released,
    /// The record as it stands: its live owner (`None` when free or expired), its fence, and
    /// the owner's time left on the store's clock.
    State {
        /// The live owner.
        owner: Option<Bytes>,
        /// The record's fence (0: never taken).
        fence: u64,
        /// Time left until expiry (zero when free).
        left: Duration,
    },
    /// The write was sent, but what happened to it is unknown (a timeout or a dropped
    /// connection after sending): it may or may not have been applied.
    Unknown(String),
    /// The store answered with an error; nothing was applied.
    Error(String),
    /// The command could not be sent; nothing was applied.
    Unavailable(String),
}
