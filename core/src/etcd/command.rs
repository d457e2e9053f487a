//! What the etcd machine asks of the cluster and what it reads back, one variant per etcd v3
//! request. A driver maps each to one gRPC call; the simulator's model executes them directly.

use alloc::string::String;
use bytes::Bytes;

use crate::time::Duration;

/// One request to the etcd cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `LeaseGrant(TTL)`, in whole seconds as etcd counts them (the configured ttl rounded
    /// up). Reply: [`Reply::Lease`].
    LeaseGrant {
        /// Requested time to live, in seconds (at least 1).
        ttl_secs: i64,
    },
    /// One `LeaseKeepAlive` request for `lease`. Reply: [`Reply::KeepAlive`] (ttl zero when the
    /// lease no longer exists).
    KeepAlive {
        /// The lease.
        lease: i64,
    },
    /// `LeaseRevoke(lease)`: deletes the lease and every key attached to it. Reply:
    /// [`Reply::Done`] (or [`Reply::LeaseNotFound`], which also means it is gone).
    Revoke {
        /// The lease.
        lease: i64,
    },
    /// The taking transaction of etcd's `concurrency.Mutex`:
    /// `Txn(if create_revision(key) == 0 then put(key, "", lease) ; get(key), first-created
    /// key under prefix)`. Reply: [`Reply::Taken`] (or [`Reply::LeaseNotFound`]).
    Take {
        /// Our key, `<name>/<lease id in hex>` (in a shared session,
        /// `<name>/<lease>_<lock>_<attempt>`, all in hex).
        key: Bytes,
        /// `<name>/`: every contender's key is under it.
        prefix: Bytes,
        /// The lease the key is attached to.
        lease: i64,
        /// In a shared session: the put also needs this key absent (`create_revision(guard)
        /// == 0`). [`Command::Abandon`] writes it, so a take still in flight when its
        /// attempt was abandoned can no longer create the key.
        guard: Option<Bytes>,
    },
    /// In a shared session, the clean-up of an attempt whose key may exist or still be
    /// created by a take in flight: `Txn(put(guard, "", lease); delete(key))`. The guard
    /// lives on the session's lease, outside every lock's prefix. Reply: [`Reply::Done`] (or
    /// [`Reply::LeaseNotFound`]: the lease is gone, and its keys with it).
    Abandon {
        /// The attempt's key.
        key: Bytes,
        /// Its guard.
        guard: Bytes,
        /// The session's lease.
        lease: i64,
    },
    /// A read-only transaction: `get(key)` and the last-created key under `prefix` whose
    /// create_revision is below `below` (our predecessor in the queue). Reply:
    /// [`Reply::Queue`].
    Queue {
        /// Our key.
        key: Bytes,
        /// `<name>/`.
        prefix: Bytes,
        /// Our key's create_revision.
        below: i64,
    },
    /// Watch `key` (every key under it when `prefix`) from revision `from`; answer once it is
    /// deleted. Reply: [`Reply::Deleted`], or [`Reply::Compacted`] when `from` was compacted.
    /// A new watch by the same `watcher` replaces its earlier one; the driver may drop it
    /// once the machine no longer waits for it.
    WaitDelete {
        /// The key to watch (our predecessor).
        key: Bytes,
        /// Watch the whole range under `key` (only a deliberately wrong machine does).
        prefix: bool,
        /// First revision to report.
        from: i64,
        /// Our own key: identifies the waiter.
        watcher: Bytes,
    },
    /// `Txn(if create_revision(key) == revision then delete(key))`: deletes this
    /// acquisition's key and never a later one (a late or repeated delete is harmless). Reply:
    /// [`Reply::Done`].
    Delete {
        /// Our key.
        key: Bytes,
        /// Its create_revision in the acquisition being released.
        revision: i64,
    },
}

impl Command {
    /// A short name for logs and errors.
    pub const fn name(&self) -> &'static str {
        match self {
            Command::LeaseGrant { .. } => "LeaseGrant",
            Command::KeepAlive { .. } => "LeaseKeepAlive",
            Command::Revoke { .. } => "LeaseRevoke",
            Command::Take { .. } => "Txn(take)",
            Command::Abandon { .. } => "Txn(abandon)",
            Command::Queue { .. } => "Txn(queue)",
            Command::WaitDelete { .. } => "Watch",
            Command::Delete { .. } => "Txn(delete)",
        }
    }
}

/// What the cluster answered, as the driver read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A lease was granted for `ttl` (the server may grant more than asked).
    Lease {
        /// The lease id.
        id: i64,
        /// Granted time to live.
        ttl: Duration,
    },
    /// The lease was renewed to `ttl` from now on the server; zero: it no longer exists.
    KeepAlive {
        /// Time to live after the renewal.
        ttl: Duration,
    },
    /// Result of [`Command::Take`].
    Taken {
        /// create_revision of our key (new or already there).
        create_revision: i64,
        /// create_revision of the first-created key under the prefix: the owner.
        owner_revision: i64,
        /// Revision of the store after the transaction.
        revision: i64,
    },
    /// Result of [`Command::Queue`].
    Queue {
        /// create_revision of our key, `None` if it is gone (lease expired, deleted).
        mine: Option<i64>,
        /// Our predecessor: the last-created key below us, `None` if we are first.
        predecessor: Option<Bytes>,
        /// Revision of the store at the read: a watch starts after it.
        revision: i64,
    },
    /// The watched key was deleted.
    Deleted,
    /// The watch's start revision was compacted away: read again.
    Compacted,
    /// The request succeeded (delete, revoke).
    Done,
    /// `etcdserver: requested lease not found`.
    LeaseNotFound,
    /// Any other error reply.
    Error(String),
    /// The driver could not reach the cluster (refused, reset, closed, no leader).
    Unavailable(String),
}
