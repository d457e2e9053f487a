//! The session-lock machine (PostgreSQL advisory locks, MySQL `GET_LOCK`): examples against
//! the simulator's server model, then a property suite of random replies of every kind
//! (well-formed, from another server session, unknown, errors, stale), time steps (also
//! backwards) and user requests.
//!
//! Cases per run: `PROPTEST_CASES` (default 512).
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use lucky_core::session::{Command, Reply, SessionConfig, SessionLock};
use lucky_core::{
    Duration, Event, Instant, Lease, LockMachine, NodeOutcome, OpId, Output, State, Transmit,
    UsageError, Wait,
};
use lucky_sim::session::SessionServer;
use lucky_sim::Server;
use proptest::prelude::*;

const TTL: Duration = Duration::from_secs(3);

fn cfg() -> SessionConfig {
    let lease = Lease {
        ttl: TTL,
        wait: Wait::For(Duration::from_secs(30)),
        ..Lease::default()
    };
    SessionConfig::builder()
        .lease(lease)
        .auto_extend(None, None)
        .build()
        .unwrap()
}

fn machine(id: u64) -> SessionLock {
    SessionLock::new(&cfg(), b"job", id).unwrap()
}

fn at(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

fn ns(t: Instant) -> u64 {
    t.as_nanos()
}

fn sent(m: &mut SessionLock) -> (Vec<Transmit<Command>>, Vec<Event>) {
    let (mut t, mut e) = (Vec::new(), Vec::new());
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(x) => t.push(x),
            Output::Event(x) => e.push(x),
        }
    }
    (t, e)
}

/// Runs every command of `m` on `server` at `now` (a wait kept by the server stays pending
/// under the op's number); returns the events and the ops the server kept.
fn run(m: &mut SessionLock, server: &mut SessionServer, now: Instant) -> (Vec<Event>, Vec<OpId>) {
    let (mut events, mut kept) = (Vec::new(), Vec::new());
    while let Some(out) = m.poll_output() {
        match out {
            Output::Transmit(t) => match server.submit(ns(now), &t.command, t.op.0) {
                Some(reply) => assert!(m.handle_reply(now, t.node, t.op, reply)),
                None => kept.push(t.op),
            },
            Output::Event(e) => events.push(e),
        }
    }
    (events, kept)
}

