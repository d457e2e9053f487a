//! MongoDB (feature `mongodb`, **experimental**): the lease-record machine of lucky-core on one
//! document per lock name in a collection (default `lucky_locks`, `_id` = the name), judged
//! by the server's `$$NOW`. Checked against a wire-protocol mock and in the simulator's
//! replica-set model; not yet run against a real `mongod` (see the README).
//!
//! ```no_run
//! # async fn f() -> Result<(), lucky::Error> {
//! use std::time::Duration;
//! let mongo = lucky::mongodb::Mongo::connect("mongodb://127.0.0.1:27017/app?replicaSet=rs0").await?;
//! let guard = mongo.lock("jobs/nightly").ttl(Duration::from_secs(30)).await?;
//! let fence = guard.fence(); // rises with every new holder of the name, never reset
//! guard.release().await?;
//! # let _ = fence;
//! # Ok(()) }
//! ```
//!
//! A document is `{ _id: name, owner: BinData, fence: long, expiresAt: date }`:
//! - **take** is one `findAndModify` with `upsert` and an update pipeline that takes the
//!   document when it is free, expired on `$$NOW`, or already ours, raises the fence only on a
//!   takeover, and returns owner, fence and time left. Two processes upserting a new name at
//!   once: the loser's duplicate-key error (E11000) inserted nothing, and its take is sent
//!   again (it then finds the document), never reported as a failure (servers since 4.2
//!   retry this themselves);
//! - **renew** and **release** are `update`s filtered on our owner; release clears the owner
//!   and keeps the document (no TTL index, never a delete), so fences never restart;
//! - every write is `w: "majority", j: true` with a `wtimeout` of half the request timeout, and reads
//!   are read concern `majority` on the primary: a holder is told it holds only once a majority
//!   has the write, so a failover cannot roll its lock back. A write-concern error or timeout
//!   is an unknown outcome (the write may have applied), settled by the machine with a
//!   majority read before anything is claimed. A URL asking for a weaker write concern
//!   (`w=1`, `journal=false`), another read concern, or reads from secondaries is refused.
//! - waiting: on a replica set or sharded cluster, one change stream per client wakes the
//!   longest local waiter of a released name; a standalone server has no change streams, so
//!   waiters retry after their delay, or when the holder's document runs out.
//! - **a sharded cluster** judges `$$NOW` on the clock of the mongos that routes each
//!   command: every router's clock must agree within the drift allowance (or connect through
//!   one mongos). Its change streams can deliver a release up to ~10 s late (idle shards);
//!   waiters then retry on their own timers.
//!
//! The database is the URL's (`mongodb://host/app`), else `lucky`. TLS, credentials and
//! `mongodb+srv://` are the driver's own URL options (`tls=true&tlsCAFile=/path/ca.pem`);
//! TLS is rustls with ring, as every other backend here.

mod transport;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, ReadConcern, ReadConcernLevel,
    ReadPreference, SelectionCriteria, WriteConcern,
};

use crate::client::{self, sealed, LockFuture, Options};
use crate::clock::Clock;
use crate::driver::{self, Tasks};
use crate::lease_family::{self, LeaseExtra, Route};
pub use crate::{Error, Guard};
use transport::Db;

/// Configures a [`Mongo`] client before connecting.
pub type MongoBuilder = crate::Builder<Mongo>;
/// One lock request of a [`Mongo`] client; `.await` it to acquire.
pub type LockRequest<'a> = crate::LockRequest<'a, Mongo>;

/// Where a MongoDB client keeps its locks.
#[derive(Clone, Debug)]
pub struct MongoSetup {
    collection: String,
}

impl Default for MongoSetup {
    fn default() -> Self {
        MongoSetup {
            collection: "lucky_locks".into(),
        }
    }
}

/// A MongoDB lock client. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Mongo {
    db: Arc<Db>,
    clock: Clock,
    defaults: Options<LeaseExtra>,
}

