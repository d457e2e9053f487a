//! Many locks in one process: a burst of `LUCKY_SCALE_LOCKS` (default 10 000) acquisitions on
//! distinct names, all started at once with `no_wait`, on the five Redis nodes (fenced, the
//! default, and unfenced) and on the etcd member of `scripts/services.sh start`; against the
//! floor, the raw commands of the same acquisitions (Redis fenced: the take script on every
//! node, then the fence write-back; unfenced: `SET NX PX`) sent concurrently over one
//! connection per server, one task per name. Reports failures, burst time, memory per
//! held lock (heap growth once the held locks settled, a second after the burst; also at the
//! burst's end, and the resident set's growth), CPU per held lock per second while
//! auto-extension keeps them (`LUCKY_SCALE_HOLD_SECS`, default 0: skipped), and what is left
//! on the servers after the process released everything and closed its client.
//! `LUCKY_SCALE_BACKENDS` picks the backends (default `redis,redis-unfenced,etcd`), `LUCKY_SCALE_TTL_SECS`
//! the ttl (default 6), `LUCKY_SCALE_ROUNDS` the rounds (default 3; the summary gives the
//! median times, the total failures and the worst memory and leftovers). `LUCKY_SCALE_SIZES=1`
//! also prints which allocation sizes the held locks' bytes are in.
//! Run: `cargo run --release -p lucky-tests --bin scale-bench`. The last line is a summary.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a benchmark reads the clock

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use lucky::etcd::Etcd;
use lucky::redis::Redis;
use lucky::Guard;
use lucky_tests::bench::process_cpu;
use lucky_tests::servers::redis_urls;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The client's bound on first attempts in flight: `LUCKY_SCALE_MAX_IN_FLIGHT`, else the
/// default.
fn max_in_flight() -> usize {
    env_num(
        "LUCKY_SCALE_MAX_IN_FLIGHT",
        lucky::DEFAULT_MAX_IN_FLIGHT as u64,
    ) as usize
}

/// The system allocator, counting the bytes live on the heap: memory per held lock is the
/// growth of that count while the locks are held (exact, and repeatable across rounds, where
/// the resident set only grows the first time).
struct Counting;

static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Live allocations by size, in 8-byte classes up to 4 KiB (the last class holds the rest):
/// where the bytes per held lock go (`LUCKY_SCALE_SIZES=1` prints the largest shares).
static SIZES: [std::sync::atomic::AtomicI64; 513] =
    [const { std::sync::atomic::AtomicI64::new(0) }; 513];

fn size_class(size: usize) -> usize {
    size.div_ceil(8).min(512)
}

fn count(size: usize, by: i64) {
    SIZES[size_class(size)].fetch_add(by, std::sync::atomic::Ordering::Relaxed);
}

/// Live allocations per size class now.
fn sizes() -> Vec<i64> {
    SIZES
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .collect()
}

/// Prints the size classes that grew most in bytes between `before` and now, per held lock.
fn print_size_shares(before: &[i64], held: f64) {
    let now = sizes();
    let mut grew: Vec<(usize, i64)> = now
        .iter()
        .zip(before)
        .enumerate()
        .map(|(class, (a, b))| (class, a - b))
        .filter(|(_, d)| *d > 0)
        .collect();
    grew.sort_by_key(|&(class, d)| std::cmp::Reverse(d * class as i64));
    for (class, d) in grew.into_iter().take(16) {
        let top = class * 8;
        println!(
            "  allocations of {}-{top} bytes: {:.2} per held lock, about {:.0} bytes",
            top.saturating_sub(7),
            d as f64 / held,
            (d * top as i64) as f64 / held
        );
    }
}

