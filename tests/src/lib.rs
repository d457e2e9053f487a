//! Shared helpers for Lucky's integration tests, property suites and benchmarks.

use std::collections::BTreeMap;

use bytes::Bytes;
use lucky_core::redlock::{Command, Reply};
use lucky_core::{Event, Instant, LockMachine, Output, Transmit};

/// An in-memory Redis node that understands RedLock's three commands, with PX expiry judged on
/// the instants it is given. For unit tests and benchmarks; the simulator has the full model.
#[derive(Debug, Default, Clone)]
pub struct FakeRedis {
    keys: BTreeMap<Bytes, (Bytes, Instant)>,
}

impl FakeRedis {
    /// Executes one command at `now` and returns the RESP-shaped reply.
    pub fn apply(&mut self, now: Instant, command: &Command) -> Reply {
        self.keys.retain(|_, (_, exp)| *exp > now);
        match command {
            Command::Acquire { key, value, ttl_ms } => {
                if self.keys.contains_key(key) {
                    Reply::Nil
                } else {
                    let exp = now + std::time::Duration::from_millis(*ttl_ms);
                    self.keys.insert(key.clone(), (value.clone(), exp));
                    Reply::Status(Bytes::from_static(b"OK"))
                }
            }
            Command::Extend { key, value, ttl_ms } => match self.keys.get_mut(key) {
                Some((v, exp)) if v == value => {
                    *exp = now + std::time::Duration::from_millis(*ttl_ms);
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
            Command::Release { key, value } => match self.keys.get(key) {
                Some((v, _)) if v == value => {
                    self.keys.remove(key);
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
        }
    }

    /// The value stored under `key` at `now`, if any.
    pub fn get(&self, now: Instant, key: &[u8]) -> Option<&Bytes> {
        self.keys
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v)
    }

    /// Stores `value` under `key` until `until`, as another client would.
    pub fn put(&mut self, key: &[u8], value: &[u8], until: Instant) {
        self.keys.insert(
            Bytes::copy_from_slice(key),
            (Bytes::copy_from_slice(value), until),
        );
    }
}

/// Drains a machine's outputs into commands and events.
pub fn drain<M: LockMachine>(m: &mut M) -> (Vec<Transmit<M::Command>>, Vec<Event>) {
    let mut sent = Vec::new();
    let mut events = Vec::new();
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(t) => sent.push(t),
            Output::Event(e) => events.push(e),
        }
    }
    (sent, events)
}

/// Runs a RedLock machine against `nodes` with zero network delay, answering every command at
/// `now`, until no output is left. Returns the events seen.
pub fn run_instant<M>(m: &mut M, nodes: &mut [FakeRedis], now: Instant) -> Vec<Event>
where
    M: LockMachine<Command = Command, Reply = Reply>,
{
    let mut events = Vec::new();
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(t) => {
                let reply = nodes[t.node.index()].apply(now, &t.command);
                m.handle_reply(now, t.node, t.op, reply);
            }
            Output::Event(e) => events.push(e),
        }
    }
    events
}
