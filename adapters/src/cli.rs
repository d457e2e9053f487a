//! `lucky`: run a command under a distributed lock (like flock(1), `etcdctl lock` and
//! `consul lock`), or run the simulator.
//!
//! Exit codes: the command's own status; 75 not acquired within the wait; 76 the lock was lost
//! while the command ran (it got SIGTERM, then SIGKILL after the grace period); 69 backend
//! unreachable; 64 usage error; 127/126 the command could not be started; 128+N killed by
//! signal N.
#![allow(clippy::disallowed_methods)] // a command-line tool reads the clock and sleeps

use std::process::ExitCode;
use std::time::Duration;

use crate::etcd::Etcd;
use crate::redis::Redis;
use crate::{Error, ErrorKind, Guard, LockFuture, Locker, WaitFor};
use tokio::signal::unix::{signal, SignalKind};

const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;
const EX_LOST: u8 = 76;

const USAGE: &str = "usage:
  lucky exec --backend URL --name NAME [--ttl 30s] [--wait 10s | --wait forever | --no-wait]
             [--grace 10s] -- CMD [ARGS...]
  lucky sim list | run ... | sweep ...     (the simulator; `lucky sim --help`)
  lucky --help";

const EXEC_HELP: &str = "lucky exec: run CMD while holding the distributed lock NAME.

  --backend URL   redis://host:port[,host:port...]   one node, or several (Redis; use 3 or 5)
                  redis://:password@host:port,...    credentials apply to every node
                  rediss://host:port,...             Redis over TLS (system roots, or
                                                     the CA file named by SSL_CERT_FILE)
                  etcd://host:2379[,host:2379...]    etcd lease lock (etcdctl lock compatible)
                  etcd://user:password@host:2379     etcd authentication
                  etcds://host:2379?cacert=/path/ca.pem   etcd over TLS
                  postgres://user:pw@host:5432/db[?table=lucky_locks&mode=lease]
                                                     lease rows in a PostgreSQL table
                  postgres://...?mode=advisory       PostgreSQL advisory locks (an integer
                                                     name is the key; psql's
                                                     pg_advisory_lock excludes it)
                  postgres://...?sslmode=require[&cacert=/path/ca.pem]   over TLS
                  mysql://user:pw@host:3306/db[?table=lucky_locks&mode=lease]
                                                     lease rows in a MySQL/MariaDB table
                  mysql://...?mode=get_lock          MySQL named locks (GET_LOCK)
                  mongodb://user:pw@host:27017/db[?replicaSet=rs0&collection=lucky_locks]
                                                     lease documents in a MongoDB
                                                     collection (experimental; also
                                                     mongodb+srv://, tls=true&tlsCAFile=)
                  file:///var/lock/app               lock files on this machine (flock:
                                                     flock(1) on <dir>/<name>.lock
                                                     excludes it)
                  mysql://...?require_ssl=true[&cacert=/path/ca.pem]   over TLS
                  zk://host:2181[,host:2181...][/root][?tick=2s&sync_limit=5]
                                                     ZooKeeper (Curator's and kazoo's lock
                                                     recipes exclude it); the ensemble's
                                                     tickTime and syncLimit, or
                  zk://host:2181?standalone=true     a single server
  --name NAME     the lock name
  --ttl D         lease time to live, renewed while CMD runs (default 30s)
  --wait D        how long to wait for the lock (default: forever, as flock)
  --wait forever  wait until acquired
  --no-wait       fail at once (exit 75) if the lock is held
  --grace D       after the lock is lost: SIGTERM, then SIGKILL after D (default 10s)
  Durations: 500ms, 30s, 2m, 1h (a bare number is seconds).

CMD runs with LUCKY_LOCK_NAME and LUCKY_FENCE (a fencing token that grows with every new
holder; pass it to the resource you write to) in its environment. SIGINT and SIGTERM sent to
lucky go to CMD; the lock is released when CMD exits.

Exit status: CMD's own; 75 not acquired within the wait; 76 lock lost while CMD ran;
69 backend unreachable; 64 usage error; 127 CMD not found; 126 CMD not executable.

Examples:
  lucky exec --backend redis://10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379 --name nightly-report \\
      --ttl 1m -- ./report.sh
  lucky exec --backend etcd://127.0.0.1:2379 --name migrations --no-wait -- ./migrate up";

