//! Lucky and the locks people already run on ZooKeeper, on the same lock path: kazoo's `Lock`
//! (Python, `tests/interop/kazoo_lock.py`) and Apache Curator's `InterProcessMutex` (Java,
//! Debian's Curator 5.4, `tests/interop/CuratorLock.java`) exclude Lucky both ways, and each
//! side's release wakes the other's waiter. Needs the standalone server of
//! `scripts/services.sh start` (which also installs kazoo, Curator and a JDK); skips when one
//! is missing, unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap and read the clock

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use lucky::zookeeper::ZooKeeper;
use lucky_tests::servers::{required, zk_available};

/// Another client's lock on one path, in its own process, answering one line per command.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Debian's Curator 5.4 and what it needs, for `java -cp`.
const CURATOR_JARS: [&str; 9] = [
    "curator-recipes.jar",
    "curator-framework.jar",
    "curator-client.jar",
    "guava.jar",
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "slf4j-api.jar",
    "slf4j-nop.jar",
    "netty-all.jar",
];

impl Peer {
    /// kazoo's `Lock(client, path, extra_lock_patterns=("-lock-",))` in a Python process.
    fn kazoo(path: &str) -> Option<Peer> {
        let has_kazoo = Command::new("python3")
            .args(["-c", "import kazoo"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_kazoo {
            assert!(
                !required(),
                "python3 with kazoo is needed (scripts/services.sh start)"
            );
            eprintln!("skipping: no kazoo (scripts/services.sh start installs it)");
            return None;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/kazoo_lock.py");
        Some(Peer::spawn(Command::new("python3").args([
            script,
            "127.0.0.1:2181",
            path,
        ])))
    }

    /// Curator's `InterProcessMutex(client, path)` in a JVM (the source file run by `java`).
    fn curator(path: &str) -> Option<Peer> {
        let jars: Vec<String> = CURATOR_JARS
            .iter()
            .map(|j| format!("/usr/share/java/{j}"))
            .collect();
        let present = jars.iter().all(|j| std::path::Path::new(j).exists())
            && Command::new("javac")
                .arg("-version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !present {
            assert!(
                !required(),
                "Curator and a JDK are needed (scripts/services.sh start)"
            );
            eprintln!("skipping: no Curator or JDK (scripts/services.sh start installs them)");
            return None;
        }
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/CuratorLock.java");
        Some(Peer::spawn(
            Command::new("java")
                .args([
                    "-Xmx128m",
                    "-cp",
                    &jars.join(":"),
                    source,
                    "127.0.0.1:2181",
                    path,
                ])
                .stderr(Stdio::null()),
        ))
    }

    fn spawn(cmd: &mut Command) -> Peer {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut k = Peer {
            child,
            stdin,
            stdout,
        };
        assert_eq!(k.line(), "ready");
        k
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        s.trim().to_owned()
    }

    /// Sends one command and returns its answer (blocking: call from `spawn_blocking`).
    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.line()
    }
}

impl Drop for Peer {
    /// Asks the process to quit (closing its session), killing it after 5 s.
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` on the peer's process off the async runtime.
async fn ask(k: Peer, cmd: &'static str) -> (Peer, String) {
    tokio::task::spawn_blocking(move || {
        let mut k = k;
        let a = k.ask(cmd);
        (k, a)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lucky_and_kazoo_exclude_each_other_and_hand_over_both_ways() {
    if zk_available(2181) {
        let name = format!("interop/kazoo/{}", std::process::id());
        if let Some(k) = Peer::kazoo(&format!("/lucky/{name}")) {
            exclusion_both_ways(k, &name, "__lock__").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lucky_and_curator_exclude_each_other_and_hand_over_both_ways() {
    if zk_available(2181) {
        let name = format!("interop/curator/{}", std::process::id());
        if let Some(k) = Peer::curator(&format!("/lucky/{name}")) {
            exclusion_both_ways(k, &name, "-lock-").await;
        }
    }
}

/// Lucky and the peer `k` (whose nodes contain `mark`) on lock `name`: each refuses a try
/// while the other holds, each one's release hands the lock to the other's waiter.
async fn exclusion_both_ways(k: Peer, name: &str, mark: &str) {
    let zk = ZooKeeper::builder(["127.0.0.1:2181"])
        .standalone()
        .ttl(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();

    // Lucky holds: the peer's try fails, and its blocking acquire waits until Lucky releases.
    let g = zk.lock(name).await.unwrap();
    let (k, a) = ask(k, "try").await;
    assert_eq!(a, "busy", "the peer must not take a lock Lucky holds");
    let (k, a) = ask(k, "nodes").await;
    assert_eq!(
        a.split(' ').count(),
        1,
        "the peer's failed try left no node: {a}"
    );
    let peer_wait = tokio::spawn(ask(k, "acquire 20"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !peer_wait.is_finished(),
        "the peer waits behind Lucky's node"
    );
    let released = Instant::now();
    g.release().await.unwrap();
    let (k, a) = peer_wait.await.unwrap();
    assert_eq!(a, "acquired");
    eprintln!(
        "the peer took over {:?} after Lucky released",
        released.elapsed()
    );

    // The peer holds: Lucky's try fails, and its waiter gets the lock when the peer releases.
    let err = zk.lock(name).no_wait().await.unwrap_err();
    assert_eq!(err.kind(), lucky::ErrorKind::Taken, "{err}");
    let waiter = tokio::spawn({
        let (zk, name) = (zk.clone(), name.to_owned());
        async move { zk.lock(&name).wait(Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "Lucky waits behind the peer's node");
    let (k, a) = ask(k, "nodes").await;
    let nodes: Vec<&str> = a.split(' ').collect();
    assert_eq!(nodes.len(), 2, "{a}");
    // The peer's node and Lucky's (Curator's layout: `_c_<uuid>-lock-<seq>`).
    assert!(nodes.iter().any(|n| n.contains(mark)), "{a}");
    assert!(nodes.iter().any(|n| n.starts_with("_c_")), "{a}");
    let (k, a) = ask(k, "release").await;
    assert_eq!(a, "released");
    let g = waiter.await.unwrap().unwrap();
    assert!(g.is_held());
    // And the peer cannot take it back while Lucky holds it.
    let (k, a) = ask(k, "try").await;
    assert_eq!(a, "busy");
    g.release().await.unwrap();
    let (mut k, a) = ask(k, "try").await;
    assert_eq!(a, "acquired");
    assert_eq!(
        tokio::task::spawn_blocking(move || k.ask("release"))
            .await
            .unwrap(),
        "released"
    );
}