impl Mongo {
    /// Connects with the default settings (collection `lucky_locks`).
    pub async fn connect(url: &str) -> Result<Mongo, Error> {
        Mongo::builder(url).connect().await
    }

    /// Starts configuring a client for `url` (`mongodb://user:password@host:port/db?...` or
    /// `mongodb+srv://...`, the driver's own URL syntax).
    pub fn builder(url: &str) -> MongoBuilder {
        MongoBuilder::new([url])
    }

    /// Asks for the lock `name`; configure it, then `.await` it.
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest::new(self, name.into())
    }

    /// Waits, at most `timeout`, until every background task of this client has finished.
    pub async fn close(&self, timeout: Duration) -> bool {
        client::close(self, timeout).await
    }

    /// The collection the locks live in.
    pub fn collection(&self) -> &str {
        self.db.coll.name()
    }

    /// Whether waiters are woken by a change stream (a replica set or sharded cluster), rather
    /// than retrying after their delay (a standalone server).
    pub fn wakes_waiters(&self) -> bool {
        self.db.streams
    }
}

impl MongoBuilder {
    /// The collection (default `lucky_locks`): 1 to 120 bytes, no `$` or NUL, not `system.*`.
    pub fn collection(mut self, name: impl Into<String>) -> Self {
        self.setup.collection = name.into();
        self
    }
}

/// Whether `name` can be a collection of Lucky's.
fn check_collection(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 120 || name.contains(['$', '\0']) {
        return Err(format!(
            "collection {name:?}: 1 to 120 bytes, without '$' or NUL"
        ));
    }
    if name.starts_with("system.") {
        return Err(format!("collection {name:?}: system.* is the server's"));
    }
    Ok(())
}

/// Refuses what would make a lease unsafe: a write concern weaker than majority, a read
/// concern other than majority, reads from secondaries.
fn check_concerns(o: &ClientOptions) -> Result<(), String> {
    if let Some(wc) = &o.write_concern {
        if wc
            .w
            .as_ref()
            .is_some_and(|w| *w != Acknowledgment::Majority)
        {
            return Err(format!(
                "w={:?}: Lucky writes with w=majority only (a write acknowledged by the primary \
                 alone is rolled back by a failover, and two holders overlap)",
                wc.w
            ));
        }
        if wc.journal == Some(false) {
            return Err("journal=false: Lucky's writes must be durable on a majority".into());
        }
    }
    if let Some(rc) = &o.read_concern {
        if rc.level != ReadConcernLevel::Majority {
            return Err(format!(
                "readConcernLevel={:?}: Lucky reads with majority only (it settles unknown \
                 outcomes by reading what a failover keeps)",
                rc.level
            ));
        }
    }
    if let Some(sc) = &o.selection_criteria {
        if !matches!(
            sc,
            SelectionCriteria::ReadPreference(ReadPreference::Primary)
        ) {
            return Err("readPreference: Lucky reads from the primary only".into());
        }
    }
    Ok(())
}

impl sealed::Client for Mongo {
    type Extra = LeaseExtra;
    type Setup = MongoSetup;

    fn default_extra() -> LeaseExtra {
        LeaseExtra::default()
    }