/// The `lucky` command line: reads the process's arguments, returns its exit status. The
/// `lucky` binary is this function; the test suite builds it as a binary of its own too.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("exec") => exec_main(&args[1..]),
        Some("sim") => lucky_sim::cli::main("lucky sim", &args[1..], lucky_sim::cli::Style::Table),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}\n\n{EXEC_HELP}");
            ExitCode::SUCCESS
        }
        Some(other) => usage_error(&format!("unknown command {other:?}")),
        None => usage_error("no command"),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("lucky: {msg}\n{USAGE}");
    ExitCode::from(EX_USAGE)
}

#[derive(Debug)]
struct Exec {
    backend: BackendUrl,
    name: String,
    ttl: Duration,
    wait: WaitFor,
    grace: Duration,
    cmd: Vec<String>,
}

/// A `--backend` value: one scheme, its hosts, and what the scheme reads from the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BackendUrl {
    scheme: String,
    userinfo: Option<String>,
    hosts: Vec<String>,
    path: Option<String>,
    query: Option<String>,
}

/// A connection in progress to a backend named by URL.
type Connecting = LockFuture<'static, Result<Box<dyn Locker>, Error>>;

/// What an etcd URL carries besides its hosts: credentials and a CA file.
struct EtcdParams {
    user: Option<(String, String)>,
    ca: Option<String>,
}

/// One backend on the command line: its URL schemes, what it refuses in a URL (a usage
/// error, before any IO), and how it connects. Adding a backend adds one row to [`SCHEMES`].
struct Scheme {
    names: &'static [&'static str],
    check: fn(&BackendUrl) -> Result<(), String>,
    connect: fn(BackendUrl) -> Connecting,
}

const SCHEMES: &[Scheme] = &[
    Scheme {
        names: &["redis", "rediss"],
        check: redis_check,
        connect: redis_connect,
    },
    Scheme {
        names: &["etcd", "etcds"],
        check: etcd_check,
        connect: etcd_connect,
    },
    Scheme {
        names: &["postgres", "postgresql"],
        check: sql_check,
        connect: postgres_connect,
    },
    Scheme {
        names: &["mysql", "mariadb"],
        check: sql_check,
        connect: mysql_connect,
    },
    Scheme {
        names: &["mongodb", "mongodb+srv"],
        check: mongo_check,
        connect: mongo_connect,
    },
    Scheme {
        names: &["file"],
        check: file_check,
        connect: file_connect,
    },
    Scheme {
        names: &["zk", "zookeeper"],
        check: zk_check,
        connect: zk_connect,
    },
];

/// What a ZooKeeper URL carries besides its servers: the lock root (its path) and the
/// ensemble's timing (`?standalone=true`, or `?tick=2s&sync_limit=5`).
struct ZkParams {
    root: Option<String>,
    standalone: bool,
    tick: Option<Duration>,
    sync_limit: Option<u32>,
}

/// `zk://host:port,host:port/root?standalone=true|tick=D&sync_limit=N`.
fn zk_params(u: &BackendUrl) -> Result<ZkParams, String> {
    if u.userinfo.is_some() {
        return Err("zk:// takes no credentials (ZooKeeper auth is not supported)".into());
    }
    if u.hosts.is_empty() {
        return Err("zk:// needs at least one host:port".into());
    }
    let root = u
        .path
        .as_ref()
        .filter(|p| !p.is_empty())
        .map(|p| format!("/{p}"));
    let mut p = ZkParams {
        root,
        standalone: false,
        tick: None,
        sync_limit: None,
    };
    for kv in u.query.iter().flat_map(|q| q.split('&')) {
        match kv.split_once('=') {
            Some(("standalone", v)) => {
                p.standalone = v
                    .parse()
                    .map_err(|_| format!("standalone={v}: true or false"))?
            }
            Some(("tick", v)) => {
                p.tick = Some(parse_duration(v).map_err(|e| format!("tick={v}: {e}"))?)
            }
            Some(("sync_limit", v)) => {
                p.sync_limit = Some(v.parse().map_err(|_| format!("sync_limit={v}: a number"))?)
            }
            _ => {
                return Err(format!(
                    "unknown zk URL parameter {kv:?} (standalone=, tick=, sync_limit=)"
                ))
            }
        }
    }
    if p.standalone && (p.tick.is_some() || p.sync_limit.is_some()) {
        return Err("standalone=true leaves no tick= or sync_limit= to give".into());
    }
    Ok(p)
}

