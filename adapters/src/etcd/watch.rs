//! Waiting on one stream per member: the watches of every waiting lock of a client share one
//! etcd watch stream per member, each watch under an id of ours, instead of a gRPC stream per
//! waiter (each of which costs a stream, its buffers and a server-side watcher goroutine on
//! both ends). A task per member owns the stream: it opens it with the first watch, adds and
//! cancels watches on it, answers each waiter when its key goes, and fails every watch on it
//! "unavailable" when the member fails or the stream goes silent, so each waiting machine reads
//! the queue again elsewhere, as it does when its own stream fails. With no watch for a while
//! the task closes the stream and ends; the next watch opens a new one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchResponse};
use lucky_core::etcd::Reply;
use tokio::sync::{mpsc, oneshot};

use crate::driver::BoxFuture;

/// How long a stream with no watch on it stays open for the next one.
const IDLE_CLOSE: Duration = Duration::from_secs(10);

type Slot = Mutex<Option<Arc<Hub>>>;

/// Per member, the stream task's handle while it runs.
#[derive(Default)]
pub(super) struct Hubs(Vec<Arc<Slot>>);

/// What a stream task needs of its member, from the transport (which holds the client only
/// weakly in it, so a client dropped without `close` takes its streams with it).
pub(super) struct Line {
    pub(super) endpoint: String,
    /// Woken when a request to the member failed: the stream's watches end.
    pub(super) failed: Arc<tokio::sync::Notify>,
    /// The member's connection.
    pub(super) connect:
        Box<dyn Fn() -> BoxFuture<Result<Client, etcd_client::Error>> + Send + Sync>,
    /// Passes the member over for a while.
    pub(super) mark_failed: Box<dyn Fn() + Send + Sync>,
    /// A client library error as the machine's reply.
    pub(super) reply_of: fn(etcd_client::Error) -> Reply,
}

impl Hubs {
    /// No stream yet for each of `members` members.
    pub(super) fn new(members: usize) -> Hubs {
        Hubs((0..members).map(|_| Arc::default()).collect())
    }

    /// Ends every stream (the client closes): their watches end "unavailable".
    pub(super) fn close(&self) {
        for slot in &self.0 {
            if let Some(hub) = lock(slot).take() {
                let _ = hub.asks.send(Ask::Close);
            }
        }
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Arc<Hub>>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The handle to one member's stream task.
pub(super) struct Hub {
    asks: mpsc::UnboundedSender<Ask>,
    /// The member's endpoint, for error texts.
    endpoint: String,
    /// Our watch ids on the stream (etcd lets a client choose them, since 3.4).
    next_id: AtomicI64,
}

enum Ask {
    Watch {
        id: i64,
        key: Bytes,
        opts: WatchOptions,
        reply: oneshot::Sender<Reply>,
    },
    Cancel(i64),
    Close,
}

/// What the stream's writer sends, in order.
enum Write {
    Watch(i64, Bytes, WatchOptions),
    Cancel(i64),
    Progress,
}

/// Cancels a watch whose waiter stopped waiting (its future dropped), so the server drops
/// the watcher at once.
struct CancelOnDrop {
    hub: Arc<Hub>,
    id: i64,
    answered: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.hub.asks.send(Ask::Cancel(self.id));
        }
    }
}

impl Hubs {
    /// Watches `key` (or every key under it, with `prefix`) from revision `from` on member
    /// `i`'s shared stream until it is deleted: `Deleted`, `Compacted`, or `Unavailable` when
    /// the member or the stream fails (the stream is probed after `probe` of silence). `line`
    /// gives what a new stream task needs of the member.
    pub(super) async fn watch(
        &self,
        i: usize,
        line: impl Fn() -> Line,
        key: Bytes,
        prefix: bool,
        from: i64,
        probe: Duration,
    ) -> Reply {
        let mut opts = WatchOptions::new()
            .with_start_revision(from)
            .with_filters([WatchFilterType::NoPut]);
        if prefix {
            opts = opts.with_prefix();
        }
        let (reply, answer) = oneshot::channel();
        let mut ask = Ask::Watch {
            id: 0,
            key,
            opts,
            reply,
        };
        // A stream that closed for idleness between our finding it and our asking refuses
        // the ask: the next one opens a new stream.
        let mut endpoint = String::new();
        for _ in 0..2 {
            let hub = self.hub(i, probe, &line);
            endpoint.clone_from(&hub.endpoint);
            let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
            if let Ask::Watch { id: slot, .. } = &mut ask {
                *slot = id;
            }
            match hub.asks.send(ask) {
                Ok(()) => {
                    let mut cancel = CancelOnDrop {
                        hub,
                        id,
                        answered: false,
                    };
                    let reply = answer.await.unwrap_or_else(|_| {
                        Reply::Unavailable(format!("{endpoint}: watch stream ended"))
                    });
                    cancel.answered = true;
                    return reply;
                }
                Err(refused) => ask = refused.0,
            }
        }
        Reply::Unavailable(format!("{endpoint}: no watch stream"))
    }

