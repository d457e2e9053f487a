//! The MySQL/MariaDB transport: the lease-record machine's commands as parameterised
//! statements on the `lucky_locks` table, judged by the server's `UTC_TIMESTAMP(6)` (never the
//! session's local-time `NOW()`, which jumps at daylight-saving changes), over a connection
//! pool. MySQL has no notifications: a release by this process wakes its local waiters; other
//! processes' waiters retry after their delay, or when the holder's row runs out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lucky_core::lease::{Command, Reply};
use mysql_async::prelude::Queryable;
use mysql_async::Pool;

use crate::driver;
use crate::hints::Hints;
use crate::lease_family::{micros, text, Failure, Store};

/// The statements of one table.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) create: String,
    take: String,
    left: String,
    renew: String,
    release: String,
    inspect: String,
}

impl Sql {
    pub(super) fn new(table: &str) -> Sql {
        let now = "UTC_TIMESTAMP(6)";
        // Who may take: free, expired, or already the taker. MySQL assigns left to right,
        // each assignment seeing the ones before: the fence reads the old owner and expiry,
        // the owner the old expiry, the expiry the new owner.
        let may = format!("(owner IS NULL OR expires_at <= {now} OR owner = VALUES(owner))");
        Sql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {table} (name VARCHAR(512) NOT NULL PRIMARY KEY, \
                 owner VARBINARY(80) NULL, fence BIGINT NOT NULL, expires_at DATETIME(6) NULL) \
                 ENGINE=InnoDB"
            ),
            take: format!(
                "INSERT INTO {table} (name, owner, fence, expires_at) \
                 VALUES (?, ?, LAST_INSERT_ID(1), {now} + INTERVAL ? MICROSECOND) \
                 ON DUPLICATE KEY UPDATE \
                 fence = IF({may}, LAST_INSERT_ID(IF(owner = VALUES(owner) AND expires_at > {now}, \
                 fence, fence + 1)), fence), \
                 owner = IF({may}, VALUES(owner), owner), \
                 expires_at = IF(owner = VALUES(owner), VALUES(expires_at), expires_at)"
            ),
            left: format!(
                "SELECT GREATEST(0, TIMESTAMPDIFF(MICROSECOND, {now}, expires_at)) \
                 FROM {table} WHERE name = ?"
            ),
            renew: format!(
                "UPDATE {table} SET expires_at = {now} + INTERVAL ? MICROSECOND \
                 WHERE name = ? AND owner = ? AND expires_at > {now}"
            ),
            release: format!(
                "UPDATE {table} SET owner = NULL, expires_at = NULL WHERE name = ? AND owner = ?"
            ),
            inspect: format!(
                "SELECT IF(expires_at > {now}, owner, NULL), fence, \
                 GREATEST(0, IFNULL(TIMESTAMPDIFF(MICROSECOND, {now}, expires_at), 0)) \
                 FROM {table} WHERE name = ?"
            ),
        }
    }
}

/// The pool every lock of a client shares.
pub(super) struct Db {
    pub(super) pool: Pool,
    pub(super) sql: Sql,
    pub(super) tasks: Arc<driver::Tasks>,
    pub(super) hints: Arc<Hints>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

fn failure(e: mysql_async::Error) -> Failure {
    match e {
        mysql_async::Error::Server(s) => Failure::Refused(format!("{} ({})", s.message, s.code)),
        other => Failure::Unknown(message(&other)),
    }
}

/// A driver error as a message: the error and those of its causes that it does not already
/// quote (a TLS handshake failure says which certificate check failed).
pub(super) fn message(e: &mysql_async::Error) -> String {
    use std::error::Error as _;
    // An I/O error from the socket itself (mysql_async's two wrappers of it would each say
    // "Input/output error").
    let (mut m, mut source) = match e {
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => {
            (format!("I/O error: {io}"), io.source())
        }
        other => (other.to_string(), other.source()),
    };
    while let Some(s) = source {
        let s_text = s.to_string();
        if !m.contains(&s_text) {
            m.push_str(": ");
            m.push_str(&s_text);
        }
        source = s.source();
    }
    m
}

/// Column `i` of `row` (`None` for SQL NULL); a value of another type is an unexpected reply,
/// never a panic.
fn column<T: mysql_async::prelude::FromValue>(
    row: &mut mysql_async::Row,
    i: usize,
) -> Result<Option<T>, Failure> {
    match row.take_opt::<Option<T>, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(Failure::Refused(format!("unexpected column {i}: {e}"))),
        None => Err(Failure::Refused(format!("no column {i}"))),
    }
}

