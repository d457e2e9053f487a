//! The etcd lease lock (feature `etcd`): etcd's own `concurrency.Mutex` queue, run by the
//! lucky-core [`EtcdLock`] machine over an `etcd-client`
//! connection. Lucky, `etcdctl lock <name>` and Go's `concurrency.Mutex` exclude each other.
//!
//! ```no_run
//! # async fn f() -> Result<(), lucky::etcd::Error> {
//! use std::time::Duration;
//! let etcd = lucky::etcd::Etcd::connect(["http://127.0.0.1:2379"]).await?;
//! let guard = etcd.lock("jobs/nightly").ttl(Duration::from_secs(10)).await?;
//! // The fence is the create revision of our key: it grows with every new holder.
//! let fence = guard.fence().map(|f| f.get());
//! tokio::select! {
//!     _ = guard.lost() => eprintln!("lock lost: stop writing"),
//!     _ = tokio::time::sleep(Duration::from_secs(1)) => {} // the work, with `fence`
//! }
//! guard.release().await?;
//! # let _ = fence;
//! # Ok(()) }
//! ```
//!
//! Each acquisition's key is `<name>/<lease id in hex>`, on a lease kept alive while the lock
//! is wanted or held. A client keeps the lease of a released lock for the next acquisition
//! of that name, so a warm cycle writes twice (take and delete) plus one lease renewal.
//!
//! # Several members: one member down is not the cluster down
//!
//! The client keeps one connection per member and sends each request to a preferred member.
//! A member that refuses, resets, answers "no leader" (requests carry etcd's `require leader`
//! flag) or stays silent for half the request timeout loses the preference, and the same
//! request goes to the next member at once: fail-over takes at most half the request timeout
//! (ttl/40 with the default request timeout of ttl/20, at most 2.5 s), well inside the ttl/3
//! between keepalives. Only requests safe to apply twice are resent
//! ([`Resend`] says why for each). A watch is not resent: when
//! its member fails (a request there failed, its stream broke, or it left a progress request
//! unanswered for a request timeout) the watch ends "unavailable" and the machine reads the
//! queue again, on a live member, before it watches anew, so no deletion is missed. Every
//! read that judges ownership is linearizable (no `serializable` range anywhere), so a member
//! cut off from the leader cannot show a stale queue. The cluster is unreachable only when
//! every member failed a request in its time.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, SortOrder,
    SortTarget, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use lucky_core::endpoints::{Endpoints, Resend, MAX_ENDPOINTS};
use lucky_core::etcd::{Command, EtcdConfig, EtcdLock, Reply};
use lucky_core::redlock::{Retry, Wait};
use lucky_core::{LockError, UsageError};

use crate::clock::Clock;
pub use crate::driver::Guard;
use crate::driver::{self, Transport};

pub use etcd_client::{Certificate, Identity, TlsOptions};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; nothing was sent.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The endpoints were malformed or none could be reached.
    #[error("cannot connect to etcd at {endpoints}: {reason}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// What failed.
        reason: String,
    },
    /// The lock was not acquired.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The OS random source failed; no seed could be made.
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
            Error::Usage(_) => ErrorKind::Usage,
            Error::Unreachable { .. } => ErrorKind::Unreachable,
            Error::Lock(e) => crate::lock_error_kind(e),
            Error::Random(_) | Error::DriverGone => ErrorKind::Local,
        }
    }
    /// Whether someone else holds the lock.
    pub fn is_taken(&self) -> bool {
        self.kind() == crate::ErrorKind::Taken
    }
    /// Whether etcd could not be reached (or answered in time).
    pub fn is_unreachable(&self) -> bool {
        self.kind() == crate::ErrorKind::Unreachable
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

/// Per-lock settings; defaults come from [`EtcdBuilder`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Options {
    ttl: Duration,
    wait: Wait,
    drift_ppm: u32,
    drift_floor: Duration,
    op_timeout: Option<Duration>,
    retry: Retry,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: Duration::from_secs(30),
            wait: Wait::For(Duration::from_secs(10)),
            drift_ppm: lucky_core::redlock::DEFAULT_DRIFT_PPM,
            drift_floor: lucky_core::redlock::DEFAULT_DRIFT_FLOOR,
            op_timeout: None,
            retry: Retry::default(),
        }
    }
}

