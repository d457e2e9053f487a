//! The machine against a tiny standalone ZooKeeper: one directory, sessions, a sequence
//! counter that can be set near the wrap.

use alloc::collections::BTreeMap;
use alloc::string::ToString;
use alloc::vec::Vec;

use super::*;
use crate::time::Duration;

struct Fake {
    /// name -> (czxid, owner session)
    nodes: BTreeMap<Bytes, (i64, i64)>,
    seq: i32,
    zxid: i64,
    /// Lose the answer of the next create (it is applied).
    lose_create: bool,
}

impl Fake {
    fn new(seq: i32) -> Fake {
        Fake {
            nodes: BTreeMap::new(),
            seq,
            zxid: 100,
            lose_create: false,
        }
    }

    fn exec(&mut self, c: &Command, s: Session) -> Reply {
        let name = |p: &Bytes| p.slice(p.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1)..);
        match c {
            Command::Create { dir, prefix } => {
                let mut n = BytesMut::new();
                n.put_slice(prefix);
                n.put_slice(alloc::format!("{:010}", self.seq).as_bytes());
                self.seq = self.seq.wrapping_add(1);
                self.zxid += 1;
                let n = n.freeze();
                self.nodes.insert(n.clone(), (self.zxid, s.id));
                if core::mem::take(&mut self.lose_create) {
                    return Reply::Unavailable("connection loss".to_string());
                }
                let mut path = BytesMut::new();
                path.put_slice(dir);
                path.put_u8(b'/');
                path.put_slice(&n);
                Reply::Created {
                    path: path.freeze(),
                    czxid: self.zxid,
                    session: s,
                }
            }
            Command::Children { .. } => Reply::Children {
                names: self.nodes.keys().cloned().collect(),
                session: s,
            },
            Command::Stat { path } => match self.nodes.get(&name(path)) {
                Some(&(czxid, owner)) => Reply::Stat {
                    czxid,
                    ephemeral_owner: owner,
                    session: s,
                },
                None => Reply::NoNode,
            },
            Command::WaitDelete { path } => {
                if self.nodes.contains_key(&name(path)) {
                    Reply::Unavailable("watch pending".to_string())
                } else {
                    Reply::Deleted
                }
            }
            Command::Delete { path } => match self.nodes.remove(&name(path)) {
                Some(_) => Reply::Done,
                None => Reply::NoNode,
            },
        }
    }
}

fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}

fn cfg() -> ZkConfig {
    ZkConfig::builder()
        .ttl(Duration::from_secs(10))
        .ensemble(Ensemble::STANDALONE)
        .recheck(Duration::from_secs(2))
        .wait(crate::settings::Wait::For(Duration::from_secs(5)))
        .build()
        .unwrap()
}

/// Runs `m` against `z` at `now` until it has nothing more to send; returns its events.
fn run(m: &mut ZkLock, z: &mut Fake, id: i64, now: Instant) -> Vec<Event> {
    let mut events = Vec::new();
    let s = Session {
        id,
        timeout: Duration::from_secs(10),
        until: Some(now + Duration::from_secs(9)),
    };
    for _ in 0..50 {
        let mut sent = Vec::new();
        while let Some(o) = m.poll_output() {
            match o {
                Output::Transmit(t) => sent.push(t),
                Output::Event(e) => events.push(e),
            }
        }
        if sent.is_empty() {
            break;
        }
        for t in sent {
            let r = z.exec(&t.command, s);
            // A pending watch answers nothing yet.
            if matches!(t.command, Command::WaitDelete { .. }) && matches!(r, Reply::Unavailable(_))
            {
                continue;
            }
            m.handle_reply(now, t.node, t.op, r);
        }
    }
    events
}

fn machine(token: u8) -> ZkLock {
    ZkLock::new(&cfg(), b"jobs/nightly", &[token; 16], u64::from(token)).unwrap()
}

