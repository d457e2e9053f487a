//! The ZooKeeper lock (feature `zookeeper`): Apache Curator's `InterProcessMutex` recipe, run
//! by the lucky-core [`ZkLock`] machine over a `zookeeper-client` session. Lucky, Curator
//! (`InterProcessMutex(client, "<root>/<name>")`) and kazoo (`Lock(client, "<root>/<name>")`)
//! exclude each other.
//!
//! ```no_run
//! # async fn f() -> Result<(), lucky::Error> {
//! use std::time::Duration;
//! let zk = lucky::zookeeper::ZooKeeper::builder(["127.0.0.1:2181"])
//!     .ttl(Duration::from_secs(30)) // the session timeout to ask for
//!     .connect()
//!     .await?;
//! let guard = zk.lock("jobs/nightly").await?;
//! // The fence is our node's creation zxid: it grows with every new holder.
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
//! One client keeps one ZooKeeper session for all its locks of one ttl (the session timeout
//! it asks for; the builder's ttl by default, a lock with another ttl gets a session of its
//! own, opened at its first request); the session is the lease. How
//! long a lock is trusted comes from what the session's answers prove about the *leader*,
//! which alone expires sessions: see [`lucky_core::zookeeper::proof`]. Tell the client the
//! ensemble's `tickTime` and `syncLimit` ([`ZooKeeperBuilder::ensemble`]; the default
//! assumes ZooKeeper's sample 2 s and 5), or that it talks to a single server
//! ([`ZooKeeperBuilder::standalone`]). A session that expires loses every lock on it at
//! once; the client then opens a new session for the next requests.

mod transport;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lucky_core::zookeeper::{Ensemble, ZkConfig, ZkLock};

use crate::client::{self, sealed, LockFuture, Options};
use crate::clock::Clock;
use crate::driver::{self, Tasks};
pub use crate::{Error, Guard};
use transport::{Route, Shared};

/// Configures a [`ZooKeeper`] client before connecting.
pub type ZooKeeperBuilder = crate::Builder<ZooKeeper>;
/// One lock request of a [`ZooKeeper`] client; `.await` it to acquire.
pub type LockRequest<'a> = crate::LockRequest<'a, ZooKeeper>;

/// Connection settings beyond the servers: the lock root and the ensemble's timing.
#[derive(Clone, Debug, Default)]
pub struct ZooKeeperSetup {
    root: Option<String>,
    ensemble: Option<Ensemble>,
}

/// A ZooKeeper lock client: one session shared by every lock of one ttl. Cheap to clone;
/// share one per process.
#[derive(Clone)]
pub struct ZooKeeper {
    /// The session of the builder's ttl.
    shared: Arc<Shared>,
    /// Every session, by session timeout.
    sessions: Arc<Mutex<BTreeMap<Duration, Arc<Shared>>>>,
    setup: ZooKeeperSetup,
    connect_timeout: Duration,
    defaults: Options<()>,
}

impl std::fmt::Debug for ZooKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeper")
            .field("servers", &self.shared.servers)
            .field("root", &self.shared.cfg.root())
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl ZooKeeper {
    /// Connects with the default settings (session timeout 30 s, root `/lucky`, wait 10 s,
    /// an ensemble with ZooKeeper's sample timing).
    pub async fn connect<I, S>(servers: I) -> Result<ZooKeeper, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ZooKeeper::builder(servers).connect().await
    }

    /// Starts configuring a client for these servers (`host:port` each).
    pub fn builder<I, S>(servers: I) -> ZooKeeperBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ZooKeeperBuilder::new(servers)
    }

    /// Asks for the lock `name` (one or more `/`-separated path segments under the root);
    /// configure it, then `.await` it. Its `.ttl()` is the timeout of the session it lives
    /// on.
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest::new(self, name.into())
    }

    /// The id of the current session of the builder's ttl (`None` between an expiry and the
    /// next connect).
    pub fn session_id(&self) -> Option<i64> {
        self.shared.session_id()
    }

    /// The underlying `zookeeper-client` session (connecting if there is none), for reads
    /// and writes of your own beside the locks.
    pub async fn client(&self) -> Result<zookeeper_client::Client, Error> {
        self.shared
            .current()
            .await
            .map(|c| c.client.clone())
            .map_err(|details| Error::Unreachable {
                backend: "zookeeper",
                reachable: 0,
                total: self.shared.servers.len(),
                needed: 1,
                details,
            })
    }

    /// Waits, at most `timeout`, until every background task of this client has finished
    /// (clean-ups of cancelled acquisitions, releases of dropped guards). Call it before the
    /// process exits, after releasing or dropping every guard.
    pub async fn close(&self, timeout: Duration) -> bool {
        client::close(self, timeout).await
    }
}