impl Options {
    fn config(&self) -> Result<EtcdConfig, UsageError> {
        // etcd grants whole seconds: ask for the ttl rounded up.
        let secs = self.ttl.as_secs() + u64::from(self.ttl.subsec_nanos() > 0);
        let mut b = EtcdConfig::builder()
            .ttl(if self.ttl.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_secs(secs)
            })
            .drift(self.drift_ppm, self.drift_floor)
            .retry(self.retry)
            .wait(self.wait);
        if let Some(t) = self.op_timeout {
            b = b.op_timeout(t);
        }
        b.build()
    }
}

/// Idle machines (with their leases) by lock name, for the next acquisition.
type Pool = Mutex<BTreeMap<String, Vec<(Options, EtcdLock)>>>;

/// Most idle machines kept per name and in all.
const POOL_PER_NAME: usize = 16;
const POOL_TOTAL: usize = 4096;

/// An etcd lock client. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Etcd {
    cluster: Arc<Cluster>,
    /// The connection of the member that answered first when connecting (boxed: a client
    /// is large, and `Etcd` is cloned and moved around).
    first: Arc<Client>,
    clock: Clock,
    defaults: Options,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.cluster.endpoints)
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// Configures an [`Etcd`] client before connecting.
#[derive(Clone)]
#[must_use = "a builder does nothing until `connect().await`"]
pub struct EtcdBuilder {
    endpoints: Vec<String>,
    user: Option<(String, String)>,
    tls: Option<TlsOptions>,
    connect_timeout: Duration,
    defaults: Options,
}

impl std::fmt::Debug for EtcdBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBuilder")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("password", &self.user.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("defaults", &self.defaults)
            .finish()
    }
}

impl Etcd {
    /// Connects with the default settings (lease ttl 30 s, wait 10 s).
    pub async fn connect<I, S>(endpoints: I) -> Result<Etcd, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Etcd::builder(endpoints).connect().await
    }

    /// Starts configuring a client for these endpoints (`http://host:2379`, `https://...`,
    /// or `host:2379`).
    pub fn builder<I, S>(endpoints: I) -> EtcdBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        EtcdBuilder {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.as_ref().to_owned())
                .collect(),
            user: None,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            defaults: Options::default(),
        }
    }

    /// Waits, at most `timeout`, until every background task of this client has finished:
    /// clean-ups of cancelled acquisitions, releases of dropped guards, lease revokes and
    /// commands left in flight. Call it before the process exits (after releasing or dropping
    /// every guard: a held lock's keepalive task runs until it is released) so that nothing
    /// this process wrote outlives it. Returns whether everything finished in time.
    pub async fn close(&self, timeout: Duration) -> bool {
        self.cluster.tasks.wait_idle(timeout).await
    }

    /// Asks for the lock `name`; configure it, then `.await` it.
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest {
            client: self,
            name: name.into(),
            options: self.defaults.clone(),
        }
    }

    /// An etcd-client connection to a member that answered (the preferred one when it is
    /// connected), for the owner-guarded writes of [`guarded_put`].
    pub fn client(&self) -> Client {
        self.cluster.any_client(&self.first)
    }

    /// The member new requests go to first (the one that answered last; it changes when a
    /// member fails).
    pub fn preferred_endpoint(&self) -> &str {
        let i = self.cluster.health().preferred();
        self.cluster
            .members
            .get(i)
            .map_or("", |m| m.endpoint.as_str())
    }

    fn take_machine(&self, name: &str, options: &Options) -> Option<EtcdLock> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let idle = pool.get_mut(name)?;
        let i = idle.iter().position(|(o, _)| o == options)?;
        let (_, m) = idle.swap_remove(i);
        if idle.is_empty() {
            pool.remove(name);
        }
        Some(m)
    }
}