// SAFETY: every call goes to `System` unchanged; only a counter is updated beside it. The
// one unsafe item of the workspace, in a benchmark binary no user links.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
            count(layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        count(layout.size(), -1);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new) };
        if !p.is_null() {
            LIVE.fetch_add(
                new as i64 - layout.size() as i64,
                std::sync::atomic::Ordering::Relaxed,
            );
            count(layout.size(), -1);
            count(new, 1);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes live on the heap now.
fn heap() -> i64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// The resident set of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// What one backend's burst showed.
#[derive(Debug, Default)]
struct Burst {
    floor: Duration,
    took: Duration,
    failed: usize,
    first_error: Option<String>,
    bytes_per_lock: f64,
    /// The same, read the moment the burst's last acquisition resolved (commands of the
    /// burst still in flight).
    bytes_at_end: f64,
    /// Resident set growth per held lock (the first round's is the honest one).
    rss_per_lock: f64,
    /// took / floor, of this round (of the rounds: their median).
    ratio: f64,
    cpu_per_lock_sec: Option<Duration>,
    lost_while_held: usize,
    left: usize,
}

impl Burst {
    /// The median burst and floor times of `rounds`; the worst of everything else (failures,
    /// memory, CPU, losses, leftovers).
    fn median(mut rounds: Vec<Burst>) -> Burst {
        if rounds.is_empty() {
            return Burst::default();
        }
        let mid = rounds.len() / 2;
        let mut took: Vec<Duration> = rounds.iter().map(|b| b.took).collect();
        let mut floor: Vec<Duration> = rounds.iter().map(|b| b.floor).collect();
        took.sort();
        floor.sort();
        let first_error = rounds.iter_mut().find_map(|b| b.first_error.take());
        Burst {
            floor: floor[mid],
            took: took[mid],
            failed: rounds.iter().map(|b| b.failed).sum(),
            first_error,
            bytes_per_lock: rounds.iter().map(|b| b.bytes_per_lock).fold(0.0, f64::max),
            bytes_at_end: rounds.iter().map(|b| b.bytes_at_end).fold(0.0, f64::max),
            rss_per_lock: rounds[0].rss_per_lock,
            ratio: {
                let mut r: Vec<f64> = rounds.iter().map(|b| b.ratio).collect();
                r.sort_by(f64::total_cmp);
                r[mid]
            },
            cpu_per_lock_sec: rounds.iter().filter_map(|b| b.cpu_per_lock_sec).max(),
            lost_while_held: rounds.iter().map(|b| b.lost_while_held).sum(),
            left: rounds.iter().map(|b| b.left).max().unwrap_or(0),
        }
    }

    fn line(&self, backend: &str, n: usize) -> String {
        format!(
            "{backend}: {n} no_wait acquisitions at once: {} failed{}, {:?} ({:.2}x the floor's {:?}); {:.0} heap bytes per held lock ({:.0} at the burst's end, {:.0} resident){}; lock keys and leases left on the server after release and close: {}",
            self.failed,
            self.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})")),
            self.took,
            self.ratio,
            self.floor,
            self.bytes_per_lock,
            self.bytes_at_end,
            self.rss_per_lock,
            self.cpu_per_lock_sec.map_or(String::new(), |c| format!(
                ", CPU {c:?} per held lock per second of auto-extension, {} lost while held",
                self.lost_while_held
            )),
            self.left
        )
    }
}

const REDIS: &str = "redis (5 nodes, fenced, vs the fenced scripts' floor)";
const REDIS_UNFENCED: &str = "redis (5 nodes, unfenced, vs the SET NX PX floor)";

/// A pause of the etcd member while the locks are held (`LUCKY_SCALE_ETCD_STALL_MS`; the
/// member's pid from `LUCKY_SCALE_ETCD_PID`, else `scripts/services.sh`'s pid file): the
/// session misses keepalives, and every held lock reads its ownership again once the member
/// is back. The hold that follows (`LUCKY_SCALE_HOLD_SECS`) counts the locks lost.
struct Stall {
    pid: String,
    for_ms: u64,
}

impl Stall {
    fn from_env() -> Option<Stall> {
        let for_ms = env_num("LUCKY_SCALE_ETCD_STALL_MS", 0);
        if for_ms == 0 {
            return None;
        }
        let pid = std::env::var("LUCKY_SCALE_ETCD_PID").unwrap_or_else(|_| {
            std::fs::read_to_string("/tmp/lucky-services/etcd.pid")
                .expect("the etcd member's pid (LUCKY_SCALE_ETCD_PID)")
                .trim()
                .to_owned()
        });
        Some(Stall { pid, for_ms })
    }

