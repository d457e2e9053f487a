//! ZooKeeper lock configuration: validated once, shared by every lock of a client.

use alloc::string::String;
use bytes::Bytes;

use super::proof::{Ensemble, SessionProof};
use crate::error::UsageError;
use crate::settings::{Lease, Retry, Wait};
use crate::time::{drift_allowance, Duration};

/// Default session timeout asked of the ensemble (the `ttl`; Curator's default is 60 s;
/// ZooKeeper grants between 2 and 20 of its ticks, 4-40 s with the usual 2 s tick).
pub const DEFAULT_SESSION_TIMEOUT: Duration = crate::settings::DEFAULT_TTL;

/// Default parent of every lock directory.
pub const DEFAULT_ROOT: &str = "/lucky";

/// Longest lock directory accepted (`<root>/<name>`), in bytes; ZooKeeper's own limit on a
/// request is far above, this keeps listings small.
pub const MAX_PATH_LEN: usize = 1024;

/// A validated ZooKeeper lock configuration. Build it with [`ZkConfig::builder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkConfig {
    pub(crate) root: Bytes,
    pub(crate) session_timeout: Duration,
    pub(crate) drift_ppm: u32,
    pub(crate) drift_floor: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) touch_every: Duration,
    pub(crate) ensemble: Ensemble,
    pub(crate) recheck: Duration,
    pub(crate) retry: Retry,
    pub(crate) wait: Wait,
    #[cfg(feature = "bugs")]
    pub(crate) bugs: crate::bugs::Bugs<super::bugs::ZkBug>,
}

impl ZkConfig {
    /// Starts a configuration with the defaults: root `/lucky`, session timeout 30 s, drift
    /// 10 000 ppm + 2 ms, request timeout timeout/20 (at most 5 s), session proven every
    /// timeout/10, watch re-check every timeout, wait 10 s, retry 50-250 ms.
    pub fn builder() -> ZkConfigBuilder {
        ZkConfigBuilder::default()
    }
    /// The parent of every lock directory (`<root>/<name>` holds the queue of `name`).
    pub fn root(&self) -> &str {
        core::str::from_utf8(&self.root).unwrap_or("/")
    }
    /// The session timeout to ask the ensemble for (the driver asks; the machine relies on
    /// what the server negotiated, at most this).
    pub fn session_timeout(&self) -> Duration {
        self.session_timeout
    }
    /// Drift allowance subtracted from a session of `timeout`.
    pub fn drift_for(&self, timeout: Duration) -> Duration {
        drift_allowance(timeout, self.drift_ppm, self.drift_floor)
    }
    /// The drift bound this configuration tolerates (ppm).
    pub fn drift_ppm(&self) -> u32 {
        self.drift_ppm
    }
    /// How long one request waits for its reply.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }
    /// Time between proofs of the session while a lock is queued or held (at most a third of
    /// the negotiated timeout).
    pub fn touch_every(&self) -> Duration {
        self.touch_every
    }
    /// The ensemble's timing the session proof assumes.
    pub fn ensemble(&self) -> Ensemble {
        self.ensemble
    }
    /// The proof a driver keeps for a session the server granted `negotiated` for (relied
    /// on up to the asked [`session_timeout`](Self::session_timeout) only).
    pub fn proof(&self, negotiated: Duration) -> SessionProof {
        #[allow(unused_mut)]
        let mut ensemble = self.ensemble;
        #[cfg(feature = "bugs")]
        if self.bugs.contains(super::bugs::ZkBug::AckProvesLeader) {
            ensemble = Ensemble::STANDALONE;
        }
        #[allow(unused_mut)]
        let mut proof = SessionProof::new(
            ensemble,
            negotiated.min(self.session_timeout),
            self.drift_ppm,
            self.drift_floor,
        );
        #[cfg(feature = "bugs")]
        if self.bugs.contains(super::bugs::ZkBug::ValidityFromRead) {
            proof.from_read = true;
        }
        proof
    }
    /// How long a waiter trusts one watch before it lists the queue again.
    pub fn recheck(&self) -> Duration {
        self.recheck
    }
    /// Retry delay after a failed request.
    pub fn retry(&self) -> Retry {
        self.retry
    }
    /// How long an acquisition keeps trying (queued or retrying).
    pub fn wait(&self) -> Wait {
        self.wait
    }
}

/// Builder for [`ZkConfig`]; every check happens in [`build`](Self::build).
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `build()`"]
pub struct ZkConfigBuilder {
    lease: Lease,
    root: Option<String>,
    touch_every: Option<Duration>,
    ensemble: Option<Ensemble>,
    recheck: Option<Duration>,
    #[cfg(feature = "bugs")]
    bugs: crate::bugs::Bugs<super::bugs::ZkBug>,
}

