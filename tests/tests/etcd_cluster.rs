//! The etcd adapter on a three-member cluster (`scripts/services.sh start`: members on
//! 127.0.0.1:22791-22793, or `LUCKY_ETCD_CLUSTER`) with one member killed, stopped or
//! restarted: the cluster keeps a quorum, so Lucky must keep working. Every time: no try
//! reports "unreachable" for a lock someone holds, the holder never loses its lock, the waiter
//! gets it promptly after the release, and fences strictly increase.
//!
//! The faults need the members' process ids, which `scripts/services.sh` writes under
//! `$LUCKY_SERVICES_DIR/cluster` (default `/tmp/lucky-services`); killed members are started
//! again with `scripts/services.sh start-cluster`. A missing cluster skips these tests, unless
//! `LUCKY_REQUIRE_SERVERS=1`. The tests take turns: each holds the cluster alone.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap and read the clock

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lucky::etcd::{Etcd, Guard};
use lucky_tests::servers::required;

/// The lease ttl of the holder: keepalives every ttl/3, fail-over within ttl/40.
const TTL: Duration = Duration::from_secs(4);
/// A waiter must have the lock this soon after the holder released it: within one watch
/// re-check interval (the ttl: a waiter trusts one watch that long before it reads the queue
/// again) and a request. Hand-offs measure milliseconds when the waiter's watch survives the
/// fault, up to about 2.3 s seen when it had to be re-established around a member restart.
const PROMPT: Duration = Duration::from_secs(5);

/// One test at a time takes members down.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn endpoints() -> Vec<String> {
    match std::env::var("LUCKY_ETCD_CLUSTER") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_owned()).collect(),
        _ => (1..=3)
            .map(|m| format!("http://127.0.0.1:{}", 22_790 + m))
            .collect(),
    }
}

fn services_dir() -> PathBuf {
    std::env::var_os("LUCKY_SERVICES_DIR")
        .map_or_else(|| PathBuf::from("/tmp/lucky-services"), PathBuf::from)
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh")
}

/// A member of the services.sh cluster, found by its client port.
#[derive(Debug, Clone)]
struct Member {
    endpoint: String,
    pid: u32,
}

impl Member {
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
    fn kill(&self) {
        self.signal("-KILL");
    }
    fn stop(&self) {
        self.signal("-STOP");
    }
    fn resume(&self) {
        self.signal("-CONT");
    }
}

/// Whether process `pid` runs (a killed one not yet reaped is a zombie: it does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("State:"))
            .is_some_and(|l| !l.contains('Z'))
    })
}

/// The cluster's members with their process ids, or None (skip) when it is not there.
async fn members() -> Option<Vec<Member>> {
    let eps = endpoints();
    let mut out = Vec::new();
    for e in &eps {
        let port: Option<u16> = e.rsplit(':').next().and_then(|p| p.parse().ok());
        let pid = port
            .filter(|p| (22_791..=22_793).contains(p))
            .and_then(|p| {
                let f = services_dir().join(format!("cluster/m{}.pid", p - 22_790));
                std::fs::read_to_string(f).ok()
            })
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&pid| alive(pid));
        match pid {
            Some(pid) => out.push(Member {
                endpoint: e.clone(),
                pid,
            }),
            None => {
                assert!(
                    !required(),
                    "no process id for the cluster member {e} and LUCKY_REQUIRE_SERVERS=1 \
                     (run scripts/services.sh start)"
                );
                eprintln!("skipping: the etcd cluster member {e} is not ours to signal (run scripts/services.sh start)");
                return None;
            }
        }
    }
    if !all_healthy(&eps).await {
        assert!(
            !required(),
            "the etcd cluster {eps:?} is not healthy and LUCKY_REQUIRE_SERVERS=1"
        );
        eprintln!("skipping: the etcd cluster {eps:?} is not healthy");
        return None;
    }
    Some(out)
}

