//! Fail-over between the endpoints of one backend (the members of an etcd cluster, the servers
//! of a ZooKeeper ensemble, PostgreSQL hosts): one endpoint down is not the backend down.
//!
//! A lock machine addresses "the cluster"; the driver sends each request to one endpoint and,
//! when that endpoint fails to answer (refused, reset, "no leader", or silent past its share
//! of the request's time), sends the same request to the next endpoint, until one answers or
//! the request's time runs out. This module decides which endpoint comes next and how long
//! each try may take; it reads no clock (time is passed in) and does no IO, so the tokio
//! adapter and the simulator run the very same rule.
//!
//! The rule:
//! - requests go to the *preferred* endpoint; a failure there moves the preference to the next
//!   endpoint in rotation (so the next request does not pay the same failure again);
//! - a failed endpoint is marked down for a cool-down and skipped while others are untried;
//!   when every untried endpoint is marked down, the one whose mark ends first is tried (a
//!   mark is a hint, never a verdict: the backend is down only when every endpoint failed);
//! - each try gets half of the request's remaining time while other endpoints are untried,
//!   and all of it on the last one: a silent endpoint costs at most half the request timeout
//!   before the request moves on, so one dead or stopped member always leaves time for a live
//!   one within the machine's own timeout;
//! - only requests that are safe to send twice are retried ([`Resend`]): the first try's
//!   outcome is unknown, it may still be applied later.

use alloc::vec::Vec;

use crate::time::{Duration, Instant};

/// Most endpoints one [`Endpoints`] tracks (the tried set of an attempt is a bit mask).
pub const MAX_ENDPOINTS: usize = 64;

/// The health view of a backend's endpoints: which one is preferred, which are marked down.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Per endpoint: marked down until then (`Instant::ZERO`: not marked).
    down_until: Vec<Instant>,
    preferred: usize,
    cooldown: Duration,
    /// The no-fail-over bug (etcd's `etcd-no-failover`): rotate blindly, never retry.
    no_failover: bool,
}

/// One request's tries across the endpoints.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// Endpoints tried so far (bit i: endpoint i).
    tried: u64,
    /// When the whole request is given up.
    deadline: Instant,
    tries: u32,
}

impl Attempt {
    /// How many tries were made.
    pub fn tries(&self) -> u32 {
        self.tries
    }
    /// When the request as a whole is given up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Endpoints {
    /// `n` endpoints (clamped to `1..=`[`MAX_ENDPOINTS`]; a driver rejects more before),
    /// the first one preferred; a failed endpoint is skipped for `cooldown`.
    pub fn new(n: usize, cooldown: Duration) -> Endpoints {
        Endpoints {
            down_until: alloc::vec![Instant::ZERO; n.clamp(1, MAX_ENDPOINTS)],
            preferred: 0,
            cooldown,
            no_failover: false,
        }
    }

    /// Turns on a deliberately wrong fail-over (an error from one endpoint is the request's
    /// answer, and requests rotate blindly), so the simulator can prove it catches it.
    #[cfg(feature = "bugs")]
    pub fn inject_no_failover(&mut self) {
        self.no_failover = true;
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.down_until.len()
    }

    /// Always false: there is at least one endpoint.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The endpoint new requests go to first.
    pub fn preferred(&self) -> usize {
        self.preferred
    }

    /// Makes endpoint `i` the preferred one (a driver that found which endpoint answers first).
    pub fn prefer(&mut self, i: usize) {
        if i < self.len() {
            self.preferred = i;
        }
    }

    /// Whether endpoint `i` is marked down at `now`.
    pub fn is_down(&self, i: usize, now: Instant) -> bool {
        self.down_until.get(i).is_some_and(|&t| t > now)
    }

    /// Starts a request at `now` that may take `budget` in all (the machine's request timeout).
    pub fn start(&self, now: Instant, budget: Duration) -> Attempt {
        Attempt {
            tried: 0,
            deadline: now + budget,
            tries: 0,
        }
    }

    /// The endpoint for the next try of `attempt` and the instant that try is abandoned, or
    /// `None` when the request has failed (every endpoint tried, or its time spent).
    pub fn next(&mut self, attempt: &mut Attempt, now: Instant) -> Option<(usize, Instant)> {
        let n = self.len();
        if now >= attempt.deadline {
            return None;
        }
        if self.no_failover {
            // What a plain balancer does: any endpoint, and its error is the answer.
            if attempt.tries > 0 {
                return None;
            }
            attempt.tries = 1;
            let i = self.preferred;
            self.preferred = (i + 1) % n;
            return Some((i, attempt.deadline));
        }
        let tried = attempt.tried;
        let untried = |i: usize| tried & (1 << i) == 0;
        let order = (0..n).map(|k| (self.preferred + k) % n);
        let pick = order
            .clone()
            .find(|&i| untried(i) && !self.is_down(i, now))
            .or_else(|| {
                order
                    .filter(|&i| untried(i))
                    .min_by_key(|&i| self.down_until[i])
            })?;
        attempt.tried |= 1 << pick;
        attempt.tries += 1;
        let left = (0..n).filter(|&i| attempt.tried & (1 << i) == 0).count();
        let remaining = attempt.deadline - now;
        let until = if left > 0 {
            now + remaining / 2
        } else {
            attempt.deadline
        };
        Some((pick, until))
    }

    /// Endpoint `i` failed a try at `now` (refused, reset, no leader, or silent): skip it for
    /// the cool-down, and prefer the next one if it was preferred.
    pub fn failed(&mut self, i: usize, now: Instant) {
        let n = self.len();
        let Some(mark) = self.down_until.get_mut(i) else {
            return;
        };
        *mark = now + self.cooldown;
        if self.preferred == i && !self.no_failover {
            let next = (1..n)
                .map(|k| (i + k) % n)
                .find(|&j| !self.is_down(j, now))
                .unwrap_or((i + 1) % n);
            self.preferred = next;
        }
    }

