//! The surface every backend's client shares, for code that picks its backend at run time
//! (the `lucky` command line, a service configured by URL): acquire by name with a ttl and a
//! wait, and wait for background clean-ups before exiting. Errors keep their backend's detail
//! and say who said no ([`ErrorKind`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::{ErrorKind, Guard};

/// A future borrowed from a [`Locker`].
pub type LockerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

/// A client of any backend.
pub trait Locker: Send + Sync {
    /// Acquires the lock `name` for `ttl` (renewed while held), trying as `wait` says.
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
        wait: WaitFor,
    ) -> LockerFuture<'a, Result<Guard, AnyError>>;

    /// Waits, at most `timeout`, for every background clean-up of this client; whether all
    /// finished.
    fn close(&self, timeout: Duration) -> LockerFuture<'_, bool>;
}

/// A backend's error behind its [`ErrorKind`].
#[derive(Debug)]
pub struct AnyError {
    kind: ErrorKind,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl AnyError {
    /// Wraps a backend's error with its kind.
    pub fn new(kind: ErrorKind, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        AnyError {
            kind,
            source: Box::new(source),
        }
    }

    /// Who said no.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl std::fmt::Display for AnyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for AnyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Implements [`Locker`] for a backend client whose `lock(name)` request has `ttl`, `no_wait`,
/// `wait`, `wait_forever` and whose error has `kind()`.
macro_rules! impl_locker {
    ($client:ty) => {
        impl $crate::locker::Locker for $client {
            fn acquire<'a>(
                &'a self,
                name: &'a str,
                ttl: std::time::Duration,
                wait: $crate::locker::WaitFor,
            ) -> $crate::locker::LockerFuture<'a, Result<$crate::Guard, $crate::locker::AnyError>>
            {
                let r = self.lock(name).ttl(ttl);
                let r = match wait {
                    $crate::locker::WaitFor::No => r.no_wait(),
                    $crate::locker::WaitFor::For(d) => r.wait(d),
                    $crate::locker::WaitFor::Forever => r.wait_forever(),
                };
                Box::pin(async move {
                    r.await
                        .map_err(|e| $crate::locker::AnyError::new(e.kind(), e))
                })
            }

            fn close(
                &self,
                timeout: std::time::Duration,
            ) -> $crate::locker::LockerFuture<'_, bool> {
                Box::pin(<$client>::close(self, timeout))
            }
        }
    };
}
pub(crate) use impl_locker;
