//! Cost of one RedLock acquire+release cycle through the machine at N=5, with no IO: time and
//! heap allocations per cycle. Run: `cargo bench -p lucky-tests --bench core_cycle`.
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use lucky_core::redlock::{Command, RedLock, RedLockConfig, Reply};
use lucky_core::{Event, Instant, LockMachine, Output};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One cycle: acquire on 5 nodes, all say OK, release on 5, all say 1.
fn cycle(m: &mut RedLock, t: &mut u64) {
    *t += 1_000;
    m.acquire(Instant::from_nanos(*t)).expect("acquire");
    let mut acquired = false;
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(tx) => {
                let reply = match tx.command {
                    Command::Acquire { .. } => Reply::Status(Bytes::from_static(b"OK")),
                    _ => Reply::Int(1),
                };
                m.handle_reply(Instant::from_nanos(*t), tx.node, tx.op, reply);
            }
            Output::Event(Event::Acquired { .. }) => acquired = true,
            Output::Event(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(acquired);
    m.release(Instant::from_nanos(*t)).expect("release");
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(tx) => {
                m.handle_reply(Instant::from_nanos(*t), tx.node, tx.op, Reply::Int(1));
            }
            Output::Event(e) => {
                black_box(e);
            }
        }
    }
}

fn measure(label: &str, iters: u64, mut f: impl FnMut()) {
    for _ in 0..iters / 10 {
        f();
    }
    let a0 = ALLOCS.load(Relaxed);
    let b0 = BYTES.load(Relaxed);
    let start = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    let elapsed = start.elapsed();
    let allocs = (ALLOCS.load(Relaxed) - a0) as f64 / iters as f64;
    let bytes = (BYTES.load(Relaxed) - b0) as f64 / iters as f64;
    let ns = elapsed.as_nanos() as f64 / iters as f64;
    println!("{label:<44} {ns:>8.0} ns/cycle {allocs:>6.2} allocs/cycle {bytes:>7.0} B/cycle");
}

fn main() {
    let nodes = ["n1", "n2", "n3", "n4", "n5"];
    let cfg = RedLockConfig::builder()
        .nodes(&nodes)
        .build()
        .expect("config");
    let iters = std::env::var("LUCKY_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500_000);
    println!("RedLock machine, N=5, acquire+release, no IO, {iters} cycles");
    let mut m = RedLock::new(&cfg, b"jobs/nightly", &[7; 16], 1).expect("machine");
    let mut t = 0;
    measure("reused machine (one per lock name)", iters, || {
        cycle(&mut m, &mut t)
    });
    let mut t = 0;
    measure("fresh machine per acquisition", iters, || {
        let mut m = RedLock::new(&cfg, b"jobs/nightly", &[7; 16], 1).expect("machine");
        cycle(&mut m, &mut t);
    });
    // The floor: building the same ten commands (key and value clones) and nothing else.
    let key = Bytes::from_static(b"jobs/nightly");
    let value = Bytes::from(vec![b'a'; 35]);
    measure("floor: build 10 commands, no protocol", iters, || {
        for _ in 0..5 {
            black_box(Command::Acquire {
                key: key.clone(),
                value: value.clone(),
                ttl_ms: 30_000,
            });
            black_box(Command::Release {
                key: key.clone(),
                value: value.clone(),
                notify: true,
            });
        }
    });
}
