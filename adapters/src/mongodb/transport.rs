//! The MongoDB transport: the lease-record machine's commands as single-document writes on a
//! collection (`_id` = lock name), judged by the server's `$$NOW` (no client clock), with
//! every write at `w: "majority"` and every read at read concern `majority`, so what a
//! holder was told survives a failover, and a failover never hands out what a majority did not
//! see. Waiting is woken by a change stream on a replica set or sharded cluster; a standalone
//! server has none, so waiters retry after their delay or when the holder's document runs out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lucky_core::lease::{Command, Reply};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ReturnDocument;
use mongodb::Collection;

use crate::driver;
use crate::hints::Hints;
use crate::lease_family::{text, Failure, Store};

/// The server's code for a duplicate key: two concurrent upserts of one new `_id`, where the
/// loser inserted nothing. Its retry finds the document and takes the update path. Servers
/// since 4.2 retry such an upsert on `_id` themselves; this covers older ones.
const DUPLICATE_KEY: i32 = 11000;
/// How often a take that lost an upsert race is sent again (the document exists after the
/// first: the retry cannot race again unless someone deletes documents, which Lucky never does).
const UPSERT_RETRIES: usize = 3;

/// Command error codes after which a write may have applied: HostUnreachable,
/// HostNotFound, NetworkTimeout, SocketException (a mongos lost its shard mid-command),
/// ShutdownInProgress, InterruptedAtShutdown, InterruptedDueToReplStateChange,
/// PrimarySteppedDown, ExceededTimeLimit, MaxTimeMSExpired.
const MAYBE_APPLIED: [i32; 10] = [6, 7, 89, 9001, 91, 11600, 11602, 189, 262, 50];

/// The collection every lock of a client shares.
pub(super) struct Db {
    /// Writes at w: majority, reads at majority.
    pub(super) coll: Collection<Document>,
    /// The same collection for the change stream (majority reads, no write concern).
    pub(super) watched: Collection<Document>,
    /// A replica set or sharded cluster: change streams can wake waiters.
    pub(super) streams: bool,
    pub(super) listening: AtomicBool,
    pub(super) tasks: Arc<driver::Tasks>,
    pub(super) hints: Arc<Hints>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("collection", &self.coll.name())
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

/// A ttl as whole milliseconds for `$$NOW + ttl` (`$$NOW` counts milliseconds): rounded up,
/// plus one for the part of the current millisecond `$$NOW` dropped, so the document never
/// expires before `ttl` after the command ran (the holder's validity is counted from before
/// it was sent).
pub(super) fn ttl_ms(ttl: Duration) -> i64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).unwrap_or(i64::MAX - 1).saturating_add(1)
}

/// The owner as BSON (generic binary).
fn owner_bson(owner: &[u8]) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: owner.to_vec(),
    }
}

/// `left`: the owner's time left on the server's clock, in milliseconds (0 when free).
fn left_ms() -> Document {
    doc! { "$max": [0_i64, { "$subtract": [{ "$ifNull": ["$expiresAt", "$$NOW"] }, "$$NOW"] }] }
}

/// The take: one update pipeline that takes the document if it is free (no owner), expired,
/// or already `owner`'s. One `$set` stage: every expression reads the document as it was.
/// The fence rises only when the owner changes (a takeover), never on a retake.
pub(super) fn take_update(owner: &[u8], ttl: Duration) -> Vec<Document> {
    let owner = owner_bson(owner);
    let ours = doc! { "$eq": ["$owner", owner.clone()] };
    let live = doc! { "$gt": ["$expiresAt", "$$NOW"] };
    let may = doc! { "$or": [
        { "$eq": [{ "$ifNull": ["$owner", Bson::Null] }, Bson::Null] },
        { "$not": [live] },
        ours.clone(),
    ] };
    vec![doc! { "$set": {
        "fence": { "$cond": [
            may.clone(),
            { "$cond": [ours, "$fence", { "$add": [{ "$ifNull": ["$fence", 0_i64] }, 1_i64] }] },
            "$fence",
        ] },
        "owner": { "$cond": [may.clone(), owner, "$owner"] },
        "expiresAt": { "$cond": [may, { "$add": ["$$NOW", ttl_ms(ttl)] }, "$expiresAt"] },
    } }]
}

/// What a take returns: the owner, the fence, and the time left.
pub(super) fn take_projection() -> Document {
    doc! { "owner": 1, "fence": 1, "left": left_ms() }
}

/// The renewal's filter: ours and not expired on the server's clock.
pub(super) fn renew_filter(name: &str, owner: &[u8]) -> Document {
    doc! {
        "_id": name,
        "owner": owner_bson(owner),
        "$expr": { "$gt": ["$expiresAt", "$$NOW"] },
    }
}

/// The renewal: the expiry moves to `ttl` from the server's now.
pub(super) fn renew_update(ttl: Duration) -> Vec<Document> {
    vec![doc! { "$set": { "expiresAt": { "$add": ["$$NOW", ttl_ms(ttl)] } } }]
}

