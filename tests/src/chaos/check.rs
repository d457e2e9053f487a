//! The chaos run's history and its checker. Every client process appends one line per thing
//! it saw, stamped with `CLOCK_MONOTONIC` nanoseconds (one clock for every process of the
//! machine: network namespaces do not change it, and the clock shim moves only the
//! servers' wall clocks). The checker reads every client's lines and finds what the README's
//! guarantee tables speak of, with the simulator oracle's definitions.
//!
//! Lines (`<c>` client, `<s>` its claim number, times in ns):
//! - `acq <c> <s> <t_req> <t_acq> <valid_until> <fence|->`: `lock().await` returned a guard at
//!   `t_acq`, valid until `valid_until` as the guard said;
//! - `ext <c> <s> <valid_until>`: the guard, still held, said a later deadline (extension);
//! - `write <c> <s> <fenced 0|1> <t0> <t1> <accepted 0|1>`: a write to the resource sent at
//!   `t0` and answered at `t1` (unfenced writes are always accepted);
//! - `rel <c> <s> <t0> <t1>`: release called at `t0`, returned at `t1`;
//! - `fail <c> <t0> <t1> <kind>`: an acquisition that ended without a guard.

use std::fmt;

/// One holder's claim: from the moment its code had the guard to the moment it stopped
/// trusting it (release called, or the last deadline the guard gave, whichever is first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The client process.
    pub client: u32,
    /// Its claim number.
    pub seq: u64,
    /// When the guard was in the caller's hands.
    pub start: u64,
    /// When the claim ended.
    pub end: u64,
    /// The guard's fence.
    pub fence: Option<u64>,
}

/// One write to the resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    /// The writer.
    pub client: u32,
    /// The claim it wrote under.
    pub seq: u64,
    /// Sent to the fenced table (else to the unfenced log).
    pub fenced: bool,
    /// Sent.
    pub t0: u64,
    /// Answered.
    pub t1: u64,
    /// The resource took it.
    pub accepted: bool,
    /// Its place in the resource's own order (the table's serial id).
    pub order: i64,
}

/// Everything the clients recorded in one run.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Claims, in no particular order.
    pub claims: Vec<Claim>,
    /// Writes, in no particular order.
    pub writes: Vec<Write>,
    /// Failed acquisitions: (client, t0, t1, kind).
    pub fails: Vec<(u32, u64, u64, String)>,
    /// Lines that could not be read.
    pub bad_lines: usize,
}

/// What the checker found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two clients' claims overlapped: (client, start, end) of each.
    Overlap {
        /// The earlier claim.
        a: (u32, u64, u64),
        /// The later claim, which began before `a` ended.
        b: (u32, u64, u64),
    },
    /// In order of acquisition, a fence not above an earlier one.
    FenceRegression {
        /// The earlier claim's client and fence.
        earlier: (u32, u64),
        /// The later claim's client and fence.
        later: (u32, u64),
    },
    /// The fenced resource accepted a write of an earlier claim after it had accepted one of
    /// a later claim.
    StaleAccepted {
        /// The stale writer and its claim's start.
        writer: (u32, u64),
        /// The later claim already written.
        later: (u32, u64),
    },
    /// An unfenced write of a claim was sent after a later claim of another client began.
    StaleUnfenced {
        /// The writer and when it sent.
        writer: (u32, u64),
        /// The later claim and its start.
        later: (u32, u64),
    },
    /// Nobody acquired between the faults' end and the end of the liveness window.
    NoProgress {
        /// The faults healed here.
        since: u64,
        /// No acquisition until here.
        until: u64,
    },
    /// Lock keys (or leases) still on a server after every client stopped and a ttl passed.
    LeftBehind {
        /// The server.
        node: String,
        /// How many.
        keys: usize,
    },
}

impl Violation {
    /// The guarantee it breaks, as the README's tables name their columns.
    pub fn category(&self) -> Category {
        match self {
            Violation::Overlap { .. } => Category::MutualExclusion,
            Violation::FenceRegression { .. } | Violation::StaleAccepted { .. } => Category::Fences,
            Violation::StaleUnfenced { .. } => Category::UnfencedWrites,
            Violation::NoProgress { .. } | Violation::LeftBehind { .. } => Category::Liveness,
        }
    }
}

/// The columns of a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// Holders' claims never overlap.
    MutualExclusion,
    /// Fences rise with acquisition order; the fenced resource never takes a stale write.
    Fences,
    /// No late write of an earlier holder lands in the unfenced log.
    UnfencedWrites,
    /// The lock moves again once faults heal; nothing is left behind.
    Liveness,
}

impl Category {
    /// Every category, in verdict order.
    pub const ALL: [Category; 4] = [
        Category::MutualExclusion,
        Category::Fences,
        Category::UnfencedWrites,
        Category::Liveness,
    ];

    /// Its short name.
    pub fn name(self) -> &'static str {
        match self {
            Category::MutualExclusion => "exclusion",
            Category::Fences => "fences",
            Category::UnfencedWrites => "unfenced",
            Category::Liveness => "liveness",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.describe(f, 0)
    }
}

