//! What the backends on the session-lock machine share in the adapters (PostgreSQL advisory
//! locks, MySQL `GET_LOCK`): the transport that keeps one dedicated server session per lock
//! ([`Sessions`]), numbered for the machine, and a few idle ones for reuse once a lock's
//! machine said its session holds nothing. A backend writes only its [`SessionStore`]: how
//! to open a session and how to run a lock, probe or unlock in it.
// A build with only the lease-record SQL modes uses none of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lucky_core::session::{Command, Reply, SessionConfig, SessionLock};

use crate::client::Options;
use crate::driver::{Tasks, Transport};
use crate::lease_family::LeaseExtra;
use crate::Error;

/// Idle sessions kept per client for reuse (each is a server connection: enough for a busy
/// client's turnover, few enough not to crowd the server).
const IDLE: usize = 32;

/// A server reached over dedicated sessions, one per held lock.
pub(crate) trait SessionStore: Send + Sync + 'static {
    /// One open session (a connection of its own, an open file).
    type Conn: Send + 'static;
    /// Whether a session the machine called clean may serve another lock later (a
    /// connection may; an open file belongs to its name, and closing it is a waiter's hint).
    const REUSE: bool = true;
    /// Opens a session for the lock `name` that the server may end after `idle` of
    /// silence; returns it and the server's id for it.
    fn open(
        self: Arc<Self>,
        name: bytes::Bytes,
        idle: Duration,
    ) -> impl Future<Output = Result<(Self::Conn, u64), Reply>> + Send;
    /// Whether an idle session, unused for `idle_for`, still looks alive (a closed connection
    /// is not; a store may ping one that sat idle long). The default trusts it.
    fn alive(
        &self,
        _conn: &mut Self::Conn,
        _idle_for: Duration,
    ) -> impl Future<Output = bool> + Send {
        std::future::ready(true)
    }
    /// The same judgement made at once, when the store can without IO (`None`: it needs the
    /// async [`alive`](Self::alive)). Lets an idle session be handed out without a trip
    /// through the runtime.
    fn alive_now(&self, _conn: &Self::Conn, _idle_for: Duration) -> Option<bool> {
        None
    }
    /// Runs a lock, probe or unlock in `conn`; a broken session is [`Reply::Unknown`].
    fn run(
        self: Arc<Self>,
        conn: Arc<tokio::sync::Mutex<Self::Conn>>,
        command: Command,
    ) -> impl Future<Output = Reply> + Send;
    /// The client's background tasks.
    fn tasks(&self) -> &Arc<Tasks>;
}

type Shared<C> = Arc<tokio::sync::Mutex<C>>;

/// An idle session: the connection, the server's id for it, the idle time it was opened with,
/// and since when it is idle.
struct Idle<C> {
    conn: C,
    server: u64,
    idle: Duration,
    since: tokio::time::Instant,
}

/// A session in use: the connection, the server's id for it, the idle time it was opened
/// with (for its return to the idle ones).
struct InUse<C> {
    conn: Shared<C>,
    server: u64,
    idle: Duration,
}

/// The client's sessions: those in use, by the number the machines know them by, and idle
/// ones.
pub(crate) struct Sessions<S: SessionStore> {
    store: Arc<S>,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, InUse<S::Conn>>>,
    idle: Mutex<Vec<Idle<S::Conn>>>,
}

impl<S: SessionStore> Sessions<S> {
    pub(crate) fn new(store: Arc<S>) -> Sessions<S> {
        Sessions {
            store,
            next: AtomicU64::new(0),
            open: Mutex::default(),
            idle: Mutex::default(),
        }
    }

    fn register(&self, conn: S::Conn, server: u64, idle: Duration) -> Reply {
        let session = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let conn = Arc::new(tokio::sync::Mutex::new(conn));
        lock(&self.open).insert(session, InUse { conn, server, idle });
        Reply::Opened { session, server }
    }

