//! Table-driven and scenario tests of the RedLock machine: quorum and validity arithmetic,
//! configuration errors, and the behaviours the protocol promises.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use bytes::Bytes;
use lucky_core::redlock::{
    Command, RedLock, RedLockConfig, Reply, Wait, EXTEND_SCRIPT, EXTEND_SHA1, RELEASE_SCRIPT,
    RELEASE_SHA1,
};
use lucky_core::time::drift_allowance;
use lucky_core::{
    BackendError, Decision, Duration, Event, Instant, LockError, LockMachine, LostReason,
    NodeOutcome, State, Tally, UsageError,
};
use lucky_sim::Server;
use lucky_tests::{drain, run_instant, RedisNode};

const TOKEN: [u8; 16] = [0xab; 16];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn at_ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}
fn ok() -> Reply {
    Reply::Status(Bytes::from_static(b"OK"))
}
fn config(n: usize) -> RedLockConfig {
    RedLockConfig::builder()
        .node_count(n)
        .ttl(ms(10_000))
        .wait(Wait::None)
        .build()
        .unwrap()
}

#[test]
fn quorum_table() {
    // (nodes, quorum, failures tolerated)
    for (n, q, f) in [
        (1, 1, 0),
        (2, 2, 0),
        (3, 2, 1),
        (4, 3, 1),
        (5, 3, 2),
        (6, 4, 2),
        (7, 4, 3),
    ] {
        assert_eq!(Tally::majority(n), q, "quorum of {n}");
        let mut t = Tally::new(n, q).unwrap();
        for _ in 0..f {
            t.no();
        }
        assert_eq!(
            t.decision(),
            Decision::Pending,
            "{n} nodes survive {f} failures"
        );
        let mut lost = t;
        lost.no();
        assert_eq!(
            lost.decision(),
            Decision::Lost,
            "{n} nodes lose at {} failures",
            f + 1
        );
        let mut won = Tally::new(n, q).unwrap();
        for _ in 0..q - 1 {
            won.yes();
        }
        assert_eq!(won.decision(), Decision::Pending);
        won.yes();
        assert_eq!(won.decision(), Decision::Won, "won early with {q} of {n}");
    }
}

#[test]
fn drift_and_validity_table() {
    // (ttl ms, ppm, floor ms, drift ns)
    let rows = [
        (10_000, 10_000, 2, 102_000_000u64),
        (30_000, 10_000, 2, 302_000_000),
        (100, 10_000, 2, 3_000_000),
        (1_000, 0, 0, 0),
        (1_000, 1, 0, 1_000),
        (7, 333_333, 0, 2_333_331),
    ];
    for (ttl, ppm, floor, drift) in rows {
        assert_eq!(
            drift_allowance(ms(ttl), ppm, ms(floor)),
            Duration::from_nanos(drift),
            "ttl {ttl} ms, {ppm} ppm, floor {floor} ms"
        );
        let cfg = RedLockConfig::builder()
            .node_count(3)
            .ttl(ms(ttl))
            .drift(ppm, ms(floor))
            .node_timeout(Duration::from_nanos(1))
            .build()
            .unwrap();
        assert_eq!(cfg.validity(), ms(ttl) - Duration::from_nanos(drift));
    }
}

