//! The etcd transport: one connection per member (made on first use), each request sent to the
//! preferred member and moved to the next when one fails (as [`Endpoints`] decides), watches
//! that end "unavailable" when their member fails, and the gRPC encoding of the machine's
//! commands.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget,
    TxnOp, TxnOpResponse,
};
use lucky_core::endpoints::{Endpoints, Resend};
use lucky_core::etcd::{Command, Reply, SessionView};

use crate::clock::Clock;
use crate::driver::{self, Transport};

use super::watch::{Hubs, Line};

/// How long a member that failed a request is passed over while other members are untried.
pub(super) const FAILED_COOLDOWN: Duration = Duration::from_secs(5);

/// One cluster member: its own connection (made on first use), so a dead member's errors
/// stay its own.
pub(super) struct Member {
    pub(super) endpoint: String,
    pub(super) client: tokio::sync::OnceCell<Client>,
    /// Woken when a request to this member failed: watches on it end and move elsewhere.
    pub(super) failed: Arc<tokio::sync::Notify>,
}

impl Member {
    pub(super) async fn client(&self, opts: &ConnectOptions) -> Result<Client, etcd_client::Error> {
        let connect = || Client::connect([self.endpoint.as_str()], Some(opts.clone()));
        self.client.get_or_try_init(connect).await.cloned()
    }
}

/// The connections to the cluster's members and which of them answer.
pub(super) struct Cluster {
    pub(super) members: Vec<Member>,
    pub(super) health: Mutex<Endpoints>,
    pub(super) opts: ConnectOptions,
    pub(super) endpoints: String,
    pub(super) clock: Clock,
    /// Background tasks of every lock of this client, for `Etcd::close`.
    pub(super) tasks: Arc<driver::Tasks>,
    /// First attempts in flight on the client's connection, at most.
    pub(super) gate: driver::Gate,
    /// Per member, the watch stream every waiting lock shares.
    pub(super) hubs: Hubs,
}

/// One lock's way to the cluster: a request's tries across members fit in the machine's own
/// request timeout.
pub(super) struct Route {
    pub(super) cluster: Arc<Cluster>,
    pub(super) op_timeout: Duration,
    /// On a shared session: the session's lease as published and what the lock was told of
    /// it (the lock's `KeepAlive { lease: LONG_POLL }` is the long-poll for a change).
    pub(super) session: Option<(Arc<dyn Changes>, Arc<Told>)>,
}

/// The lease id of a lock's long-poll for its session's changes (etcd never grants lease 0).
pub(super) const LONG_POLL: i64 = 0;

/// What a lock on a shared session shares with its transport: the session's lease as the lock
/// was last told, and a signal that the lock is done (its long-poll ends).
#[derive(Debug, Default)]
pub(super) struct Told {
    pub(super) view: Mutex<Option<SessionView>>,
    /// The lock is done: its long-poll ends.
    pub(super) finished: std::sync::atomic::AtomicBool,
    /// Wakes the long-poll when the lock is done.
    pub(super) waker: Mutex<Option<std::task::Waker>>,
}

/// The session's lease as published, as a lock's long-poll sees it.
pub(super) trait Changes: Send + Sync {
    /// Ready once the published lease differs from `seen` (what the lock was told), else
    /// wakes `cx` at the next change. `at` is where this long-poll's waker waits (the change
    /// it waits for and its place in a list): a waker is listed once per change, and replaced
    /// in place when the long-poll moved to another task.
    fn poll_changed(
        &self,
        seen: &Option<SessionView>,
        at: &mut Option<(u64, usize)>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()>;
    /// The long-poll listed at `at` ended: its place may serve another.
    fn forget(&self, at: (u64, usize));
}

/// A lock's long-poll: ready when the session's lease differs from what the lock was told, or
/// the lock is done. 48 bytes; a held lock keeps one in flight for as long as it is held.
struct LongPoll {
    host: Arc<dyn Changes>,
    told: Arc<Told>,
    /// Where its waker waits in the host's list (see [`Changes::poll_changed`]).
    at: Option<(u64, usize)>,
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        if let Some(at) = self.at {
            self.host.forget(at);
        }
    }
}

impl std::future::Future for LongPoll {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = &mut *self;
        {
            // Listed before the check: a finish after it wakes this.
            let mut w = this.told.waker.lock().unwrap_or_else(|e| e.into_inner());
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        if this
            .told
            .finished
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return std::task::Poll::Ready(());
        }
        let seen = *this.told.view.lock().unwrap_or_else(|e| e.into_inner());
        this.host.poll_changed(&seen, &mut this.at, cx)
    }
}

impl Transport for Route {
    type Command = Command;
    type Reply = Reply;

    fn tasks(&self) -> &Arc<driver::Tasks> {
        &self.cluster.tasks
    }

    fn gate(&self) -> Option<&driver::Gate> {
        Some(&self.cluster.gate)
    }

