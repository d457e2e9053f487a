//! The PostgreSQL transport: the lease-record machine's four commands as one parameterised
//! statement each on the `lucky_locks` table, judged by the server's `clock_timestamp()`;
//! one shared connection for the statements (made again after it breaks) and one `LISTEN`
//! connection whose notifications wake the longest local waiter of a name.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lucky_core::lease::{Command, Reply};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Socket, Statement};

use crate::driver;
use crate::hints::Hints;
use crate::lease_family::{micros, text, Failure, Store};

/// The notification channel releases announce on.
pub(super) const CHANNEL: &str = "lucky_locks";

/// The statements of one table, written once.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) create: String,
    take: String,
    renew: String,
    release: String,
    inspect: String,
}

impl Sql {
    /// The statements for `table` (a checked identifier).
    pub(super) fn new(table: &str) -> Sql {
        // Time left on the server's clock, in whole microseconds, never negative.
        let left =
            "GREATEST(0, (EXTRACT(EPOCH FROM (expires_at - clock_timestamp())) * 1000000)::bigint)";
        let expiry = "clock_timestamp() + make_interval(secs => ($3::bigint)::float8 / 1000000)";
        Sql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {table} (name text PRIMARY KEY, owner bytea, \
                 fence bigint NOT NULL, expires_at timestamptz)"
            ),
            // Take if free, expired, or already ours; the fence rises unless it is a retake by
            // the live owner. When held, the snapshot before the statement says for how long.
            take: format!(
                "WITH t AS (INSERT INTO {table} AS l (name, owner, fence, expires_at) \
                 VALUES ($1, $2, 1, {expiry}) \
                 ON CONFLICT (name) DO UPDATE SET \
                 fence = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > clock_timestamp() \
                 THEN l.fence ELSE l.fence + 1 END, \
                 owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at \
                 WHERE l.owner IS NULL OR l.expires_at <= clock_timestamp() OR l.owner = EXCLUDED.owner \
                 RETURNING fence) \
                 SELECT (SELECT fence FROM t), (SELECT {left} FROM {table} WHERE name = $1)"
            ),
            renew: format!(
                "UPDATE {table} SET expires_at = {expiry} \
                 WHERE name = $1 AND owner = $2 AND expires_at > clock_timestamp()"
            ),
            // The record stays with its fence; the notification goes out at commit, only when
            // something was released.
            release: format!(
                "WITH r AS (UPDATE {table} SET owner = NULL, expires_at = NULL \
                 WHERE name = $1 AND owner = $2 RETURNING name) \
                 SELECT pg_notify('{CHANNEL}', name) FROM r"
            ),
            inspect: format!(
                "SELECT CASE WHEN expires_at > clock_timestamp() THEN owner END, fence, {left} \
                 FROM {table} WHERE name = $1"
            ),
        }
    }
}

/// The statements prepared on one connection.
struct Prepared {
    take: Statement,
    renew: Statement,
    release: Statement,
    inspect: Statement,
}

/// One live connection and its prepared statements.
struct Live {
    client: Client,
    prepared: Prepared,
}

/// How connections are made: in plain text, or over TLS verified by rustls.
#[derive(Clone)]
pub(super) enum Tls {
    Off,
    On(tokio_postgres_rustls::MakeRustlsConnect),
}

/// The notifications of a connection, as the task driving it forwards them.
/// Each notification: the sending backend's pid and the payload (a lock name).
type Notes = tokio::sync::mpsc::UnboundedReceiver<(i32, String)>;

/// Connects (bounded by `limit`) and drives the connection in a task that forwards its
/// notifications.
pub(super) async fn connect(
    config: &Config,
    tls: &Tls,
    limit: Duration,
) -> Result<(Client, Notes), String> {
    match tls {
        Tls::Off => connect_with(config, NoTls, limit).await,
        Tls::On(t) => connect_with(config, t.clone(), limit).await,
    }
}

