//! Waiting on one stream per member: the watches of every waiting lock of a client share one
//! etcd watch stream per member, each watch under an id of ours, instead of a gRPC stream per
//! waiter (each of which costs a stream, its buffers and a server-side watcher goroutine on
//! both ends). A task per member owns the stream: it opens it with the first watch, adds and
//! cancels watches on it, answers each waiter when its key goes, and fails every watch on it
//! "unavailable" when the member fails or the stream goes silent, so each waiting machine reads
//! the queue again elsewhere, as it does when its own stream fails. With no watch for a while
//! the task closes the stream and ends; the next watch opens a new one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{EventType, WatchFilterType, WatchOptions, WatchResponse};
use lucky_core::etcd::Reply;
use tokio::sync::{mpsc, oneshot};

use super::transport::{error_reply, Cluster};

/// How long a stream with no watch on it stays open for the next one.
const IDLE_CLOSE: Duration = Duration::from_secs(10);

/// Per member, the stream task's handle while it runs.
#[derive(Default)]
pub(super) struct Hubs(Vec<Mutex<Option<Arc<Hub>>>>);

impl Hubs {
    /// No stream yet for each of `members` members.
    pub(super) fn new(members: usize) -> Hubs {
        Hubs((0..members).map(|_| Mutex::new(None)).collect())
    }

    /// Ends every stream task (the client closes): their watches end "unavailable".
    pub(super) fn close(&self) {
        for slot in &self.0 {
            slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }
}

/// The handle to one member's stream task.
pub(super) struct Hub {
    asks: mpsc::UnboundedSender<Ask>,
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

impl Cluster {
    /// Watches `key` (or every key under it, with `prefix`) from revision `from` on member
    /// `i`'s shared stream until it is deleted: `Deleted`, `Compacted`, or `Unavailable` when
    /// the member or the stream fails (the stream is probed after `probe` of silence).
    pub(super) async fn watch_on(
        self: &Arc<Self>,
        i: usize,
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
        let hub = self.hub(i, probe);
        let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let ask = Ask::Watch {
            id,
            key,
            opts,
            reply,
        };
        if hub.asks.send(ask).is_err() {
            return Reply::Unavailable("the watch stream ended".into());
        }
        let mut cancel = CancelOnDrop {
            hub,
            id,
            answered: false,
        };
        let reply = answer
            .await
            .unwrap_or_else(|_| Reply::Unavailable("the watch stream ended".into()));
        cancel.answered = true;
        reply
    }

    /// Member `i`'s stream task, started if none runs.
    fn hub(self: &Arc<Self>, i: usize, probe: Duration) -> Arc<Hub> {
        let mut slot = self.hubs.0[i].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hub) = slot.as_ref().filter(|h| !h.asks.is_closed()) {
            return hub.clone();
        }
        let (asks, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            asks,
            next_id: AtomicI64::new(1),
        });
        *slot = Some(hub.clone());
        tokio::spawn(run(self.clone(), i, probe, rx));
        hub
    }
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
    /// The stream failed (`mark`: the member is to be passed over; false when it already is).
    Failed { why: String, mark: bool },
}

fn failed(why: impl Into<String>) -> End {
    End::Failed {
        why: why.into(),
        mark: true,
    }
}

/// One member's stream task: runs until the member or the stream fails, the stream stays
/// without a watch for [`IDLE_CLOSE`], or the client closes.
async fn run(
    cluster: Arc<Cluster>,
    i: usize,
    probe: Duration,
    mut asks: mpsc::UnboundedReceiver<Ask>,
) {
    let mut waiters = Waiters(BTreeMap::new());
    let end = serve(&cluster, i, probe, &mut asks, &mut waiters).await;
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
                cluster.mark_failed(i);
            }
            waiters.fail_all(&why);
        }
    }
}