    /// Endpoint `i` answered: it is up; it becomes preferred if the preferred one is marked
    /// down.
    pub fn succeeded(&mut self, i: usize) {
        let Some(mark) = self.down_until.get_mut(i) else {
            return;
        };
        *mark = Instant::ZERO;
        if self.down_until[self.preferred] != Instant::ZERO && !self.no_failover {
            self.preferred = i;
        }
    }
}

/// Whether a request may be sent to another endpoint after a try whose outcome is unknown
/// (it may have been applied, or may still be applied late).
pub trait Resend {
    /// True when applying the request twice, or late, cannot do harm.
    fn resend_safe(&self) -> bool;
}

impl Resend for crate::etcd::Command {
    fn resend_safe(&self) -> bool {
        use crate::etcd::Command;
        match self {
            // A second grant makes a second lease that no key is ever attached to (the machine
            // knows only the lease it was answered); it expires on its own after its ttl.
            Command::LeaseGrant { .. } => true,
            // Renewing twice renews; a late renewal only keeps the lease a little longer,
            // and the machine counts validity from the send of the try that was answered.
            Command::KeepAlive { .. } => true,
            // Revoking twice: the second finds no lease, which also means it is gone.
            Command::Revoke { .. } => true,
            // A compare-txn on our own key: `if create_revision(key) == 0 then put`. A
            // second or late copy finds the key there and only reads it (or finds the lease
            // revoked and writes nothing): never a second key, never another client's.
            // On a shared session (a take with a guard) the lease outlives the attempt: a
            // copy landing after the key's delete would make it again, for as long as the
            // session lives. Such a take is sent once; one whose outcome is unknown is
            // cleaned up behind its guard, which no copy can pass.
            Command::Take { guard, .. } => guard.is_none(),
            // Writes the guard and deletes the key: a copy does the same again.
            Command::Abandon { .. } => true,
            // Read-only (and linearizable: a range without `serializable`).
            Command::Queue { .. } => true,
            // Guarded by the create revision of this acquisition's key: a copy can delete
            // that key only, never a later acquisition's.
            Command::Delete { .. } => true,
            // A watch is not retried here: a watch that broke is answered "unavailable", and
            // the machine reads the queue again before it watches anew (elsewhere), as after
            // a compaction, so no deletion between the two is missed.
            Command::WaitDelete { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn a_take_on_a_shared_session_is_never_resent() {
        let take = |guard: Option<&'static [u8]>| crate::etcd::Command::Take {
            key: bytes::Bytes::from_static(b"n/1_1_1"),
            prefix: bytes::Bytes::from_static(b"n/"),
            lease: 1,
            guard: guard.map(bytes::Bytes::from_static),
        };
        // With a lease of its own the take is safe to resend: the lease dies with the attempt.
        assert!(take(None).resend_safe());
        // On the shared session a late copy could re-create the key after its release.
        assert!(!take(Some(b"\0lucky/abandoned/n/1_1_1")).resend_safe());
    }

    #[test]
    fn fails_over_and_remembers() {
        let mut e = Endpoints::new(3, 1000 * MS);
        let mut a = e.start(at(0), 200 * MS);
        assert_eq!(e.next(&mut a, at(0)), Some((0, at(100))));
        e.failed(0, at(100));
        assert_eq!(e.preferred(), 1);
        assert_eq!(e.next(&mut a, at(100)), Some((1, at(150))));
        e.succeeded(1);
        // The next request starts on the live member at once.
        let mut b = e.start(at(200), 200 * MS);
        assert_eq!(e.next(&mut b, at(200)).map(|x| x.0), Some(1));
    }

    #[test]
    fn every_endpoint_once_then_fails() {
        let mut e = Endpoints::new(3, 1000 * MS);
        let mut a = e.start(at(0), 200 * MS);
        let mut seen = Vec::new();
        while let Some((i, _)) = e.next(&mut a, at(1)) {
            e.failed(i, at(1));
            seen.push(i);
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
        // All marked down: the next request still tries (the mark ending first).
        let mut b = e.start(at(2), 200 * MS);
        assert!(e.next(&mut b, at(2)).is_some());
    }

    #[test]
    fn last_try_gets_the_rest_and_time_ends_it() {
        let mut e = Endpoints::new(2, 1000 * MS);
        let mut a = e.start(at(0), 100 * MS);
        assert_eq!(e.next(&mut a, at(0)), Some((0, at(50))));
        assert_eq!(e.next(&mut a, at(50)), Some((1, at(100))));
        let mut b = e.start(at(0), 100 * MS);
        assert!(e.next(&mut b, at(100)).is_none());
    }

    #[test]
    fn skips_marked_endpoints() {
        let mut e = Endpoints::new(3, 1000 * MS);
        e.failed(1, at(0));
        e.failed(0, at(0));
        assert_eq!(e.preferred(), 2);
        let mut a = e.start(at(10), 100 * MS);
        assert_eq!(e.next(&mut a, at(10)).map(|x| x.0), Some(2));
        // After the cool-down the marks no longer count.
        assert!(!e.is_down(0, at(1000)));
    }

    #[test]
    fn out_of_range_is_ignored() {
        let mut e = Endpoints::new(0, MS);
        assert_eq!(e.len(), 1);
        e.failed(7, at(0));
        e.succeeded(7);
        let mut a = e.start(at(0), MS);
        assert_eq!(e.next(&mut a, at(0)), Some((0, at(1))));
    }
}
