//! Embedding a lock machine in an event loop that is not tokio: one thread, a hand-written
//! loop with a timer queue, three lease-record machines contending for one lock on the
//! in-memory table, every step of the drive contract (`lucky_core` crate docs, steps 1-7)
//! marked where it happens. Replies travel with a fixed latency through the loop's own queue,
//! as they would through a network.
//!
//! Run: `cargo run -p lucky --features memory --example poll_loop`
#![allow(clippy::disallowed_methods)] // a driver owns the clock

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use lucky::lease::{LeaseConfig, LeaseLock, Reply};
use lucky::memory::Table;
use lucky::{Duration, Event, Instant, LockMachine, NodeId, OpId, Output, Wait};

/// What the loop has scheduled: a reply arriving, or a machine's own deadline.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Reply { machine: usize, op: u64, seq: u64 },
    Timeout { machine: usize, at: u64 },
    Release { machine: usize },
}

fn main() -> Result<(), lucky::UsageError> {
    let latency = Duration::from_micros(300);
    let cfg = LeaseConfig::builder()
        .ttl(Duration::from_millis(500))
        .wait(Wait::For(Duration::from_secs(5)))
        .build()?;
    // 1. Build: a validated config, a name, a token unique to each machine, a jitter seed.
    let mut machines: Vec<LeaseLock> = (0..3u8)
        .map(|i| LeaseLock::new(&cfg, b"report", &[i + 1; 16], u64::from(i)))
        .collect::<Result<_, _>>()?;
    let table = Table::new();
    // The loop's own clock: virtual nanoseconds, moved to each event's time.
    let mut now = Instant::from_nanos(1);
    let mut queue: BinaryHeap<Reverse<(u64, Due)>> = BinaryHeap::new();
    let mut in_flight: Vec<(u64, usize, OpId, Reply)> = Vec::new();
    let mut seq = 0u64;
    let mut held_by: Option<usize> = None;
    let mut turns = [0u32; 3];

    // 3. Ask: every machine wants the lock at once.
    for m in &mut machines {
        m.acquire(now)?;
    }
    let mut pending: Vec<usize> = (0..machines.len()).collect();
    loop {
        // 4. Drain the outputs of every machine that got an input, after *every* input.
        let batch = std::mem::take(&mut pending);
        for i in batch {
            while let Some(out) = machines[i].poll_output() {
                match out {
                    Output::Transmit(t) => {
                        // The table answers at once; the answer reaches the machine a
                        // latency later, through the loop's queue.
                        let reply = table.execute(now, &t.command);
                        seq += 1;
                        let at = (now + latency).as_nanos();
                        in_flight.push((seq, i, t.op, reply));
                        queue.push(Reverse((
                            at,
                            Due::Reply {
                                machine: i,
                                op: t.op.0,
                                seq,
                            },
                        )));
                    }
                    Output::Event(Event::Acquired { fence, valid_until }) => {
                        assert!(held_by.is_none(), "two holders");
                        held_by = Some(i);
                        turns[i] += 1;
                        println!(
                            "{:>8.3} ms  machine {i} holds the lock (fence {:?}) until {:.3} ms",
                            now.as_nanos() as f64 / 1e6,
                            fence.map(|f| f.get()),
                            valid_until.as_nanos() as f64 / 1e6
                        );
                        // Hold it 20 ms, then let go.
                        let at = (now + Duration::from_millis(20)).as_nanos();
                        queue.push(Reverse((at, Due::Release { machine: i })));
                    }
                    Output::Event(Event::Released { .. }) => {
                        if held_by == Some(i) {
                            held_by = None;
                        }
                        // 7. Hints: tell the others the lock may be free.
                        for (j, m) in machines.iter_mut().enumerate() {
                            if j != i {
                                m.wake(now);
                                pending.push(j);
                            }
                        }
                        if turns[i] < 3 {
                            machines[i].acquire(now)?;
                            pending.push(i);
                        }
                    }
                    Output::Event(e) => println!(
                        "{:>8.3} ms  machine {i}: {e:?}",
                        now.as_nanos() as f64 / 1e6
                    ),
                }
            }
            // 6. Ask when to wake it next.
            if let Some(at) = machines[i].poll_timeout() {
                queue.push(Reverse((
                    at.as_nanos(),
                    Due::Timeout {
                        machine: i,
                        at: at.as_nanos(),
                    },
                )));
            }
        }
        let Some(Reverse((at, due))) = queue.pop() else {
            break;
        };
        // 2. Pass time in: the loop's clock moves to the event's time (never backwards).
        now = Instant::from_nanos(at.max(now.as_nanos()));
        match due {
            Due::Reply {
                machine, seq: s, ..
            } => {
                let k = in_flight.iter().position(|(q, ..)| *q == s).unwrap_or(0);
                let (_, m, op, reply) = in_flight.swap_remove(k);
                // 5. Feed the reply, stamped with the time it was read.
                machines[m].handle_reply(now, NodeId(0), op, reply);
                pending.push(machine);
            }
            Due::Timeout { machine, at } => {
                // A stale wake-up (the deadline moved) is harmless: the machine judges `now`.
                if machines[machine].poll_timeout().map(|t| t.as_nanos()) == Some(at) {
                    machines[machine].handle_timeout(now);
                    pending.push(machine);
                }
            }
            Due::Release { machine } => {
                machines[machine].release(now)?;
                pending.push(machine);
            }
        }
        if turns.iter().all(|&t| t >= 3) && held_by.is_none() && queue.is_empty() {
            break;
        }
    }
    println!("turns per machine: {turns:?}");
    assert_eq!(turns, [3, 3, 3]);
    Ok(())
}
