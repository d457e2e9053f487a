//! RedLock over independent Redis nodes (feature `redis`).
//!
//! ```no_run
//! # async fn f() -> Result<(), lucky::redis::Error> {
//! use std::time::Duration;
//! let locks = lucky::redis::Redis::connect([
//!     "redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003",
//! ]).await?;
//! let guard = locks.lock("jobs/nightly").ttl(Duration::from_secs(30)).wait(Duration::from_secs(5)).await?;
//! tokio::select! {
//!     _ = guard.lost() => eprintln!("lock lost: stop writing"),
//!     _ = tokio::time::sleep(Duration::from_secs(1)) => {} // the work
//! }
//! guard.release().await?;
//! # Ok(()) }
//! ```

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lucky_core::redlock::{
    Command, RedLockConfig, Reply, Retry, Wait, ACQUIRE_FENCED_SCRIPT, ACQUIRE_FENCED_SHA1,
    EXTEND_SCRIPT, EXTEND_SHA1, FENCE_SCRIPT, FENCE_SHA1, RELEASE_QUIET_SCRIPT, RELEASE_QUIET_SHA1,
    RELEASE_SCRIPT, RELEASE_SHA1,
};
use lucky_core::{LockError, UsageError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{RedisError, Value};
use tokio::sync::Notify;
use tokio::sync::OnceCell;

use crate::clock::Clock;
pub use crate::driver::Guard;
use crate::driver::{self, Subscription, Transport};

/// Fenced write for a Redis resource: stores `ARGV[1]` under `KEYS[1]` only if the fence
/// `ARGV[2]` is at least the one stored under `KEYS[2]` (equal: the same holder writing again),
/// and records the fence. Returns 1 when written, 0 when the fence is stale.
pub const FENCED_SET_SCRIPT: &str = r#"local f = tonumber(redis.call("get",KEYS[2]) or "0") if tonumber(ARGV[2]) >= f then redis.call("set",KEYS[1],ARGV[1]) redis.call("set",KEYS[2],ARGV[2]) return 1 else return 0 end"#;

/// Writes `value` to `key` on a Redis resource only if `fence` is not older than the last
/// fence written there (kept under `key` + [`FENCE_KEY_SUFFIX`](lucky_core::redlock::FENCE_KEY_SUFFIX)).
/// Returns whether the write happened; `false` means a newer holder already wrote.
pub async fn fenced_set<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    key: &[u8],
    value: &[u8],
    fence: lucky_core::Fence,
) -> Result<bool, RedisError> {
    let mut fence_key = key.to_vec();
    fence_key.extend_from_slice(lucky_core::redlock::FENCE_KEY_SUFFIX.as_bytes());
    let n: i64 = redis::Script::new(FENCED_SET_SCRIPT)
        .key(key)
        .key(fence_key)
        .arg(value)
        .arg(fence.get())
        .invoke_async(conn)
        .await?;
    Ok(n == 1)
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's input was invalid (bad name, ttl, node list, ...). Nothing was sent.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// A node URL could not be used.
    #[error("bad Redis URL {url}: {reason}")]
    BadUrl {
        /// The URL, password removed.
        url: String,
        /// Why.
        reason: String,
    },
    /// Fewer than a quorum of nodes could be reached when connecting.
    #[error("only {reachable} of {total} Redis nodes reachable, {needed} needed: {details}")]
    Unreachable {
        /// Nodes that answered.
        reachable: usize,
        /// Nodes configured.
        total: usize,
        /// The quorum.
        needed: usize,
        /// Per failing node, why (passwords removed).
        details: String,
    },
    /// The lock was not acquired: taken by someone else, or no quorum of nodes reachable
    /// (see [`LockError`]; every node's outcome is inside).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The OS random source failed; no token could be made.
    #[error("the OS random source failed: {0}")]
    Random(String),
    /// The background driver stopped (the runtime is shutting down).
    #[error("the lock driver stopped")]
    DriverGone,
}

impl Error {
    /// Who said no: the same kinds for every backend.
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind;
        match self {
            Error::Usage(_) | Error::BadUrl { .. } => ErrorKind::Usage,
            Error::Unreachable { .. } => ErrorKind::Unreachable,
            Error::Lock(e) => crate::lock_error_kind(e),
            Error::Random(_) | Error::DriverGone => ErrorKind::Local,
        }
    }
    /// Whether someone else holds the lock.
    pub fn is_taken(&self) -> bool {
        self.kind() == crate::ErrorKind::Taken
    }
    /// Whether too few nodes could be reached for a quorum (or answered in time).
    pub fn is_unreachable(&self) -> bool {
        self.kind() == crate::ErrorKind::Unreachable
    }
}

