//! The oracle: sees true time and true state, and judges a run.
//!
//! It records every client's *claim* (the true-time interval during which that client's
//! machine said it held the lock) and every write that reached the resource, then checks:
//! - mutual exclusion: no two clients' claims overlap;
//! - stale writes: no write reaches the resource after a later holder's claim began (without
//!   fencing this is what a paused holder does, and only a fence can stop it);
//! - fences: the resource never accepts a fence at or below one it accepted before;
//! - liveness: once faults stop, some client acquires within a bound;
//! - cleanup: no key is left on any node once every client has stopped.
//!
//! A violation is *excused* when the run broke an assumption the protocol states (a node
//! clock jump, drift beyond the bound, a node that lost its state and came back before the
//! ttl ran out, a holder paused or delayed past its validity); the run reports it as expected.

use std::fmt;

/// Assumptions a run may break on purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Broken {
    /// A node's clock jumped.
    pub node_clock_jump: bool,
    /// Relative clock drift between two actors exceeded the configured bound.
    pub drift_beyond_bound: bool,
    /// A node lost its state and restarted before the ttl ran out.
    pub fast_restart_without_state: bool,
    /// A holder was paused (or its write delayed) past its validity.
    pub holder_stalled: bool,
    /// A node lost its state (keys and fence counters), however late it came back.
    pub state_lost: bool,
    /// A node came back without its fence counter sooner than the protocol's fences can
    /// recover (at once, or before its clock caught up with the others'; for a protocol whose
    /// fences do not mix in the clock, whenever): fences may go backwards.
    pub fence_counter_lost: bool,
    /// Messages could arrive twice. A copy of a SET can then land after the machine took
    /// its (first) answer and released, leaving a key until its ttl; cleanup cannot be judged.
    /// (Reordering alone is no excuse: a SET granted after its release overtook it is
    /// released again.)
    pub duplicated: bool,
    /// The backend's locks are local to each host while clients run on several (a lock
    /// directory on a network mount): exclusion is not provided at all.
    pub locks_local: bool,
    /// Session locks ended by crashes between these true times, the second one ttl past the
    /// last crash: a claim that began in that window may overlap one from before it.
    pub session_ends: Option<(u64, u64)>,
}

