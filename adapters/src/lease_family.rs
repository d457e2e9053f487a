//! What the backends on the lease-record machine share in the adapters (in-memory,
//! PostgreSQL, MySQL, MongoDB): their per-lock settings ([`LeaseExtra`]), the machine's
//! configuration and construction, and for the stores reached over a connection, the
//! transport (`Route`) over a `Store` that runs one command at a time, with release hints
//! and the local hand-off order; and the table settings of the SQL stores ([`SqlSetup`]).
//! A backend of this family writes only its `Store` (the encoding of four commands) and its
//! connection set-up.
// A build with only the in-memory backend uses the settings, not the connection transport.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lucky_core::lease::{Command, LeaseConfig, LeaseLock, Reply};

use crate::client::{sealed, Options};
use crate::driver::{BoxFuture, Subscription, Tasks, Transport};
use crate::hints::Hints;
use crate::Error;

/// The lease-record backends' own per-lock settings, beside the shared lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseExtra {
    pub(crate) auto_extend: bool,
}

impl Default for LeaseExtra {
    /// Renewal on (every ttl/3).
    fn default() -> Self {
        LeaseExtra { auto_extend: true }
    }
}

/// The machine's configuration for `o`.
pub(crate) fn config(o: &Options<LeaseExtra>) -> Result<LeaseConfig, lucky_core::UsageError> {
    let b = LeaseConfig::builder().lease(o.lease);
    let b = if o.extra.auto_extend {
        b.auto_extend(None, None)
    } else {
        b
    };
    b.build()
}

/// A fresh machine for `name` with a random token (OS randomness).
pub(crate) fn machine(cfg: &LeaseConfig, name: &str) -> Result<LeaseLock, Error> {
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).map_err(|e| Error::Random(e.to_string()))?;
    let seed = u64::from_le_bytes(token[..8].try_into().unwrap_or_default()) ^ 0x5bd1_e995;
    Ok(LeaseLock::new(cfg, name.as_bytes(), &token, seed)?)
}

impl<B: sealed::Client<Extra = LeaseExtra>> crate::Builder<B> {
    /// Keep held locks alive in the background (default on, every ttl/3).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.defaults.extra.auto_extend = on;
        self
    }
}

impl<B: sealed::Client<Extra = LeaseExtra>> crate::LockRequest<'_, B> {
    /// Keep the lock alive in the background (default on).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.extra().auto_extend = on;
        self
    }
}

/// Where a SQL store keeps its locks: the table, and whether to create it.
#[derive(Clone, Debug)]
pub struct SqlSetup {
    pub(crate) table: String,
    pub(crate) create_table: bool,
    pub(crate) ca_file: Option<std::path::PathBuf>,
    /// The server's own session locks instead of lease rows (PostgreSQL advisory locks,
    /// MySQL `GET_LOCK`).
    pub(crate) session: bool,
}

impl Default for SqlSetup {
    fn default() -> Self {
        SqlSetup {
            table: "lucky_locks".into(),
            create_table: true,
            ca_file: None,
            session: false,
        }
    }
}

impl<B: sealed::Client<Setup = SqlSetup>> crate::Builder<B> {
    /// The table (default `lucky_locks`): an identifier, optionally qualified
    /// (`schema.table`); letters, digits and `_`, not starting with a digit.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.setup.table = table.into();
        self
    }
    /// Create the table on connect if it is missing (default on; off for schemas managed
    /// elsewhere: each backend's documentation has its DDL).
    pub fn create_table(mut self, on: bool) -> Self {
        self.setup.create_table = on;
        self
    }
    /// TLS, verifying the server against the CA certificates in this PEM file instead of the
    /// system's roots (TLS is then required).
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.setup.ca_file = Some(path.into());
        self
    }
}

/// Why a store's statement gave no answer, as its driver saw it.
pub(crate) enum Failure {
    /// The server refused it: nothing was applied (a statement that failed rolled back).
    Refused(String),
    /// It was sent, and the connection broke or timed out: it may have been applied.
    Unknown(String),
    /// It was never sent (no connection).
    NotSent(String),
}