    fn is_local(&self, command: &Command) -> bool {
        self.session.is_some() && matches!(command, Command::KeepAlive { lease: LONG_POLL })
    }

    fn send(
        self: &Arc<Self>,
        _node: usize,
        command: Command,
    ) -> impl std::future::Future<Output = Reply> + Send + 'static {
        let (cluster, budget) = (self.cluster.clone(), self.op_timeout);
        // Every held lock keeps its long-poll in flight: it carries neither the command nor a
        // request's state, which are many times larger (a request is boxed on its own).
        let work = match (&self.session, command) {
            (Some((host, told)), Command::KeepAlive { lease: LONG_POLL }) => {
                Work::LongPoll(LongPoll {
                    host: host.clone(),
                    told: told.clone(),
                    at: None,
                })
            }
            (
                _,
                Command::WaitDelete {
                    key, prefix, from, ..
                },
            ) => Work::Request(Box::pin(async move {
                cluster.watch(key, prefix, from, budget).await
            })),
            (_, command) => {
                Work::Request(Box::pin(
                    async move { cluster.request(command, budget).await },
                ))
            }
        };
        async move {
            match work {
                Work::LongPoll(poll) => {
                    poll.await;
                    Reply::Done
                }
                Work::Request(request) => request.await,
            }
        }
    }
}

/// What a lock's command becomes in [`Route::send`].
enum Work {
    /// A long-poll for the session's changes, answered inside the process.
    LongPoll(LongPoll),
    /// A request to the cluster.
    Request(driver::BoxFuture<Reply>),
}

impl Cluster {
    pub(super) fn health(&self) -> std::sync::MutexGuard<'_, Endpoints> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The preferred member's connection if it is made, else `first`.
    pub(super) fn any_client(&self, first: &Client) -> Client {
        let preferred = self.health().preferred();
        self.members
            .get(preferred)
            .and_then(|m| m.client.get().cloned())
            .unwrap_or_else(|| first.clone())
    }

    fn mark_failed(&self, i: usize) {
        self.health().failed(i, self.clock.now());
        self.members[i].failed.notify_waiters();
    }

    /// Runs `command` on the preferred member, and on the next ones while members fail to
    /// answer, all within `budget`. A command that is not safe to apply twice (a take on a
    /// shared session) goes to a next member only if it was surely not sent to the last one.
    pub(super) async fn request(&self, command: Command, budget: Duration) -> Reply {
        let once = !command.resend_safe();
        let mut attempt = self.health().start(self.clock.now(), budget);
        let mut last = String::from("no member answered in time");
        loop {
            let now = self.clock.now();
            let Some((i, until)) = self.health().next(&mut attempt, now) else {
                return Reply::Unavailable(format!("{}: {last}", self.endpoints));
            };
            let member = &self.members[i];
            let limit = until.saturating_duration_since(now);
            // Whether the command may have left (a connection was there to send it on).
            let mut sent = false;
            let try_once = async {
                let mut c = member.client(&self.opts).await?;
                sent = true;
                run(&mut c, command.clone()).await
            };
            let reply = match tokio::time::timeout(limit, try_once).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => error_reply(e),
                Err(_) => Reply::Unavailable(format!("no answer within {limit:?}")),
            };
            match reply {
                Reply::Unavailable(why) => {
                    self.mark_failed(i);
                    last = format!("{}: {why}", member.endpoint);
                    if once && sent {
                        // It may still apply: the machine cleans up behind a guard instead.
                        return Reply::Unavailable(format!("{}: {last}", self.endpoints));
                    }
                }
                reply => {
                    self.health().succeeded(i);
                    return reply;
                }
            }
        }
    }

    /// Watches `key` from revision `from` on one member until it is deleted, on the client's
    /// watch stream to that member (`watch.rs`). Not resent: a watch whose member fails ends
    /// "unavailable", and the machine reads the queue again (elsewhere) before it watches
    /// anew. A silent member is found by progress requests: after `probe` without a word,
    /// one is sent, and another `probe` without an answer ends the stream's watches.
    async fn watch(
        self: &Arc<Self>,
        key: Bytes,
        prefix: bool,
        from: i64,
        probe: Duration,
    ) -> Reply {
        let now = self.clock.now();
        let picked = {
            let mut health = self.health();
            let mut attempt = health.start(now, probe);
            health.next(&mut attempt, now)
        };
        let Some((i, _)) = picked else {
            return Reply::Unavailable("no member to watch on".into());
        };
        let line = || self.line(i);
        self.hubs.watch(i, line, key, prefix, from, probe).await
    }

    /// What member `i`'s watch stream needs of it, holding this client weakly.
    fn line(self: &Arc<Self>, i: usize) -> Line {
        let (connect_to, fail) = (Arc::downgrade(self), Arc::downgrade(self));
        Line {
            endpoint: self.members[i].endpoint.clone(),
            failed: self.members[i].failed.clone(),
            connect: Box::new(move || {
                let cluster = connect_to.clone();
                Box::pin(async move {
                    let Some(c) = cluster.upgrade() else {
                        return Err(etcd_client::Error::WatchError("client closed".into()));
                    };
                    c.members[i].client(&c.opts).await
                })
            }),
            mark_failed: Box::new(move || {
                if let Some(c) = fail.upgrade() {
                    c.mark_failed(i);
                }
            }),
            reply_of: error_reply,
        }
    }
}