/// Serves the stream until it ends.
async fn serve(
    cluster: &Cluster,
    i: usize,
    probe: Duration,
    asks: &mut mpsc::UnboundedReceiver<Ask>,
    waiters: &mut Waiters,
) -> End {
    let member = &cluster.members[i];
    let failed_request = member.failed.notified();
    tokio::pin!(failed_request);
    failed_request.as_mut().enable();
    // The stream opens with the first watch.
    let (id, key, opts) = loop {
        match asks.recv().await {
            None => return End::Closed,
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
    let open = async {
        let mut c = member.client(&cluster.opts).await?;
        c.watch(key.to_vec(), Some(opts.with_watch_id(id))).await
    };
    let (mut sender, mut stream) = match tokio::time::timeout(probe, open).await {
        Ok(Ok(s)) => s.split(),
        Ok(Err(e)) => return failed(reply_text(error_reply(e))),
        Err(_) => return failed("watch not opened in time"),
    };
    let endpoint = &member.endpoint;
    // Since when the stream has been silent (reset by every message and by a progress
    // request); a waiter that comes to an empty stream starts the count.
    let mut quiet_since = tokio::time::Instant::now();
    let mut asked = false;
    loop {
        let silence = if waiters.0.is_empty() {
            IDLE_CLOSE
        } else {
            probe
        };
        tokio::select! {
            biased;
            () = &mut failed_request => {
                return End::Failed { why: format!("{endpoint} failed a request"), mark: false };
            }
            ask = asks.recv() => match ask {
                None => return End::Closed,
                Some(Ask::Watch { id, key, opts, reply }) => {
                    if waiters.0.is_empty() {
                        quiet_since = tokio::time::Instant::now();
                    }
                    waiters.0.insert(id, reply);
                    if let Err(e) = sender.watch(key.to_vec(), Some(opts.with_watch_id(id))).await {
                        return failed(reply_text(error_reply(e)));
                    }
                }
                Some(Ask::Cancel(id)) => {
                    if waiters.0.remove(&id).is_some() {
                        if let Err(e) = sender.cancel(id).await {
                            return failed(reply_text(error_reply(e)));
                        }
                    }
                }
            },
            message = tokio::time::timeout_at(quiet_since + silence, stream.message()) => {
                match message {
                    Err(_) if waiters.0.is_empty() => return End::Closed,
                    Err(_) if asked => {
                        return failed(format!("{endpoint} left a progress request unanswered"));
                    }
                    Err(_) => {
                        asked = true;
                        quiet_since = tokio::time::Instant::now();
                        if let Err(e) = sender.request_progress().await {
                            return failed(reply_text(error_reply(e)));
                        }
                    }
                    Ok(Err(e)) => return failed(reply_text(error_reply(e))),
                    Ok(Ok(None)) => return failed("watch stream closed"),
                    Ok(Ok(Some(r))) => {
                        asked = false;
                        quiet_since = tokio::time::Instant::now();
                        match dispatch(&r, waiters) {
                            Dispatch::Nothing => {}
                            Dispatch::CancelOnServer(id) => {
                                if let Err(e) = sender.cancel(id).await {
                                    return failed(reply_text(error_reply(e)));
                                }
                            }
                            Dispatch::Failed(why) => return failed(why),
                        }
                    }
                }
            }
        }
    }
}

enum Dispatch {
    Nothing,
    /// The watch was answered; the server still has it.
    CancelOnServer(i64),
    /// The server cancelled a watch for a reason of its own: the member is suspect.
    Failed(String),
}

/// Answers the waiter a response is for.
fn dispatch(r: &WatchResponse, waiters: &mut Waiters) -> Dispatch {
    let id = r.watch_id();
    if r.compact_revision() > 0 {
        // The server cancelled it: the waiter reads the queue again.
        waiters.answer(id, Reply::Compacted);
        return Dispatch::Nothing;
    }
    if r.canceled() {
        if waiters.0.contains_key(&id) {
            return Dispatch::Failed(format!("watch canceled: {}", r.cancel_reason()));
        }
        // Our own cancel, confirmed.
        return Dispatch::Nothing;
    }
    let deleted = r
        .events()
        .iter()
        .any(|e| e.event_type() == EventType::Delete);
    if deleted && waiters.answer(id, Reply::Deleted) {
        return Dispatch::CancelOnServer(id);
    }
    Dispatch::Nothing
}

fn reply_text(reply: Reply) -> String {
    match reply {
        Reply::Unavailable(why) | Reply::Error(why) => why,
        other => format!("{other:?}"),
    }
}
