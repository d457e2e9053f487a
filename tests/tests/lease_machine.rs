//! The lease-record machine: examples against the in-memory table (the store every lease
//! backend stands for), then a property suite of random replies of every kind (well-formed,
//! unknown, errors, garbage, stale), time steps (also backwards) and user requests.
//!
//! Cases per run: `PROPTEST_CASES` (default 512).
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use bytes::Bytes;
use lucky::memory::Table;
use lucky_core::lease::{Command, LeaseConfig, LeaseLock, Reply};
use lucky_core::{Duration, Event, Instant, LockMachine, OpId, Output, State, Transmit};
use proptest::prelude::*;

const TTL: Duration = Duration::from_secs(3);

fn cfg() -> LeaseConfig {
    LeaseConfig::builder()
        .ttl(TTL)
        .wait(lucky_core::Wait::For(Duration::from_secs(30)))
        .auto_extend(None, None)
        .build()
        .unwrap()
}

fn machine(cfg: &LeaseConfig, id: u8) -> LeaseLock {
    LeaseLock::new(cfg, b"job", &[id; 16], u64::from(id)).unwrap()
}

fn at(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

/// Drains `m`, running every command on `table` at `now`; returns the events.
fn run(m: &mut LeaseLock, table: &Table, now: Instant) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(t) => {
                let reply = table.execute(now, &t.command);
                assert!(m.handle_reply(now, t.node, t.op, reply));
            }
            Output::Event(e) => events.push(e),
        }
    }
    events
}

fn sent(m: &mut LeaseLock) -> (Vec<Transmit<Command>>, Vec<Event>) {
    let (mut t, mut e) = (Vec::new(), Vec::new());
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(x) => t.push(x),
            Output::Event(x) => e.push(x),
        }
    }
    (t, e)
}

#[test]
fn a_take_is_valid_from_its_send_time_and_fences_rise_across_holders() {
    let (cfg, table) = (cfg(), Table::new());
    let (mut a, mut b) = (machine(&cfg, 1), machine(&cfg, 2));
    a.acquire(at(0)).unwrap();
    let (t, _) = sent(&mut a);
    assert!(matches!(t[0].command, Command::Take { .. }));
    // The answer is read 100 ms later: validity still counts from the send.
    let reply = table.execute(at(0), &t[0].command);
    assert!(a.handle_reply(at(100), t[0].node, t[0].op, reply));
    let (_, e) = sent(&mut a);
    let drift = cfg.drift_for(TTL);
    assert_eq!(
        e,
        vec![Event::Acquired {
            fence: Some(lucky_core::Fence(1)),
            valid_until: at(0) + (TTL - drift),
        }]
    );
    // B finds it taken and waits the retry delay (50-250 ms by default), no longer.
    b.acquire(at(200)).unwrap();
    let e = run(&mut b, &table, at(200));
    let Event::Retrying { retry_at, .. } = e[0] else {
        panic!("{e:?}")
    };
    assert!(retry_at >= at(250) && retry_at <= at(450), "{retry_at:?}");
    // A releases: the record keeps its fence; B's hint makes it take over with fence 2.
    a.release(at(300)).unwrap();
    let e = run(&mut a, &table, at(300));
    assert!(matches!(&e[0], Event::Released { .. }), "{e:?}");
    b.wake(at(301));
    let e = run(&mut b, &table, at(301));
    assert!(
        matches!(e[0], Event::Acquired { fence: Some(f), .. } if f.get() == 2),
        "{e:?}"
    );
}