#[test]
fn a_lock_is_trusted_from_its_send_time_and_a_waiter_is_woken_by_the_server() {
    let mut server = SessionServer::new(ns(at(3_000)), false);
    let (mut a, mut b) = (machine(1), machine(2));
    a.acquire(at(0)).unwrap();
    let (e, _) = run(&mut a, &mut server, at(0));
    let Event::Acquired { fence, valid_until } = e[0].clone() else {
        panic!("{e:?}")
    };
    assert_eq!(fence, Some(lucky_core::Fence(1)));
    assert!(
        valid_until <= at(3_000) && valid_until > at(2_900),
        "{valid_until:?}"
    );
    // B's lock waits on the server (at most a second per request) ...
    b.acquire(at(100)).unwrap();
    let (e, kept) = run(&mut b, &mut server, at(100));
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(kept.len(), 1);
    let (t, _) = sent(&mut b);
    assert!(t.is_empty());
    // ... and gets the lock the moment A unlocks; A's session is clean and closed.
    a.release(at(200)).unwrap();
    let (t, _) = sent(&mut a);
    assert!(matches!(t[0].command, Command::Unlock { .. }), "{t:?}");
    let r = server.apply(ns(at(200)), &t[0].command);
    assert!(a.handle_reply(at(200), t[0].node, t[0].op, r));
    let (t2, _) = sent(&mut a);
    assert!(
        matches!(t2[0].command, Command::Close { clean: true, .. }),
        "{t2:?}"
    );
    let r = server.apply(ns(at(200)), &t2[0].command);
    assert!(a.handle_reply(at(200), t2[0].node, t2[0].op, r));
    let (_, e) = sent(&mut a);
    assert_eq!(
        e,
        vec![Event::Released {
            nodes: vec![NodeOutcome::Granted]
        }]
    );
    let mut fired = Vec::new();
    server.fired(&mut fired);
    assert_eq!(fired.len(), 1);
    let (id, reply) = fired.pop().unwrap();
    assert!(b.handle_reply(at(201), lucky_core::NodeId(0), OpId(id), reply));
    let (e, _) = run(&mut b, &mut server, at(201));
    assert!(
        matches!(
            e[0],
            Event::Acquired {
                fence: Some(lucky_core::Fence(2)),
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_probe_answered_by_another_server_session_loses_the_lock() {
    let mut server = SessionServer::new(ns(at(3_000)), true);
    let mut a = machine(1);
    a.acquire(at(0)).unwrap();
    run(&mut a, &mut server, at(0));
    // The server restarts; the driver reconnects silently.
    server.forget_kept();
    a.extend(at(500)).unwrap();
    let (e, _) = run(&mut a, &mut server, at(500));
    assert!(matches!(e[0], Event::Lost { .. }), "{e:?}");
    assert!(matches!(a.state(), State::Done), "{:?}", a.state());
}

#[test]
fn an_unknown_lock_outcome_ends_the_session_and_claims_nothing() {
    let mut a = machine(1);
    a.acquire(at(0)).unwrap();
    let (t, _) = sent(&mut a);
    assert!(matches!(t[0].command, Command::Open { .. }));
    let opened = Reply::Opened {
        session: 7,
        server: 70,
    };
    assert!(a.handle_reply(at(1), t[0].node, t[0].op, opened));
    let (t, _) = sent(&mut a);
    assert!(matches!(t[0].command, Command::Lock { session: 7, .. }));
    let lost = Reply::Unknown("connection reset".into());
    assert!(a.handle_reply(at(2), t[0].node, t[0].op, lost));
    let (t, e) = sent(&mut a);
    assert!(
        matches!(
            t[0].command,
            Command::Close {
                session: 7,
                clean: false
            }
        ),
        "{t:?}"
    );
    assert!(
        e.iter().all(|e| !matches!(e, Event::Acquired { .. })),
        "{e:?}"
    );
    // The next attempt opens a new session.
    let retry = a.poll_timeout().unwrap();
    a.handle_timeout(retry);
    let (t, _) = sent(&mut a);
    assert!(
        matches!(t.last().unwrap().command, Command::Open { .. }),
        "{t:?}"
    );
}

#[test]
fn a_lock_from_another_server_session_is_not_claimed() {
    let mut a = machine(1);
    a.acquire(at(0)).unwrap();
    let (t, _) = sent(&mut a);
    let opened = Reply::Opened {
        session: 1,
        server: 10,
    };
    a.handle_reply(at(1), t[0].node, t[0].op, opened);
    let (t, _) = sent(&mut a);
    a.handle_reply(
        at(2),
        t[0].node,
        t[0].op,
        Reply::Locked {
            server: 11,
            fence: 1,
        },
    );
    let (t, e) = sent(&mut a);
    assert!(
        matches!(t[0].command, Command::Close { clean: false, .. }),
        "{t:?}"
    );
    assert!(
        e.iter().all(|e| !matches!(e, Event::Acquired { .. })),
        "{e:?}"
    );
}

#[test]
fn bad_input_is_a_usage_error() {
    let c = cfg();
    assert_eq!(
        SessionLock::new(&c, b"", 0).unwrap_err(),
        UsageError::EmptyKey
    );
    assert!(matches!(
        SessionLock::new(&c, &[b'x'; 600], 0).unwrap_err(),
        UsageError::KeyTooLong { .. }
    ));
    let zero = Lease {
        ttl: Duration::ZERO,
        ..Lease::default()
    };
    assert_eq!(
        SessionConfig::builder().lease(zero).build().unwrap_err(),
        UsageError::TtlZero
    );
    let mut m = machine(1);
    assert_eq!(m.release(at(0)), Err(UsageError::NotHeld));
    assert_eq!(m.extend(at(0)), Err(UsageError::NotHeld));
}

// ---- property suite ----

#[derive(Clone, Debug)]
enum Action {
    Acquire,
    Extend,
    Release,
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
    // Server sessions 1 and 2: the machine opens in either, so half the answers come from
    // "another" session.
    let server = || 1u64..3;
    prop_oneof![
        2 => (0u64..4, server()).prop_map(|(session, server)| Reply::Opened { session, server }),
        4 => (0u64..10, server()).prop_map(|(fence, server)| Reply::Locked { server, fence }),
        2 => Just(Reply::Busy),
        3 => (any::<bool>(), server()).prop_map(|(held, server)| Reply::Probed { held, server }),
        1 => any::<bool>().prop_map(|held| Reply::Unlocked { held }),
        1 => Just(Reply::Closed),
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

    /// Never held at or past its deadline; `Acquired` only on a lock answered by the server
    /// session the lock was opened in; every deadline at most
    /// the confirming request's send time + ttl; a doubtful session is never reused; no
    /// panic on any input.
    #[test]
    fn trust_is_always_backed_by_the_same_server_session(actions in prop::collection::vec(action(), 1..80)) {
        let mut m = machine(7);
        let mut now = at(1_000);
        let mut ops: Vec<(OpId, Instant, Command)> = Vec::new();
        // The server session of the last `Opened` the machine took.
        let mut opened: Option<u64> = None;
        for a in actions {
            let mut backed: Option<Instant> = None;
            let mut doubtful = false;
            match a {
                Action::Acquire => { let _ = m.acquire(now); }
                Action::Extend => { let _ = m.extend(now); }
                Action::Release => { let _ = m.release(now); }
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
                        doubtful = matches!(reply, Reply::Unknown(_) | Reply::Unavailable(_));
                        let used_before = m.state();
                        match (&command, &reply) {
                            (Command::Lock { .. }, Reply::Locked { server, .. })
                                if Some(*server) == opened => backed = Some(sent_at + TTL),
                            (Command::Probe { .. }, Reply::Probed { held: true, server })
                                if Some(*server) == opened => backed = Some(sent_at + TTL),
                            _ => {}
                        }
                        let took = m.handle_reply(now, lucky_core::NodeId(0), op, reply.clone());
                        if took {
                            match (&command, &reply) {
                                (Command::Open { .. }, Reply::Opened { server, .. })
                                    if matches!(used_before, State::Acquiring | State::Releasing) =>
                                {
                                    opened = Some(*server);
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            while let Some(out) = m.poll_output() {
                match out {
                    Output::Transmit(t) => {
                        if doubtful {
                            // A session whose answer was lost is ended for good.
                            if let Command::Close { clean, .. } = t.command {
                                prop_assert!(!clean, "a doubtful session kept for reuse");
                            }
                        }
                        ops.push((t.op, now, t.command));
                    }
                    Output::Event(e @ (Event::Acquired { .. } | Event::Extended { .. })) => {
                        let valid_until = match e {
                            Event::Acquired { valid_until, .. } | Event::Extended { valid_until } => valid_until,
                            _ => unreachable!(),
                        };
                        prop_assert!(valid_until > now, "claimed at or past its deadline");
                        let bound = backed.ok_or_else(|| TestCaseError::fail(format!("a claim not backed by the session's own answer: {e:?}")))?;
                        prop_assert!(valid_until <= bound, "{valid_until:?} past what the session confirmed ({bound:?})");
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
