//! The RedLock machine driven from plain threads with blocking Redis connections: no async
//! runtime at all. One thread per node owns its connection; the main thread runs the machine.
//!
//! Run: `cargo run -p lucky --features redis --example redlock_blocking [URL...]`
//! (default: the five nodes of `scripts/services.sh start`).
#![allow(clippy::disallowed_methods)] // a driver owns the clock

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use lucky::redlock::{
    Command, RedLock, RedLockConfig, Reply, ACQUIRE_FENCED_SCRIPT, EXTEND_SCRIPT, FENCE_SCRIPT,
    RELEASE_SCRIPT,
};
use lucky::{Event, Instant, LockMachine, NodeId, OpId, Output};

type Job = (NodeId, OpId, Command);
type Answer = (NodeId, OpId, Reply);

/// One node's thread: runs each command on a blocking connection and sends the reply back.
fn node_thread(url: String, jobs: mpsc::Receiver<Job>, answers: mpsc::Sender<Answer>) {
    let mut conn = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)));
    for (node, op, command) in jobs {
        let reply = match conn.as_mut() {
            Err(e) => Reply::Unavailable(e.to_string()),
            Ok(c) => {
                let cmd = match &command {
                    Command::Acquire { key, value, ttl_ms } => {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(&key[..])
                            .arg(&value[..])
                            .arg("NX")
                            .arg("PX")
                            .arg(*ttl_ms);
                        cmd
                    }
                    Command::AcquireFenced {
                        key,
                        fence_key,
                        value,
                        ttl_ms,
                        ..
                    } => {
                        let mut cmd = redis::cmd("EVAL");
                        cmd.arg(ACQUIRE_FENCED_SCRIPT)
                            .arg(2)
                            .arg(&key[..])
                            .arg(&fence_key[..]);
                        cmd.arg(&value[..]).arg(*ttl_ms);
                        cmd
                    }
                    Command::Fence {
                        key,
                        fence_key,
                        value,
                        fence,
                    } => {
                        let mut cmd = redis::cmd("EVAL");
                        cmd.arg(FENCE_SCRIPT)
                            .arg(2)
                            .arg(&key[..])
                            .arg(&fence_key[..]);
                        cmd.arg(&value[..]).arg(*fence);
                        cmd
                    }
                    Command::Extend { key, value, ttl_ms } => {
                        let mut cmd = redis::cmd("EVAL");
                        cmd.arg(EXTEND_SCRIPT)
                            .arg(1)
                            .arg(&key[..])
                            .arg(&value[..])
                            .arg(*ttl_ms);
                        cmd
                    }
                    Command::Release { key, value, .. } => {
                        let mut cmd = redis::cmd("EVAL");
                        cmd.arg(RELEASE_SCRIPT).arg(1).arg(&key[..]).arg(&value[..]);
                        cmd
                    }
                };
                match cmd.query::<redis::Value>(c) {
                    Ok(redis::Value::Okay) => Reply::Status("OK".into()),
                    Ok(redis::Value::Nil) => Reply::Nil,
                    Ok(redis::Value::Int(i)) => Reply::Int(i),
                    Ok(other) => Reply::Other(format!("{other:?}")),
                    Err(e) if e.is_io_error() => Reply::Unavailable(e.to_string()),
                    Err(e) => Reply::Error(e.to_string().into()),
                }
            }
        };
        if answers.send((node, op, reply)).is_err() {
            return;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        urls = (7001..=7005)
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
    }
    let cfg = RedLockConfig::builder()
        .nodes(&urls)
        .ttl(Duration::from_secs(5))
        .fencing(true)
        .build()?;
    let token: [u8; 16] = {
        let mut t = [0u8; 16];
        getrandom::fill(&mut t)?;
        t
    };
    let mut lock = RedLock::new(&cfg, b"lucky-example/blocking", &token, u64::from(token[0]))?;

    let (answer_tx, answers) = mpsc::channel();
    let nodes: Vec<mpsc::Sender<Job>> = urls
        .iter()
        .map(|url| {
            let (tx, rx) = mpsc::channel();
            let (url, answer_tx) = (url.clone(), answer_tx.clone());
            thread::spawn(move || node_thread(url, rx, answer_tx));
            tx
        })
        .collect();

    let epoch = StdInstant::now();
    let now = || Instant::from_nanos(epoch.elapsed().as_nanos() as u64);
    lock.acquire(now())?;
    let mut released = false;
    while !released {
        // 1. Drain outputs: send commands, handle events.
        while let Some(out) = lock.poll_output() {
            match out {
                Output::Transmit(t) => nodes[t.node.index()].send((t.node, t.op, t.command))?,
                Output::Event(Event::Acquired { valid_until, fence }) => {
                    let left = valid_until.saturating_duration_since(now());
                    println!("acquired with fence {fence:?}, valid for {left:?}; working 100 ms");
                    thread::sleep(Duration::from_millis(100));
                    lock.release(now())?;
                }
                Output::Event(Event::Released { nodes }) => {
                    println!("released: {nodes:?}");
                    released = true;
                }
                Output::Event(Event::Failed(e)) => return Err(e.into()),
                Output::Event(other) => println!("{other:?}"),
            }
        }
        // 2. Wait for a reply or the machine's deadline, whichever comes first.
        let wait = lock
            .poll_timeout()
            .map(|t| t.saturating_duration_since(now()));
        let answer = match wait {
            Some(d) => answers.recv_timeout(d).ok(),
            None if released => None,
            None => answers.recv().ok(),
        };
        match answer {
            Some((node, op, reply)) => {
                // `false`: a reply the machine no longer waits for (late or duplicated).
                let _used = lock.handle_reply(now(), node, op, reply);
            }
            None => lock.handle_timeout(now()),
        }
    }
    Ok(())
}