    async fn run(self) {
        let signal = |sig: &str| {
            let ok = std::process::Command::new("kill")
                .args([sig, &self.pid])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} {}", self.pid);
        };
        signal("-STOP");
        tokio::time::sleep(Duration::from_millis(self.for_ms)).await;
        signal("-CONT");
        println!("etcd member {} stopped for {} ms", self.pid, self.for_ms);
    }
}

/// How long held locks settle after a burst before their memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// Starts every acquisition of `names` at once on `lock`; returns the guards, the failures
/// (with the first error) and the time until all had resolved.
async fn burst<F, Fut>(names: &[String], lock: F) -> (Vec<Guard>, usize, Option<String>, Duration)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Guard, lucky::Error>> + Send + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = names
        .iter()
        .map(|n| tokio::spawn(lock(n.clone())))
        .collect();
    let (mut guards, mut failed, mut first) = (Vec::with_capacity(names.len()), 0, None);
    for h in handles {
        match h.await.unwrap() {
            Ok(g) => guards.push(g),
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (guards, failed, first, start.elapsed())
}

/// Holds `guards` for `secs` while auto-extension runs; the process CPU per lock per second
/// and how many were lost meanwhile.
async fn hold(guards: &[Guard], secs: u64) -> (Option<Duration>, usize) {
    if secs == 0 || guards.is_empty() {
        return (None, 0);
    }
    let cpu0 = process_cpu();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let lost = guards.iter().filter(|g| !g.is_held()).count();
    let cpu = process_cpu().zip(cpu0).map(|(b, a)| {
        b.saturating_sub(a) / u32::try_from(guards.len() as u64 * secs).unwrap_or(u32::MAX)
    });
    (cpu, lost)
}

async fn release_all(guards: Vec<Guard>) {
    let handles: Vec<_> = guards
        .into_iter()
        .map(|g| tokio::spawn(async move { g.release().await }))
        .collect();
    let n = handles.len();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let d = done.load(std::sync::atomic::Ordering::Relaxed);
                if d < n {
                    eprintln!("release_all: {d} of {n} releases answered after another 30 s");
                }
            }
        })
    };
    for h in handles {
        let _ = h.await;
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    watch.abort();
}

/// Lucky's side of a burst on `locks`: every name at once with `no_wait`, held `hold_secs`,
/// released, the client closed. Fills everything of a [`Burst`] but the floor and `left`.
async fn lucky_phase<L>(locks: L, n: usize, hold_secs: u64, stall: Option<Stall>) -> Burst
where
    L: lucky::Locker + Clone + 'static,
{
    let pid = std::process::id();
    let names: Vec<String> = (0..n).map(|i| format!("scale/{pid}/{i}")).collect();
    let ttl = Duration::from_secs(env_num("LUCKY_SCALE_TTL_SECS", 6));
    let (before, heap_before, sizes_before) = (rss(), heap(), sizes());
    let (guards, failed, first_error, took) = burst(&names, |name| {
        let l = locks.clone();
        async move { l.acquire(&name, ttl, lucky::WaitFor::No).await }
    })
    .await;
    let held = guards.len().max(1) as f64;
    let bytes_at_end = (heap() - heap_before).max(0) as f64 / held;
    // Held, once the burst's stragglers (answers of nodes past the quorum, their buffers)
    // are in: well before the first renewal round (at a third of the ttl).
    tokio::time::sleep(SETTLE.min(ttl / 4)).await;
    let bytes_per_lock = (heap() - heap_before).max(0) as f64 / held;
    if std::env::var("LUCKY_SCALE_SIZES").is_ok_and(|v| v == "1") {
        print_size_shares(&sizes_before, held);
    }
    let rss_per_lock = rss().saturating_sub(before) as f64 / held;
    if let Some(stall) = stall {
        stall.run().await;
    }
    let (cpu_per_lock_sec, lost_while_held) = hold(&guards, hold_secs).await;
    release_all(guards).await;
    locks.close(Duration::from_secs(30)).await;
    Burst {
        took,
        failed,
        first_error,
        bytes_per_lock,
        bytes_at_end,
        rss_per_lock,
        cpu_per_lock_sec,
        lost_while_held,
        ..Burst::default()
    }
}