/// The release's filter: ours (live or expired).
pub(super) fn release_filter(name: &str, owner: &[u8]) -> Document {
    doc! { "_id": name, "owner": owner_bson(owner) }
}

/// The release: clears the owner and keeps the document, so the fence never restarts.
pub(super) fn release_update() -> Document {
    doc! { "$set": { "owner": Bson::Null, "expiresAt": Bson::Null } }
}

/// What an inspect returns: the live owner (null when free or expired), the fence, the time
/// left.
pub(super) fn inspect_projection() -> Document {
    doc! {
        "owner": { "$cond": [{ "$gt": ["$expiresAt", "$$NOW"] }, "$owner", Bson::Null] },
        "fence": 1,
        "left": left_ms(),
    }
}

/// The change-stream filter that marks a release: an update that set `owner` to null.
pub(super) fn release_events() -> Vec<Document> {
    vec![doc! { "$match": {
        "operationType": "update",
        "updateDescription.updatedFields.owner": { "$type": "null" },
    } }]
}

/// A driver error as the machine's kind of failure.
fn failure(e: &mongodb::error::Error) -> Failure {
    let m = message(e);
    match &*e.kind {
        // No server to send it to.
        ErrorKind::ServerSelection { .. } => Failure::NotSent(m),
        // Refused before anything was sent.
        ErrorKind::InvalidArgument { .. }
        | ErrorKind::Authentication { .. }
        | ErrorKind::BsonSerialization(_)
        | ErrorKind::InvalidTlsConfig { .. }
        | ErrorKind::IncompatibleServer { .. } => Failure::NotSent(m),
        // A network error between a mongos and its shard, a primary stepping down or
        // shutting down, a time limit: the write may have applied.
        ErrorKind::Command(c) if MAYBE_APPLIED.contains(&c.code) => Failure::Unknown(m),
        _ if e.contains_label("RetryableWriteError") => Failure::Unknown(m),
        // The server refused the command itself: a single-document write refused so applied
        // nothing.
        ErrorKind::Command(_) | ErrorKind::Write(WriteFailure::WriteError(_)) => {
            Failure::Refused(m)
        }
        // The write applied on the primary, but a majority did not confirm it in time (or the
        // primary stepped down while waiting): it may survive, or be rolled back.
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => Failure::Unknown(m),
        // A broken connection, an unreadable answer, anything else after sending.
        _ => Failure::Unknown(m),
    }
}

/// The server's code, for a command or write error.
fn code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// A driver error as a message (the server's words, with its code, when it answered).
pub(super) fn message(e: &mongodb::error::Error) -> String {
    match &*e.kind {
        ErrorKind::Command(c) => format!("{} ({} {})", c.message, c.code, c.code_name),
        ErrorKind::Write(WriteFailure::WriteError(w)) => format!("{} ({})", w.message, w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            format!("write concern: {} ({} {})", w.message, w.code, w.code_name)
        }
        _ => crate::redact(&e.to_string()),
    }
}

/// A whole number from a document field the server computed (int32, int64, or a double).
fn number(d: &Document, field: &str) -> Option<i64> {
    match d.get(field)? {
        Bson::Int64(v) => Some(*v),
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Double(v) if v.is_finite() => Some(*v as i64),
        Bson::Null => Some(0),
        _ => None,
    }
}

/// The owner field: binary, or null/missing for none.
fn owner_of(d: &Document) -> Result<Option<Bytes>, String> {
    match d.get("owner") {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Binary(b)) => Ok(Some(Bytes::copy_from_slice(&b.bytes))),
        Some(other) => Err(format!("owner is a {:?}, not binary", other.element_type())),
    }
}

/// A document's fence and time left, or what is wrong with it.
fn fence_and_left(d: &Document) -> Result<(u64, Duration), String> {
    let fence = number(d, "fence").ok_or("no numeric fence")?;
    let left = number(d, "left").ok_or("no numeric time left")?;
    Ok((
        u64::try_from(fence).map_err(|_| format!("negative fence {fence}"))?,
        Duration::from_millis(u64::try_from(left).unwrap_or(0)),
    ))
}

impl Db {
    async fn run(&self, command: Command) -> Reply {
        let is_read = matches!(command, Command::Inspect { .. });
        self.execute(command)
            .await
            .unwrap_or_else(|f| f.reply(is_read))
    }

