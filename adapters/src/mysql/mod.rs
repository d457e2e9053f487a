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

mod get_lock;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use crate::client::{self, sealed, LockFuture, Options};
use crate::clock::Clock;
use crate::driver::{self, Tasks};
use crate::lease_family::{self, LeaseExtra, Route, SqlSetup};
use crate::session_family::{self, Sessions};
pub use crate::{Error, Guard};
use get_lock::{GetLock, GetLockSql};
use transport::{Db, Sql};

/// Configures a [`Mysql`] client before connecting.
pub type MysqlBuilder = crate::Builder<Mysql>;
/// One lock request of a [`Mysql`] client; `.await` it to acquire.
pub type LockRequest<'a> = crate::LockRequest<'a, Mysql>;

/// A MySQL/MariaDB lock client. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Mysql {
    db: Arc<Db>,
    /// In `get_lock` mode, the dedicated sessions of held locks.
    named: Option<Arc<Sessions<GetLock>>>,
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

    /// The table the locks live in (in `get_lock` mode, the fences: `<table>_fences`).
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl MysqlBuilder {
    /// The server's own named locks (`GET_LOCK`) instead of lease rows, for interop with
    /// code that already uses them, on a dedicated connection per held lock. A name of at
    /// most 64 characters is the lock name itself; a longer one is `SHA2(name, 256)` in hex.
    /// The fence is a row per name in `<table>_fences`. The server keeps the lock as long as
    /// the connection: Lucky probes it every ttl/3 (the ttl bounds how long a lock is trusted
    /// without an answer) and sets `wait_timeout` to the ttl (whole seconds, rounded up), so
    /// the lock of a vanished client is freed after it. A lock the server ended (`KILL`, a
    /// restart) is seen at the next probe: loss detection is bounded by the probe interval,
    /// not by a lease, so protect the resource with the fence. Refused on Galera clusters
    /// (`wsrep_on`: named locks are local to one node) and before MySQL 5.7 / MariaDB 10.0.2.
    pub fn get_lock(mut self) -> Self {
        self.setup.session = true;
        self
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
        // Pooled connections are not reset when returned (mysql_async's default resets each
        // with COM_RESET_CONNECTION and runs `init` again: two more round trips per command).
        // Lucky's statements leave no session state behind (each one commits on its own),
        // and the session settings below are what every command wants.
        let pool = opts.pool_opts().clone().with_reset_connection(false);
        let mut opts = mysql_async::OptsBuilder::from_opts(opts)
            .pool_opts(pool)
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
        let opts: mysql_async::Opts = opts.into();
        let db = Arc::new(Db {
            pool: mysql_async::Pool::new(opts.clone()),
            sql: Sql::new(&b.setup.table),
            tasks: Arc::default(),
            hints: Arc::default(),
        });
        let fences = format!("{}_fences", b.setup.table);
        let named_sql = if b.setup.session {
            crate::lease_family::check_table(&fences).map_err(|r| bad(url, r))?;
            Some(GetLockSql::new(&fences))
        } else {
            None
        };
        let first = match (&named_sql, b.setup.create_table) {
            (Some(sql), true) => sql.create.clone(),
            (None, true) => db.sql.create.clone(),
            (_, false) => "SELECT 1".to_owned(),
        };
        let ready = tokio::time::timeout(b.connect_timeout, async {
            use mysql_async::prelude::Queryable;
            let mut c = db.pool.get_conn().await?;
            if named_sql.is_some() {
                if let Some(refusal) = get_lock_refusal(&mut c).await? {
                    return Ok(Some(refusal));
                }
            }
            c.query_drop(first).await.map(|()| None)
        })
        .await;
        let failed = match ready {
            Ok(Ok(None)) => None,
            Ok(Ok(Some(refusal))) => return Err(bad(url, refusal)),
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
        let named = named_sql.map(|sql| {
            Arc::new(Sessions::new(Arc::new(GetLock {
                opts,
                sql,
                connect_timeout: b.connect_timeout,
                tasks: db.tasks.clone(),
            })))
        });
        Ok(Mysql {
            db,
            table: if named.is_some() {
                fences
            } else {
                b.setup.table
            },
            named,
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
        if let Some(sessions) = &self.named {
            let machine = session_family::machine(&session_family::config(options)?, &name)?;
            return Ok(Box::pin(driver::acquire(
                machine,
                sessions.clone(),
                self.clock,
                name,
                None,
                options.lease.wait,
            )));
        }
        let machine = lease_family::machine(&lease_family::config(options)?, &name)?;
        let transport = Arc::new(Route::new(self.db.clone()));
        Ok(Box::pin(driver::acquire(
            machine,
            transport,
            self.clock,
            name,
            None,
            options.lease.wait,
        )))
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.db.tasks
    }
}

/// Why `GET_LOCK` mode cannot be safe on this server, if it cannot: a Galera cluster
/// (`wsrep_on`: named locks are local to the node that took them, so two nodes grant the
/// same name), or a server older than MySQL 5.7 / MariaDB 10.0.2 (a second `GET_LOCK` in a
/// session released the first; names were not limited to 64 characters).
async fn get_lock_refusal(c: &mut mysql_async::Conn) -> Result<Option<String>, mysql_async::Error> {
    use mysql_async::prelude::Queryable;
    let wsrep: Option<(String, String)> = c.query_first("SHOW VARIABLES LIKE 'wsrep_on'").await?;
    if wsrep.is_some_and(|(_, v)| v.eq_ignore_ascii_case("ON")) {
        return Ok(Some(
            "get_lock mode refused on a Galera cluster (wsrep_on): GET_LOCK is local to one \
             node, so two nodes would grant the same name; use the lease mode"
                .into(),
        ));
    }
    let version: Option<String> = c.query_first("SELECT VERSION()").await?;
    let version = version.unwrap_or_default();
    let numbers: Vec<u32> = version
        .split(|ch: char| !ch.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let v = (
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
        numbers.get(2).copied().unwrap_or(0),
    );
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let old = if mariadb {
        v < (10, 0, 2)
    } else {
        v < (5, 7, 0)
    };
    Ok(old.then(|| {
        format!(
            "get_lock mode needs MySQL 5.7 or MariaDB 10.0.2 or later; this server is {version}"
        )
    }))
}
