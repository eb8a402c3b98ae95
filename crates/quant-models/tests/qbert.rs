//! Q-BERT statistics: subsets, per-block eigenvalues against dense ones, Ω, determinism.

mod common;

use common::{dense, jacobi_eigen, toy_data};
use ndarray::array;
use quant_hessian::{
    Batch, BlockStats, HessianError, HessianOperator, Lanczos, Model, OperatorExt, PowerIteration, QbertParams, TopEigen, qbert_statistics,
    split_subsets,
};
use quant_models::{Activation, Mlp, Quadratic};

#[test]
fn subsets_partition_the_samples() {
    for (n, k) in [(10, 10), (1797, 10), (23, 4), (5, 1)] {
        let parts = split_subsets(n, k, 42).expect("valid");
        assert_eq!(parts.len(), k);
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
        let (lo, hi) = parts.iter().fold((usize::MAX, 0), |(a, b), p| (a.min(p.len()), b.max(p.len())));
        assert!(hi - lo <= 1);
        assert!(parts.iter().all(|p| p.windows(2).all(|w| w[0] < w[1])));
    }
    assert_eq!(split_subsets(100, 10, 1).expect("valid"), split_subsets(100, 10, 1).expect("valid"));
    assert_ne!(split_subsets(100, 10, 1).expect("valid"), split_subsets(100, 10, 2).expect("valid"));
    assert!(matches!(split_subsets(3, 4, 0), Err(HessianError::InvalidSubsets { subsets: 4, samples: 3 })));
    assert!(matches!(split_subsets(3, 0, 0), Err(HessianError::InvalidSubsets { .. })));
}

fn model() -> (Mlp<f64>, ndarray::Array1<f64>) {
    let (x, y) = toy_data(50, 4, 3, 6);
    let m = Mlp::new(&x, &y, &[4], 3, Activation::Gelu).expect("valid").with_l2(0.05).expect("valid");
    let w = m.init(2);
    (m, w)
}