impl EtcdBuilder {
    /// Default lease ttl of each lock (etcd counts whole seconds: rounded up).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.defaults.ttl = ttl;
        self
    }
    /// Default time to keep trying.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.defaults.wait = Wait::For(wait);
        self
    }
    /// Clock drift rate bound (ppm) and constant floor.
    pub fn drift(mut self, ppm: u32, floor: Duration) -> Self {
        self.defaults.drift_ppm = ppm;
        self.defaults.drift_floor = floor;
        self
    }
    /// Timeout of each request (not of watches).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.op_timeout = Some(timeout);
        self
    }
    /// Authenticates as `user`; the password never appears in Debug output or errors.
    pub fn user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }
    /// TLS settings (CA certificate, client identity) for `https://` endpoints.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }
    /// How long connecting may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Validates the settings and connects.
    pub async fn connect(self) -> Result<Etcd, Error> {
        self.defaults.config()?;
        let endpoints = self.endpoints.join(",");
        if self.endpoints.is_empty() {
            return Err(Error::Unreachable {
                endpoints,
                reason: "no endpoints given".into(),
            });
        }
        for e in &self.endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e);
            if rest.is_empty() || rest.contains("://") || rest.contains('@') {
                return Err(Error::Unreachable {
                    endpoints,
                    reason: format!("bad endpoint {e:?}: expected http://host:port or host:port"),
                });
            }
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(Error::Unreachable {
                endpoints,
                reason: format!("more than {MAX_ENDPOINTS} endpoints"),
            });
        }
        // A member cut off from the leader answers "no leader" at once instead of waiting:
        // the request moves to another member.
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_require_leader(true);
        if let Some((u, p)) = &self.user {
            opts = opts.with_user(u.clone(), p.clone());
        }
        if let Some(tls) = self.tls.clone() {
            opts = opts.with_tls(tls);
        }
        let clock = Clock::new();
        let cluster = Arc::new(Cluster {
            members: self
                .endpoints
                .iter()
                .map(|e| Member {
                    endpoint: e.clone(),
                    client: tokio::sync::OnceCell::new(),
                    failed: tokio::sync::Notify::new(),
                })
                .collect(),
            health: Mutex::new(Endpoints::new(self.endpoints.len(), FAILED_COOLDOWN)),
            tasks: Arc::default(),
            opts,
            endpoints,
            clock,
        });
        // Every member is probed at once; the first that answers a read (with the
        // credentials) becomes preferred. One member down or stopped does not delay this.
        let limit = self.connect_timeout;
        let mut probes = tokio::task::JoinSet::new();
        for i in 0..cluster.members.len() {
            let cluster = cluster.clone();
            probes.spawn(async move {
                let probe = async {
                    let mut c = cluster.members[i].client(&cluster.opts).await?;
                    loop {
                        match c.get("lucky-probe", None).await {
                            Ok(_) => return Ok(c),
                            // A member that answers "no leader" or "leader changed" is alive
                            // during an election: ask again until the connect timeout.
                            Err(etcd_client::Error::GRpcStatus(s))
                                if i32::from(s.code()) == UNAVAILABLE
                                    && s.message().starts_with("etcdserver:") =>
                            {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                };
                (i, tokio::time::timeout(limit, probe).await)
            });
        }
        let mut reasons = Vec::new();
        while let Some(done) = probes.join_next().await {
            let Ok((i, outcome)) = done else { continue };
            let now = cluster.clock.now();
            let endpoint = &cluster.members[i].endpoint;
            match outcome {
                Ok(Ok(first)) => {
                    let mut h = cluster.health();
                    h.succeeded(i);
                    h.prefer(i);
                    drop(h);
                    return Ok(Etcd {
                        cluster,
                        first: Arc::new(first),
                        clock,
                        defaults: self.defaults,
                        pool: Arc::default(),
                    });
                }
                Ok(Err(e)) => reasons.push(format!("{endpoint}: {e}")),
                Err(_) => reasons.push(format!("{endpoint}: no answer within {limit:?}")),
            }
            cluster.health().failed(i, now);
        }
        Err(Error::Unreachable {
            endpoints: cluster.endpoints.clone(),
            reason: reasons.join("; "),
        })
    }
}

/// One lock request; `.await` it to acquire.
#[derive(Debug)]
#[must_use = "a lock request does nothing until it is awaited"]
pub struct LockRequest<'a> {
    client: &'a Etcd,
    name: String,
    options: Options,
}

