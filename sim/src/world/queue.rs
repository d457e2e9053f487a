//! The event queue: what can happen in a run ([`Ev`]) and the queue that orders it by
//! (true time, sequence number), so that equal times keep the order they were scheduled in.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use lucky_core::OpId;

use super::fault::Fault;

/// One thing that happens at a true time.
#[derive(Debug)]
pub(super) enum Ev<C, R> {
    Timer {
        client: usize,
        gen: u64,
    },
    Work {
        client: usize,
    },
    Check {
        client: usize,
        claim: usize,
    },
    SendWrite {
        client: usize,
        claim: usize,
    },
    Request {
        client: usize,
        node: usize,
        op: OpId,
        command: C,
    },
    Response {
        client: usize,
        node: usize,
        op: OpId,
        reply: R,
    },
    Write {
        client: usize,
        claim: usize,
        fence: Option<u64>,
    },
    WriteAck {
        client: usize,
        claim: usize,
    },
    Cancel {
        client: usize,
        serial: u64,
    },
    Fault(Fault),
    NodeTimer {
        node: usize,
        gen: u64,
    },
    Unstall {
        node: usize,
        /// The end of the stall this event closes (a later or earlier end makes it stale).
        until: u64,
    },
    Progress {
        name: usize,
        acquired: u64,
    },
    Final,
}

impl<C, R> Ev<C, R> {
    /// The client whose process handles this event (deferred while it is paused).
    pub(super) fn client(&self) -> Option<usize> {
        match self {
            Ev::Timer { client, .. }
            | Ev::Work { client }
            | Ev::Check { client, .. }
            | Ev::SendWrite { client, .. }
            | Ev::Cancel { client, .. }
            | Ev::WriteAck { client, .. }
            | Ev::Response { client, .. } => Some(*client),
            _ => None,
        }
    }
}

/// Events ordered by (true time, sequence number).
#[derive(Debug)]
pub(super) struct Queue<E> {
    seq: u64,
    /// (true time, sequence, slot): the heap moves only these small keys; the events stay
    /// put in `slab`.
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slab: Vec<Option<E>>,
    free: Vec<u32>,
}

impl<E> Queue<E> {
    pub(super) fn new() -> Queue<E> {
        Queue {
            seq: 0,
            heap: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Schedules `ev` at true time `at`, after everything already scheduled at `at`.
    pub(super) fn push(&mut self, at: u64, ev: E) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(ev);
                i
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.heap.push(Reverse((at, self.seq, slot)));
    }

    /// The earliest event and its time.
    pub(super) fn pop(&mut self) -> Option<(u64, E)> {
        loop {
            let Reverse((at, _, slot)) = self.heap.pop()?;
            self.free.push(slot);
            if let Some(ev) = self.slab[slot as usize].take() {
                return Some((at, ev));
            }
        }
    }

    /// Events waiting.
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}
