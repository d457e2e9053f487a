//! The clients: each a process running one real lock machine on its own clock. This file
//! drives the machines (inputs stamped with the client's local time, outputs drained after
//! every input, the machine's next timer armed) and watches their state for the oracle.

use lucky_core::{Event, LockMachine, NodeId, OpId, Output, State};

use crate::clock::Clock;
use crate::oracle::Violation;
use crate::Protocol;

use super::queue::Ev;
use super::workload::Work;
use super::{Rep, World};

/// One client process.
pub(super) struct Client<M> {
    pub(super) m: M,
    pub(super) clock: Clock,
    pub(super) paused_until: u64,
    pub(super) timer_gen: u64,
    pub(super) timer_at: u64,
    pub(super) work: Work,
    /// The claim of the current hold, for the oracle.
    pub(super) claim: Option<usize>,
    /// Acquisitions started, to match cancellations to theirs.
    pub(super) serial: u64,
    /// When the current hold's work is over (true time).
    pub(super) hold_end: u64,
}

impl<M> Client<M> {
    pub(super) fn new(m: M, clock: Clock) -> Client<M> {
        Client {
            m,
            clock,
            paused_until: 0,
            timer_gen: 0,
            timer_at: u64::MAX,
            work: Work::Thinking,
            claim: None,
            serial: 0,
            hold_end: 0,
        }
    }
}

impl<P: Protocol> World<P> {
    /// The machine's timer (armed by [`after_input`](Self::after_input)) fires.
    pub(super) fn timer(&mut self, client: usize, gen: u64) {
        if self.clients[client].timer_gen == gen {
            self.clients[client].timer_at = u64::MAX;
            let local = self.local(client);
            self.clients[client].m.handle_timeout(local);
            self.after_input(client);
        }
    }

    /// A node's reply reaches `client`'s machine.
    pub(super) fn response(&mut self, client: usize, node: usize, op: OpId, reply: Rep<P>) {
        let local = self.local(client);
        self.clients[client]
            .m
            .handle_reply(local, NodeId(node as u16), op, reply);
        self.after_input(client);
    }

    /// Drains a client's machine after an input (sends, events, its next timer), then lets
    /// the other machines of its process catch up with the state they share.
    pub(super) fn after_input(&mut self, c: usize) {
        self.drain(c);
        if self.work.per_process > 1 {
            let local = self.local(c);
            // A catch-up may change the shared state again (a lock reporting its lease gone
            // moves the session's view): go round until nobody has news.
            for _ in 0..4 {
                let mut news = false;
                for s in self.siblings(c) {
                    if !self.dead[s] && self.protocol.catch_up(&mut self.clients[s].m, local) {
                        self.drain(s);
                        news = true;
                    }
                }
                if !news {
                    break;
                }
            }
        }
    }

    /// Drains one client's machine: sends, events, and its next timer.
    fn drain(&mut self, c: usize) {
        let now = self.now;
        let process = self.process(c);
        let outs: Vec<_> = std::iter::from_fn(|| self.clients[c].m.poll_output()).collect();
        // A process that exits on this batch's final event never sends the batch's commands.
        let exits = self.work.exit_after_try
            && outs
                .iter()
                .any(|o| matches!(o, Output::Event(Event::Failed(_) | Event::Released { .. })));
        for out in outs {
            match out {
                Output::Transmit(_) if exits => {}
                Output::Transmit(t) => {
                    let node = t.node.index();
                    let mut at = [0u64; 2];
                    let k = self.net.send(now, process, node, true, &mut at);
                    for &at in &at[..k] {
                        let ev = Ev::Request {
                            client: c,
                            node,
                            op: t.op,
                            command: t.command.clone(),
                        };
                        self.push(at, ev);
                    }
                }
                Output::Event(e) => self.on_event(c, e),
            }
        }
        if exits {
            self.exit_client(c);
            return;
        }
        if let State::Held { valid_until } = self.clients[c].m.state() {
            self.oracle.observed_held(c, now);
            let local = self.clients[c].clock.local(now);
            if local >= valid_until.as_nanos() && self.held_past_deadline_reported < 4 {
                self.held_past_deadline_reported += 1;
                let late_ns = local - valid_until.as_nanos();
                self.oracle.found.push(Violation::HeldPastDeadline {
                    client: c,
                    at: now,
                    late_ns,
                });
            }
        }
        let at = self.clients[c].m.poll_timeout().map_or(u64::MAX, |t| {
            self.clients[c].clock.true_at(t.as_nanos()).max(now)
        });
        if at != self.clients[c].timer_at {
            let cl = &mut self.clients[c];
            cl.timer_at = at;
            cl.timer_gen += 1;
            if at != u64::MAX {
                let gen = cl.timer_gen;
                self.push(at, Ev::Timer { client: c, gen });
            }
        }
    }
}
