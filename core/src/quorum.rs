//! Vote tally for quorum protocols, deciding early both ways.

use crate::error::UsageError;

/// The outcome of a vote so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Neither a quorum of yes nor enough no votes to make a quorum impossible.
    Pending,
    /// At least `quorum` nodes said yes.
    Won,
    /// So many nodes said no (or failed) that `quorum` yes votes can no longer be reached.
    Lost,
}

/// Counts yes and no votes of `n` voters against a quorum.
///
/// The tally does not know who voted: the caller counts each node at most once per round
/// (the machines keep one slot per node and drop replies to ops they no longer wait for).
/// Invariant, kept by [`Tally::new`] and the vote methods: `1 <= quorum <= n` and
/// `yes + no <= n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tally {
    n: u16,
    quorum: u16,
    yes: u16,
    no: u16,
}

impl Tally {
    /// The majority quorum of `n` nodes: `n / 2 + 1`. With an even `n` this tolerates no more
    /// failures than `n - 1` nodes would (4 nodes need 3, like 3 nodes need 2).
    pub const fn majority(n: u16) -> u16 {
        n / 2 + 1
    }

    /// A fresh tally of `n` voters needing `quorum` yes votes; `quorum` must be `1..=n`.
    pub const fn new(n: u16, quorum: u16) -> Result<Tally, UsageError> {
        if quorum == 0 || quorum > n {
            return Err(UsageError::BadQuorum { n, quorum });
        }
        Ok(Tally {
            n,
            quorum,
            yes: 0,
            no: 0,
        })
    }

    /// A tally the caller knows is valid (`1 <= quorum <= n`); out-of-range values are
    /// clamped into range rather than trusted.
    pub(crate) const fn checked(n: u16, quorum: u16) -> Tally {
        let n = if n == 0 { 1 } else { n };
        let quorum = if quorum == 0 {
            1
        } else if quorum > n {
            n
        } else {
            quorum
        };
        Tally {
            n,
            quorum,
            yes: 0,
            no: 0,
        }
    }

    /// Records one yes vote. Returns `false`, counting nothing, when every voter has voted.
    pub fn yes(&mut self) -> bool {
        if self.yes + self.no >= self.n {
            return false;
        }
        self.yes += 1;
        true
    }

    /// Records one no vote (refusal, error or timeout). Returns `false`, counting nothing,
    /// when every voter has voted.
    pub fn no(&mut self) -> bool {
        if self.yes + self.no >= self.n {
            return false;
        }
        self.no += 1;
        true
    }

    /// Voters.
    pub const fn voters(&self) -> u16 {
        self.n
    }

    /// Yes votes needed.
    pub const fn quorum(&self) -> u16 {
        self.quorum
    }

    /// Yes votes so far.
    pub const fn yes_votes(&self) -> u16 {
        self.yes
    }

    /// No votes so far.
    pub const fn no_votes(&self) -> u16 {
        self.no
    }

    /// Won as soon as `yes >= quorum`; lost as soon as `no > n - quorum`.
    pub const fn decision(&self) -> Decision {
        if self.yes >= self.quorum {
            Decision::Won
        } else if self.no > self.n - self.quorum {
            Decision::Lost
        } else {
            Decision::Pending
        }
    }
}
