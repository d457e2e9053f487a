//! How long a ZooKeeper session certainly lives on the leader, from what one client saw.
//!
//! The leader alone expires sessions and deletes their ephemeral nodes: at the first tick at
//! or after `last touch on the leader + timeout` (`SessionTrackerImpl`, `ExpiryQueue`: never
//! earlier, up to a tick later). What a client can prove about that last touch (ZooKeeper
//! 3.8 source; the argument the simulator checks with bug `zk-ack-proves-leader`):
//!
//! 1. A request served by a **follower** touches the session there only
//!    (`LearnerSessionTracker.touchSession` fills a table); the table reaches the leader in
//!    the follower's answer to the leader's next PING (`Learner.ping`, every tick/2). A write
//!    forwarded to the leader does not touch it (`submitLearnerRequest` goes straight to the
//!    `PrepRequestProcessor`, which only checks the session exists). So no single answer from
//!    a follower proves a leader touch: the follower may have lost the leader right after
//!    answering and keep serving until its read timeout (`syncLimit` ticks) ends it.
//! 2. But a follower serves a request only while it still hears the leader: after `syncLimit`
//!    ticks of silence it drops every client. So if request `k` (sent at `S_k`, answered at
//!    `R_k`) is followed by an answered request `j` sent at `S_j >= R_k + lag`, where `lag`
//!    covers `syncLimit + 1` ticks and the ping round, the follower's ping answers went on
//!    reaching the leader after it touched for `k`, in order over one TCP stream: the leader
//!    touched the session at or after `S_k`, so it expires it no earlier than `S_k + timeout`.
//! 3. A **new or re-validated session** is touched on the leader itself (createSession is a
//!    leader transaction; a reconnect through a follower is `REVALIDATE`d by the leader): a
//!    connect answered with a positive timeout proves a touch at or after its send.
//! 4. A new leader restarts every session's clock when it starts (`SessionTrackerImpl`
//!    re-tracks them all), which can only be after the old leader lost its quorum; a deposed
//!    leader may still have answered us for about a tick after that. So every proof is
//!    shortened by `leader_margin` (two ticks by default).
//!
//! Hence: the session lives at least until `S + timeout - leader_margin - drift`, where `S` is
//! the connect's send time or the send time of the latest request `k` confirmed by a later
//! answer sent `lag` after `k`'s answer. Against a standalone server (no followers, no
//! elections), `lag` and `leader_margin` are zero and any answer is a proof.

use alloc::collections::VecDeque;

use crate::time::{drift_allowance, Duration, Instant};

/// What the client knows of its ensemble's timing: the margins of the argument above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ensemble {
    /// How long after a follower answered `k` another of its answers proves the leader heard
    /// of `k`: `(syncLimit + 1) * tickTime` plus the network delay between the servers.
    pub lag: Duration,
    /// Taken off every proof for a leader change: two ticks.
    pub leader_margin: Duration,
}

impl Ensemble {
    /// An ensemble with the given `tickTime` and `syncLimit` (ZooKeeper's sample
    /// configuration: 2 s and 5), allowing `net` for a message between its servers.
    pub fn new(tick: Duration, sync_limit: u32, net: Duration) -> Ensemble {
        Ensemble {
            lag: tick
                .saturating_mul(sync_limit.saturating_add(1))
                .saturating_add(net),
            leader_margin: tick.saturating_mul(2),
        }
    }

    /// A standalone server: it is the leader, every answer touched the session on it.
    pub const STANDALONE: Ensemble = Ensemble {
        lag: Duration::ZERO,
        leader_margin: Duration::ZERO,
    };
}

impl Default for Ensemble {
    /// tickTime 2 s, syncLimit 5, 200 ms between servers: `lag` 12.2 s, margin 4 s.
    fn default() -> Ensemble {
        Ensemble::new(Duration::from_secs(2), 5, Duration::from_millis(200))
    }
}

/// One answered request of the session: when it was sent and when its answer was read.
#[derive(Clone, Copy, Debug)]
struct Answered {
    sent: Instant,
    read: Instant,
}

/// The proof for one session: feed it every answered request (any kind: a read, a write, a
/// ping the driver can time) and the connect; it says until when the session surely lives on
/// the leader. Sans-IO: the caller stamps every time.
#[derive(Clone, Debug)]
pub struct SessionProof {
    ensemble: Ensemble,
    timeout: Duration,
    drift_ppm: u32,
    drift_floor: Duration,
    /// Answers not yet confirmed by a later one, oldest first.
    waiting: VecDeque<Answered>,
    /// The latest proven send time.
    proven: Option<Instant>,
    /// The `zk-validity-from-read` bug: count from the answer's read time.
    pub(crate) from_read: bool,
}

