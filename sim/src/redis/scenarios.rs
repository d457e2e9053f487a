//! RedLock's scenarios: the real RedLock machine against [`RedisNode`](super::RedisNode)
//! models under faults. Those that break an assumption on purpose (clock jumps, drift beyond
//! the bound, a fast restart without data, a stalled holder) must find the violation it allows.

use lucky_core::redlock::{Retry, Wait};
use lucky_core::Duration;

use crate::net::{Cut, NetParams};
use crate::rng::Rng;
use crate::scenario::{Scenario, Setup};
use crate::world::Fault;

use super::RedLockRunner;

const MS: u64 = 1_000_000;

/// RedLock's common shape: the engine's (3 clients, ttl 400 ms, drift bound 10 000 ppm,
/// clocks within ±2 000 ppm, a calm LAN, faults for 1 s, then 1 s of quiet) over 5 nodes.
pub fn base(_rng: &mut Rng) -> Setup {
    let mut s = Setup::new(&RedLockRunner);
    s.nodes = 5;
    s
}

/// RedLock's scenarios, over five Redis nodes unless they say otherwise.
pub const SCENARIOS: &[Scenario] = &[
    Scenario { name: "split-vote", about: "4 clients ask at the same instant again and again; votes split", draw: split_vote, cost: 1 },
    Scenario { name: "blackhole-node", about: "one or two nodes swallow every message until quiet", draw: blackhole_node, cost: 1 },
    Scenario { name: "slow-links", about: "delays up to 30 ms against a 20 ms per-node timeout; heavy reordering", draw: slow_links, cost: 1 },
    Scenario { name: "pause-after-reply", about: "clients pause up to 2 ttl while replies are in flight", draw: pause_after_reply, cost: 1 },
    Scenario { name: "holder-pause", about: "holder pauses 2 ttl between its check and its write (no fencing): stale write expected", draw: holder_pause, cost: 1 },
    Scenario { name: "clock-jump-node", about: "three node clocks jump forward by the ttl under a holder: overlap expected", draw: clock_jump_node, cost: 1 },
    Scenario { name: "client-drift-sweep", about: "client clocks drift within the bound (safe) or 4-6x beyond it (overlap expected)", draw: client_drift_sweep, cost: 1 },
    Scenario { name: "restart-without-persistence", about: "a node of the holder's bare quorum restarts empty at once: overlap expected", draw: restart_without_persistence, cost: 1 },
    Scenario { name: "rolling-restarts-with-extend", about: "nodes restart one by one (state kept, or lost with a delayed restart) under auto-extended holds", draw: rolling_restarts, cost: 1 },
    Scenario { name: "extend-after-expiry", about: "extensions sent just before the deadline reply after it", draw: extend_after_expiry, cost: 1 },
    Scenario { name: "partial-extend", about: "renewals reach only a minority for a while", draw: partial_extend, cost: 1 },
    Scenario { name: "starved-renewal", about: "a client's requests are cut for longer than the ttl", draw: starved_renewal, cost: 1 },
    Scenario { name: "unlock-races-renewal", about: "frequent auto-extension racing releases", draw: unlock_races_renewal, cost: 1 },
    Scenario { name: "cancel-mid-acquire", about: "acquisitions cancelled while their requests are in flight", draw: cancel_mid_acquire, cost: 1 },
    Scenario { name: "release-with-node-down", about: "nodes crash (state kept) around releases", draw: release_with_node_down, cost: 1 },
    Scenario { name: "late-duplicate-replies", about: "20% duplicates and delays beyond the per-node timeout", draw: late_duplicate_replies, cost: 1 },
    Scenario { name: "holder-partitioned", about: "a client is cut off from every node for 1.5 ttl", draw: holder_partitioned, cost: 1 },
    Scenario { name: "minority-alive", about: "three of five nodes down until quiet: no quorum, no false grant", draw: minority_alive, cost: 1 },
    Scenario { name: "fence-sequence", about: "fenced locks over three different bare quorums: fences strictly increase", draw: fence_sequence, cost: 1 },
    Scenario { name: "holder-pause-fenced", about: "holder pauses 2 ttl between check and write; the resource rejects its stale fence", draw: holder_pause_fenced, cost: 1 },
    Scenario { name: "clock-jump-fenced", about: "node clocks jump under fenced holders: exclusion breaks (expected), fences hold", draw: clock_jump_fenced, cost: 1 },
    Scenario { name: "restart-without-persistence-fenced", about: "a node forgets keys and counters and restarts at once: both may break (expected)", draw: restart_without_persistence_fenced, cost: 1 },
    Scenario { name: "restart-delayed-fenced", about: "the node in every bare quorum forgets keys and counters and comes back after the ttl; node clocks in step: fences hold", draw: restart_delayed_fenced, cost: 1 },
    Scenario { name: "client-drift-fenced", about: "fenced holders with client drift within or far beyond the bound: fences hold either way", draw: client_drift_fenced, cost: 1 },
    Scenario { name: "no-wait-exit", about: "fenced one-shot tries at once; each client exits when its try ends: nothing left behind", draw: no_wait_exit, cost: 1 },
    Scenario { name: "overtaken-release-fenced", about: "reordering links let releases overtake fenced SETs; clients exit after one try: nothing left behind", draw: overtaken_release_fenced, cost: 1 },
    Scenario { name: "random-chaos", about: "swarm: every assumption-keeping fault at rates drawn per seed", draw: random_chaos, cost: 1 },
];

