//! What a run saw: counts, the trace hash, the assumptions it broke and its violations, and the
//! record they were judged from (claims, writes, faults), from which [`crate::svg`] draws it.

use crate::oracle::{Broken, Claim, Violation, Write};

use super::Fault;

/// Why a run stopped and what it saw.
#[derive(Clone, Debug)]
pub struct Report {
    /// Events processed.
    pub events: u64,
    /// Hash of the whole event trace.
    pub trace_hash: u64,
    /// True time at the end (ns).
    pub end: u64,
    /// Acquisitions, failed acquisitions, extensions, losses, releases.
    pub acquired: u64,
    /// Acquisitions that gave up.
    pub failed: u64,
    /// Successful extensions.
    pub extended: u64,
    /// Locks lost at their deadline.
    pub lost: u64,
    /// Releases completed.
    pub released: u64,
    /// Writes the resource accepted and rejected.
    pub writes: (u64, u64),
    /// Assumptions the run broke.
    pub broken: Broken,
    /// Every violation found.
    pub violations: Vec<Violation>,
    /// Every claim on the lock, in order of start.
    pub claims: Vec<Claim>,
    /// Every write that reached the resource, in order of arrival.
    pub write_log: Vec<Write>,
    /// Clients in the run.
    pub clients: usize,
    /// The fault schedule as the run applied it (true time ns, in order), with the
    /// [`Fault::Quiet`] at which faults stopped; those after the run's end never happened.
    pub faults: Vec<(u64, Fault)>,
}

impl Report {
    /// An empty report of a run of `clients` clients that starts with `broken` assumptions and
    /// applies `faults`.
    pub(super) fn new(broken: Broken, clients: usize, faults: Vec<(u64, Fault)>) -> Report {
        Report {
            events: 0,
            trace_hash: 0,
            end: 0,
            acquired: 0,
            failed: 0,
            extended: 0,
            lost: 0,
            released: 0,
            writes: (0, 0),
            broken,
            violations: Vec::new(),
            claims: Vec::new(),
            write_log: Vec::new(),
            clients,
            faults,
        }
    }
    /// Violations not excused by a broken assumption.
    pub fn unexpected(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| !v.excused_by(&self.broken))
    }
    /// Violations excused by a broken assumption (what an assumption-breaking scenario must
    /// find).
    pub fn expected(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| v.excused_by(&self.broken))
    }
}
