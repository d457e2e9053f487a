//! PostgreSQL (feature `postgres`): the lease-record machine of lucky-core on one row per lock
//! name in a table (default `lucky_locks`), judged by the server's clock. Releases announce
//! themselves with `NOTIFY`, so waiters are woken without polling.
//!
//! ```no_run
//! # async fn f() -> Result<(), lucky::Error> {
//! use std::time::Duration;
//! let pg = lucky::postgres::Postgres::connect("postgres://postgres@127.0.0.1/postgres").await?;
//! let guard = pg.lock("jobs/nightly").ttl(Duration::from_secs(30)).await?;
//! let fence = guard.fence(); // rises with every new holder of the name, never reset
//! guard.release().await?;
//! # let _ = fence;
//! # Ok(()) }
//! ```
//!
//! The table (created on first use unless `.create_table(false)`):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS lucky_locks (name text PRIMARY KEY, owner bytea,
//!                                         fence bigint NOT NULL, expires_at timestamptz);
//! ```
//!
//! Each command is one statement: take is an `INSERT ... ON CONFLICT DO UPDATE ... WHERE`
//! (free, expired on `clock_timestamp()`, or already ours; the fence rises on a takeover
//! only), renew and release are `UPDATE`s guarded by the owner, and release clears the owner
//! but keeps the row, so the fence never restarts. A statement whose connection broke after
//! it was sent is an unknown outcome, settled by the machine with a read before anything is
//! claimed. [`begin_guarded`] opens a transaction that first checks, inside it, that the lock
//! is still ours on the server's clock: a holder that lost its lease cannot commit.

mod advisory;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use crate::client::{self, sealed, LockFuture, Options};
use crate::clock::Clock;
use crate::driver::{self, Tasks};
use crate::lease_family::{self, LeaseExtra, Route, SqlSetup};
use crate::session_family::{self, Sessions};
pub use crate::{Error, Guard};
use advisory::{Advisory, AdvisorySql};
use transport::{Db, Sql, Tls};

/// Configures a [`Postgres`] client before connecting.
pub type PostgresBuilder = crate::Builder<Postgres>;
/// One lock request of a [`Postgres`] client; `.await` it to acquire.
pub type LockRequest<'a> = crate::LockRequest<'a, Postgres>;

/// A PostgreSQL lock client. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Postgres {
    db: Arc<Db>,
    /// In advisory mode, the dedicated sessions of held locks.
    advisory: Option<Arc<Sessions<Advisory>>>,
    table: String,
    clock: Clock,
    defaults: Options<LeaseExtra>,
}

impl Postgres {
    /// Connects with the default settings (table `lucky_locks`, created if missing; ttl 30 s,
    /// wait 10 s, renewal every ttl/3).
    pub async fn connect(url: &str) -> Result<Postgres, Error> {
        Postgres::builder(url).connect().await
    }

    /// Starts configuring a client for `url` (`postgres://user:password@host:port/db`, or a
    /// `key=value` connection string).
    pub fn builder(url: &str) -> PostgresBuilder {
        PostgresBuilder::new([url])
    }

    /// Asks for the lock `name`; configure it, then `.await` it.
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest::new(self, name.into())
    }

    /// Waits, at most `timeout`, until every background task of this client has finished
    /// (releases of dropped guards, renewals of held locks, clean-ups).
    pub async fn close(&self, timeout: Duration) -> bool {
        client::close(self, timeout).await
    }

    /// The table the locks live in (in advisory mode, the fences: `<table>_fences`).
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl PostgresBuilder {
    /// PostgreSQL's own advisory locks instead of lease rows, for interop with code that
    /// already uses them: `pg_try_advisory_lock` on a dedicated connection per held lock. A
    /// name that is an integer in canonical decimal form is the key itself; any other name
    /// is `hashtextextended(name, 0)`. The fence is a row per key in `<table>_fences`.
    /// The server keeps the lock as long as the connection: Lucky probes it every ttl/3 (the
    /// ttl bounds how long a lock is trusted without an answer), and sets
    /// `idle_session_timeout` to the ttl (PostgreSQL 14+) so the lock of a vanished client is
    /// freed after it. A lock the server ended (a killed connection, a restart) is seen at
    /// the next probe: loss detection is bounded by the probe interval, not by a lease, so
    /// protect the resource with the fence. Refused through a transaction-pooling connection
    /// pooler (detected), and on servers older than 11.
    pub fn advisory(mut self) -> Self {
        self.setup.session = true;
        self
    }
}

impl sealed::Client for Postgres {
    type Extra = LeaseExtra;
    type Setup = SqlSetup;

    fn default_extra() -> LeaseExtra {
        LeaseExtra::default()
    }

