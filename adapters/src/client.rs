//! The client shape every backend shares: a [`Builder`] that validates settings and connects, a
//! [`LockRequest`] per acquisition (`client.lock(name).ttl(..).wait(..).await`), the
//! [`Locker`] surface for code that picks its backend at run time, and one [`Error`].
//!
//! A backend supplies only what differs: its connection set-up, its per-lock settings beyond
//! the shared [`Lease`] (`Extra`), and how one acquisition starts (its machine and transport).
//! The builder and request methods every backend has are written here once; a backend adds its
//! own with an inherent `impl Builder<Redis>` / `impl LockRequest<'_, Redis>`.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lucky_core::{Lease, Retry, Wait};

use crate::driver::Tasks;
use crate::{Error, Guard};

/// A future borrowed from a client.
pub type LockFuture<'a, T = Result<Guard, Error>> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Default bound on acquisitions in their first attempt per client ([`Builder::max_in_flight`]).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// Settings of one lock: the lease every protocol shares, and the backend's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options<E> {
    pub(crate) lease: Lease,
    pub(crate) extra: E,
}

pub(crate) mod sealed {
    //! Unnameable outside the crate: only this crate adds backends.
    use super::*;

    /// What a backend's client gives the shared shape (sealed: the set of backends is this
    /// crate's).
    pub trait Client: Clone + fmt::Debug + Send + Sync + Sized + 'static {
        /// Per-lock settings beyond the shared lease.
        type Extra: Clone + fmt::Debug + PartialEq + Send + Sync + 'static;
        /// Connection settings beyond the targets and the connect timeout.
        type Setup: Clone + fmt::Debug + Default + Send + 'static;
        /// The defaults of a new builder's locks.
        fn default_extra() -> Self::Extra;
        /// Checks the targets and settings, then connects.
        fn connect(
            builder: super::Builder<Self>,
        ) -> impl Future<Output = Result<Self, Error>> + Send;
        /// The settings a new request starts from.
        fn defaults(&self) -> &Options<Self::Extra>;
        /// Everything up to the first command of one acquisition (validation, token, machine),
        /// done before the future is first polled.
        fn start(
            &self,
            name: String,
            options: &Options<Self::Extra>,
        ) -> Result<LockFuture<'static>, Error>;
        /// The client's background tasks, for `close()`.
        fn tasks(&self) -> &Arc<Tasks>;
        /// What [`Locker::close`] does: waits for the background tasks, and whatever else
        /// the backend's own `close` ends (etcd: revokes its session leases).
        fn shut_down(&self, timeout: Duration) -> impl Future<Output = bool> + Send {
            super::close(self, timeout)
        }
    }
}

/// A backend's client (`lucky::redis::Redis`, `lucky::etcd::Etcd`, ...).
pub trait Backend: sealed::Client {}
impl<C: sealed::Client> Backend for C {}

/// Configures a client of backend `B` before connecting: the lease settings every backend
/// shares are here, each backend's own beside them (`Builder<Redis>::fencing`, ...).
#[must_use = "a builder does nothing until `connect().await`"]
pub struct Builder<B: Backend> {
    pub(crate) targets: Vec<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) defaults: Options<B::Extra>,
    pub(crate) setup: B::Setup,
}

impl<B: Backend> Clone for Builder<B> {
    fn clone(&self) -> Self {
        Builder {
            targets: self.targets.clone(),
            connect_timeout: self.connect_timeout,
            max_in_flight: self.max_in_flight,
            defaults: self.defaults.clone(),
            setup: self.setup.clone(),
        }
    }
}

impl<B: Backend> fmt::Debug for Builder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let targets: Vec<String> = self.targets.iter().map(|t| crate::redact(t)).collect();
        f.debug_struct("Builder")
            .field("targets", &targets)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("defaults", &self.defaults)
            .field("setup", &self.setup)
            .finish()
    }
}

impl<B: Backend> Builder<B> {
    pub(crate) fn new<I, S>(targets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Builder {
            targets: targets.into_iter().map(|t| t.as_ref().to_owned()).collect(),
            connect_timeout: Duration::from_secs(2),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            defaults: Options {
                lease: Lease::default(),
                extra: B::default_extra(),
            },
            setup: B::Setup::default(),
        }
    }