fn split_vote(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 4;
    s.work.think_ns = (0, 500_000);
    s.work.hold_ns = Some((MS, 5 * MS));
    s.net.delay_ns = (100_000, 3 * MS);
    s.retry = Retry {
        delay: Duration::from_millis(1),
        jitter: Duration::from_millis(4),
    };
    s.work.quiet_at = 400 * MS;
    s.work.stop_at = 800 * MS;
    s
}

fn blackhole_node(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    let holes = 1 + rng.range(0, 1) as usize;
    for node in 0..holes {
        s.faults.push((
            0,
            Fault::Partition {
                client: None,
                node,
                cut: Cut::Both,
            },
        ));
    }
    s
}

fn slow_links(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.net.delay_ns = (MS, 30 * MS);
    s.net.reorder = true;
    s
}

fn pause_after_reply(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    for _ in 0..8 {
        let client = rng.range(0, 2) as usize;
        let for_ns = rng.range(s.ttl() / 10, 2 * s.ttl());
        s.faults.push((s.at(rng), Fault::Pause { client, for_ns }));
    }
    s
}

fn holder_pause(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.pause_after_check_ns = Some(2 * s.ttl());
    s.work.quiet_at = 1_600 * MS;
    s.work.stop_at = 1_600 * MS;
    s.work.progress_within = None;
    s.must_violate = true;
    s
}

fn clock_jump_node(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.hold_ns = Some((s.ttl() / 2, s.ttl() * 3 / 4));
    s.work.think_ns = (0, MS);
    s.wait = Wait::Forever;
    let mut t = 200 * MS;
    while t < s.work.quiet_at {
        for node in 0..3 {
            s.faults.push((
                t,
                Fault::ClockJump {
                    node,
                    by_ns: s.ttl() as i64,
                },
            ));
        }
        t += rng.range(80 * MS, 200 * MS);
    }
    s.must_violate = true;
    s
}

fn client_drift_sweep(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.hold_ns = None; // hold until the deadline: the drift decides who is right
    s.work.think_ns = (0, MS);
    s.retry = Retry {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(6),
    };
    s.wait = Wait::Forever;
    let bound = s.drift_ppm as i32;
    if rng.range(0, 1) == 0 {
        // Within the bound: every actor within ±bound/2 (spread <= bound).
        s.work.clock_ppm = bound / 2;
    } else {
        // Beyond: clients run slow by 4-6x the bound, so they believe past the node expiry.
        s.work.clock_ppm = 0;
        s.work.client_ppm = Some((-6 * bound, -4 * bound));
        s.must_violate = true;
    }
    s.work.quiet_at = 800 * MS;
    s.work.stop_at = 1_600 * MS;
    s
}

