//! RedLock over independent Redis nodes (feature `redis`).
//!
//! ```no_run
//! # async fn f() -> Result<(), lucky::Error> {
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

mod transport;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lucky_core::redlock::{RedLock, RedLockConfig};
use redis::RedisError;

use crate::client::{self, sealed, LockFuture, Options};
use crate::clock::Clock;
use crate::driver::{self, Tasks};
pub use crate::{redact, Error, Guard};
use transport::{Node, Nodes};

/// Configures a [`Redis`] client before connecting.
pub type RedisBuilder = crate::Builder<Redis>;
/// One lock request of a [`Redis`] client; `.await` it to acquire.
pub type LockRequest<'a> = crate::LockRequest<'a, Redis>;

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

/// RedLock's own per-lock settings, beside the shared lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisExtra {
    auto_extend: bool,
    extend_every: Option<Duration>,
    max_extensions: Option<u32>,
    key_prefix: Bytes,
    fencing: bool,
}

/// The machine's configuration for `nodes` nodes.
fn config(o: &Options<RedisExtra>, nodes: usize) -> Result<RedLockConfig, lucky_core::UsageError> {
    let x = &o.extra;
    let mut b = RedLockConfig::builder()
        .node_count(nodes)
        .lease(o.lease)
        .key_prefix(x.key_prefix.clone())
        .fencing(x.fencing);
    if x.auto_extend {
        b = b.auto_extend(x.extend_every, x.max_extensions);
    }
    b.build()
}

/// A RedLock client over N independent Redis nodes. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Redis {
    nodes: Arc<Nodes>,
    clock: Clock,
    defaults: Options<RedisExtra>,
}

impl Redis {
    /// Connects to the nodes with the default settings (ttl 30 s, wait 10 s, auto-extension
    /// every ttl/3, per-node timeout ttl/20, fencing on).
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
        RedisBuilder::new(urls)
    }

    /// Asks for the lock `name`; configure it, then `.await` it.
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest::new(self, name.into())
    }

    /// Waits, at most `timeout`, until every background task of this client has finished:
    /// clean-ups of cancelled acquisitions, releases of dropped guards, commands left in
    /// flight. Call it before the process exits (after releasing or dropping every guard: a
    /// held lock's renewal task runs until it is released) so that nothing this process wrote
    /// outlives it. Returns whether everything finished in time.
    pub async fn close(&self, timeout: Duration) -> bool {
        client::close(self, timeout).await
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.nodes.len()
    }
}

impl RedisBuilder {
    /// Per-node timeout of each round (default ttl/20); the same as `op_timeout`.
    pub fn node_timeout(self, timeout: Duration) -> Self {
        self.op_timeout(timeout)
    }
    /// Keep held locks alive in the background (default on, every ttl/3).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.defaults.extra.auto_extend = on;
        self
    }
    /// Stop auto-extending after this many extensions.
    pub fn max_extensions(mut self, n: u32) -> Self {
        self.defaults.extra.max_extensions = Some(n);
        self
    }
    /// Prefix every key (default none: the key is the lock name, as other Redlock clients).
    pub fn key_prefix(mut self, prefix: impl Into<Bytes>) -> Self {
        self.defaults.extra.key_prefix = prefix.into();
        self
    }
    /// Fencing tokens on every lock (default on; off saves one round trip per acquisition
    /// and makes [`Guard::fence`] `None`).
    pub fn fencing(mut self, on: bool) -> Self {
        self.defaults.extra.fencing = on;
        self
    }
}

impl LockRequest<'_> {
    /// Keep the lock alive in the background (default on).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.extra().auto_extend = on;
        self
    }
    /// Extend every `every` instead of ttl/3.
    pub fn extend_every(mut self, every: Duration) -> Self {
        self.extra().extend_every = Some(every);
        self
    }
    /// Stop auto-extending after `n` extensions.
    pub fn max_extensions(mut self, n: u32) -> Self {
        self.extra().max_extensions = Some(n);
        self
    }
    /// Per-node timeout of each round; the same as `op_timeout`.
    pub fn node_timeout(self, timeout: Duration) -> Self {
        self.op_timeout(timeout)
    }
    /// Fencing token on this lock (default: the client's setting, on unless turned off).
    pub fn fencing(mut self, on: bool) -> Self {
        self.extra().fencing = on;
        self
    }
}

impl sealed::Client for Redis {
    type Extra = RedisExtra;
    type Setup = ();

    fn default_extra() -> RedisExtra {
        RedisExtra {
            auto_extend: true,
            extend_every: None,
            max_extensions: None,
            key_prefix: Bytes::new(),
            fencing: true,
        }
    }

    async fn connect(b: RedisBuilder) -> Result<Redis, Error> {
        let mut nodes = Vec::with_capacity(b.targets.len());
        for url in &b.targets {
            nodes.push(Node::new(url, b.connect_timeout)?);
        }
        // Configuration errors (no nodes, duplicates, bad ttl) surface before any IO.
        let displays: Vec<&str> = nodes.iter().map(|n| n.display.as_str()).collect();
        let needed = RedLockConfig::builder().nodes(&displays).build()?.quorum();
        config(&b.defaults, nodes.len())?;
        let nodes = Arc::new(Nodes::new(nodes, b.max_in_flight));
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
                backend: "Redis",
                reachable,
                total,
                needed,
                details,
            });
        }
        Ok(Redis {
            nodes,
            clock: Clock::new(),
            defaults: b.defaults,
        })
    }

    fn defaults(&self) -> &Options<RedisExtra> {
        &self.defaults
    }

    fn start(
        &self,
        name: String,
        options: &Options<RedisExtra>,
    ) -> Result<LockFuture<'static>, Error> {
        let cfg = config(options, self.nodes())?;
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| Error::Random(e.to_string()))?;
        let seed = u64::from_le_bytes(token[..8].try_into().unwrap_or_default()) ^ 0x9E37_79B9;
        let machine = RedLock::new(&cfg, name.as_bytes(), &token, seed)?;
        Ok(Box::pin(driver::acquire(
            machine,
            self.nodes.clone(),
            self.clock,
            name,
            None,
            options.lease.wait,
        )))
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.nodes.tasks
    }
}
