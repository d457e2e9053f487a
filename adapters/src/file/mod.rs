//! Lock files on one machine (feature `file`): `flock` on a file per lock name in a directory,
//! for processes on one host, with no server at all. The session-lock machine of lucky-core
//! drives it: a lock is the lock file opened for it and `flock(LOCK_EX)` on it, the fence a
//! durable counter file beside it.
//!
//! ```no_run
//! # async fn f() -> Result<(), lucky::Error> {
//! let files = lucky::file::Files::open("/var/lock/app").await?;
//! let guard = files.lock("nightly").await?;
//! let fence = guard.fence(); // rises with every holder, never reused after a crash
//! guard.release().await?;
//! # let _ = fence;
//! # Ok(()) }
//! ```
//!
//! - Lucky never deletes or renames a lock file (deleting one lets two processes lock two
//!   different files of one name). If the path is deleted or replaced under a holder, its next
//!   probe (every ttl/3) reports the lock lost, and a new holder of the new file waits until
//!   the old holder's heartbeat is a ttl old.
//! - The fence file `<name>.fence` is written to a temporary file, synced, renamed over the
//!   old one and the directory synced before the fence is reported: a crash can skip a
//!   number, never reuse one.
//! - The OS frees the lock when the holding process dies (`kill -9` included): the next
//!   process takes it at once, with the next fence.
//! - Waiting: an inotify watch on the lock file wakes a waiter when a holder closes it, with
//!   a bounded backoff (2-100 ms) as the fallback.
//! - Network file systems (NFS, SMB/CIFS, Ceph, AFS, 9p, FUSE) are refused unless
//!   `.allow_network_fs(true)`: their locks are not reliably shared between hosts.
//! - `lucky exec --backend file:///var/lock/app --name nightly -- ./job`; `flock(1)` on
//!   `/var/lock/app/nightly.lock` and Lucky exclude each other.
//! - Names: ASCII letters, digits, `-`, `_` and `.` (not leading) are kept, every other byte
//!   is written `%XX` in the file name.

mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{self, sealed, LockFuture, Options};
use crate::clock::Clock;
use crate::driver::{self, Tasks};
use crate::lease_family::LeaseExtra;
use crate::session_family::{self, Sessions};
pub use crate::{Error, Guard};
use store::Dir;

/// Configures a [`Files`] client before opening its directory.
pub type FilesBuilder = crate::Builder<Files>;
/// One lock request of a [`Files`] client; `.await` it to acquire.
pub type LockRequest<'a> = crate::LockRequest<'a, Files>;

/// Settings of a lock directory beyond its path.
#[derive(Clone, Debug, Default)]
pub struct FileSetup {
    allow_network_fs: bool,
    create: bool,
}

/// A client of one lock directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Files {
    sessions: Arc<Sessions<Dir>>,
    dir: PathBuf,
    clock: Clock,
    defaults: Options<LeaseExtra>,
}

impl Files {
    /// Opens the lock directory `dir` (created if missing) with the default settings.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Files, Error> {
        Files::builder(dir).connect().await
    }

    /// Starts configuring a client of the lock directory `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> FilesBuilder {
        let dir: PathBuf = dir.into();
        let mut b = FilesBuilder::new([dir.to_string_lossy()]);
        b.setup.create = true;
        b
    }

    /// Asks for the lock `name`; configure it, then `.await` it.
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest::new(self, name.into())
    }

    /// Waits, at most `timeout`, until every background task of this client has finished.
    pub async fn close(&self, timeout: Duration) -> bool {
        client::close(self, timeout).await
    }

    /// The lock directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The lock file of `name` in this directory (what `flock(1)` would lock).
    pub fn lock_file(&self, name: &str) -> Result<PathBuf, Error> {
        let stem = store::stem(name.as_bytes()).map_err(|reason| Error::BadEndpoint {
            backend: "file",
            endpoint: name.to_owned(),
            reason,
        })?;
        Ok(self.dir.join(format!("{stem}.lock")))
    }
}

impl FilesBuilder {
    /// Allow a directory on a network file system (NFS, SMB/CIFS, Ceph, AFS, 9p, FUSE):
    /// refused by default, because their locks may be local to each host (default off).
    pub fn allow_network_fs(mut self, on: bool) -> Self {
        self.setup.allow_network_fs = on;
        self
    }
}

impl sealed::Client for Files {
    type Extra = LeaseExtra;
    type Setup = FileSetup;

    fn default_extra() -> LeaseExtra {
        LeaseExtra::default()
    }

    async fn connect(b: FilesBuilder) -> Result<Files, Error> {
        session_family::config(&b.defaults)?;
        let bad = |endpoint: &str, reason: String| Error::BadEndpoint {
            backend: "file",
            endpoint: endpoint.to_owned(),
            reason,
        };
        let [dir] = &b.targets[..] else {
            return Err(bad(
                &b.targets.join(","),
                "give exactly one directory".into(),
            ));
        };
        if dir.is_empty() {
            return Err(bad(dir, "the lock directory is empty".into()));
        }
        let path = PathBuf::from(dir);
        if b.setup.create {
            std::fs::create_dir_all(&path).map_err(|e| bad(dir, e.to_string()))?;
        }
        if !path.is_dir() {
            return Err(bad(dir, "not a directory".into()));
        }
        if let Some(fs) = store::network_fs(&path).map_err(|e| bad(dir, e))? {
            if !b.setup.allow_network_fs {
                return Err(bad(
                    dir,
                    format!(
                        "the directory is on a network file system ({fs}), whose locks may be \
                         local to each host; use a local directory, or .allow_network_fs(true) \
                         if every process runs on this host"
                    ),
                ));
            }
        }
        let store = Dir {
            path: path.clone(),
            tasks: Arc::default(),
        };
        Ok(Files {
            sessions: Arc::new(Sessions::new(Arc::new(store))),
            dir: path,
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
        store::stem(name.as_bytes()).map_err(|reason| Error::BadEndpoint {
            backend: "file",
            endpoint: name.clone(),
            reason,
        })?;
        let machine = session_family::machine(&session_family::config(options)?, &name)?;
        Ok(Box::pin(driver::acquire(
            machine,
            self.sessions.clone(),
            self.clock,
            name,
            None,
            options.lease.wait,
        )))
    }

    fn tasks(&self) -> &Arc<Tasks> {
        crate::driver::Transport::tasks(&*self.sessions)
    }
}