#[test]
fn eigenvalues_match_dense_block_hessians_on_each_subset() {
    let (m, w) = model();
    let power = PowerIteration::builder().tol(1e-10).max_iter(20_000).check().expect("valid");
    let params = QbertParams { subsets: 5, seed: 9, solver: TopEigen::Power(power), ..QbertParams::default() };
    let stats = qbert_statistics(&m, w.view(), &params).expect("runs");
    let subsets = split_subsets(m.samples(), 5, 9).expect("valid");
    assert_eq!(stats.len(), m.blocks().len());
    for (b, st) in stats.iter().enumerate() {
        assert_eq!(st.name, m.blocks()[b].name());
        assert_eq!(st.params, m.blocks()[b].len());
        assert!(st.converged.iter().all(|&c| c));
        for (s, subset) in subsets.iter().enumerate() {
            let op = HessianOperator::block(&m, w.view(), Batch::Indices(subset), b).expect("valid");
            let (eigs, _) = jacobi_eigen(&dense(&op));
            let top = eigs.iter().copied().max_by(|a, b| a.abs().total_cmp(&b.abs())).expect("non-empty");
            assert!((st.eigenvalues[s] - top).abs() <= 1e-8 * top.abs(), "{} subset {s}: {} vs {top}", st.name, st.eigenvalues[s]);
        }
        // Ω from the eigenvalues, recomputed here.
        let n = st.eigenvalues.len() as f64;
        let mean = st.eigenvalues.iter().sum::<f64>() / n;
        let std = (st.eigenvalues.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((st.mean - mean).abs() <= 1e-15 * mean.abs().max(1.0));
        assert!((st.std - std).abs() <= 1e-12 * std.max(1e-300) + 1e-18);
        assert!((st.omega - (mean.abs() + std)).abs() <= 1e-14);
        assert!(!st.negative_curvature(), "L2 0.05 keeps these blocks convex here");
    }
}

#[test]
fn results_are_deterministic_and_seed_dependent() {
    let (m, w) = model();
    let p = QbertParams { subsets: 4, seed: 1, solver: TopEigen::default(), ..QbertParams::default() };
    let a = qbert_statistics(&m, w.view(), &p).expect("runs");
    let b = qbert_statistics(&m, w.view(), &p).expect("runs");
    assert_eq!(a, b);
    let c = qbert_statistics(&m, w.view(), &QbertParams { subsets: 4, seed: 2, solver: TopEigen::default(), ..QbertParams::default() })
        .expect("runs");
    assert_ne!(a[0].eigenvalues, c[0].eigenvalues);
}

/// The (block, subset) pairs run in parallel with rayon; recomputing each pair alone, in
/// reverse order, on one thread through the public API gives the same bits.
#[test]
fn parallel_and_sequential_runs_give_the_same_bits() {
    let (m, w) = model();
    let params = QbertParams { subsets: 3, seed: 5, solver: TopEigen::default(), ..QbertParams::default() };
    let stats = qbert_statistics(&m, w.view(), &params).expect("runs");
    let subsets = split_subsets(m.samples(), 3, 5).expect("valid");
    for b in (0..m.blocks().len()).rev() {
        for (s, subset) in subsets.iter().enumerate().rev() {
            let op = HessianOperator::block(&m, w.view(), Batch::Indices(subset), b).expect("valid");
            let p = PowerIteration::default().with_seed(params.pair_seed(b, s));
            let value = match op.power_iteration(&p) {
                Ok(e) => e.values[0],
                Err(HessianError::NoConvergence { partial }) => partial.values[0],
                Err(e) => panic!("{e}"),
            };
            assert_eq!(value.to_bits(), stats[b].eigenvalues[s].to_bits());
        }
    }
}

#[test]
fn saddle_points_are_reported() {
    // The dominant curvature of the second block is negative.
    let a = array![[2.0, 0.0, 0.0], [0.0, -5.0, 1.0], [0.0, 1.0, 1.0]];
    let q = Quadratic::new(&a, &array![0.0, 0.0, 0.0]).expect("valid").with_blocks(&[("a", 1), ("b", 2)]).expect("valid");
    let w = array![1.0, 1.0, 1.0];
    let stats: Vec<BlockStats> =
        qbert_statistics(&q, w.view(), &QbertParams { subsets: 1, seed: 0, solver: TopEigen::default(), ..QbertParams::default() })
            .expect("runs");
    assert!(!stats[0].negative_curvature());
    assert!((stats[0].omega - 2.0).abs() < 1e-3);
    assert!(stats[1].negative_curvature());
    assert!(stats[1].eigenvalues[0] < -5.0);
    // Lanczos reports the largest algebraic eigenvalue and the smallest.
    let lz = QbertParams { subsets: 1, seed: 0, solver: TopEigen::Lanczos(Lanczos::default()), ..QbertParams::default() };
    let stats = qbert_statistics(&q, w.view(), &lz).expect("runs");
    let (lo, hi) = (-2.0 - (9.0f64 + 1.0).sqrt(), -2.0 + 10f64.sqrt());
    assert!((stats[1].eigenvalues[0] - hi).abs() < 1e-9);
    assert!((stats[1].smallest[0] - lo).abs() < 1e-9);
    assert!(stats[1].negative_curvature());
}

#[test]
fn bad_inputs_give_typed_errors() {
    let (m, w) = model();
    assert!(matches!(
        qbert_statistics(&m, w.view(), &QbertParams { subsets: 51, seed: 0, solver: TopEigen::default(), ..QbertParams::default() }),
        Err(HessianError::InvalidSubsets { subsets: 51, samples: 50 })
    ));
    let short = w.slice(ndarray::s![1..]);
    assert!(matches!(qbert_statistics(&m, short, &QbertParams::default()), Err(HessianError::ShapeMismatch { .. })));
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Mlp<f32>>();
    check::<Quadratic<f64>>();
    check::<quant_hessian::Dual<f64>>();
    check::<HessianError>();
    check::<BlockStats>();
    check::<quant_hessian::Eigenpairs<f32>>();
    check::<quant_hessian::Extremes<f64>>();
    check::<quant_hessian::TraceEstimate>();
    check::<quant_hessian::SpectralDensity>();
    check::<QbertParams>();
    check::<HessianOperator<'static, f64, Mlp<f64>>>();
}

#[test]
fn warm_started_lanczos_finds_the_same_eigenvalues_with_fewer_products() {
    // Each subset's solve starts from the previous subset's top Ritz vector (mixed with its
    // random start). The eigenvalues still meet the tolerance against the dense blocks.
    let (x, y) = toy_data(400, 12, 4, 3);
    let m = Mlp::new(&x, &y, &[20], 4, Activation::Gelu).expect("valid").with_l2(0.01).expect("valid");
    let w = m.init(4);
    let lanczos = Lanczos::builder().tol(1e-6).smallest(false).check().expect("valid");
    let cold = QbertParams { subsets: 6, seed: 3, solver: TopEigen::Lanczos(lanczos), ..QbertParams::default() };
    let warm = QbertParams { warm_start: true, ..cold };
    let (c, h) = (qbert_statistics(&m, w.view(), &cold).expect("runs"), qbert_statistics(&m, w.view(), &warm).expect("runs"));
    assert_eq!(h, qbert_statistics(&m, w.view(), &warm).expect("runs"), "deterministic");
    let subsets = split_subsets(m.samples(), 6, 3).expect("valid");
    for (b, (cs, hs)) in c.iter().zip(&h).enumerate() {
        assert!(hs.converged.iter().all(|&v| v));
        for (s, subset) in subsets.iter().enumerate() {
            let op = HessianOperator::block(&m, w.view(), Batch::Indices(subset), b).expect("valid");
            let (eigs, _) = jacobi_eigen(&dense(&op));
            let top = eigs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            // A relative residual r bounds the error of the Ritz value by r·|θ|.
            assert!((hs.eigenvalues[s] - top).abs() <= 1e-6 * top.abs(), "{} subset {s}: {} vs {top}", hs.name, hs.eigenvalues[s]);
            assert!((cs.eigenvalues[s] - top).abs() <= 1e-6 * top.abs());
        }
    }
    let (cold_products, warm_products): (usize, usize) = (c.iter().map(|s| s.hvps).sum(), h.iter().map(|s| s.hvps).sum());
    assert!(warm_products < cold_products, "warm {warm_products} vs cold {cold_products}");
    // The first subset has nothing to start from: the same solve as cold.
    for (cs, hs) in c.iter().zip(&h) {
        assert_eq!(cs.eigenvalues[0], hs.eigenvalues[0]);
    }
}