#[test]
fn bad_configuration_is_a_clear_usage_error() {
    let b = || RedLockConfig::builder().node_count(3);
    let no_nodes: [&str; 0] = [];
    let table: Vec<(Result<RedLockConfig, UsageError>, UsageError)> = vec![
        (RedLockConfig::builder().build(), UsageError::NoNodes),
        (
            RedLockConfig::builder().nodes(&no_nodes).build(),
            UsageError::NoNodes,
        ),
        (
            RedLockConfig::builder().nodes(&["a", "b", "a"]).build(),
            UsageError::DuplicateNode {
                first: 0,
                second: 2,
            },
        ),
        (
            RedLockConfig::builder().node_count(300).build(),
            UsageError::TooManyNodes {
                count: 300,
                max: 255,
            },
        ),
        (b().ttl(Duration::ZERO).build(), UsageError::TtlZero),
        (
            b().ttl(Duration::from_secs(400 * 24 * 3600)).build(),
            UsageError::TtlTooLarge {
                ttl: Duration::from_secs(400 * 24 * 3600),
                max: Duration::from_secs(365 * 24 * 3600),
            },
        ),
        (
            b().ttl(Duration::from_micros(1500)).build(),
            UsageError::TtlNotWholeMillis(Duration::from_micros(1500)),
        ),
        (
            b().ttl(ms(2)).build(),
            UsageError::DriftTooLarge {
                drift: Duration::from_micros(2020),
                ttl: ms(2),
            },
        ),
        (
            b().node_timeout(Duration::ZERO).build(),
            UsageError::NodeTimeoutZero,
        ),
        (
            b().ttl(ms(1000)).node_timeout(ms(990)).build(),
            UsageError::NodeTimeoutTooLarge {
                timeout: ms(990),
                validity: ms(988),
            },
        ),
        (
            b().ttl(ms(1000)).auto_extend(Some(ms(0)), None).build(),
            UsageError::BadExtendInterval {
                every: ms(0),
                validity: ms(988),
            },
        ),
    ];
    for (got, want) in table {
        let err = got.expect_err("configuration must be refused");
        assert_eq!(err, want);
        assert!(!err.to_string().is_empty());
    }
    let cfg = config(3);
    assert_eq!(
        RedLock::new(&cfg, b"", &TOKEN, 0).unwrap_err(),
        UsageError::EmptyKey
    );
    assert_eq!(
        RedLock::new(&cfg, &[b'k'; 513], &TOKEN, 0).unwrap_err(),
        UsageError::KeyTooLong { len: 513, max: 512 }
    );
    assert!(RedLock::new(&cfg, &[b'k'; 512], &TOKEN, 0).is_ok());
    assert_eq!(
        RedLock::new(&cfg, b"k", &[1; 8], 0).unwrap_err(),
        UsageError::TokenTooShort { len: 8, min: 16 }
    );
    let prefixed = RedLockConfig::builder()
        .node_count(1)
        .key_prefix("app:")
        .build()
        .unwrap();
    let m = RedLock::new(&prefixed, b"job", &TOKEN, 0).unwrap();
    assert_eq!(&m.key()[..], b"app:job");
}

#[test]
fn even_node_counts_are_allowed_and_need_a_strict_majority() {
    let cfg = config(4);
    assert_eq!(cfg.quorum(), 3);
    let mut nodes = vec![RedisNode::new(); 4];
    nodes[0].put(b"k", b"other", at_ms(60_000).as_nanos());
    nodes[1].put(b"k", b"other", at_ms(60_000).as_nanos());
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(1)).unwrap();
    let events = run_instant(&mut m, &mut nodes, at_ms(1));
    // 2 of 4 is not a majority: a 2-2 split must not be a win for either side.
    assert!(
        matches!(events.as_slice(), [Event::Failed(LockError::Taken { .. })]),
        "{events:?}"
    );
}

#[test]
fn script_sha1_constants_match_the_scripts() {
    assert_eq!(
        sha1_smol::Sha1::from(RELEASE_SCRIPT).digest().to_string(),
        RELEASE_SHA1
    );
    assert_eq!(
        sha1_smol::Sha1::from(EXTEND_SCRIPT).digest().to_string(),
        EXTEND_SHA1
    );
    assert_eq!(
        sha1_smol::Sha1::from(lucky_core::redlock::RELEASE_QUIET_SCRIPT)
            .digest()
            .to_string(),
        lucky_core::redlock::RELEASE_QUIET_SHA1
    );
    use lucky_core::redlock::{
        ACQUIRE_FENCED_SCRIPT, ACQUIRE_FENCED_SHA1, FENCE_SCRIPT, FENCE_SHA1,
    };
    for (script, sha) in [
        (ACQUIRE_FENCED_SCRIPT, ACQUIRE_FENCED_SHA1),
        (FENCE_SCRIPT, FENCE_SHA1),
    ] {
        assert_eq!(sha1_smol::Sha1::from(script).digest().to_string(), sha);
    }
}

