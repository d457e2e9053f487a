//! The in-memory backend against its floors, in the same run: an uncontended acquire+release
//! cycle of `lucky::memory` against `tokio::sync::Mutex` lock+unlock (the floor) and against
//! the lease machine alone driven by hand on the table (no driver, no runtime); 32 tasks on
//! distinct names against 32 tokio mutexes; and the hand-off of one name between 8 tasks that
//! hold it 1 ms (wait p99, max, and fewest/most acquisitions per task). A counting allocator
//! reports heap allocations per cycle in steady state. Run: `cargo run --release -p
//! lucky-tests --bin memory-bench` (`LUCKY_BENCH_SECS`, default 3). The last line is a
//! machine-readable summary.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a benchmark reads the clock

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lucky::lease::{LeaseConfig, LeaseLock};
use lucky::memory::{Memory, Table};
use lucky::{LockMachine, Output};
use lucky_tests::bench::{handoff, secs};

/// Counts allocations, to show what a cycle costs the heap.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// A counting wrapper around the system allocator: the one unsafe block a benchmark needs.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `cycle` for the bench time; (ns per cycle, allocations per cycle).
async fn serial<F, Fut>(mut cycle: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..10_000 {
        cycle().await; // warm-up
    }
    let (end, start, a0) = (
        Instant::now() + secs(),
        Instant::now(),
        ALLOCS.load(Ordering::Relaxed),
    );
    let mut n = 0u64;
    while Instant::now() < end {
        for _ in 0..1_000 {
            cycle().await;
        }
        n += 1_000;
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    (ns, (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / n as f64)
}

/// The lease machine alone: acquire and release driven by hand on the table.
fn machine_cycle(m: &mut LeaseLock, table: &Table, now: &mut u64) {
    *now += 1_000;
    let t = lucky::Instant::from_nanos(*now);
    m.acquire(t).unwrap();
    drive(m, table, t);
    m.release(t).unwrap();
    drive(m, table, t);
}

fn drive(m: &mut LeaseLock, table: &Table, now: lucky::Instant) {
    while let Some(out) = m.poll_output() {
        if let Output::Transmit(x) = out {
            let reply = table.execute(now, &x.command);
            m.handle_reply(now, x.node, x.op, reply);
        }
    }
}

async fn parallel(tasks: usize, lucky: bool) -> f64 {
    let locks = Memory::new();
    let end = Instant::now() + secs();
    let mutexes: Vec<Arc<tokio::sync::Mutex<()>>> = (0..tasks).map(|_| Arc::default()).collect();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (locks, m) = (locks.clone(), mutexes[i].clone());
            tokio::spawn(async move {
                let name = format!("bench/{i}");
                let mut n = 0u64;
                while Instant::now() < end {
                    for _ in 0..100 {
                        if lucky {
                            let g = locks.lock(&name).no_wait().await.unwrap();
                            g.release().await.unwrap();
                        } else {
                            drop(m.lock().await);
                        }
                    }
                    n += 100;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    total as f64 / secs().as_secs_f64()
}

fn main() {
    lucky_tests::bench::runtime().block_on(run());
}

async fn run() {
    let locks = Memory::builder()
        .auto_extend(false)
        .connect()
        .await
        .unwrap();
    let (lucky_ns, lucky_allocs) = serial(|| async {
        let g = locks.lock("bench").no_wait().await.unwrap();
        g.release().await.unwrap();
    })
    .await;
    let mutex = tokio::sync::Mutex::new(());
    let (floor_ns, floor_allocs) = serial(|| async {
        drop(mutex.lock().await);
    })
    .await;
    let cfg = LeaseConfig::builder().build().unwrap();
    let table = Table::new();
    let mut m = LeaseLock::new(&cfg, b"bench", &[7; 16], 7).unwrap();
    let mut now = 0u64;
    let (machine_ns, machine_allocs) = serial(|| {
        machine_cycle(&mut m, &table, &mut now);
        std::future::ready(())
    })
    .await;
    println!(
        "uncontended cycle: lucky::memory {lucky_ns:.0} ns ({lucky_allocs:.1} allocations), machine alone {machine_ns:.0} ns ({machine_allocs:.1}), tokio Mutex floor {floor_ns:.0} ns ({floor_allocs:.1})"
    );
    let (lucky_rate, floor_rate) = (parallel(32, true).await, parallel(32, false).await);
    println!(
        "32 tasks, distinct names: lucky::memory {lucky_rate:.0}/s, tokio Mutex {floor_rate:.0}/s ({:.3}x)",
        lucky_rate / floor_rate
    );
    let h = handoff(Memory::new(), "handoff".into(), 8).await;
    println!(
        "hand-off, 8 tasks, hold 1 ms: {} acquisitions, wait p99 {:.2} ms, max {:.2} ms, fairness {:.2}",
        h.n,
        h.p99.as_secs_f64() * 1e3,
        h.max.as_secs_f64() * 1e3,
        h.fairness
    );
    println!(
        "summary cycle_ns={lucky_ns:.0} floor_ns={floor_ns:.0} cycle_vs_floor={:.1} machine_ns={machine_ns:.0} allocs_per_cycle={lucky_allocs:.1} machine_allocs_per_cycle={machine_allocs:.1} parallel_vs_floor={:.3} handoff_acquisitions={} handoff_p99_ms={:.2} handoff_max_ms={:.2} fairness={:.2}",
        lucky_ns / floor_ns,
        lucky_rate / floor_rate,
        h.n,
        h.p99.as_secs_f64() * 1e3,
        h.max.as_secs_f64() * 1e3,
        h.fairness
    );
}