fn zk_check(u: &BackendUrl) -> Result<(), String> {
    zk_params(u).map(|_| ())
}

fn zk_connect(u: BackendUrl) -> Connecting {
    Box::pin(async move {
        let p = zk_params(&u).map_err(|reason| Error::BadEndpoint {
            backend: "zookeeper",
            endpoint: u.hosts.join(","),
            reason,
        })?;
        let mut b = crate::zookeeper::ZooKeeper::builder(&u.hosts);
        if let Some(root) = p.root {
            b = b.root(root);
        }
        if p.standalone {
            b = b.standalone();
        } else if p.tick.is_some() || p.sync_limit.is_some() {
            b = b.ensemble(
                p.tick.unwrap_or(Duration::from_secs(2)),
                p.sync_limit.unwrap_or(5),
            );
        }
        let c = b.connect().await?;
        Ok(Box::new(c) as Box<dyn Locker>)
    })
}

/// `file:///dir` (or `file://localhost/dir`): lock files in `/dir`; `?allow_network_fs=true`.
fn file_check(u: &BackendUrl) -> Result<(), String> {
    file_params(u).map(|_| ())
}

fn file_params(u: &BackendUrl) -> Result<(String, bool), String> {
    if !u.hosts.is_empty() || u.userinfo.is_some() {
        return Err("file:// takes a local directory: file:///path/to/dir".into());
    }
    let dir = match &u.path {
        Some(p) if !p.is_empty() => format!("/{p}"),
        _ => return Err("file:// needs a directory: file:///path/to/dir".into()),
    };
    let mut network = false;
    for kv in u.query.iter().flat_map(|q| q.split('&')) {
        match kv {
            "allow_network_fs=true" => network = true,
            "allow_network_fs=false" => network = false,
            other => return Err(format!("unknown file:// parameter {other:?}")),
        }
    }
    Ok((dir, network))
}

fn file_connect(u: BackendUrl) -> Connecting {
    Box::pin(async move {
        let (dir, network) = file_params(&u).map_err(|reason| Error::BadEndpoint {
            backend: "file",
            endpoint: u.path.clone().unwrap_or_default(),
            reason,
        })?;
        let c = crate::file::Files::builder(dir)
            .allow_network_fs(network)
            .connect()
            .await?;
        Ok(Box::new(c) as Box<dyn Locker>)
    })
}

fn scheme_of(url: &BackendUrl) -> Result<&'static Scheme, String> {
    SCHEMES
        .iter()
        .find(|s| s.names.contains(&url.scheme.as_str()))
        .ok_or_else(|| {
            let known: Vec<String> = SCHEMES
                .iter()
                .flat_map(|s| s.names)
                .map(|n| format!("{n}://"))
                .collect();
            format!(
                "unknown backend scheme {:?}: use {}",
                url.scheme,
                known.join(", ")
            )
        })
}

fn redis_check(u: &BackendUrl) -> Result<(), String> {
    match u.query {
        Some(_) => Err(format!("{}:// takes no query parameters", u.scheme)),
        None => Ok(()),
    }
}

fn redis_connect(u: BackendUrl) -> Connecting {
    let auth = u.userinfo.map(|a| format!("{a}@")).unwrap_or_default();
    let db = u.path.map(|p| format!("/{p}")).unwrap_or_default();
    let urls: Vec<String> = u
        .hosts
        .iter()
        .map(|h| format!("{}://{auth}{h}{db}", u.scheme))
        .collect();
    Box::pin(async move {
        let c = Redis::builder(urls).connect().await?;
        Ok(Box::new(c) as Box<dyn Locker>)
    })
}

