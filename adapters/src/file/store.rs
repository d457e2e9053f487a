//! `flock` on a lock file per name, as the session-lock machine's store: a session is the lock
//! file opened for one acquisition; the lock is `flock(LOCK_EX)` on it (never POSIX record
//! locks, which any close of the file drops); the server's id of a session is the file's
//! inode, and every lock and probe reports the inode the path names *now*, so a lock file
//! deleted or replaced under its holder is noticed by the machine's same-session check.
//!
//! Files in the directory, per name (`<n>` is the name, escaped to a file name):
//! - `<n>.lock`: never deleted or renamed by Lucky;
//! - `<n>.fence`: `"<fence> <inode of the lock file>\n"`, replaced atomically and durably
//!   (write `<n>.fence.tmp`, fsync, rename, fsync the directory) before the fence is reported,
//!   so a crash may skip a number, never reuse one. Its mtime is the holder's heartbeat,
//!   touched by every probe.
//!
//! A lock file that was deleted or replaced while someone may still hold the old inode: a
//! new holder of the new inode waits until the heartbeat is a ttl old (the old holder's
//! probes see the path changed and report the lock lost within ttl/3, and it trusts the lock
//! no longer than a ttl after its last probe), so two holders never overlap.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lucky_core::session::{Command, Reply};
use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::driver::Tasks;
use crate::session_family::SessionStore;

/// The directory of lock files.
#[derive(Debug)]
pub(super) struct Dir {
    pub(super) path: PathBuf,
    pub(super) tasks: Arc<Tasks>,
}

/// One lock file, opened for one acquisition.
#[derive(Debug)]
pub(crate) struct LockFile {
    fd: OwnedFd,
    /// The escaped name, the stem of the lock's files.
    stem: String,
    /// `(dev, ino)` of the file opened, as one number.
    id: u64,
    /// The lock's ttl (the session's idle time): how long the holder of a replaced lock
    /// file may still trust it after its last heartbeat.
    ttl: Duration,
}

/// The escaped file-name stem of a lock name: ASCII letters, digits, `-`, `_` and `.` as they
/// are (not a leading `.`), every other byte `%XX`; at most 240 bytes (a file name is at most
/// 255 with its suffix).
pub(crate) fn stem(name: &[u8]) -> Result<String, String> {
    let mut out = String::with_capacity(name.len());
    for (i, &b) in name.iter().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > 240 {
        return Err(format!(
            "lock name too long for a file name ({} bytes escaped; at most 240)",
            out.len()
        ));
    }
    Ok(out)
}

#[allow(clippy::unnecessary_cast)] // the widths of st_ino and st_dev differ between targets
fn id_of(st: &rustix::fs::Stat) -> u64 {
    (st.st_ino as u64) ^ (st.st_dev as u64).rotate_left(32)
}

fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Dir {
    fn file(&self, stem: &str, suffix: &str) -> PathBuf {
        let mut name = OsString::from(stem);
        name.push(suffix);
        self.path.join(name)
    }

    /// The id of what the lock path names now (0: nothing).
    fn current(&self, stem: &str) -> u64 {
        rustix::fs::stat(self.file(stem, ".lock")).map_or(0, |st| id_of(&st))
    }

    /// The fence file: `(fence, lock file id, heartbeat)`; none yet: `(0, 0, epoch)`.
    fn read_fence(&self, stem: &str) -> Result<(u64, u64, SystemTime), String> {
        let path = self.file(stem, ".fence");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((0, 0, SystemTime::UNIX_EPOCH))
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let text = String::from_utf8(text).map_err(|_| format!("{}: not text", path.display()))?;
        let mut parts = text.split_whitespace();
        let fence = parts.next().and_then(|f| f.parse().ok());
        let id = parts.next().and_then(|f| f.parse().ok());
        let (Some(fence), Some(id)) = (fence, id) else {
            return Err(format!(
                "{}: not \"<fence> <inode>\": {text:?}",
                path.display()
            ));
        };
        let beat = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok((fence, id, beat))
    }

    /// Writes the fence file durably: a temporary file, synced, renamed over it, the
    /// directory synced.
    fn write_fence(&self, stem: &str, fence: u64, id: u64) -> Result<(), String> {
        let tmp = self.file(stem, ".fence.tmp");
        let fd = rustix::fs::open(
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(io)?;
        let text = format!("{fence} {id}\n");
        let mut written = 0;
        while written < text.len() {
            written += rustix::io::write(&fd, &text.as_bytes()[written..]).map_err(io)?;
        }
        rustix::fs::fsync(&fd).map_err(io)?;
        drop(fd);
        rustix::fs::rename(&tmp, self.file(stem, ".fence")).map_err(io)?;
        let dir = rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        rustix::fs::fsync(&dir).map_err(io)
    }

    /// Touches the heartbeat (the fence file's mtime).
    fn beat(&self, stem: &str) {
        let now = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
        };
        let _ = rustix::fs::utimensat(
            rustix::fs::CWD,
            self.file(stem, ".fence"),
            &now,
            rustix::fs::AtFlags::empty(),
        );
    }

    /// One try to take the lock in `f`: `Ok(Some(reply))` when it is decided, `Ok(None)`
    /// when another holds it.
    fn try_lock(&self, f: &LockFile) -> Result<Option<Reply>, Reply> {
        match rustix::fs::flock(&f.fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(Reply::Error(format!("flock: {e}"))),
        }
        // Ours, on the inode we opened. From here on a failure leaves it locked: unknown,
        // so the machine ends the session (closing the file unlocks it).
        let current = self.current(&f.stem);
        let (fence, owner_id, beat) = self.read_fence(&f.stem).map_err(Reply::Unknown)?;
        if current == f.id && owner_id != 0 && owner_id != f.id {
            // The lock file was replaced: the holder of the old inode may still trust it
            // until a ttl after its last heartbeat.
            let age = crate::clock::wall_now()
                .duration_since(beat)
                .unwrap_or_default();
            if age < f.ttl {
                let _ = rustix::fs::flock(&f.fd, FlockOperation::Unlock);
                return Ok(None);
            }
        }
        if current != f.id {
            // The path names another file now: report it, the machine drops this one.
            return Ok(Some(Reply::Locked {
                server: current,
                fence: 0,
            }));
        }
        let next = fence.saturating_add(1);
        self.write_fence(&f.stem, next, f.id)
            .map_err(|e| Reply::Unknown(format!("fence file: {e}")))?;
        Ok(Some(Reply::Locked {
            server: f.id,
            fence: next,
        }))
    }

    /// Tries until `wait` runs out, woken by changes to the lock file (a holder closing it,
    /// the file replaced) with a bounded backoff as the fallback.
    async fn lock(&self, f: &LockFile, wait: Duration) -> Reply {
        let deadline = tokio::time::Instant::now() + wait;
        // Made on the first busy try only: an uncontended lock costs no inotify instance.
        let mut watch: Option<Option<Watch>> = None;
        let mut backoff = Duration::from_millis(2);
        loop {
            match self.try_lock(f) {
                Ok(Some(reply)) => return reply,
                Ok(None) => {}
                Err(reply) => return reply,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Reply::Busy;
            }
            let until = deadline.min(now + backoff);
            let watch = watch.get_or_insert_with(|| Watch::new(&self.file(&f.stem, ".lock")));
            let woken = match watch {
                Some(w) => w.changed(until).await,
                None => {
                    tokio::time::sleep_until(until).await;
                    false
                }
            };
            // A change to the file (a holder closing it) starts the backoff over.
            backoff = if woken {
                Duration::from_millis(2)
            } else {
                (backoff * 2).min(Duration::from_millis(100))
            };
        }
    }
}