#[test]
fn acquires_early_with_a_quorum_and_validity_starts_at_the_first_send() {
    let cfg = config(5);
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(100)).unwrap();
    let (sent, events) = drain(&mut m);
    assert!(events.is_empty());
    assert_eq!(sent.len(), 5);
    for t in &sent {
        assert!(
            matches!(&t.command, Command::Acquire { key, ttl_ms: 10_000, .. } if &key[..] == b"k")
        );
    }
    m.handle_reply(at_ms(101), sent[0].node, sent[0].op, ok());
    m.handle_reply(at_ms(102), sent[3].node, sent[3].op, ok());
    assert!(drain(&mut m).1.is_empty());
    m.handle_reply(at_ms(103), sent[4].node, sent[4].op, ok());
    let (_, events) = drain(&mut m);
    // 10 s ttl, drift 10 000 ppm + 2 ms = 102 ms; counted from the first send at 100 ms.
    assert_eq!(
        events,
        vec![Event::Acquired {
            fence: None,
            valid_until: at_ms(100 + 10_000 - 102)
        }]
    );
    // Late replies from the other two nodes change nothing.
    m.handle_reply(at_ms(104), sent[1].node, sent[1].op, Reply::Nil);
    m.handle_reply(at_ms(104), sent[2].node, sent[2].op, ok());
    assert!(drain(&mut m).1.is_empty());
    assert_eq!(
        m.state(),
        State::Held {
            valid_until: at_ms(9998)
        }
    );
    let outcomes: Vec<_> = m.node_outcomes().cloned().collect();
    assert_eq!(
        outcomes[1],
        NodeOutcome::Pending,
        "the round was decided before node 1 answered"
    );
}

#[test]
fn taken_and_no_quorum_are_told_apart_and_every_node_is_released() {
    let cfg = config(5);
    // Taken: three nodes answer nil.
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (sent, _) = drain(&mut m);
    for t in &sent[..3] {
        m.handle_reply(at_ms(1), t.node, t.op, Reply::Nil);
    }
    let (rel, events) = drain(&mut m);
    // Failure is reported only once the clean-up releases were answered.
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(m.state(), State::Acquiring);
    for t in &rel {
        assert!(m.handle_reply(at_ms(2), t.node, t.op, Reply::Int(0)));
    }
    // ... and the SETs still unanswered (a late grant would need releasing again).
    assert!(drain(&mut m).1.is_empty());
    for t in &sent[3..] {
        assert!(m.handle_reply(at_ms(2), t.node, t.op, Reply::Nil));
    }
    let (_, events) = drain(&mut m);
    let Some(Event::Failed(LockError::Taken { attempts: 1, nodes })) = events.first() else {
        panic!("expected Taken, got {events:?}")
    };
    assert_eq!(m.state(), State::Done);
    assert_eq!(
        nodes.iter().filter(|o| **o == NodeOutcome::Refused).count(),
        3
    );
    assert_eq!(
        rel.len(),
        5,
        "release goes to all nodes, not only those that said OK"
    );
    assert!(rel
        .iter()
        .all(|t| matches!(&t.command, Command::Release { value, .. } if value == m.value())));

    // No quorum: three nodes fail in different ways.
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (sent, _) = drain(&mut m);
    m.handle_reply(
        at_ms(1),
        sent[0].node,
        sent[0].op,
        Reply::Error("READONLY replica".into()),
    );
    m.handle_reply(at_ms(1), sent[1].node, sent[1].op, Reply::Int(7));
    m.handle_reply(
        at_ms(1),
        sent[2].node,
        sent[2].op,
        Reply::Unavailable("refused".into()),
    );
    let (rel, events) = drain(&mut m);
    assert!(events.is_empty(), "{events:?}");
    // Nodes that do not answer the clean-up count as timed out at the per-node timeout.
    assert_eq!(rel.len(), 5);
    m.handle_timeout(at_ms(1) + cfg.node_timeout());
    let (_, events) = drain(&mut m);
    let Some(Event::Failed(err @ LockError::NoQuorum { nodes, .. })) = events.first() else {
        panic!("expected NoQuorum, got {events:?}")
    };
    assert_eq!(
        nodes[0],
        NodeOutcome::Failed(BackendError::ErrorReply("READONLY replica".into()))
    );
    assert!(matches!(
        &nodes[1],
        NodeOutcome::Failed(BackendError::UnexpectedReply { .. })
    ));
    assert!(err.to_string().contains("no quorum"), "{err}");
}

