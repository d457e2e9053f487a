//! The Redis transport: one connection per node (made on first use, re-made after failures),
//! the RESP encoding of the RedLock machine's commands (scripts by SHA, loaded again when a
//! server lost them) and the pub/sub release hints shared by every waiter of a client.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lucky_core::redlock::{
    Command, Reply, ACQUIRE_FENCED_SCRIPT, ACQUIRE_FENCED_SHA1, EXTEND_SCRIPT, EXTEND_SHA1,
    FENCE_SCRIPT, FENCE_SHA1, RELEASE_QUIET_SCRIPT, RELEASE_QUIET_SHA1, RELEASE_SCRIPT,
    RELEASE_SHA1,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{RedisError, Value};
use tokio::sync::OnceCell;

use crate::driver::{self, Subscription, Transport};
use crate::hints::Hints;
use crate::{redact, Error};

/// The connections to every node.
pub(super) struct Nodes {
    pub(super) nodes: Vec<Node>,
    wake: Arc<Wake>,
    pub(super) tasks: Arc<driver::Tasks>,
    /// Rounds in flight on the node connections, at most.
    gate: driver::Gate,
}

impl Nodes {
    pub(super) fn new(nodes: Vec<Node>, max_in_flight: usize) -> Nodes {
        Nodes {
            nodes,
            wake: Arc::default(),
            tasks: Arc::default(),
            gate: driver::Gate::new(max_in_flight),
        }
    }
}

/// Release notifications: one pub/sub connection per node, shared by every waiter of the
/// client; each message wakes the longest waiter of its channel ([`Hints`]). A channel stays
/// subscribed once a waiter needed it (an UNSUBSCRIBE racing the next waiter's SUBSCRIBE would
/// silently cost that waiter its wake-ups), up to [`MAX_CHANNELS`]; past that, waiters fall
/// back to jittered retries.
#[derive(Default)]
struct Wake {
    hints: Arc<Hints>,
    subscribed: tokio::sync::Mutex<BTreeSet<Vec<u8>>>,
}

/// Most lock names one client keeps subscribed for release notifications.
const MAX_CHANNELS: usize = 4096;

impl Wake {
    fn notify(&self, channel: &[u8]) {
        self.hints.notify(channel);
    }
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.nodes.iter().map(|n| &n.display))
            .finish()
    }
}

pub(super) struct Node {
    /// The URL with any password replaced by `***`: the only form ever printed.
    pub(super) display: String,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    pubsub: OnceCell<PubSubSink>,
    connect_timeout: Duration,
}

impl Node {
    pub(super) fn new(url: &str, connect_timeout: Duration) -> Result<Node, Error> {
        let display = redact(url);
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::BadEndpoint {
                backend: "Redis",
                endpoint: display,
                reason: "scheme must be redis:// or rediss://".into(),
            });
        }
        let client = redis::Client::open(url).map_err(|e| Error::BadEndpoint {
            backend: "Redis",
            endpoint: display.clone(),
            reason: redact(&e.to_string()),
        })?;
        Ok(Node {
            display,
            client,
            conn: OnceCell::new(),
            pubsub: OnceCell::new(),
            connect_timeout,
        })
    }

    /// The node's connection, made on first use (and retried on later uses if that failed).
    pub(super) async fn conn(&self) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1);
        let client = self.client.clone();
        let init = async move {
            match tokio::time::timeout(
                self.connect_timeout * 2,
                ConnectionManager::new_with_config(client, config),
            )
            .await
            {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(redact(&e.to_string())),
                Err(_) => Err("connect timed out".to_owned()),
            }
        };
        self.conn.get_or_try_init(|| init).await.cloned()
    }

    /// The node's pub/sub sink, connected on first use; its stream feeds `wake`.
    async fn pubsub(&self, wake: &Arc<Wake>) -> Option<PubSubSink> {
        let init = async {
            let connect = self.client.get_async_pubsub();
            let pubsub = match tokio::time::timeout(self.connect_timeout, connect).await {
                Ok(Ok(p)) => p,
                _ => return Err(()),
            };
            let (sink, mut stream) = pubsub.split();
            let wake = Arc::downgrade(wake);
            tokio::spawn(async move {
                while let Some(msg) = std::future::poll_fn(|cx| {
                    futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)
                })
                .await
                {
                    let Some(wake) = wake.upgrade() else { return };
                    wake.notify(msg.get_channel_name().as_bytes());
                }
            });
            Ok(sink)
        };
        self.pubsub.get_or_try_init(|| init).await.ok().cloned()
    }

    async fn send(&self, command: Command) -> Reply {
        // The common path stays small: this future is boxed once per command, so the rare
        // paths (first connection, a script the server has not cached) are boxed separately
        // instead of inflating every command's state.
        let mut conn = match self.conn.get() {
            Some(c) => c.clone(),
            None => match Box::pin(self.conn()).await {
                Ok(c) => c,
                Err(e) => return Reply::Unavailable(e),
            },
        };
        let cmd = match request(&command, Verb::EvalSha) {
            Ok(cmd) => cmd,
            Err(reply) => return reply,
        };
        let result = match cmd.query_async::<Value>(&mut conn).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                Box::pin(async move {
                    match request(&command, Verb::Eval) {
                        Ok(cmd) => cmd.query_async::<Value>(&mut conn).await,
                        Err(_) => Err(e),
                    }
                })
                .await
            }
            other => other,
        };
        match result {
            Ok(v) => reply(v),
            Err(e) if is_transport(&e) => Reply::Unavailable(redact(&e.to_string())),
            Err(e) => Reply::Error(Bytes::from(redact(&e.to_string()))),
        }
    }
}