    /// Default time to live of each lock (default 30 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.defaults.lease.ttl = ttl;
        self
    }
    /// Default time an acquisition keeps trying (default 10 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.defaults.lease.wait = Wait::For(wait);
        self
    }
    /// Clock drift rate bound (ppm) and constant floor (default 10 000 ppm + 2 ms).
    pub fn drift(mut self, ppm: u32, floor: Duration) -> Self {
        self.defaults.lease.drift_ppm = ppm;
        self.defaults.lease.drift_floor = floor;
        self
    }
    /// Timeout of each request to one node (default about ttl/20).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.lease.op_timeout = Some(timeout);
        self
    }
    /// Delay between attempts: `delay` plus up to `jitter` (default 50 ms + 0-200 ms).
    pub fn retry(mut self, delay: Duration, jitter: Duration) -> Self {
        self.defaults.lease.retry = Retry { delay, jitter };
        self
    }
    /// How long connecting to one node may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// At most this many acquisitions of this client have sent their first requests without
    /// an answer yet (default 64; Redis and etcd clients). More wait for a slot, in order of
    /// asking, before their machine starts: a burst of thousands of acquisitions is served at
    /// the pace the servers answer instead of timing out in the client's own queue. A request
    /// waits for a slot at most its `wait`; one that does not wait for the lock waits for a
    /// slot as long as it takes (drop its future to give up).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
    /// Validates the targets and settings, then connects (to every node at once).
    pub async fn connect(self) -> Result<B, Error> {
        B::connect(self).await
    }
}

/// One lock request; configure it, then `.await` it to acquire.
#[must_use = "a lock request does nothing until it is awaited"]
pub struct LockRequest<'a, B: Backend> {
    client: &'a B,
    name: String,
    options: Options<B::Extra>,
}

impl<B: Backend> fmt::Debug for LockRequest<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockRequest")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<'a, B: Backend> LockRequest<'a, B> {
    pub(crate) fn new(client: &'a B, name: String) -> Self {
        LockRequest {
            client,
            name,
            options: client.defaults().clone(),
        }
    }
    #[allow(dead_code)] // a backend without settings of its own (etcd) never calls it
    pub(crate) fn extra(&mut self) -> &mut B::Extra {
        &mut self.options.extra
    }

    /// Time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.lease.ttl = ttl;
        self
    }
    /// Keep trying for this long.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.options.lease.wait = Wait::For(wait);
        self
    }
    /// One attempt only: the lock if it is free now.
    pub fn no_wait(mut self) -> Self {
        self.options.lease.wait = Wait::None;
        self
    }
    /// Keep trying until acquired (or the future is dropped).
    pub fn wait_forever(mut self) -> Self {
        self.options.lease.wait = Wait::Forever;
        self
    }
    /// How long to keep trying, as a value (what `wait`, `no_wait` and `wait_forever` set).
    pub fn wait_for(self, wait: WaitFor) -> Self {
        match wait {
            WaitFor::No => self.no_wait(),
            WaitFor::For(d) => self.wait(d),
            WaitFor::Forever => self.wait_forever(),
        }
    }
    /// Timeout of each request to one node.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.options.lease.op_timeout = Some(timeout);
        self
    }
    /// Delay between attempts.
    pub fn retry(mut self, delay: Duration, jitter: Duration) -> Self {
        self.options.lease.retry = Retry { delay, jitter };
        self
    }
    /// Clock drift rate bound (ppm) and constant floor.
    pub fn drift(mut self, ppm: u32, floor: Duration) -> Self {
        self.options.lease.drift_ppm = ppm;
        self.options.lease.drift_floor = floor;
        self
    }
}

impl<'a, B: Backend> IntoFuture for LockRequest<'a, B> {
    type Output = Result<Guard, Error>;
    type IntoFuture = LockFuture<'a>;
    fn into_future(self) -> Self::IntoFuture {
        match self.client.start(self.name, &self.options) {
            Ok(acquire) => acquire,
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// Waits, at most `timeout`, for every background task of `client`; whether all finished.
pub(crate) async fn close<B: Backend>(client: &B, timeout: Duration) -> bool {
    client.tasks().wait_idle(timeout).await
}

/// How long an acquisition keeps trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// One attempt only.
    No,
    /// Keep trying this long.
    For(Duration),
    /// Until acquired.
    Forever,
}

/// A client of any backend, for code that picks its backend at run time (the `lucky` command
/// line, a service configured by URL).
pub trait Locker: Send + Sync {
    /// Acquires the lock `name` for `ttl` (renewed while held), trying as `wait` says.
    fn acquire<'a>(&'a self, name: &'a str, ttl: Duration, wait: WaitFor) -> LockFuture<'a>;

    /// Waits, at most `timeout`, for every background clean-up of this client, and ends
    /// what it keeps on the servers (etcd: its session leases); whether all finished.
    fn close(&self, timeout: Duration) -> LockFuture<'_, bool>;
}

impl<B: Backend> Locker for B {
    fn acquire<'a>(&'a self, name: &'a str, ttl: Duration, wait: WaitFor) -> LockFuture<'a> {
        LockRequest::new(self, name.to_owned())
            .ttl(ttl)
            .wait_for(wait)
            .into_future()
    }

    fn close(&self, timeout: Duration) -> LockFuture<'_, bool> {
        Box::pin(self.shut_down(timeout))
    }
}