impl Broken {
    /// Whether mutual exclusion may fail.
    pub fn exclusion(&self) -> bool {
        self.node_clock_jump
            || self.drift_beyond_bound
            || self.fast_restart_without_state
            || self.locks_local
    }
    /// Sessions holding locks ended at `now`; their holders learn within `ttl`.
    pub fn sessions_ended(&mut self, now: u64, ttl: u64) {
        let first = self.session_ends.map_or(now, |(f, _)| f);
        self.session_ends = Some((first, now.saturating_add(ttl)));
    }
    /// Whether a claim that began at `start` may overlap an earlier one because a crash
    /// ended the earlier one's session shortly before.
    pub fn session_overlap(&self, start: u64) -> bool {
        self.session_ends
            .is_some_and(|(from, to)| (from..=to).contains(&start))
    }
    /// Whether an unfenced resource may see stale writes.
    pub fn writes(&self) -> bool {
        self.exclusion() || self.holder_stalled
    }
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.node_clock_jump {
            parts.push("node-clock-jump");
        }
        if self.drift_beyond_bound {
            parts.push("drift-beyond-bound");
        }
        if self.fast_restart_without_state {
            parts.push("fast-restart-without-state");
        }
        if self.holder_stalled {
            parts.push("holder-stalled");
        }
        if self.state_lost {
            parts.push("state-lost");
        }
        if self.fence_counter_lost {
            parts.push("fence-counter-lost");
        }
        if self.duplicated {
            parts.push("duplicated");
        }
        if self.locks_local {
            parts.push("locks-local-to-each-host");
        }
        if self.session_ends.is_some() {
            parts.push("sessions-ended");
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// What went wrong, with true times in nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two clients claimed the lock at once.
    MutualExclusion {
        /// Earlier claimant and its claim interval.
        a: (usize, u64, u64),
        /// Later claimant and its claim interval.
        b: (usize, u64, u64),
    },
    /// A machine said Held at or after its own deadline (on its own clock).
    HeldPastDeadline {
        /// Which client.
        client: usize,
        /// True time of the observation.
        at: u64,
        /// How far past its deadline, in local nanoseconds.
        late_ns: u64,
    },
    /// A write of an earlier holder reached the resource after a later holder began.
    StaleWrite {
        /// The writer.
        writer: usize,
        /// When the write arrived.
        at: u64,
        /// The later holder and when its claim began.
        later: (usize, u64),
    },
    /// A later holder got a fence not above an earlier holder's.
    FenceRegression {
        /// Earlier claimant and its fence.
        earlier: (usize, u64),
        /// Later claimant and its fence.
        later: (usize, u64),
    },
    /// The resource accepted a fence below one it accepted before (a stale holder's write
    /// over a newer holder's data).
    FenceOrder {
        /// The fence accepted before.
        before: u64,
        /// The fence accepted after it.
        after: u64,
    },
    /// No client acquired within the bound after faults stopped.
    NoProgress {
        /// When faults stopped.
        since: u64,
        /// The bound.
        within: u64,
    },
    /// The run did not finish within its event budget (a livelock or a timer storm).
    Stuck {
        /// The budget.
        events: u64,
    },
    /// One deletion woke more than one waiter (a thundering herd: waiters must watch only
    /// their predecessor).
    Herd {
        /// The node.
        node: usize,
        /// Watches one deletion answered.
        woken: usize,
    },
    /// The backend kept serving (a cluster with its quorum) yet a client saw it as down.
    Unavailable {
        /// Which client.
        client: usize,
        /// When.
        at: u64,
        /// What it saw.
        what: &'static str,
    },
    /// A key was still on a node after every client stopped.
    LeftoverLock {
        /// The node.
        node: usize,
        /// How many keys.
        keys: usize,
    },
}

impl Violation {
    /// Whether `broken` assumptions excuse this violation.
    pub fn excused_by(&self, broken: &Broken) -> bool {
        match self {
            Violation::MutualExclusion { b, .. } => {
                broken.exclusion() || broken.session_overlap(b.1)
            }
            Violation::StaleWrite { later, .. } => {
                broken.writes() || broken.session_overlap(later.1)
            }
            // Holders on two hosts race on the one fence counter too.
            Violation::FenceRegression { .. } => broken.fence_counter_lost || broken.locks_local,
            Violation::FenceOrder { .. } | Violation::NoProgress { .. } => false,
            Violation::Stuck { .. } | Violation::HeldPastDeadline { .. } => false,
            Violation::LeftoverLock { .. } => broken.duplicated,
            Violation::Herd { .. } | Violation::Unavailable { .. } => false,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |t: u64| t as f64 / 1e6;
        match self {
            Violation::MutualExclusion { a, b } => write!(
                f,
                "mutual exclusion: client {} held [{:.3}, {:.3}) ms and client {} held [{:.3}, {:.3}) ms",
                a.0, ms(a.1), ms(a.2), b.0, ms(b.1), ms(b.2)
            ),
            Violation::StaleWrite { writer, at, later } => write!(
                f,
                "stale write: client {writer}'s write reached the resource at {:.3} ms, after client {} began holding at {:.3} ms",
                ms(*at), later.0, ms(later.1)
            ),
            Violation::FenceRegression { earlier, later } => write!(
                f,
                "fence regression: client {} got fence {} after client {} got {}",
                later.0, later.1, earlier.0, earlier.1
            ),
            Violation::FenceOrder { before, after } => {
                write!(f, "fence order: the resource accepted fence {after} after fence {before}")
            }
            Violation::NoProgress { since, within } => write!(
                f,
                "liveness: no acquisition within {:.3} ms after faults stopped at {:.3} ms",
                ms(*within), ms(*since)
            ),
            Violation::HeldPastDeadline { client, at, late_ns } => write!(
                f,
                "deadline: client {client} still said Held at {:.3} ms, {:.3} ms past its own deadline",
                ms(*at), ms(*late_ns)
            ),
            Violation::Stuck { events } => {
                write!(f, "stuck: the run did not finish within {events} events")
            }
            Violation::LeftoverLock { node, keys } => {
                write!(f, "cleanup: node {node} still holds {keys} key(s) after every client stopped")
            }
            Violation::Unavailable { client, at, what } => write!(
                f,
                "availability: {what} (client {client} at {:.3} ms) while the cluster kept its quorum",
                ms(*at)
            ),
            Violation::Herd { node, woken } => {
                write!(f, "thundering herd: one deletion on node {node} woke {woken} waiters")
            }
        }
    }
}

/// One client's claim on the lock, in true time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Which client.
    pub client: usize,
    /// Which lock name (0 when a run has one).
    pub name: usize,
    /// When its machine reported Acquired.
    pub start: u64,
    /// The latest instant its machine still said it held the lock.
    pub end: u64,
    /// Its fencing token, if the protocol gave one.
    pub fence: Option<u64>,
}

/// A write that reached the resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    /// Which claim it was made under (index into the claims).
    pub claim: usize,
    /// When it arrived.
    pub at: u64,
    /// Its fence, if the protocol gave one.
    pub fence: Option<u64>,
    /// Whether the resource accepted it.
    pub accepted: bool,
}