impl LockRequest<'_> {
    /// Lease ttl (whole seconds; rounded up).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = ttl;
        self
    }
    /// Keep trying (queued behind the holder) for this long.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.options.wait = Wait::For(wait);
        self
    }
    /// Only if it is free now.
    pub fn no_wait(mut self) -> Self {
        self.options.wait = Wait::None;
        self
    }
    /// Wait in the queue until acquired (or the future is dropped).
    pub fn wait_forever(mut self) -> Self {
        self.options.wait = Wait::Forever;
        self
    }
    /// Timeout of each request.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.options.op_timeout = Some(timeout);
        self
    }

    /// Everything up to the first command, done before the future is first polled.
    fn start(
        self,
    ) -> Result<impl std::future::Future<Output = Result<Guard, crate::Error>> + Send, Error> {
        let cfg = self.options.config()?;
        let machine = match self.client.take_machine(&self.name, &self.options) {
            Some(m) => m,
            None => {
                let mut seed = [0u8; 8];
                getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
                EtcdLock::new(&cfg, self.name.as_bytes(), u64::from_le_bytes(seed))?
            }
        };
        let pool = Arc::downgrade(&self.client.pool);
        let (name, options) = (self.name.clone(), self.options.clone());
        let recycle: driver::Recycle<EtcdLock> = Box::new(move |m| {
            let Some(pool) = pool.upgrade() else { return };
            let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
            let total: usize = pool.values().map(Vec::len).sum();
            let idle = pool.entry(name).or_default();
            if idle.len() < POOL_PER_NAME && total < POOL_TOTAL {
                idle.push((options, m));
            }
        });
        let transport = Arc::new(Route {
            cluster: self.client.cluster.clone(),
            op_timeout: cfg.op_timeout(),
        });
        let clock = self.client.clock;
        Ok(driver::acquire(
            machine,
            transport,
            clock,
            self.name,
            Some(recycle),
        ))
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

/// Puts `key = value` in etcd only while the lock of `guard` is still ours: the transaction
/// compares that our lock key still exists with the create revision that is the guard's
/// fence. Returns whether the put happened. For writes into etcd itself, this is stronger
/// than a fence check: a holder that lost its lease cannot write at all.
pub async fn guarded_put(
    client: &mut Client,
    guard_key: &[u8],
    fence: u64,
    key: impl Into<Vec<u8>>,
    value: impl Into<Vec<u8>>,
) -> Result<bool, etcd_client::Error> {
    let rev = i64::try_from(fence).unwrap_or(i64::MAX);
    let txn = etcd_client::Txn::new()
        .when([Compare::create_revision(
            guard_key.to_vec(),
            CompareOp::Equal,
            rev,
        )])
        .and_then([TxnOp::put(key, value, None)]);
    Ok(client.txn(txn).await?.succeeded())
}

/// Finds our lock key for `name` and `fence` (the key whose create revision is the fence), for
/// [`guarded_put`].
pub async fn lock_key(
    client: &mut Client,
    name: &str,
    fence: u64,
) -> Result<Option<Vec<u8>>, etcd_client::Error> {
    let prefix = format!("{name}/");
    let rev = i64::try_from(fence).unwrap_or(i64::MAX);
    let opts = GetOptions::new()
        .with_prefix()
        .with_min_create_revision(rev)
        .with_max_create_revision(rev)
        .with_keys_only();
    let resp = client.get(prefix, Some(opts)).await?;
    Ok(resp.kvs().first().map(|kv| kv.key().to_vec()))
}

/// How long a member that failed a request is passed over while other members are untried.
const FAILED_COOLDOWN: Duration = Duration::from_secs(5);

/// One cluster member: its own connection (made on first use), so a dead member's errors
/// stay its own.
struct Member {
    endpoint: String,
    client: tokio::sync::OnceCell<Client>,
    /// Woken when a request to this member failed: watches on it end and move elsewhere.
    failed: tokio::sync::Notify,
}

impl Member {
    async fn client(&self, opts: &ConnectOptions) -> Result<Client, etcd_client::Error> {
        let connect = || Client::connect([self.endpoint.as_str()], Some(opts.clone()));
        self.client.get_or_try_init(connect).await.cloned()
    }
}

/// The connections to the cluster's members and which of them answer.
struct Cluster {
    members: Vec<Member>,
    health: Mutex<Endpoints>,
    opts: ConnectOptions,
    endpoints: String,
    clock: Clock,
    /// Background tasks of every lock of this client, for `Etcd::close`.
    tasks: Arc<driver::Tasks>,
}

/// One lock's way to the cluster: a request's tries across members fit in the machine's own
/// request timeout.
struct Route {
    cluster: Arc<Cluster>,
    op_timeout: Duration,
}

impl Transport for Route {
    type Command = Command;
    type Reply = Reply;

    fn tasks(&self) -> &Arc<driver::Tasks> {
        &self.cluster.tasks
    }

    fn send(
        self: &Arc<Self>,
        _node: usize,
        command: Command,
    ) -> impl std::future::Future<Output = Reply> + Send + 'static {
        let (cluster, budget) = (self.cluster.clone(), self.op_timeout);
        async move {
            match command {
                Command::WaitDelete {
                    key, prefix, from, ..
                } => cluster.watch(key, prefix, from, budget).await,
                command => cluster.request(command, budget).await,
            }
        }
    }
}

