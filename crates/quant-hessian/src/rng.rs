//! Counter-based random draws: the value for `(seed, stream, index)` depends on nothing else,
//! so results are the same with any thread count and any order of evaluation.

use ndarray::Array1;
use quant_core::Float;

/// SplitMix64's finaliser of a combined key.
#[inline]
fn mix(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits for `(seed, stream, index)` (used to derive independent seeds).
#[inline]
pub(crate) fn unit_bits(seed: u64, stream: u64, index: u64) -> u64 {
    mix(seed, stream, index)
}

/// A uniform number in `(0, 1]` (53 random bits).
#[inline]
pub(crate) fn unit(seed: u64, stream: u64, index: u64) -> f64 {
    ((mix(seed, stream, index) >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A vector of independent ±1 entries (Rademacher).
pub(crate) fn rademacher<F: Float>(n: usize, seed: u64, stream: u64) -> Array1<F> {
    Array1::from_shape_fn(n, |i| if mix(seed, stream, i as u64) >> 63 == 0 { F::one() } else { -F::one() })
}

/// A vector of independent standard normal entries (Box–Muller on counter draws).
pub(crate) fn normal<F: Float>(n: usize, seed: u64, stream: u64) -> Array1<F> {
    Array1::from_shape_fn(n, |i| {
        let (u1, u2) = (unit(seed, stream, 2 * i as u64), unit(seed, stream, 2 * i as u64 + 1));
        F::cast((-2.0 * u1.ln()).sqrt() * (core::f64::consts::TAU * u2).cos())
    })
}

/// A seeded permutation of `0..n` (Fisher–Yates on counter draws).
pub(crate) fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (mix(seed, u64::MAX, i as u64) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}
