//! The ZooKeeper lock machine under random inputs: answers from a small standalone server
//! model (so random runs do acquire), random replies of every kind to any outstanding command
//! (garbage names, other sessions, errors, unknown outcomes, a proof that went back), time
//! steps forward and back, and user requests. The machine must never trust past what a
//! session's proof said, never report a fence no server answer carried, never stay held at or
//! past its deadline, and never panic.
//!
//! Cases per run: `PROPTEST_CASES` (default 512).
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use lucky_core::zookeeper::{Command, Ensemble, Reply, Session, ZkConfig, ZkLock};
use lucky_core::{Duration, Event, Instant, LockMachine, OpId, Output, State, Wait};
use proptest::prelude::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn cfg() -> ZkConfig {
    ZkConfig::builder()
        .ttl(TIMEOUT)
        .ensemble(Ensemble::STANDALONE)
        .wait(Wait::For(Duration::from_secs(5)))
        .build()
        .unwrap()
}

fn at(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

/// One directory of a standalone server: nodes by name with (czxid, owner session).
struct Server {
    nodes: BTreeMap<Bytes, (i64, i64)>,
    seq: i32,
    zxid: i64,
}

fn last_segment(p: &Bytes) -> Bytes {
    p.slice(p.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1)..)
}

impl Server {
    fn exec(&mut self, c: &Command, s: Session) -> Option<Reply> {
        Some(match c {
            Command::Create { dir, prefix } => {
                let name =
                    Bytes::from([&prefix[..], format!("{:010}", self.seq).as_bytes()].concat());
                self.seq = self.seq.wrapping_add(1);
                self.zxid += 1;
                self.nodes.insert(name.clone(), (self.zxid, s.id));
                Reply::Created {
                    path: Bytes::from([&dir[..], b"/", &name[..]].concat()),
                    czxid: self.zxid,
                    session: s,
                }
            }
            Command::Children { .. } => Reply::Children {
                names: self.nodes.keys().cloned().collect(),
                session: s,
            },
            Command::Stat { path } => match self.nodes.get(&last_segment(path)) {
                Some(&(czxid, owner)) => Reply::Stat {
                    czxid,
                    ephemeral_owner: owner,
                    session: s,
                },
                None => Reply::NoNode,
            },
            // A watch on a node still there answers later (never, here, unless picked).
            Command::WaitDelete { path } => {
                if self.nodes.contains_key(&last_segment(path)) {
                    return None;
                }
                Reply::Deleted
            }
            Command::Delete { path } => match self.nodes.remove(&last_segment(path)) {
                Some(_) => Reply::Done,
                None => Reply::NoNode,
            },
        })
    }
}

#[derive(Clone, Debug)]
enum Action {
    Acquire,
    Extend,
    Release,
    /// The server's own answer to outstanding command `pick`, proven until `now + left`.
    Serve {
        pick: usize,
        left_ms: u64,
    },
    /// A random reply to outstanding command `pick`.
    Reply {
        pick: usize,
        reply: Reply,
    },
    /// Another contender's node appears (or goes).
    Foreign {
        add: bool,
    },
    Tick(Duration),
    Timeout,
    Backwards(Duration),
}

fn name() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        (0i32..20).prop_map(|s| Bytes::from(format!("_c_{:036}-lock-{s:010}", 7))),
        (0i32..20).prop_map(|s| Bytes::from(format!("abc__lock__{s:010}"))),
        Just(Bytes::from_static(b"_c_x-lock--2147483648")),
        Just(Bytes::from_static(b"garbage")),
        Just(Bytes::from_static(b"-lock-")),
        Just(Bytes::from_static(b"")),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from),
    ]
}