    fn close(&self, session: u64, clean: bool) {
        let used = lock(&self.open).remove(&session);
        // Kept only when the machine said it holds nothing, and no request still uses it;
        // otherwise dropped, which ends the session on the server (and frees its locks).
        if let (true, true, Some(InUse { conn, server, idle })) = (S::REUSE, clean, used) {
            if let Ok(conn) = Arc::try_unwrap(conn) {
                let mut pool = lock(&self.idle);
                if pool.len() < IDLE {
                    pool.push(Idle {
                        conn: conn.into_inner(),
                        server,
                        idle,
                        since: tokio::time::Instant::now(),
                    });
                }
            }
        }
    }
}

impl<S: SessionStore> std::fmt::Debug for Sessions<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &lock(&self.open).len())
            .field("idle", &lock(&self.idle).len())
            .finish_non_exhaustive()
    }
}

/// A std mutex's guard, also after a panic elsewhere (the maps stay consistent: every update
/// is one insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: SessionStore> Transport for Sessions<S> {
    type Command = Command;
    type Reply = Reply;

    fn send(
        self: &Arc<Self>,
        _node: usize,
        command: Command,
    ) -> impl Future<Output = Reply> + Send + 'static {
        let me = self.clone();
        async move {
            match command {
                Command::Open { idle, name } => {
                    // The most recently idle session opened with the same idle time, unless
                    // the server may have ended it meanwhile (idle for half its timeout or
                    // more, or closed: a restart, a kill).
                    loop {
                        let reused = {
                            let mut pool = lock(&me.idle);
                            let i = pool.iter().rposition(|s| s.idle == idle);
                            i.map(|i| pool.remove(i))
                        };
                        let Some(mut s) = reused else {
                            break;
                        };
                        let idle_for = s.since.elapsed();
                        if idle_for < idle / 2 && me.store.alive(&mut s.conn, idle_for).await {
                            return me.register(s.conn, s.server, s.idle);
                        }
                    }
                    match me.store.clone().open(name, idle).await {
                        Ok((conn, server)) => me.register(conn, server, idle),
                        Err(reply) => reply,
                    }
                }
                Command::Close { session, clean } => {
                    me.close(session, clean);
                    Reply::Closed
                }
                Command::Lock { session, .. }
                | Command::Probe { session, .. }
                | Command::Unlock { session, .. } => {
                    let conn = lock(&me.open).get(&session).map(|u| u.conn.clone());
                    match conn {
                        Some(conn) => me.store.clone().run(conn, command).await,
                        None => Reply::Unavailable("the session is closed".into()),
                    }
                }
            }
        }
    }

    /// Closing, and opening from an idle session the store can judge at once, need no IO.
    fn send_now(&self, _node: usize, command: Command) -> Result<Reply, Command> {
        match command {
            Command::Close { session, clean } => {
                self.close(session, clean);
                Ok(Reply::Closed)
            }
            Command::Open { idle, name } => {
                let mut pool = lock(&self.idle);
                while let Some(i) = pool.iter().rposition(|s| s.idle == idle) {
                    let idle_for = pool[i].since.elapsed();
                    let verdict = if idle_for < idle / 2 {
                        self.store.alive_now(&pool[i].conn, idle_for)
                    } else {
                        Some(false)
                    };
                    match verdict {
                        Some(true) => {
                            let s = pool.remove(i);
                            drop(pool);
                            return Ok(self.register(s.conn, s.server, s.idle));
                        }
                        Some(false) => {
                            pool.remove(i);
                        }
                        // Needs a ping: the async path decides.
                        None => break,
                    }
                }
                Err(Command::Open { idle, name })
            }
            other => Err(other),
        }
    }

    fn tasks(&self) -> &Arc<Tasks> {
        self.store.tasks()
    }
}

/// The session machine's configuration for `o` (probing every ttl/3 under auto-extension).
pub(crate) fn config(o: &Options<LeaseExtra>) -> Result<SessionConfig, lucky_core::UsageError> {
    let b = SessionConfig::builder().lease(o.lease);
    let b = if o.extra.auto_extend {
        b.auto_extend(None, None)
    } else {
        b
    };
    b.build()
}

/// A fresh machine for `name`, its jitter seeded from OS randomness.
pub(crate) fn machine(cfg: &SessionConfig, name: &str) -> Result<SessionLock, Error> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
    Ok(SessionLock::new(
        cfg,
        name.as_bytes(),
        u64::from_le_bytes(seed),
    )?)
}