/// etcd's URL: `user:password@` credentials, `?cacert=` (etcds:// only).
fn etcd_params(u: &BackendUrl) -> Result<EtcdParams, String> {
    let user = match &u.userinfo {
        Some(a) => {
            let (name, pw) = a
                .split_once(':')
                .ok_or("etcd credentials must be user:password@")?;
            Some((name.to_owned(), pw.to_owned()))
        }
        None => None,
    };
    let mut ca = None;
    for kv in u.query.iter().flat_map(|q| q.split('&')) {
        match kv.split_once('=') {
            Some(("cacert", v)) => ca = Some(v.to_owned()),
            _ => return Err(format!("unknown etcd URL parameter {kv:?} (only cacert=)")),
        }
    }
    if u.scheme == "etcd" && ca.is_some() {
        return Err("cacert= needs etcds:// (TLS)".into());
    }
    Ok(EtcdParams { user, ca })
}

fn etcd_check(u: &BackendUrl) -> Result<(), String> {
    etcd_params(u).map(|_| ())
}

fn etcd_connect(u: BackendUrl) -> Connecting {
    Box::pin(async move {
        let usage = |m: String| Error::BadEndpoint {
            backend: "etcd",
            endpoint: crate::redact(&u.hosts.join(",")),
            reason: m,
        };
        let EtcdParams { user, ca } = etcd_params(&u).map_err(usage)?;
        let proto = if u.scheme == "etcds" { "https" } else { "http" };
        let endpoints: Vec<String> = u.hosts.iter().map(|h| format!("{proto}://{h}")).collect();
        let mut builder = Etcd::builder(endpoints);
        if let Some((name, pw)) = user {
            builder = builder.user(name, pw);
        }
        if let Some(path) = ca {
            let pem = std::fs::read(&path).map_err(|e| usage(format!("cacert {path}: {e}")))?;
            let tls = crate::etcd::TlsOptions::new()
                .ca_certificate(crate::etcd::Certificate::from_pem(pem));
            builder = builder.tls(tls);
        }
        let c = builder.connect().await?;
        Ok(Box::new(c) as Box<dyn Locker>)
    })
}

/// A SQL backend's URL: `?table=` (default `lucky_locks`), `?cacert=` (TLS, verified against
/// that CA file) and `?mode=lease` are Lucky's; every other parameter goes to the driver.
fn sql_params(
    u: &BackendUrl,
    backend: &str,
    scheme: &str,
    session_mode: &str,
) -> Result<(SqlOptions, String), String> {
    let (mut options, mut rest) = (SqlOptions::default(), Vec::new());
    for kv in u.query.iter().flat_map(|q| q.split('&')) {
        match kv.split_once('=') {
            Some(("table", t)) => options.table = Some(t.to_owned()),
            Some(("cacert", c)) => options.cacert = Some(c.to_owned()),
            Some(("mode", "lease")) => options.session = false,
            Some(("mode", m)) if m == session_mode => options.session = true,
            Some(("mode", m)) => {
                return Err(format!(
                    "mode={m} is not available: {backend} locks are lease rows (mode=lease) \
                     or the server's own session locks (mode={session_mode})"
                ))
            }
            _ => rest.push(kv.to_owned()),
        }
    }
    if u.hosts.len() != 1 {
        return Err(format!("{}:// takes one host", u.scheme));
    }
    let auth = u
        .userinfo
        .as_ref()
        .map(|a| format!("{a}@"))
        .unwrap_or_default();
    let db = u.path.as_ref().map(|p| format!("/{p}")).unwrap_or_default();
    let query = if rest.is_empty() {
        String::new()
    } else {
        format!("?{}", rest.join("&"))
    };
    let driver_url = format!("{scheme}://{auth}{}{db}{query}", u.hosts[0]);
    Ok((options, driver_url))
}

/// What a SQL URL asks of Lucky itself.
#[derive(Default)]
struct SqlOptions {
    table: Option<String>,
    cacert: Option<String>,
    /// The server's own session locks (`mode=advisory`, `mode=get_lock`).
    session: bool,
}

fn sql_check(u: &BackendUrl) -> Result<(), String> {
    let mode = if u.scheme.starts_with("my") || u.scheme.starts_with("maria") {
        "get_lock"
    } else {
        "advisory"
    };
    sql_params(u, "SQL", "sql", mode).map(|_| ())
}

fn sql_error(u: &BackendUrl, backend: &'static str, reason: String) -> Error {
    Error::BadEndpoint {
        backend,
        endpoint: crate::redact(&u.hosts.join(",")),
        reason,
    }
}

