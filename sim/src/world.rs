//! The discrete-event engine: clients running real lucky-core machines, server models, the
//! network, faults, and the oracle, all driven by one seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use lucky_core::{Event, Instant, LockMachine, NodeId, OpId, Output, State};

use crate::clock::Clock;
use crate::net::{Cut, Net, NetParams};
use crate::oracle::{Broken, Oracle, Violation};
use crate::rng::Rng;
use crate::{Protocol, Server};

/// A fault, applied at a true time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut links between `client` (None = every client) and `node`.
    Partition {
        /// Which client, or all.
        client: Option<usize>,
        /// Which node.
        node: usize,
        /// Which direction.
        cut: Cut,
    },
    /// Heal the links between `client` (None = every client) and `node`.
    Heal {
        /// Which client, or all.
        client: Option<usize>,
        /// Which node.
        node: usize,
    },
    /// Crash a node; it answers nothing until restarted. `lose_state` wipes its keys.
    Crash {
        /// Which node.
        node: usize,
        /// Whether its keys are lost (no persistence).
        lose_state: bool,
    },
    /// The node serves nothing for `for_ns` (leader loss): requests wait and are answered
    /// after it, and nothing expires meanwhile; then it recovers (leases get a fresh ttl).
    Stall {
        /// Which node.
        node: usize,
        /// For how long.
        for_ns: u64,
    },
    /// Every reply to `client` arrives `extra_ns` later than normal (0: back to normal).
    SlowReplies {
        /// Which client.
        client: usize,
        /// Extra delay, ns.
        extra_ns: u64,
    },
    /// A client process dies for good: it sends nothing more and its claim ends.
    CrashClient {
        /// Which client.
        client: usize,
    },
    /// Restart a crashed node.
    Restart {
        /// Which node.
        node: usize,
    },
    /// Move a node's clock by `by_ns`.
    ClockJump {
        /// Which node.
        node: usize,
        /// How far, in nanoseconds (positive: forwards).
        by_ns: i64,
    },
    /// Stop a client process for `for_ns` while true time runs on.
    Pause {
        /// Which client.
        client: usize,
        /// For how long.
        for_ns: u64,
    },
    /// One member of a clustered node changes state (the etcd cluster view).
    Member {
        /// Which node.
        node: usize,
        /// Which member.
        member: usize,
        /// What it does from now on.
        state: crate::etcd_cluster::MemberState,
    },
    /// Change link behaviour.
    Net(NetParams),
    /// Faults stop: heal everything, restart every node, calm network. Liveness is judged
    /// from here.
    Quiet,
}

/// The workload and timing of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Clients contending for one lock name.
    pub clients: usize,
    /// Hold time: after it, the next acknowledged write is followed by release. `None`: hold
    /// (and keep writing) until the lock is lost.
    pub hold_ns: Option<(u64, u64)>,
    /// Think time between cycles (ns).
    pub think_ns: (u64, u64),
    /// Time from acquisition to the first write check (ns).
    pub write_delay_ns: (u64, u64),
    /// Time from one acknowledged write to the next check and write, while holding (ns).
    pub write_every_ns: (u64, u64),
    /// Pause a holder right after it checked it holds the lock and before its write is sent
    /// (the garbage-collection pause of Kleppmann's example), for this long (ns).
    pub pause_after_check_ns: Option<u64>,
    /// Only this client pauses after its check (None: every client).
    pub pause_only_client: Option<usize>,
    /// Cancel an acquisition in flight: with this probability (ppm), after a delay in the range
    /// (ns) from its start.
    pub cancel: Option<(u32, (u64, u64))>,
    /// Clock drift of every actor, uniform in `-ppm..=ppm`.
    pub clock_ppm: i32,
    /// Clients' clock drift override, uniform in the range (for drift sweeps).
    pub client_ppm: Option<(i32, i32)>,
    /// When faults stop (ns of true time).
    pub quiet_at: u64,
    /// Clients start no new acquisition after this (ns).
    pub stop_at: u64,
    /// Liveness bound after `quiet_at` (ns); `None` skips the check.
    pub progress_within: Option<u64>,
    /// Server nodes' clocks start this far apart at most (ns): far (unsynchronised) by
    /// default, close for servers kept in step by NTP.
    pub node_offset_ns: u64,
    /// Each client is a process that exits for good as soon as its first acquisition ends
    /// (`Failed`, or `Released` after its hold or a cancel), the way a cron job's `lucky exec
    /// --no-wait` does: commands its machine emitted in the same batch as that event never
    /// leave the process. Whatever it wrote must then be gone by the time the run's final
    /// check looks (nothing left behind that blocks others).
    pub exit_after_try: bool,
}

