//! Lucky and kazoo's `Lock` recipe (the Python client, `tests/interop/kazoo_lock.py`) on the
//! same lock path exclude each other, both ways, and each wakes the other's waiter on release.
//! Needs the standalone server of `scripts/services.sh start` (which also installs kazoo);
//! skips when either is missing, unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap and read the clock

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use lucky::zookeeper::ZooKeeper;
use lucky_tests::servers::{required, zk_serves};

/// A kazoo `Lock(client, path, extra_lock_patterns=("-lock-",))` in a Python process.
struct Kazoo {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Kazoo {
    fn start(path: &str) -> Option<Kazoo> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/kazoo_lock.py");
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
        let mut child = Command::new("python3")
            .args([script, "127.0.0.1:2181", path])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut k = Kazoo {
            child,
            stdin,
            stdout,
        };
        assert_eq!(k.line(), "ready");
        Some(k)
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

impl Drop for Kazoo {
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

/// Runs `cmd` on the kazoo process off the async runtime.
async fn ask(k: Kazoo, cmd: &'static str) -> (Kazoo, String) {
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
    if !zk_serves(2181) {
        assert!(!required(), "ZooKeeper on 2181 is not serving");
        eprintln!("skipping: no ZooKeeper on 127.0.0.1:2181");
        return;
    }
    let name = format!("interop/kazoo/{}", std::process::id());
    let Some(k) = Kazoo::start(&format!("/lucky/{name}")) else {
        return;
    };
    let zk = ZooKeeper::builder(["127.0.0.1:2181"])
        .standalone()
        .ttl(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();

    // Lucky holds: kazoo's try fails, and its blocking acquire waits until Lucky releases.
    let g = zk.lock(&name).await.unwrap();
    let (k, a) = ask(k, "try").await;
    assert_eq!(a, "busy", "kazoo must not take a lock Lucky holds");
    let (k, a) = ask(k, "nodes").await;
    assert_eq!(
        a.split(' ').count(),
        1,
        "kazoo's failed try left no node: {a}"
    );
    let kazoo_wait = tokio::spawn(ask(k, "acquire 20"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!kazoo_wait.is_finished(), "kazoo waits behind Lucky's node");
    let released = Instant::now();
    g.release().await.unwrap();
    let (k, a) = kazoo_wait.await.unwrap();
    assert_eq!(a, "acquired");
    eprintln!(
        "kazoo took over {:?} after Lucky released",
        released.elapsed()
    );

    // kazoo holds: Lucky's try fails, and its waiter gets the lock when kazoo releases.
    let err = zk.lock(&name).no_wait().await.unwrap_err();
    assert_eq!(err.kind(), lucky::ErrorKind::Taken, "{err}");
    let waiter = tokio::spawn({
        let (zk, name) = (zk.clone(), name.clone());
        async move { zk.lock(&name).wait(Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "Lucky waits behind kazoo's node");
    let (k, a) = ask(k, "nodes").await;
    let nodes: Vec<&str> = a.split(' ').collect();
    assert_eq!(nodes.len(), 2, "{a}");
    assert!(
        nodes.iter().any(|n| n.contains("__lock__")) && nodes.iter().any(|n| n.contains("-lock-"))
    );
    let (k, a) = ask(k, "release").await;
    assert_eq!(a, "released");
    let g = waiter.await.unwrap().unwrap();
    assert!(g.is_held());
    // And kazoo cannot take it back while Lucky holds it.
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