fn restart_without_persistence(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.hold_ns = Some((s.ttl() / 2, s.ttl() * 3 / 4));
    s.work.think_ns = (0, MS);
    // Clients 0 and 1 reach only nodes {0, 1, 2}, client 2 only {0, 3, 4}: every quorum is
    // bare and node 0 is in all of them. When node 0 forgets the holder's key and comes back
    // at once, the other side wins its own quorum while the holder still holds.
    for client in 0..2 {
        for node in 3..5 {
            s.faults.push((
                0,
                Fault::Partition {
                    client: Some(client),
                    node,
                    cut: Cut::Both,
                },
            ));
        }
    }
    for node in 1..3 {
        s.faults.push((
            0,
            Fault::Partition {
                client: Some(2),
                node,
                cut: Cut::Both,
            },
        ));
    }
    let mut t = 100 * MS;
    while t < s.work.quiet_at {
        s.faults.push((
            t,
            Fault::Crash {
                node: 0,
                lose_state: true,
            },
        ));
        s.faults.push((t + MS, Fault::Restart { node: 0 }));
        t += rng.range(40 * MS, 120 * MS);
    }
    s.must_violate = true;
    s
}

fn rolling_restarts(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.auto_extend = Some((None, None));
    s.work.hold_ns = Some((s.ttl(), 3 * s.ttl()));
    s.work.quiet_at = 1_600 * MS;
    s.work.stop_at = 2_600 * MS;
    let mut t = 100 * MS;
    let mut node = 0;
    while t < s.work.quiet_at - 600 * MS {
        let lose = rng.range(0, 1) == 0;
        let down = if lose {
            s.ttl() * 11 / 10 + rng.range(0, 50 * MS)
        } else {
            rng.range(MS, 80 * MS)
        };
        s.faults.push((
            t,
            Fault::Crash {
                node,
                lose_state: lose,
            },
        ));
        s.faults.push((t + down, Fault::Restart { node }));
        t += down + rng.range(10 * MS, 100 * MS);
        node = (node + 1) % s.nodes;
    }
    s
}

fn extend_after_expiry(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.drift_ppm = 1_000;
    s.work.clock_ppm = 400;
    // Validity 400 - 0.4 - 2 = 397.6 ms; extend 3-6 ms before the deadline.
    let every = Duration::from_micros(397_600 - rng.range(3_000, 6_000));
    s.auto_extend = Some((Some(every), None));
    s.net.delay_ns = (2 * MS, 12 * MS);
    s.work.hold_ns = Some((2 * s.ttl(), 3 * s.ttl()));
    s.work.think_ns = (0, MS);
    s.work.write_every_ns = (MS, 3 * MS);
    s.retry = Retry {
        delay: Duration::from_millis(1),
        jitter: Duration::from_millis(2),
    };
    s.wait = Wait::Forever;
    s.work.quiet_at = 800 * MS;
    s.work.stop_at = 1_600 * MS;
    s
}

fn partial_extend(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.auto_extend = Some((None, None));
    s.work.hold_ns = Some((s.ttl(), 2 * s.ttl()));
    for _ in 0..4 {
        let client = rng.range(0, 2) as usize;
        let t = s.at(rng);
        let nodes: Vec<usize> = (0..3).collect();
        s.cut_for(t, s.ttl() / 2, Some(client), &nodes, Cut::ToNode);
    }
    s
}

fn starved_renewal(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.auto_extend = Some((None, None));
    s.work.hold_ns = Some((s.ttl(), 3 * s.ttl()));
    for _ in 0..3 {
        let client = rng.range(0, 2) as usize;
        let t = s.at(rng);
        let nodes: Vec<usize> = (0..s.nodes).collect();
        s.cut_for(t, s.ttl() * 3 / 2, Some(client), &nodes, Cut::ToNode);
    }
    s
}

