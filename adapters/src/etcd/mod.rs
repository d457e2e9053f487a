//! The etcd lease lock (feature `etcd`): etcd's own `concurrency.Mutex` queue, run by the
//! lucky-core [`EtcdLock`] machine over an `etcd-client`
//! connection. Lucky, `etcdctl lock <name>` and Go's `concurrency.Mutex` exclude each other.
//!
//! ```no_run
//! # async fn f() -> Result<(), lucky::Error> {
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
//! ([`Resend`](lucky_core::endpoints::Resend) says why for each). A watch is not resent: when
//! its member fails (a request there failed, its stream broke, or it left a progress request
//! unanswered for a request timeout) the watch ends "unavailable" and the machine reads the
//! queue again, on a live member, before it watches anew, so no deletion is missed. Every
//! read that judges ownership is linearizable (no `serializable` range anywhere), so a member
//! cut off from the leader cannot show a stale queue. The cluster is unreachable only when
//! every member failed a request in its time.

mod session;
mod transport;
mod watch;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, TxnOp};
use lucky_core::endpoints::{Endpoints, MAX_ENDPOINTS};
use lucky_core::etcd::{EtcdConfig, EtcdLock};

use crate::client::{self, sealed, LockFuture, Options};
use crate::clock::Clock;
use crate::driver::{self, Tasks};
pub use crate::{Error, Guard};
use session::{SessionHost, SharedLock};
use transport::{Cluster, Member, Route, Told, FAILED_COOLDOWN, UNAVAILABLE};

pub use etcd_client::{Certificate, Identity, TlsOptions};

/// Configures an [`Etcd`] client before connecting.
pub type EtcdBuilder = crate::Builder<Etcd>;
/// One lock request of an [`Etcd`] client; `.await` it to acquire.
pub type LockRequest<'a> = crate::LockRequest<'a, Etcd>;

/// The machine's configuration (etcd counts the lease in whole seconds: the configuration
/// rounds the ttl up, and the machine asks for that).
fn config(o: &Options<()>) -> Result<EtcdConfig, lucky_core::UsageError> {
    EtcdConfig::builder().lease(o.lease).build()
}

/// Idle machines (with their leases) by lock name, for the next acquisition.
type Pool = Mutex<BTreeMap<String, Vec<(Options<()>, EtcdLock)>>>;

/// Revokes `leases` on `client`, 32 at a time; whether every revoke was answered (a lease
/// already gone counts as answered).
async fn revoke_all(leases: Vec<i64>, client: Client) -> bool {
    let mut all = true;
    for chunk in leases.chunks(32) {
        let mut set = tokio::task::JoinSet::new();
        for &lease in chunk {
            let mut c = client.clone();
            set.spawn(async move { c.lease_revoke(lease).await });
        }
        while let Some(r) = set.join_next().await {
            all &= match r {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => e.to_string().contains("requested lease not found"),
                Err(_) => false,
            };
        }
    }
    all
}

/// How long the revoke of a lease no machine keeps may take.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most idle machines kept per name and in all.
const POOL_PER_NAME: usize = 16;
const POOL_TOTAL: usize = 4096;

/// Connection settings beyond the endpoints: credentials and TLS.
#[derive(Clone, Default)]
pub struct EtcdSetup {
    user: Option<(String, String)>,
    tls: Option<TlsOptions>,
    /// A lease per lock instead of the client's shared session.
    per_lock: bool,
}

impl std::fmt::Debug for EtcdSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSetup")
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("password", &self.user.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("per_lock", &self.per_lock)
            .finish()
    }
}

/// An etcd lock client. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Etcd {
    cluster: Arc<Cluster>,
    /// The connection of the member that answered first when connecting (boxed: a client
    /// is large, and `Etcd` is cloned and moved around).
    first: Arc<Client>,
    clock: Clock,
    defaults: Options<()>,
    pool: Arc<Pool>,
    /// The client's sessions, one per lease configuration, unless `per_lock`.
    sessions: Arc<Mutex<Sessions>>,
    per_lock: bool,
}

