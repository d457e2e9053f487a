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
//! The table (created on first use unless `.create_table(false)`):
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
//!
//! TLS (rustls) when asked for: `require_ssl=true` in the URL (verified against the system's
//! roots, or `SSL_CERT_FILE`), or [`ca_file`](crate::Builder::ca_file) (verified against that
//! CA; TLS is then required). The server's chain and name are always verified.

mod transport;

use std::sync::Arc;
use std::time::Duration;

use crate::client::{self, sealed, LockFuture, Options};
use crate::clock::Clock;
use crate::driver::{self, Tasks};
use crate::lease_family::{self, LeaseExtra, Route, SqlSetup};
pub use crate::{Error, Guard};
use transport::{Db, Sql};

/// Configures a [`Mysql`] client before connecting.
pub type MysqlBuilder = crate::Builder<Mysql>;
/// One lock request of a [`Mysql`] client; `.await` it to acquire.
pub type LockRequest<'a> = crate::LockRequest<'a, Mysql>;

/// A MySQL/MariaDB lock client. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Mysql {
    db: Arc<Db>,
    table: String,
    clock: Clock,
    defaults: Options<LeaseExtra>,
}

impl Mysql {
    /// Connects with the default settings (table `lucky_locks`, created if missing).
    pub async fn connect(url: &str) -> Result<Mysql, Error> {
        Mysql::builder(url).connect().await
    }

    /// Starts configuring a client for `url` (`mysql://user:password@host:port/db`, with
    /// `?require_ssl=true` for TLS).
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

impl sealed::Client for Mysql {
    type Extra = LeaseExtra;
    type Setup = SqlSetup;

    fn default_extra() -> LeaseExtra {
        LeaseExtra::default()
    }

    async fn connect(b: MysqlBuilder) -> Result<Mysql, Error> {
        let cfg = lease_family::config(&b.defaults)?;
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
        crate::lease_family::check_table(&b.setup.table).map_err(|r| bad(url, r))?;
        let opts = mysql_async::Opts::from_url(url)
            .map_err(|e| bad(url, crate::redact(&e.to_string())))?;
        let asked = opts.ssl_opts().cloned();
        let wait_secs = cfg.op_timeout().as_secs().max(1);
        // Always the server the URL names: mysql_async would otherwise reconnect through the
        // Unix socket path that server reports (`@@socket`), on this machine, whatever the
        // host: another server's socket when the URL names a remote one.
        let mut opts = mysql_async::OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .init(vec![format!(
                "SET SESSION innodb_lock_wait_timeout = {wait_secs}"
            )]);
        // TLS when asked for (`require_ssl=true`, or a CA file): then required, and the server
        // verified (its chain against the CA file or the system's roots, and its name).
        if b.setup.ca_file.is_some() || asked.is_some() {
            if asked.is_some_and(|s| s.accept_invalid_certs() || s.skip_domain_validation()) {
                return Err(bad(
                    url,
                    "verify_ca=false and verify_identity=false are not supported: \
                     the server's chain and name are always verified"
                        .into(),
                ));
            }
            let roots = crate::lease_family::tls_roots(b.setup.ca_file.as_deref())
                .map_err(|r| bad(url, r))?;
            let roots = roots.into_iter().map(|c| c.to_vec().into()).collect();
            let ssl = mysql_async::SslOpts::default()
                .with_root_certs(roots)
                .with_disable_built_in_roots(true);
            opts = opts.ssl_opts(ssl);
        }
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
            Ok(Err(e)) => Some(transport::message(&e)),
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

    fn defaults(&self) -> &Options<LeaseExtra> {
        &self.defaults
    }

    fn start(
        &self,
        name: String,
        options: &Options<LeaseExtra>,
    ) -> Result<LockFuture<'static>, Error> {
        let machine = lease_family::machine(&lease_family::config(options)?, &name)?;
        let transport = Arc::new(Route::new(self.db.clone()));
        Ok(Box::pin(driver::acquire(
            machine, transport, self.clock, name, None,
        )))
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.db.tasks
    }
}
