//! Per-actor clocks: a constant drift rate and an offset that jumps may move.

/// Maps true time (ns) to an actor's local time (ns): `local = t + t * ppm / 1e6 + offset`.
///
/// A positive `ppm` runs fast. Jumps move the offset; a client's machine clamps any backwards
/// step, a Redis node judges its keys by whatever its clock says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Drift rate in parts per million (positive: fast).
    pub ppm: i32,
    /// Offset in nanoseconds.
    pub offset: i64,
}

const MILLION: i128 = 1_000_000;

impl Clock {
    /// A clock with the given drift and offset.
    pub const fn new(ppm: i32, offset: i64) -> Clock {
        Clock { ppm, offset }
    }

    /// Local time at true time `t`, clamped at zero.
    pub fn local(&self, t: u64) -> u64 {
        // i64 arithmetic when it cannot overflow (every simulated run), i128 otherwise.
        if let (Ok(ti), true) = (
            i64::try_from(t),
            t < 1 << 44 && self.ppm.unsigned_abs() < 1 << 18,
        ) {
            let l = ti + ti * i64::from(self.ppm) / 1_000_000 + self.offset;
            return u64::try_from(l.max(0)).unwrap_or(0);
        }
        let t = i128::from(t);
        let l = t + t * i128::from(self.ppm) / MILLION + i128::from(self.offset);
        u64::try_from(l.max(0)).unwrap_or(u64::MAX)
    }

    /// The earliest true time at which the local clock reads at least `local`.
    pub fn true_at(&self, local: u64) -> u64 {
        if local == u64::MAX {
            return u64::MAX;
        }
        let target = i128::from(local) - i128::from(self.offset);
        let mut t = (target * MILLION / (MILLION + i128::from(self.ppm))).max(0);
        let at = |t: i128| u64::try_from(t).unwrap_or(u64::MAX);
        while self.local(at(t)) < local {
            t += 1;
        }
        while t > 0 && self.local(at(t - 1)) >= local {
            t -= 1;
        }
        at(t)
    }

    /// Moves the clock by `by` nanoseconds (forwards if positive).
    pub fn jump(&mut self, by: i64) {
        self.offset = self.offset.saturating_add(by);
    }
}