/// A name's fenced acquisition as raw commands, the floor of Lucky's default (fenced)
/// acquisition: the fenced take script on every node at once, then the fence write-back on
/// the nodes that granted, as RedLock sends them; one task per name, as Lucky's.
async fn raw_fenced(
    conns: Vec<redis::aio::MultiplexedConnection>,
    windows: Vec<std::sync::Arc<tokio::sync::Semaphore>>,
    name: String,
    ttl: Duration,
) {
    let fence_key = format!("{name}{}", lucky_core::redlock::FENCE_KEY_SUFFIX);
    let takes = conns.iter().zip(&windows).map(|(c, w)| {
        let (mut c, w) = (c.clone(), w.clone());
        let (name, fence_key) = (&name, &fence_key);
        async move {
            let _slot = w.acquire_owned().await.unwrap();
            let counter: i64 = redis::cmd("EVALSHA")
                .arg(lucky_core::redlock::ACQUIRE_FENCED_SHA1)
                .arg(2)
                .arg(name)
                .arg(fence_key)
                .arg("t")
                .arg(ttl.as_millis() as u64)
                .query_async(&mut c)
                .await
                .unwrap();
            counter
        }
    });
    let counters = join_all(takes).await;
    let fence = counters.iter().copied().max().unwrap_or(0) + 1;
    let writes = conns
        .iter()
        .zip(&windows)
        .zip(&counters)
        .filter(|(_, c)| **c >= 0)
        .map(|((c, w), _)| {
            let (mut c, w) = (c.clone(), w.clone());
            let (name, fence_key) = (&name, &fence_key);
            async move {
                let _slot = w.acquire_owned().await.unwrap();
                let _: redis::Value = redis::cmd("EVALSHA")
                    .arg(lucky_core::redlock::FENCE_SHA1)
                    .arg(2)
                    .arg(name)
                    .arg(fence_key)
                    .arg("t")
                    .arg(fence)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        });
    join_all(writes).await;
}

/// Runs `futures` concurrently in the caller's task (no task per command, as Lucky's driver
/// polls a round's replies) and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (slot, done) in pending.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *done = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Redis, fenced (Lucky's default) or not, against the raw commands of the same
/// acquisitions: the two fenced scripts, or `SET NX PX`.
async fn redis_burst(n: usize, hold_secs: u64, ttl: Duration, round: usize, fenced: bool) -> Burst {
    let urls = redis_urls();
    let pid = std::process::id();
    let mut conns = Vec::new();
    for u in &urls {
        let c = redis::Client::open(u.as_str()).unwrap();
        let mut conn = c.get_multiplexed_async_connection().await.unwrap();
        // The floor waits for its answers: a server's pause must not fail it (the redis
        // crate's default gives up after 500 ms).
        conn.set_response_timeout(Duration::from_secs(60));
        conns.push(conn);
    }
    // The floor: each name's raw commands on every node, all at once, one connection per node.
    let names: Vec<String> = (0..n)
        .map(|i| format!("scale-floor/{pid}/{round}/{i}"))
        .collect();
    for c in &mut conns {
        for script in [
            lucky_core::redlock::ACQUIRE_FENCED_SCRIPT,
            lucky_core::redlock::FENCE_SCRIPT,
        ] {
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(script)
                .query_async(c)
                .await
                .unwrap();
        }
    }
    // Past 20 000 names, unpaced SETs time out inside the redis crate (scripts past a few
    // thousand): then at most `LUCKY_SCALE_FLOOR_WINDOW` (default 256, as etcd's floor) per
    // connection are in flight.
    let window = if n > 20_000 || fenced {
        env_num("LUCKY_SCALE_FLOOR_WINDOW", 256) as usize
    } else {
        tokio::sync::Semaphore::MAX_PERMITS
    };
    let windows: Vec<_> = conns
        .iter()
        .map(|_| std::sync::Arc::new(tokio::sync::Semaphore::new(window)))
        .collect();
    let start = Instant::now();
    let fenced_floor: Vec<_> = names
        .iter()
        .filter(|_| fenced)
        .map(|name| {
            tokio::spawn(raw_fenced(
                conns.clone(),
                windows.clone(),
                name.clone(),
                ttl,
            ))
        })
        .collect();
    for f in fenced_floor {
        f.await.unwrap();
    }
    let sets: Vec<_> = names
        .iter()
        .filter(|_| !fenced)
        .map(|name| {
            let (conns, windows, name) = (conns.clone(), windows.clone(), name.clone());
            tokio::spawn(async move {
                let sets = conns.into_iter().zip(windows).map(|(mut c, w)| {
                    let name = name.clone();
                    async move {
                        let _slot = w.acquire_owned().await.unwrap();
                        let _: redis::Value = redis::cmd("SET")
                            .arg(&name)
                            .arg("t")
                            .arg("NX")
                            .arg("PX")
                            .arg(ttl.as_millis() as u64)
                            .query_async(&mut c)
                            .await
                            .unwrap();
                    }
                });
                join_all(sets).await;
            })
        })
        .collect();
    for s in sets {
        s.await.unwrap();
    }
    let floor = start.elapsed();

    let locks = Redis::builder(&urls)
        .ttl(ttl)
        .fencing(fenced)
        .max_in_flight(max_in_flight())
        .connect()
        .await
        .unwrap();
    let lucky = lucky_phase(locks, n, hold_secs, None).await;
    let mut left = 0;
    for c in &mut conns {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*scale/{pid}/*"))
            .query_async(c)
            .await
            .unwrap();
        // Fence counters stay by design (fences never restart); lock keys must not.
        left += keys.iter().filter(|k| !k.ends_with(":lucky-fence")).count();
        // The floor's own fence counters go.
        let floor_keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("scale-floor/{pid}/{round}/*"))
            .query_async(c)
            .await
            .unwrap();
        for chunk in floor_keys.chunks(1000) {
            let _: i64 = redis::cmd("DEL").arg(chunk).query_async(c).await.unwrap();
        }
    }
    Burst {
        floor,
        left,
        ratio: lucky.took.as_secs_f64() / floor.as_secs_f64().max(1e-9),
        ..lucky
    }
}

/// Compacts etcd's history up to now, as a maintained cluster does on its own (Kubernetes
/// every five minutes): without it, rounds of 100 000 keys slow every later write several
/// times over, the floor's and Lucky's alike.
async fn compact(raw: &mut etcd_client::Client) {
    let rev = raw
        .get("scale-compact", None)
        .await
        .unwrap()
        .header()
        .map_or(0, |h| h.revision());
    let _ = raw
        .compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await;
}

async fn etcd_burst(n: usize, hold_secs: u64, ttl: Duration, _round: usize) -> Burst {
    let endpoint = std::env::var("LUCKY_ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned());
    let mut raw = etcd_client::Client::connect([&endpoint], None)
        .await
        .unwrap();
    let pid = std::process::id();
    let leases_before = raw.leases().await.unwrap().leases().len();
    compact(&mut raw).await;
    // The floor: the taking Txn of every name on one shared lease, one client, at most 256
    // in flight (all at once, etcd refuses with "too many requests" once its applied index
    // lags 5 000 entries behind).
    let lease = raw.lease_grant(60, None).await.unwrap().id();
    let start = Instant::now();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let txns: Vec<_> = (0..n)
        .map(|i| {
            let mut c = raw.clone();
            let slots = slots.clone();
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.unwrap();
                let key = format!("scale-floor/{pid}/{i}/{lease:x}");
                let t = Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        "",
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                c.txn(t).await.unwrap();
            })
        })
        .collect();
    for t in txns {
        t.await.unwrap();
    }
    let floor = start.elapsed();
    raw.lease_revoke(lease).await.unwrap();

    compact(&mut raw).await;
    let locks = Etcd::builder([&endpoint])
        .ttl(ttl)
        .max_in_flight(max_in_flight())
        .connect()
        .await
        .unwrap();
    let lucky = lucky_phase(locks, n, hold_secs, Stall::from_env()).await;
    let keys = raw
        .get(
            format!("scale/{pid}/"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    let leases = raw
        .leases()
        .await
        .unwrap()
        .leases()
        .len()
        .saturating_sub(leases_before);
    println!("etcd after release and close: {keys} keys under scale/{pid}/, {leases} more leases than before the run");
    Burst {
        floor,
        left: usize::try_from(keys).unwrap_or(0) + leases,
        ratio: lucky.took.as_secs_f64() / floor.as_secs_f64().max(1e-9),
        ..lucky
    }
}

fn main() {
    lucky_tests::bench::runtime().block_on(run());
}

async fn run() {
    let n = env_num("LUCKY_SCALE_LOCKS", 10_000) as usize;
    let hold_secs = env_num("LUCKY_SCALE_HOLD_SECS", 0);
    let ttl = Duration::from_secs(env_num("LUCKY_SCALE_TTL_SECS", 6));
    println!(
        "many locks in one process: {n} names, ttl {ttl:?}, max_in_flight {}",
        max_in_flight()
    );
    // LUCKY_SCALE_BACKENDS: which to run (default all three): `redis` (fenced, Lucky's
    // default), `redis-unfenced`, `etcd`.
    let list = std::env::var("LUCKY_SCALE_BACKENDS")
        .unwrap_or_else(|_| "redis,redis-unfenced,etcd".into());
    let backends: Vec<&str> = list.split(',').map(str::trim).collect();
    let on = |b: &str| backends.contains(&b);
    // Rounds of floor then Lucky, one backend after the other: the servers' own pauses
    // (fsync, compaction) swing single bursts by 3x, so the medians are reported.
    let rounds = env_num("LUCKY_SCALE_ROUNDS", 3).max(1) as usize;
    let (mut rs, mut us, mut es) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        if on("redis") {
            let b = redis_burst(n, hold_secs, ttl, round, true).await;
            println!("round {round}: {}", b.line(REDIS, n));
            rs.push(b);
        }
        if on("redis-unfenced") {
            let b = redis_burst(n, hold_secs, ttl, round, false).await;
            println!("round {round}: {}", b.line(REDIS_UNFENCED, n));
            us.push(b);
        }
        if on("etcd") {
            let b = etcd_burst(n, hold_secs, ttl, round).await;
            println!("round {round}: {}", b.line("etcd (1 member)", n));
            es.push(b);
        }
    }
    let (r, u, e) = (Burst::median(rs), Burst::median(us), Burst::median(es));
    if on("redis") {
        println!("median of {rounds}: {}", r.line(REDIS, n));
    }
    if on("redis-unfenced") {
        println!("median of {rounds}: {}", u.line(REDIS_UNFENCED, n));
    }
    if on("etcd") {
        println!("median of {rounds}: {}", e.line("etcd (1 member)", n));
    }
    println!(
        "summary locks={n} redis_failed={} redis_burst_ms={:.0} redis_floor_ms={:.0} redis_vs_floor={:.2} redis_bytes_per_lock={:.0} redis_left={} redis_unfenced_failed={} redis_unfenced_burst_ms={:.0} redis_unfenced_floor_ms={:.0} redis_unfenced_vs_floor={:.2} redis_unfenced_bytes_per_lock={:.0} etcd_failed={} etcd_burst_ms={:.0} etcd_floor_ms={:.0} etcd_vs_floor={:.2} etcd_bytes_per_lock={:.0} etcd_left={}",
        r.failed,
        r.took.as_secs_f64() * 1e3,
        r.floor.as_secs_f64() * 1e3,
        r.ratio,
        r.bytes_per_lock,
        r.left,
        u.failed,
        u.took.as_secs_f64() * 1e3,
        u.floor.as_secs_f64() * 1e3,
        u.ratio,
        u.bytes_per_lock,
        e.failed,
        e.took.as_secs_f64() * 1e3,
        e.floor.as_secs_f64() * 1e3,
        e.ratio,
        e.bytes_per_lock,
        e.left
    );
}