/// An inotify watch on the lock file: wakes a waiter when the file is closed (its holder let
/// go), its metadata changes, or it is deleted or moved. Waited on with `poll` on a blocking
/// thread, at most one backoff step at a time.
struct Watch {
    fd: Arc<OwnedFd>,
}

impl Watch {
    fn new(path: &Path) -> Option<Watch> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?;
        let flags = WatchFlags::CLOSE_WRITE
            | WatchFlags::CLOSE_NOWRITE
            | WatchFlags::ATTRIB
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF;
        inotify::add_watch(&fd, path, flags).ok()?;
        Some(Watch { fd: Arc::new(fd) })
    }

    /// Waits for an event or `until`, then drains the events; whether one came.
    async fn changed(&self, until: tokio::time::Instant) -> bool {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let fd = self.fd.clone();
        let woken = tokio::task::spawn_blocking(move || {
            use rustix::event::{poll, PollFd, PollFlags};
            let timeout = rustix::event::Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&*fd, PollFlags::IN)];
            let woken = poll(&mut fds, Some(&timeout)).is_ok_and(|n| n > 0);
            if woken {
                let mut buf = [0u8; 1024];
                while rustix::io::read(fd.as_fd(), &mut buf).is_ok_and(|n| n > 0) {}
            }
            woken
        })
        .await;
        woken.unwrap_or(false)
    }
}

impl SessionStore for Dir {
    type Conn = LockFile;
    const REUSE: bool = false;

    async fn open(self: Arc<Self>, name: Bytes, idle: Duration) -> Result<(LockFile, u64), Reply> {
        let stem = stem(&name).map_err(Reply::Error)?;
        let path = self.file(&stem, ".lock");
        let fd = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| Reply::Unavailable(format!("{}: {e}", path.display())))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| Reply::Unavailable(e.to_string()))?;
        let id = id_of(&st);
        Ok((
            LockFile {
                fd,
                stem,
                id,
                ttl: idle,
            },
            id,
        ))
    }

    async fn run(
        self: Arc<Self>,
        conn: Arc<tokio::sync::Mutex<LockFile>>,
        command: Command,
    ) -> Reply {
        let f = conn.lock().await;
        match command {
            Command::Lock { wait, .. } => self.lock(&f, wait).await,
            Command::Probe { .. } => {
                // The lock is ours while the file is open; the question is whether the path
                // still names it.
                let current = self.current(&f.stem);
                let held = current == f.id;
                if held {
                    self.beat(&f.stem);
                }
                Reply::Probed {
                    held,
                    server: current,
                }
            }
            Command::Unlock { .. } => match rustix::fs::flock(&f.fd, FlockOperation::Unlock) {
                Ok(()) => Reply::Unlocked { held: true },
                Err(e) => Reply::Unknown(format!("flock: {e}")),
            },
            Command::Open { .. } | Command::Close { .. } => {
                Reply::Error("open and close are the transport's".into())
            }
        }
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.tasks
    }
}

/// File systems whose locks are not (or not reliably) shared between hosts: NFS, SMB/CIFS,
/// Ceph, AFS, 9p, FUSE (sshfs and the like). By `statfs` magic.
const NETWORK_FS: &[(i64, &str)] = &[
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x00C3_6400, "Ceph"),
    (0x5346_414F, "AFS"),
    (0x0102_1997, "9p"),
    (0x6573_5546, "FUSE"),
];

/// The name of the network file system `dir` is on, if it is on one.
pub(super) fn network_fs(dir: &Path) -> Result<Option<&'static str>, String> {
    let st = rustix::fs::statfs(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let magic = st.f_type as i64;
    Ok(NETWORK_FS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name))
}
