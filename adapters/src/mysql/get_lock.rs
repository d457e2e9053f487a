//! MySQL/MariaDB named locks (mode `get_lock`): the session-lock machine's lock, probe and
//! unlock as `GET_LOCK`, `IS_USED_LOCK` and `RELEASE_LOCK` on a dedicated connection per
//! lock. A name of at most 64 characters is the lock name itself (so `GET_LOCK('x', 0)` in
//! the mysql client takes Lucky's lock `x`); a longer one is `SHA2(name, 256)` in hex (64
//! characters, MySQL's limit). The fence is a row per lock name in `<table>_fences`, raised
//! right after the lock is taken, on the same connection.

use std::sync::Arc;
use std::time::Duration;

use lucky_core::session::{Command, Reply};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use super::transport::message;
use crate::driver::Tasks;
use crate::session_family::SessionStore;

/// The lock name of a name (`?`, given twice).
const NAME: &str = "IF(CHAR_LENGTH(?) <= 64, ?, SHA2(?, 256))";

/// The statements of one fence table.
#[derive(Debug)]
pub(super) struct GetLockSql {
    pub(super) create: String,
    lock: String,
    fence: String,
    probe: String,
    unlock: String,
}

impl GetLockSql {
    /// The statements for the fence table `fences` (a checked identifier).
    pub(super) fn new(fences: &str) -> GetLockSql {
        GetLockSql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {fences} (name VARCHAR(64) NOT NULL PRIMARY KEY, \
                 fence BIGINT NOT NULL) ENGINE=InnoDB"
            ),
            lock: format!("SELECT GET_LOCK({NAME}, ?), CONNECTION_ID()"),
            fence: format!(
                "INSERT INTO {fences} (name, fence) VALUES ({NAME}, LAST_INSERT_ID(1)) \
                 ON DUPLICATE KEY UPDATE fence = LAST_INSERT_ID(fence + 1)"
            ),
            probe: format!("SELECT IS_USED_LOCK({NAME}) <=> CONNECTION_ID(), CONNECTION_ID()"),
            unlock: format!("SELECT RELEASE_LOCK({NAME})"),
        }
    }
}

/// Where `GET_LOCK` sessions are opened.
pub(super) struct GetLock {
    pub(super) opts: Opts,
    pub(super) sql: GetLockSql,
    pub(super) connect_timeout: Duration,
    pub(super) tasks: Arc<Tasks>,
}

fn name_of(name: &[u8]) -> Result<String, Reply> {
    String::from_utf8(name.to_vec()).map_err(|_| Reply::Error("lock name is not UTF-8".into()))
}

impl SessionStore for GetLock {
    type Conn = Conn;

    async fn open(
        self: Arc<Self>,
        _name: bytes::Bytes,
        idle: Duration,
    ) -> Result<(Conn, u64), Reply> {
        let opened = tokio::time::timeout(self.connect_timeout, async {
            let mut c = Conn::new(self.opts.clone()).await?;
            // The server ends the session (freeing its lock) after this much silence: never
            // before the holder stops trusting it (ttl, rounded up to whole seconds).
            let secs = idle.as_secs() + u64::from(idle.subsec_nanos() > 0);
            c.query_drop(format!("SET SESSION wait_timeout = {}", secs.max(1)))
                .await?;
            let id: Option<u64> = c.query_first("SELECT CONNECTION_ID()").await?;
            Ok::<_, mysql_async::Error>((c, id.unwrap_or(0)))
        })
        .await;
        match opened {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(Reply::Unavailable(message(&e))),
            Err(_) => Err(Reply::Unavailable(format!(
                "no connection within {:?}",
                self.connect_timeout
            ))),
        }
    }

    async fn run(self: Arc<Self>, conn: Arc<tokio::sync::Mutex<Conn>>, command: Command) -> Reply {
        let mut c = conn.lock().await;
        match command {
            Command::Lock { name, wait, .. } => {
                let name = match name_of(&name) {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                // Fractional seconds: MariaDB honours them, MySQL counts whole seconds (a
                // shorter wait there is one try, and the machine backs off).
                let secs = wait.as_secs_f64();
                let got: Result<Option<(Option<i64>, u64)>, _> = c
                    .exec_first(&self.sql.lock, (&name, &name, &name, secs))
                    .await;
                let server = match got {
                    Ok(Some((Some(1), id))) => id,
                    Ok(Some((Some(0), _))) => return Reply::Busy,
                    Ok(_) => return Reply::Error("GET_LOCK answered NULL".into()),
                    Err(mysql_async::Error::Server(s)) => {
                        return Reply::Error(format!("{} ({})", s.message, s.code))
                    }
                    Err(e) => return Reply::Unknown(message(&e)),
                };
                // Locked: a failure from here on leaves the session holding it.
                match c.exec_drop(&self.sql.fence, (&name, &name, &name)).await {
                    Ok(()) => match c.last_insert_id() {
                        Some(fence) => Reply::Locked { server, fence },
                        None => Reply::Unknown("no fence came back".into()),
                    },
                    Err(e) => Reply::Unknown(message(&e)),
                }
            }
            Command::Probe { name, .. } => {
                let name = match name_of(&name) {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                let got: Result<Option<(bool, u64)>, _> =
                    c.exec_first(&self.sql.probe, (&name, &name, &name)).await;
                match got {
                    Ok(Some((held, server))) => Reply::Probed { held, server },
                    Ok(None) => Reply::Unknown("no answer row".into()),
                    Err(mysql_async::Error::Server(s)) => {
                        Reply::Error(format!("{} ({})", s.message, s.code))
                    }
                    Err(e) => Reply::Unknown(message(&e)),
                }
            }
            Command::Unlock { name, .. } => {
                let name = match name_of(&name) {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                let got: Result<Option<Option<i64>>, _> =
                    c.exec_first(&self.sql.unlock, (&name, &name, &name)).await;
                match got {
                    Ok(Some(r)) => Reply::Unlocked { held: r == Some(1) },
                    Ok(None) => Reply::Unknown("no answer row".into()),
                    Err(e) => Reply::Unknown(message(&e)),
                }
            }
            Command::Open { .. } | Command::Close { .. } => {
                Reply::Error("open and close are the transport's".into())
            }
        }
    }

    /// A connection idle for more than 50 ms is pinged first (a restart or `KILL` closes it
    /// without the client noticing until it is used); one just released is trusted, so a
    /// busy client pays no round trip.
    async fn alive(&self, conn: &mut Conn, idle_for: Duration) -> bool {
        idle_for < Duration::from_millis(50) || conn.ping().await.is_ok()
    }

    fn alive_now(&self, _conn: &Conn, idle_for: Duration) -> Option<bool> {
        (idle_for < Duration::from_millis(50)).then_some(true)
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.tasks
    }
}
