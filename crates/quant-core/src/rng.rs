//! The family's one random source, counter-based: the value for `(seed, stream, index)` is
//! SplitMix64's finaliser of the combined key and depends on nothing else, so results are
//! the same with any thread count, any split of the work and any order of evaluation.
//!
//! Used by stochastic rounding, k-means++ and the post-training methods here, and by the
//! Hessian engine's starting vectors, probes, subset draws and model initialisations.

use ndarray::Array1;

use crate::float::Float;

/// SplitMix64's increment (the golden-ratio gamma).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
#[inline]
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 uniform bits for `(seed, stream, index)`.
#[inline]
pub fn mix(seed: u64, stream: u64, index: u64) -> u64 {
    let z = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ index.wrapping_mul(GAMMA);
    finalize(z.wrapping_add(GAMMA))
}

/// SplitMix64 as a sequential stream: the state advances by the gamma and each draw is the
/// output function of the new state (Steele, Lea and Flood's generator). The counter form
/// [`mix`] is what new code should use; this one keeps the training shuffles' draws.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A stream starting from `state`.
    pub fn new(state: u64) -> Self {
        Self { state }
    }

    /// The next 64 bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        finalize(self.state)
    }
}

/// A uniform number in `[0, 1)` with 53 random bits (stream 0).
#[inline]
pub fn unit(seed: u64, index: u64) -> f64 {
    (mix(seed, 0, index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform number in `(0, 1]` with 53 random bits: never 0, so its logarithm is finite.
#[inline]
pub fn unit_nonzero(seed: u64, stream: u64, index: u64) -> f64 {
    ((mix(seed, stream, index) >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform index in `0..n` (`n ≥ 1`; multiply-shift, bias below 2^-32 for `n < 2^32`;
/// stream 0).
#[inline]
pub fn index(seed: u64, i: u64, n: usize) -> usize {
    ((u128::from(mix(seed, 0, i)) * n as u128) >> 64) as usize
}

/// A vector of independent ±1 entries (Rademacher).
pub fn rademacher<F: Float>(n: usize, seed: u64, stream: u64) -> Array1<F> {
    Array1::from_shape_fn(n, |i| if mix(seed, stream, i as u64) >> 63 == 0 { F::one() } else { -F::one() })
}

/// A vector of independent standard normal entries (Box–Muller on counter draws).
pub fn normal<F: Float>(n: usize, seed: u64, stream: u64) -> Array1<F> {
    Array1::from_shape_fn(n, |i| {
        let (u1, u2) = (unit_nonzero(seed, stream, 2 * i as u64), unit_nonzero(seed, stream, 2 * i as u64 + 1));
        F::cast((-2.0 * u1.ln()).sqrt() * (core::f64::consts::TAU * u2).cos())
    })
}

/// A seeded permutation of `0..n` (Fisher–Yates on counter draws, stream `u64::MAX`).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (mix(seed, u64::MAX, i as u64) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Value stability: these draws feed golden results across the family.
    #[test]
    fn draws_are_stable() {
        assert_eq!(mix(0, 0, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix(7, 0, 3), mix(7, 0, 3));
        assert_ne!(mix(7, 1, 3), mix(7, 0, 3));
        let u = unit(1, 2);
        assert!((0.0..1.0).contains(&u));
        assert!(unit_nonzero(1, 0, 2) > 0.0);
        assert_eq!(unit_nonzero(1, 0, 2) - unit(1, 2), 1.0 / (1u64 << 53) as f64);
        let mut p = permutation(10, 3);
        p.sort_unstable();
        assert_eq!(p, (0..10).collect::<Vec<_>>());
        assert!((0..1000).all(|i| index(5, i, 7) < 7));
    }
}