fn postgres_connect(u: BackendUrl) -> Connecting {
    Box::pin(async move {
        let (o, url) = sql_params(&u, "PostgreSQL", "postgres", "advisory")
            .map_err(|r| sql_error(&u, "PostgreSQL", r))?;
        let mut b = crate::postgres::Postgres::builder(&url);
        if o.session {
            b = b.advisory();
        }
        if let Some(t) = o.table {
            b = b.table(t);
        }
        if let Some(c) = o.cacert {
            b = b.ca_file(c);
        }
        let c = b.connect().await?;
        Ok(Box::new(c) as Box<dyn Locker>)
    })
}

fn mysql_connect(u: BackendUrl) -> Connecting {
    Box::pin(async move {
        let (o, url) =
            sql_params(&u, "MySQL", "mysql", "get_lock").map_err(|r| sql_error(&u, "MySQL", r))?;
        let mut b = crate::mysql::Mysql::builder(&url);
        if o.session {
            b = b.get_lock();
        }
        if let Some(t) = o.table {
            b = b.table(t);
        }
        if let Some(c) = o.cacert {
            b = b.ca_file(c);
        }
        let c = b.connect().await?;
        Ok(Box::new(c) as Box<dyn Locker>)
    })
}

/// A MongoDB URL: `?collection=` (default `lucky_locks`) is Lucky's; the rest is the
/// driver's (credentials, `replicaSet`, `tls`, `tlsCAFile`, `authSource`, ...).
fn mongo_params(u: &BackendUrl) -> Result<(Option<String>, String), String> {
    if u.hosts.is_empty() {
        return Err(format!("{}:// needs a host", u.scheme));
    }
    let (mut collection, mut rest) = (None, Vec::new());
    for kv in u.query.iter().flat_map(|q| q.split('&')) {
        match kv.split_once('=') {
            Some(("collection", c)) => collection = Some(c.to_owned()),
            _ => rest.push(kv),
        }
    }
    let auth = u
        .userinfo
        .as_ref()
        .map(|a| format!("{a}@"))
        .unwrap_or_default();
    let db = u.path.as_deref().unwrap_or("");
    let query = if rest.is_empty() {
        String::new()
    } else {
        format!("?{}", rest.join("&"))
    };
    let url = format!("{}://{auth}{}/{db}{query}", u.scheme, u.hosts.join(","));
    Ok((collection, url))
}

fn mongo_check(u: &BackendUrl) -> Result<(), String> {
    mongo_params(u).map(|_| ())
}

fn mongo_connect(u: BackendUrl) -> Connecting {
    Box::pin(async move {
        let (collection, url) = mongo_params(&u).map_err(|r| sql_error(&u, "MongoDB", r))?;
        let mut b = crate::mongodb::Mongo::builder(&url);
        if let Some(c) = collection {
            b = b.collection(c);
        }
        let c = b.connect().await?;
        Ok(Box::new(c) as Box<dyn Locker>)
    })
}

fn exec_main(args: &[String]) -> ExitCode {
    if args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-h" || a == "--help")
    {
        println!("{EXEC_HELP}");
        return ExitCode::SUCCESS;
    }
    let opts = match parse_exec(args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("lucky exec: {msg}\n{USAGE}\n(see `lucky exec --help`)");
            return ExitCode::from(EX_USAGE);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lucky exec: cannot start the runtime: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    ExitCode::from(rt.block_on(exec(opts)))
}

fn parse_exec(args: &[String]) -> Result<Exec, String> {
    let (flags, cmd) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], args[i + 1..].to_vec()),
        None => return Err("missing `-- CMD [ARGS...]`".into()),
    };
    if cmd.is_empty() {
        return Err("no command after `--`".into());
    }
    let (mut backend, mut name, mut ttl, mut wait, mut grace) = (
        None,
        None,
        Duration::from_secs(30),
        None,
        Duration::from_secs(10),
    );
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (flag.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--backend" => backend = Some(parse_backend(&value()?)?),
            "--name" => {
                let v = value()?;
                if v.is_empty() {
                    return Err("--name: the lock name is empty".into());
                }
                name = Some(v);
            }
            "--ttl" => {
                ttl = parse_duration(&value()?).map_err(|e| format!("--ttl: {e}"))?;
                if ttl.is_zero() {
                    return Err("--ttl: must be positive".into());
                }
            }
            "--wait" => {
                let v = value()?;
                let w = if v == "forever" {
                    WaitFor::Forever
                } else {
                    WaitFor::For(parse_duration(&v).map_err(|e| format!("--wait: {e}"))?)
                };
                if wait.is_some_and(|old| old != w) {
                    return Err("--wait and --no-wait given together".into());
                }
                wait = Some(w);
            }
            "--no-wait" => {
                if wait.is_some_and(|old| old != WaitFor::No) {
                    return Err("--wait and --no-wait given together".into());
                }
                wait = Some(WaitFor::No);
            }
            "--grace" => grace = parse_duration(&value()?).map_err(|e| format!("--grace: {e}"))?,
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(Exec {
        backend: backend.ok_or("--backend URL is required")?,
        name: name.ok_or("--name NAME is required")?,
        ttl,
        wait: wait.unwrap_or(WaitFor::Forever),
        grace,
        cmd,
    })
}