/// Per-lock settings; defaults come from [`RedisBuilder`].
#[derive(Clone, Debug)]
struct Options {
    ttl: Duration,
    wait: Wait,
    drift_ppm: u32,
    drift_floor: Duration,
    node_timeout: Option<Duration>,
    retry: Retry,
    auto_extend: bool,
    extend_every: Option<Duration>,
    max_extensions: Option<u32>,
    key_prefix: Bytes,
    fencing: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: Duration::from_secs(30),
            wait: Wait::For(Duration::from_secs(10)),
            drift_ppm: lucky_core::redlock::DEFAULT_DRIFT_PPM,
            drift_floor: lucky_core::redlock::DEFAULT_DRIFT_FLOOR,
            node_timeout: None,
            retry: Retry::default(),
            auto_extend: true,
            extend_every: None,
            max_extensions: None,
            key_prefix: Bytes::new(),
            fencing: true,
        }
    }
}

impl Options {
    fn config(&self, nodes: usize) -> Result<RedLockConfig, UsageError> {
        let mut b = RedLockConfig::builder()
            .node_count(nodes)
            .ttl(self.ttl)
            .drift(self.drift_ppm, self.drift_floor)
            .retry(self.retry)
            .wait(self.wait)
            .key_prefix(self.key_prefix.clone())
            .fencing(self.fencing);
        if let Some(t) = self.node_timeout {
            b = b.node_timeout(t);
        }
        if self.auto_extend {
            b = b.auto_extend(self.extend_every, self.max_extensions);
        }
        b.build()
    }
}

/// A RedLock client over N independent Redis nodes. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Redis {
    nodes: Arc<Nodes>,
    clock: Clock,
    defaults: Options,
}

/// Configures a [`Redis`] before connecting.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `connect().await`"]
pub struct RedisBuilder {
    urls: Vec<String>,
    defaults: Options,
    connect_timeout: Duration,
}

impl Redis {
    /// Connects to the nodes with the default settings (ttl 30 s, wait 10 s, auto-extension
    /// every ttl/3, per-node timeout ttl/20).
    pub async fn connect<I, S>(urls: I) -> Result<Redis, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Redis::builder(urls).connect().await
    }

    /// Starts configuring a client for these node URLs (`redis://` or `rediss://`, with
    /// optional `user:password@`).
    pub fn builder<I, S>(urls: I) -> RedisBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        RedisBuilder {
            urls: urls.into_iter().map(|u| u.as_ref().to_owned()).collect(),
            defaults: Options::default(),
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// Waits, at most `timeout`, until every background task of this client has finished:
    /// clean-ups of cancelled acquisitions, releases of dropped guards, commands left in
    /// flight. Call it before the process exits (after releasing or dropping every guard: a
    /// held lock's renewal task runs until it is released) so that nothing this process wrote
    /// outlives it. Returns whether everything finished in time.
    pub async fn close(&self, timeout: Duration) -> bool {
        self.nodes.tasks.wait_idle(timeout).await
    }

    /// Asks for the lock `name`; configure it, then `.await` it.
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest {
            client: self,
            name: name.into(),
            options: self.defaults.clone(),
        }
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.nodes.len()
    }
}