async fn connect_with<T>(
    config: &Config,
    tls: T,
    limit: Duration,
) -> Result<(Client, Notes), String>
where
    T: MakeTlsConnect<Socket> + Send,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = tokio::time::timeout(limit, config.connect(tls))
        .await
        .map_err(|_| format!("no connection within {limit:?}"))?
        .map_err(|e| message(&e))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(i32, String)>();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.process_id(), n.payload().to_owned()));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    Ok((client, rx))
}

/// The connection every lock of a client shares, made on first use and again after it breaks.
pub(super) struct Db {
    pub(super) config: Config,
    pub(super) tls: Tls,
    pub(super) sql: Sql,
    pub(super) tasks: Arc<driver::Tasks>,
    pub(super) hints: Arc<Hints>,
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    listening: std::sync::atomic::AtomicBool,
    /// The backend pid of the shared connection: its releases wake this client's waiters
    /// directly, so their `NOTIFY` echo is skipped.
    own_pid: Arc<std::sync::atomic::AtomicI32>,
    pub(super) connect_timeout: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

impl Db {
    pub(super) fn new(config: Config, tls: Tls, sql: Sql, connect_timeout: Duration) -> Db {
        Db {
            config,
            tls,
            sql,
            tasks: Arc::default(),
            hints: Arc::default(),
            live: tokio::sync::Mutex::new(None),
            listening: std::sync::atomic::AtomicBool::new(false),
            own_pid: Arc::default(),
            connect_timeout,
        }
    }

    /// Connects (bounded by the connect timeout) and drives the connection in a task.
    async fn open(&self) -> Result<Client, String> {
        let (client, _notes) = connect(&self.config, &self.tls, self.connect_timeout).await?;
        Ok(client)
    }

    /// The shared connection, made if there is none or it broke.
    async fn live(&self) -> Result<Arc<Live>, String> {
        let mut slot = self.live.lock().await;
        if let Some(l) = slot.as_ref().filter(|l| !l.client.is_closed()) {
            return Ok(l.clone());
        }
        let client = self.open().await?;
        let err = |e: tokio_postgres::Error| message(&e);
        let prepared = Prepared {
            take: client.prepare(&self.sql.take).await.map_err(err)?,
            renew: client.prepare(&self.sql.renew).await.map_err(err)?,
            release: client.prepare(&self.sql.release).await.map_err(err)?,
            inspect: client.prepare(&self.sql.inspect).await.map_err(err)?,
        };
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(err)?;
        self.own_pid
            .store(pid, std::sync::atomic::Ordering::Release);
        let live = Arc::new(Live { client, prepared });
        *slot = Some(live.clone());
        Ok(live)
    }

    /// Runs `sql` (the table's DDL) on a connection of its own, then makes the shared one
    /// (whose statements need the table).
    pub(super) async fn prepare(&self, sql: &str) -> Result<(), String> {
        let client = self.open().await?;
        client.batch_execute(sql).await.map_err(|e| message(&e))?;
        drop(client);
        self.live().await.map(drop)
    }

    async fn run(&self, command: Command) -> Reply {
        let live = match self.live().await {
            Ok(l) => l,
            Err(e) => return Reply::Unavailable(e),
        };
        let is_read = matches!(command, Command::Inspect { .. });
        self.execute(&live, command)
            .await
            .unwrap_or_else(|f| f.reply(is_read))
    }

