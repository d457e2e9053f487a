//! A tiny seeded PRNG for retry jitter. Randomness is a parameter: the seed comes from the
//! caller (the OS in adapters, the simulation seed in the simulator).

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and good enough for jitter.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) const fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=bound` (the tiny modulo bias is irrelevant for jitter).
    pub(crate) fn below_or_eq(&mut self, bound: u64) -> u64 {
        match bound.checked_add(1) {
            Some(m) => self.next_u64() % m,
            None => self.next_u64(),
        }
    }
}

/// The first op id of a machine: 32 random high bits from `seed` and `salt` (the lock token),
/// low bits zero. Machines of one driver then tag their commands from disjoint ranges (with
/// overwhelming probability), so a reply routed to the wrong machine matches nothing there.
pub(crate) fn op_base(seed: u64, salt: &[u8]) -> u64 {
    let mut h = SplitMix64::new(seed ^ 0x6c75_636b_795f_6f70);
    let mut acc = h.next_u64();
    for chunk in salt.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        acc ^= u64::from_le_bytes(word);
        acc = SplitMix64::new(acc).next_u64();
    }
    acc & !0xFFFF_FFFF
}
