//! MySQL and MariaDB (feature `mysql`): the lease-record machine of lucky-core on one row per
//! lock name in a table (default `lucky_locks`), judged by the server's `UTC_TIMESTAMP(6)`.
//!
//! ```no_run
//! # async fn f() -> Result<(), lucky::Error> {
//! use std::time::Duration;
//! let my = lucky::mysql::Mysql::connect("mysql://root@127.0.0.1:3306/test").await?;
//! let guard = my.lock("jobs/nightly").ttl(Duration::from_secs(30)).await?;
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! The table (created on first use unless [`MysqlBuilder::create_table`] is off):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS lucky_locks (name VARCHAR(512) NOT NULL PRIMARY KEY,
//!   owner VARBINARY(80) NULL, fence BIGINT NOT NULL, expires_at DATETIME(6) NULL) ENGINE=InnoDB;
//! ```
//!
//! Take is one `INSERT ... ON DUPLICATE KEY UPDATE` whose fence comes back through
//! `LAST_INSERT_ID(expr)` (raised on a takeover only); renew and release are owner-guarded
//! `UPDATE`s; release clears the owner and keeps the row. Each connection sets
//! `innodb_lock_wait_timeout` to the request timeout (whole seconds, at least 1), so a wedged
//! transaction holding a row stalls contenders that long at most. Checked on MariaDB 10.11
//! (`VALUES()` in `ON DUPLICATE KEY UPDATE` still works on MySQL 8, deprecated there).

mod transport;

use std::sync::Arc;
use std::time::Duration;

use lucky_core::lease::{LeaseConfig, LeaseLock};

use crate::client::{self, sealed, LockFuture, Options};
use crate::clock::Clock;
use crate::driver::{self, Tasks};
pub use crate::{Error, Guard};
use transport::{Db, Route, Sql};

/// Configures a [`Mysql`] client before connecting.
pub type MysqlBuilder = crate::Builder<Mysql>;
/// One lock request of a [`Mysql`] client; `.await` it to acquire.
pub type LockRequest<'a> = crate::LockRequest<'a, Mysql>;

/// MySQL's own per-lock settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlExtra {
    auto_extend: bool,
}

/// Connection settings beyond the URL: the table and whether to create it.
#[derive(Clone, Debug)]
pub struct MysqlSetup {
    table: String,
    create_table: bool,
}

impl Default for MysqlSetup {
    fn default() -> Self {
        MysqlSetup {
            table: "lucky_locks".into(),
            create_table: true,
        }
    }
}

/// A MySQL/MariaDB lock client. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Mysql {
    db: Arc<Db>,
    table: String,
    clock: Clock,
    defaults: Options<MysqlExtra>,
}

impl Mysql {
    /// Connects with the default settings (table `lucky_locks`, created if missing).
    pub async fn connect(url: &str) -> Result<Mysql, Error> {
        Mysql::builder(url).connect().await
    }

    /// Starts configuring a client for `url` (`mysql://user:password@host:port/db`).
    pub fn builder(url: &str) -> MysqlBuilder {
        MysqlBuilder::new([url])
    }

    /// Asks for the lock `name`; configure it, then `.await` it.
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest::new(self, name.into())
    }

    /// Waits, at most `timeout`, until every background task of this client has finished.
    pub async fn close(&self, timeout: Duration) -> bool {
        client::close(self, timeout).await
    }

    /// The table the locks live in.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl MysqlBuilder {
    /// The table (default `lucky_locks`): an identifier, optionally `db.table`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.setup.table = table.into();
        self
    }
    /// Create the table on connect if it is missing (default on).
    pub fn create_table(mut self, on: bool) -> Self {
        self.setup.create_table = on;
        self
    }
    /// Keep held locks alive in the background (default on, every ttl/3).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.defaults.extra.auto_extend = on;
        self
    }
}

impl LockRequest<'_> {
    /// Keep the lock alive in the background (default on).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.extra().auto_extend = on;
        self
    }
}

fn config(o: &Options<MysqlExtra>) -> Result<LeaseConfig, lucky_core::UsageError> {
    let b = LeaseConfig::builder().lease(o.lease);
    let b = if o.extra.auto_extend {
        b.auto_extend(None, None)
    } else {
        b
    };
    b.build()
}

impl sealed::Client for Mysql {
    type Extra = MysqlExtra;
    type Setup = MysqlSetup;

    fn default_extra() -> MysqlExtra {
        MysqlExtra { auto_extend: true }
    }

    async fn connect(b: MysqlBuilder) -> Result<Mysql, Error> {
        let cfg = config(&b.defaults)?;
        let bad = |endpoint: &str, reason: String| Error::BadEndpoint {
            backend: "MySQL",
            endpoint: crate::redact(endpoint),
            reason,
        };
        let [url] = &b.targets[..] else {
            return Err(bad(
                &b.targets.join(","),
                "give exactly one connection URL".into(),
            ));
        };
        crate::client::check_table(&b.setup.table).map_err(|r| bad(url, r))?;
        let opts = mysql_async::Opts::from_url(url)
            .map_err(|e| bad(url, crate::redact(&e.to_string())))?;
        let wait_secs = cfg.op_timeout().as_secs().max(1);
        let opts = mysql_async::OptsBuilder::from_opts(opts).init(vec![format!(
            "SET SESSION innodb_lock_wait_timeout = {wait_secs}"
        )]);
        let db = Arc::new(Db {
            pool: mysql_async::Pool::new(opts),
            sql: Sql::new(&b.setup.table),
            tasks: Arc::default(),
            hints: Arc::default(),
        });
        let first = if b.setup.create_table {
            db.sql.create.clone()
        } else {
            "SELECT 1".to_owned()
        };
        let ready = tokio::time::timeout(b.connect_timeout, async {
            use mysql_async::prelude::Queryable;
            let mut c = db.pool.get_conn().await?;
            c.query_drop(first).await
        })
        .await;
        let failed = match ready {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no connection within {:?}", b.connect_timeout)),
        };
        if let Some(e) = failed {
            return Err(Error::Unreachable {
                backend: "MySQL",
                reachable: 0,
                total: 1,
                needed: 1,
                details: format!("{}: {}", crate::redact(url), crate::redact(&e)),
            });
        }
        Ok(Mysql {
            db,
            table: b.setup.table,
            clock: Clock::new(),
            defaults: b.defaults,
        })
    }

    fn defaults(&self) -> &Options<MysqlExtra> {
        &self.defaults
    }

    fn start(
        &self,
        name: String,
        options: &Options<MysqlExtra>,
    ) -> Result<LockFuture<'static>, Error> {
        let cfg = config(options)?;
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| Error::Random(e.to_string()))?;
        let seed = u64::from_le_bytes(token[..8].try_into().unwrap_or_default()) ^ 0x27d4_eb2f;
        let machine = LeaseLock::new(&cfg, name.as_bytes(), &token, seed)?;
        let transport = Arc::new(Route {
            db: self.db.clone(),
            waiter: std::sync::atomic::AtomicU64::new(0),
        });
        Ok(Box::pin(driver::acquire(
            machine, transport, self.clock, name, None,
        )))
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.db.tasks
    }
}