fn unlock_races_renewal(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.auto_extend = Some((Some(Duration::from_millis(rng.range(2, 10))), None));
    s.work.hold_ns = Some((MS, 80 * MS));
    s.net.delay_ns = (100_000, 5 * MS);
    s
}

fn cancel_mid_acquire(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.cancel = Some((400_000, (0, 3 * MS)));
    s.net.delay_ns = (100_000, 4 * MS);
    let _ = rng;
    s
}

fn release_with_node_down(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    for _ in 0..6 {
        let node = rng.range(0, s.nodes as u64 - 1) as usize;
        let t = s.at(rng);
        s.faults.push((
            t,
            Fault::Crash {
                node,
                lose_state: false,
            },
        ));
        s.faults
            .push((t + rng.range(5 * MS, 100 * MS), Fault::Restart { node }));
    }
    s
}

/// Cron-style tries: every client makes one fenced `no_wait` try at nearly the same instant
/// and exits for good as soon as it ends. Split votes are common, so failed tries have taken
/// nodes; whatever they wrote must be gone when the run's final check looks.
fn no_wait_exit(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.fencing = true;
    s.wait = Wait::None;
    s.work.clients = 8;
    s.work.exit_after_try = true;
    s.work.think_ns = (0, 2 * MS);
    s.work.hold_ns = Some((5 * MS, 20 * MS));
    // Clients exit after one try: there is nobody left to make progress.
    s.work.progress_within = None;
    s
}

/// Releases overtake their SETs: links reorder with delays up to 10 ms, tries are fenced
/// (a grant is an integer) and some are cancelled mid-flight, and every client exits once
/// its try ended: a SET granted after its release must have been released again.
fn overtaken_release_fenced(rng: &mut Rng) -> Setup {
    let mut s = no_wait_exit(rng);
    s.net = NetParams {
        delay_ns: (100_000, 10 * MS),
        drop_ppm: 0,
        dup_ppm: 0,
        reorder: true,
    };
    s.work.cancel = Some((300_000, (0, 3 * MS)));
    s
}

fn late_duplicate_replies(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.net = NetParams {
        delay_ns: (100_000, 40 * MS),
        drop_ppm: 20_000,
        dup_ppm: 200_000,
        reorder: true,
    };
    s.work.clients = 4;
    let _ = rng;
    s
}

fn holder_partitioned(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 2;
    s.auto_extend = Some((None, None));
    s.work.hold_ns = Some((s.ttl(), 2 * s.ttl()));
    for _ in 0..2 {
        let client = rng.range(0, 1) as usize;
        let t = s.at(rng);
        let nodes: Vec<usize> = (0..s.nodes).collect();
        s.cut_for(t, s.ttl() * 3 / 2, Some(client), &nodes, Cut::Both);
    }
    s
}

fn minority_alive(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    let t = rng.range(100 * MS, 400 * MS);
    for node in 0..3 {
        s.faults.push((
            t,
            Fault::Crash {
                node,
                lose_state: false,
            },
        ));
    }
    s
}

