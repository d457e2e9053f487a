//! Vote tally for quorum protocols, deciding early both ways.

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

    /// A fresh tally of `n` voters needing `quorum` yes votes.
    pub const fn new(n: u16, quorum: u16) -> Tally {
        Tally {
            n,
            quorum,
            yes: 0,
            no: 0,
        }
    }

    /// Records one yes vote.
    pub fn yes(&mut self) {
        debug_assert!(self.yes + self.no < self.n, "more votes than voters");
        self.yes += 1;
    }

    /// Records one no vote (refusal, error or timeout).
    pub fn no(&mut self) {
        debug_assert!(self.yes + self.no < self.n, "more votes than voters");
        self.no += 1;
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
