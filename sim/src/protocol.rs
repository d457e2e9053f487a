//! The seam between the engine and a backend: a [`Server`] model of one node and the
//! [`Protocol`] that pairs it with its client machine and states the assumptions the oracle
//! holds it to. The engine ([`crate::world`]) is generic over these two traits and knows no
//! backend.

use std::fmt::Debug;

use lucky_core::{Instant, LockMachine};

use crate::oracle::Violation;
use crate::rng;
use crate::world::MemberState;

/// A model of one server node.
pub trait Server {
    /// The commands it executes.
    type Command: Clone + Debug;
    /// The replies it gives.
    type Reply: Clone + Debug;
    /// Executes `command` at the node's local time `now` (ns).
    fn apply(&mut self, now: u64, command: &Self::Command) -> Self::Reply;
    /// Loses every key (a crash without persistence).
    fn wipe(&mut self);
    /// Keys still live at local time `now`.
    fn live_keys(&self, now: u64) -> usize;
    /// Loses the writes applied at local time `since` or later: a failover to a standby
    /// that had not received them (asynchronous replication). A model that keeps no history
    /// loses everything.
    fn roll_back(&mut self, _since: u64) {
        self.wipe();
    }
    /// What a client reads from a crashed node (connection refused).
    fn unavailable() -> Self::Reply;

    /// Executes `command`, which the node may answer later (a watch): `None` means it is kept
    /// under `id` and its answer comes out of [`fired`](Self::fired).
    fn submit(&mut self, now: u64, command: &Self::Command, _id: u64) -> Option<Self::Reply> {
        Some(self.apply(now, command))
    }
    /// Moves the answers to kept commands that became due into `out`, as `(id, reply)`.
    fn fired(&mut self, _out: &mut Vec<(u64, Self::Reply)>) {}
    /// The next local time at which the node acts on its own (a lease expiring).
    fn next_timer(&self) -> Option<u64> {
        None
    }
    /// Does everything due at local time `now`.
    fn tick(&mut self, _now: u64) {}
    /// Forgets every kept command (the connections carrying them broke).
    fn forget_kept(&mut self) {}
    /// The node serves again after a crash or leader loss, at local time `now`.
    fn recovered(&mut self, _now: u64) {}
    /// The node's own end-of-run checks (node number `node`), run once every client stopped
    /// and every message landed: pushes what it finds to `found` (etcd: the thundering herd).
    fn check_at_end(&self, _node: usize, _found: &mut Vec<Violation>) {}
    /// One member of a node reached through several endpoints changes state at local time
    /// `now`; a node without members ignores it.
    fn member(&mut self, _now: u64, _member: usize, _state: MemberState) {}
    /// Every member serves again (faults stopped).
    fn heal_members(&mut self, _now: u64) {}
}

/// One lock in a simulated process: the world's client number, the lock name's number, and
/// the process it runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The client (slot) number.
    pub client: usize,
    /// Which name it locks.
    pub name: usize,
    /// Which process it belongs to.
    pub process: usize,
}

/// A lock protocol the simulator can run: its machine and its server model.
pub trait Protocol: Clone {
    /// The server model.
    type Server: Server;
    /// The client machine, speaking the server's commands and replies.
    type Machine: LockMachine<
        Command = <Self::Server as Server>::Command,
        Reply = <Self::Server as Server>::Reply,
    >;
    /// Number of server nodes.
    fn nodes(&self) -> usize;
    /// A fresh machine for `client`, with its token and jitter seed drawn from `rng`.
    fn machine(&self, client: usize, rng: &mut rng::Rng) -> Self::Machine;
    /// The machines of one process's lock slots, in order. A protocol whose locks share state
    /// in a process (an etcd session) builds them together; by default each is
    /// [`machine`](Self::machine), locking the one name.
    fn process_machines(&self, slots: &[Slot], rng: &mut rng::Rng) -> Vec<Self::Machine> {
        slots.iter().map(|s| self.machine(s.client, rng)).collect()
    }
    /// Whether [`process_machines`](Self::process_machines) locks each slot's own name (a
    /// workload over several names needs it).
    fn many_names(&self) -> bool {
        false
    }
    /// Lets `m` catch up with what its process's other machines changed in the state they
    /// share, at its local time `now`: true when it has outputs to drain or a new timer.
    fn catch_up(&self, _m: &mut Self::Machine, _now: Instant) -> bool {
        false
    }
    /// A fresh node model.
    fn server(&self, node: usize) -> Self::Server;
    /// The lease ttl (ns): the bound used to judge restarts and pauses.
    fn ttl_ns(&self) -> u64;
    /// The relative clock drift rate the protocol is configured to tolerate (ppm).
    fn drift_ppm(&self) -> u32;
    /// Whether the resource skips its fence check (the `fence-unchecked` bug).
    fn fence_unchecked(&self) -> bool {
        false
    }
    /// Whether the protocol's fences keep rising after a node that lost its data (fence
    /// counters included) restarts with its clock at `local`, when the fastest node clock
    /// read `fastest_then` as it went down (ns): the claim the oracle then holds it to.
    /// By default fences never survive a loss of state.
    fn fences_survive_state_loss(&self, _fastest_then: u64, _local: u64) -> bool {
        false
    }
    /// Whether a node's crash ends the client sessions its locks live in (session locks),
    /// freeing them at once: holders learn at their next probe, within a ttl, so claims may
    /// overlap that long after a crash (and only that long).
    fn sessions_end_on_crash(&self) -> bool {
        false
    }
    /// Whether the backend's locks are local to each host while the clients run on several
    /// (a lock directory on a network mount): then it provides no exclusion at all.
    fn locks_local_to_each_host(&self) -> bool {
        false
    }
    /// Whether the backend keeps serving throughout (a cluster that keeps its quorum): then
    /// an acquisition failing as "unreachable" or a lost hold is a violation.
    fn must_stay_available(&self) -> bool {
        false
    }
}
