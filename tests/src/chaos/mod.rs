//! The chaos harness (`cargo run -p lucky-tests --bin chaos`): real servers in network
//! namespaces, real faults (nftables partitions and loss, `SIGSTOP`, `kill -9` and restarts,
//! wall-clock steps through an `LD_PRELOAD` shim), client processes taking locks and writing
//! to a real resource with their fences, and a checker over what they recorded.

pub mod check;
pub mod net;
pub mod proxy;
pub mod svg;

/// `CLOCK_MONOTONIC` in nanoseconds: the one clock every process of the machine shares.
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// `CLOCK_MONOTONIC` nanoseconds for a `std::time::Instant` of this process, whose own clock
/// runs `ppm` fast (negative: slow) under the clock shim: a gap on that clock is
/// `1 + ppm / 1e6` times the real one.
#[allow(clippy::disallowed_methods)] // the harness reads the clock
pub fn mono_of(at: std::time::Instant, ppm: i64) -> u64 {
    let now = std::time::Instant::now();
    let mono = mono_ns();
    let real = |gap: std::time::Duration| {
        (gap.as_nanos() as f64 / (1.0 + ppm as f64 / 1e6)).max(0.0) as u64
    };
    if at >= now {
        mono.saturating_add(real(at - now))
    } else {
        mono.saturating_sub(real(now - at))
    }
}
