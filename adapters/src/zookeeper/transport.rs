//! One ZooKeeper session per client and ttl, shared by its locks: each machine command
//! becomes one or two `zookeeper-client` calls; every answer is fed to the session's [`SessionProof`] and
//! the reply carries what the proof says. A session that expired is replaced at the next
//! request. Protocol decisions stay in the machine: this only encodes.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use lucky_core::zookeeper::{Command, Reply, Session, SessionProof, ZkConfig};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, EventType};

use crate::clock::Clock;
use crate::driver::{self, Tasks, Transport};

/// The session in use and its proof.
pub(super) struct Current {
    pub(super) client: Client,
    id: i64,
    timeout: Duration,
    proof: Mutex<SessionProof>,
}

/// What every lock of one client shares.
pub(super) struct Shared {
    pub(super) servers: Vec<String>,
    pub(super) cfg: ZkConfig,
    connect_timeout: Duration,
    pub(super) clock: Clock,
    pub(super) tasks: Arc<Tasks>,
    current: tokio::sync::Mutex<Option<Arc<Current>>>,
    /// The id of the session in use, for `session_id()` without waiting.
    id: Mutex<Option<i64>>,
}

impl Shared {
    pub(super) fn new(
        servers: Vec<String>,
        cfg: ZkConfig,
        connect_timeout: Duration,
        clock: Clock,
        tasks: Arc<Tasks>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            servers,
            cfg,
            connect_timeout,
            clock,
            tasks,
            current: tokio::sync::Mutex::new(None),
            id: Mutex::new(None),
        })
    }

    pub(super) fn session_id(&self) -> Option<i64> {
        *self.id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session in use, connecting a new one if there is none.
    pub(super) async fn current(&self) -> Result<Arc<Current>, String> {
        let mut cur = self.current.lock().await;
        if let Some(c) = cur.as_ref() {
            return Ok(c.clone());
        }
        let sent = self.clock.now();
        let servers = self.servers.join(",");
        let connect = Client::connector()
            .with_session_timeout(self.cfg.session_timeout())
            .with_connection_timeout(self.connect_timeout)
            .connect(&servers);
        let client = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("{}: {e}", self.servers.join(","))),
            Err(_) => {
                return Err(format!(
                    "{}: no session within {:?}",
                    self.servers.join(","),
                    self.connect_timeout
                ))
            }
        };
        let timeout = client.session_timeout();
        let mut proof = self.cfg.proof(timeout);
        // A new session is created by the leader: its answer proves a touch after `sent`.
        proof.connected(sent);
        let c = Arc::new(Current {
            id: client.session_id().0,
            timeout,
            client,
            proof: Mutex::new(proof),
        });
        *self.id.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.id);
        *cur = Some(c.clone());
        Ok(c)
    }

    /// The session `id` expired (or its client closed): the next request opens a new one.
    async fn expired(&self, id: i64) {
        let mut cur = self.current.lock().await;
        if cur.as_ref().is_some_and(|c| c.id == id) {
            *cur = None;
            *self.id.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Keeps the session's proof fresh while no lock asks anything: a cheap read every
    /// `touch_every` (at most every quarter of the ensemble's lag). Ends with the client.
    pub(super) fn start_prober(shared: &Arc<Shared>) {
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let lag = shared.cfg.ensemble().lag;
        let mut every = shared.cfg.touch_every();
        if !lag.is_zero() {
            every = every.min(lag / 4);
        }
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = weak.upgrade() else { return };
                let Some(cur) = shared.current.lock().await.clone() else {
                    continue;
                };
                let sent = shared.clock.now();
                let r = tokio::time::timeout(every, cur.client.check_stat("/")).await;
                match r {
                    Ok(Ok(_)) => cur.answered(sent, shared.clock.now()),
                    Ok(Err(ZkError::SessionExpired | ZkError::ClientClosed)) => {
                        shared.expired(cur.id).await
                    }
                    _ => {}
                }
            }
        });
    }
}

impl Current {
    fn answered(&self, sent: lucky_core::Instant, read: lucky_core::Instant) {
        self.proof
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answered(sent, read);
    }

    fn session(&self) -> Session {
        Session {
            id: self.id,
            timeout: self.timeout,
            until: self.proof.lock().unwrap_or_else(|e| e.into_inner()).until(),
        }
    }
}

/// The transport of one lock: the client's shared session.
pub(super) struct Route {
    pub(super) shared: Arc<Shared>,
}

fn text(b: &Bytes) -> Result<&str, Reply> {
    std::str::from_utf8(b).map_err(|_| Reply::Error("path is not UTF-8".into()))
}