fn session() -> impl Strategy<Value = Session> {
    (
        prop_oneof![Just(1i64), Just(2i64), any::<i64>()],
        prop_oneof![
            Just(TIMEOUT),
            (0u64..30_000).prop_map(Duration::from_millis)
        ],
        prop::option::of((0u64..200_000).prop_map(at)),
    )
        .prop_map(|(id, timeout, until)| Session { id, timeout, until })
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (name(), any::<i64>(), session()).prop_map(|(n, czxid, session)| Reply::Created {
            path: Bytes::from([&b"/lucky/job/"[..], &n[..]].concat()),
            czxid,
            session
        }),
        (name(), any::<i64>(), session()).prop_map(|(n, czxid, session)| Reply::Created {
            path: n,
            czxid,
            session
        }),
        (prop::collection::vec(name(), 0..5), session())
            .prop_map(|(names, session)| Reply::Children { names, session }),
        (
            any::<i64>(),
            prop_oneof![Just(1i64), any::<i64>()],
            session()
        )
            .prop_map(|(czxid, ephemeral_owner, session)| Reply::Stat {
                czxid,
                ephemeral_owner,
                session
            }),
        Just(Reply::Deleted),
        Just(Reply::Done),
        Just(Reply::NoNode),
        Just(Reply::SessionExpired),
        Just(Reply::Error("bad version".into())),
        Just(Reply::Unavailable("connection loss".into())),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => Just(Action::Acquire),
        1 => Just(Action::Extend),
        1 => Just(Action::Release),
        8 => (any::<usize>(), 0u64..12_000).prop_map(|(pick, left_ms)| Action::Serve { pick, left_ms }),
        3 => (any::<usize>(), reply()).prop_map(|(pick, reply)| Action::Reply { pick, reply }),
        1 => any::<bool>().prop_map(|add| Action::Foreign { add }),
        2 => (0u64..3_000).prop_map(|ms| Action::Tick(Duration::from_millis(ms))),
        2 => Just(Action::Timeout),
        1 => (1u64..50).prop_map(|ms| Action::Backwards(Duration::from_millis(ms))),
    ]
}

/// Fails the run with a message, like `prop_assert!`.
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($fmt)+)));
        }
    };
}