impl Cluster {
    fn health(&self) -> std::sync::MutexGuard<'_, Endpoints> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The preferred member's connection if it is made, else `first`.
    fn any_client(&self, first: &Client) -> Client {
        let preferred = self.health().preferred();
        self.members
            .get(preferred)
            .and_then(|m| m.client.get().cloned())
            .unwrap_or_else(|| first.clone())
    }

    fn mark_failed(&self, i: usize) {
        self.health().failed(i, self.clock.now());
        self.members[i].failed.notify_waiters();
    }

    /// Runs `command` on the preferred member, and on the next ones while members fail to
    /// answer, all within `budget`. Every command sent here is safe to apply twice.
    async fn request(&self, command: Command, budget: Duration) -> Reply {
        debug_assert!(command.resend_safe());
        let mut attempt = self.health().start(self.clock.now(), budget);
        let mut last = String::from("no member answered in time");
        loop {
            let now = self.clock.now();
            let Some((i, until)) = self.health().next(&mut attempt, now) else {
                return Reply::Unavailable(format!("{}: {last}", self.endpoints));
            };
            let member = &self.members[i];
            let limit = until.saturating_duration_since(now);
            let try_once = async {
                let mut c = member.client(&self.opts).await?;
                run(&mut c, command.clone()).await
            };
            let reply = match tokio::time::timeout(limit, try_once).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => error_reply(e),
                Err(_) => Reply::Unavailable(format!("no answer within {limit:?}")),
            };
            match reply {
                Reply::Unavailable(why) => {
                    self.mark_failed(i);
                    last = format!("{}: {why}", member.endpoint);
                }
                reply => {
                    self.health().succeeded(i);
                    return reply;
                }
            }
        }
    }

    /// Watches `key` from revision `from` on one member until it is deleted. Not resent: a
    /// watch whose member fails ends "unavailable", and the machine reads the queue again
    /// (elsewhere) before it watches anew. A silent member is found by progress requests:
    /// after `probe` without a word, one is sent, and another `probe` without an answer ends
    /// the watch.
    async fn watch(&self, key: Bytes, prefix: bool, from: i64, probe: Duration) -> Reply {
        let now = self.clock.now();
        let picked = {
            let mut health = self.health();
            let mut attempt = health.start(now, probe);
            health.next(&mut attempt, now)
        };
        let Some((i, _)) = picked else {
            return Reply::Unavailable("no member to watch on".into());
        };
        let member = &self.members[i];
        let failed = member.failed.notified();
        tokio::pin!(failed);
        failed.as_mut().enable();
        let mut opts = WatchOptions::new()
            .with_start_revision(from)
            .with_filters([WatchFilterType::NoPut]);
        if prefix {
            opts = opts.with_prefix();
        }
        let open = async {
            let mut c = member.client(&self.opts).await?;
            c.watch(key.to_vec(), Some(opts)).await
        };
        let mut stream = match tokio::time::timeout(probe, open).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.watch_failed(i, error_reply(e)),
            Err(_) => {
                return self.watch_failed(i, Reply::Unavailable("watch not opened in time".into()))
            }
        };
        let mut asked = false;
        loop {
            let message = tokio::select! {
                biased;
                () = &mut failed => {
                    return Reply::Unavailable(format!("{} failed a request", member.endpoint));
                }
                m = tokio::time::timeout(probe, stream.message()) => m,
            };
            let r = match message {
                Err(_) if asked => {
                    let why = format!("{} left a progress request unanswered", member.endpoint);
                    return self.watch_failed(i, Reply::Unavailable(why));
                }
                Err(_) => {
                    asked = true;
                    if let Err(e) = stream.request_progress().await {
                        return self.watch_failed(i, error_reply(e));
                    }
                    continue;
                }
                Ok(Err(e)) => return self.watch_failed(i, error_reply(e)),
                Ok(Ok(None)) => {
                    return self.watch_failed(i, Reply::Unavailable("watch stream closed".into()))
                }
                Ok(Ok(Some(r))) => r,
            };
            asked = false;
            if r.compact_revision() > 0 {
                return Reply::Compacted;
            }
            if r.canceled() {
                let why = format!("watch canceled: {}", r.cancel_reason());
                return self.watch_failed(i, Reply::Unavailable(why));
            }
            if r.events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return Reply::Deleted;
            }
        }
    }

    fn watch_failed(&self, i: usize, reply: Reply) -> Reply {
        if matches!(reply, Reply::Unavailable(_)) {
            self.mark_failed(i);
        }
        reply
    }
}

