//! The drive contract, item by item, as an independent embedder found it: each test is the
//! exact sequence of calls that once broke it (late fenced grants never released, deadlines
//! lengthened by a clock step back, names colliding with Lucky's own keys, configurations that
//! cannot work, a write-back timeout reported as "taken", misrouted replies counted).
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use lucky_core::etcd::{Command as EtcdCommand, EtcdConfig, EtcdLock, Reply as EtcdReply};
use lucky_core::redlock::{Command, RedLock, RedLockConfig, Reply, Retry, Wait};
use lucky_core::{
    Duration, Event, Instant, LockError, LockMachine, NodeId, NodeOutcome, OpId, Output, State,
    Tally, Transmit, UsageError,
};
use lucky_tests::drain;

const TOKEN: [u8; 16] = [0x5a; 16];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn at_ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}
fn ok() -> Reply {
    Reply::Status("OK".into())
}
fn releases(sent: &[Transmit<Command>]) -> Vec<(NodeId, bytes::Bytes)> {
    sent.iter()
        .filter_map(|t| match &t.command {
            Command::Release { value, .. } => Some((t.node, value.clone())),
            _ => None,
        })
        .collect()
}
fn plain(n: usize) -> RedLockConfig {
    RedLockConfig::builder()
        .node_count(n)
        .ttl(ms(10_000))
        .wait(Wait::None)
        .build()
        .unwrap()
}
fn fenced(n: usize) -> RedLockConfig {
    RedLockConfig::builder()
        .node_count(n)
        .ttl(ms(10_000))
        .wait(Wait::None)
        .fencing(true)
        .retry(Retry {
            delay: ms(1),
            jitter: Duration::ZERO,
        })
        .build()
        .unwrap()
}