#[test]
fn silent_nodes_time_out_at_the_per_node_timeout() {
    let cfg = RedLockConfig::builder()
        .node_count(3)
        .ttl(ms(10_000))
        .node_timeout(ms(50))
        .wait(Wait::None)
        .build()
        .unwrap();
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (sent, _) = drain(&mut m);
    m.handle_reply(at_ms(1), sent[0].node, sent[0].op, ok());
    assert_eq!(m.poll_timeout(), Some(at_ms(50)));
    m.handle_timeout(at_ms(49));
    assert!(drain(&mut m).1.is_empty());
    m.handle_timeout(at_ms(50));
    let (rel, events) = drain(&mut m);
    assert!(
        events.is_empty(),
        "failure waits for the clean-up: {events:?}"
    );
    assert_eq!(rel.len(), 3);
    // The clean-up is bounded by the per-node timeout too.
    assert_eq!(m.poll_timeout(), Some(at_ms(100)));
    m.handle_timeout(at_ms(100));
    let (_, events) = drain(&mut m);
    assert!(
        matches!(&events[0], Event::Failed(LockError::NoQuorum { nodes, .. })
        if nodes[1] == NodeOutcome::TimedOut && nodes[2] == NodeOutcome::TimedOut)
    );
    // A grant after the timeout is never counted, but the key it took is released again.
    assert!(m.handle_reply(at_ms(101), sent[1].node, sent[1].op, ok()));
    let (again, events) = drain(&mut m);
    assert!(events.is_empty());
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].node, sent[1].node);
    assert!(matches!(&again[0].command, Command::Release { .. }));
}

#[test]
fn quorum_after_validity_is_never_acquired() {
    // ttl 100 ms: validity 97 ms; per-node timeout 90 ms; replies land at 96.9 and 97 ms.
    let cfg = RedLockConfig::builder()
        .node_count(3)
        .ttl(ms(100))
        .node_timeout(ms(96))
        .wait(Wait::None)
        .build()
        .unwrap();
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (sent, _) = drain(&mut m);
    m.handle_reply(at_ms(95), sent[0].node, sent[0].op, ok());
    m.handle_reply(at_ms(97), sent[1].node, sent[1].op, ok());
    let (_, events) = drain(&mut m);
    assert!(
        events.iter().all(|e| !matches!(e, Event::Acquired { .. })),
        "a quorum at or after the per-node deadline must not count: {events:?}"
    );
}

#[test]
fn retries_with_jitter_until_the_wait_deadline_with_fresh_values() {
    let cfg = RedLockConfig::builder()
        .node_count(3)
        .ttl(ms(1_000))
        .wait(Wait::For(ms(1_000)))
        .build()
        .unwrap();
    let mut nodes = vec![RedisNode::new(); 3];
    for n in &mut nodes {
        n.put(b"k", b"holder", at_ms(1_000_000).as_nanos());
    }
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 7).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let mut now = at_ms(0);
    let mut values = Vec::new();
    let mut last = Vec::new();
    for _ in 0..100 {
        values.push(m.value().clone());
        last = run_instant(&mut m, &mut nodes, now);
        match last.last() {
            Some(Event::Retrying { retry_at, .. }) => {
                let delay = *retry_at - now;
                assert!(delay >= ms(50) && delay <= ms(250) || *retry_at == at_ms(1000));
                now = *retry_at;
                m.handle_timeout(now);
            }
            _ => break,
        }
    }
    assert!(
        matches!(last.as_slice(), [Event::Failed(LockError::Taken { attempts, .. })] if *attempts >= 5)
    );
    values.dedup();
    let distinct: std::collections::BTreeSet<_> = values.iter().collect();
    assert_eq!(
        distinct.len(),
        values.len(),
        "each attempt stores a value of its own"
    );
    assert!(now <= at_ms(1_000));
}