fn owner_op(prefix: &[u8]) -> TxnOp {
    TxnOp::get(
        prefix.to_vec(),
        Some(
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1),
        ),
    )
}

async fn run(client: &mut Client, command: Command) -> Result<Reply, etcd_client::Error> {
    Ok(match command {
        Command::LeaseGrant { ttl_secs } => {
            let r = client.lease_grant(ttl_secs, None).await?;
            Reply::Lease {
                id: r.id(),
                ttl: Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0)),
            }
        }
        Command::KeepAlive { lease } => {
            // etcd-client queues a first request when it opens the stream, but etcd answers
            // only the requests sent once the stream is up: send one.
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(r) => Reply::KeepAlive {
                    ttl: Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0)),
                },
                None => Reply::Unavailable("keepalive stream closed".into()),
            }
        }
        Command::Revoke { lease } => {
            client.lease_revoke(lease).await?;
            Reply::Done
        }
        Command::Abandon { key, guard, lease } => {
            let txn = etcd_client::Txn::new().and_then([
                TxnOp::put(
                    guard.to_vec(),
                    Vec::new(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::delete(key.to_vec(), None),
            ]);
            client.txn(txn).await?;
            Reply::Done
        }
        Command::Take {
            key,
            prefix,
            lease,
            guard,
        } => {
            let mut when = vec![Compare::create_revision(key.to_vec(), CompareOp::Equal, 0)];
            if let Some(g) = guard {
                when.push(Compare::create_revision(g.to_vec(), CompareOp::Equal, 0));
            }
            let txn = etcd_client::Txn::new()
                .when(when)
                .and_then([
                    TxnOp::put(
                        key.to_vec(),
                        Vec::new(),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    owner_op(&prefix),
                ])
                .or_else([TxnOp::get(key.to_vec(), None), owner_op(&prefix)]);
            let r = client.txn(txn).await?;
            let revision = r.header().map_or(0, |h| h.revision());
            let ops = r.op_responses();
            let first_create = |op: Option<&TxnOpResponse>| match op {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| kv.create_revision()),
                _ => None,
            };
            let create_revision = if r.succeeded() {
                revision
            } else {
                first_create(ops.first()).unwrap_or(0)
            };
            Reply::Taken {
                create_revision,
                owner_revision: first_create(ops.get(1)).unwrap_or(0),
                revision,
            }
        }
        Command::Queue { key, prefix, below } => {
            let pred = GetOptions::new()
                .with_prefix()
                .with_max_create_revision(below.saturating_sub(1).max(1))
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1)
                .with_keys_only();
            let txn = etcd_client::Txn::new().and_then([
                TxnOp::get(key.to_vec(), None),
                TxnOp::get(prefix.to_vec(), Some(pred)),
            ]);
            let r = client.txn(txn).await?;
            let revision = r.header().map_or(0, |h| h.revision());
            let ops = r.op_responses();
            let mine = match ops.first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| kv.create_revision()),
                _ => None,
            };
            let predecessor = match ops.get(1) {
                Some(TxnOpResponse::Get(g)) => g
                    .kvs()
                    .first()
                    .filter(|kv| kv.create_revision() < below)
                    .map(|kv| bytes::Bytes::copy_from_slice(kv.key())),
                _ => None,
            };
            Reply::Queue {
                mine,
                predecessor,
                revision,
            }
        }
        // Watches run in `Cluster::watch`.
        Command::WaitDelete { .. } => Reply::Error("a watch is not a request".into()),
        Command::Delete { key, revision } => {
            let txn = etcd_client::Txn::new()
                .when([Compare::create_revision(
                    key.to_vec(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::delete(key.to_vec(), None)]);
            client.txn(txn).await?;
            Reply::Done
        }
    })
}

fn error_reply(e: etcd_client::Error) -> Reply {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            if s.message().contains("lease not found") {
                Reply::LeaseNotFound
            } else if matches!(
                i32::from(s.code()),
                CANCELLED | DEADLINE_EXCEEDED | UNAVAILABLE
            ) {
                Reply::Unavailable(s.message().to_owned())
            } else {
                Reply::Error(s.message().to_owned())
            }
        }
        other => Reply::Unavailable(other.to_string()),
    }
}

/// gRPC status codes that mean "not reached" rather than "refused".
const CANCELLED: i32 = 1;
const DEADLINE_EXCEEDED: i32 = 4;
pub(super) const UNAVAILABLE: i32 = 14;