fn random_chaos(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.work.clients = 2 + rng.range(0, 2) as usize;
    s.nodes = [3, 5, 5, 7][rng.range(0, 3) as usize];
    if rng.range(0, 1) == 1 {
        s.auto_extend = Some((None, None));
        s.work.hold_ns = Some((MS, 2 * s.ttl()));
    }
    let on = |rng: &mut Rng| rng.range(0, 1) == 1;
    s.fencing = on(rng);
    if on(rng) {
        s.net.drop_ppm = rng.range(0, 200_000) as u32;
    }
    if on(rng) {
        s.net.dup_ppm = rng.range(0, 200_000) as u32;
    }
    s.net.reorder = on(rng);
    if on(rng) {
        s.net.delay_ns = (100_000, rng.range(MS, 40 * MS));
    }
    if on(rng) {
        for _ in 0..rng.range(1, 6) {
            let t = s.at(rng);
            let client = if on(rng) {
                None
            } else {
                Some(rng.range(0, s.work.clients as u64 - 1) as usize)
            };
            let node = rng.range(0, s.nodes as u64 - 1) as usize;
            let cut = [Cut::Both, Cut::ToNode, Cut::FromNode][rng.range(0, 2) as usize];
            s.faults.push((t, Fault::Partition { client, node, cut }));
            s.faults
                .push((t + rng.range(MS, s.ttl() * 2), Fault::Heal { client, node }));
        }
    }
    if on(rng) {
        for _ in 0..rng.range(1, 4) {
            let t = s.at(rng);
            let node = rng.range(0, s.nodes as u64 - 1) as usize;
            let lose = on(rng);
            // Without persistence, a node stays down longer than the ttl (the RedLock rule).
            let down = if lose {
                s.ttl() * 11 / 10 + rng.range(0, 100 * MS)
            } else {
                rng.range(MS, 200 * MS)
            };
            s.faults.push((
                t,
                Fault::Crash {
                    node,
                    lose_state: lose,
                },
            ));
            s.faults.push((t + down, Fault::Restart { node }));
        }
    }
    if on(rng) {
        for _ in 0..rng.range(1, 4) {
            let t = s.at(rng);
            let client = rng.range(0, s.work.clients as u64 - 1) as usize;
            s.faults.push((
                t,
                Fault::Pause {
                    client,
                    for_ns: rng.range(MS, s.ttl()),
                },
            ));
        }
    }
    s
}

fn fence_sequence(rng: &mut Rng) -> Setup {
    let mut s = base(rng);
    s.fencing = true;
    // Each client reaches a different three of the five nodes: {0,1,2}, {2,3,4}, {0,3,4}.
    // Every two quorums meet, but no node is in all three.
    let reach: [[usize; 3]; 3] = [[0, 1, 2], [2, 3, 4], [0, 3, 4]];
    for (client, nodes) in reach.iter().enumerate() {
        for node in (0..5).filter(|n| !nodes.contains(n)) {
            s.faults.push((
                0,
                Fault::Partition {
                    client: Some(client),
                    node,
                    cut: Cut::Both,
                },
            ));
        }
    }
    s
}

fn holder_pause_fenced(rng: &mut Rng) -> Setup {
    let mut s = holder_pause(rng);
    s.fencing = true;
    s.must_violate = false;
    // Only client 0 stalls, so later holders write before its stale write lands.
    s.work.pause_only_client = Some(0);
    s
}

fn clock_jump_fenced(rng: &mut Rng) -> Setup {
    let mut s = clock_jump_node(rng);
    s.fencing = true;
    s
}

fn restart_without_persistence_fenced(rng: &mut Rng) -> Setup {
    let mut s = restart_without_persistence(rng);
    s.fencing = true;
    s
}

/// The layout of `restart-without-persistence` (node 0 is the only node every two quorums
/// share), but node 0 comes back after more than the ttl, and the node clocks run within 1 ms
/// of each other (servers kept in step by NTP). The lost counter cannot pull a fence back: node
/// 0 answers with its clock, later than every fence issued before it went down.
fn restart_delayed_fenced(rng: &mut Rng) -> Setup {
    let mut s = restart_without_persistence(rng);
    s.fencing = true;
    s.must_violate = false;
    s.work.node_offset_ns = MS;
    s.faults
        .retain(|(_, f)| !matches!(f, Fault::Crash { .. } | Fault::Restart { .. }));
    let ttl = s.ttl();
    let mut t = 100 * MS;
    while t + ttl < s.work.quiet_at {
        s.faults.push((
            t,
            Fault::Crash {
                node: 0,
                lose_state: true,
            },
        ));
        let back = t + ttl + rng.range(ttl / 10, ttl / 2);
        s.faults.push((back, Fault::Restart { node: 0 }));
        t = back + rng.range(40 * MS, 120 * MS);
    }
    s
}

fn client_drift_fenced(rng: &mut Rng) -> Setup {
    let mut s = client_drift_sweep(rng);
    s.fencing = true;
    // Shorter than the unfenced sweep: the overlap shows up within the first holds.
    s.work.quiet_at = 600 * MS;
    s.work.stop_at = 1_200 * MS;
    s
}