/// Whether `endpoint` serves a linearizable read within a second (it has a leader).
async fn serves(endpoint: &str) -> bool {
    let opts = etcd_client::ConnectOptions::new().with_require_leader(true);
    let read = async {
        let mut c = etcd_client::Client::connect([endpoint], Some(opts))
            .await
            .ok()?;
        c.get("lucky-probe", None).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .ok()
        .flatten()
        .is_some()
}

async fn all_healthy(eps: &[String]) -> bool {
    for e in eps {
        if !serves(e).await {
            return false;
        }
    }
    true
}

/// Waits until the members but `down` serve again (a new leader is elected after a leader
/// was killed): what etcd itself needs before it serves anyone.
async fn wait_for_quorum(members: &[Member], down: &str) -> Duration {
    let t = Instant::now();
    loop {
        let mut ok = true;
        for m in members.iter().filter(|m| m.endpoint != down) {
            ok &= serves(&m.endpoint).await;
        }
        if ok {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no quorum after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resumes every member and starts the killed ones again (their data kept), then waits until
/// all serve. Also run on drop, so a failed test leaves the cluster healthy.
struct Restore(Vec<Member>);

impl Restore {
    fn now(&self) {
        for m in &self.0 {
            m.resume();
        }
        let ok = Command::new("bash")
            .arg(script())
            .arg("start-cluster")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "scripts/services.sh start-cluster failed");
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for m in &self.0 {
                m.resume();
            }
            let _ = Command::new("bash")
                .arg(script())
                .arg("start-cluster")
                .status();
        }
    }
}

fn unique(name: &str) -> String {
    format!("lucky-test/cluster/{name}/{}", std::process::id())
}

async fn connect() -> Etcd {
    // Connecting waits out an election (members answer "no leader"), up to this bound: the
    // waiter connects while the test kills the leader.
    Etcd::builder(endpoints())
        .ttl(TTL)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connecting with one member down")
}

/// `n` tries of fresh clients (as `lucky exec --no-wait` makes) while the lock is held: each
/// must say "taken", none "unreachable". Returns the slowest (connect + try).
async fn tries_say_taken(name: &str, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        let c = connect().await;
        let e = c.lock(name).no_wait().await.unwrap_err();
        slowest = slowest.max(t.elapsed());
        assert!(e.is_taken(), "a try on a held lock said: {e}");
    }
    slowest
}

/// A client queued behind the holder; resolves to when it got the lock and its guard.
fn waiter(name: &str) -> tokio::task::JoinHandle<(Instant, Guard)> {
    let name = name.to_owned();
    tokio::spawn(async move {
        let c = connect().await;
        let g = c
            .lock(&name)
            .wait(Duration::from_secs(60))
            .await
            .expect("the waiter acquires");
        (Instant::now(), g)
    })
}

/// Holds for `d`, checking every 100 ms that the lock is still held.
async fn hold_for(g: &Guard, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        assert!(g.is_held(), "the holder lost its lock with one member down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Releases `holder`; the waiter must get the lock within [`PROMPT`] with a higher fence.
/// Returns the hand-off time.
async fn hand_off(holder: Guard, waiting: tokio::task::JoinHandle<(Instant, Guard)>) -> Duration {
    assert!(!waiting.is_finished(), "the waiter got a held lock");
    let f0 = holder.fence().unwrap();
    let released = Instant::now();
    holder.release().await.unwrap();
    let (got, g) = tokio::time::timeout(PROMPT * 2, waiting)
        .await
        .expect("the waiter got the lock")
        .unwrap();
    let gap = got.saturating_duration_since(released);
    assert!(gap < PROMPT, "hand-off took {gap:?}");
    assert!(g.fence().unwrap() > f0, "fences must increase");
    g.release().await.unwrap();
    gap
}

/// Runs `body` with the cluster to itself, bounded by 3 minutes.
async fn exclusive<F: std::future::Future<Output = ()>>(body: impl FnOnce(Vec<Member>) -> F) {
    let _turn = CLUSTER.lock().await;
    let Some(members) = members().await else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(180), body(members))
        .await
        .expect("the test finished within 3 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_each_member_in_turn() {
    exclusive(|members| async move {
        let restore = Restore(members.clone());
        for (k, victim) in members.iter().enumerate() {
            let name = unique(&format!("kill-{k}"));
            let holder_client = connect().await;
            let holder = holder_client.lock(&name).await.unwrap();
            let waiting = waiter(&name);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let used = holder_client.preferred_endpoint().to_owned();
            victim.kill();
            let killed = Instant::now();
            let election = wait_for_quorum(&members, &victim.endpoint).await;
            let slowest = tries_say_taken(&name, 5).await;
            // Well past the ttl: several keepalives must have failed over.
            hold_for(&holder, (TTL * 2).saturating_sub(killed.elapsed())).await;
            let gap = hand_off(holder, waiting).await;
            eprintln!(
                "killed {} (the holder used {used}): quorum again after {election:?}, \
                 slowest no-wait try {slowest:?}, hand-off {gap:?}",
                victim.endpoint
            );
            restore.now();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_the_holders_member_for_longer_than_the_ttl() {
    exclusive(|members| async move {
        let restore = Restore(members.clone());
        let name = unique("sigstop");
        let holder_client = connect().await;
        let holder = holder_client.lock(&name).await.unwrap();
        let used = holder_client.preferred_endpoint().to_owned();
        let victim = members.iter().find(|m| m.endpoint == used).unwrap();
        let waiting = waiter(&name);
        tokio::time::sleep(Duration::from_millis(300)).await;
        victim.stop();
        let stopped = Instant::now();
        let election = wait_for_quorum(&members, &victim.endpoint).await;
        let slowest = tries_say_taken(&name, 5).await;
        hold_for(&holder, (TTL * 3 / 2).saturating_sub(stopped.elapsed())).await;
        assert_ne!(
            holder_client.preferred_endpoint(),
            used,
            "the holder still prefers the stopped member"
        );
        // The stopped member stays stopped through the hand-off.
        let gap = hand_off(holder, waiting).await;
        victim.resume();
        eprintln!(
            "stopped {used} (the holder's member) for {:?}: quorum after {election:?}, \
             slowest no-wait try {slowest:?}, hand-off {gap:?}",
            stopped.elapsed()
        );
        restore.now();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_serves_again() {
    exclusive(|members| async move {
        let restore = Restore(members.clone());
        let name = unique("restart");
        let holder_client = connect().await;
        let holder = holder_client.lock(&name).await.unwrap();
        let waiting = waiter(&name);
        // The holder's member goes and comes back with its data...
        let used = holder_client.preferred_endpoint().to_owned();
        let first = members.iter().position(|m| m.endpoint == used).unwrap();
        members[first].kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        restore.now();
        let restarted = Instant::now();
        let members = self::members().await.expect("the cluster is back");
        hold_for(&holder, Duration::from_secs(1)).await;
        // ...then another member goes: the quorum now needs the restarted one, so every
        // client must reach it again.
        let second = &members[(first + 1) % members.len()];
        second.kill();
        let election = wait_for_quorum(&members, &second.endpoint).await;
        let slowest = tries_say_taken(&name, 5).await;
        hold_for(&holder, (TTL * 3 / 2).saturating_sub(restarted.elapsed())).await;
        let gap = hand_off(holder, waiting).await;
        eprintln!(
            "restarted {used}, then killed {}: quorum after {election:?}, slowest no-wait \
             try {slowest:?}, hand-off {gap:?}",
            second.endpoint
        );
        Restore(members).now();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_down_is_unreachable_and_the_holder_is_lost_at_its_deadline() {
    exclusive(|members| async move {
        let restore = Restore(members.clone());
        let name = unique("no-quorum");
        let holder_client = connect().await;
        let holder = holder_client.lock(&name).await.unwrap();
        members[0].kill();
        members[1].kill();
        let down = Instant::now();
        // No quorum: a try is "unreachable" (never "taken": nothing can be read), bounded.
        let t = Instant::now();
        let e = match Etcd::builder(endpoints()).ttl(TTL).connect().await {
            Ok(c) => c
                .lock(&name)
                .no_wait()
                .await
                .expect_err("no quorum, no lock"),
            Err(e) => e,
        };
        assert!(e.is_unreachable(), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // The holder is lost at its deadline, never later.
        let deadline = holder.valid_until();
        tokio::time::timeout(TTL * 2, holder.lost())
            .await
            .expect("lost() fired");
        let fired = Instant::now();
        assert!(fired >= deadline, "lost before its deadline");
        assert!(
            fired.duration_since(deadline) < Duration::from_millis(500),
            "lost {:?} after its deadline",
            fired.duration_since(deadline)
        );
        eprintln!(
            "two members down: holder lost {:?} after the fault, {:?} after its deadline",
            fired.duration_since(down),
            fired.duration_since(deadline)
        );
        drop(holder);
        restore.now();
    })
    .await;
}
