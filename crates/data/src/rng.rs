//! A tiny, version-stable pseudo-random generator (SplitMix64).
//!
//! Data order must not change when a dependency is upgraded, so the crate carries its own
//! generator instead of `rand`. Streams are derived from a seed and a list of keys
//! (`epoch`, `task`, ...), so every decision is a pure function of its inputs.
//!
//! ```
//! use data::rng::SplitMix64;
//! let mut a = SplitMix64::from_keys(7, &[1, 2]);
//! let mut b = SplitMix64::from_keys(7, &[1, 2]);
//! assert_eq!(a.next_u64(), b.next_u64());
//! ```

/// SplitMix64 (Steele, Lea and Flood 2014): 64-bit state, full period.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for the stream named by `keys` under `seed` (keys are hashed in order).
    pub fn from_keys(seed: u64, keys: &[u64]) -> Self {
        let mut h = mix(seed ^ 0x9E37_79B9_7F4A_7C15);
        for &k in keys {
            h = mix(h ^ mix(k.wrapping_add(0x9E37_79B9_7F4A_7C15)));
        }
        Self { state: h }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// A uniform integer in `0..n` (`n > 0`; Lemire's multiply-shift, negligible bias).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A uniform float in `[0, 1)` with 53 bits of precision.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A stable 64-bit key for a string (FNV-1a), e.g. to derive a per-task stream from its name.
pub fn str_key(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation_and_deterministic() {
        let mut v: Vec<u32> = (0..100).collect();
        SplitMix64::from_keys(3, &[4]).shuffle(&mut v);
        let mut w: Vec<u32> = (0..100).collect();
        SplitMix64::from_keys(3, &[4]).shuffle(&mut w);
        assert_eq!(v, w);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        w.sort();
        assert_eq!(w, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = SplitMix64::new(1);
        for n in 1..50u64 {
            assert!(r.below(n) < n);
        }
        let u = r.unit_f64();
        assert!((0.0..1.0).contains(&u));
    }
}
