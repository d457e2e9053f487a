//! The server nodes behind the network: each a [`Server`] model with its own clock, up or
//! crashed, stalled or serving. Requests are applied on the node's clock; answers a node keeps
//! for later (watches) go out when it releases them; its own timers (lease expiry) fire on its
//! clock; at the end, every node is checked for what clients left behind.

use lucky_core::OpId;

use crate::clock::Clock;
use crate::oracle::Violation;
use crate::{Protocol, Server};

use super::queue::Ev;
use super::{Cmd, Rep, World};

/// One server node.
pub(super) struct Node<S> {
    pub(super) server: S,
    pub(super) clock: Clock,
    pub(super) up: bool,
    pub(super) crashed_at: u64,
    pub(super) lost_state: bool,
    pub(super) stalled_until: u64,
    pub(super) timer_gen: u64,
    pub(super) timer_at: u64,
}

impl<S> Node<S> {
    pub(super) fn new(server: S, clock: Clock) -> Node<S> {
        Node {
            server,
            clock,
            up: true,
            crashed_at: 0,
            lost_state: false,
            stalled_until: 0,
            timer_gen: 0,
            timer_at: u64::MAX,
        }
    }
}

impl<P: Protocol> World<P> {
    /// `client`'s request reaches a serving (not stalled) `node`.
    pub(super) fn request(&mut self, client: usize, node: usize, op: OpId, command: &Cmd<P>) {
        let now = self.now;
        let n = &mut self.nodes[node];
        if n.up {
            let local = n.clock.local(now);
            self.next_kept += 1;
            let id = self.next_kept;
            match n.server.submit(local, command, id) {
                Some(reply) => self.transmit_reply(client, node, op, reply),
                None => {
                    self.kept.insert(id, (client, node, op));
                }
            }
            self.node_changed(node);
        } else {
            self.transmit_reply(client, node, op, P::Server::unavailable());
        }
    }

    /// The node's own timer (armed by [`node_changed`](Self::node_changed)) fires.
    pub(super) fn node_timer(&mut self, node: usize, gen: u64) {
        let now = self.now;
        let n = &mut self.nodes[node];
        if n.timer_gen == gen && n.up && n.stalled_until <= now {
            n.timer_at = u64::MAX;
            let local = n.clock.local(now);
            n.server.tick(local);
            self.node_changed(node);
        }
    }

    /// A stall that ends at `until` is over, unless a later one replaced it.
    pub(super) fn unstall(&mut self, node: usize, until: u64) {
        let now = self.now;
        let n = &mut self.nodes[node];
        if n.stalled_until == until && n.up {
            let local = n.clock.local(now);
            n.server.recovered(local);
            n.timer_at = u64::MAX;
            self.node_changed(node);
        }
    }

    /// After a node acted: send the answers it released, and re-arm its own timer.
    pub(super) fn node_changed(&mut self, node: usize) {
        let mut fired = std::mem::take(&mut self.fired);
        self.nodes[node].server.fired(&mut fired);
        for (id, reply) in fired.drain(..) {
            if let Some((client, node, op)) = self.kept.remove(&id) {
                self.transmit_reply(client, node, op, reply);
            }
        }
        self.fired = fired;
        let n = &mut self.nodes[node];
        let at = match n.server.next_timer() {
            Some(t) => n.clock.true_at(t).max(self.now).max(n.stalled_until),
            None => u64::MAX,
        };
        if at != n.timer_at {
            n.timer_at = at;
            n.timer_gen += 1;
            if at != u64::MAX {
                let gen = n.timer_gen;
                self.push(at, Ev::NodeTimer { node, gen });
            }
        }
    }

    /// A node's connections broke: every command it kept is answered "unavailable".
    pub(super) fn drop_kept(&mut self, node: usize) {
        self.nodes[node].server.forget_kept();
        let ids: Vec<u64> = self
            .kept
            .iter()
            .filter(|(_, k)| k.1 == node)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some((client, node, op)) = self.kept.remove(&id) {
                self.transmit_reply(client, node, op, P::Server::unavailable());
            }
        }
    }

    /// Sends `reply` to `client` over the network (lost, late or twice, as links go).
    fn transmit_reply(&mut self, client: usize, node: usize, op: OpId, reply: Rep<P>) {
        let mut at = [0u64; 2];
        let process = self.process(client);
        let k = self.net.send(self.now, process, node, false, &mut at);
        if k == 2 {
            let copy = reply.clone();
            self.push(
                at[1],
                Ev::Response {
                    client,
                    node,
                    op,
                    reply: copy,
                },
            );
        }
        if k >= 1 {
            self.push(
                at[0],
                Ev::Response {
                    client,
                    node,
                    op,
                    reply,
                },
            );
        }
    }

    /// Every message in flight landed after every client stopped: no node may keep a key,
    /// and each node model checks its own end-of-run rules.
    pub(super) fn final_checks(&mut self) {
        let now = self.now;
        for (i, n) in self.nodes.iter().enumerate() {
            n.server.check_at_end(i, &mut self.oracle.found);
            let keys = n.server.live_keys(n.clock.local(now));
            if keys > 0 {
                self.oracle
                    .found
                    .push(Violation::LeftoverLock { node: i, keys });
            }
        }
    }
}