/// Plays `actions` against a fresh machine, checking the invariants after each; returns how
/// many times it acquired.
fn play(actions: Vec<Action>) -> Result<usize, TestCaseError> {
    let mut acquired = 0;
    let mut m = ZkLock::new(&cfg(), b"job", &[9; 16], 9).unwrap();
    let mut server = Server {
        nodes: BTreeMap::new(),
        seq: 0,
        zxid: 100,
    };
    let mut now = at(1_000);
    let mut ops: Vec<(OpId, lucky_core::NodeId, Command)> = Vec::new();
    // The latest proof end any answer carried, and every czxid any answer carried.
    let mut proven: Option<Instant> = None;
    let mut czxids: BTreeSet<i64> = BTreeSet::new();
    let note = |r: &Reply, proven: &mut Option<Instant>, czxids: &mut BTreeSet<i64>| {
        let s = match r {
            Reply::Created { czxid, session, .. } | Reply::Stat { czxid, session, .. } => {
                czxids.insert(*czxid);
                Some(session)
            }
            Reply::Children { session, .. } => Some(session),
            _ => None,
        };
        if let Some(u) = s.and_then(|s| s.until) {
            *proven = Some(proven.map_or(u, |p| p.max(u)));
        }
    };
    for a in actions {
        match a {
            Action::Acquire => {
                let _ = m.acquire(now);
            }
            Action::Extend => {
                let _ = m.extend(now);
            }
            Action::Release => {
                let _ = m.release(now);
            }
            Action::Tick(d) => {
                now = now + d;
                m.handle_timeout(now);
            }
            Action::Timeout => {
                if let Some(t) = m.poll_timeout() {
                    now = now.max(t);
                    m.handle_timeout(now);
                }
            }
            Action::Backwards(d) => {
                now =
                    Instant::from_nanos(now.as_nanos().saturating_sub(d.as_nanos() as u64).max(1));
                m.handle_timeout(now);
            }
            Action::Foreign { add } => {
                if add {
                    server.zxid += 1;
                    let n = Bytes::from(format!("foreign__lock__{:010}", server.seq));
                    server.seq = server.seq.wrapping_add(1);
                    server.nodes.insert(n, (server.zxid, 77));
                } else if let Some(k) = server
                    .nodes
                    .keys()
                    .find(|k| k.starts_with(b"foreign"))
                    .cloned()
                {
                    server.nodes.remove(&k);
                }
            }
            Action::Serve { pick, left_ms } => {
                if !ops.is_empty() {
                    let (op, node, command) = ops.remove(pick % ops.len());
                    let s = Session {
                        id: 1,
                        timeout: TIMEOUT,
                        until: Some(now + Duration::from_millis(left_ms)),
                    };
                    match server.exec(&command, s) {
                        Some(r) => {
                            note(&r, &mut proven, &mut czxids);
                            m.handle_reply(now, node, op, r);
                        }
                        None => ops.push((op, node, command)),
                    }
                }
            }
            Action::Reply { pick, reply } => {
                if !ops.is_empty() {
                    // Any outstanding command, possibly answered twice (misrouted, stale).
                    let (op, node, _) = ops[pick % ops.len()].clone();
                    note(&reply, &mut proven, &mut czxids);
                    m.handle_reply(now, node, op, reply);
                }
            }
        }
        while let Some(out) = m.poll_output() {
            match out {
                Output::Transmit(t) => ops.push((t.op, t.node, t.command)),
                Output::Event(Event::Acquired {
                    valid_until, fence, ..
                }) => {
                    acquired += 1;
                    check!(valid_until > now, "acquired at or past its deadline");
                    let p = proven.ok_or_else(|| TestCaseError::fail("trust without any proof"))?;
                    check!(valid_until <= p, "{valid_until:?} past every proof ({p:?})");
                    let f = fence.ok_or_else(|| TestCaseError::fail("acquired without a fence"))?;
                    check!(
                        czxids.iter().any(|c| u64::try_from(*c).ok() == Some(f.0)),
                        "fence {} from no server answer",
                        f.0
                    );
                }
                Output::Event(Event::Extended { valid_until }) => {
                    check!(valid_until > now, "extended at or past its deadline");
                    let p = proven.ok_or_else(|| TestCaseError::fail("trust without any proof"))?;
                    check!(valid_until <= p, "{valid_until:?} past every proof ({p:?})");
                }
                Output::Event(_) => {}
            }
        }
        if let State::Held { valid_until } = m.state() {
            check!(
                now < valid_until,
                "held at {now:?}, deadline {valid_until:?}"
            );
        }
    }
    Ok(acquired)
}

#[test]
fn a_run_served_by_the_server_acquires_and_releases() {
    let mut script = vec![Action::Acquire];
    script.extend((0..6).map(|_| Action::Serve {
        pick: 0,
        left_ms: 9_000,
    }));
    script.push(Action::Release);
    script.extend((0..3).map(|_| Action::Serve {
        pick: 0,
        left_ms: 9_000,
    }));
    assert_eq!(play(script).unwrap(), 1);
}

#[test]
fn random_runs_do_acquire() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(action(), 1..100);
    let acquiring = (0..500)
        .filter(|_| play(strategy.new_tree(&mut runner).unwrap().current()).unwrap() > 0)
        .count();
    eprintln!("{acquiring} of 500 random runs acquired");
    // Not a vacuous suite: a good share of random runs reach the checks on a claim.
    assert!(
        acquiring >= 50,
        "only {acquiring} of 500 random runs acquired"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    /// Trust never outruns a proof, fences come from the server, held means before the
    /// deadline, and no input panics.
    #[test]
    fn trust_comes_from_a_session_proof_and_fences_from_the_server(actions in prop::collection::vec(action(), 1..100)) {
        play(actions)?;
    }
}
