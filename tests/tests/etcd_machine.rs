//! The etcd lease lock machine, driven against the simulator's cluster model with a 1 ms
//! round trip: the acquisition path, the queue, loss at the lease deadline, the cost of a
//! cycle, bad input, and a property suite over random replies and time.
//!
//! Cases of the property suite per run: `PROPTEST_CASES` (default 512).
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::collections::BTreeMap;

use lucky_core::etcd::{Command, EtcdConfig, EtcdLock, Reply, SessionView};
use lucky_core::redlock::Wait;
use lucky_core::strategies::{etcd_config, etcd_reply, time_step};
use lucky_core::{Duration, Event, Instant, LockMachine, NodeId, OpId, Output, State, UsageError};
use lucky_sim::etcd::EtcdNode;
use lucky_sim::Server;
use proptest::prelude::*;

const MS: u64 = 1_000_000;

/// Machines against one cluster model: requests land 0.5 ms after they are sent and answers
/// come back 0.5 ms later. Answers to clients in `deaf` are lost.
struct Bench {
    node: EtcdNode,
    now: u64,
    seq: u64,
    /// (time, seq) -> what happens: a request reaching the node or an answer reaching a client.
    queue: BTreeMap<(u64, u64), Msg>,
    kept: BTreeMap<u64, (usize, OpId)>,
    m: Vec<EtcdLock>,
    events: Vec<Vec<(u64, Event)>>,
    sent: Vec<Vec<(u64, Command)>>,
    deaf: Vec<bool>,
}

enum Msg {
    Request(usize, OpId, Command),
    Answer(usize, OpId, Reply),
}

impl Bench {
    fn new(cfg: &EtcdConfig, clients: usize) -> Bench {
        Bench {
            node: EtcdNode::new(),
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            kept: BTreeMap::new(),
            m: (0..clients)
                .map(|c| EtcdLock::new(cfg, b"jobs", c as u64).unwrap())
                .collect(),
            events: vec![Vec::new(); clients],
            sent: vec![Vec::new(); clients],
            deaf: vec![false; clients],
        }
    }

    fn at(&self) -> Instant {
        Instant::from_nanos(self.now)
    }

    fn acquire(&mut self, c: usize) {
        let now = self.at();
        self.m[c].acquire(now).unwrap();
    }

    fn release(&mut self, c: usize) {
        let now = self.at();
        self.m[c].release(now).unwrap();
    }

    fn push(&mut self, at: u64, msg: Msg) {
        self.seq += 1;
        self.queue.insert((at, self.seq), msg);
    }

    fn drain(&mut self, c: usize) {
        while let Some(out) = self.m[c].poll_output() {
            match out {
                Output::Transmit(t) => {
                    self.sent[c].push((self.now, t.command.clone()));
                    self.push(self.now + MS / 2, Msg::Request(c, t.op, t.command));
                }
                Output::Event(e) => self.events[c].push((self.now, e)),
            }
        }
    }

    /// Runs until `until` (ns), firing timers, requests and answers in time order.
    fn run_to(&mut self, until: u64) {
        loop {
            for c in 0..self.m.len() {
                self.drain(c);
            }
            let timer = (0..self.m.len())
                .filter_map(|c| self.m[c].poll_timeout().map(|t| (t.as_nanos(), c)))
                .min();
            let msg = self.queue.first_key_value().map(|(k, _)| k.0);
            let node_timer = self.node.next_timer();
            let next = [timer.map(|t| t.0), msg, node_timer]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|t| *t <= until) else {
                self.now = until;
                return;
            };
            self.now = self.now.max(next);
            if node_timer == Some(next) {
                self.node.tick(self.now);
                self.fire();
            } else if msg == Some(next) {
                let (_, msg) = self.queue.pop_first().unwrap();
                match msg {
                    Msg::Request(c, op, command) => {
                        self.seq += 1;
                        let id = self.seq;
                        match self.node.submit(self.now, &command, id) {
                            Some(r) => self.push(self.now + MS / 2, Msg::Answer(c, op, r)),
                            None => {
                                self.kept.insert(id, (c, op));
                            }
                        }
                        self.fire();
                    }
                    Msg::Answer(c, op, reply) => {
                        if !self.deaf[c] {
                            let now = self.at();
                            self.m[c].handle_reply(now, NodeId(0), op, reply);
                        }
                    }
                }
            } else if let Some((_, c)) = timer {
                let now = self.at();
                self.m[c].handle_timeout(now);
            }
        }
    }

    fn fire(&mut self) {
        let mut fired = Vec::new();
        self.node.fired(&mut fired);
        for (id, r) in fired {
            if let Some((c, op)) = self.kept.remove(&id) {
                self.push(self.now + MS / 2, Msg::Answer(c, op, r));
            }
        }
    }

    fn acquired(&self, c: usize) -> Vec<(u64, u64, Instant)> {
        self.events[c]
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Acquired { fence, valid_until } => {
                    Some((*t, fence.unwrap().get(), *valid_until))
                }
                _ => None,
            })
            .collect()
    }

    fn writes(&self, c: usize) -> usize {
        self.sent[c]
            .iter()
            .filter(|(_, cmd)| {
                matches!(
                    cmd,
                    Command::LeaseGrant { .. }
                        | Command::Take { .. }
                        | Command::Delete { .. }
                        | Command::Revoke { .. }
                )
            })
            .count()
    }
}

