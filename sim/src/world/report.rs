//! What a run saw: counts, the trace hash, the assumptions it broke and its violations.

use crate::oracle::{Broken, Claim, Violation};

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
}

impl Report {
    /// An empty report of a run that starts with `broken` assumptions.
    pub(super) fn new(broken: Broken) -> Report {
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