impl RedisBuilder {
    /// Default time to live of each lock.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.defaults.ttl = ttl;
        self
    }
    /// Default wait for a lock.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.defaults.wait = Wait::For(wait);
        self
    }
    /// Clock drift bound (ppm) and constant floor.
    pub fn drift(mut self, ppm: u32, floor: Duration) -> Self {
        self.defaults.drift_ppm = ppm;
        self.defaults.drift_floor = floor;
        self
    }
    /// Per-node timeout of each round (default ttl/20).
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.node_timeout = Some(timeout);
        self
    }
    /// Delay between attempts.
    pub fn retry(mut self, delay: Duration, jitter: Duration) -> Self {
        self.defaults.retry = Retry { delay, jitter };
        self
    }
    /// Keep held locks alive in the background (default on, every ttl/3).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.defaults.auto_extend = on;
        self
    }
    /// Stop auto-extending after this many extensions.
    pub fn max_extensions(mut self, n: u32) -> Self {
        self.defaults.max_extensions = Some(n);
        self
    }
    /// Prefix every key (default none: the key is the lock name, as other Redlock clients).
    pub fn key_prefix(mut self, prefix: impl Into<Bytes>) -> Self {
        self.defaults.key_prefix = prefix.into();
        self
    }
    /// Fencing tokens on every lock (default on; off saves one round trip per acquisition
    /// and makes [`Guard::fence`] `None`).
    pub fn fencing(mut self, on: bool) -> Self {
        self.defaults.fencing = on;
        self
    }
    /// How long connecting to one node may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Validates the URLs and settings, then connects to every node at once. Succeeds when a
    /// quorum answered; the others are retried on use.
    pub async fn connect(self) -> Result<Redis, Error> {
        let mut nodes = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            nodes.push(Node::new(url, self.connect_timeout)?);
        }
        // Configuration errors (no nodes, duplicates, bad ttl) surface before any IO.
        let displays: Vec<&str> = nodes.iter().map(|n| n.display.as_str()).collect();
        let needed = RedLockConfig::builder().nodes(&displays).build()?.quorum();
        self.defaults.config(nodes.len())?;
        let nodes = Arc::new(Nodes {
            tasks: Arc::default(),
            nodes,
            wake: Arc::default(),
        });
        // Every node at once: dead nodes cost one connect timeout in all, not one each.
        let mut probes = tokio::task::JoinSet::new();
        for i in 0..nodes.nodes.len() {
            let nodes = nodes.clone();
            probes.spawn(async move {
                let r = nodes.nodes[i].conn().await.map(|_| ());
                (i, r.map_err(|e| e.to_string()))
            });
        }
        let mut results: Vec<Result<(), String>> =
            vec![Err("no answer".to_owned()); nodes.nodes.len()];
        while let Some(done) = probes.join_next().await {
            if let Ok((i, r)) = done {
                results[i] = r;
            }
        }
        let total = results.len();
        let reachable = results.iter().filter(|r| r.is_ok()).count();
        if reachable < needed {
            let details = results
                .iter()
                .zip(&nodes.nodes)
                .filter_map(|(r, n)| r.as_ref().err().map(|e| format!("{}: {}", n.display, e)))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Error::Unreachable {
                reachable,
                total,
                needed,
                details,
            });
        }
        Ok(Redis {
            nodes,
            clock: Clock::new(),
            defaults: self.defaults,
        })
    }
}

/// One lock request; `.await` it to acquire.
#[derive(Debug)]
#[must_use = "a lock request does nothing until it is awaited"]
pub struct LockRequest<'a> {
    client: &'a Redis,
    name: String,
    options: Options,
}

impl LockRequest<'_> {
    /// Time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = ttl;
        self
    }
    /// Keep trying for this long.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.options.wait = Wait::For(wait);
        self
    }
    /// One attempt only.
    pub fn no_wait(mut self) -> Self {
        self.options.wait = Wait::None;
        self
    }
    /// Keep trying until acquired (or the future is dropped).
    pub fn wait_forever(mut self) -> Self {
        self.options.wait = Wait::Forever;
        self
    }
    /// Keep the lock alive in the background (default on).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.options.auto_extend = on;
        self
    }
    /// Extend every `every` instead of ttl/3.
    pub fn extend_every(mut self, every: Duration) -> Self {
        self.options.extend_every = Some(every);
        self
    }
    /// Stop auto-extending after `n` extensions.
    pub fn max_extensions(mut self, n: u32) -> Self {
        self.options.max_extensions = Some(n);
        self
    }
    /// Per-node timeout of each round.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.options.node_timeout = Some(timeout);
        self
    }
    /// Fencing token on this lock (default: the client's setting, on unless turned off).
    pub fn fencing(mut self, on: bool) -> Self {
        self.options.fencing = on;
        self
    }
    /// Delay between attempts.
    pub fn retry(mut self, delay: Duration, jitter: Duration) -> Self {
        self.options.retry = Retry { delay, jitter };
        self
    }

    /// Everything up to the first command, done before the future is first polled.
    fn start(
        self,
    ) -> Result<impl std::future::Future<Output = Result<Guard, crate::Error>> + Send, Error> {
        let n = self.client.nodes();
        let cfg = self.options.config(n)?;
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| Error::Random(e.to_string()))?;
        let seed = u64::from_le_bytes(token[..8].try_into().unwrap_or_default()) ^ 0x9E37_79B9;
        let machine = lucky_core::redlock::RedLock::new(&cfg, self.name.as_bytes(), &token, seed)?;
        let (nodes, clock) = (self.client.nodes.clone(), self.client.clock);
        Ok(driver::acquire(machine, nodes, clock, self.name, None))
    }
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Error {
        match e {
            crate::Error::Usage(u) => Error::Usage(u),
            crate::Error::Lock(l) => Error::Lock(l),
            crate::Error::DriverGone => Error::DriverGone,
        }
    }
}