fn cfg(ttl_ms: u64) -> EtcdConfig {
    EtcdConfig::builder()
        .ttl(Duration::from_millis(ttl_ms))
        .wait(Wait::Forever)
        .build()
        .unwrap()
}

#[test]
fn uncontended_cycles_cost_two_writes_after_the_first() {
    let mut b = Bench::new(&cfg(10_000), 1);
    let mut fences = Vec::new();
    for i in 0..5u64 {
        let before = b.writes(0);
        let t = b.now;
        b.acquire(0);
        b.run_to(t + 10 * MS);
        let got = b.acquired(0);
        let (at, fence, valid_until) = *got.last().unwrap();
        assert_eq!(got.len() as u64, i + 1);
        // One round trip (grant + take on the first cycle: two).
        assert_eq!(at - t, if i == 0 { 2 * MS } else { MS });
        // The lease counts from the grant's send at 0: 10 s minus 1 % and 2 ms. Renewed
        // less than a keepalive interval ago, it backs later holds without a keepalive.
        assert_eq!(valid_until.as_nanos(), 9_898 * MS);
        fences.push(fence);
        b.release(0);
        b.run_to(b.now + 10 * MS);
        assert!(matches!(
            b.events[0].last(),
            Some((_, Event::Released { .. }))
        ));
        let writes = b.writes(0) - before;
        assert_eq!(writes, if i == 0 { 3 } else { 2 }, "cycle {i}");
        assert_eq!(
            b.sent[0].len(),
            3 + 2 * i as usize,
            "no keepalive needed yet"
        );
    }
    // Every acquisition is a new key revision: strictly increasing fences.
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
    assert_eq!(b.node.live_keys(b.now), 0);
}

#[test]
fn a_waiter_watches_its_predecessor_only_and_takes_over_on_release() {
    let mut b = Bench::new(&cfg(10_000), 3);
    b.acquire(0);
    b.run_to(5 * MS);
    b.acquire(1);
    b.run_to(10 * MS);
    b.acquire(2);
    b.run_to(15 * MS);
    assert!(matches!(b.m[0].state(), State::Held { .. }));
    assert_eq!(b.m[1].state(), State::Acquiring);
    assert_eq!(b.m[2].state(), State::Acquiring);
    let watched = |b: &Bench, c: usize| {
        b.sent[c].iter().rev().find_map(|(_, cmd)| match cmd {
            Command::WaitDelete { key, prefix, .. } => Some((key.clone(), *prefix)),
            _ => None,
        })
    };
    assert_eq!(watched(&b, 1), Some((b.m[0].key().to_vec().into(), false)));
    assert_eq!(watched(&b, 2), Some((b.m[1].key().to_vec().into(), false)));
    // Release: the next in line holds one watch answer plus one read later.
    let t = b.now;
    b.release(0);
    b.run_to(t + 10 * MS);
    let (at, f1, _) = b.acquired(1)[0];
    assert!(at - t <= 3 * MS, "hand-off took {} ns", at - t);
    assert_eq!(
        b.m[2].state(),
        State::Acquiring,
        "the third waiter was not woken"
    );
    let f0 = b.acquired(0)[0].1;
    b.release(1);
    b.run_to(b.now + 10 * MS);
    let f2 = b.acquired(2)[0].1;
    assert!(f0 < f1 && f1 < f2);
    assert_eq!(b.node.max_woken(), 1);
}