impl Db {
    async fn run(&self, command: Command) -> Reply {
        let is_read = matches!(command, Command::Inspect { .. });
        self.execute(command)
            .await
            .unwrap_or_else(|f| f.reply(is_read))
    }

    async fn execute(&self, command: Command) -> Result<Reply, Failure> {
        let mut c = self
            .pool
            .get_conn()
            .await
            .map_err(|e| Failure::NotSent(message(&e)))?;
        Ok(match command {
            Command::Take { name, owner, ttl } => {
                let n = text(&name)?;
                c.exec_drop(&self.sql.take, (n, owner.to_vec(), micros(ttl)))
                    .await
                    .map_err(failure)?;
                // 1: inserted, 2: updated (taken or retaken); 0: held by another.
                if c.affected_rows() > 0 {
                    Reply::Granted {
                        fence: c.last_insert_id().unwrap_or(0),
                    }
                } else {
                    // Released in between: the row's expiry is NULL (no time left).
                    let row: Option<mysql_async::Row> =
                        c.exec_first(&self.sql.left, (n,)).await.map_err(failure)?;
                    let left = match row {
                        Some(mut r) => column::<i64>(&mut r, 0)?,
                        None => None,
                    };
                    Reply::Held {
                        left: Duration::from_micros(left.map_or(0, |l| l.max(0) as u64)),
                    }
                }
            }
            Command::Renew { name, owner, ttl } => {
                let n = text(&name)?;
                c.exec_drop(&self.sql.renew, (micros(ttl), n, owner.to_vec()))
                    .await
                    .map_err(failure)?;
                if c.affected_rows() == 1 {
                    Reply::Renewed
                } else {
                    Reply::NotOwner
                }
            }
            Command::Release { name, owner } => {
                let n = text(&name)?;
                c.exec_drop(&self.sql.release, (n, owner.to_vec()))
                    .await
                    .map_err(failure)?;
                if c.affected_rows() == 1 {
                    // No server notifications: wake this process's longest waiter.
                    self.hints.notify(&name);
                    Reply::Released
                } else {
                    Reply::NotOwner
                }
            }
            Command::Inspect { name } => {
                let n = text(&name)?;
                let row: Option<mysql_async::Row> = c
                    .exec_first(&self.sql.inspect, (n,))
                    .await
                    .map_err(failure)?;
                match row {
                    None => Reply::State {
                        owner: None,
                        fence: 0,
                        left: Duration::ZERO,
                    },
                    Some(mut r) => {
                        let owner = column::<Vec<u8>>(&mut r, 0)?;
                        let fence = column::<i64>(&mut r, 1)?.unwrap_or(0);
                        let left = column::<i64>(&mut r, 2)?.unwrap_or(0);
                        Reply::State {
                            owner: owner.map(Bytes::from),
                            fence: u64::try_from(fence).unwrap_or(0),
                            left: Duration::from_micros(left.max(0) as u64),
                        }
                    }
                }
            }
        })
    }
}

impl Store for Db {
    async fn run(self: Arc<Self>, command: Command) -> Reply {
        Db::run(&self, command).await
    }

    fn tasks(&self) -> &Arc<driver::Tasks> {
        &self.tasks
    }

    fn hints(&self) -> &Arc<Hints> {
        &self.hints
    }
}
