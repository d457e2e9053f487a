//! proptest strategies over Lucky's inputs (feature `proptest`), for your own invariant suites:
//! configurations, replies including malformed ones, and time steps.

use alloc::string::String;
use proptest::prelude::*;

use crate::redlock::{RedLockConfig, Reply};
use crate::settings::{Retry, Wait};
use crate::time::Duration;

/// Valid RedLock configurations: 1 to 7 nodes, ttl 10 ms to 60 s, drift 0 to 5 %, every wait
/// mode, with and without auto-extension, with and without fencing.
pub fn redlock_config() -> impl Strategy<Value = RedLockConfig> {
    (
        1usize..=7,
        10u64..=60_000,
        0u32..=50_000,
        0u64..=3,
        prop_oneof![
            Just(Wait::None),
            (0u64..=5_000).prop_map(|ms| Wait::For(Duration::from_millis(ms))),
            Just(Wait::Forever)
        ],
        proptest::option::of(1u32..=5),
        proptest::option::of(proptest::option::of(0u32..=4)),
        (0u64..=100, 0u64..=100),
        any::<bool>(),
    )
        .prop_filter_map(
            "drift or timeouts leave no validity",
            |(n, ttl_ms, ppm, floor_ms, wait, max_attempts, auto, (delay, jitter), fencing)| {
                let mut b = RedLockConfig::builder()
                    .node_count(n)
                    .ttl(Duration::from_millis(ttl_ms))
                    .drift(ppm, Duration::from_millis(floor_ms))
                    .wait(wait)
                    .fencing(fencing)
                    .retry(Retry {
                        delay: Duration::from_millis(delay),
                        jitter: Duration::from_millis(jitter),
                    });
                if let Some(m) = max_attempts {
                    b = b.max_attempts(m);
                }
                if let Some(cap) = auto {
                    b = b.auto_extend(None, cap);
                }
                b.build().ok()
            },
        )
}

/// Replies a Redis node might send, weighted towards the well-formed ones, including error
/// replies, wrong types, out-of-range integers, garbage strings and transport failures.
pub fn redis_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        4 => Just(Reply::Status("OK".into())),
        3 => Just(Reply::Nil),
        3 => Just(Reply::Int(1)),
        3 => Just(Reply::Int(0)),
        1 => any::<i64>().prop_map(Reply::Int),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| Reply::Status(v.into())),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| Reply::Bulk(v.into())),
        1 => Just(Reply::Error("ERR something went wrong".into())),
        1 => Just(Reply::Error("READONLY You can't write against a read only replica.".into())),
        1 => any::<String>().prop_map(Reply::Other),
        1 => Just(Reply::Unavailable("connection reset by peer".into())),
        2 => (0i64..1_000).prop_map(Reply::Int),
        1 => Just(Reply::Int(-1)),
    ]
}

/// Time steps: mostly sub-millisecond to tens of milliseconds, sometimes zero, sometimes
/// seconds (long enough to cross a ttl).
pub fn time_step() -> impl Strategy<Value = Duration> {
    prop_oneof![
        1 => Just(Duration::ZERO),
        6 => (0u64..20_000_000).prop_map(Duration::from_nanos),
        2 => (0u64..2_000).prop_map(Duration::from_millis),
        1 => (0u64..120).prop_map(Duration::from_secs),
    ]
}

/// Valid etcd lock configurations: ttl 10 ms to 60 s, drift 0 to 5 %, every wait mode.
pub fn etcd_config() -> impl Strategy<Value = crate::etcd::EtcdConfig> {
    (
        10u64..=60_000,
        0u32..=50_000,
        0u64..=3,
        prop_oneof![
            Just(Wait::None),
            (0u64..=5_000).prop_map(|ms| Wait::For(Duration::from_millis(ms))),
            Just(Wait::Forever)
        ],
        (0u64..=100, 0u64..=100),
    )
        .prop_filter_map(
            "drift or timeouts leave no validity",
            |(ttl_ms, ppm, floor_ms, wait, (delay, jitter))| {
                crate::etcd::EtcdConfig::builder()
                    .ttl(Duration::from_millis(ttl_ms))
                    .drift(ppm, Duration::from_millis(floor_ms))
                    .wait(wait)
                    .retry(Retry {
                        delay: Duration::from_millis(delay),
                        jitter: Duration::from_millis(jitter),
                    })
                    .build()
                    .ok()
            },
        )
}

/// Replies an etcd cluster might send to any request, well-formed or not: leases with odd
/// ttls, revisions in and out of range, lease-not-found, errors and transport failures.
pub fn etcd_reply() -> impl Strategy<Value = crate::etcd::Reply> {
    use crate::etcd::Reply as R;
    let rev = prop_oneof![4 => 1i64..100, 1 => any::<i64>()];
    let key = proptest::collection::vec(any::<u8>(), 0..12).prop_map(bytes::Bytes::from);
    prop_oneof![
        2 => (any::<i64>(), 0u64..120_000).prop_map(|(id, ms)| R::Lease { id, ttl: Duration::from_millis(ms) }),
        3 => (0u64..120_000).prop_map(|ms| R::KeepAlive { ttl: Duration::from_millis(ms) }),
        3 => (rev.clone(), rev.clone(), rev.clone()).prop_map(|(c, o, r)| R::Taken {
            create_revision: c,
            owner_revision: o,
            revision: r
        }),
        3 => (proptest::option::of(rev.clone()), proptest::option::of(key), rev)
            .prop_map(|(mine, predecessor, revision)| R::Queue { mine, predecessor, revision }),
        2 => Just(R::Deleted),
        1 => Just(R::Compacted),
        2 => Just(R::Done),
        1 => Just(R::LeaseNotFound),
        1 => any::<String>().prop_map(R::Error),
        1 => Just(R::Unavailable("connection reset by peer".into())),
    ]
}