#[test]
fn an_unknown_take_is_inspected_before_anything_is_claimed() {
    let (cfg, table) = (cfg(), Table::new());
    let mut a = machine(&cfg, 1);
    a.acquire(at(0)).unwrap();
    let (t, _) = sent(&mut a);
    // The store applied the take, but the reply was lost.
    let _applied = table.execute(at(0), &t[0].command);
    assert!(a.handle_reply(at(50), t[0].node, t[0].op, Reply::Unknown("reset".into())));
    let (t2, e) = sent(&mut a);
    assert!(e.is_empty(), "nothing claimed on an unknown outcome: {e:?}");
    assert!(matches!(t2[0].command, Command::Inspect { .. }));
    let reply = table.execute(at(60), &t2[0].command);
    assert!(a.handle_reply(at(70), t2[0].node, t2[0].op, reply));
    let (_, e) = sent(&mut a);
    // Valid from the inspect's send (50 ms, when it was handed out) for the time the record
    // had left when the store read it (at 60 ms).
    let left = TTL - Duration::from_millis(60);
    let Event::Acquired { fence, valid_until } = e[0] else {
        panic!("{e:?}")
    };
    assert_eq!(fence.map(|f| f.get()), Some(1));
    assert_eq!(valid_until, at(50) + (left - cfg.drift_for(left)));

    // Not applied this time: the inspect shows someone else; no claim, a retry is planned.
    let mut b = machine(&cfg, 2);
    b.acquire(at(100)).unwrap();
    let (t, _) = sent(&mut b);
    assert!(b.handle_reply(
        at(120),
        t[0].node,
        t[0].op,
        Reply::Unknown("timeout".into())
    ));
    let e = run(&mut b, &table, at(130));
    assert!(matches!(e[0], Event::Retrying { .. }), "{e:?}");
    assert_eq!(b.state(), State::Waiting);
}

#[test]
fn renewals_extend_from_their_send_and_a_refused_one_loses_and_releases() {
    let (cfg, table) = (cfg(), Table::new());
    let mut a = machine(&cfg, 1);
    a.acquire(at(0)).unwrap();
    run(&mut a, &table, at(0));
    // Renewal every ttl/3.
    assert_eq!(a.poll_timeout(), Some(at(1_000)));
    a.handle_timeout(at(1_000));
    let e = run(&mut a, &table, at(1_000));
    let want = at(1_000) + (TTL - cfg.drift_for(TTL));
    assert_eq!(e, vec![Event::Extended { valid_until: want }]);
    // The record is taken over behind our back (it expired on the store): the next renewal
    // is refused; the lock is lost at once and a release goes out.
    a.handle_timeout(at(2_000));
    let (t, _) = sent(&mut a);
    assert!(a.handle_reply(at(2_001), t[0].node, t[0].op, Reply::NotOwner));
    let (t, e) = sent(&mut a);
    assert!(matches!(e[0], Event::Lost { .. }), "{e:?}");
    assert!(matches!(t[0].command, Command::Release { .. }));
}

#[test]
fn a_lock_whose_renewals_go_unanswered_is_lost_at_its_deadline() {
    let (cfg, table) = (cfg(), Table::new());
    let mut a = machine(&cfg, 1);
    a.acquire(at(0)).unwrap();
    run(&mut a, &table, at(0));
    let State::Held { valid_until } = a.state() else {
        panic!()
    };
    let mut now = at(0);
    let mut lost = false;
    while now < valid_until + Duration::from_millis(1) {
        let next = a.poll_timeout().unwrap();
        now = next;
        a.handle_timeout(now);
        let (_, e) = sent(&mut a); // nothing answered
        if e.iter().any(|e| matches!(e, Event::Lost { .. })) {
            lost = true;
            break;
        }
    }
    assert!(lost);
    assert_eq!(now, valid_until, "lost exactly at the deadline");
}

#[test]
fn a_failed_try_releases_what_it_may_have_taken_before_reporting() {
    let cfg = LeaseConfig::builder()
        .ttl(TTL)
        .wait(lucky_core::Wait::None)
        .build()
        .unwrap();
    let mut a = machine(&cfg, 1);
    a.acquire(at(0)).unwrap();
    let (t, _) = sent(&mut a);
    assert!(matches!(t[0].command, Command::Take { .. }));
    // The take times out: it may have been applied. The inspect fails too.
    a.handle_timeout(at(0) + cfg.op_timeout());
    let (t2, _) = sent(&mut a);
    assert!(matches!(t2[0].command, Command::Inspect { .. }));
    assert!(a.handle_reply(
        at(200),
        t2[0].node,
        t2[0].op,
        Reply::Unavailable("down".into())
    ));
    let (t3, e) = sent(&mut a);
    assert!(e.is_empty(), "Failed waits for the clean-up: {e:?}");
    assert!(matches!(t3[0].command, Command::Release { .. }));
    assert!(a.handle_reply(at(210), t3[0].node, t3[0].op, Reply::NotOwner));
    let (_, e) = sent(&mut a);
    assert!(matches!(e[0], Event::Failed(_)), "{e:?}");
}