#[test]
fn a_foreign_holder_under_the_prefix_excludes_us() {
    // `etcdctl lock jobs` and Go's concurrency.Mutex put `jobs/<lease hex>`.
    let mut b = Bench::new(&cfg(10_000), 1);
    b.node.put_leased(0, b"jobs/694d0000000000ff", 300 * MS);
    b.acquire(0);
    b.run_to(200 * MS);
    assert_eq!(b.m[0].state(), State::Acquiring);
    // The foreign lease expires (its owner died): we own it right after.
    b.run_to(400 * MS);
    let (at, fence, _) = b.acquired(0)[0];
    assert!((300 * MS..304 * MS).contains(&at), "acquired at {at}");
    assert!(fence > 1);
}

#[test]
fn lost_at_the_lease_deadline_counted_from_the_keepalive_send() {
    let mut b = Bench::new(&cfg(3_000), 2);
    b.acquire(0);
    b.run_to(10 * MS);
    b.acquire(1);
    // Keepalives go every second; the answer to the one sent at 1 s arrives, then the holder
    // goes deaf: its lease stands until 1 s + 3 s on the server.
    b.run_to(1_500 * MS);
    b.deaf[0] = true;
    b.run_to(6_000 * MS);
    let lost = b.events[0]
        .iter()
        .find(|(_, e)| matches!(e, Event::Lost { .. }))
        .map(|(t, _)| *t)
        .unwrap();
    let last_ack_sent = b.sent[0]
        .iter()
        .filter(|(t, c)| matches!(c, Command::KeepAlive { .. }) && *t < 1_500 * MS)
        .map(|(t, _)| *t)
        .max()
        .unwrap();
    // ttl 3 s minus 1 % and 2 ms, from the send of the last acknowledged keepalive.
    assert_eq!(lost, last_ack_sent + 2_968 * MS);
    // The other client gets the lock only after that.
    let (taken, _, _) = b.acquired(1)[0];
    assert!(taken > lost, "taken at {taken}, lost at {lost}");
}

#[test]
fn a_compacted_watch_reads_the_queue_again() {
    let mut b = Bench::new(&cfg(10_000), 2);
    b.node.compact_always = true;
    b.acquire(0);
    b.run_to(5 * MS);
    b.acquire(1);
    b.run_to(20 * MS);
    b.release(0);
    b.run_to(30 * MS);
    assert!(matches!(b.m[1].state(), State::Held { .. }));
}

#[test]
fn after_a_failed_keepalive_ownership_is_read_before_extending() {
    let mut b = Bench::new(&cfg(3_000), 1);
    b.acquire(0);
    b.run_to(10 * MS);
    b.deaf[0] = true;
    b.run_to(1_200 * MS); // the keepalive at 1 s times out after 150 ms
    assert!(b.events[0]
        .iter()
        .any(|(_, e)| matches!(e, Event::ExtendFailed { .. })));
    b.deaf[0] = false;
    let before = b.sent[0].len();
    b.run_to(1_500 * MS);
    let after: Vec<_> = b.sent[0][before..].iter().map(|(_, c)| c.name()).collect();
    let ka = after.iter().position(|n| *n == "LeaseKeepAlive").unwrap();
    assert_eq!(after.get(ka + 1), Some(&"Txn(queue)"), "{after:?}");
    assert!(matches!(
        b.events[0].last(),
        Some((_, Event::Extended { .. }))
    ));
}