/// Why a run stopped and what it saw.
#[derive(Clone, Debug)]
pub struct Report {
    /// Events processed.
    pub events: u64,
    /// Hash of the whole event trace.
    pub trace_hash: u64,
    /// True time at the end (ns).
    pub end: u64,
    /// Acquisitions, failed acquisitions, extensions, losses, releases.
    pub acquired: u64,
    /// Acquisitions that gave up.
    pub failed: u64,
    /// Successful extensions.
    pub extended: u64,
    /// Locks lost at their deadline.
    pub lost: u64,
    /// Releases completed.
    pub released: u64,
    /// Writes the resource accepted and rejected.
    pub writes: (u64, u64),
    /// Assumptions the run broke.
    pub broken: Broken,
    /// Every violation found.
    pub violations: Vec<Violation>,
    /// Every claim on the lock, in order of start.
    pub claims: Vec<crate::oracle::Claim>,
}

impl Report {
    /// Violations not excused by a broken assumption.
    pub fn unexpected(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| !v.excused_by(&self.broken))
    }
    /// Violations excused by a broken assumption (what an assumption-breaking scenario must
    /// find).
    pub fn expected(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| v.excused_by(&self.broken))
    }
}

#[derive(Debug)]
enum Ev<C, R> {
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
        acquired: u64,
    },
    Final,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Thinking,
    Acquiring,
    Holding,
    Releasing,
    Stopped,
}

struct Client<M> {
    m: M,
    clock: Clock,
    paused_until: u64,
    timer_gen: u64,
    timer_at: u64,
    work: Work,
    /// The claim of the current hold, for the oracle.
    claim: Option<usize>,
    /// Acquisitions started, to match cancellations to theirs.
    serial: u64,
    /// When the current hold's work is over (true time).
    hold_end: u64,
}

struct Node<S> {
    server: S,
    clock: Clock,
    up: bool,
    crashed_at: u64,
    lost_state: bool,
    stalled_until: u64,
    timer_gen: u64,
    timer_at: u64,
}

/// One simulated run.
pub struct World<P: Protocol> {
    now: u64,
    seq: u64,
    /// (true time, sequence, slot): the heap moves only these small keys; the events stay
    /// put in `slab`.
    queue: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slab: Vec<Option<Ev<Cmd<P>, Rep<P>>>>,
    free: Vec<u32>,
    clients: Vec<Client<P::Machine>>,
    nodes: Vec<Node<P::Server>>,
    net: Net,
    work: Workload,
    rng: Rng,
    oracle: Oracle,
    broken: Broken,
    ttl_ns: u64,
    resource_last: Option<u64>,
    fence_unchecked: bool,
    fences_survive_state_loss: bool,
    must_stay_available: bool,
    quiet: bool,
    hash: u64,
    events: u64,
    held_past_deadline_reported: u32,
    /// Commands a node keeps to answer later (watches): id -> (client, node, op).
    kept: std::collections::BTreeMap<u64, (usize, usize, OpId)>,
    next_kept: u64,
    dead: Vec<bool>,
    fired: Vec<(u64, Rep<P>)>,
    report: Report,
}

type Cmd<P> = <<P as Protocol>::Server as Server>::Command;
type Rep<P> = <<P as Protocol>::Server as Server>::Reply;