#[test]
fn bad_input_is_a_usage_error() {
    use lucky_core::UsageError;
    let c = cfg();
    assert_eq!(
        LeaseLock::new(&c, b"", &[1; 16], 0).unwrap_err(),
        UsageError::EmptyKey
    );
    assert!(matches!(
        LeaseLock::new(&c, b"x", &[1; 8], 0).unwrap_err(),
        UsageError::TokenTooShort { .. }
    ));
    assert!(matches!(
        LeaseLock::new(&c, &[b'x'; 600], &[1; 16], 0).unwrap_err(),
        UsageError::KeyTooLong { .. }
    ));
    let b = || LeaseConfig::builder();
    assert_eq!(
        b().ttl(Duration::ZERO).build().unwrap_err(),
        UsageError::TtlZero
    );
    assert!(matches!(
        b().ttl(Duration::from_secs(400 * 24 * 3600))
            .build()
            .unwrap_err(),
        UsageError::TtlTooLarge { .. }
    ));
    let mut m = machine(&c, 1);
    assert_eq!(m.release(at(0)), Err(UsageError::NotHeld));
    assert_eq!(m.extend(at(0)), Err(UsageError::NotHeld));
}

// ---- property suite ----

#[derive(Clone, Debug)]
enum Action {
    Acquire,
    Extend,
    Release,
    Wake,
    /// Answer the `pick`-th command ever sent (modulo): may be stale or a duplicate.
    Reply {
        pick: usize,
        reply: Reply,
    },
    Tick(Duration),
    Timeout,
    Backwards(Duration),
}