    /// Member `i`'s stream task, started if none runs.
    fn hub(&self, i: usize, probe: Duration, line: &impl Fn() -> Line) -> Arc<Hub> {
        let mut slot = lock(&self.0[i]);
        if let Some(hub) = slot.as_ref().filter(|h| !h.asks.is_closed()) {
            return hub.clone();
        }
        let (asks, rx) = mpsc::unbounded_channel();
        let line = line();
        let hub = Arc::new(Hub {
            asks,
            endpoint: line.endpoint.clone(),
            next_id: AtomicI64::new(1),
        });
        *slot = Some(hub.clone());
        let task = Task {
            line,
            slot: self.0[i].clone(),
            hub: Arc::downgrade(&hub),
            probe,
        };
        tokio::spawn(task.run(rx));
        hub
    }
}

/// One member's stream task: its member, its slot in [`Hubs`], and the probe interval.
struct Task {
    line: Line,
    slot: Arc<Slot>,
    hub: Weak<Hub>,
    probe: Duration,
}

/// The waiters of one stream, by watch id.
struct Waiters(BTreeMap<i64, oneshot::Sender<Reply>>);

impl Waiters {
    fn answer(&mut self, id: i64, reply: Reply) -> bool {
        match self.0.remove(&id) {
            Some(w) => {
                let _ = w.send(reply);
                true
            }
            None => false,
        }
    }

    fn fail_all(&mut self, why: &str) {
        for (_, w) in std::mem::take(&mut self.0) {
            let _ = w.send(Reply::Unavailable(why.to_owned()));
        }
    }
}

/// How a stream task ended.
enum End {
    /// No watch for a while, or the client closed.
    Closed,
    /// The stream failed (`mark`: the member is to be passed over; false when it already is,
    /// or when the error says nothing of its availability).
    Failed { why: String, mark: bool },
}

fn failed(why: impl Into<String>) -> End {
    End::Failed {
        why: why.into(),
        mark: true,
    }
}

impl Task {
    /// Runs until the member or the stream fails, the stream stays without a watch for
    /// [`IDLE_CLOSE`], or the client closes.
    async fn run(self, mut asks: mpsc::UnboundedReceiver<Ask>) {
        let mut waiters = Waiters(BTreeMap::new());
        let end = self.serve(&mut asks, &mut waiters).await;
        asks.close();
        // Asks that came in as the stream ended are failed with the rest.
        while let Ok(ask) = asks.try_recv() {
            if let Ask::Watch { id, reply, .. } = ask {
                waiters.0.insert(id, reply);
            }
        }
        match end {
            End::Closed => waiters.fail_all("the watch stream closed"),
            End::Failed { why, mark } => {
                tracing::debug!(%why, "watch stream failed");
                if mark {
                    (self.line.mark_failed)();
                }
                waiters.fail_all(&why);
            }
        }
    }

    /// The end for an error of the client library.
    fn client_error(&self, e: etcd_client::Error) -> End {
        let endpoint = &self.line.endpoint;
        match (self.line.reply_of)(e) {
            Reply::Unavailable(why) => failed(format!("{endpoint}: {why}")),
            other => End::Failed {
                why: format!("{endpoint}: {other:?}"),
                mark: false,
            },
        }
    }