#[test]
fn bad_input_is_a_usage_error() {
    let c = cfg(1_000);
    assert_eq!(EtcdLock::new(&c, b"", 0).unwrap_err(), UsageError::EmptyKey);
    assert!(matches!(
        EtcdLock::new(&c, &[b'x'; 600], 0).unwrap_err(),
        UsageError::KeyTooLong { .. }
    ));
    let b = || EtcdConfig::builder();
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
    // etcd counts whole seconds: a ttl is rounded up, and the lease asked for says so.
    let rounded = b().ttl(Duration::from_millis(1_200)).build().unwrap();
    assert_eq!(rounded.ttl(), Duration::from_secs(2));
    assert_eq!(rounded.ttl_secs(), 2);
    assert!(matches!(
        b().ttl(Duration::from_millis(1))
            .drift(600_000, Duration::ZERO)
            .build()
            .unwrap_err(),
        UsageError::DriftTooLarge { .. }
    ));
    let mut m = EtcdLock::new(&c, b"x", 0).unwrap();
    assert_eq!(m.extend(Instant::ZERO), Err(UsageError::NotHeld));
    assert_eq!(m.release(Instant::ZERO), Err(UsageError::NotHeld));
    m.acquire(Instant::ZERO).unwrap();
    assert_eq!(m.acquire(Instant::ZERO), Err(UsageError::Busy));
}

#[test]
fn garbage_replies_fail_the_attempt_without_panicking() {
    let c = EtcdConfig::builder()
        .ttl(Duration::from_secs(1))
        .wait(Wait::None)
        .build()
        .unwrap();
    let mut m = EtcdLock::new(&c, b"x", 0).unwrap();
    m.acquire(Instant::ZERO).unwrap();
    let Some(Output::Transmit(t)) = m.poll_output() else {
        panic!("no grant sent")
    };
    m.handle_reply(Instant::ZERO, t.node, t.op, Reply::Deleted);
    let out: Vec<_> = std::iter::from_fn(|| m.poll_output()).collect();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::Failed(_)))),
        "{out:?}"
    );
    assert_eq!(m.state(), State::Done);
}

/// A one-shot lock on a shared session: ttl 5 s, requests time out after 300 ms.
fn session_cfg() -> EtcdConfig {
    EtcdConfig::builder()
        .ttl(Duration::from_secs(5))
        .op_timeout(Duration::from_millis(300))
        .wait(Wait::None)
        .build()
        .unwrap()
}

#[test]
fn a_lock_whose_session_gets_no_lease_fails_at_the_request_timeout() {
    let mut m = EtcdLock::in_session(&session_cfg(), b"x", 1, 0).unwrap();
    m.acquire(Instant::ZERO).unwrap();
    assert!(
        m.wants_session(),
        "no lease yet: the lock asks its session for one"
    );
    // The session's grant never succeeds (etcd unreachable): the lock does not wait on it
    // past a request's time.
    let at = m
        .poll_timeout()
        .expect("a deadline while waiting for the session");
    assert_eq!(at, Instant::ZERO + Duration::from_millis(300));
    m.handle_timeout(at.saturating_sub(Duration::from_millis(1)));
    assert_eq!(m.state(), State::Acquiring);
    m.handle_timeout(at);
    let out: Vec<_> = std::iter::from_fn(|| m.poll_output()).collect();
    let failed = out.iter().find_map(|o| match o {
        Output::Event(Event::Failed(e)) => Some(e.clone()),
        _ => None,
    });
    let e = failed.unwrap_or_else(|| panic!("no failure: {out:?}"));
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(m.state(), State::Done);
    assert!(!m.wants_session());
    // Nothing was sent for it: the lock had no key to clean up.
    assert!(
        !out.iter().any(|o| matches!(o, Output::Transmit(_))),
        "{out:?}"
    );
}

#[test]
fn an_owner_whose_session_lease_is_not_confirmed_in_time_fails_and_deletes_its_key() {
    let ms = |n: u64| Instant::from_nanos(n * MS);
    let mut m = EtcdLock::in_session(&session_cfg(), b"x", 1, 0).unwrap();
    let view = SessionView {
        lease: 7,
        until: ms(100),
        epoch: 0,
    };
    m.set_session(ms(0), Some(view));
    m.acquire(ms(0)).unwrap();
    let Some(Output::Transmit(take)) = m.poll_output() else {
        panic!("no take sent")
    };
    assert!(matches!(take.command, Command::Take { lease: 7, .. }));
    // The take answers that we are first, after the session's lease stopped being known
    // alive (its keepalives fail): ownership waits for the session's next keepalive ...
    m.handle_reply(
        ms(150),
        take.node,
        take.op,
        Reply::Taken {
            create_revision: 10,
            owner_revision: 10,
            revision: 10,
        },
    );
    assert_eq!(m.state(), State::Acquiring);
    // ... for a request's time, not for ever.
    assert_eq!(m.poll_timeout(), Some(ms(450)));
    m.handle_timeout(ms(450));
    let out: Vec<_> = std::iter::from_fn(|| m.poll_output()).collect();
    let delete = out
        .iter()
        .find_map(|o| match o {
            Output::Transmit(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the key is not cleaned up: {out:?}"));
    // The take was answered: the key is deleted at its revision, no guard needed.
    assert!(
        matches!(delete.command, Command::Delete { revision: 10, .. }),
        "{:?}",
        delete.command
    );
    m.handle_reply(ms(452), delete.node, delete.op, Reply::Done);
    let out: Vec<_> = std::iter::from_fn(|| m.poll_output()).collect();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::Failed(_)))),
        "{out:?}"
    );
    assert_eq!(m.state(), State::Done);
}