/// How a script is invoked: by its SHA1 (the usual case) or with its body (after NOSCRIPT).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    EvalSha,
    Eval,
}

/// The Redis command for `command`; a command this adapter refuses to send is its reply.
fn request(command: &Command, verb: Verb) -> Result<redis::Cmd, Reply> {
    let mut n1 = Decimal::default();
    let mut n2 = Decimal::default();
    let script = |sha: &'static str, body: &'static str, keys: &[&[u8]], args: &[&[u8]]| {
        let mut p = Parts::default();
        match verb {
            Verb::EvalSha => p.push(b"EVALSHA").push(sha.as_bytes()),
            Verb::Eval => p.push(b"EVAL").push(body.as_bytes()),
        };
        p.push(if keys.len() == 1 { b"1" } else { b"2" });
        for k in keys {
            p.push(k);
        }
        for a in args {
            p.push(a);
        }
        p.cmd()
    };
    Ok(match command {
        Command::Acquire { key, value, ttl_ms } => Parts::default()
            .push(b"SET")
            .push(key)
            .push(value)
            .push(b"NX")
            .push(b"PX")
            .push(n1.of(*ttl_ms))
            .cmd(),
        Command::AcquireFenced {
            key,
            fence_key,
            value,
            ttl_ms,
        } => script(
            ACQUIRE_FENCED_SHA1,
            ACQUIRE_FENCED_SCRIPT,
            &[key, fence_key],
            &[value, n1.of(*ttl_ms)],
        ),
        Command::Fence {
            key,
            fence_key,
            value,
            fence,
        } => script(
            FENCE_SHA1,
            FENCE_SCRIPT,
            &[key, fence_key],
            &[value, n2.of(*fence)],
        ),
        Command::Extend { key, value, ttl_ms } => {
            script(EXTEND_SHA1, EXTEND_SCRIPT, &[key], &[value, n1.of(*ttl_ms)])
        }
        Command::Release {
            key,
            value,
            notify: true,
        } => script(RELEASE_SHA1, RELEASE_SCRIPT, &[key], &[value]),
        Command::Release {
            key,
            value,
            notify: false,
        } => script(RELEASE_QUIET_SHA1, RELEASE_QUIET_SCRIPT, &[key], &[value]),
    })
}

/// The arguments of one command, gathered first so that the command's buffers are allocated
/// once at their final size (`redis::Cmd` grows them argument by argument otherwise).
#[derive(Default)]
struct Parts<'a> {
    parts: [&'a [u8]; 8],
    len: usize,
}

impl<'a> Parts<'a> {
    fn push(&mut self, part: &'a [u8]) -> &mut Self {
        // At most 7 arguments exist (EVALSHA sha 2 k1 k2 a1 a2).
        debug_assert!(self.len < self.parts.len(), "a command with over 8 parts");
        if let Some(slot) = self.parts.get_mut(self.len) {
            *slot = part;
            self.len += 1;
        }
        self
    }