const FNV_PRIME: u64 = 0x0100_0000_01b3;

impl<P: Protocol> World<P> {
    /// Builds a run of `protocol` under `work`, with initial link behaviour `net` and the
    /// given fault schedule, all randomness drawn from `seed`.
    pub fn new(
        protocol: &P,
        work: Workload,
        net: NetParams,
        faults: &[(u64, Fault)],
        seed: u64,
    ) -> World<P> {
        let mut clocks = Rng::stream(seed, "clocks");
        let mut machines = Rng::stream(seed, "machines");
        let n = protocol.nodes();
        let ppm = work.clock_ppm;
        let nodes: Vec<Node<P::Server>> = (0..n)
            .map(|i| Node {
                server: protocol.server(i),
                clock: Clock::new(
                    draw_ppm(&mut clocks, -ppm, ppm),
                    clocks.range(0, work.node_offset_ns) as i64,
                ),
                up: true,
                crashed_at: 0,
                lost_state: false,
                stalled_until: 0,
                timer_gen: 0,
                timer_at: u64::MAX,
            })
            .collect();
        let (clo, chi) = work.client_ppm.unwrap_or((-ppm, ppm));
        let clients: Vec<Client<P::Machine>> = (0..work.clients)
            .map(|c| Client {
                m: protocol.machine(c, &mut machines),
                clock: Clock::new(
                    draw_ppm(&mut clocks, clo, chi),
                    clocks.range(0, 1 << 40) as i64,
                ),
                paused_until: 0,
                timer_gen: 0,
                timer_at: u64::MAX,
                work: Work::Thinking,
                claim: None,
                serial: 0,
                hold_end: 0,
            })
            .collect();
        let bound = i64::from(protocol.drift_ppm());
        let mut broken = Broken::default();
        let all: Vec<i64> = nodes
            .iter()
            .map(|x| i64::from(x.clock.ppm))
            .chain(clients.iter().map(|x| i64::from(x.clock.ppm)))
            .collect();
        let spread = all.iter().max().unwrap_or(&0) - all.iter().min().unwrap_or(&0);
        if spread > bound {
            broken.drift_beyond_bound = true;
        }
        broken.duplicated = net.dup_ppm > 0;
        let mut w = World {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            net: Net::new(work.clients, n, net, Rng::stream(seed, "net")),
            clients,
            nodes,
            rng: Rng::stream(seed, "workload"),
            oracle: Oracle::new(work.clients),
            broken,
            ttl_ns: protocol.ttl_ns(),
            resource_last: None,
            fence_unchecked: protocol.fence_unchecked(),
            fences_survive_state_loss: protocol.fences_survive_state_loss(),
            must_stay_available: protocol.must_stay_available(),
            quiet: false,
            hash: 0xcbf2_9ce4_8422_2325 ^ seed,
            events: 0,
            held_past_deadline_reported: 0,
            kept: std::collections::BTreeMap::new(),
            next_kept: 0,
            dead: vec![false; work.clients],
            fired: Vec::new(),
            report: Report {
                events: 0,
                trace_hash: 0,
                end: 0,
                acquired: 0,
                failed: 0,
                extended: 0,
                lost: 0,
                released: 0,
                writes: (0, 0),
                broken,
                violations: Vec::new(),
                claims: Vec::new(),
            },
            work,
        };
        for c in 0..w.clients.len() {
            let t = w.rng.range(w.work.think_ns.0, w.work.think_ns.1);
            w.push(t, Ev::Work { client: c });
        }
        for (at, f) in faults {
            w.push(*at, Ev::Fault(f.clone()));
        }
        w.push(w.work.quiet_at, Ev::Fault(Fault::Quiet));
        w
    }

