//! A counter-based random source: the value for element `i` depends only on `(seed, i)`.

/// SplitMix64's finaliser applied to `seed` and `index`: a uniform `u64`.
#[inline]
pub(crate) fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in `[0, 1)` with 53 random bits.
#[inline]
pub(crate) fn unit(seed: u64, index: u64) -> f64 {
    (mix(seed, index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform index in `0..n` (`n ≥ 1`; multiply-shift, bias below 2^-32 for `n < 2^32`).
#[inline]
pub(crate) fn index(seed: u64, i: u64, n: usize) -> usize {
    ((u128::from(mix(seed, i)) * n as u128) >> 64) as usize
}
