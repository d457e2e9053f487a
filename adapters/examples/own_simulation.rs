//! Deterministic simulation testing in your own event loop: three lease-record machines on the
//! in-memory table, a network of your own that delays, drops and reorders replies (a dropped
//! reply after the table applied the write is an unknown outcome for the machine), clients
//! that pause, and a check of the one property that matters: no two clients hold the lock at
//! once. Everything comes from one seed, so a seed replays bit for bit: the run is made twice
//! and the two traces must hash alike.
//!
//! Run: `cargo run -p lucky --features memory --example own_simulation -- [SEED] [RUNS]`
//! (default seed 1, 200 runs from it).
#![allow(clippy::disallowed_methods)] // a simulation owns its clock and its randomness

use std::collections::BTreeMap;

use lucky::lease::{LeaseConfig, LeaseLock, Reply};
use lucky::memory::Table;
use lucky::{Duration, Event, Instant, LockMachine, NodeId, OpId, Output, Wait};

/// SplitMix64: the whole run's randomness, from one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// What the loop schedules, in true time (ns): ties broken by insertion order.
#[derive(Debug)]
enum Ev {
    Reply(usize, OpId, Reply),
    Timeout(usize),
    Release(usize),
    Acquire(usize),
}

struct Run {
    rng: Rng,
    now: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    machines: Vec<LeaseLock>,
    table: Table,
    /// Per client: the open claim's start and deadline (true time).
    claims: Vec<Option<(u64, u64)>>,
    /// Finished claims: (client, start, end).
    done: Vec<(usize, u64, u64)>,
    paused_until: Vec<u64>,
    trace: u64,
}

impl Run {
    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn note(&mut self, x: u64) {
        self.trace = (self.trace ^ x).wrapping_mul(0x100_0000_01b3);
    }

    /// Step 4 of the drive contract: drain a machine after its input, send what it asks.
    fn drain(&mut self, c: usize) {
        let now = Instant::from_nanos(self.now);
        while let Some(out) = self.machines[c].poll_output() {
            match out {
                Output::Transmit(t) => {
                    // The table applies it now; the reply may be late, reordered or lost.
                    let reply = self.table.execute(now, &t.command);
                    if self.rng.range(0, 100) < 5 {
                        self.note(1);
                        continue; // lost: the machine's request timeout settles it
                    }
                    let at = self.now + self.rng.range(100_000, 5_000_000);
                    self.push(at, Ev::Reply(c, t.op, reply));
                }
                Output::Event(e) => self.event(c, e),
            }
        }
        if let Some(t) = self.machines[c].poll_timeout() {
            self.push(t.as_nanos().max(self.now), Ev::Timeout(c));
        }
    }

    fn event(&mut self, c: usize, e: Event) {
        self.note(c as u64 * 31 + self.now);
        match e {
            Event::Acquired { valid_until, .. } => {
                self.claims[c] = Some((self.now, valid_until.as_nanos()));
                let hold = self.rng.range(1_000_000, 30_000_000);
                self.push(self.now + hold, Ev::Release(c));
            }
            Event::Extended { valid_until } => {
                if let Some(claim) = &mut self.claims[c] {
                    claim.1 = claim.1.max(valid_until.as_nanos());
                }
            }
            Event::Lost { .. } | Event::Released { .. } | Event::Failed(_) => {
                if let Some((start, deadline)) = self.claims[c].take() {
                    self.done.push((c, start, deadline.min(self.now)));
                }
                if !matches!(e, Event::Lost { .. }) {
                    let think = self.rng.range(0, 10_000_000);
                    self.push(self.now + think, Ev::Acquire(c));
                }
            }
            _ => {}
        }
    }

    fn step(&mut self) -> bool {
        let Some(((at, _), ev)) = self.queue.pop_first() else {
            return false;
        };
        self.now = self.now.max(at);
        let now = Instant::from_nanos(self.now);
        let c = match ev {
            Ev::Reply(c, ..) | Ev::Timeout(c) | Ev::Release(c) | Ev::Acquire(c) => c,
        };
        if self.now < self.paused_until[c] {
            // A paused process handles nothing until it resumes.
            let resume = self.paused_until[c];
            self.push(resume, ev);
            return true;
        }
        if self.rng.range(0, 1000) < 3 {
            // Now and then a client stops for up to a ttl (a GC pause, a slow disk).
            self.paused_until[c] = self.now + self.rng.range(0, 400_000_000);
            self.note(2);
        }
        match ev {
            // Step 5: a reply, stamped with the time it was read.
            Ev::Reply(c, op, reply) => {
                self.machines[c].handle_reply(now, NodeId(0), op, reply);
            }
            // Step 6: the machine's own deadline.
            Ev::Timeout(c) => self.machines[c].handle_timeout(now),
            // Step 3: the user's requests.
            Ev::Release(c) => {
                // The client stops relying on the lock when it asks to release it.
                if let Some((start, deadline)) = self.claims[c].take() {
                    self.done.push((c, start, deadline.min(self.now)));
                }
                let _ = self.machines[c].release(now);
            }
            Ev::Acquire(c) => {
                let _ = self.machines[c].acquire(now);
            }
        }
        self.drain(c);
        true
    }
}

/// One run of `seed` for 5 s of simulated time: the finished claims and the trace hash.
fn run(seed: u64) -> (Vec<(usize, u64, u64)>, u64) {
    let cfg = LeaseConfig::builder()
        .ttl(Duration::from_millis(400))
        .wait(Wait::For(Duration::from_secs(2)))
        .auto_extend(None, None)
        .build()
        .expect("a valid configuration");
    let mut rng = Rng(seed);
    let machines = (0..3u8)
        .map(|i| {
            let mut token = [0u8; 16];
            token[..8].copy_from_slice(&rng.next().to_le_bytes());
            token[8] = i;
            LeaseLock::new(&cfg, b"report", &token, rng.next()).expect("a valid name and token")
        })
        .collect();
    let mut r = Run {
        rng,
        now: 1,
        queue: BTreeMap::new(),
        seq: 0,
        machines,
        table: Table::new(),
        claims: vec![None; 3],
        done: Vec::new(),
        paused_until: vec![0; 3],
        trace: 0xcbf2_9ce4_8422_2325,
    };
    for c in 0..3 {
        r.push(1, Ev::Acquire(c));
    }
    while r.now < 5_000_000_000 && r.step() {}
    (r.done, r.trace)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let first = args.first().copied().unwrap_or(1);
    let runs = args.get(1).copied().unwrap_or(200);
    let mut claims = 0;
    for seed in first..first + runs {
        let (done, trace) = run(seed);
        // Replay: the same seed, the same run.
        assert_eq!(run(seed).1, trace, "seed {seed} did not replay");
        // The property: no two clients' claims overlap.
        for (i, a) in done.iter().enumerate() {
            for b in &done[i + 1..] {
                assert!(
                    a.0 == b.0 || a.2 <= b.1 || b.2 <= a.1,
                    "seed {seed}: client {} held [{}, {}) and client {} held [{}, {}) ns",
                    a.0,
                    a.1,
                    a.2,
                    b.0,
                    b.1,
                    b.2
                );
            }
        }
        claims += done.len();
    }
    println!(
        "{runs} seeds from {first}: {claims} claims, no overlap, every seed replayed bit for bit"
    );
}