// ----- property suite -----

#[derive(Clone, Debug)]
enum Action {
    Acquire,
    Extend,
    Release,
    Reply { pick: usize, reply: Reply },
    Tick(Duration),
    Timeout,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => Just(Action::Acquire),
        1 => Just(Action::Extend),
        1 => Just(Action::Release),
        8 => (any::<usize>(), etcd_reply()).prop_map(|(pick, reply)| Action::Reply { pick, reply }),
        2 => time_step().prop_map(Action::Tick),
        2 => Just(Action::Timeout),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Whatever the cluster answers and whenever: no panic, never held past the deadline,
    /// and every validity is backed by a lease confirmation: `send time of an acknowledged
    /// grant or keepalive + its ttl - drift`.
    #[test]
    fn etcd_keeps_its_invariants(cfg in etcd_config(), actions in proptest::collection::vec(action(), 1..200)) {
        let mut m = EtcdLock::new(&cfg, b"lock", 3).unwrap();
        let mut now = Instant::from_nanos(1);
        let mut sent: Vec<(Instant, OpId, Command)> = Vec::new();
        let mut backed = Instant::ZERO;
        for a in actions {
            let before = m.state();
            let mut input_now = now;
            match a {
                Action::Acquire => drop(m.acquire(now)),
                Action::Extend => drop(m.extend(now)),
                Action::Release => drop(m.release(now)),
                Action::Reply { pick, reply } => {
                    if sent.is_empty() { continue; }
                    let (at, op, cmd) = sent[pick % sent.len()].clone();
                    let ttl = match (&cmd, &reply) {
                        (Command::LeaseGrant { .. }, Reply::Lease { ttl, .. })
                        | (Command::KeepAlive { .. }, Reply::KeepAlive { ttl }) => Some(*ttl),
                        _ => None,
                    };
                    if let Some(ttl) = ttl {
                        backed = backed.max(at + ttl.saturating_sub(cfg.drift_for(ttl)));
                    }
                    m.handle_reply(now, NodeId(0), op, reply);
                }
                Action::Tick(d) => {
                    now = now + d;
                    input_now = now;
                    m.handle_timeout(now);
                }
                Action::Timeout => {
                    if let Some(t) = m.poll_timeout() {
                        now = now.max(t);
                        input_now = now;
                        m.handle_timeout(now);
                    }
                }
            }
            let mut events = Vec::new();
            while let Some(out) = m.poll_output() {
                match out {
                    Output::Transmit(t) => {
                        prop_assert_eq!(t.node, NodeId(0));
                        sent.push((now, t.op, t.command));
                    }
                    Output::Event(e) => events.push(e),
                }
            }
            for e in &events {
                if let Event::Acquired { valid_until, .. } | Event::Extended { valid_until } = e {
                    prop_assert!(*valid_until > now, "{e:?} at {now:?}");
                    prop_assert!(*valid_until <= backed, "{e:?} not backed by a lease ({backed:?})");
                }
            }
            if let State::Held { valid_until } = m.state() {
                prop_assert!(valid_until > now, "held past its deadline");
            }
            if let State::Held { valid_until } = before {
                if input_now >= valid_until {
                    prop_assert!(
                        events.iter().any(|e| matches!(e, Event::Lost { .. } | Event::Released { .. })),
                        "deadline passed without Lost: {events:?}"
                    );
                }
            }
        }
    }
}