/// At most this many unconfirmed answers are kept (a burst of answers read together proves no
/// more than its first and last).
const KEEP: usize = 64;

impl SessionProof {
    /// A proof for a session with the negotiated `timeout`, judged with `ensemble`'s margins
    /// and the drift bound.
    pub fn new(
        ensemble: Ensemble,
        timeout: Duration,
        drift_ppm: u32,
        drift_floor: Duration,
    ) -> SessionProof {
        SessionProof {
            ensemble,
            timeout,
            drift_ppm,
            drift_floor,
            waiting: VecDeque::new(),
            proven: None,
            from_read: false,
        }
    }

    /// The session's negotiated timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connect sent at `sent` was answered with this session: a leader touch (3.).
    pub fn connected(&mut self, sent: Instant) {
        self.prove(sent);
    }

    /// A request sent at `sent` was answered at `read` in this session.
    pub fn answered(&mut self, sent: Instant, read: Instant) {
        let read = read.max(sent);
        let sent = if self.from_read { read } else { sent };
        if self.ensemble.lag.is_zero() {
            self.prove(sent);
            return;
        }
        // Every earlier answer read `lag` or more before this send is now proven; the latest
        // such counts.
        while let Some(k) = self.waiting.front().copied() {
            if k.read + self.ensemble.lag <= sent {
                self.waiting.pop_front();
                self.prove(k.sent);
            } else {
                break;
            }
        }
        if self.waiting.len() == KEEP {
            // Keep the oldest: they are the first a later answer confirms.
            self.waiting.pop_back();
        }
        self.waiting.push_back(Answered { sent, read });
    }

    fn prove(&mut self, sent: Instant) {
        self.proven = Some(self.proven.map_or(sent, |p| p.max(sent)));
    }

    /// Until when the session surely lives on the leader (`None`: nothing proven yet).
    pub fn until(&self) -> Option<Instant> {
        let s = self.proven?;
        let cut = self.ensemble.leader_margin.saturating_add(drift_allowance(
            self.timeout,
            self.drift_ppm,
            self.drift_floor,
        ));
        Some(s + self.timeout.saturating_sub(cut))
    }

    /// The caller's clock stepped back by `by`: every time kept moves back as much.
    pub fn rebase_back(&mut self, by: Duration) {
        self.proven = self.proven.map(|p| p.rebase_back(by));
        for a in &mut self.waiting {
            a.sent = a.sent.rebase_back(by);
            a.read = a.read.rebase_back(by);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    #[test]
    fn standalone_answers_prove_at_once() {
        let mut p = SessionProof::new(
            Ensemble::STANDALONE,
            Duration::from_secs(10),
            0,
            Duration::ZERO,
        );
        assert_eq!(p.until(), None);
        p.answered(ms(100), ms(105));
        assert_eq!(p.until(), Some(ms(10_100)));
    }

    #[test]
    fn a_follower_answer_proves_only_once_a_later_one_comes_lag_after_it() {
        let e = Ensemble {
            lag: Duration::from_millis(1_000),
            leader_margin: Duration::from_millis(200),
        };
        let mut p = SessionProof::new(e, Duration::from_secs(10), 0, Duration::ZERO);
        p.answered(ms(0), ms(10));
        p.answered(ms(500), ms(510));
        assert_eq!(p.until(), None, "no answer came lag after another");
        p.answered(ms(1_010), ms(1_020));
        // 0's answer (read at 10) is confirmed by a send at 1010; 500's (read 510) not yet.
        assert_eq!(p.until(), Some(ms(9_800)));
        p.answered(ms(1_600), ms(1_700));
        assert_eq!(p.until(), Some(ms(10_300)));
        // A connect is a leader touch of its own.
        p.connected(ms(2_000));
        assert_eq!(p.until(), Some(ms(11_800)));
    }

    #[test]
    fn time_going_back_never_lengthens_the_proof() {
        let mut p = SessionProof::new(
            Ensemble::STANDALONE,
            Duration::from_secs(10),
            0,
            Duration::ZERO,
        );
        p.answered(ms(5_000), ms(5_001));
        p.rebase_back(Duration::from_millis(1_000));
        assert_eq!(p.until(), Some(ms(14_000)));
    }
}