/// `500ms`, `30s`, `2m`, `1h`, `1.5s`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (use 500ms, 30s, 2m, 1h)"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m or h)")),
    };
    let secs = n * scale;
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range (at most a year)"));
    }
    Ok(Duration::from_millis((secs * 1e3).round() as u64))
}

/// Parses `--backend`: one URL with several hosts (`redis://h1:p1,h2:p2`), or several full
/// URLs of one scheme joined by commas (`redis://h1:p1,redis://h2:p2`, the form
/// `LUCKY_REDIS_URLS` uses), or a mix of both; every URL must agree on all but its hosts.
fn parse_backend(url: &str) -> Result<BackendUrl, String> {
    let mut urls: Vec<String> = Vec::new();
    for piece in url.split(',') {
        match urls.last_mut() {
            Some(last) if !piece.contains("://") => {
                last.push(',');
                last.push_str(piece);
            }
            _ => urls.push(piece.to_owned()),
        }
    }
    let mut merged: Option<BackendUrl> = None;
    for u in &urls {
        let next = parse_one_backend(u)?;
        merged = Some(match merged {
            None => next,
            Some(mut m) => {
                let same = BackendUrl {
                    hosts: m.hosts.clone(),
                    ..next.clone()
                };
                if same != m {
                    return Err(format!(
                        "backend URLs {} and {} differ in more than their hosts",
                        crate::redis::redact(&urls[0]),
                        crate::redis::redact(u)
                    ));
                }
                m.hosts.extend(next.hosts);
                m
            }
        });
    }
    let merged = merged.ok_or_else(|| "no backend URL given".to_owned())?;
    (scheme_of(&merged)?.check)(&merged)?;
    Ok(merged)
}

fn parse_one_backend(url: &str) -> Result<BackendUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("bad backend URL {url:?}: expected scheme://host:port[,...]"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    if scheme == "file" {
        // A local path, no host (`file:///dir`, or `file://localhost/dir`).
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        let Some(path) = path.strip_prefix('/') else {
            return Err(format!(
                "bad backend URL {url:?}: expected file:///path/to/dir"
            ));
        };
        return Ok(BackendUrl {
            scheme: scheme.to_owned(),
            userinfo: None,
            hosts: Vec::new(),
            path: Some(path.to_owned()),
            query: query.map(str::to_owned),
        });
    }
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (hosts, path) = match hosts.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (hosts, None),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(format!(
            "bad backend URL {}: empty host",
            crate::redis::redact(url)
        ));
    }
    for h in &hosts {
        let port = h.rsplit_once(':').map(|(_, p)| p);
        if port.is_some_and(|p| p.parse::<u16>().is_err()) {
            return Err(format!(
                "bad backend URL {}: bad port in {h:?}",
                crate::redis::redact(url)
            ));
        }
    }
    Ok(BackendUrl {
        scheme: scheme.to_owned(),
        userinfo: userinfo.map(str::to_owned),
        hosts: hosts.into_iter().map(str::to_owned).collect(),
        path: path.map(str::to_owned),
        query: query.map(str::to_owned),
    })
}

/// Why the lock was not taken, as an exit code and a message.
struct Failure(u8, String);

/// Exit codes by who said no: bad input 64, unreachable (or this process failing) 69,
/// taken 75.
fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Usage => EX_USAGE,
        ErrorKind::Taken => EX_TEMPFAIL,
        // Unreachable, servers answering wrongly, this process failing.
        _ => EX_UNAVAILABLE,
    }
}

