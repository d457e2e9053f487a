//! A Redis node model: keys with PX expiry judged on the node's own clock, and the semantics of
//! `SET NX PX` and Lucky's two Lua scripts (compare-and-PEXPIRE, compare-and-DEL).

use std::collections::BTreeMap;

use bytes::Bytes;
use lucky_core::redlock::{Command, Reply};

use crate::Server;

/// One Redis node's keyspace. Time is the node's local clock, in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct RedisNode {
    keys: BTreeMap<Bytes, (Bytes, u64)>,
    /// Fence counters (no expiry), kept apart so cleanup checks see only lock keys.
    counters: BTreeMap<Bytes, u64>,
    /// What the fenced acquire script does on this node.
    fence_script: FenceScript,
}

/// The fenced acquire script a node runs: Lucky's, or one of the wrong ones the simulator
/// injects (they exist only here; the wire command is the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FenceScript {
    /// Lucky's script: the counter raised to the node's clock in microseconds.
    #[default]
    Clock,
    /// The counter alone (bug `fence-counter-only`).
    CounterOnly,
    /// The naive scheme: INCR the counter on every grant (bug `fence-max-of-incr`).
    Incr,
}

const OK: Bytes = Bytes::from_static(b"OK");

impl RedisNode {
    /// An empty node.
    pub fn new() -> RedisNode {
        RedisNode::default()
    }

    /// An empty node running `script` for fenced acquires.
    pub fn with_fence_script(script: FenceScript) -> RedisNode {
        RedisNode {
            fence_script: script,
            ..RedisNode::default()
        }
    }

    /// The live value of `key` at local time `now`.
    pub fn get(&self, now: u64, key: &[u8]) -> Option<&Bytes> {
        self.keys
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v)
    }

    /// Sets `key` to `value` until local time `until`, as another client would.
    pub fn put(&mut self, key: &[u8], value: &[u8], until: u64) {
        self.keys.insert(
            Bytes::copy_from_slice(key),
            (Bytes::copy_from_slice(value), until),
        );
    }

    fn live(&mut self, now: u64, key: &Bytes) -> Option<&mut (Bytes, u64)> {
        // Lazy expiry, as Redis does on access.
        if self.keys.get(key).is_some_and(|(_, exp)| *exp <= now) {
            self.keys.remove(key);
        }
        self.keys.get_mut(key)
    }
}

fn px(now: u64, ttl_ms: u64) -> u64 {
    now.saturating_add(ttl_ms.saturating_mul(1_000_000))
}

impl Server for RedisNode {
    type Command = Command;
    type Reply = Reply;

    fn apply(&mut self, now: u64, command: &Command) -> Reply {
        match command {
            Command::Acquire { key, value, ttl_ms } => {
                if self.live(now, key).is_some() {
                    Reply::Nil
                } else {
                    self.keys
                        .insert(key.clone(), (value.clone(), px(now, *ttl_ms)));
                    Reply::Status(OK)
                }
            }
            Command::AcquireFenced {
                key,
                fence_key,
                value,
                ttl_ms,
            } => {
                if self.live(now, key).is_some() {
                    return Reply::Int(-1);
                }
                self.keys
                    .insert(key.clone(), (value.clone(), px(now, *ttl_ms)));
                let c = self.counters.entry(fence_key.clone()).or_default();
                if self.fence_script == FenceScript::Incr {
                    *c += 1;
                    return Reply::Int(i64::try_from(*c).unwrap_or(i64::MAX));
                }
                // The script raises what it returns to the node's clock in microseconds (`TIME`);
                // the stored counter moves only by the write-back.
                let read = match self.fence_script {
                    FenceScript::CounterOnly => *c,
                    _ => (*c).max(now / 1_000),
                };
                Reply::Int(i64::try_from(read).unwrap_or(i64::MAX))
            }
            Command::Fence {
                key,
                fence_key,
                value,
                fence,
            } => match self.live(now, key) {
                Some((v, _)) if v == value => {
                    let c = self.counters.entry(fence_key.clone()).or_default();
                    *c = (*c).max(*fence);
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
            Command::Extend { key, value, ttl_ms } => match self.live(now, key) {
                Some((v, exp)) if v == value => {
                    *exp = px(now, *ttl_ms);
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
            Command::Release { key, value, .. } => match self.live(now, key) {
                Some((v, _)) if v == value => {
                    self.keys.remove(key);
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
        }
    }

    fn wipe(&mut self) {
        self.keys.clear();
        self.counters.clear();
    }

    fn live_keys(&self, now: u64) -> usize {
        self.keys.values().filter(|(_, exp)| *exp > now).count()
    }

    fn unavailable() -> Reply {
        Reply::Unavailable("connection refused".into())
    }
}