impl<'a> IntoFuture for LockRequest<'a> {
    type Output = Result<Guard, Error>;
    type IntoFuture = LockFuture<'a>;
    fn into_future(self) -> Self::IntoFuture {
        match self.start() {
            Ok(acquire) => Box::pin(async move { acquire.await.map_err(Error::from) }),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// The future of a [`LockRequest`].
pub type LockFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Guard, Error>> + Send + 'a>>;

/// The connections to every node.
struct Nodes {
    nodes: Vec<Node>,
    wake: Arc<Wake>,
    tasks: Arc<driver::Tasks>,
}

/// Release notifications: one pub/sub connection per node, shared by every waiter of the
/// client; each message wakes the waiters of its channel. A channel stays subscribed once a
/// waiter needed it (an UNSUBSCRIBE racing the next waiter's SUBSCRIBE would silently cost
/// that waiter its wake-ups), up to [`MAX_CHANNELS`]; past that, waiters fall back to
/// jittered retries.
#[derive(Default)]
struct Wake {
    waiters: std::sync::Mutex<Waiters>,
    subscribed: tokio::sync::Mutex<BTreeSet<Vec<u8>>>,
    next_id: AtomicU64,
}

/// Per channel, its local waiters in arrival order (id, wake-up).
type Waiters = BTreeMap<Vec<u8>, Vec<(u64, Arc<Notify>)>>;

/// Most lock names one client keeps subscribed for release notifications.
const MAX_CHANNELS: usize = 4096;

impl Wake {
    fn notify(&self, channel: &[u8]) {
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Wake the longest-waiting local waiter only: one contender per process, in order,
        // instead of a stampede of every waiter into a split vote.
        if let Some((_, n)) = waiters.get(channel).and_then(|list| list.first()) {
            n.notify_one();
        }
    }
}

/// Unregisters a waiter when dropped.
struct Unsubscribe {
    nodes: Arc<Nodes>,
    channel: Vec<u8>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let mut w = self
            .nodes
            .wake
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(list) = w.get_mut(&self.channel) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                w.remove(&self.channel);
            }
        }
    }
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.nodes.iter().map(|n| &n.display))
            .finish()
    }
}

struct Node {
    /// The URL with any password replaced by `***`: the only form ever printed.
    display: String,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    pubsub: OnceCell<PubSubSink>,
    connect_timeout: Duration,
}

impl Node {
    fn new(url: &str, connect_timeout: Duration) -> Result<Node, Error> {
        let display = redact(url);
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::BadUrl {
                url: display,
                reason: "scheme must be redis:// or rediss://".into(),
            });
        }
        let client = redis::Client::open(url).map_err(|e| Error::BadUrl {
            url: display.clone(),
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
    async fn conn(&self) -> Result<ConnectionManager, String> {
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

    fn subscribe(self: &Arc<Self>, channel: Vec<u8>) -> driver::BoxFuture<Option<Subscription>> {
        let nodes = self.clone();
        Box::pin(async move {
            let notify = Arc::new(Notify::new());
            let id = nodes.wake.next_id.fetch_add(1, Ordering::Relaxed);
            {
                let mut w = nodes.wake.waiters.lock().unwrap_or_else(|e| e.into_inner());
                w.entry(channel.clone())
                    .or_default()
                    .push((id, notify.clone()));
            }
            let keep = Unsubscribe {
                nodes: nodes.clone(),
                channel: channel.clone(),
                id,
            };
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
            Some(Subscription {
                notify,
                _keep: Box::new(keep),
            })
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

/// Replaces the password of every `scheme://user:password@host` in `s` with `***` (for
/// messages and logs; the command-line tool uses it too).
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(['/', ' ', ';', ',']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(c) => {
                        out.push_str(&userinfo[..c]);
                        out.push_str(":***");
                    }
                    None if !userinfo.is_empty() => out.push_str("***"),
                    None => {}
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
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

crate::locker::impl_locker!(Redis);