impl Failure {
    /// The machine's reply to `command` that failed so: an unknown outcome only for a write
    /// (a read that did not answer changed nothing).
    pub(crate) fn reply(self, command_is_read: bool) -> Reply {
        match self {
            Failure::Refused(e) => Reply::Error(e),
            Failure::NotSent(e) => Reply::Unavailable(e),
            Failure::Unknown(e) if command_is_read => Reply::Unavailable(e),
            Failure::Unknown(e) => Reply::Unknown(e),
        }
    }
}

/// A lock name as text (the SQL stores keep names as text: UTF-8).
pub(crate) fn text(name: &[u8]) -> Result<&str, Failure> {
    std::str::from_utf8(name).map_err(|_| Failure::Refused("lock name is not UTF-8".into()))
}

/// A ttl in whole microseconds (the unit the SQL stores count it in).
pub(crate) fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A store reached over a connection: runs one command of the machine, and says how the
/// client's release hints arrive.
pub(crate) trait Store: Send + Sync + 'static {
    /// Runs `command`; a broken connection after sending is [`Reply::Unknown`].
    fn run(self: Arc<Self>, command: Command) -> impl Future<Output = Reply> + Send + 'static;
    /// The client's background tasks.
    fn tasks(&self) -> &Arc<Tasks>;
    /// The client's line of waiters per lock.
    fn hints(&self) -> &Arc<Hints>;
    /// A waiter is about to stand in line: start whatever feeds the hints (PostgreSQL's
    /// `LISTEN`).
    fn listen(self: &Arc<Self>) {}
}

/// One acquisition's way to a [`Store`]: while a release hands a name to a local waiter,
/// other local contenders of that name wait their turn instead of overtaking it (the store
/// still decides who holds).
pub(crate) struct Route<S> {
    store: Arc<S>,
    /// Its place in the client's line of waiters for the name (0: not in line).
    waiter: AtomicU64,
}

impl<S> Route<S> {
    pub(crate) fn new(store: Arc<S>) -> Route<S> {
        Route {
            store,
            waiter: AtomicU64::new(0),
        }
    }
}

impl<S: Store> Transport for Route<S> {
    type Command = Command;
    type Reply = Reply;

    fn send(
        self: &Arc<Self>,
        _node: usize,
        command: Command,
    ) -> impl Future<Output = Reply> + Send + 'static {
        let me = self.waiter.load(Ordering::Acquire);
        let hand_off = match &command {
            Command::Take { name, .. } => self.store.hints().held_for(name, me),
            _ => None,
        };
        let store = self.store.clone();
        async move {
            match hand_off {
                Some(left) => Reply::Held { left },
                None => store.run(command).await,
            }
        }
    }

    fn tasks(&self) -> &Arc<Tasks> {
        self.store.tasks()
    }

    fn subscribe(self: &Arc<Self>, channel: Vec<u8>) -> BoxFuture<Option<Subscription>> {
        self.store.listen();
        let (sub, id) = self.store.hints().register(channel);
        self.waiter.store(id, Ordering::Release);
        Box::pin(std::future::ready(Some(sub)))
    }
}

/// Whether `table` is a plain SQL identifier, optionally schema-qualified: what a SQL backend
/// may write into a statement unquoted (every value is a parameter; a table name cannot be).
pub(crate) fn check_table(table: &str) -> Result<(), String> {
    let ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 63
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !part.starts_with(|c: char| c.is_ascii_digit())
    };
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| ok(p)) {
        Ok(())
    } else {
        Err(format!(
            "table {table:?} is not an identifier (letters, digits, _; optionally schema.table)"
        ))
    }
}

/// The CA certificates a SQL backend's TLS verifies servers against: those in the PEM file
/// `ca` (each one must be usable), or the system's roots (`SSL_CERT_FILE` when set; those
/// rustls cannot use as trust anchors are left out). Never empty.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn tls_roots(
    ca: Option<&std::path::Path>,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let usable = |cert: &CertificateDer<'static>| {
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| e.to_string())
    };
    let mut roots = Vec::new();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("CA file {}: {e}", path.display()))?;
                usable(&cert).map_err(|e| format!("CA file {}: {e}", path.display()))?;
                roots.push(cert);
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs().certs;
            roots.extend(system.into_iter().filter(|c| usable(c).is_ok()));
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the server with".into());
    }
    Ok(roots)
}

/// A rustls client configuration that verifies servers against [`tls_roots`]`(ca)`.
#[cfg(feature = "postgres")]
pub(crate) fn tls_config(ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in tls_roots(ca)? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}
