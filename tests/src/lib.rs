//! Shared helpers for Lucky's integration tests, property suites and benchmarks.

use lucky_core::redlock::{Command, Reply};
use lucky_core::{Event, Instant, LockMachine, Output, Transmit};
pub use lucky_sim::redis::RedisNode;
use lucky_sim::Server;

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
pub fn run_instant<M>(m: &mut M, nodes: &mut [RedisNode], now: Instant) -> Vec<Event>
where
    M: LockMachine<Command = Command, Reply = Reply>,
{
    let mut events = Vec::new();
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(t) => {
                let reply = nodes[t.node.index()].apply(now.as_nanos(), &t.command);
                m.handle_reply(now, t.node, t.op, reply);
            }
            Output::Event(e) => events.push(e),
        }
    }
    events
}