/// A client's sessions, by the lease configuration of their locks.
type Sessions = Vec<(EtcdConfig, Arc<SessionHost>)>;

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.cluster.endpoints)
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
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
        EtcdBuilder::new(endpoints)
    }

    /// Asks for the lock `name`; configure it, then `.await` it.
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest::new(self, name.into())
    }

    /// Waits, at most `timeout`, until every background task of this client has finished:
    /// clean-ups of cancelled acquisitions, releases of dropped guards, lease revokes and
    /// commands left in flight. Call it before the process exits (after releasing or dropping
    /// every guard: a held lock's keepalive task runs until it is released) so that nothing
    /// this process wrote outlives it. Returns whether everything finished in time.
    pub async fn close(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let done = client::close(self, timeout).await;
        // Idle machines kept for the next acquisition of their name hold leases of their own:
        // revoke them (a few at a time), so none outlives the process.
        let leases: Vec<i64> = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *pool)
                .into_values()
                .flatten()
                .filter_map(|(_, m)| m.lease())
                .collect()
        };
        let client = self.client();
        let revokes = revoke_all(leases, client);
        let revoked = tokio::time::timeout_at(deadline, revokes)
            .await
            .unwrap_or(false);
        // The shared sessions' leases go too, with every key on them.
        let sessions: Vec<Arc<SessionHost>> = {
            let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *s)
                .into_iter()
                .map(|(_, h)| h)
                .collect()
        };
        // Their revokes get a request's time even when the wait above used up `timeout`: a
        // lease left behind would keep every key on it until its ttl.
        let mut closed = true;
        for h in sessions {
            let by = deadline.max(tokio::time::Instant::now() + h.op_timeout());
            closed &= tokio::time::timeout_at(by, h.close())
                .await
                .unwrap_or(false);
        }
        // The shared watch streams end with their last waiters.
        self.cluster.hubs.close();
        done && revoked && closed
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

    /// The session of locks configured as `cfg` (started on first use).
    fn session_for(&self, cfg: &EtcdConfig) -> Arc<SessionHost> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, h)) = sessions.iter().find(|(c, _)| c == cfg) {
            return h.clone();
        }
        let h = SessionHost::start(cfg, self.cluster.clone(), self.clock);
        sessions.push((cfg.clone(), h.clone()));
        h
    }

    fn take_machine(&self, name: &str, options: &Options<()>) -> Option<EtcdLock> {
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
    /// Authenticates as `user`; the password never appears in Debug output or errors.
    pub fn user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.setup.user = Some((user.into(), password.into()));
        self
    }
    /// TLS settings (CA certificate, client identity) for `https://` endpoints.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.setup.tls = Some(tls);
        self
    }
    /// A lease of its own for every lock, kept alive by the lock, instead of the client's
    /// shared session lease (the default). Each lock's key is then `<name>/<lease hex>`, as
    /// `etcdctl lock` writes; the keepalive traffic grows with the number of held locks.
    pub fn lease_per_lock(mut self, on: bool) -> Self {
        self.setup.per_lock = on;
        self
    }
}

/// Why an endpoint list cannot be used, if it cannot.
fn check_endpoints(endpoints: &[String]) -> Result<(), Error> {
    let bad = |endpoint: &str, reason: String| Error::BadEndpoint {
        backend: "etcd",
        endpoint: endpoint.to_owned(),
        reason,
    };
    if endpoints.is_empty() {
        return Err(bad("", "no endpoints given".into()));
    }
    for e in endpoints {
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e);
        if rest.is_empty() || rest.contains("://") || rest.contains('@') {
            return Err(bad(e, "expected http://host:port or host:port".into()));
        }
    }
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(bad(
            &endpoints.join(","),
            format!("more than {MAX_ENDPOINTS} endpoints"),
        ));
    }
    Ok(())
}

impl sealed::Client for Etcd {
    type Extra = ();
    type Setup = EtcdSetup;

    fn default_extra() {}

