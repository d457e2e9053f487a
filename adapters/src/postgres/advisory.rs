//! PostgreSQL advisory locks (mode `advisory`): the session-lock machine's lock, probe and
//! unlock as one statement each on a dedicated connection per lock. The key of a name is
//! the name itself when it is an integer in its canonical decimal form (`42`, `-7`),
//! otherwise `hashtextextended(name, 0)`, PostgreSQL's own 64-bit text hash, so
//! `SELECT pg_advisory_lock(hashtextextended('jobs/nightly', 0))` in psql takes the same
//! lock. The fence is a row per key in `<table>_fences`, raised in the statement that takes
//! the lock.

use std::sync::Arc;
use std::time::Duration;

use lucky_core::session::{Command, Reply};
use tokio_postgres::{Client, Statement};

use super::transport::{connect, message, Tls};
use crate::driver::Tasks;
use crate::session_family::SessionStore;

/// The key expression of a name (`$1`) and its integer form (`$2`, NULL when it has none).
const KEY: &str = "COALESCE($2::bigint, hashtextextended($1, 0))";

/// The statements of one fence table, written once.
#[derive(Debug)]
pub(super) struct AdvisorySql {
    pub(super) create: String,
    try_lock: String,
    wait_lock: String,
    probe: String,
    unlock: String,
}

impl AdvisorySql {
    /// The statements for the fence table `fences` (a checked identifier).
    pub(super) fn new(fences: &str) -> AdvisorySql {
        // Raised only when the lock was taken (the CTE before it is materialised first).
        let fence = format!(
            "f AS (INSERT INTO {fences} AS t (name, fence) SELECT l.k::text, 1 FROM l WHERE l.got \
             ON CONFLICT (name) DO UPDATE SET fence = t.fence + 1 RETURNING t.fence) \
             SELECT l.got, (SELECT fence FROM f), pg_backend_pid() FROM l"
        );
        AdvisorySql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {fences} (name text PRIMARY KEY, fence bigint NOT NULL)"
            ),
            try_lock: format!(
                "WITH k AS (SELECT {KEY} AS k), \
                 l AS MATERIALIZED (SELECT k.k, pg_try_advisory_lock(k.k) AS got FROM k), {fence}"
            ),
            // Waits on the server up to lock_timeout ($3), set first in the same statement;
            // a timeout is SQLSTATE 55P03.
            wait_lock: format!(
                "WITH c AS MATERIALIZED (SELECT set_config('lock_timeout', $3, false)), \
                 k AS (SELECT {KEY} AS k), \
                 w AS MATERIALIZED (SELECT k.k, pg_advisory_lock(k.k) AS v FROM k, c), \
                 l AS (SELECT w.k, true AS got FROM w), {fence}"
            ),
            // Held by this very backend: the key's two halves as pg_locks shows them.
            probe: format!(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                 AND pid = pg_backend_pid() AND granted AND objsubid = 1 \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid = ((k.k >> 32) & 4294967295)::oid AND objid = (k.k & 4294967295)::oid), \
                 pg_backend_pid() FROM (SELECT {KEY} AS k) k"
            ),
            unlock: format!("SELECT pg_advisory_unlock({KEY})"),
        }
    }
}

/// One dedicated connection and its statements.
pub(super) struct AdvisoryConn {
    client: Client,
    try_lock: Statement,
    wait_lock: Statement,
    probe: Statement,
    unlock: Statement,
}

/// Where advisory sessions are opened.
pub(super) struct Advisory {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: Tls,
    pub(super) sql: AdvisorySql,
    pub(super) connect_timeout: Duration,
    /// `server_version_num`: `idle_session_timeout` exists from 14 on.
    pub(super) version: u32,
    pub(super) tasks: Arc<Tasks>,
}

/// The integer form of a name, when it is one (canonical decimal: no sign `+`, no leading
/// zeros), else `None` (the name is hashed).
pub(super) fn integer_key(name: &str) -> Option<i64> {
    name.parse::<i64>().ok().filter(|k| k.to_string() == name)
}

fn name_of(name: &[u8]) -> Result<&str, Reply> {
    std::str::from_utf8(name).map_err(|_| Reply::Error("lock name is not UTF-8".into()))
}

impl SessionStore for Advisory {
    type Conn = AdvisoryConn;

