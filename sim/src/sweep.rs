//! Many seeds of many scenarios on every core.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::scenario::{Injected, Scenario};

/// Totals for one scenario.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Runs made.
    pub runs: u64,
    /// Runs that failed (an unexpected violation, or a required one not found).
    pub failures: u64,
    /// Runs that broke an assumption on purpose and found the violation it allows.
    pub expected_found: u64,
    /// Events processed.
    pub events: u64,
    /// Time spent in runs, summed over threads (ns).
    pub busy_ns: u128,
}

/// A failed run and why.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The scenario.
    pub scenario: &'static str,
    /// The seed.
    pub seed: u64,
    /// What went wrong.
    pub why: String,
}

/// The result of a sweep.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// Per scenario, in the order given.
    pub stats: Vec<(&'static str, Stats)>,
    /// Failed runs, ordered by scenario then seed.
    pub failures: Vec<Failure>,
    /// Wall time of the whole sweep (ns).
    pub wall_ns: u128,
}

/// Runs seeds `start..start + seeds` of each scenario with `bug` (of a costly scenario among
/// others, the first [`Scenario::sweep_seeds`] of them; swept alone, every seed), on
/// `threads` threads, calling `progress(done, total)` after every run.
#[allow(clippy::disallowed_methods)] // timing for the report only; runs never see a clock
pub fn sweep(
    scenarios: &[&'static Scenario],
    start: u64,
    seeds: u64,
    bug: Option<Injected>,
    threads: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Sweep {
    // Run k of the sweep is run k - offset[i] of scenario i, where
    // offset[i] <= k < offset[i + 1].
    let mut offset = vec![0u64];
    for sc in scenarios {
        let n = if scenarios.len() == 1 {
            seeds
        } else {
            sc.sweep_seeds(seeds)
        };
        let next = offset[offset.len() - 1] + n;
        offset.push(next);
    }
    let total = offset[scenarios.len()];
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let stats = Mutex::new(vec![Stats::default(); scenarios.len()]);
    let failures = Mutex::new(Vec::new());
    let t0 = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let mut local = vec![Stats::default(); scenarios.len()];
                let mut fails = Vec::new();
                loop {
                    // Hand out work in small batches: one scenario, consecutive seeds.
                    let first = next.fetch_add(16, Ordering::Relaxed);
                    if first >= total {
                        break;
                    }
                    for k in first..(first + 16).min(total) {
                        let si = offset.partition_point(|&f| f <= k) - 1;
                        let seed = start + (k - offset[si]);
                        let sc = scenarios[si];
                        let t = std::time::Instant::now();
                        let out = sc.run(seed, bug);
                        let st = &mut local[si];
                        st.busy_ns += t.elapsed().as_nanos();
                        st.runs += 1;
                        st.events += out.report.events;
                        if out.expected_found() {
                            st.expected_found += 1;
                        }
                        if !out.passed() {
                            st.failures += 1;
                            let why = match out.report.unexpected().next() {
                                Some(v) => v.to_string(),
                                None => "the assumption it breaks produced no violation".into(),
                            };
                            fails.push(Failure {
                                scenario: sc.name,
                                seed,
                                why,
                            });
                        }
                        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                        progress(d, total);
                    }
                }
                let mut all = stats.lock().unwrap_or_else(|e| e.into_inner());
                for (a, l) in all.iter_mut().zip(local) {
                    a.runs += l.runs;
                    a.failures += l.failures;
                    a.expected_found += l.expected_found;
                    a.events += l.events;
                    a.busy_ns += l.busy_ns;
                }
                failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(fails);
            });
        }
    });
    let wall_ns = t0.elapsed().as_nanos();
    let stats = stats.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    let order = |name: &str| scenarios.iter().position(|s| s.name == name).unwrap_or(0);
    failures.sort_by_key(|f| (order(f.scenario), f.seed));
    Sweep {
        stats: scenarios.iter().map(|s| s.name).zip(stats).collect(),
        failures,
        wall_ns,
    }
}
