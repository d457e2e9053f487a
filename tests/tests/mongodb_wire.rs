//! Lucky's MongoDB backend against a wire-protocol mock (`tests/mongo/mock.py`, on PyPI's
//! mockupdb): the exact commands the official driver sends for take, renew, release and
//! inspect (the update pipeline, upsert, write concern, read concern), and how Lucky reads a
//! duplicate key, `NotWritablePrimary`, a write-concern error whose write applied, a document
//! held by another, and garbage. No MongoDB server runs here: what this shows is the encoding
//! and the reading of replies, not the server's evaluation of the pipeline. Skips when
//! mockupdb is missing, unless `LUCKY_REQUIRE_SERVERS=1` (`scripts/services.sh start`
//! installs it).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap and read the clock

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lucky::mongodb::Mongo;
use lucky_tests::servers::required;
use mongodb::bson::{Bson, Document};

/// One mock server, its script and its log of received commands.
struct Mock {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: PathBuf,
}

impl Mock {
    /// Starts the mock with `script` (extended-JSON lines), as a replica-set primary
    /// (`set_name` "rs0") or a standalone server (""). None (skip) without mockupdb.
    fn start(script: &[&str], set_name: &str) -> Option<Mock> {
        let has = Command::new("python3")
            .args(["-c", "import mockupdb"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            assert!(
                !required(),
                "python3 with mockupdb is needed (scripts/services.sh start)"
            );
            eprintln!("skipping: no mockupdb (scripts/services.sh start installs it)");
            return None;
        }
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).unwrap();
        let dir = std::env::temp_dir().join(format!("lucky-mongo-{}", u64::from_le_bytes(id)));
        std::fs::create_dir_all(&dir).unwrap();
        let (script_path, log) = (dir.join("script.jsonl"), dir.join("log.jsonl"));
        std::fs::write(&script_path, script.join("\n")).unwrap();
        let mock = concat!(env!("CARGO_MANIFEST_DIR"), "/mongo/mock.py");
        let mut child = Command::new("python3")
            .arg(mock)
            .arg("--script")
            .arg(&script_path)
            .arg("--log")
            .arg(&log)
            .args(["--set-name", set_name])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap();
        Some(Mock {
            child,
            port,
            log,
            dir,
        })
    }

    fn url(&self, params: &str) -> String {
        format!("mongodb://127.0.0.1:{}/app?{params}", self.port)
    }

    /// Every command received so far whose name is `name`, in order.
    fn received(&self, name: &str) -> Vec<Document> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                Bson::try_from(v).unwrap().as_document().unwrap().clone()
            })
            .filter(|d| d.keys().next().is_some_and(|k| k == name))
            .collect()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A findAndModify answer that grants the document to whoever asked, with `fence`.
fn grant(fence: u64) -> String {
    format!(
        r#"{{"expect": "findAndModify", "reply": {{"ok": 1, "value": {{"_id": "$ID", "owner": "$OWNER", "fence": {{"$numberLong": "{fence}"}}, "left": {{"$numberLong": "2999"}}}}, "lastErrorObject": {{"n": 1, "updatedExisting": true}}}}}}"#
    )
}

const UPDATED: &str = r#"{"expect": "update", "reply": {"ok": 1, "n": 1, "nModified": 1}}"#;

/// A whole number, however the log spelled it (int32 or int64).
fn int(b: &Bson) -> Option<i64> {
    b.as_i64().or(b.as_i32().map(i64::from))
}

fn get<'a>(d: &'a Document, path: &str) -> &'a Bson {
    let mut cur: Option<&Bson> = None;
    let mut doc = d;
    for part in path.split('.') {
        let next = match cur {
            Some(Bson::Array(a)) => a.get(part.parse::<usize>().unwrap()),
            Some(Bson::Document(d)) => d.get(part),
            None => doc.get(part),
            Some(other) => panic!("{path}: {other} has no {part}"),
        };
        cur = Some(next.unwrap_or_else(|| panic!("{path}: no {part} in {d}")));
        if let Some(Bson::Document(d)) = cur {
            doc = d;
        }
    }
    cur.unwrap()
}