/// The oracle's record of a run.
#[derive(Clone, Debug, Default)]
pub struct Oracle {
    /// Every claim, in order of start.
    pub claims: Vec<Claim>,
    /// Per client, its open claim.
    open: Vec<Option<usize>>,
    /// Per client, the lock name it takes.
    names: Vec<usize>,
    /// Every write that reached the resource.
    pub writes: Vec<Write>,
    /// Violations found as the run went (fence order, liveness, cleanup).
    pub found: Vec<Violation>,
}

impl Oracle {
    /// An oracle for clients taking the lock names `names` (one entry per client).
    pub fn new(names: Vec<usize>) -> Oracle {
        Oracle {
            open: vec![None; names.len()],
            names,
            ..Oracle::default()
        }
    }

    /// `client` reported Acquired at `now`, valid until true time `end`. Returns the claim id.
    pub fn acquired(&mut self, client: usize, now: u64, end: u64, fence: Option<u64>) -> usize {
        let id = self.claims.len();
        self.claims.push(Claim {
            client,
            name: self.names.get(client).copied().unwrap_or(0),
            start: now,
            end: end.max(now),
            fence,
        });
        self.open[client] = Some(id);
        id
    }

    /// `client`'s machine moved its deadline to true time `end` (an extension).
    pub fn extended(&mut self, client: usize, end: u64) {
        if let Some(id) = self.open[client] {
            let c = &mut self.claims[id];
            c.end = c.end.max(end);
        }
    }

    /// `client`'s machine still said Held at `now`: the claim reaches at least there.
    pub fn observed_held(&mut self, client: usize, now: u64) {
        self.extended(client, now);
    }

    /// `client` stopped claiming at `now` (release called, or lock lost).
    pub fn ended(&mut self, client: usize, now: u64, released: bool) {
        if let Some(id) = self.open[client].take() {
            if released {
                let c = &mut self.claims[id];
                c.end = c.end.min(now).max(c.start);
            }
        }
    }

    /// The open claim of `client`, if any.
    pub fn open_claim(&self, client: usize) -> Option<usize> {
        self.open[client]
    }

    /// A write under `claim` reached the resource at `now`.
    pub fn write(&mut self, claim: usize, now: u64, fence: Option<u64>, accepted: bool) {
        self.writes.push(Write {
            claim,
            at: now,
            fence,
            accepted,
        });
    }

