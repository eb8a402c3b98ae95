//! Shared inputs and measures for the `quant` benches.

use ndarray::Array2;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

/// A `rows x cols` matrix of N(0, 0.02²) weights (a typical transformer init), seeded.
pub fn gaussian_weights(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).unwrap_or_else(|_| unreachable!("valid parameters"));
    Array2::from_shape_simple_fn((rows, cols), || normal.sample(&mut rng))
}

/// Signal-to-quantization-noise ratio in dB, accumulated in f64.
pub fn sqnr_db(x: &[f32], y: &[f32]) -> f64 {
    let signal: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
    let noise: f64 = x.iter().zip(y).map(|(&a, &b)| f64::from(a - b).powi(2)).sum();
    10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10()
}