    async fn connect(b: MongoBuilder) -> Result<Mongo, Error> {
        let cfg = lease_family::config(&b.defaults)?;
        let bad = |endpoint: &str, reason: String| Error::BadEndpoint {
            backend: "MongoDB",
            endpoint: crate::redact(endpoint),
            reason,
        };
        let [url] = &b.targets[..] else {
            return Err(bad(
                &b.targets.join(","),
                "give exactly one connection URL".into(),
            ));
        };
        check_collection(&b.setup.collection).map_err(|r| bad(url, r))?;
        // A mongodb+srv:// URL is resolved here (DNS): bounded by the connect timeout.
        let mut opts = tokio::time::timeout(b.connect_timeout, ClientOptions::parse(url))
            .await
            .map_err(|_| {
                bad(
                    url,
                    format!("URL not resolved within {:?}", b.connect_timeout),
                )
            })?
            .map_err(|e| bad(url, transport::message(&e)))?;
        check_concerns(&opts).map_err(|r| bad(url, r))?;
        if opts.app_name.is_none() {
            opts.app_name = Some("lucky".into());
        }
        opts.connect_timeout = Some(b.connect_timeout);
        opts.server_selection_timeout = Some(b.connect_timeout);
        let database = opts.default_database.clone().unwrap_or("lucky".into());
        let client =
            mongodb::Client::with_options(opts).map_err(|e| bad(url, transport::message(&e)))?;
        let db = client.database(&database);
        // A majority write that cannot be confirmed within half a request's time is answered
        // as such (an unknown outcome) before the machine's own deadline.
        let concerns = CollectionOptions::builder()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    // Journaled on the majority, even where `writeConcernMajorityJournalDefault`
                    // is off: a majority that crashes at once still keeps the take.
                    .journal(true)
                    .w_timeout((cfg.op_timeout() / 2).max(Duration::from_millis(1)))
                    .build(),
            )
            .read_concern(ReadConcern::majority())
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .build();
        let coll = db.collection_with_options(&b.setup.collection, concerns);
        // The change stream's own handle: no write concern, which an aggregate without $out
        // or $merge must not carry.
        let watched = db.collection_with_options(
            &b.setup.collection,
            CollectionOptions::builder()
                .read_concern(ReadConcern::majority())
                .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                .build(),
        );
        // The deployment's shape: a replica set (setName) or a mongos (msg: isdbgrid) has
        // change streams; a standalone server does not.
        let hello =
            tokio::time::timeout(b.connect_timeout, db.run_command(doc! { "hello": 1 })).await;
        let hello = match hello {
            Ok(Ok(h)) => h,
            failed => {
                let details = match failed {
                    Ok(Err(e)) => transport::message(&e),
                    _ => format!("no answer within {:?}", b.connect_timeout),
                };
                return Err(Error::Unreachable {
                    backend: "MongoDB",
                    reachable: 0,
                    total: 1,
                    needed: 1,
                    details: format!("{}: {}", crate::redact(url), crate::redact(&details)),
                });
            }
        };
        let streams = hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid");
        Ok(Mongo {
            db: Arc::new(Db {
                coll,
                watched,
                streams,
                listening: AtomicBool::new(false),
                tasks: Arc::default(),
                hints: Arc::default(),
            }),
            clock: Clock::new(),
            defaults: b.defaults,
        })
    }

    fn defaults(&self) -> &Options<LeaseExtra> {
        &self.defaults
    }

    fn start(
        &self,
        name: String,
        options: &Options<LeaseExtra>,
    ) -> Result<LockFuture<'static>, Error> {
        let machine = lease_family::machine(&lease_family::config(options)?, &name)?;
        let transport = Arc::new(Route::new(self.db.clone()));
        Ok(Box::pin(driver::acquire(
            machine,
            transport,
            self.clock,
            name,
            None,
            options.lease.wait,
        )))
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.db.tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_are_checked() {
        assert!(check_collection("lucky_locks").is_ok());
        assert!(check_collection("locks.v2").is_ok());
        for bad in ["", "a$b", "a\0b", "system.locks", &"x".repeat(121)] {
            assert!(check_collection(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn weaker_concerns_are_refused() {
        for (url, ok) in [
            ("mongodb://h/?w=majority", true),
            ("mongodb://h/", true),
            ("mongodb://h/?readConcernLevel=majority", true),
            ("mongodb://h/?w=1", false),
            ("mongodb://h/?w=2", false),
            ("mongodb://h/?journal=false", false),
            ("mongodb://h/?readConcernLevel=local", false),
            ("mongodb://h/?readPreference=secondary", false),
        ] {
            let o = ClientOptions::parse(url).await.expect(url);
            assert_eq!(check_concerns(&o).is_ok(), ok, "{url}");
        }
    }
}