impl Violation {
    /// Written with times in ms from `since` (the run's start, for a picture).
    pub fn since(&self, since: u64) -> String {
        struct Since<'a>(&'a Violation, u64);
        impl fmt::Display for Since<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.describe(f, self.1)
            }
        }
        Since(self, since).to_string()
    }

    fn describe(&self, f: &mut fmt::Formatter<'_>, since: u64) -> fmt::Result {
        let ms = |t: u64| t.saturating_sub(since) as f64 / 1e6;
        match self {
            Violation::Overlap { a, b } => write!(
                f,
                "overlap: client {} held {:.1}..{:.1} ms, client {} from {:.1} ms",
                a.0,
                ms(a.1),
                ms(a.2),
                b.0,
                ms(b.1)
            ),
            Violation::FenceRegression { earlier, later } => write!(
                f,
                "fence regression: client {} got {} after client {} got {}",
                later.0, later.1, earlier.0, earlier.1
            ),
            Violation::StaleAccepted { writer, later } => write!(
                f,
                "stale write accepted: client {}'s claim from {:.1} ms written after client {}'s from {:.1} ms",
                writer.0,
                ms(writer.1),
                later.0,
                ms(later.1)
            ),
            Violation::StaleUnfenced { writer, later } => write!(
                f,
                "stale unfenced write: client {} wrote at {:.1} ms after client {} acquired at {:.1} ms",
                writer.0,
                ms(writer.1),
                later.0,
                ms(later.1)
            ),
            Violation::NoProgress { since, until } => write!(
                f,
                "no acquisition from the heal at {:.1} ms until {:.1} ms",
                ms(*since),
                ms(*until)
            ),
            Violation::LeftBehind { node, keys } => {
                write!(f, "{keys} lock keys left on {node} after every client stopped")
            }
        }
    }
}