    async fn connect(b: PostgresBuilder) -> Result<Postgres, Error> {
        lease_family::config(&b.defaults)?;
        let bad = |endpoint: &str, reason: String| Error::BadEndpoint {
            backend: "PostgreSQL",
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
        let mut pg_config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| bad(url, crate::redact(&e.to_string())))?;
        // TLS when asked for (`sslmode=require`, or a CA file): then required, and the server
        // verified (its chain against the CA file or the system's roots, and its name).
        let wants_tls = b.setup.ca_file.is_some()
            || pg_config.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
        let tls = if wants_tls {
            pg_config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let config = crate::lease_family::tls_config(b.setup.ca_file.as_deref())
                .map_err(|r| bad(url, r))?;
            Tls::On(tokio_postgres_rustls::MakeRustlsConnect::new(config))
        } else {
            Tls::Off
        };
        let db = Arc::new(Db::new(
            pg_config.clone(),
            tls.clone(),
            Sql::new(&b.setup.table),
            b.connect_timeout,
        ));
        if b.setup.session {
            let fences = format!("{}_fences", b.setup.table);
            crate::lease_family::check_table(&fences).map_err(|r| bad(url, r))?;
            let sql = AdvisorySql::new(&fences);
            let version = advisory_checks(&pg_config, &tls, &b, &sql.create)
                .await
                .map_err(|details| Error::Unreachable {
                    backend: "PostgreSQL",
                    reachable: 0,
                    total: 1,
                    needed: 1,
                    details: format!("{}: {}", crate::redact(url), crate::redact(&details)),
                })?;
            let store = Advisory {
                config: pg_config,
                tls,
                sql,
                connect_timeout: b.connect_timeout,
                version,
                tasks: db.tasks.clone(),
            };
            return Ok(Postgres {
                db,
                advisory: Some(Arc::new(Sessions::new(Arc::new(store)))),
                table: fences,
                clock: Clock::new(),
                defaults: b.defaults,
            });
        }
        let ready = if b.setup.create_table {
            db.prepare(&db.sql.create).await
        } else {
            db.prepare("SELECT 1").await
        };
        if let Err(e) = ready {
            return Err(Error::Unreachable {
                backend: "PostgreSQL",
                reachable: 0,
                total: 1,
                needed: 1,
                details: format!("{}: {}", crate::redact(url), crate::redact(&e)),
            });
        }
        Ok(Postgres {
            db,
            advisory: None,
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
        if let Some(sessions) = &self.advisory {
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

/// What advisory mode needs of the server, checked once on connect: version 11 or later
/// (`hashtextextended`), no transaction-pooling pooler in between (two connections open at
/// once that share one backend process are handed the same server session: a session lock
/// there would be shared with other clients), and the fence table (created unless
/// `create_table(false)`). Returns `server_version_num`.
async fn advisory_checks(
    config: &tokio_postgres::Config,
    tls: &Tls,
    b: &PostgresBuilder,
    create: &str,
) -> Result<u32, String> {
    let (a, _) = transport::connect(config, tls, b.connect_timeout).await?;
    let (other, _) = transport::connect(config, tls, b.connect_timeout).await?;
    let msg = |e: tokio_postgres::Error| transport::message(&e);
    let row = a
        .query_one(
            "SELECT current_setting('server_version_num')::int, pg_backend_pid()",
            &[],
        )
        .await
        .map_err(msg)?;
    let (version, pid_a): (i32, i32) = (row.try_get(0).map_err(msg)?, row.try_get(1).map_err(msg)?);
    let pid_b: i32 = other
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(msg)?;
    if version < 110_000 {
        return Err(format!(
            "advisory mode needs PostgreSQL 11 or later (hashtextextended); this server is {version}"
        ));
    }
    if pid_a == pid_b {
        return Err(format!(
            "advisory mode refused: two open connections share backend process {pid_a}, so a              pooler in transaction mode (PgBouncer) sits in between and would hand the lock's              session to other clients; connect to PostgreSQL itself or use the lease mode"
        ));
    }
    if b.setup.create_table {
        if let Err(e) = a.batch_execute(create).await {
            // Two clients creating it at once: one of them finds it made by the other.
            use tokio_postgres::error::SqlState;
            let raced = [SqlState::UNIQUE_VIOLATION, SqlState::DUPLICATE_TABLE];
            if !e.code().is_some_and(|c| raced.contains(c)) {
                return Err(msg(e));
            }
        }
    }
    Ok(u32::try_from(version).unwrap_or(0))
}

/// Opens a transaction on `client` that first checks, inside it, that `guard`'s lock (taken
/// through `locks`) is still held on the server's clock (its row in `locks`' table names our
/// owner and has not expired), and locks the row against takeover until commit. Returns the
/// transaction and the fence, or `None` when the lock is no longer ours: then nothing may be
/// written. Commit it as usual.
pub async fn begin_guarded<'c>(
    client: &'c mut tokio_postgres::Client,
    locks: &Postgres,
    guard: &Guard,
) -> Result<Option<(tokio_postgres::Transaction<'c>, u64)>, tokio_postgres::Error> {
    let Some(owner) = guard.key() else {
        return Ok(None);
    };
    // Checked when `locks` connected: an identifier.
    let table = locks.table();
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            &format!(
                "SELECT fence FROM {table} WHERE name = $1 AND owner = $2 \
                 AND expires_at > clock_timestamp() FOR SHARE"
            ),
            &[&guard.name(), &owner],
        )
        .await?;
    match row {
        Some(r) => {
            let fence: i64 = r.try_get(0)?;
            Ok(Some((tx, u64::try_from(fence).unwrap_or(0))))
        }
        None => Ok(None),
    }
}