fn reply() -> impl Strategy<Value = Reply> {
    let ms = || (0u64..5_000).prop_map(Duration::from_millis);
    prop_oneof![
        3 => (0u64..10).prop_map(|fence| Reply::Granted { fence }),
        2 => ms().prop_map(|left| Reply::Held { left }),
        2 => Just(Reply::Renewed),
        1 => Just(Reply::NotOwner),
        1 => Just(Reply::Released),
        // `ours` is filled in by the harness with the machine's owner (or a stranger).
        2 => (any::<bool>(), 0u64..10, ms()).prop_map(|(ours, fence, left)| Reply::State {
            owner: ours.then(|| Bytes::from_static(b"OURS")),
            fence,
            left,
        }),
        2 => Just(Reply::Unknown("lost reply".into())),
        1 => Just(Reply::Error("ERR".into())),
        1 => Just(Reply::Unavailable("reset".into())),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => Just(Action::Acquire),
        1 => Just(Action::Extend),
        1 => Just(Action::Release),
        1 => Just(Action::Wake),
        8 => (any::<usize>(), reply()).prop_map(|(pick, reply)| Action::Reply { pick, reply }),
        2 => (0u64..2_000).prop_map(|ms| Action::Tick(Duration::from_millis(ms))),
        2 => Just(Action::Timeout),
        1 => (1u64..50).prop_map(|ms| Action::Backwards(Duration::from_millis(ms))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    /// Never held at or past its deadline; every `Acquired`/`Extended` comes from an
    /// acknowledged write (or an inspect that saw the record ours), and its deadline is at
    /// most the acknowledged op's send time plus what the store granted; never a claim on an
    /// unknown outcome; no panic on any input.
    #[test]
    fn validity_is_always_backed_by_an_acknowledged_write(actions in prop::collection::vec(action(), 1..80)) {
        let cfg = cfg();
        let mut m = machine(&cfg, 7);
        let mut now = at(1_000);
        let mut ops: Vec<(OpId, Instant, Command)> = Vec::new();
        // The deadline last claimed (Acquired or Extended), itself checked when claimed.
        let mut claimed = Instant::ZERO;
        for a in actions {
            let mut backed: Option<Instant> = None;
            match a {
                Action::Acquire => { let _ = m.acquire(now); }
                Action::Extend => { let _ = m.extend(now); }
                Action::Release => { let _ = m.release(now); }
                Action::Wake => m.wake(now),
                Action::Tick(d) => { now = now + d; m.handle_timeout(now); }
                Action::Timeout => {
                    if let Some(t) = m.poll_timeout() {
                        now = now.max(t);
                        m.handle_timeout(now);
                    }
                }
                Action::Backwards(d) => {
                    now = Instant::from_nanos(now.as_nanos().saturating_sub(d.as_nanos() as u64).max(1));
                    m.handle_timeout(now);
                }
                Action::Reply { pick, reply } => {
                    if !ops.is_empty() {
                        let (op, sent_at, command) = ops[pick % ops.len()].clone();
                        let reply = match reply {
                            Reply::State { owner: Some(_), fence, left } =>
                                Reply::State { owner: Some(Bytes::copy_from_slice(m.owner())), fence, left },
                            r => r,
                        };
                        backed = match (&command, &reply) {
                            (Command::Take { ttl, .. }, Reply::Granted { .. })
                            | (Command::Renew { ttl, .. }, Reply::Renewed) => Some(sent_at + *ttl),
                            (Command::Inspect { .. }, Reply::State { owner: Some(_), left, .. }) => Some(sent_at + *left),
                            _ => None,
                        };
                        m.handle_reply(now, lucky_core::NodeId(0), op, reply);
                    }
                }
            }
            while let Some(out) = m.poll_output() {
                match out {
                    Output::Transmit(t) => ops.push((t.op, now, t.command)),
                    Output::Event(e @ (Event::Acquired { .. } | Event::Extended { .. })) => {
                        let (valid_until, earlier) = match e {
                            Event::Acquired { valid_until, .. } => (valid_until, Instant::ZERO),
                            Event::Extended { valid_until } => (valid_until, claimed),
                            _ => unreachable!(),
                        };
                        prop_assert!(valid_until > now, "claimed at or past its deadline");
                        let bound = backed.ok_or_else(|| TestCaseError::fail("a claim not backed by an acknowledged write"))?;
                        // An extension never shortens the hold: its deadline is what this
                        // answer backs, or the one already claimed.
                        prop_assert!(valid_until <= bound.max(earlier), "{valid_until:?} past what the store granted ({bound:?})");
                        claimed = valid_until;
                    }
                    Output::Event(_) => {}
                }
            }
            if let State::Held { valid_until } = m.state() {
                prop_assert!(now < valid_until, "held at {now:?}, deadline {valid_until:?}");
            }
        }
    }
}

#[test]
fn a_late_grant_of_a_timed_out_take_is_released_once_nothing_uses_it() {
    let (cfg, table) = (cfg(), Table::new());
    let mut a = machine(&cfg, 1);
    a.acquire(at(0)).unwrap();
    let (t, _) = sent(&mut a);
    let take = t[0].clone();
    // Cancelled while the take is in flight: the release waits for the take's answer.
    a.release(at(10)).unwrap();
    let (t, _) = sent(&mut a);
    assert!(t.is_empty(), "{t:?}");
    // No answer within the request timeout: the release goes out.
    a.handle_timeout(at(0) + cfg.op_timeout());
    let (t, _) = sent(&mut a);
    assert!(matches!(t[0].command, Command::Release { .. }));
    let reply = table.execute(at(200), &t[0].command);
    assert!(a.handle_reply(at(200), t[0].node, t[0].op, reply));
    let (_, e) = sent(&mut a);
    assert!(matches!(e[0], Event::Released { .. }), "{e:?}");
    // The take arrives after the release and is applied: its late grant is released again.
    let late = table.execute(at(300), &take.command);
    assert!(matches!(late, Reply::Granted { .. }));
    assert!(a.handle_reply(at(300), take.node, take.op, late));
    let (t, _) = sent(&mut a);
    assert!(matches!(t[0].command, Command::Release { .. }), "{t:?}");
    assert_eq!(table.execute(at(301), &t[0].command), Reply::Released);
    assert_eq!(table.held(at(301)), 0);
}

#[test]
fn a_late_grant_of_the_acquisition_holding_the_lock_is_kept() {
    let (cfg, table) = (cfg(), Table::new());
    let mut a = machine(&cfg, 1);
    a.acquire(at(0)).unwrap();
    let (t, _) = sent(&mut a);
    let first = t[0].clone();
    // The first take times out; the inspect shows it was not applied; the retake wins.
    a.handle_timeout(at(0) + cfg.op_timeout());
    let e = run(&mut a, &table, at(160));
    assert!(matches!(e[0], Event::Retrying { .. }), "{e:?}");
    a.wake(at(170));
    let e = run(&mut a, &table, at(170));
    assert!(matches!(e[0], Event::Acquired { .. }), "{e:?}");
    // The first take's late answer (a retake of our own record) changes nothing.
    let late = table.execute(at(180), &first.command);
    assert!(a.handle_reply(at(180), first.node, first.op, late));
    let (t, _) = sent(&mut a);
    assert!(t.is_empty(), "{t:?}");
    assert!(matches!(a.state(), State::Held { .. }));
}