fn fence(events: &[Event]) -> Option<u64> {
    events.iter().find_map(|e| match e {
        Event::Acquired { fence, .. } => Some(fence.map_or(0, |f| f.0)),
        _ => None,
    })
}

#[test]
fn a_waiter_gets_the_lock_after_the_holder_releases_with_a_higher_fence() {
    let mut z = Fake::new(0);
    let (mut a, mut b) = (machine(1), machine(2));
    a.acquire(ms(0)).unwrap();
    let fa = fence(&run(&mut a, &mut z, 1, ms(0))).expect("a holds");
    b.acquire(ms(1)).unwrap();
    assert_eq!(
        fence(&run(&mut b, &mut z, 2, ms(1))),
        None,
        "b waits behind a"
    );
    a.release(ms(2)).unwrap();
    run(&mut a, &mut z, 1, ms(2));
    // b's watch answers on its recheck; it lists again and owns.
    b.handle_timeout(ms(3_000));
    let fb = fence(&run(&mut b, &mut z, 2, ms(3_000))).expect("b holds");
    assert!(fb > fa);
    assert_eq!(z.nodes.len(), 1);
}

#[test]
fn a_lost_create_answer_is_found_not_repeated() {
    let mut z = Fake::new(0);
    z.lose_create = true;
    let mut a = machine(3);
    a.acquire(ms(0)).unwrap();
    let events = run(&mut a, &mut z, 1, ms(0));
    assert!(fence(&events).is_some(), "{events:?}");
    assert_eq!(z.nodes.len(), 1, "one node, no orphan: {:?}", z.nodes);
    a.release(ms(1)).unwrap();
    run(&mut a, &mut z, 1, ms(1));
    assert!(z.nodes.is_empty());
}

#[test]
fn the_queue_keeps_its_order_across_the_sequence_wrap() {
    let mut z = Fake::new(i32::MAX);
    let (mut a, mut b) = (machine(4), machine(5));
    a.acquire(ms(0)).unwrap();
    assert!(fence(&run(&mut a, &mut z, 1, ms(0))).is_some());
    // b's node gets sequence -2147483648, after a's 2147483647.
    b.acquire(ms(1)).unwrap();
    assert_eq!(fence(&run(&mut b, &mut z, 2, ms(1))), None);
    assert_eq!(sequence(b"_c_x-lock--2147483648"), Some(i32::MIN));
    // kazoo's nodes past the wrap too.
    assert_eq!(sequence(b"abc__lock__-0000000005"), Some(-5));
    assert_eq!(sequence(b"abc__lock__0000000005"), Some(5));
    assert!(before(i32::MAX, i32::MIN));
}

#[test]
fn a_node_of_another_session_is_lost_at_the_next_check() {
    let mut z = Fake::new(0);
    let mut a = machine(6);
    a.acquire(ms(0)).unwrap();
    assert!(fence(&run(&mut a, &mut z, 1, ms(0))).is_some());
    // The session ended and a new one took over the client: our node went with the old one.
    z.nodes.clear();
    a.handle_timeout(ms(1_001));
    let events = run(&mut a, &mut z, 7, ms(1_001));
    assert!(
        events.iter().any(|e| matches!(e, Event::Lost { .. })),
        "{events:?}"
    );
}

#[test]
fn bad_names_are_refused() {
    for bad in [&b""[..], b"/a", b"a/", b"a//b", b"a/../b", b".", b"a\x01"] {
        assert!(ZkLock::new(&cfg(), bad, &[1; 16], 1).is_err(), "{bad:?}");
    }
    assert!(ZkConfig::builder().root("locks").build().is_err());
    assert!(
        ZkConfig::builder()
            .ttl(Duration::from_secs(4))
            .build()
            .is_err(),
        "too short for the default ensemble"
    );
    assert_eq!(sequence(b"abc__lock__0000000042"), Some(42));
    assert_eq!(sequence(b"lock-"), None);
    assert_eq!(sequence(b"other-0000000001"), None);
}