async fn connect(b: &BackendUrl) -> Result<Box<dyn Locker>, Failure> {
    let scheme = scheme_of(b).map_err(|m| Failure(EX_USAGE, m))?;
    (scheme.connect)(b.clone())
        .await
        .map_err(|e| Failure(exit_code(e.kind()), e.to_string()))
}

async fn acquire(locks: &dyn Locker, o: &Exec) -> Result<Guard, Failure> {
    locks
        .acquire(&o.name, o.ttl, o.wait)
        .await
        .map_err(|e| Failure(exit_code(e.kind()), e.to_string()))
}

// The one unsafe call of the project: kill(2) has no safe wrapper in std or tokio.
#[allow(unsafe_code)]
fn send_signal(pid: Option<u32>, sig: libc::c_int) {
    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) with a child's pid and a valid signal number has no memory effects.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn status_code(s: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (s.code(), s.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        _ => 1,
    }
}

/// How long `lucky exec` waits, before it exits, for the clean-ups still running in the
/// background (a cancelled acquisition's releases, a lost lock's release).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Waits for every background clean-up, so nothing this process wrote outlives it.
async fn close(locks: &dyn Locker) {
    if !locks.close(CLOSE_WAIT).await {
        eprintln!(
            "lucky exec: clean-up still running after {CLOSE_WAIT:?}; what remains expires with its ttl"
        );
    }
}

async fn exec(o: Exec) -> u8 {
    let (Ok(mut sigint), Ok(mut sigterm)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("lucky exec: cannot install signal handlers");
        return EX_UNAVAILABLE;
    };
    let locks = match connect(&o.backend).await {
        Ok(l) => l,
        Err(Failure(code, msg)) => {
            eprintln!("lucky exec: {msg}");
            return code;
        }
    };
    // Every path out waits for the clean-ups it left in the background.
    let code = run(&*locks, &o, &mut sigint, &mut sigterm).await;
    close(&*locks).await;
    code
}

/// Acquires, runs the command, releases; the exit code.
async fn run(
    locks: &dyn Locker,
    o: &Exec,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
) -> u8 {
    // Waiting for the lock: a signal cancels the wait (dropping the acquisition releases
    // whatever it took).
    let guard = tokio::select! {
        r = acquire(locks, o) => match r {
            Ok(g) => g,
            Err(Failure(code, msg)) => {
                eprintln!("lucky exec: lock {:?} not acquired: {msg}", o.name);
                return code;
            }
        },
        _ = sigint.recv() => return 130,
        _ = sigterm.recv() => return 143,
    };
    let fence = guard.fence().map(|f| f.get());
    let mut cmd = tokio::process::Command::new(&o.cmd[0]);
    cmd.args(&o.cmd[1..]).env("LUCKY_LOCK_NAME", &o.name);
    match fence {
        Some(f) => cmd.env("LUCKY_FENCE", f.to_string()),
        None => cmd.env_remove("LUCKY_FENCE"),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lucky exec: cannot run {:?}: {e}", o.cmd[0]);
            let _ = guard.release().await;
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let pid = child.id();
    let code = loop {
        tokio::select! {
            status = child.wait() => {
                break match status {
                    Ok(s) => status_code(s),
                    Err(e) => {
                        eprintln!("lucky exec: waiting for the command failed: {e}");
                        1
                    }
                };
            }
            () = guard.lost() => {
                eprintln!(
                    "lucky exec: lock {:?} lost while the command ran; sending SIGTERM",
                    o.name
                );
                send_signal(pid, libc::SIGTERM);
                if tokio::time::timeout(o.grace, child.wait()).await.is_err() {
                    eprintln!("lucky exec: still running after {:?}; sending SIGKILL", o.grace);
                    send_signal(pid, libc::SIGKILL);
                    let _ = child.wait().await;
                }
                return EX_LOST;
            }
            _ = sigint.recv() => send_signal(pid, libc::SIGINT),
            _ = sigterm.recv() => send_signal(pid, libc::SIGTERM),
        }
    };
    if let Err(e) = guard.release().await {
        eprintln!("lucky exec: releasing the lock failed (it expires with its ttl): {e}");
    }
    code
}