    /// Serves the stream until it ends. A writer task sends the stream's requests from a
    /// queue of its own, so this loop never waits on a send: the server blocks its reads
    /// while our replies sit unread, and a reader waiting to send would deadlock with it.
    async fn serve(&self, asks: &mut mpsc::UnboundedReceiver<Ask>, waiters: &mut Waiters) -> End {
        let member_failed = self.line.failed.clone().notified_owned();
        tokio::pin!(member_failed);
        member_failed.as_mut().enable();
        // The stream opens with the first watch.
        let (id, key, opts) = loop {
            match asks.recv().await {
                None | Some(Ask::Close) => return End::Closed,
                Some(Ask::Watch {
                    id,
                    key,
                    opts,
                    reply,
                }) => {
                    waiters.0.insert(id, reply);
                    break (id, key, opts);
                }
                Some(Ask::Cancel(_)) => {}
            }
        };
        let endpoint = &self.line.endpoint;
        let open = async {
            let mut c = (self.line.connect)().await?;
            c.watch(key.to_vec(), Some(opts.with_watch_id(id))).await
        };
        let (sender, mut stream) = match tokio::time::timeout(self.probe, open).await {
            Ok(Ok(s)) => s.split(),
            Ok(Err(e)) => return self.client_error(e),
            Err(_) => return failed(format!("{endpoint}: watch not opened in time")),
        };
        let (writes, write_failed) = writer(sender);
        tokio::pin!(write_failed);
        // The creates the server has not answered yet, in the order sent: it answers them in
        // that order, a refused one under watch id -1.
        let mut creating = VecDeque::from([id]);
        // Since when the stream has been silent (reset by every message and by a progress
        // request); a waiter that comes to an empty stream starts the count.
        let mut quiet_since = tokio::time::Instant::now();
        let mut asked = false;
        loop {
            let silence = if waiters.0.is_empty() {
                IDLE_CLOSE
            } else {
                self.probe
            };
            tokio::select! {
                () = &mut member_failed => {
                    let why = format!("{endpoint} failed a request");
                    return End::Failed { why, mark: false };
                }
                e = &mut write_failed => {
                    return match e {
                        Ok(e) => self.client_error(e),
                        Err(_) => failed(format!("{endpoint}: watch stream closed")),
                    };
                }
                ask = asks.recv() => match ask {
                    None | Some(Ask::Close) => return End::Closed,
                    Some(Ask::Watch { id, key, opts, reply }) => {
                        if waiters.0.is_empty() {
                            quiet_since = tokio::time::Instant::now();
                        }
                        waiters.0.insert(id, reply);
                        creating.push_back(id);
                        let _ = writes.send(Write::Watch(id, key, opts));
                    }
                    Some(Ask::Cancel(id)) => {
                        if waiters.0.remove(&id).is_some() {
                            let _ = writes.send(Write::Cancel(id));
                        }
                    }
                },
                message = tokio::time::timeout_at(quiet_since + silence, stream.message()) => {
                    match message {
                        Err(_) if waiters.0.is_empty() => {
                            if self.idle_close(asks) {
                                return End::Closed;
                            }
                        }
                        Err(_) if asked => {
                            let why = format!("{endpoint} left a progress request unanswered");
                            return failed(why);
                        }
                        Err(_) => {
                            asked = true;
                            quiet_since = tokio::time::Instant::now();
                            let _ = writes.send(Write::Progress);
                        }
                        Ok(Err(e)) => return self.client_error(e),
                        Ok(Ok(None)) => return failed(format!("{endpoint}: watch stream closed")),
                        Ok(Ok(Some(r))) => {
                            asked = false;
                            quiet_since = tokio::time::Instant::now();
                            if let Some(id) = dispatch(&r, waiters, &mut creating) {
                                let _ = writes.send(Write::Cancel(id));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream if nobody asked for a watch meanwhile: under the slot's lock, so an
    /// ask either came before (and is served) or finds the stream closed (and opens a new
    /// one).
    fn idle_close(&self, asks: &mut mpsc::UnboundedReceiver<Ask>) -> bool {
        let mut slot = lock(&self.slot);
        if !asks.is_empty() {
            return false;
        }
        if slot
            .as_ref()
            .is_some_and(|h| std::ptr::eq(Arc::as_ptr(h), self.hub.as_ptr()))
        {
            *slot = None;
        }
        asks.close();
        true
    }
}

/// The stream's writer: sends what it is given, in order, until the stream fails (the error
/// comes out of the returned receiver) or the queue's sender is dropped.
fn writer(
    mut sender: etcd_client::WatchRequestSender,
) -> (
    mpsc::UnboundedSender<Write>,
    oneshot::Receiver<etcd_client::Error>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (fail, failed) = oneshot::channel();
    tokio::spawn(async move {
        while let Some(w) = rx.recv().await {
            let sent = match w {
                Write::Watch(id, key, opts) => {
                    sender
                        .watch(key.to_vec(), Some(opts.with_watch_id(id)))
                        .await
                }
                Write::Cancel(id) => sender.cancel(id).await,
                Write::Progress => sender.request_progress().await,
            };
            if let Err(e) = sent {
                let _ = fail.send(e);
                return;
            }
        }
    });
    (tx, failed)
}

/// Answers the waiter a response is for; returns a watch to cancel on the server (answered,
/// or ended by compaction, it is still there).
fn dispatch(r: &WatchResponse, waiters: &mut Waiters, creating: &mut VecDeque<i64>) -> Option<i64> {
    let id = r.watch_id();
    if r.created() {
        let ours = creating.pop_front();
        if r.canceled() {
            // Refused (an expired token, say): the server names no id, but answers the
            // creates in order. The waiter reads the queue again.
            if let Some(ours) = ours {
                let why = format!("watch refused: {}", r.cancel_reason());
                waiters.answer(ours, Reply::Error(why));
            }
            return None;
        }
    }
    if r.compact_revision() > 0 {
        // The waiter reads the queue again; the server keeps the watcher until cancelled.
        waiters.answer(id, Reply::Compacted);
        return Some(id);
    }
    if r.canceled() {
        // Our own cancel, confirmed.
        return None;
    }
    let deleted = r
        .events()
        .iter()
        .any(|e| e.event_type() == EventType::Delete);
    (deleted && waiters.answer(id, Reply::Deleted)).then_some(id)
}