impl History {
    /// Adds the lines one client wrote.
    pub fn read(&mut self, text: &str) {
        struct Open {
            client: u32,
            seq: u64,
            start: u64,
            until: u64,
            released: Option<u64>,
            fence: Option<u64>,
        }
        let mut open: Vec<Open> = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
            let ok = match f.first().copied() {
                Some("acq") => match (n(1), n(2), n(4), n(5)) {
                    (Some(c), Some(s), Some(t), Some(v)) => {
                        open.push(Open {
                            client: c as u32,
                            seq: s,
                            start: t,
                            until: v,
                            released: None,
                            fence: n(6),
                        });
                        true
                    }
                    _ => false,
                },
                Some("ext") => match (n(1), n(2), n(3)) {
                    (Some(c), Some(s), Some(v)) => {
                        if let Some(o) =
                            open.iter_mut().find(|o| o.client == c as u32 && o.seq == s)
                        {
                            o.until = o.until.max(v);
                        }
                        true
                    }
                    _ => false,
                },
                Some("rel") => match (n(1), n(2), n(3)) {
                    (Some(c), Some(s), Some(t)) => {
                        if let Some(o) =
                            open.iter_mut().find(|o| o.client == c as u32 && o.seq == s)
                        {
                            o.released = Some(t);
                        }
                        true
                    }
                    _ => false,
                },
                Some("write") => match (n(1), n(2), n(3), n(4), n(5), n(6)) {
                    (Some(c), Some(s), Some(fenced), Some(t0), Some(t1), Some(acc)) => {
                        self.writes.push(Write {
                            client: c as u32,
                            seq: s,
                            fenced: fenced == 1,
                            t0,
                            t1,
                            accepted: acc == 1,
                            order: f.get(7).and_then(|s| s.parse().ok()).unwrap_or(-1),
                        });
                        true
                    }
                    _ => false,
                },
                Some("fail") => match (n(1), n(2), n(3)) {
                    (Some(c), Some(t0), Some(t1)) => {
                        let kind = f.get(4).copied().unwrap_or("?").to_owned();
                        self.fails.push((c as u32, t0, t1, kind));
                        true
                    }
                    _ => false,
                },
                _ => false,
            };
            if !ok {
                self.bad_lines += 1;
            }
        }
        for o in open {
            let end = o.released.map_or(o.until, |r| r.min(o.until));
            self.claims.push(Claim {
                client: o.client,
                seq: o.seq,
                start: o.start,
                end: end.max(o.start),
                fence: o.fence,
            });
        }
    }

    /// The claim a write was made under.
    fn claim_of(&self, w: &Write) -> Option<&Claim> {
        self.claims
            .iter()
            .find(|c| c.client == w.client && c.seq == w.seq)
    }

    /// Every violation in the history. `heal`: when the last fault healed and until when the
    /// clients kept trying (liveness is judged in between).
    pub fn check(&self, heal: Option<(u64, u64)>) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut order: Vec<&Claim> = self.claims.iter().collect();
        order.sort_by_key(|c| (c.start, c.client, c.seq));
        // Mutual exclusion: each claim begins after every earlier claim ended. (One process's
        // claims follow each other by construction; comparing every pair also catches a
        // killed process and the new process of its slot holding at once.)
        for (k, b) in order.iter().enumerate() {
            for a in &order[..k] {
                if a.end > b.start && out.len() < 8 {
                    out.push(Violation::Overlap {
                        a: (a.client, a.start, a.end),
                        b: (b.client, b.start, b.end),
                    });
                }
            }
        }
        // Fences rise in order of acquisition.
        let mut best: Option<(u32, u64)> = None;
        for c in &order {
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
        // The fenced resource, in its own order: no accepted write of a claim that began
        // before the claim of a write it accepted earlier.
        let mut fenced: Vec<&Write> = self
            .writes
            .iter()
            .filter(|w| w.fenced && w.accepted)
            .collect();
        fenced.sort_by_key(|w| w.order);
        let mut latest: Option<&Claim> = None;
        for w in fenced {
            let Some(c) = self.claim_of(w) else { continue };
            if let Some(l) = latest {
                if c.start < l.start {
                    out.push(Violation::StaleAccepted {
                        writer: (c.client, c.start),
                        later: (l.client, l.start),
                    });
                    break;
                }
            }
            if latest.is_none_or(|l| c.start >= l.start) {
                latest = Some(c);
            }
        }
        // The unfenced log: a write sent after a later claim began.
        'writes: for w in self.writes.iter().filter(|w| !w.fenced && w.accepted) {
            let Some(k) = self.claim_of(w) else { continue };
            for c in &order {
                if c.start > k.start && c.start <= w.t0 {
                    out.push(Violation::StaleUnfenced {
                        writer: (k.client, w.t0),
                        later: (c.client, c.start),
                    });
                    break 'writes;
                }
            }
        }
        if let Some((since, until)) = heal {
            if !self
                .claims
                .iter()
                .any(|c| c.start >= since && c.start <= until)
            {
                out.push(Violation::NoProgress { since, until });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(lines: &[&str]) -> History {
        let mut h = History::default();
        h.read(&lines.join("\n"));
        h
    }

    #[test]
    fn a_clean_hand_over_passes() {
        let h = history(&[
            "acq 0 1 0 10 100 5",
            "write 0 1 1 20 30 1 1",
            "write 0 1 0 20 30 1 2",
            "rel 0 1 40 45",
            "acq 1 1 35 50 150 6",
            "write 1 1 1 60 70 1 3",
            "rel 1 1 80 90",
        ]);
        assert_eq!(h.claims.len(), 2);
        assert_eq!(h.check(Some((0, 200))), vec![]);
    }

    #[test]
    fn overlapping_claims_are_found() {
        // Client 0's claim ends at its deadline (100) since it never released.
        let h = history(&["acq 0 1 0 10 100 5", "acq 1 1 35 50 150 6"]);
        let v = h.check(None);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].category(), Category::MutualExclusion);
    }

    #[test]
    fn a_killed_process_and_its_successor_in_the_same_slot_are_compared() {
        // Client 0's first process never released (killed); its second (seq from 1 000 000)
        // acquired before the first one's deadline.
        let h = history(&["acq 0 1 0 10 100 5", "acq 0 1000001 35 50 150 6"]);
        let v = h.check(None);
        assert!(matches!(v[..], [Violation::Overlap { .. }]), "{v:?}");
    }

    #[test]
    fn a_fence_not_above_the_last_is_found() {
        let h = history(&[
            "acq 0 1 0 10 100 5",
            "rel 0 1 40 45",
            "acq 1 1 35 50 150 5",
            "rel 1 1 60 70",
        ]);
        let v = h.check(None);
        assert!(
            matches!(v[..], [Violation::FenceRegression { .. }]),
            "{v:?}"
        );
    }

    #[test]
    fn a_stale_write_the_resource_took_is_found() {
        // Client 0's write lands after client 1's was accepted (resource order 1 then 2).
        let h = history(&[
            "acq 0 1 0 10 40 5",
            "acq 1 1 35 50 150 6",
            "write 1 1 1 60 70 1 1",
            "write 0 1 1 30 80 1 2",
        ]);
        let v = h.check(None);
        assert!(
            v.iter()
                .any(|v| matches!(v, Violation::StaleAccepted { .. })),
            "{v:?}"
        );
    }

    #[test]
    fn a_late_unfenced_write_is_found_and_a_rejected_fenced_one_is_not() {
        let h = history(&[
            "acq 0 1 0 10 40 5",
            "acq 1 1 45 50 150 6",
            "write 1 1 1 60 70 1 1",
            "write 0 1 1 60 80 0 2",
            "write 0 1 0 60 80 1 3",
        ]);
        let v = h.check(None);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].category(), Category::UnfencedWrites);
    }

    #[test]
    fn no_acquisition_after_the_heal_is_found() {
        let h = history(&["acq 0 1 0 10 40 5", "rel 0 1 20 30", "fail 1 100 500 taken"]);
        let v = h.check(Some((50, 1000)));
        assert!(matches!(v[..], [Violation::NoProgress { .. }]), "{v:?}");
        assert_eq!(h.fails.len(), 1);
    }

    #[test]
    fn unreadable_lines_are_counted() {
        let h = history(&["acq 0 x", "hello"]);
        assert_eq!(h.bad_lines, 2);
        assert!(h.claims.is_empty());
    }
}