    fn cmd(&self) -> redis::Cmd {
        let parts = &self.parts[..self.len];
        let size = parts.iter().map(|p| p.len()).sum();
        let mut c = redis::Cmd::with_capacity(parts.len(), size);
        for p in parts {
            c.arg(*p);
        }
        c
    }
}

/// A number in decimal ASCII, formatted on the stack.
#[derive(Default)]
struct Decimal([u8; 20]);

impl Decimal {
    fn of(&mut self, mut n: u64) -> &[u8] {
        let mut i = self.0.len();
        loop {
            i -= 1;
            self.0[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return &self.0[i..];
            }
        }
    }
}

fn is_transport(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped()
}

/// A RESP value as the machine's [`Reply`]; the machine decides what it means.
fn reply(v: Value) -> Reply {
    match v {
        Value::Okay => Reply::Status(Bytes::from_static(b"OK")),
        Value::SimpleString(s) => Reply::Status(Bytes::from(s)),
        Value::Int(i) => Reply::Int(i),
        Value::BulkString(b) => Reply::Bulk(Bytes::from(b)),
        Value::Nil => Reply::Nil,
        other => Reply::Other(format!("{other:?}")),
    }
}

impl Transport for Nodes {
    type Command = Command;
    type Reply = Reply;

    fn tasks(&self) -> &Arc<driver::Tasks> {
        &self.tasks
    }

    fn gate(&self) -> Option<&driver::Gate> {
        Some(&self.gate)
    }

    fn subscribe(self: &Arc<Self>, channel: Vec<u8>) -> driver::BoxFuture<Option<Subscription>> {
        let nodes = self.clone();
        Box::pin(async move {
            let (subscription, _) = nodes.wake.hints.register(channel.clone());
            // Held across the SUBSCRIBEs: a second waiter of the channel waits until they took.
            let mut subscribed = nodes.wake.subscribed.lock().await;
            if !subscribed.contains(&channel) {
                if subscribed.len() >= MAX_CHANNELS {
                    return None;
                }
                let mut any = false;
                for n in &nodes.nodes {
                    if let Some(mut sink) = n.pubsub(&nodes.wake).await {
                        let sub =
                            tokio::time::timeout(n.connect_timeout, sink.subscribe(&channel[..]));
                        any |= sub.await.is_ok_and(|r| r.is_ok());
                    }
                }
                if !any {
                    return None; // no node can notify: jittered retries only
                }
                subscribed.insert(channel);
            }
            Some(subscription)
        })
    }
    fn send(
        self: &Arc<Self>,
        node: usize,
        command: Command,
    ) -> impl std::future::Future<Output = Reply> + Send + 'static {
        let nodes = self.clone();
        async move {
            match nodes.nodes.get(node) {
                Some(n) => n.send(command).await,
                None => Reply::Unavailable(format!("no node {node}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut d = Decimal::default();
        assert_eq!(d.of(0), b"0");
        assert_eq!(d.of(30_000), b"30000");
        assert_eq!(d.of(u64::MAX), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn commands_are_packed_as_redis_expects() {
        let set = Command::Acquire {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"tok"),
            ttl_ms: 30_000,
        };
        let packed = request(&set, Verb::EvalSha)
            .ok()
            .map(|c| c.get_packed_command());
        let want = redis::cmd("SET")
            .arg("k")
            .arg("tok")
            .arg("NX")
            .arg("PX")
            .arg(30_000u64)
            .get_packed_command();
        assert_eq!(packed, Some(want));
        let fence = Command::Fence {
            key: Bytes::from_static(b"k"),
            fence_key: Bytes::from_static(b"k:fence"),
            value: Bytes::from_static(b"tok"),
            fence: 42,
        };
        for (verb, first, second) in [
            (Verb::EvalSha, "EVALSHA", FENCE_SHA1),
            (Verb::Eval, "EVAL", FENCE_SCRIPT),
        ] {
            let packed = request(&fence, verb).ok().map(|c| c.get_packed_command());
            let want = redis::cmd(first)
                .arg(second)
                .arg(2)
                .arg("k")
                .arg("k:fence")
                .arg("tok")
                .arg(42u64)
                .get_packed_command();
            assert_eq!(packed, Some(want));
        }
    }
}