    async fn connect(b: EtcdBuilder) -> Result<Etcd, Error> {
        config(&b.defaults)?;
        check_endpoints(&b.targets)?;
        let endpoints = b.targets.join(",");
        // A member cut off from the leader answers "no leader" at once instead of waiting:
        // the request moves to another member.
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(b.connect_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_require_leader(true);
        if let Some((u, p)) = &b.setup.user {
            opts = opts.with_user(u.clone(), p.clone());
        }
        if let Some(tls) = b.setup.tls.clone() {
            opts = opts.with_tls(tls);
        }
        let clock = Clock::new();
        let cluster = Arc::new(Cluster {
            members: b
                .targets
                .iter()
                .map(|e| Member {
                    endpoint: e.clone(),
                    client: tokio::sync::OnceCell::new(),
                    failed: Arc::default(),
                })
                .collect(),
            health: Mutex::new(Endpoints::new(b.targets.len(), FAILED_COOLDOWN)),
            tasks: Arc::default(),
            gate: driver::Gate::new(b.max_in_flight),
            hubs: watch::Hubs::new(b.targets.len()),
            opts,
            endpoints,
            clock,
        });
        // Every member is probed at once; the first that answers a read (with the
        // credentials) becomes preferred. One member down or stopped does not delay this.
        let limit = b.connect_timeout;
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
                        defaults: b.defaults,
                        pool: Arc::default(),
                        sessions: Arc::default(),
                        per_lock: b.setup.per_lock,
                    });
                }
                Ok(Err(e)) => reasons.push(format!("{endpoint}: {e}")),
                Err(_) => reasons.push(format!("{endpoint}: no answer within {limit:?}")),
            }
            cluster.health().failed(i, now);
        }
        Err(Error::Unreachable {
            backend: "etcd",
            reachable: 0,
            total: cluster.members.len(),
            needed: 1,
            details: reasons.join("; "),
        })
    }

    fn defaults(&self) -> &Options<()> {
        &self.defaults
    }

    fn shut_down(&self, timeout: Duration) -> impl std::future::Future<Output = bool> + Send {
        self.close(timeout)
    }

    fn start(&self, name: String, options: &Options<()>) -> Result<LockFuture<'static>, Error> {
        let cfg = config(options)?;
        if !self.per_lock {
            let host = self.session_for(&cfg);
            let mut seed = [0u8; 8];
            getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
            let lock = EtcdLock::in_session(
                &cfg,
                name.as_bytes(),
                host.lock_id(),
                u64::from_le_bytes(seed),
            )?;
            let told = Arc::new(Told::default());
            let machine = SharedLock::new(lock, host.clone(), told.clone());
            let transport = Arc::new(Route {
                cluster: self.cluster.clone(),
                op_timeout: cfg.op_timeout(),
                session: Some((host.clone(), told)),
            });
            return Ok(Box::pin(driver::acquire(
                machine,
                transport,
                self.clock,
                name,
                None,
                options.lease.wait,
            )));
        }
        let machine = match self.take_machine(&name, options) {
            Some(m) => m,
            None => {
                let mut seed = [0u8; 8];
                getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
                EtcdLock::new(&cfg, name.as_bytes(), u64::from_le_bytes(seed))?
            }
        };
        let wait = options.lease.wait;
        let pool = Arc::downgrade(&self.pool);
        let (key, options) = (name.clone(), options.clone());
        let (cluster, first) = (self.cluster.clone(), self.first.clone());
        let recycle: driver::Recycle<EtcdLock> = Box::new(move |m| {
            let m = match pool.upgrade() {
                Some(pool) => {
                    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
                    let total: usize = pool.values().map(Vec::len).sum();
                    let idle = pool.entry(key).or_default();
                    if idle.len() < POOL_PER_NAME && total < POOL_TOTAL {
                        idle.push((options, m));
                        return;
                    }
                    m
                }
                None => m,
            };
            // Not kept: its lease goes now, not at its ttl (close() waits for the revoke).
            if let (Some(lease), Ok(rt)) = (m.lease(), tokio::runtime::Handle::try_current()) {
                let token = cluster.tasks.enter();
                let mut client = cluster.any_client(&first);
                rt.spawn(async move {
                    let _ = tokio::time::timeout(REVOKE_TIMEOUT, client.lease_revoke(lease)).await;
                    drop(token);
                });
            }
        });
        let transport = Arc::new(Route {
            cluster: self.cluster.clone(),
            op_timeout: cfg.op_timeout(),
            session: None,
        });
        Ok(Box::pin(driver::acquire(
            machine,
            transport,
            self.clock,
            name,
            Some(recycle),
            wait,
        )))
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.cluster.tasks
    }
}

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