    async fn execute(&self, live: &Live, command: Command) -> Result<Reply, Failure> {
        let (c, p) = (&live.client, &live.prepared);
        Ok(match command {
            Command::Take { name, owner, ttl } => {
                let name = text(&name)?;
                let row = c
                    .query_one(&p.take, &[&name, &&owner[..], &micros(ttl)])
                    .await
                    .map_err(failure)?;
                let fence: Option<i64> = row.try_get(0).map_err(failure)?;
                let left: Option<i64> = row.try_get(1).map_err(failure)?;
                match fence {
                    Some(f) => Reply::Granted {
                        fence: u64::try_from(f).unwrap_or(0),
                    },
                    None => Reply::Held {
                        left: Duration::from_micros(left.map_or(0, |l| l.max(0) as u64)),
                    },
                }
            }
            Command::Renew { name, owner, ttl } => {
                let name = text(&name)?;
                let n = c
                    .execute(&p.renew, &[&name, &&owner[..], &micros(ttl)])
                    .await
                    .map_err(failure)?;
                if n == 1 {
                    Reply::Renewed
                } else {
                    Reply::NotOwner
                }
            }
            Command::Release { name, owner } => {
                let name = text(&name)?;
                let rows = c
                    .query(&p.release, &[&name, &&owner[..]])
                    .await
                    .map_err(failure)?;
                if rows.is_empty() {
                    Reply::NotOwner
                } else {
                    // This client's waiters need not wait for the `NOTIFY` to come back.
                    self.hints.notify(name.as_bytes());
                    Reply::Released
                }
            }
            Command::Inspect { name } => {
                let name = text(&name)?;
                let row = c.query_opt(&p.inspect, &[&name]).await.map_err(failure)?;
                match row {
                    None => Reply::State {
                        owner: None,
                        fence: 0,
                        left: Duration::ZERO,
                    },
                    Some(r) => {
                        let owner: Option<Vec<u8>> = r.try_get(0).map_err(failure)?;
                        let fence: i64 = r.try_get(1).map_err(failure)?;
                        let left: Option<i64> = r.try_get(2).map_err(failure)?;
                        Reply::State {
                            owner: owner.map(Bytes::from),
                            fence: u64::try_from(fence).unwrap_or(0),
                            left: Duration::from_micros(left.map_or(0, |l| l.max(0) as u64)),
                        }
                    }
                }
            }
        })
    }

    /// Starts the `LISTEN` connection once; it feeds release notifications to the hints and
    /// reconnects after it breaks (waiters fall back to their retry delay meanwhile).
    fn listen(self: &Arc<Self>) {
        if self
            .listening
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let db = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(d) = db.upgrade() else { return };
                let (config, tls, hints, own, limit) = (
                    d.config.clone(),
                    d.tls.clone(),
                    d.hints.clone(),
                    d.own_pid.clone(),
                    d.connect_timeout,
                );
                drop(d);
                let _ = listen_once(&config, &tls, &hints, &own, limit).await;
                // Gone or broken: try again shortly, unless the client is gone.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

/// One `LISTEN` connection, until it breaks.
async fn listen_once(
    config: &Config,
    tls: &Tls,
    hints: &Hints,
    own: &std::sync::atomic::AtomicI32,
    limit: Duration,
) -> Result<(), String> {
    let (client, mut notes) = connect(config, tls, limit).await?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| message(&e))?;
    while let Some((pid, name)) = notes.recv().await {
        // Our own releases woke our waiters already.
        if pid != own.load(std::sync::atomic::Ordering::Acquire) {
            hints.notify(name.as_bytes());
        }
    }
    Ok(())
}

/// A driver error as a message: the server's own words when it answered, else the error and
/// its causes (a TLS handshake failure says which certificate check failed).
pub(super) fn message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut m = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        m.push_str(": ");
        m.push_str(&s.to_string());
        source = s.source();
    }
    m
}

/// What a driver error means for the command.
fn failure(e: tokio_postgres::Error) -> Failure {
    if let Some(db) = e.as_db_error() {
        return Failure::Refused(format!("{}: {}", db.code().code(), db.message()));
    }
    if e.is_closed() {
        return Failure::Unknown(format!("connection closed: {e}"));
    }
    Failure::Unknown(e.to_string())
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

    fn listen(self: &Arc<Self>) {
        Db::listen(self);
    }
}