#[test]
fn a_split_vote_is_retried_after_a_few_round_trips_once_per_wake() {
    let cfg = RedLockConfig::builder()
        .node_count(5)
        .wait(Wait::Forever)
        .build()
        .unwrap();
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 7).unwrap();
    m.acquire(at_ms(0)).unwrap();
    // Each attempt: nodes 3 and 4 grant, 0-2 are held by others; all replies after 2 ms.
    let attempt = |m: &mut RedLock, start: Instant| -> Instant {
        let (mut sent, _) = drain(m);
        assert_eq!(sent.len(), 5, "one SET per node");
        let now = start + ms(2);
        sent.reverse(); // the grants arrive first
        for t in sent {
            let reply = if t.node.index() >= 3 {
                ok()
            } else {
                Reply::Nil
            };
            m.handle_reply(now, t.node, t.op, reply);
        }
        let (released, events) = drain(m);
        assert_eq!(released.len(), 5, "a failed attempt releases every node");
        match events.as_slice() {
            [Event::Retrying { retry_at, .. }] => *retry_at,
            other => panic!("expected a retry, got {other:?}"),
        }
    };
    // The first failure retries after one to three round trips (2-6 ms after the reply).
    let retry = attempt(&mut m, at_ms(0));
    assert!(retry >= at_ms(4) && retry <= at_ms(8), "{retry:?}");
    m.handle_timeout(retry);
    // The second, without a release announced in between, waits the usual 50-250 ms.
    let again = attempt(&mut m, retry);
    let delay = again - (retry + ms(2));
    assert!(delay >= ms(50) && delay <= ms(250), "{delay:?}");
    // A release is announced before that retry: the next split is retried quickly again.
    let woken = retry + ms(12);
    assert!(woken < again);
    m.wake(woken);
    let quick = attempt(&mut m, woken);
    assert!(
        quick >= woken + ms(4) && quick <= woken + ms(8),
        "{quick:?}"
    );
    // Refused everywhere (the lock held by one owner): the usual delay.
    let woken = Instant::from_nanos(quick.as_nanos() - 1_000_000);
    m.wake(woken);
    let (sent, _) = drain(&mut m);
    for t in sent {
        m.handle_reply(woken + ms(2), t.node, t.op, Reply::Nil);
    }
    let (_, events) = drain(&mut m);
    assert!(
        matches!(events.as_slice(), [Event::Retrying { retry_at, .. }] if *retry_at >= woken + ms(52)),
        "{events:?}"
    );
}

#[test]
fn wake_retries_at_once() {
    let cfg = RedLockConfig::builder()
        .node_count(1)
        .wait(Wait::Forever)
        .build()
        .unwrap();
    let mut nodes = vec![RedisNode::new()];
    nodes[0].put(b"k", b"holder", at_ms(1_000_000).as_nanos());
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 7).unwrap();
    m.acquire(at_ms(0)).unwrap();
    assert!(matches!(
        run_instant(&mut m, &mut nodes, at_ms(0))[..],
        [Event::Retrying { .. }]
    ));
    nodes[0] = RedisNode::new();
    m.wake(at_ms(1));
    assert!(matches!(
        run_instant(&mut m, &mut nodes, at_ms(1))[..],
        [Event::Acquired { .. }]
    ));
}

#[test]
fn extend_moves_the_deadline_and_never_resurrects() {
    let cfg = config(3);
    let mut nodes = vec![RedisNode::new(); 3];
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    run_instant(&mut m, &mut nodes, at_ms(0));
    m.extend(at_ms(5_000)).unwrap();
    let ev = run_instant(&mut m, &mut nodes, at_ms(5_000));
    assert_eq!(
        ev,
        vec![Event::Extended {
            valid_until: at_ms(5_000 + 9_898)
        }]
    );
    // Let the key expire on two nodes (another node's clock ran fast): extend must fail, and
    // must not bring the key back.
    nodes[0] = RedisNode::new();
    nodes[1] = RedisNode::new();
    m.extend(at_ms(6_000)).unwrap();
    let ev = run_instant(&mut m, &mut nodes, at_ms(6_000));
    assert!(
        matches!(&ev[..], [Event::ExtendFailed { valid_until, .. }] if *valid_until == at_ms(14_898))
    );
    assert!(
        nodes[0].get(at_ms(6_000).as_nanos(), b"k").is_none(),
        "an expired key is never resurrected"
    );
    assert!(
        nodes[2].get(at_ms(6_000).as_nanos(), b"k").is_some(),
        "a failed extend deletes nothing"
    );
    // Lost exactly at the old deadline, not a nanosecond earlier.
    assert_eq!(m.poll_timeout(), Some(at_ms(14_898)));
    m.handle_timeout(Instant::from_nanos(at_ms(14_898).as_nanos() - 1));
    assert!(drain(&mut m).1.is_empty());
    m.handle_timeout(at_ms(14_898));
    let (rel, ev) = drain(&mut m);
    assert!(
        matches!(
            &ev[..],
            [Event::Lost {
                reason: LostReason::ExtendFailed(_)
            }]
        ),
        "{ev:?}"
    );
    assert_eq!(rel.len(), 3, "a lost lock is cleaned up on every node");
    assert!(m.extend(at_ms(14_898)).is_err());
}