#[tokio::test]
async fn take_renew_release_send_the_documented_commands() {
    let Some(mock) = Mock::start(&[&grant(7), UPDATED, UPDATED], "rs0") else {
        return;
    };
    let mongo = Mongo::builder(&mock.url("replicaSet=rs0"))
        .collection("locks")
        .connect()
        .await
        .unwrap();
    assert!(mongo.wakes_waiters(), "a replica set has change streams");
    let guard = mongo
        .lock("jobs")
        .ttl(Duration::from_millis(900))
        .await
        .unwrap();
    assert_eq!(guard.fence().map(|f| f.get()), Some(7));
    // One renewal (every ttl/3), then the release.
    tokio::time::sleep(Duration::from_millis(450)).await;
    guard.release().await.unwrap();

    let takes = mock.received("findAndModify");
    assert_eq!(takes.len(), 1, "{takes:?}");
    let t = &takes[0];
    assert_eq!(get(t, "findAndModify"), &Bson::String("locks".into()));
    assert_eq!(get(t, "$db"), &Bson::String("app".into()));
    assert_eq!(get(t, "query._id"), &Bson::String("jobs".into()));
    assert_eq!(get(t, "upsert"), &Bson::Boolean(true));
    assert_eq!(get(t, "new"), &Bson::Boolean(true));
    assert_eq!(get(t, "writeConcern.w"), &Bson::String("majority".into()));
    assert_eq!(get(t, "writeConcern.j"), &Bson::Boolean(true));
    // wtimeout: half the client's request timeout (the default ttl 30 s: 1.5 s).
    assert_eq!(int(get(t, "writeConcern.wtimeout")), Some(750));
    // The pipeline: one $set of fence, owner and expiresAt, expiry on the server's $$NOW
    // plus the ttl in whole milliseconds, rounded up, plus one.
    let set = get(t, "update.0.$set").as_document().unwrap();
    let keys: Vec<&str> = set.keys().map(String::as_str).collect();
    assert_eq!(keys, ["fence", "owner", "expiresAt"]);
    assert_eq!(
        get(t, "update.0.$set.expiresAt.$cond.1.$add.0"),
        &Bson::String("$$NOW".into())
    );
    assert_eq!(
        int(get(t, "update.0.$set.expiresAt.$cond.1.$add.1")),
        Some(901)
    );
    let owner = get(t, "update.0.$set.owner.$cond.1").clone();
    assert!(matches!(owner, Bson::Binary(_)), "owner is binary: {owner}");
    let fields = get(t, "fields").as_document().unwrap();
    assert!(fields.contains_key("left") && fields.contains_key("fence"));

    let updates = mock.received("update");
    assert_eq!(updates.len(), 2, "one renewal and the release: {updates:?}");
    let renew = &updates[0];
    assert_eq!(get(renew, "updates.0.q._id"), &Bson::String("jobs".into()));
    assert_eq!(get(renew, "updates.0.q.owner"), &owner);
    assert_eq!(
        get(renew, "updates.0.q.$expr.$gt.1"),
        &Bson::String("$$NOW".into())
    );
    assert_eq!(
        int(get(renew, "updates.0.u.0.$set.expiresAt.$add.1")),
        Some(901)
    );
    assert_eq!(
        get(renew, "writeConcern.w"),
        &Bson::String("majority".into())
    );
    let release = &updates[1];
    assert_eq!(get(release, "updates.0.q.owner"), &owner);
    assert_eq!(get(release, "updates.0.u.$set.owner"), &Bson::Null);
    assert_eq!(get(release, "updates.0.u.$set.expiresAt"), &Bson::Null);
    assert_eq!(
        get(release, "writeConcern.w"),
        &Bson::String("majority".into())
    );
    assert!(
        mock.received("delete").is_empty(),
        "a release never deletes"
    );
}