    fn push(&mut self, at: u64, ev: Ev<Cmd<P>, Rep<P>>) {
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
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    fn mix(&mut self, words: [u64; 3]) {
        for w in words {
            self.hash = (self.hash ^ w).wrapping_mul(FNV_PRIME);
        }
    }

    /// Runs to the end (every client stopped and the final checks done, or `limit` events).
    pub fn run(mut self, limit: u64) -> Report {
        while let Some(Reverse((at, _, slot))) = self.queue.pop() {
            self.free.push(slot);
            let Some(ev) = self.slab[slot as usize].take() else {
                continue;
            };
            self.now = self.now.max(at);
            self.events += 1;
            if self.events > limit {
                self.oracle.found.push(Violation::Stuck { events: limit });
                break;
            }
            if self.step(ev) {
                break;
            }
        }
        self.report.events = self.events;
        self.report.trace_hash = self.hash;
        self.report.end = self.now;
        self.report.broken = self.broken;
        self.report.violations = self.oracle.violations();
        self.report.claims = std::mem::take(&mut self.oracle.claims);
        self.report
    }

    /// Handles one event; true when the run is over.
    fn step(&mut self, ev: Ev<Cmd<P>, Rep<P>>) -> bool {
        let now = self.now;
        // A paused client handles nothing until it resumes: defer its events, in order.
        if let Some(c) = ev_client(&ev) {
            if self.dead[c] {
                return false;
            }
            let until = self.clients[c].paused_until;
            if until > now {
                self.push(until, ev);
                return false;
            }
        }
        match ev {
            Ev::Timer { client, gen } => {
                self.mix([now, 1, client as u64]);
                if self.clients[client].timer_gen == gen {
                    self.clients[client].timer_at = u64::MAX;
                    let local = self.local(client);
                    self.clients[client].m.handle_timeout(local);
                    self.after_input(client);
                }
            }
            Ev::Work { client } => {
                self.mix([now, 2, client as u64]);
                self.work_step(client);
            }
            Ev::Check { client, claim } => {
                self.mix([now, 3, client as u64]);
                let local = self.local(client);
                self.clients[client].m.handle_timeout(local);
                self.after_input(client);
                // A careful holder writes only with enough validity left for the write to
                // land: twice the worst network delay. (The hazard that remains, a pause
                // between this check and the send, is what fencing is for.)
                let margin = 2 * self.net.params.delay_ns.1;
                let (held, room) = match self.clients[client].m.state() {
                    State::Held { valid_until } => (
                        true,
                        valid_until.as_nanos().saturating_sub(local.as_nanos()) > margin,
                    ),
                    _ => (false, false),
                };
                let current = self.clients[client].claim == Some(claim);
                if held && !room && current {
                    // Too close to the deadline: wait for an extension (or the loss).
                    let (lo, hi) = self.work.write_every_ns;
                    let d = self.rng.range(lo, hi);
                    self.push(now + d, Ev::Check { client, claim });
                }
                if room && current {
                    let pauses = self.work.pause_only_client.is_none_or(|c| c == client);
                    if let (Some(p), true) = (self.work.pause_after_check_ns, pauses) {
                        self.clients[client].paused_until = now + p;
                        if p >= self.ttl_ns / 2 {
                            self.broken.holder_stalled = true;
                        }
                    }
                    self.push(now, Ev::SendWrite { client, claim });
                }
            }
            Ev::SendWrite { client, claim } => {
                self.mix([now, 4, client as u64]);
                let d = self.net.delay();
                self.push(
                    now + d,
                    Ev::Write {
                        client,
                        claim,
                        fence: self.oracle.claims[claim].fence,
                    },
                );
            }
            Ev::Write {
                client,
                claim,
                fence,
            } => {
                self.mix([now, 5, claim as u64]);
                let accepted = !matches!(
                    (fence, self.resource_last),
                    (Some(f), Some(last)) if f < last && !self.fence_unchecked
                );
                if accepted {
                    if let (Some(f), Some(last)) = (fence, self.resource_last) {
                        if f < last {
                            self.oracle.found.push(Violation::FenceOrder {
                                before: last,
                                after: f,
                            });
                        }
                    }
                    if fence.is_some() {
                        self.resource_last = fence.max(self.resource_last);
                    }
                    self.report.writes.0 += 1;
                } else {
                    self.report.writes.1 += 1;
                }
                self.oracle.write(claim, now, fence, accepted);
                let d = self.net.delay();
                self.push(now + d, Ev::WriteAck { client, claim });
            }
            Ev::WriteAck { client, claim } => {
                self.mix([now, 12, client as u64]);
                // One chunk of work is done: release once the hold time is over, otherwise
                // check the lock again and write the next chunk.
                let c = &self.clients[client];
                if c.claim == Some(claim) && c.work == Work::Holding {
                    if now >= c.hold_end {
                        self.push(now, Ev::Work { client });
                    } else {
                        let (lo, hi) = self.work.write_every_ns;
                        let d = self.rng.range(lo, hi);
                        self.push(now + d, Ev::Check { client, claim });
                    }
                }
            }
            Ev::Request {
                client,
                node,
                op,
                command,
            } => {
                if self.nodes[node].stalled_until > now {
                    let until = self.nodes[node].stalled_until;
                    self.push(
                        until,
                        Ev::Request {
                            client,
                            node,
                            op,
                            command,
                        },
                    );
                    return false;
                }
                self.mix([now, 6, (client as u64) << 32 | node as u64 ^ op.0 << 8]);
                let n = &mut self.nodes[node];
                if n.up {
                    let local = n.clock.local(now);
                    self.next_kept += 1;
                    let id = self.next_kept;
                    match n.server.submit(local, &command, id) {
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
            Ev::NodeTimer { node, gen } => {
                self.mix([now, 13, node as u64]);
                let n = &mut self.nodes[node];
                if n.timer_gen == gen && n.up && n.stalled_until <= now {
                    n.timer_at = u64::MAX;
                    let local = n.clock.local(now);
                    n.server.tick(local);
                    self.node_changed(node);
                }
            }
            Ev::Unstall { node, until } => {
                self.mix([now, 14, node as u64]);
                let n = &mut self.nodes[node];
                if n.stalled_until == until && n.up {
                    let local = n.clock.local(now);
                    n.server.recovered(local);
                    n.timer_at = u64::MAX;
                    self.node_changed(node);
                }
            }
            Ev::Response {
                client,
                node,
                op,
                reply,
            } => {
                self.mix([now, 7, (client as u64) << 32 | node as u64 ^ op.0 << 8]);
                let local = self.local(client);
                self.clients[client]
                    .m
                    .handle_reply(local, NodeId(node as u16), op, reply);
                self.after_input(client);
            }
            Ev::Cancel { client, serial } => {
                self.mix([now, 11, client as u64]);
                let cl = &mut self.clients[client];
                if cl.work == Work::Acquiring && cl.serial == serial {
                    cl.work = Work::Releasing;
                    let local = self.local(client);
                    if self.clients[client].m.release(local).is_ok() {
                        self.after_input(client);
                    }
                }
            }
            Ev::Fault(f) => {
                self.mix([now, 8, 0]);
                self.fault(f);
            }
            Ev::Progress { acquired } => {
                self.mix([now, 10, 0]);
                // Nobody acquired since the lock became free, nobody holds it, and someone
                // still wants it: the lock is stuck.
                let wanting = self.clients.iter().any(|c| c.work != Work::Stopped);
                let held = (0..self.clients.len()).any(|c| self.oracle.open_claim(c).is_some());
                if self.report.acquired == acquired && !held && wanting {
                    let within = self.work.progress_within.unwrap_or(0);
                    let since = now - within;
                    self.oracle
                        .found
                        .push(Violation::NoProgress { since, within });
                }
            }
            Ev::Final => {
                self.mix([now, 9, 0]);
                for (i, n) in self.nodes.iter().enumerate() {
                    let woken = n.server.max_woken();
                    if woken > 1 {
                        self.oracle.found.push(Violation::Herd { node: i, woken });
                    }
                    let keys = n.server.live_keys(n.clock.local(now));
                    if keys > 0 {
                        self.oracle
                            .found
                            .push(Violation::LeftoverLock { node: i, keys });
                    }
                }
                return true;
            }
        }
        false
    }

    /// After a node acted: send the answers it released, and re-arm its own timer.
    fn node_changed(&mut self, node: usize) {
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
    fn drop_kept(&mut self, node: usize) {
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

    fn local(&self, client: usize) -> Instant {
        Instant::from_nanos(self.clients[client].clock.local(self.now))
    }

    fn transmit_reply(&mut self, client: usize, node: usize, op: OpId, reply: Rep<P>) {
        let mut at = [0u64; 2];
        let k = self.net.send(self.now, client, node, false, &mut at);
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

    /// Drains a client's machine after an input: sends, events, and its next timer.
    fn after_input(&mut self, c: usize) {
        let now = self.now;
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
                    let k = self.net.send(now, c, node, true, &mut at);
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

    fn on_event(&mut self, c: usize, e: Event) {
        let now = self.now;
        if self.must_stay_available {
            if let Some(what) = crate::etcd_cluster::unavailable_event(&e) {
                self.oracle.found.push(Violation::Unavailable {
                    client: c,
                    at: now,
                    what,
                });
            }
        }
        match e {
            Event::Acquired { valid_until, fence } => {
                self.report.acquired += 1;
                let end = self.clients[c].clock.true_at(valid_until.as_nanos());
                let claim = self.oracle.acquired(c, now, end, fence.map(|f| f.get()));
                self.clients[c].claim = Some(claim);
                self.clients[c].work = Work::Holding;
                self.clients[c].hold_end = match self.work.hold_ns {
                    Some((lo, hi)) => now + self.rng.range(lo, hi),
                    None => u64::MAX,
                };
                let (lo, hi) = self.work.write_delay_ns;
                let d = self.rng.range(lo, hi);
                self.push(now + d, Ev::Check { client: c, claim });
            }
            Event::Extended { valid_until } => {
                self.report.extended += 1;
                let end = self.clients[c].clock.true_at(valid_until.as_nanos());
                self.oracle.extended(c, end);
            }
            Event::Lost { .. } => {
                self.report.lost += 1;
                self.oracle.ended(c, now, false);
                self.expect_progress();
                self.clients[c].claim = None;
                self.clients[c].work = Work::Releasing;
            }
            Event::Released { .. } => {
                self.report.released += 1;
                self.oracle.ended(c, now, true);
                self.clients[c].claim = None;
                self.think(c);
            }
            Event::Failed(_) => {
                self.report.failed += 1;
                self.think(c);
            }
            Event::Retrying { .. } if now >= self.work.stop_at => {
                // The run is winding down: give up waiting (cancels the acquisition).
                self.clients[c].work = Work::Releasing;
                let local = self.local(c);
                if self.clients[c].m.release(local).is_ok() {
                    self.after_input(c);
                }
            }
            // Client clocks here only drift (node clocks jump): never reported. If it were,
            // the claim keeps its old, later end, which only makes the oracle stricter.
            Event::Retrying { .. } | Event::ExtendFailed { .. } | Event::TimeWentBack { .. } => {}
        }
    }

    /// Once faults stopped, whenever the lock is free, someone must acquire it within the
    /// liveness bound (checked by a `Progress` event).
    fn expect_progress(&mut self) {
        let held = (0..self.clients.len()).any(|c| self.oracle.open_claim(c).is_some());
        if let (true, false, Some(within)) = (self.quiet, held, self.work.progress_within) {
            let acquired = self.report.acquired;
            self.push(self.now + within, Ev::Progress { acquired });
        }
    }

    fn think(&mut self, c: usize) {
        self.clients[c].work = Work::Thinking;
        let (lo, hi) = self.work.think_ns;
        let d = self.rng.range(lo, hi);
        self.push(self.now + d, Ev::Work { client: c });
    }

    fn work_step(&mut self, c: usize) {
        let local = self.local(c);
        match self.clients[c].work {
            Work::Thinking if self.now >= self.work.stop_at => {
                self.clients[c].work = Work::Stopped;
                self.maybe_final();
            }
            Work::Thinking => {
                if self.clients[c].m.acquire(local).is_ok() {
                    self.clients[c].work = Work::Acquiring;
                    self.clients[c].serial += 1;
                    if let Some((ppm, (lo, hi))) = self.work.cancel {
                        if self.rng.chance(ppm) {
                            let d = self.rng.range(lo, hi);
                            let serial = self.clients[c].serial;
                            self.push(self.now + d, Ev::Cancel { client: c, serial });
                        }
                    }
                    self.after_input(c);
                } else {
                    self.think(c);
                }
            }
            Work::Holding => {
                self.oracle.ended(c, self.now, true);
                self.expect_progress();
                self.clients[c].claim = None;
                self.clients[c].work = Work::Releasing;
                if self.clients[c].m.release(local).is_ok() {
                    self.after_input(c);
                }
            }
            Work::Acquiring | Work::Releasing | Work::Stopped => {}
        }
    }

    /// The client's process is gone for good: it handles nothing more.
    fn exit_client(&mut self, client: usize) {
        if !self.dead[client] {
            self.dead[client] = true;
            if self.clients[client].claim.take().is_some() {
                self.oracle.ended(client, self.now, false);
                self.expect_progress();
            }
            self.clients[client].work = Work::Stopped;
            self.maybe_final();
        }
    }

    fn maybe_final(&mut self) {
        if self.clients.iter().all(|x| x.work == Work::Stopped) {
            // Let every message in flight land, then check nothing is left behind.
            let (_, hi) = self.net.params.delay_ns;
            self.push(self.now + 4 * hi + 1, Ev::Final);
        }
    }

    fn fault(&mut self, f: Fault) {
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
                    self.drop_kept(node);
                }
            }
            Fault::Stall { node, for_ns } => {
                let n = &mut self.nodes[node];
                n.stalled_until = n.stalled_until.max(now + for_ns);
                let until = n.stalled_until;
                self.push(until, Ev::Unstall { node, until });
            }
            Fault::SlowReplies { client, extra_ns } => self.net.set_slow(client, extra_ns),
            Fault::CrashClient { client } => self.exit_client(client),
            Fault::Restart { node } => self.restart(node),
            Fault::ClockJump { node, by_ns } => {
                self.nodes[node].clock.jump(by_ns);
                self.broken.node_clock_jump = true;
                // Its own timers (lease expiry) now fall at other true times.
                self.nodes[node].timer_at = u64::MAX;
                self.node_changed(node);
            }
            Fault::Pause { client, for_ns } => {
                let c = &mut self.clients[client];
                c.paused_until = c.paused_until.max(now + for_ns);
                // A pause past the validity of a hold is the stalled-holder hazard.
                if c.claim.is_some() && for_ns >= self.ttl_ns / 2 {
                    self.broken.holder_stalled = true;
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
                self.expect_progress();
            }
        }
    }

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
                // The fresh node answers with its clock. Every fence issued before it went
                // down is at most the fastest node's clock at that moment, plus one per
                // acquisition (1 ms of microseconds covers them): the fence survives if the
                // node's clock is past that now. A clock that jumped makes "that moment"
                // unknowable afterwards: no claim then.
                let then = self.nodes.iter().map(|m| m.clock.local(crashed_at)).max();
                if !self.fences_survive_state_loss
                    || self.broken.node_clock_jump
                    || local <= then.unwrap_or(u64::MAX).saturating_add(1_000_000)
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

fn ev_client<C, R>(ev: &Ev<C, R>) -> Option<usize> {
    match ev {
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

fn draw_ppm(rng: &mut Rng, lo: i32, hi: i32) -> i32 {
    let span = (i64::from(hi) - i64::from(lo)).max(0) as u64;
    (i64::from(lo) + rng.range(0, span) as i64) as i32
}

impl<P: Protocol> std::fmt::Debug for World<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("now", &self.now)
            .field("events", &self.events)
            .field("queued", &self.queue.len())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}
