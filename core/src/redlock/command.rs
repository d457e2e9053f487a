//! What the RedLock machine asks of a Redis node, and what it hears back.

use alloc::string::String;
use bytes::Bytes;

/// Release script: delete the key only while it still holds our value (compare-and-delete),
/// then publish on [`RELEASE_CHANNEL_PREFIX`] + key so waiters retry at once instead of
/// polling. Returns 1 when it deleted our key, 0 otherwise.
pub const RELEASE_SCRIPT: &str = r#"if redis.call("get",KEYS[1]) == ARGV[1] then local n = redis.call("del",KEYS[1]) redis.call("publish","lucky:released:"..KEYS[1],"") return n else return 0 end"#;
/// SHA1 of [`RELEASE_SCRIPT`], for `EVALSHA` (fall back to `EVAL` on `NOSCRIPT`).
pub const RELEASE_SHA1: &str = "2adaa963e365842708e536e536d26c44052c4375";
/// The release script publishes on this prefix followed by the key.
pub const RELEASE_CHANNEL_PREFIX: &str = "lucky:released:";

/// Release script without the notification, for cleanup after failed attempts.
pub const RELEASE_QUIET_SCRIPT: &str = r#"if redis.call("get",KEYS[1]) == ARGV[1] then return redis.call("del",KEYS[1]) else return 0 end"#;
/// SHA1 of [`RELEASE_QUIET_SCRIPT`].
pub const RELEASE_QUIET_SHA1: &str = "b70c2384248f88e6b75b9f89241a180f856ad852";

/// Extend script: reset the key's expiry only while it still holds our value
/// (compare-and-PEXPIRE). A missing key stays missing: an expired lock is never resurrected.
/// Returns 1 when it extended our key, 0 otherwise.
pub const EXTEND_SCRIPT: &str = r#"if redis.call("get",KEYS[1]) == ARGV[1] then return redis.call("pexpire",KEYS[1],ARGV[2]) else return 0 end"#;
/// SHA1 of [`EXTEND_SCRIPT`].
pub const EXTEND_SHA1: &str = "36e94d1c6e02fcefaa7ee5d79eee614dbac55f10";

/// Fenced acquire script: `SET KEYS[1] ARGV[1] NX PX ARGV[2]`, and in the same atomic step
/// read the fence counter `KEYS[2]`, raised to the node's clock in microseconds (`TIME`).
/// Returns that value (>= 0) when granted, -1 when taken. The clock is what keeps fences
/// rising when a node restarts without its counter: the fresh node reads its time, later than
/// every fence issued before (node clocks agreeing to within the restart's delay).
pub const ACQUIRE_FENCED_SCRIPT: &str = r#"local c = tonumber(redis.call("get",KEYS[2]) or "0") local t = redis.call("time") local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) if now > c then c = now end if redis.call("set",KEYS[1],ARGV[1],"NX","PX",ARGV[2]) then return c else return -1 end"#;
/// SHA1 of [`ACQUIRE_FENCED_SCRIPT`].
pub const ACQUIRE_FENCED_SHA1: &str = "c618d5416693ce7e4a9225cf731ee8f5196ba072";

/// Fence write-back script: only while `KEYS[1]` still holds our value, raise the counter
/// `KEYS[2]` to `ARGV[2]` (`counter = max(counter, fence)`). Returns 1 when we own the key, 0
/// otherwise.
pub const FENCE_SCRIPT: &str = r#"if redis.call("get",KEYS[1]) == ARGV[1] then local c = tonumber(redis.call("get",KEYS[2]) or "0") if c < tonumber(ARGV[2]) then redis.call("set",KEYS[2],ARGV[2]) end return 1 else return 0 end"#;
/// SHA1 of [`FENCE_SCRIPT`].
pub const FENCE_SHA1: &str = "6d4796a398a72fd4d3f231531fe70a8a201cb46b";

/// The fence counter's key: the lock key followed by this suffix. It has no ttl.
pub const FENCE_KEY_SUFFIX: &str = ":lucky-fence";

/// A command for one Redis node. Each maps to exactly one Redis call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `SET key value NX PX ttl_ms`. Expects `+OK` (granted) or nil (taken).
    Acquire {
        /// The lock key.
        key: Bytes,
        /// This attempt's random value.
        value: Bytes,
        /// Time to live in milliseconds.
        ttl_ms: u64,
    },
    /// `EVALSHA ACQUIRE_FENCED_SHA1 2 key fence_key value ttl_ms`. Expects the node's fence
    /// counter (granted) or -1 (taken).
    AcquireFenced {
        /// The lock key.
        key: Bytes,
        /// The fence counter's key.
        fence_key: Bytes,
        /// This attempt's random value.
        value: Bytes,
        /// Time to live in milliseconds.
        ttl_ms: u64,
    },
    /// `EVALSHA FENCE_SHA1 2 key fence_key value fence`: raise the counter to `fence` while we
    /// own the key. Expects 1 (done) or 0 (not ours).
    Fence {
        /// The lock key.
        key: Bytes,
        /// The fence counter's key.
        fence_key: Bytes,
        /// The value we hold the lock with.
        value: Bytes,
        /// The fence to store.
        fence: u64,
    },
    /// `EVALSHA EXTEND_SHA1 1 key value ttl_ms`. Expects integer 1 (extended) or 0 (not ours).
    Extend {
        /// The lock key.
        key: Bytes,
        /// The value we hold it with.
        value: Bytes,
        /// New time to live in milliseconds.
        ttl_ms: u64,
    },
    /// `EVALSHA RELEASE_SHA1 1 key value` when `notify`, else `EVALSHA RELEASE_QUIET_SHA1 ...`.
    /// Expects integer 1 (deleted) or 0 (not ours).
    Release {
        /// The lock key.
        key: Bytes,
        /// The value we hold it with.
        value: Bytes,
        /// Whether waiters should be told (a lock that was held or asked for is given back),
        /// or not (cleanup after a failed attempt: waking everyone would only stampede).
        notify: bool,
    },
}

impl Command {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Acquire { .. } => "SET NX PX",
            Command::AcquireFenced { .. } => "fenced acquire script",
            Command::Fence { .. } => "fence script",
            Command::Extend { .. } => "extend script",
            Command::Release { .. } => "release script",
        }
    }
}

/// A Redis reply as the driver read it, in RESP terms. The machine, not the driver, decides
/// what each shape means for the protocol; anything unexpected becomes a backend error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A simple string, e.g. `+OK`.
    Status(Bytes),
    /// An integer.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// A nil reply.
    Nil,
    /// An error reply (`-ERR ...`, `-NOSCRIPT ...` after the fallback failed, `-READONLY ...`).
    Error(Bytes),
    /// Any other shape (array, map, double, ...), described for the error message.
    Other(String),
    /// The driver could not deliver the command or read its reply (refused, reset, closed).
    Unavailable(String),
}