#[test]
fn auto_extend_keeps_the_lock_and_stops_at_the_cap() {
    let cfg = RedLockConfig::builder()
        .node_count(3)
        .ttl(ms(3_000))
        .auto_extend(None, Some(2))
        .wait(Wait::None)
        .build()
        .unwrap();
    let mut nodes = vec![RedisNode::new(); 3];
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let mut all = run_instant(&mut m, &mut nodes, at_ms(0));
    while let Some(t) = m.poll_timeout() {
        m.handle_timeout(t);
        all.extend(run_instant(&mut m, &mut nodes, t));
        if matches!(all.last(), Some(Event::Released { .. })) {
            break;
        }
    }
    let kinds: Vec<&str> = all
        .iter()
        .map(|e| match e {
            Event::Acquired { .. } => "acquired",
            Event::Extended { .. } => "extended",
            Event::Lost {
                reason: LostReason::Expired,
            } => "lost",
            Event::Released { .. } => "released",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["acquired", "extended", "extended", "lost", "released"]
    );
    // Extensions at 1 s and 2 s; the last one holds until 2 s + 3 s - 32 ms.
    assert_eq!(
        all[2],
        Event::Extended {
            valid_until: at_ms(2_000 + 2_968)
        }
    );
}

#[test]
fn cancel_mid_acquire_releases_every_node_touched() {
    let cfg = config(5);
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (sent, _) = drain(&mut m);
    m.handle_reply(at_ms(1), sent[0].node, sent[0].op, ok());
    m.release(at_ms(2)).unwrap();
    let (rel, _) = drain(&mut m);
    assert_eq!(rel.len(), 5);
    // The late OK of the acquire round does not count. Its node's release is still in flight:
    // the machine waits for that answer (deleted: nothing more to do), and for the other
    // SETs' answers.
    m.handle_reply(at_ms(3), sent[1].node, sent[1].op, ok());
    let (again, _) = drain(&mut m);
    assert!(again.is_empty(), "{again:?}");
    for t in &sent[2..] {
        m.handle_reply(at_ms(3), t.node, t.op, Reply::Nil);
    }
    for t in &rel {
        m.handle_reply(
            at_ms(3),
            t.node,
            t.op,
            Reply::Int(if t.node.0 < 2 { 1 } else { 0 }),
        );
    }
    let (_, ev) = drain(&mut m);
    let [Event::Released { nodes }] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        nodes.iter().filter(|o| **o == NodeOutcome::Granted).count(),
        2
    );
    assert_eq!(m.state(), State::Done);
}

