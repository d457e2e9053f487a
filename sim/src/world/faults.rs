//! How the world applies each [`Fault`] to its links, nodes, clocks and clients, noting which
//! of the protocol's assumptions a fault breaks (the oracle excuses only the violations those
//! allow).

use crate::net::NetParams;
use crate::{Protocol, Server};

use super::fault::Fault;
use super::queue::Ev;
use super::World;

impl<P: Protocol> World<P> {
    /// Applies `f` now.
    pub(super) fn fault(&mut self, f: Fault) {
        let now = self.now;
        match f {
            Fault::Partition { client, node, cut } => self.net.set_cut(client, node, Some(cut)),
            Fault::Heal { client, node } => self.net.set_cut(client, node, None),
            Fault::Crash { node, lose_state } => {
                let n = &mut self.nodes[node];
                if n.up {
                    n.up = false;
                    n.crashed_at = now;
                    n.lost_state = lose_state;
                    if lose_state {
                        n.server.wipe();
                        self.broken.state_lost = true;
                    }
                    if self.protocol.sessions_end_on_crash() {
                        self.broken.sessions_ended(now, self.ttl_ns);
                    }
                    self.drop_kept(node);
                }
            }
            Fault::Stall { node, for_ns } => {
                let n = &mut self.nodes[node];
                n.stalled_until = n.stalled_until.max(now + for_ns);
                let until = n.stalled_until;
                self.push(until, Ev::Unstall { node, until });
            }
            Fault::RollBack { node, for_ns } => {
                let n = &mut self.nodes[node];
                let since = n.clock.local(now).saturating_sub(for_ns);
                n.server.roll_back(since);
                // State lost while serving on at once: holders may overlap, fences go back.
                self.broken.state_lost = true;
                self.broken.fast_restart_without_state = true;
                self.broken.fence_counter_lost = true;
                self.node_changed(node);
            }
            Fault::SlowReplies { client, extra_ns } => self.net.set_slow(client, extra_ns),
            Fault::CrashClient { client } => {
                for c in self.process_slots(client) {
                    self.exit_client(c);
                }
            }
            Fault::Restart { node } => self.restart(node),
            Fault::ClockJump { node, by_ns } => {
                self.nodes[node].clock.jump(by_ns);
                self.broken.node_clock_jump = true;
                // Its own timers (lease expiry) now fall at other true times.
                self.nodes[node].timer_at = u64::MAX;
                self.node_changed(node);
            }
            Fault::Pause { client, for_ns } => {
                // The pause stops the whole process.
                for c in self.process_slots(client) {
                    let c = &mut self.clients[c];
                    c.paused_until = c.paused_until.max(now + for_ns);
                    // A pause past the validity of a hold is the stalled-holder hazard.
                    if c.claim.is_some() && for_ns >= self.ttl_ns / 2 {
                        self.broken.holder_stalled = true;
                    }
                }
            }
            Fault::Member {
                node,
                member,
                state,
            } => {
                let local = self.nodes[node].clock.local(now);
                self.nodes[node].server.member(local, member, state);
                self.node_changed(node);
            }
            Fault::Net(p) => {
                self.broken.duplicated |= p.dup_ppm > 0;
                self.net.params = p;
            }
            Fault::Quiet => {
                self.quiet = true;
                self.net.heal_all();
                self.net.params = NetParams::CALM;
                for i in 0..self.nodes.len() {
                    self.restart(i);
                    let local = self.nodes[i].clock.local(now);
                    self.nodes[i].server.heal_members(local);
                    self.node_changed(i);
                    // A leader loss ends too.
                    if self.nodes[i].stalled_until > now {
                        self.nodes[i].stalled_until = now;
                        self.push(
                            now,
                            Ev::Unstall {
                                node: i,
                                until: now,
                            },
                        );
                    }
                }
                for name in 0..self.acquired_by_name.len() {
                    self.expect_progress(name);
                }
            }
        }
    }

    /// Brings a crashed node back; a node that lost its state may have lost its fence
    /// counter too.
    fn restart(&mut self, node: usize) {
        let now = self.now;
        let ttl = self.ttl_ns;
        let n = &mut self.nodes[node];
        if !n.up {
            n.up = true;
            if n.lost_state && now - n.crashed_at < ttl + ttl / 50 {
                self.broken.fast_restart_without_state = true;
            }
            let local = n.clock.local(now);
            let crashed_at = n.crashed_at;
            if n.lost_state {
                // Whether the protocol's fences survive is its own rule, given the fastest
                // node clock at the crash and this node's clock now. A clock that jumped makes
                // "that moment" unknowable afterwards: no claim then.
                let then = self.nodes.iter().map(|m| m.clock.local(crashed_at)).max();
                if self.broken.node_clock_jump
                    || !self
                        .protocol
                        .fences_survive_state_loss(then.unwrap_or(u64::MAX), local)
                {
                    self.broken.fence_counter_lost = true;
                }
            }
            let n = &mut self.nodes[node];
            n.server.recovered(local);
            n.timer_at = u64::MAX;
            self.node_changed(node);
        }
    }
}