    /// Every violation of the run: those found as it went, then overlaps, fence regressions
    /// and stale writes, each judged among the claims on one name.
    pub fn violations(&self) -> Vec<Violation> {
        let mut out = self.found.clone();
        // Claims by name, each list in order of start.
        let mut order: Vec<usize> = (0..self.claims.len()).collect();
        order.sort_by_key(|&i| (self.claims[i].name, self.claims[i].start, i));
        let by_name: Vec<&[usize]> = order
            .chunk_by(|&a, &b| self.claims[a].name == self.claims[b].name)
            .collect();
        // Mutual exclusion: each claim must begin after every earlier claim of another
        // client on its name has ended.
        let mut reported = 0;
        for group in &by_name {
            for (k, &j) in group.iter().enumerate() {
                let b = self.claims[j];
                for &i in &group[..k] {
                    let a = self.claims[i];
                    if a.client != b.client && a.end > b.start && reported < 8 {
                        out.push(Violation::MutualExclusion {
                            a: (a.client, a.start, a.end),
                            b: (b.client, b.start, b.end),
                        });
                        reported += 1;
                    }
                }
            }
        }
        // Fences: in order of acquisition, every fence on a name is above every earlier one.
        for group in &by_name {
            let mut best: Option<(usize, u64)> = None;
            for &j in group.iter() {
                let c = self.claims[j];
                let Some(f) = c.fence else { continue };
                if let Some((client, top)) = best {
                    if f <= top {
                        out.push(Violation::FenceRegression {
                            earlier: (client, top),
                            later: (c.client, f),
                        });
                        break;
                    }
                }
                best = Some((c.client, f));
            }
        }
        // Stale writes: an accepted unfenced write of claim k arriving after a later claim of
        // another client on its name began. (A fenced resource orders writes itself: what it
        // must never do is accept a fence below one it accepted, checked as it happens.)
        let group_of = |name: usize| {
            by_name
                .binary_search_by_key(&name, |g| self.claims[g[0]].name)
                .map_or(&[][..], |g| by_name[g])
        };
        for w in self
            .writes
            .iter()
            .filter(|w| w.accepted && w.fence.is_none())
        {
            let k = self.claims[w.claim];
            if let Some(later) = group_of(k.name)
                .iter()
                .map(|&i| self.claims[i])
                .find(|c| c.client != k.client && c.start > k.start && c.start <= w.at)
            {
                out.push(Violation::StaleWrite {
                    writer: k.client,
                    at: w.at,
                    later: (later.client, later.start),
                });
                break;
            }
        }
        out
    }
}

/// Whether `e` is the event of an acquisition that failed as "unreachable" or of a lost hold:
/// what a backend that kept serving (a cluster that kept its quorum) must never cause.
pub fn unavailable_event(e: &lucky_core::Event) -> Option<&'static str> {
    match e {
        lucky_core::Event::Failed(lucky_core::LockError::NoQuorum { .. }) => {
            Some("an acquisition failed as unreachable")
        }
        lucky_core::Event::Lost { .. } => Some("a held lock was lost"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients 0 and 1 take name 0, client 2 takes name 1.
    fn oracle() -> Oracle {
        Oracle::new(vec![0, 0, 1])
    }

    #[test]
    fn overlaps_count_only_on_one_name() {
        let mut o = oracle();
        o.acquired(0, 10, 100, None);
        o.acquired(2, 20, 100, None);
        assert!(o.violations().is_empty(), "{:?}", o.violations());
        o.acquired(1, 30, 100, None);
        let v = o.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(matches!(
            v[0],
            Violation::MutualExclusion {
                a: (0, ..),
                b: (1, ..)
            }
        ));
    }

    #[test]
    fn fences_rise_per_name() {
        let mut o = oracle();
        o.acquired(0, 10, 20, Some(50));
        o.ended(0, 20, true);
        // Another name's fences are its own: a lower one is no regression.
        o.acquired(2, 30, 40, Some(7));
        assert!(o.violations().is_empty(), "{:?}", o.violations());
        o.acquired(1, 40, 50, Some(49));
        assert!(matches!(
            o.violations()[..],
            [Violation::FenceRegression {
                earlier: (0, 50),
                later: (1, 49)
            }]
        ));
    }

    #[test]
    fn stale_writes_are_judged_per_name() {
        let mut o = oracle();
        let a = o.acquired(0, 10, 20, None);
        o.ended(0, 20, true);
        o.acquired(2, 30, 40, None);
        // Client 0's write lands after client 2 began, but on another name.
        o.write(a, 35, None, true);
        assert!(o.violations().is_empty(), "{:?}", o.violations());
        o.acquired(1, 50, 60, None);
        o.write(a, 55, None, true);
        assert!(matches!(
            o.violations()[..],
            [Violation::StaleWrite {
                writer: 0,
                at: 55,
                later: (1, 50)
            }]
        ));
    }
}