#[test]
fn release_is_bounded_idempotent_and_misuse_is_an_error() {
    let cfg = config(3);
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    assert_eq!(m.release(at_ms(0)), Err(UsageError::NotHeld));
    assert_eq!(m.extend(at_ms(0)), Err(UsageError::NotHeld));
    let mut nodes = vec![RedisNode::new(); 3];
    m.acquire(at_ms(0)).unwrap();
    assert_eq!(m.acquire(at_ms(0)), Err(UsageError::Busy));
    run_instant(&mut m, &mut nodes, at_ms(0));
    m.release(at_ms(1)).unwrap();
    let (rel, _) = drain(&mut m);
    m.release(at_ms(1)).unwrap(); // second call while releasing: no new commands
    assert!(drain(&mut m).0.is_empty());
    // Every release reaches its node, but only node 0's reply comes back.
    for t in &rel {
        nodes[t.node.index()].apply(at_ms(2).as_nanos(), &t.command);
    }
    m.handle_reply(at_ms(2), rel[0].node, rel[0].op, Reply::Int(1));
    // Two nodes never answer: the release ends at the per-node timeout (500 ms).
    assert_eq!(m.poll_timeout(), Some(at_ms(501)));
    m.handle_timeout(at_ms(501));
    let (_, ev) = drain(&mut m);
    let [Event::Released { nodes: outcome }] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(outcome[1], NodeOutcome::TimedOut);
    m.release(at_ms(600)).unwrap();
    assert!(
        matches!(&drain(&mut m).1[..], [Event::Released { .. }]),
        "idempotent"
    );
    // The machine can acquire again after it is done.
    m.acquire(at_ms(700)).unwrap();
    assert!(matches!(
        run_instant(&mut m, &mut nodes, at_ms(700))[..],
        [Event::Acquired { .. }]
    ));
}

#[test]
fn time_never_goes_backwards() {
    let cfg = config(1);
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(1_000)).unwrap();
    let (sent, _) = drain(&mut m);
    // A reply stamped earlier than the send: the driver's clock stepped back by 990 ms. The
    // step is reported, and the round's start moves back with it, so the lock counts from
    // the earlier reading (never from the later one).
    m.handle_reply(at_ms(10), sent[0].node, sent[0].op, ok());
    let (_, ev) = drain(&mut m);
    assert_eq!(
        ev,
        vec![
            Event::TimeWentBack {
                by: ms(990),
                valid_until: None
            },
            Event::Acquired {
                fence: None,
                valid_until: at_ms(10 + 9_898)
            }
        ]
    );
}

#[test]
fn a_late_grant_of_an_abandoned_attempt_is_released_again() {
    let cfg = config(3);
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (sent, _) = drain(&mut m);
    m.release(at_ms(1)).unwrap(); // cancel: releases go out while the SETs are in flight
    let (rel, _) = drain(&mut m);
    assert_eq!(rel.len(), 3);
    // The release overtook the SET on node 2 (it deleted nothing), which then granted it:
    // release node 2 again.
    m.handle_reply(at_ms(2), sent[2].node, sent[2].op, ok());
    assert!(
        drain(&mut m).0.is_empty(),
        "decided on node 2's release answer"
    );
    m.handle_reply(at_ms(2), rel[2].node, rel[2].op, Reply::Int(0));
    let (again, _) = drain(&mut m);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].node, sent[2].node);
    assert!(matches!(&again[0].command, Command::Release { value, .. } if value == m.value()));
    // A refusal needs nothing; a duplicate of the late grant is ignored.
    m.handle_reply(at_ms(2), sent[1].node, sent[1].op, Reply::Nil);
    m.handle_reply(at_ms(2), sent[2].node, sent[2].op, ok());
    assert!(drain(&mut m).0.is_empty());
}

#[test]
fn fenced_acquisition_writes_the_fence_back_to_a_quorum_before_it_counts() {
    let cfg = RedLockConfig::builder()
        .node_count(3)
        .ttl(ms(10_000))
        .wait(Wait::None)
        .fencing(true)
        .build()
        .unwrap();
    let mut nodes = vec![RedisNode::new(); 3];
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    let mut fences = Vec::new();
    // Two acquisitions in the same instant, then two 100 ms later, then one more: the node
    // answers max(counter, its clock in µs), so fences follow the clock and the counter breaks
    // ties.
    for t_ms in [0, 0, 100, 100, 200] {
        let t = at_ms(t_ms);
        m.acquire(t).unwrap();
        let ev = run_instant(&mut m, &mut nodes, t);
        let Some(Event::Acquired { fence: Some(f), .. }) = ev.first() else {
            panic!("{ev:?}")
        };
        fences.push(f.get());
        m.release(t).unwrap();
        run_instant(&mut m, &mut nodes, t);
    }
    assert_eq!(fences, [1, 2, 100_001, 100_002, 200_001]);
}
