//! The discrete-event engine: clients running real lucky-core machines, server models, the
//! network, faults, and the oracle, all driven by one seed. It knows no backend: everything
//! protocol-specific comes through [`Protocol`] and [`Server`].
//!
//! This file owns the [`World`] itself: building a run, the event loop and the trace hash.
//! The jobs it dispatches to live beside it: `queue.rs` (event ordering), `clients.rs`
//! (driving the machines), `workload.rs` (what clients do with the lock), `resource.rs` (the
//! fenced resource), `servers.rs` (node models behind the network), `faults.rs`, `report.rs`.

use lucky_core::Instant;

use crate::clock::Clock;
use crate::net::{Net, NetParams};
use crate::oracle::{Broken, Oracle, Violation};
use crate::rng::Rng;
use crate::Slot;
use crate::{Protocol, Server};

mod clients;
mod fault;
mod faults;
mod queue;
mod report;
mod resource;
mod servers;
mod workload;

pub use fault::{Fault, MemberState};
pub use report::Report;
pub use workload::Workload;

use clients::Client;
use queue::{Ev, Queue};
use resource::Resource;
use servers::Node;

/// One simulated run.
pub struct World<P: Protocol> {
    now: u64,
    queue: Queue<Ev<Cmd<P>, Rep<P>>>,
    clients: Vec<Client<P::Machine>>,
    nodes: Vec<Node<P::Server>>,
    net: Net,
    work: Workload,
    rng: Rng,
    oracle: Oracle,
    broken: Broken,
    protocol: P,
    ttl_ns: u64,
    resource: Resource,
    must_stay_available: bool,
    quiet: bool,
    hash: u64,
    events: u64,
    held_past_deadline_reported: u32,
    /// Acquisitions per name, for the liveness check of each.
    acquired_by_name: Vec<u64>,
    /// Commands a node keeps to answer later (watches): id -> (client, node, op).
    kept: std::collections::BTreeMap<u64, (usize, usize, lucky_core::OpId)>,
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
            .map(|i| {
                let clock = Clock::new(
                    draw_ppm(&mut clocks, -ppm, ppm),
                    clocks.range(0, work.node_offset_ns) as i64,
                );
                Node::new(protocol.server(i), clock)
            })
            .collect();
        let (clo, chi) = work.client_ppm.unwrap_or((-ppm, ppm));
        let per = work.per_process.max(1);
        assert!(
            work.names <= 1 || protocol.many_names(),
            "a workload over several names needs a protocol that locks them"
        );
        let mut clients: Vec<Client<P::Machine>> = Vec::with_capacity(work.clients);
        for (p, first) in (0..work.clients).step_by(per).enumerate() {
            // One clock per process, drawn as one client's was.
            let clock = Clock::new(
                draw_ppm(&mut clocks, clo, chi),
                clocks.range(0, 1 << 40) as i64,
            );
            let slots: Vec<Slot> = (first..(first + per).min(work.clients))
                .map(|client| Slot {
                    client,
                    name: client % work.names.max(1),
                    process: p,
                })
                .collect();
            let built = protocol.process_machines(&slots, &mut machines);
            clients.extend(built.into_iter().map(|m| Client::new(m, clock)));
        }
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
        broken.locks_local = protocol.locks_local_to_each_host();
        // The schedule as the queue applies it: by time, faults at one instant in order.
        let mut schedule = faults.to_vec();
        schedule.push((work.quiet_at, Fault::Quiet));
        schedule.sort_by_key(|(at, _)| *at);
        let mut w = World {
            now: 0,
            queue: Queue::new(),
            net: Net::new(work.clients.div_ceil(per), n, net, Rng::stream(seed, "net")),
            clients,
            nodes,
            rng: Rng::stream(seed, "workload"),
            oracle: Oracle::new((0..work.clients).map(|c| c % work.names.max(1)).collect()),
            acquired_by_name: vec![0; work.names.max(1)],
            broken,
            protocol: protocol.clone(),
            ttl_ns: protocol.ttl_ns(),
            resource: Resource::new(work.names, protocol.fence_unchecked()),
            must_stay_available: protocol.must_stay_available(),
            quiet: false,
            hash: 0xcbf2_9ce4_8422_2325 ^ seed,
            events: 0,
            held_past_deadline_reported: 0,
            kept: std::collections::BTreeMap::new(),
            next_kept: 0,
            dead: vec![false; work.clients],
            fired: Vec::new(),
            report: Report::new(broken, work.clients, schedule),
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
        self.queue.push(at, ev);
    }

