//! The workload: what the clients do with the lock. Each client thinks, acquires, holds
//! (checking it still holds the lock before each write to the resource), releases, and stops
//! once the run winds down; the oracle learns every claim, and once faults stop the lock must
//! keep changing hands (the liveness check).

use lucky_core::{Event, LockMachine, State};

use crate::oracle::{self, Violation};
use crate::Protocol;

use super::queue::Ev;
use super::World;

/// The workload and timing of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Clients: one lock each. With `per_process` above 1 these are a process's lock slots.
    pub clients: usize,
    /// Lock names the clients spread over (1: they all contend for one). Slot `k` of
    /// process `p` locks name `(p * per_process + k) % names`, so a process holds distinct
    /// names and each name has `clients / names` contenders from different processes.
    pub names: usize,
    /// Clients per process (1: each client is a process of its own). A process's slots share
    /// one clock and one network link, pause and crash together, and may share state (an
    /// etcd session); a fault's `client` then names a process.
    pub per_process: usize,
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
    /// (the garbage-collection pause of Kleppmann's example), for this long (ns), until
    /// faults stop.
    pub pause_after_check_ns: Option<u64>,
    /// Only this client (process) pauses after its check (None: every client).
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

/// Where a client is in its cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Work {
    Thinking,
    Acquiring,
    Holding,
    Releasing,
    Stopped,
}

impl<P: Protocol> World<P> {
    /// The holder checks it still holds the lock, then writes (or waits for an extension
    /// when too close to its deadline).
    pub(super) fn check(&mut self, client: usize, claim: usize) {
        let now = self.now;
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
            let process = self.process(client);
            // A pause is a fault: none once faults stop.
            let pauses = !self.quiet && self.work.pause_only_client.is_none_or(|c| c == process);
            if let (Some(p), true) = (self.work.pause_after_check_ns, pauses) {
                // The pause stops the whole process.
                for c in self.siblings(client) {
                    let c = &mut self.clients[c];
                    c.paused_until = c.paused_until.max(now + p);
                }
                if p >= self.ttl_ns / 2 {
                    self.broken.holder_stalled = true;
                }
            }
            self.push(now, Ev::SendWrite { client, claim });
        }
    }

    /// A write under `claim` was acknowledged.
    pub(super) fn write_acked(&mut self, client: usize, claim: usize) {
        let now = self.now;
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

    /// The acquisition numbered `serial` is cancelled, if it is still in flight.
    pub(super) fn cancel(&mut self, client: usize, serial: u64) {
        let cl = &mut self.clients[client];
        if cl.work == Work::Acquiring && cl.serial == serial {
            cl.work = Work::Releasing;
            let local = self.local(client);
            if self.clients[client].m.release(local).is_ok() {
                self.after_input(client);
            }
        }
    }

    /// The liveness bound passed since lock `name` came free with `acquired` acquisitions of
    /// it made.
    pub(super) fn check_progress(&mut self, name: usize, acquired: u64) {
        let now = self.now;
        // Nobody acquired it since it became free, nobody holds it, and someone still
        // wants it: the lock is stuck.
        let wanting = self
            .on_name(name)
            .any(|c| self.clients[c].work != Work::Stopped);
        let held = self
            .on_name(name)
            .any(|c| self.oracle.open_claim(c).is_some());
        if self.acquired_by_name[name] == acquired && !held && wanting {
            let within = self.work.progress_within.unwrap_or(0);
            let since = now - within;
            self.oracle
                .found
                .push(Violation::NoProgress { since, within });
        }
    }

    /// What client `c`'s process does on an event of its machine.
    pub(super) fn on_event(&mut self, c: usize, e: Event) {
        let now = self.now;
        if self.must_stay_available {
            if let Some(what) = oracle::unavailable_event(&e) {
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
                let name = self.name_of(c);
                self.acquired_by_name[name] += 1;
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
                // The machine no longer says it holds the lock: its claim ends here (the
                // lock may be freed from now on, for example when a session lock's holder
                // ends the session it no longer trusts).
                self.oracle.ended(c, now, true);
                self.expect_progress(self.name_of(c));
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

    /// Once faults stopped, whenever lock `name` is free, someone must acquire it within the
    /// liveness bound (checked by a `Progress` event).
    pub(super) fn expect_progress(&mut self, name: usize) {
        let held = self
            .on_name(name)
            .any(|c| self.oracle.open_claim(c).is_some());
        if let (true, false, Some(within)) = (self.quiet, held, self.work.progress_within) {
            let acquired = self.acquired_by_name[name];
            self.push(self.now + within, Ev::Progress { name, acquired });
        }
    }

    /// The lock name client `c` takes.
    pub(super) fn name_of(&self, c: usize) -> usize {
        c % self.work.names.max(1)
    }

    /// The clients that take lock `name`.
    fn on_name(&self, name: usize) -> impl Iterator<Item = usize> {
        (name..self.clients.len()).step_by(self.work.names.max(1))
    }

    /// Client `c` thinks for a while before its next cycle.
    fn think(&mut self, c: usize) {
        self.clients[c].work = Work::Thinking;
        let (lo, hi) = self.work.think_ns;
        let d = self.rng.range(lo, hi);
        self.push(self.now + d, Ev::Work { client: c });
    }

    /// Client `c`'s next step in its cycle: acquire, release after the hold, or stop.
    pub(super) fn work_step(&mut self, c: usize) {
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
                self.expect_progress(self.name_of(c));
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
    pub(super) fn exit_client(&mut self, client: usize) {
        if !self.dead[client] {
            self.dead[client] = true;
            if self.clients[client].claim.take().is_some() {
                self.oracle.ended(client, self.now, false);
                self.expect_progress(self.name_of(client));
            }
            self.clients[client].work = Work::Stopped;
            self.maybe_final();
        }
    }

    /// Once every client stopped, the run ends after the last message lands.
    fn maybe_final(&mut self) {
        if self.clients.iter().all(|x| x.work == Work::Stopped) {
            // Let every message in flight land, then check nothing is left behind.
            let (_, hi) = self.net.params.delay_ns;
            self.push(self.now + 4 * hi + 1, Ev::Final);
        }
    }
}