#[tokio::test]
async fn a_write_concern_error_is_settled_by_a_majority_read() {
    let wce = r#"{"expect": "findAndModify", "reply": {"ok": 1, "value": {"_id": "$ID", "owner": "$OWNER", "fence": 3, "left": 2999}, "writeConcernError": {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": true}}}}"#;
    let found = r#"{"expect": "find", "reply": {"ok": 1, "cursor": {"id": {"$numberLong": "0"}, "ns": "app.lucky_locks", "firstBatch": [{"_id": "$ID", "owner": "$OWNER", "fence": 3, "left": 2500}]}}}"#;
    let Some(mock) = Mock::start(&[wce, found, UPDATED], "rs0") else {
        return;
    };
    let mongo = Mongo::connect(&mock.url("replicaSet=rs0")).await.unwrap();
    let guard = mongo
        .lock("jobs")
        .ttl(Duration::from_secs(3))
        .auto_extend(false)
        .await
        .unwrap();
    // The write applied: the majority read found it ours, with its fence.
    assert_eq!(guard.fence().map(|f| f.get()), Some(3));
    guard.release().await.unwrap();
    let finds = mock.received("find");
    assert_eq!(finds.len(), 1, "{finds:?}");
    assert_eq!(get(&finds[0], "filter._id"), &Bson::String("jobs".into()));
    assert_eq!(
        get(&finds[0], "readConcern.level"),
        &Bson::String("majority".into())
    );
    assert!(get(&finds[0], "projection.owner.$cond")
        .as_array()
        .is_some());
}

#[tokio::test]
async fn a_retried_take_answered_with_the_stored_document_is_granted() {
    // The driver retried a take the server had run: the stored post-image comes back,
    // without the computed `left`.
    let stored = r#"{"expect": "findAndModify", "reply": {"ok": 1, "value": {"_id": "$ID", "owner": "$OWNER", "fence": {"$numberLong": "9"}, "expiresAt": {"$date": "2026-12-07T00:00:30Z"}}}}"#;
    let Some(mock) = Mock::start(&[stored, UPDATED], "rs0") else {
        return;
    };
    let mongo = Mongo::connect(&mock.url("replicaSet=rs0")).await.unwrap();
    let guard = mongo.lock("jobs").no_wait().await.unwrap();
    assert_eq!(guard.fence().map(|f| f.get()), Some(9));
    guard.release().await.unwrap();
    assert!(mock.received("find").is_empty(), "no inspect needed");
}

#[tokio::test]
async fn a_network_error_behind_a_mongos_is_an_unknown_outcome() {
    // A mongos lost its shard mid-command: the take may have applied there. Lucky reads.
    let unreachable = r#"{"expect": "findAndModify", "reply": {"ok": 0, "code": 6, "codeName": "HostUnreachable", "errmsg": "shard unreachable"}}"#;
    let found = r#"{"expect": "find", "reply": {"ok": 1, "cursor": {"id": {"$numberLong": "0"}, "ns": "app.lucky_locks", "firstBatch": [{"_id": "$ID", "owner": "$OWNER", "fence": 4, "left": 2900}]}}}"#;
    let Some(mock) = Mock::start(&[unreachable, found, UPDATED], "rs0") else {
        return;
    };
    let mongo = Mongo::connect(&mock.url("replicaSet=rs0")).await.unwrap();
    let guard = mongo.lock("jobs").no_wait().await.unwrap();
    assert_eq!(guard.fence().map(|f| f.get()), Some(4));
    guard.release().await.unwrap();
    assert_eq!(mock.received("find").len(), 1, "settled by a read");
}

#[tokio::test]
async fn a_duplicate_key_is_sent_again_never_a_failure() {
    let dup = r#"{"expect": "findAndModify", "reply": {"ok": 0, "code": 11000, "codeName": "DuplicateKey", "errmsg": "E11000 duplicate key error collection: app.lucky_locks index: _id_ dup key: { _id: \"jobs\" }"}}"#;
    let Some(mock) = Mock::start(&[dup, &grant(2), UPDATED], "") else {
        return;
    };
    let mongo = Mongo::connect(&mock.url("directConnection=true"))
        .await
        .unwrap();
    assert!(
        !mongo.wakes_waiters(),
        "a standalone server has no change streams"
    );
    // A one-shot try: the lost upsert race must not make it fail.
    let guard = mongo.lock("jobs").no_wait().await.unwrap();
    assert_eq!(guard.fence().map(|f| f.get()), Some(2));
    guard.release().await.unwrap();
    assert_eq!(mock.received("findAndModify").len(), 2);
}