    async fn execute(&self, command: Command) -> Result<Reply, Failure> {
        Ok(match command {
            Command::Take { name, owner, ttl } => {
                let n = text(&name)?;
                let mut tries = 0;
                let doc = loop {
                    let r = self
                        .coll
                        .find_one_and_update(doc! { "_id": n }, take_update(&owner, ttl))
                        .upsert(true)
                        .return_document(ReturnDocument::After)
                        .projection(take_projection())
                        .await;
                    match r {
                        Err(e) if code(&e) == Some(DUPLICATE_KEY) && tries < UPSERT_RETRIES => {
                            tries += 1;
                        }
                        Err(e) => return Err(failure(&e)),
                        Ok(d) => break d,
                    }
                };
                // A write answered with something unreadable may still have applied.
                let bad = |m: String| Failure::Unknown(format!("unexpected take reply: {m}"));
                let doc = doc.ok_or_else(|| bad("no document after an upsert".into()))?;
                if owner_of(&doc).map_err(bad)?.as_deref() == Some(&owner[..]) {
                    // Ours. A take the driver retried after the server had run it comes back
                    // as the stored document, without the projection: only the fence counts.
                    let fence = number(&doc, "fence").ok_or_else(|| bad("no fence".into()))?;
                    let fence = u64::try_from(fence).map_err(|_| bad(format!("fence {fence}")))?;
                    Reply::Granted { fence }
                } else {
                    let (_, left) = fence_and_left(&doc).map_err(bad)?;
                    Reply::Held { left }
                }
            }
            Command::Renew { name, owner, ttl } => {
                let n = text(&name)?;
                let r = self
                    .coll
                    .update_one(renew_filter(n, &owner), renew_update(ttl))
                    .await
                    .map_err(|e| failure(&e))?;
                if r.matched_count == 1 {
                    Reply::Renewed
                } else {
                    Reply::NotOwner
                }
            }
            Command::Release { name, owner } => {
                let n = text(&name)?;
                let r = self
                    .coll
                    .update_one(release_filter(n, &owner), release_update())
                    .await
                    .map_err(|e| failure(&e))?;
                if r.matched_count == 1 {
                    // Wake this process's longest waiter now; other processes hear it from
                    // their change stream.
                    self.hints.notify(&name);
                    Reply::Released
                } else {
                    Reply::NotOwner
                }
            }
            Command::Inspect { name } => {
                let n = text(&name)?;
                let doc = self
                    .coll
                    .find_one(doc! { "_id": n })
                    .projection(inspect_projection())
                    .await
                    .map_err(|e| failure(&e))?;
                let bad = |m: String| Failure::Refused(format!("unexpected inspect reply: {m}"));
                match doc {
                    None => Reply::State {
                        owner: None,
                        fence: 0,
                        left: Duration::ZERO,
                    },
                    Some(d) => {
                        let (fence, left) = fence_and_left(&d).map_err(bad)?;
                        let owner = owner_of(&d).map_err(bad)?;
                        Reply::State {
                            left: if owner.is_some() {
                                left
                            } else {
                                Duration::ZERO
                            },
                            owner,
                            fence,
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

    /// On a replica set or sharded cluster, one change stream per client wakes the longest
    /// local waiter of a released name; it restarts after a break, and ends with the client.
    fn listen(self: &Arc<Self>) {
        if !self.streams || self.listening.swap(true, Ordering::AcqRel) {
            return;
        }
        let db = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(d) = db.upgrade() else { return };
                let (coll, hints) = (d.watched.clone(), d.hints.clone());
                drop(d);
                let _ = watch_once(&coll, &hints, &db).await;
                // Broken: try again shortly, unless the client is gone.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

/// One change stream, until it breaks or the client is gone.
async fn watch_once(
    coll: &Collection<Document>,
    hints: &Hints,
    db: &std::sync::Weak<Db>,
) -> Result<(), mongodb::error::Error> {
    let mut stream = coll
        .watch()
        .pipeline(release_events())
        .max_await_time(Duration::from_secs(1))
        .await?;
    loop {
        // A closed cursor (the server ended the stream) answers nothing more: open another.
        if db.strong_count() == 0 || !stream.is_alive() {
            return Ok(());
        }
        // Returns at least once per max_await_time, so a dropped client is noticed.
        if let Some(event) = stream.next_if_any().await? {
            if let Some(Ok(name)) = event.document_key.as_ref().map(|k| k.get_str("_id")) {
                hints.notify(name.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_and_covers_the_dropped_millisecond() {
        assert_eq!(ttl_ms(Duration::from_millis(30_000)), 30_001);
        assert_eq!(ttl_ms(Duration::from_micros(1_500)), 3);
        assert_eq!(ttl_ms(Duration::from_nanos(1)), 2);
        assert_eq!(ttl_ms(Duration::MAX), i64::MAX);
    }

    #[test]
    fn documents_are_read_without_panicking_on_garbage() {
        let good = doc! { "owner": owner_bson(b"me"), "fence": 7_i64, "left": 1500_i32 };
        assert_eq!(fence_and_left(&good), Ok((7, Duration::from_millis(1500))));
        assert_eq!(owner_of(&good), Ok(Some(Bytes::from_static(b"me"))));
        let free = doc! { "owner": Bson::Null, "fence": 3.0, "left": 0_i64 };
        assert_eq!(fence_and_left(&free), Ok((3, Duration::ZERO)));
        assert_eq!(owner_of(&free), Ok(None));
        for bad in [
            doc! { "owner": "me", "fence": 1, "left": 0 },
            doc! { "fence": "x", "left": 0 },
            doc! { "fence": -1_i64, "left": 0 },
            doc! { "fence": 1 },
        ] {
            assert!(
                fence_and_left(&bad).is_err() || owner_of(&bad).is_err(),
                "{bad}"
            );
        }
    }
}