impl ZkConfigBuilder {
    crate::settings::lease_setters!(
        ttl: "The session timeout to ask for: positive, at most [`MAX_TTL`](crate::settings::MAX_TTL). The server may grant less (between 2 and 20 of its ticks): the machine relies on what it granted, never on more than this.",
        timeout: op_timeout,
        "Timeout of each request (not of watches; default timeout/20, at most 5 s); must be shorter than the validity."
    );
    /// The parent of every lock directory: an absolute ZooKeeper path (default `/lucky`).
    /// To share locks with Curator's `InterProcessMutex(client, "/locks/x")` or kazoo's
    /// `Lock(client, "/locks/x")`, use root `/locks` and name `x`.
    pub fn root(mut self, root: &str) -> Self {
        self.root = Some(String::from(root));
        self
    }
    /// Time between checks of a held lock, each of which also feeds the session proof
    /// (default timeout/10).
    pub fn touch_every(mut self, every: Duration) -> Self {
        self.touch_every = Some(every);
        self
    }
    /// The ensemble's timing (default: tickTime 2 s, syncLimit 5, see [`Ensemble`]): how
    /// much of a session a client may rely on depends on it. [`Ensemble::STANDALONE`] for a
    /// single server.
    pub fn ensemble(mut self, ensemble: Ensemble) -> Self {
        self.ensemble = Some(ensemble);
        self
    }
    /// How long a waiter trusts a watch before it lists the queue again (default the session
    /// timeout): a safety net for a watch lost without a word.
    pub fn recheck(mut self, every: Duration) -> Self {
        self.recheck = Some(every);
        self
    }
    /// Turns on a deliberately wrong behaviour, so the simulator can prove it catches it.
    #[cfg(feature = "bugs")]
    pub fn inject_bug(mut self, bug: super::bugs::ZkBug) -> Self {
        self.bugs.insert(bug);
        self
    }

    /// Checks everything and returns the configuration, or the first problem found.
    pub fn build(self) -> Result<ZkConfig, UsageError> {
        let lease = self.lease;
        let root = self.root.unwrap_or_else(|| String::from(DEFAULT_ROOT));
        check_path(&root)?;
        let checked = lease.check(None, |ttl, validity| {
            (ttl / 20).min(Duration::from_secs(5)).min(validity / 2)
        })?;
        let every = self.touch_every.unwrap_or(checked.ttl / 10);
        if every.is_zero() || every >= checked.validity {
            return Err(UsageError::BadExtendInterval {
                every,
                validity: checked.validity,
            });
        }
        let ensemble = self.ensemble.unwrap_or_default();
        let margin = ensemble
            .lag
            .saturating_add(ensemble.leader_margin)
            .saturating_add(every.saturating_mul(2));
        if margin >= checked.validity {
            return Err(UsageError::SessionTooShort {
                timeout: checked.ttl,
                margin,
            });
        }
        let root = root.trim_end_matches('/');
        Ok(ZkConfig {
            root: Bytes::copy_from_slice(root.as_bytes()),
            session_timeout: checked.ttl,
            drift_ppm: lease.drift_ppm,
            drift_floor: lease.drift_floor,
            op_timeout: checked.op_timeout,
            touch_every: every,
            ensemble,
            recheck: self.recheck.unwrap_or(checked.ttl).max(checked.op_timeout),
            retry: lease.retry,
            wait: lease.wait,
            #[cfg(feature = "bugs")]
            bugs: self.bugs,
        })
    }
}

/// An absolute ZooKeeper path as the server accepts it (`PathUtils.validatePath`): starts
/// with `/`, no empty, `.` or `..` segment, no control or reserved characters; `/` alone is
/// the root.
pub(crate) fn check_path(path: &str) -> Result<(), UsageError> {
    let bad = |why| {
        Err(UsageError::BadName {
            name: String::from(path),
            why,
        })
    };
    if !path.starts_with('/') {
        return bad("a ZooKeeper root must start with '/'");
    }
    if path == "/" {
        return Ok(());
    }
    check_segments(path.trim_end_matches('/').trim_start_matches('/'), path)
}

/// A lock name: one or more `/`-separated path segments, each allowed by ZooKeeper.
pub(crate) fn check_name(name: &[u8]) -> Result<&str, UsageError> {
    let bad = |why| UsageError::BadName {
        name: String::from_utf8_lossy(name).into_owned(),
        why,
    };
    if name.is_empty() {
        return Err(UsageError::EmptyKey);
    }
    let s = core::str::from_utf8(name).map_err(|_| bad("ZooKeeper paths are UTF-8"))?;
    check_segments(s, s)?;
    Ok(s)
}

fn check_segments(s: &str, whole: &str) -> Result<(), UsageError> {
    let bad = |why| {
        Err(UsageError::BadName {
            name: String::from(whole),
            why,
        })
    };
    for seg in s.split('/') {
        match seg {
            "" => return bad("an empty path segment ('//', or '/' at either end)"),
            "." | ".." => return bad("'.' and '..' are not allowed as path segments"),
            "zookeeper" if s == seg && whole.starts_with("/zookeeper") => {
                return bad("/zookeeper is reserved by the server")
            }
            _ => {}
        }
        if seg.chars().any(|c| {
            let u = c as u32;
            u == 0
                || (0x01..=0x1f).contains(&u)
                || (0x7f..=0x9f).contains(&u)
                || (0xe000..=0xf8ff).contains(&u)
                || (0xfff0..=0xffff).contains(&u)
        }) {
            return bad("control and reserved characters are not allowed in ZooKeeper paths");
        }
    }
    if whole.len() > MAX_PATH_LEN {
        return Err(UsageError::KeyTooLong {
            len: whole.len(),
            max: MAX_PATH_LEN,
        });
    }
    Ok(())
}