/// What a failed call means to the machine.
fn failed(e: &ZkError) -> Reply {
    match e {
        ZkError::SessionExpired | ZkError::ClientClosed => Reply::SessionExpired,
        ZkError::NoNode => Reply::NoNode,
        // The request may or may not have been applied.
        ZkError::ConnectionLoss | ZkError::Timeout | ZkError::Custom(_) => {
            Reply::Unavailable(e.to_string())
        }
        other => Reply::Error(other.to_string()),
    }
}

/// A call's outcome: the answer, or how it failed.
enum Outcome {
    Answer(Reply),
    Failed(ZkError),
}

async fn exec(
    client: &Client,
    command: Command,
    session: impl Fn() -> Session,
) -> Result<Outcome, Reply> {
    let acls = Acls::anyone_all();
    Ok(match command {
        Command::Create { dir, prefix } => {
            let dir_s = text(&dir)?;
            let path = format!("{dir_s}/{}", text(&prefix)?);
            let opts = CreateMode::EphemeralSequential.with_acls(acls);
            let mut r = client.create(&path, b"", &opts).await;
            if matches!(r, Err(ZkError::NoNode)) {
                // Parents as containers (the server removes them once empty), then again.
                let parents = CreateMode::Container.with_acls(acls);
                match client.mkdir(dir_s, &parents).await {
                    Ok(()) | Err(ZkError::NodeExists) => {}
                    Err(e) => return Ok(Outcome::Failed(e)),
                }
                r = client.create(&path, b"", &opts).await;
            }
            match r {
                Ok((stat, seq)) => Outcome::Answer(Reply::Created {
                    path: Bytes::from(format!("{path}{seq}")),
                    czxid: stat.czxid,
                    session: session(),
                }),
                Err(e) => Outcome::Failed(e),
            }
        }
        Command::Children { dir, sync } => {
            let dir = text(&dir)?;
            if sync {
                if let Err(e) = client.sync(dir).await {
                    if e != ZkError::NoNode {
                        return Ok(Outcome::Failed(e));
                    }
                }
            }
            match client.list_children(dir).await {
                Ok(names) => Outcome::Answer(Reply::Children {
                    names: names.into_iter().map(Bytes::from).collect(),
                    session: session(),
                }),
                Err(e) => Outcome::Failed(e),
            }
        }
        Command::Stat { path } => match client.check_stat(text(&path)?).await {
            Ok(Some(stat)) => Outcome::Answer(Reply::Stat {
                czxid: stat.czxid,
                ephemeral_owner: stat.ephemeral_owner,
                session: session(),
            }),
            Ok(None) => Outcome::Answer(Reply::NoNode),
            Err(e) => Outcome::Failed(e),
        },
        Command::WaitDelete { path } => match client.check_and_watch_stat(text(&path)?).await {
            Ok((None, _)) => Outcome::Answer(Reply::Deleted),
            Ok((Some(_), watcher)) => {
                let event = watcher.changed().await;
                if event.event_type == EventType::Session {
                    Outcome::Answer(Reply::Unavailable(format!(
                        "session {:?}",
                        event.session_state
                    )))
                } else {
                    Outcome::Answer(Reply::Deleted)
                }
            }
            Err(e) => Outcome::Failed(e),
        },
        Command::Delete { path } => match client.delete(text(&path)?, None).await {
            Ok(()) => Outcome::Answer(Reply::Done),
            Err(ZkError::NoNode) => Outcome::Answer(Reply::NoNode),
            Err(e) => Outcome::Failed(e),
        },
    })
}

impl Transport for Route {
    type Command = Command;
    type Reply = Reply;

    fn tasks(&self) -> &Arc<driver::Tasks> {
        &self.shared.tasks
    }

    fn send(
        self: &Arc<Self>,
        _node: usize,
        command: Command,
    ) -> impl std::future::Future<Output = Reply> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            let cur = match shared.current().await {
                Ok(c) => c,
                Err(e) => return Reply::Unavailable(e),
            };
            let watch = matches!(command, Command::WaitDelete { .. });
            let sent = shared.clock.now();
            let (clock, c2) = (shared.clock, cur.clone());
            // The session as the proof stands once this answer is counted.
            let session = move || {
                c2.answered(sent, clock.now());
                c2.session()
            };
            match exec(&cur.client, command, session).await {
                Err(reply) => reply,
                Ok(Outcome::Answer(reply)) => {
                    if !watch {
                        cur.answered(sent, shared.clock.now());
                    }
                    reply
                }
                Ok(Outcome::Failed(e)) => {
                    let reply = failed(&e);
                    if let Reply::SessionExpired = reply {
                        shared.expired(cur.id).await;
                    }
                    reply
                }
            }
        }
    }
}