    /// Folds one handled event into the trace hash.
    fn mix(&mut self, words: [u64; 3]) {
        for w in words {
            self.hash = (self.hash ^ w).wrapping_mul(FNV_PRIME);
        }
    }

    /// Runs to the end (every client stopped and the final checks done, or `limit` events).
    pub fn run(mut self, limit: u64) -> Report {
        while let Some((at, ev)) = self.queue.pop() {
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
        self.report.write_log = std::mem::take(&mut self.oracle.writes);
        self.report
    }

    /// Handles one event; true when the run is over. Each event kind mixes its own tag into
    /// the trace hash, then the part of the world that owns it acts.
    fn step(&mut self, ev: Ev<Cmd<P>, Rep<P>>) -> bool {
        let now = self.now;
        // A paused client handles nothing until it resumes: defer its events, in order.
        if let Some(c) = ev.client() {
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
                self.timer(client, gen);
            }
            Ev::Work { client } => {
                self.mix([now, 2, client as u64]);
                self.work_step(client);
            }
            Ev::Check { client, claim } => {
                self.mix([now, 3, client as u64]);
                self.check(client, claim);
            }
            Ev::SendWrite { client, claim } => {
                self.mix([now, 4, client as u64]);
                self.send_write(client, claim);
            }
            Ev::Write {
                client,
                claim,
                fence,
            } => {
                self.mix([now, 5, claim as u64]);
                self.write(client, claim, fence);
            }
            Ev::WriteAck { client, claim } => {
                self.mix([now, 12, client as u64]);
                self.write_acked(client, claim);
            }
            Ev::Request {
                client,
                node,
                op,
                command,
            } => {
                if self.nodes[node].stalled_until > now {
                    let until = self.nodes[node].stalled_until;
                    let ev = Ev::Request {
                        client,
                        node,
                        op,
                        command,
                    };
                    self.push(until, ev);
                    return false;
                }
                self.mix([now, 6, (client as u64) << 32 | node as u64 ^ op.0 << 8]);
                self.request(client, node, op, &command);
            }
            Ev::NodeTimer { node, gen } => {
                self.mix([now, 13, node as u64]);
                self.node_timer(node, gen);
            }
            Ev::Unstall { node, until } => {
                self.mix([now, 14, node as u64]);
                self.unstall(node, until);
            }
            Ev::Response {
                client,
                node,
                op,
                reply,
            } => {
                self.mix([now, 7, (client as u64) << 32 | node as u64 ^ op.0 << 8]);
                self.response(client, node, op, reply);
            }
            Ev::Cancel { client, serial } => {
                self.mix([now, 11, client as u64]);
                self.cancel(client, serial);
            }
            Ev::Fault(f) => {
                self.mix([now, 8, 0]);
                self.fault(f);
            }
            Ev::Progress { name, acquired } => {
                self.mix([now, 10, name as u64]);
                self.check_progress(name, acquired);
            }
            Ev::Final => {
                self.mix([now, 9, 0]);
                self.final_checks();
                return true;
            }
        }
        false
    }

    /// The process `client` runs in (its index for the network and for faults).
    fn process(&self, client: usize) -> usize {
        client / self.work.per_process.max(1)
    }

    /// The clients of `client`'s process (itself alone when each client is a process).
    fn siblings(&self, client: usize) -> std::ops::Range<usize> {
        self.process_slots(self.process(client))
    }

    /// The clients of process `p`.
    fn process_slots(&self, p: usize) -> std::ops::Range<usize> {
        let per = self.work.per_process.max(1);
        let first = (p * per).min(self.clients.len());
        first..(first + per).min(self.clients.len())
    }

    /// `client`'s clock now.
    fn local(&self, client: usize) -> Instant {
        Instant::from_nanos(self.clients[client].clock.local(self.now))
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