#[tokio::test]
async fn not_writable_primary_is_tried_again() {
    let not_primary = r#"{"expect": "findAndModify", "reply": {"ok": 0, "code": 10107, "codeName": "NotWritablePrimary", "errmsg": "not primary"}}"#;
    let Some(mock) = Mock::start(&[not_primary, &grant(5), UPDATED], "rs0") else {
        return;
    };
    let mongo = Mongo::connect(&mock.url("replicaSet=rs0")).await.unwrap();
    let guard = mongo
        .lock("jobs")
        .wait(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(guard.fence().map(|f| f.get()), Some(5));
    guard.release().await.unwrap();
    assert_eq!(mock.received("findAndModify").len(), 2);
}

#[tokio::test]
async fn a_document_held_by_another_is_taken_and_waiters_open_a_change_stream() {
    let held = r#"{"expect": "findAndModify", "reply": {"ok": 1, "value": {"_id": "$ID", "owner": {"$binary": {"base64": "b3RoZXI=", "subType": "00"}}, "fence": 4, "left": 150}}}"#;
    let stream = r#"{"expect": "aggregate", "reply": {"ok": 1, "cursor": {"id": {"$numberLong": "0"}, "ns": "app.lucky_locks", "firstBatch": []}}}"#;
    let Some(mock) = Mock::start(&[held, held, stream, &grant(5), UPDATED], "rs0") else {
        return;
    };
    let mongo = Mongo::connect(&mock.url("replicaSet=rs0")).await.unwrap();
    let err = mongo.lock("jobs").no_wait().await.unwrap_err();
    assert!(err.is_taken(), "{err}");
    let guard = mongo
        .lock("jobs")
        .wait(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(guard.fence().map(|f| f.get()), Some(5));
    guard.release().await.unwrap();
    // The change stream runs in the background: give it a moment to be sent.
    let mut watch = mock.received("aggregate");
    for _ in 0..30 {
        if !watch.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        watch = mock.received("aggregate");
    }
    assert!(!watch.is_empty(), "the waiter opened a change stream");
    assert!(get(&watch[0], "pipeline.0.$changeStream")
        .as_document()
        .is_some());
    let matched = get(&watch[0], "pipeline.1.$match").as_document().unwrap();
    assert_eq!(
        matched.get("updateDescription.updatedFields.owner"),
        Some(&Bson::Document(mongodb::bson::doc! { "$type": "null" }))
    );
    assert_eq!(
        get(&watch[0], "readConcern.level"),
        &Bson::String("majority".into())
    );
    assert!(
        watch[0].get("writeConcern").is_none(),
        "an aggregate without $out carries no write concern"
    );
}

#[tokio::test]
async fn garbage_replies_are_errors_not_panics() {
    let garbage = r#"{"expect": "findAndModify", "reply": {"ok": 1, "value": {"_id": "$ID", "owner": "not binary", "fence": "x"}}}"#;
    let garbage_find = r#"{"expect": "find", "reply": {"ok": 1, "cursor": {"id": {"$numberLong": "0"}, "ns": "app.lucky_locks", "firstBatch": [{"_id": "$ID", "owner": 12, "fence": []}]}}}"#;
    let Some(mock) = Mock::start(&[garbage, garbage_find, garbage, garbage_find], "rs0") else {
        return;
    };
    let mongo = Mongo::connect(&mock.url("replicaSet=rs0")).await.unwrap();
    let r = mongo.lock("jobs").wait(Duration::from_millis(300)).await;
    assert!(r.is_err(), "garbage never grants a lock");
}

#[tokio::test]
async fn weaker_concerns_and_bad_collections_are_refused_before_any_io() {
    for (url, collection) in [
        ("mongodb://127.0.0.1:1/?w=1", "lucky_locks"),
        (
            "mongodb://127.0.0.1:1/?readPreference=secondaryPreferred",
            "lucky_locks",
        ),
        ("mongodb://127.0.0.1:1/", "system.locks"),
        ("mongodb://127.0.0.1:1/", ""),
        ("not a url", "lucky_locks"),
    ] {
        let err = Mongo::builder(url)
            .collection(collection)
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(err, lucky::Error::BadEndpoint { .. }),
            "{url} {collection}: {err}"
        );
    }
    // A password never reaches a message.
    let err = Mongo::connect("mongodb://u:s3cret@127.0.0.1:1/?w=1")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[test]
fn lucky_exec_takes_a_mongodb_lock_and_hands_the_fence_to_the_command() {
    let Some(mock) = Mock::start(&[&grant(11), UPDATED], "rs0") else {
        return;
    };
    let backend = format!(
        "mongodb://127.0.0.1:{}/app?replicaSet=rs0&collection=cli_locks",
        mock.port
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lucky-under-test"))
        .args([
            "exec",
            "--backend",
            &backend,
            "--name",
            "nightly",
            "--no-wait",
        ])
        .args(["--", "sh", "-c", "echo fence=$LUCKY_FENCE"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("fence=11"), "{stdout}");
    let takes = mock.received("findAndModify");
    assert_eq!(
        get(&takes[0], "findAndModify"),
        &Bson::String("cli_locks".into())
    );
    assert_eq!(mock.received("update").len(), 1, "released at the end");
    // Credentials the server refuses (the mock knows no SCRAM): unreachable, exit 69, and
    // the password never printed.
    let with_password = backend.replace("mongodb://", "mongodb://u:s3cret@");
    let out = Command::new(env!("CARGO_BIN_EXE_lucky-under-test"))
        .args(["exec", "--backend", &with_password, "--name", "nightly"])
        .args(["--no-wait", "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("u:***@") && !stderr.contains("s3cret"),
        "{stderr}"
    );
}

/// On a real server, where one exists: `LUCKY_MONGODB_URL` (a replica set, or a standalone
/// server). Skipped unless set; when set, an unreachable server fails it only under
/// `LUCKY_REQUIRE_SERVERS=1`. Not run on the machines this is built on (no server there).
#[tokio::test]
async fn on_a_real_server_fences_rise_and_holders_exclude_each_other() {
    let Ok(url) = std::env::var("LUCKY_MONGODB_URL") else {
        eprintln!("skipping: LUCKY_MONGODB_URL is not set (no real MongoDB server)");
        return;
    };
    let connect = |collection: &'static str| {
        let url = url.clone();
        async move { Mongo::builder(&url).collection(collection).connect().await }
    };
    let a = match connect("lucky_test_locks").await {
        Ok(c) => c,
        Err(e) => {
            assert!(!required(), "MongoDB at LUCKY_MONGODB_URL unreachable: {e}");
            eprintln!("skipping: {e}");
            return;
        }
    };
    let b = connect("lucky_test_locks").await.unwrap();
    let name = format!("real/{}", std::process::id());
    // Fences rise across holders and releases (the document is never deleted).
    let mut last = 0;
    for i in 0..20 {
        let client = if i % 2 == 0 { &a } else { &b };
        let g = client
            .lock(name.clone())
            .ttl(Duration::from_secs(5))
            .await
            .unwrap();
        let fence = g.fence().unwrap().get();
        assert!(fence > last, "fence {fence} after {last}");
        last = fence;
        g.release().await.unwrap();
    }
    // A held lock excludes the other client, and its release lets the waiter in.
    let g = a
        .lock(name.clone())
        .ttl(Duration::from_secs(5))
        .await
        .unwrap();
    let err = b.lock(name.clone()).no_wait().await.unwrap_err();
    assert!(err.is_taken(), "{err}");
    let waiter = tokio::spawn({
        let b = b.clone();
        let name = name.clone();
        async move { b.lock(name).wait(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held_fence = g.fence().unwrap().get();
    g.release().await.unwrap();
    let g2 = waiter.await.unwrap().unwrap();
    assert!(g2.fence().unwrap().get() > held_fence);
    g2.release().await.unwrap();
    // A lock left to expire is taken by the other after its ttl, with a higher fence.
    let g = a
        .lock(name.clone())
        .ttl(Duration::from_millis(800))
        .auto_extend(false)
        .await
        .unwrap();
    let f = g.fence().unwrap().get();
    std::mem::forget(g);
    let g2 = b
        .lock(name.clone())
        .wait(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(g2.fence().unwrap().get() > f);
    g2.release().await.unwrap();
}