fn secs(ttl: Duration) -> i64 {
    let s = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(s.max(1)).unwrap_or(i64::MAX)
}

fn owner_op(prefix: &[u8]) -> TxnOp {
    TxnOp::get(
        prefix.to_vec(),
        Some(
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1),
        ),
    )
}

async fn run(client: &mut Client, command: Command) -> Result<Reply, etcd_client::Error> {
    Ok(match command {
        Command::LeaseGrant { ttl } => {
            let r = client.lease_grant(secs(ttl), None).await?;
            Reply::Lease {
                id: r.id(),
                ttl: Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0)),
            }
        }
        Command::KeepAlive { lease } => {
            // etcd-client queues a first request when it opens the stream, but etcd answers
            // only the requests sent once the stream is up: send one.
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(r) => Reply::KeepAlive {
                    ttl: Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0)),
                },
                None => Reply::Unavailable("keepalive stream closed".into()),
            }
        }
        Command::Revoke { lease } => {
            client.lease_revoke(lease).await?;
            Reply::Done
        }
        Command::Take { key, prefix, lease } => {
            let txn = etcd_client::Txn::new()
                .when([Compare::create_revision(key.to_vec(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(
                        key.to_vec(),
                        Vec::new(),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    owner_op(&prefix),
                ])
                .or_else([TxnOp::get(key.to_vec(), None), owner_op(&prefix)]);
            let r = client.txn(txn).await?;
            let revision = r.header().map_or(0, |h| h.revision());
            let ops = r.op_responses();
            let first_create = |op: Option<&TxnOpResponse>| match op {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| kv.create_revision()),
                _ => None,
            };
            let create_revision = if r.succeeded() {
                revision
            } else {
                first_create(ops.first()).unwrap_or(0)
            };
            Reply::Taken {
                create_revision,
                owner_revision: first_create(ops.get(1)).unwrap_or(0),
                revision,
            }
        }
        Command::Queue { key, prefix, below } => {
            let pred = GetOptions::new()
                .with_prefix()
                .with_max_create_revision(below.saturating_sub(1).max(1))
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1)
                .with_keys_only();
            let txn = etcd_client::Txn::new().and_then([
                TxnOp::get(key.to_vec(), None),
                TxnOp::get(prefix.to_vec(), Some(pred)),
            ]);
            let r = client.txn(txn).await?;
            let revision = r.header().map_or(0, |h| h.revision());
            let ops = r.op_responses();
            let mine = match ops.first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| kv.create_revision()),
                _ => None,
            };
            let predecessor = match ops.get(1) {
                Some(TxnOpResponse::Get(g)) => g
                    .kvs()
                    .first()
                    .filter(|kv| kv.create_revision() < below)
                    .map(|kv| bytes::Bytes::copy_from_slice(kv.key())),
                _ => None,
            };
            Reply::Queue {
                mine,
                predecessor,
                revision,
            }
        }
        // Watches run in `Cluster::watch`.
        Command::WaitDelete { .. } => Reply::Error("a watch is not a request".into()),
        Command::Delete { key, revision } => {
            let txn = etcd_client::Txn::new()
                .when([Compare::create_revision(
                    key.to_vec(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::delete(key.to_vec(), None)]);
            client.txn(txn).await?;
            Reply::Done
        }
    })
}

fn error_reply(e: etcd_client::Error) -> Reply {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            if s.message().contains("lease not found") {
                Reply::LeaseNotFound
            } else if matches!(
                i32::from(s.code()),
                CANCELLED | DEADLINE_EXCEEDED | UNAVAILABLE
            ) {
                Reply::Unavailable(s.message().to_owned())
            } else {
                Reply::Error(s.message().to_owned())
            }
        }
        other => Reply::Unavailable(other.to_string()),
    }
}

/// gRPC status codes that mean "not reached" rather than "refused".
const CANCELLED: i32 = 1;
const DEADLINE_EXCEEDED: i32 = 4;
const UNAVAILABLE: i32 = 14;

crate::locker::impl_locker!(Etcd);