/// A fenced one-shot try on three nodes that the nodes `refusing` answer "taken" (a fenced
/// refusal, `-1`): the machine, the SETs it sent and the clean-up releases that followed.
fn refused_try(refusing: &[usize]) -> (RedLock, Vec<Transmit<Command>>, Vec<Transmit<Command>>) {
    let mut m = RedLock::new(&fenced(3), b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (sent, _) = drain(&mut m);
    for &i in refusing {
        assert!(m.handle_reply(at_ms(1), sent[i].node, sent[i].op, Reply::Int(-1)));
    }
    let (cleanup, _) = drain(&mut m);
    (m, sent, cleanup)
}

/// Item 1: a fenced grant is an integer, and a late one must be released like `+OK`.
#[test]
fn a_late_fenced_grant_is_released() {
    let (mut m, sent, cleanup) = refused_try(&[1, 2]);
    assert_eq!(
        releases(&cleanup).len(),
        3,
        "the failed attempt releases every node"
    );
    // Node 0's SET was overtaken by its release and granted late: the machine waits for
    // that release's answer ...
    assert!(m.handle_reply(
        at_ms(2),
        sent[0].node,
        sent[0].op,
        Reply::Int(1_700_000_000_000_000)
    ));
    assert!(drain(&mut m).0.is_empty());
    // ... which says it deleted nothing (it ran first): release node 0 again.
    let rel0 = cleanup.iter().find(|t| t.node == NodeId(0)).unwrap();
    assert!(m.handle_reply(at_ms(3), rel0.node, rel0.op, Reply::Int(0)));
    let (again, ev) = drain(&mut m);
    assert_eq!(releases(&again), vec![(NodeId(0), m.value().clone())]);
    assert!(ev.is_empty(), "Failed waits for the second release: {ev:?}");
}

/// The same late grant, when the release answers that it deleted our key: the release ran
/// after the SET (a value is written by one SET per node), so nothing more is sent.
#[test]
fn a_late_grant_whose_release_deleted_it_needs_nothing_more() {
    let (mut m, sent, cleanup) = refused_try(&[1, 2]);
    assert!(m.handle_reply(at_ms(2), sent[0].node, sent[0].op, Reply::Int(5)));
    for t in &cleanup {
        let deleted = if t.node == NodeId(0) { 1 } else { 0 };
        m.handle_reply(at_ms(3), t.node, t.op, Reply::Int(deleted));
    }
    let (more, ev) = drain(&mut m);
    assert!(more.is_empty(), "{more:?}");
    assert!(matches!(ev[..], [Event::Failed(_)]), "{ev:?}");
}

/// Item 2a: every abandoned SET is remembered, not only the last one per node.
#[test]
fn every_abandoned_set_of_a_node_is_remembered() {
    let cfg = RedLockConfig::builder()
        .node_count(3)
        .ttl(ms(10_000))
        .wait(Wait::Forever)
        .node_timeout(ms(10))
        .retry(Retry {
            delay: ms(1),
            jitter: Duration::ZERO,
        })
        .build()
        .unwrap();
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (first, _) = drain(&mut m);
    let first_value = m.value().clone();
    // Node 0 stays silent through two attempts; the others refuse.
    for t in &first[1..] {
        m.handle_reply(at_ms(1), t.node, t.op, Reply::Nil);
    }
    drain(&mut m);
    m.handle_timeout(at_ms(2)); // the retry
    let (second, _) = drain(&mut m);
    let second: Vec<_> = second
        .into_iter()
        .filter(|t| matches!(t.command, Command::Acquire { .. }))
        .collect();
    for t in &second[1..] {
        m.handle_reply(at_ms(3), t.node, t.op, Reply::Nil);
    }
    drain(&mut m);
    // The first attempt's SET on node 0 is granted late: released with the first value.
    assert!(m.handle_reply(at_ms(4), first[0].node, first[0].op, ok()));
    let (again, _) = drain(&mut m);
    assert_eq!(releases(&again), vec![(NodeId(0), first_value)]);
}

/// Item 2b: a SET still pending when the round is won is remembered; granted after the
/// lock's release overtook it, it is released again (and the release waits for that answer).
#[test]
fn a_set_pending_when_the_round_is_won_is_released_after_the_release() {
    let cfg = plain(3);
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (sent, _) = drain(&mut m);
    m.handle_reply(at_ms(1), sent[0].node, sent[0].op, ok());
    m.handle_reply(at_ms(1), sent[1].node, sent[1].op, ok());
    let (_, ev) = drain(&mut m);
    assert!(matches!(ev[0], Event::Acquired { .. }));
    m.release(at_ms(2)).unwrap();
    let (rel, _) = drain(&mut m);
    let by_node = |n: u16| rel.iter().find(|t| t.node == NodeId(n)).unwrap();
    // The release reached node 2 before the SET: nothing to delete there.
    m.handle_reply(at_ms(3), NodeId(2), by_node(2).op, Reply::Int(0));
    // Then the SET lands on node 2 and is granted: release it again.
    assert!(m.handle_reply(at_ms(3), sent[2].node, sent[2].op, ok()));
    let (again, _) = drain(&mut m);
    assert_eq!(releases(&again), vec![(NodeId(2), m.value().clone())]);
    for n in [0, 1] {
        m.handle_reply(at_ms(3), NodeId(n), by_node(n).op, Reply::Int(1));
    }
    let (_, ev) = drain(&mut m);
    assert!(
        ev.is_empty(),
        "Released waits for the second release: {ev:?}"
    );
    m.handle_reply(at_ms(4), again[0].node, again[0].op, Reply::Int(1));
    let (_, ev) = drain(&mut m);
    assert!(
        matches!(&ev[..], [Event::Released { nodes }] if nodes[2] == NodeOutcome::Granted),
        "{ev:?}"
    );
}

/// Item 4: a clock glitch forward, then the true time: the lock counts from the earlier
/// reading, and the step is reported.
#[test]
fn a_clock_step_back_never_lengthens_a_lock() {
    let cfg = plain(1);
    let mut m = RedLock::new(&cfg, b"k", &TOKEN, 0).unwrap();
    m.handle_timeout(at_ms(3_600_000));
    m.acquire(at_ms(1_000)).unwrap();
    let (sent, ev) = drain(&mut m);
    assert!(
        matches!(ev[..], [Event::TimeWentBack { by, valid_until: None }] if by == ms(3_599_000))
    );
    m.handle_reply(at_ms(1_001), sent[0].node, sent[0].op, ok());
    let (_, ev) = drain(&mut m);
    let [Event::Acquired { valid_until, .. }] = ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(valid_until, at_ms(1_000) + cfg.validity());

    // A held lock's deadline moves back with the step.
    m.handle_timeout(at_ms(1_500));
    drain(&mut m);
    m.handle_timeout(at_ms(1_200));
    let (_, ev) = drain(&mut m);
    let expect = at_ms(1_000 + 9_898 - 300);
    assert_eq!(
        ev,
        vec![Event::TimeWentBack {
            by: ms(300),
            valid_until: Some(expect)
        }]
    );
    assert_eq!(
        m.state(),
        State::Held {
            valid_until: expect
        }
    );
}

/// Item 5: no lock name can be a fence counter's key.
#[test]
fn names_cannot_collide_with_lucky_keys() {
    let cfg = fenced(3);
    let err = RedLock::new(&cfg, b"x:lucky-fence", &TOKEN, 0).unwrap_err();
    assert!(matches!(err, UsageError::ReservedName { .. }), "{err}");
    assert!(err.to_string().contains("reserves"), "{err}");
    // With a prefix the rule applies to the whole key.
    let cfg = RedLockConfig::builder()
        .node_count(1)
        .key_prefix("app:")
        .build()
        .unwrap();
    assert!(RedLock::new(&cfg, b"y:lucky-fence", &TOKEN, 0).is_err());
    assert!(RedLock::new(&cfg, b"y:lucky-fence:1", &TOKEN, 0).is_ok());
}

/// Item 6: configurations that cannot work are refused with a message saying what would.
#[test]
fn configurations_that_cannot_work_are_usage_errors() {
    let b = || RedLockConfig::builder().node_count(3).ttl(ms(1_000));
    let spin = b()
        .retry(Retry {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        })
        .wait(Wait::Forever)
        .build()
        .unwrap_err();
    assert_eq!(spin, UsageError::RetrySpins);
    assert!(spin.to_string().contains("at least 1 ms"), "{spin}");
    // One attempt needs no delay.
    assert!(b()
        .retry(Retry {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        })
        .wait(Wait::None)
        .build()
        .is_ok());
    assert_eq!(
        b().max_attempts(0).build().unwrap_err(),
        UsageError::MaxAttemptsZero
    );
    let drift = b().drift(999_999, Duration::ZERO).build().unwrap_err();
    assert!(matches!(drift, UsageError::DriftTooLarge { .. }), "{drift}");
    assert!(
        drift.to_string().contains("lower the drift bound"),
        "{drift}"
    );
    let cfg = b().build().unwrap();
    let big = vec![7u8; 1 << 20];
    assert!(matches!(
        RedLock::new(&cfg, b"k", &big, 0).unwrap_err(),
        UsageError::TokenTooLong { len: 1_048_576, .. }
    ));
    let etcd = EtcdConfig::builder()
        .ttl(ms(2_000))
        .drift(600_000, Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(etcd, UsageError::DriftTooLarge { .. }));
}

/// Item 7: a write-back round that times out is "no quorum", never "taken": nobody refused.
#[test]
fn a_write_back_timeout_is_not_taken() {
    let mut m = RedLock::new(&fenced(5), b"k", &TOKEN, 0).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (sent, _) = drain(&mut m);
    for t in &sent[..3] {
        m.handle_reply(at_ms(1), t.node, t.op, Reply::Int(10));
    }
    let (fence, _) = drain(&mut m);
    assert_eq!(fence.len(), 3);
    assert!(fence
        .iter()
        .all(|t| matches!(t.command, Command::Fence { .. })));
    // Two write-backs succeed, one times out (an overloaded node): no quorum of three.
    m.handle_reply(at_ms(2), fence[0].node, fence[0].op, Reply::Int(1));
    m.handle_reply(at_ms(2), fence[1].node, fence[1].op, Reply::Int(1));
    m.handle_timeout(at_ms(2) + m.config().node_timeout());
    let (cleanup, _) = drain(&mut m);
    for t in &cleanup {
        m.handle_reply(at_ms(600), t.node, t.op, Reply::Int(1));
    }
    // The failure also waits for the two SETs still unanswered (bounded by the timeout).
    assert!(drain(&mut m).1.is_empty());
    for t in &sent[3..] {
        assert!(m.handle_reply(at_ms(601), t.node, t.op, Reply::Int(-1)));
    }
    let (_, ev) = drain(&mut m);
    let [Event::Failed(err)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert!(matches!(err, LockError::NoQuorum { .. }), "{err}");
}

/// Item 8: a tally validates at construction and ignores votes beyond its voters.
#[test]
fn a_tally_validates_and_never_panics() {
    assert_eq!(
        Tally::new(1, 2).unwrap_err(),
        UsageError::BadQuorum { n: 1, quorum: 2 }
    );
    assert!(Tally::new(3, 0).is_err());
    let mut t = Tally::new(1, 1).unwrap();
    assert!(t.yes());
    assert!(!t.yes(), "a second vote of one voter is refused");
    assert!(!t.no());
    assert_eq!((t.yes_votes(), t.no_votes()), (1, 0));
}

/// Contract: a reply routed to the wrong machine is not used, and says so.
#[test]
fn misrouted_replies_are_detected() {
    let cfg = fenced(3);
    let mut a = RedLock::new(&cfg, b"a", &[1; 16], 1).unwrap();
    let mut b = RedLock::new(&cfg, b"b", &[2; 16], 2).unwrap();
    a.acquire(at_ms(0)).unwrap();
    b.acquire(at_ms(0)).unwrap();
    let (sa, _) = drain(&mut a);
    let (sb, _) = drain(&mut b);
    let ids_a: Vec<OpId> = sa.iter().map(|t| t.op).collect();
    assert!(sb.iter().all(|t| !ids_a.contains(&t.op)), "op ids overlap");
    // b's reply fed to a: not used, nothing happens.
    assert!(!a.handle_reply(at_ms(1), sb[0].node, sb[0].op, Reply::Int(5)));
    assert!(a.poll_output().is_none());
    assert!(a.handle_reply(at_ms(1), sa[0].node, sa[0].op, Reply::Int(5)));
    // A duplicate is not used either.
    assert!(!a.handle_reply(at_ms(1), sa[0].node, sa[0].op, Reply::Int(5)));
}

/// Contract: `Failed` comes after the clean-up; a later `release()` reports that nothing was
/// sent, not the failed round's outcomes as deletions.
#[test]
fn release_after_failed_reports_nothing_sent() {
    let (mut m, _, cleanup) = refused_try(&[0, 1, 2]);
    assert_eq!(m.state(), State::Acquiring, "Failed waits for the clean-up");
    for t in &cleanup {
        m.handle_reply(at_ms(2), t.node, t.op, Reply::Int(0));
    }
    let (_, ev) = drain(&mut m);
    assert!(matches!(ev[..], [Event::Failed(LockError::Taken { .. })]));
    m.release(at_ms(3)).unwrap();
    let (sent, ev) = drain(&mut m);
    assert!(sent.is_empty());
    assert_eq!(
        ev,
        vec![Event::Released {
            nodes: vec![NodeOutcome::NotSent; 3]
        }]
    );
}

/// Contract: cancelling while a failed attempt cleans up ends in `Released`, not `Failed`.
#[test]
fn a_release_during_the_clean_up_ends_in_released() {
    let (mut m, _, cleanup) = refused_try(&[0, 1, 2]);
    m.release(at_ms(1)).unwrap();
    assert!(drain(&mut m).0.is_empty(), "the clean-up in flight serves");
    for t in &cleanup {
        m.handle_reply(at_ms(2), t.node, t.op, Reply::Int(0));
    }
    let (_, ev) = drain(&mut m);
    assert!(matches!(ev[..], [Event::Released { .. }]), "{ev:?}");
}

fn etcd_cfg(ttl_s: u64) -> EtcdConfig {
    EtcdConfig::builder()
        .ttl(Duration::from_secs(ttl_s))
        .wait(Wait::None)
        .build()
        .unwrap()
}

/// Runs an uncontended etcd acquisition where the cluster grants `granted`; returns the
/// machine, the validity reported, and when the grant was sent.
fn etcd_acquire(ttl_s: u64, granted: Duration) -> (EtcdLock, Instant) {
    let mut m = EtcdLock::new(&etcd_cfg(ttl_s), b"job", 7).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let mut valid = None;
    let mut now = at_ms(0);
    for _ in 0..10 {
        let outs: Vec<_> = std::iter::from_fn(|| m.poll_output()).collect();
        if outs.is_empty() {
            break;
        }
        now = now + ms(1);
        for out in outs {
            match out {
                Output::Transmit(t) => {
                    let reply = match t.command {
                        EtcdCommand::LeaseGrant { .. } => EtcdReply::Lease {
                            id: 0x42,
                            ttl: granted,
                        },
                        EtcdCommand::Take { .. } => EtcdReply::Taken {
                            create_revision: 5,
                            owner_revision: 5,
                            revision: 5,
                        },
                        EtcdCommand::KeepAlive { .. } => EtcdReply::KeepAlive { ttl: granted },
                        other => panic!("unexpected {other:?}"),
                    };
                    m.handle_reply(now, t.node, t.op, reply);
                }
                Output::Event(Event::Acquired { valid_until, .. }) => valid = Some(valid_until),
                Output::Event(_) => {}
            }
        }
    }
    (m, valid.unwrap())
}

/// Item 3: validity and keepalive cadence come from the grant, bounded by the ttl asked.
#[test]
fn etcd_trusts_no_more_than_it_asked_and_renews_a_short_grant_in_time() {
    // A grant of "forever" is relied on for the 30 s asked, no more.
    let (m, valid_until) = etcd_acquire(30, Duration::MAX);
    let cfg = etcd_cfg(30);
    assert_eq!(
        valid_until,
        at_ms(0) + (Duration::from_secs(30) - cfg.drift_for(Duration::from_secs(30)))
    );
    assert!(m.poll_timeout().is_some());
    // A grant of 2 s of 30 s: the lock is valid 2 s less drift, and renewed within a third
    // of the grant, well before it runs out.
    let (m, valid_until) = etcd_acquire(30, Duration::from_secs(2));
    assert_eq!(
        valid_until,
        at_ms(0) + (Duration::from_secs(2) - cfg.drift_for(Duration::from_secs(2)))
    );
    let next = m.poll_timeout().unwrap();
    assert!(next <= at_ms(667), "first keepalive at {next:?}");
}

/// Item 4 for etcd: a held lock always has a deadline, and a step back moves it back.
#[test]
fn etcd_a_clock_step_back_never_lengthens_a_lock() {
    let (mut m, valid_until) = etcd_acquire(30, Duration::from_secs(30));
    m.handle_timeout(at_ms(2_000));
    m.handle_timeout(at_ms(1_000));
    let ev: Vec<_> = std::iter::from_fn(|| m.poll_output()).collect();
    assert!(ev.contains(&Output::Event(Event::TimeWentBack {
        by: ms(1_000),
        valid_until: Some(valid_until.rebase_back(ms(1_000)))
    })));
    assert_eq!(
        m.state(),
        State::Held {
            valid_until: valid_until.rebase_back(ms(1_000))
        }
    );
    assert!(m.poll_timeout().is_some());
}

/// Issue 19 for etcd: a `no_wait` try that finds the lock taken revokes its lease and reports
/// `Failed` only once etcd answered the revoke.
#[test]
fn etcd_a_failed_try_reports_after_its_lease_is_revoked() {
    let mut m = EtcdLock::new(&etcd_cfg(10), b"job", 3).unwrap();
    m.acquire(at_ms(0)).unwrap();
    let (sent, _) = drain(&mut m);
    m.handle_reply(
        at_ms(1),
        sent[0].node,
        sent[0].op,
        EtcdReply::Lease {
            id: 9,
            ttl: Duration::from_secs(10),
        },
    );
    let (take, _) = drain(&mut m);
    m.handle_reply(
        at_ms(2),
        take[0].node,
        take[0].op,
        EtcdReply::Taken {
            create_revision: 8,
            owner_revision: 3,
            revision: 8,
        },
    );
    let (revoke, ev) = drain(&mut m);
    assert!(
        ev.is_empty(),
        "no Failed before the revoke is answered: {ev:?}"
    );
    assert!(matches!(
        revoke[..],
        [Transmit {
            command: EtcdCommand::Revoke { lease: 9 },
            ..
        }]
    ));
    assert_eq!(m.state(), State::Acquiring);
    m.handle_reply(at_ms(3), revoke[0].node, revoke[0].op, EtcdReply::Done);
    let (_, ev) = drain(&mut m);
    assert!(
        matches!(ev[..], [Event::Failed(LockError::Taken { .. })]),
        "{ev:?}"
    );
}