impl ZooKeeperBuilder {
    /// The parent of every lock directory (default `/lucky`): lock `name` is the queue under
    /// `<root>/<name>`. Use Curator's or kazoo's lock path split as root and name to share
    /// their locks.
    pub fn root(mut self, root: impl Into<String>) -> Self {
        self.setup.root = Some(root.into());
        self
    }
    /// The ensemble's `tickTime` and `syncLimit` (from its `zoo.cfg`): how much of a session
    /// the client may rely on when it talks to a follower.
    pub fn ensemble(mut self, tick: Duration, sync_limit: u32) -> Self {
        self.setup.ensemble = Some(Ensemble::new(tick, sync_limit, Duration::from_millis(200)));
        self
    }
    /// A single server (no followers, no elections): every answer proves the session.
    pub fn standalone(mut self) -> Self {
        self.setup.ensemble = Some(Ensemble::STANDALONE);
        self
    }
}

/// The machine's configuration for `o` on this client.
fn config(o: &Options<()>, setup: &ZooKeeperSetup) -> Result<ZkConfig, lucky_core::UsageError> {
    let mut b = ZkConfig::builder().lease(o.lease);
    if let Some(r) = &setup.root {
        b = b.root(r);
    }
    if let Some(e) = setup.ensemble {
        b = b.ensemble(e);
    }
    b.build()
}

fn check_servers(servers: &[String]) -> Result<(), Error> {
    let bad = |s: &str, reason: &str| Error::BadEndpoint {
        backend: "zookeeper",
        endpoint: s.to_owned(),
        reason: reason.to_owned(),
    };
    if servers.is_empty() {
        return Err(bad("", "no servers given"));
    }
    for s in servers {
        if s.is_empty() || s.contains('/') || s.contains(',') || s.contains('@') {
            return Err(bad(s, "expected host:port (the root is set with .root())"));
        }
    }
    Ok(())
}

impl sealed::Client for ZooKeeper {
    type Extra = ();
    type Setup = ZooKeeperSetup;

    fn default_extra() {}

    async fn connect(b: ZooKeeperBuilder) -> Result<ZooKeeper, Error> {
        let cfg = config(&b.defaults, &b.setup)?;
        check_servers(&b.targets)?;
        let shared = Shared::new(
            b.targets.clone(),
            cfg.clone(),
            b.connect_timeout,
            Clock::new(),
            Arc::default(),
        );
        if let Err(details) = shared.current().await {
            return Err(Error::Unreachable {
                backend: "zookeeper",
                reachable: 0,
                total: b.targets.len(),
                needed: 1,
                details,
            });
        }
        Shared::start_prober(&shared);
        let sessions = BTreeMap::from([(cfg.session_timeout(), shared.clone())]);
        Ok(ZooKeeper {
            shared,
            sessions: Arc::new(Mutex::new(sessions)),
            setup: b.setup,
            connect_timeout: b.connect_timeout,
            defaults: b.defaults,
        })
    }

    fn defaults(&self) -> &Options<()> {
        &self.defaults
    }

    fn start(&self, name: String, options: &Options<()>) -> Result<LockFuture<'static>, Error> {
        let cfg = config(options, &self.setup)?;
        let shared = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions
                .entry(cfg.session_timeout())
                .or_insert_with(|| {
                    let s = Shared::new(
                        self.shared.servers.clone(),
                        cfg.clone(),
                        self.connect_timeout,
                        self.shared.clock,
                        self.shared.tasks.clone(),
                    );
                    Shared::start_prober(&s);
                    s
                })
                .clone()
        };
        let mut seed = [0u8; 24];
        getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
        let (token, jitter) = seed.split_at(16);
        let jitter = u64::from_le_bytes(jitter.try_into().unwrap_or([0; 8]));
        let machine = ZkLock::new(&cfg, name.as_bytes(), token, jitter)?;
        let clock = shared.clock;
        let transport = Arc::new(Route { shared });
        Ok(Box::pin(driver::acquire(
            machine,
            transport,
            clock,
            name,
            None,
            options.lease.wait,
        )))
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.shared.tasks
    }
}