    async fn open(
        self: Arc<Self>,
        _name: bytes::Bytes,
        idle: Duration,
    ) -> Result<(AdvisoryConn, u64), Reply> {
        let (client, _notes) = connect(&self.config, &self.tls, self.connect_timeout)
            .await
            .map_err(Reply::Unavailable)?;
        let err = |e: tokio_postgres::Error| Reply::Unavailable(message(&e));
        if self.version >= 140_000 {
            // The server ends the session (freeing its locks) after this much silence: never
            // before the holder stops trusting it (ttl), soon after a holder vanished.
            let ms = idle.as_millis().max(1);
            client
                .batch_execute(&format!("SET idle_session_timeout = {ms}"))
                .await
                .map_err(err)?;
        }
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(err)?;
        let conn = AdvisoryConn {
            try_lock: client.prepare(&self.sql.try_lock).await.map_err(err)?,
            wait_lock: client.prepare(&self.sql.wait_lock).await.map_err(err)?,
            probe: client.prepare(&self.sql.probe).await.map_err(err)?,
            unlock: client.prepare(&self.sql.unlock).await.map_err(err)?,
            client,
        };
        Ok((conn, u64::from(pid.unsigned_abs())))
    }

    async fn run(
        self: Arc<Self>,
        conn: Arc<tokio::sync::Mutex<AdvisoryConn>>,
        command: Command,
    ) -> Reply {
        let c = conn.lock().await;
        match command {
            Command::Lock { name, wait, .. } => {
                let name = match name_of(&name) {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                let key = integer_key(name);
                let result = if wait.is_zero() {
                    c.client.query_one(&c.try_lock, &[&name, &key]).await
                } else {
                    let timeout = format!("{}ms", wait.as_millis().max(1));
                    c.client
                        .query_one(&c.wait_lock, &[&name, &key, &timeout])
                        .await
                };
                match result {
                    Ok(row) => {
                        let got: bool = row.try_get(0).unwrap_or(false);
                        let fence: Option<i64> = row.try_get(1).unwrap_or(None);
                        let pid: i32 = row.try_get(2).unwrap_or(0);
                        match (got, fence) {
                            (true, Some(f)) => Reply::Locked {
                                server: u64::from(pid.unsigned_abs()),
                                fence: u64::try_from(f).unwrap_or(0),
                            },
                            (false, _) => Reply::Busy,
                            (true, None) => Reply::Unknown("locked without a fence".into()),
                        }
                    }
                    Err(e)
                        if e.code()
                            == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                    {
                        Reply::Busy
                    }
                    // A session-level advisory lock outlives a statement that failed after
                    // taking it: the session's state is unknown.
                    Err(e) => Reply::Unknown(message(&e)),
                }
            }
            Command::Probe { name, .. } => {
                let name = match name_of(&name) {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                let key = integer_key(name);
                match c.client.query_one(&c.probe, &[&name, &key]).await {
                    Ok(row) => {
                        let held: bool = row.try_get(0).unwrap_or(false);
                        let pid: i32 = row.try_get(1).unwrap_or(0);
                        Reply::Probed {
                            held,
                            server: u64::from(pid.unsigned_abs()),
                        }
                    }
                    Err(e) if e.as_db_error().is_some() && !c.client.is_closed() => {
                        Reply::Error(message(&e))
                    }
                    Err(e) => Reply::Unknown(message(&e)),
                }
            }
            Command::Unlock { name, .. } => {
                let name = match name_of(&name) {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                let key = integer_key(name);
                match c.client.query_one(&c.unlock, &[&name, &key]).await {
                    Ok(row) => Reply::Unlocked {
                        held: row.try_get(0).unwrap_or(false),
                    },
                    Err(e) => Reply::Unknown(message(&e)),
                }
            }
            Command::Open { .. } | Command::Close { .. } => {
                Reply::Error("open and close are the transport's".into())
            }
        }
    }

    /// A connection whose socket the server closed (a restart, `pg_terminate_backend`) is
    /// seen closed by the task driving it.
    async fn alive(&self, conn: &mut AdvisoryConn, _idle_for: Duration) -> bool {
        !conn.client.is_closed()
    }

    fn alive_now(&self, conn: &AdvisoryConn, _idle_for: Duration) -> Option<bool> {
        Some(!conn.client.is_closed())
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.tasks
    }
}
