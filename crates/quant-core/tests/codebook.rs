//! Ternary, binary and k-means quantizers: golden values, invariants, errors.

use approx::assert_abs_diff_eq;
use ndarray::{Array1, ArrayD, IxDyn, array};
use proptest::prelude::*;
use quant_core::{
    GradientReduction, KMeansAlgorithm, KMeansInit, KMeansSpec, LutKind, QuantError, TableDtype, TernarySpec, binarize, centroid_gradients,
    clip_mask, kmeans_1d, kmeans_quantize, strategies, ternarize, ternarize_lat, ternarize_stochastic,
};

type R = Result<(), QuantError>;

fn values<F: Copy>(a: &ArrayD<F>) -> Vec<F> {
    a.iter().copied().collect()
}

#[test]
fn twn_by_hand() -> R {
    // Row 0: mean|w| = 2.15/4 = 0.5375, Δ = 0.37625, above: 0.9 and 1.1, α = 1.0.
    // Row 1: all zero: empty mask, α = 0 (not 0/0).
    // Row 2: mean|w| = 0.4, Δ = 0.28, above: 0.6, -0.5 and 0.3 → α = 1.4/3.
    let w = array![[0.9f64, -0.1, -1.1, 0.05], [0.0, 0.0, 0.0, 0.0], [0.6, -0.5, 0.3, -0.2]];
    let t = ternarize(&w, &TernarySpec::builder().per_channel(0).check()?)?;
    assert_eq!(t.kind(), LutKind::Ternary);
    assert_eq!(t.bits(), 2);
    assert_abs_diff_eq!(t.table(0).unwrap()[2], 1.0, epsilon = 1e-12);
    assert!(t.table(1).unwrap().iter().all(|&v| v == 0.0));
    let a = 1.4 / 3.0;
    assert_abs_diff_eq!(t.table(2).unwrap()[2], a, epsilon = 1e-12);
    let dq = values(&t.dequantize());
    let want = [1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, a, -a, a, 0.0];
    for (a, b) in dq.iter().zip(want) {
        assert_abs_diff_eq!(*a, b, epsilon = 1e-12);
    }
    // Storage: 12 codes x 2 bits = 3 bytes + three f64 alphas.
    assert_eq!(t.storage_bytes(), 3 + 3 * 8);
    Ok(())
}

#[test]
fn ternarybert_clip_and_its_ste_mask() -> R {
    // Clipped to [2.5, -0.5, 0.2, -2.5]: mean|w| = 1.425, Δ = 0.9975, α = 2.5.
    let w = array![3.0f32, -0.5, 0.2, -4.0];
    let spec = TernarySpec::builder().clip(2.5).check()?;
    assert_eq!(values(&ternarize(&w, &spec)?.dequantize()), [2.5, 0.0, 0.0, -2.5]);
    assert_eq!(clip_mask(&w, &spec)?, array![false, true, true, false]);
    assert_eq!(clip_mask(&w, &TernarySpec::default())?, array![true, true, true, true]);
    Ok(())
}

#[test]
fn binary_by_hand() -> R {
    let b = binarize(&array![0.5f32, -1.5, 0.0, 2.0], &TernarySpec::default())?;
    assert_eq!(b.bits(), 1);
    assert_eq!(values(&b.dequantize()), [1.0, -1.0, 1.0, 1.0]);
    assert_eq!(b.storage_bytes(), 1 + 4);
    Ok(())
}

#[test]
fn stochastic_ternary_is_unbiased_and_seeded() -> R {
    let w = Array1::from_elem(20_000, 0.25f64).into_dyn();
    let mut w2 = w.clone();
    w2[[0]] = 1.0; // s = max|w| = 1, so each element is +1 with probability 0.25
    let a = ternarize_stochastic(&w2, &TernarySpec::default(), 9)?;
    assert_eq!(a, ternarize_stochastic(&w2, &TernarySpec::default(), 9)?);
    let mean = a.dequantize().iter().skip(1).sum::<f64>() / 19_999.0;
    // Bernoulli(0.25) mean: standard error sqrt(0.1875/20000) = 0.0031; 5 standard errors.
    assert!((mean - 0.25).abs() < 0.016, "{mean}");
    assert!(a.dequantize().iter().all(|&v| v == 0.0 || v == 1.0));
    Ok(())
}

#[test]
fn lat_never_worse_than_twn_and_uses_curvature() -> R {
    // TWN: Δ = 0.7·0.76 = 0.532, all four non-zero weights kept, α = 0.95. The curvature
    // says the outlier 2.0 hardly matters: LAT's α = (0.01·2 + 3·0.6)/3.01 = 0.6047, and the
    // weighted error drops from 0.3785 to 0.0195.
    let w = array![2.0f64, 0.6, 0.6, 0.6, 0.0];
    let d = array![0.01f64, 1.0, 1.0, 1.0, 1.0];
    let (t, info) = ternarize_lat(&w, &d, &TernarySpec::default(), 50)?;
    assert_abs_diff_eq!(info.twn_error[0], 0.01 * 1.05f64.powi(2) + 3.0 * 0.35f64.powi(2), epsilon = 1e-12);
    assert!(info.lat_error[0] < 0.1 * info.twn_error[0], "{info:?}");
    assert_abs_diff_eq!(t.table(0).unwrap()[2], 1.82 / 3.01, epsilon = 1e-12);
    assert!(matches!(
        ternarize_lat(&w, &array![1.0, 1.0, 1.0, 1.0, -1.0], &TernarySpec::default(), 5),
        Err(QuantError::NegativeCurvature { index: 4, .. })
    ));
    assert!(matches!(ternarize_lat(&w, &array![1.0], &TernarySpec::default(), 5), Err(QuantError::ShapeMismatch { .. })));
    assert_eq!(ternarize_lat(&w, &d, &TernarySpec::default(), 0).map(|_| ()), Err(QuantError::InvalidIterations));
    Ok(())
}

/// Inertia of every partition of sorted `v` into `k` non-empty contiguous clusters.
fn brute_force(v: &[f64], k: usize) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    fn go(s: &[f64], k: usize) -> f64 {
        let sse = |c: &[f64]| {
            let m = c.iter().sum::<f64>() / c.len() as f64;
            c.iter().map(|x| (x - m).powi(2)).sum::<f64>()
        };
        if k == 1 {
            return sse(s);
        }
        (1..=s.len() - (k - 1)).map(|i| sse(&s[..i]) + go(&s[i..], k - 1)).fold(f64::INFINITY, f64::min)
    }
    if k >= s.len() { 0.0 } else { go(&s, k) }
}

#[test]
fn exact_kmeans_by_hand() -> R {
    // {1,2,3} {10,11,12} {30}: 2 + 2 + 0.
    let c = kmeans_1d(&[12.0, 1.0, 30.0, 2.0, 11.0, 3.0, 10.0], 3, KMeansInit::Linear, KMeansAlgorithm::Exact)?;
    assert_eq!(c.centroids, [2.0, 11.0, 30.0]);
    assert_abs_diff_eq!(c.inertia, 4.0, epsilon = 1e-12);
    // Fewer distinct values than k: every value its own centroid, inertia 0, k entries.
    let c = kmeans_1d(&[5.0, 5.0, -1.0], 4, KMeansInit::Linear, KMeansAlgorithm::Exact)?;
    assert_eq!(c.centroids, [-1.0, 5.0, 5.0, 5.0]);
    assert_eq!(c.inertia, 0.0);
    Ok(())
}

#[test]
fn kmeans_edge_cases_are_finite() -> R {
    for algo in [KMeansAlgorithm::Exact, KMeansAlgorithm::default()] {
        for init in [KMeansInit::Linear, KMeansInit::Density, KMeansInit::PlusPlus { seed: 3 }] {
            for data in [vec![0.0; 10], vec![2.5; 7], vec![1.0], vec![0.0, 0.0, 1.0, 1.0, 1.0]] {
                let c = kmeans_1d(&data, 4, init, algo)?;
                assert_eq!(c.centroids.len(), 4);
                assert!(c.centroids.iter().all(|v| v.is_finite()) && c.inertia.is_finite(), "{data:?} {c:?}");
                assert!(c.inertia <= 1e-12);
            }
        }
    }
    assert_eq!(kmeans_1d(&[], 2, KMeansInit::Linear, KMeansAlgorithm::Exact), Err(QuantError::Empty));
    assert_eq!(kmeans_1d(&[1.0, f64::NAN], 2, KMeansInit::Linear, KMeansAlgorithm::Exact), Err(QuantError::NonFinite { index: 1 }));
    assert_eq!(kmeans_1d(&[1.0], 0, KMeansInit::Linear, KMeansAlgorithm::Exact), Err(QuantError::InvalidClusterCount { k: 0 }));
    assert_eq!(KMeansSpec::builder().k(257).check(), Err(QuantError::InvalidClusterCount { k: 257 }));
    assert_eq!(KMeansSpec::builder().bits(9).check(), Err(QuantError::InvalidBits { bits: 9, min: 1, max: 8 }));
    assert!(matches!(
        KMeansSpec::builder().algorithm(KMeansAlgorithm::Lloyd { max_iter: 1, tol: f64::NAN }).check(),
        Err(QuantError::InvalidTolerance { .. })
    ));
    assert!(matches!(
        KMeansSpec::builder().algorithm(KMeansAlgorithm::Lloyd { max_iter: 0, tol: 0.0 }).check(),
        Err(QuantError::InvalidIterations)
    ));
    let w = array![1.0f32, f32::INFINITY];
    assert_eq!(kmeans_quantize(&w, &KMeansSpec::default()).map(|_| ()), Err(QuantError::NonFinite { index: 1 }));
    Ok(())
}

#[test]
fn codebook_tensor_storage_f16_tables_and_overflow() -> R {
    let w = ArrayD::from_shape_fn(IxDyn(&[4, 10]), |ix| (ix[0] * 10 + ix[1]) as f32 * 0.37 - 7.0);
    let spec = KMeansSpec::builder().bits(3).per_channel(0).table(TableDtype::F16).exact().check()?;
    let (t, info) = kmeans_quantize(&w, &spec)?;
    assert_eq!(t.bits(), 3);
    // 40 codes x 3 bits = 15 bytes; 4 tables x 8 entries x 2 bytes.
    assert_eq!(t.storage_bytes(), 15 + 4 * 8 * 2);
    for v in t.tables() {
        assert_eq!(f64::from(*v), half::f16::from_f32(*v).to_f64(), "table entry not an f16 value");
    }
    // The reported inertia is that of the stored tensor.
    let err: f64 = w.iter().zip(t.dequantize().iter()).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    assert_abs_diff_eq!(err, info.inertia.iter().sum::<f64>(), epsilon = 1e-6);
    let big = array![1e6f32, -1e6, 0.0];
    assert!(matches!(
        kmeans_quantize(&big, &KMeansSpec::builder().k(3).table(TableDtype::F16).check()?),
        Err(QuantError::TableOverflow { .. })
    ));
    // k = 1 still takes one bit per code.
    let (one, _) = kmeans_quantize(&w, &KMeansSpec::builder().k(1).check()?)?;
    assert_eq!(one.bits(), 1);
    Ok(())
}

#[test]
fn centroid_gradients_and_step() -> R {
    // Codes: 0.0, 0.1 -> centroid 0.05; 1.0, 1.2, 1.1 -> 1.1 (exact, k = 2).
    let w = array![0.0f64, 1.0, 0.1, 1.2, 1.1];
    let (mut t, _) = kmeans_quantize(&w, &KMeansSpec::builder().k(2).exact().check()?)?;
    let g = array![1.0, 2.0, 3.0, 4.0, 5.0];
    assert_eq!(centroid_gradients(&t, &g, GradientReduction::Sum)?, [4.0, 11.0]);
    let mean = centroid_gradients(&t, &g, GradientReduction::Mean)?;
    assert_abs_diff_eq!(mean[1], 11.0 / 3.0, epsilon = 1e-12);
    // The default table precision is f32, so entries are f32 values before and after the step.
    let f32_round = |v: f64| f64::from(v as f32);
    assert_eq!(t.tables(), [f32_round(0.05), f32_round(1.1)]);
    t.apply_table_step(&[4.0, 11.0], 0.01)?;
    assert_eq!(t.tables(), [f32_round(f32_round(0.05) - 0.04), f32_round(f32_round(1.1) - 0.11)]);
    assert!(matches!(t.apply_table_step(&[1.0], 0.1), Err(QuantError::ParamCountMismatch { .. })));
    assert!(matches!(centroid_gradients(&t, &array![1.0], GradientReduction::Sum), Err(QuantError::ShapeMismatch { .. })));
    let mut tern = ternarize(&w, &TernarySpec::default())?;
    assert_eq!(tern.apply_table_step(&[0.0; 3], 0.1), Err(QuantError::NotACodebook));
    Ok(())
}

fn weights() -> impl Strategy<Value = Vec<f64>> {
    prop_oneof![prop::collection::vec(-10.0f64..10.0, 1..40), prop::collection::vec((-20i32..20).prop_map(|v| f64::from(v) / 4.0), 1..40),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn exact_matches_brute_force(v in prop::collection::vec((-30i32..30).prop_map(|x| f64::from(x) / 3.0), 1..10), k in 1usize..5) {
        let c = kmeans_1d(&v, k, KMeansInit::Linear, KMeansAlgorithm::Exact).unwrap();
        let b = brute_force(&v, k);
        // Prefix-sum cost vs direct sums: values are at most 10 in size, 9 of them.
        prop_assert!((c.inertia - b).abs() <= 1e-9 * (1.0 + b), "{} vs {}", c.inertia, b);
    }

    #[test]
    fn exact_le_lloyd_le_initial(v in weights(), k in 1usize..9, seed in any::<u64>(), which in 0u8..3) {
        let init = [KMeansInit::Linear, KMeansInit::Density, KMeansInit::PlusPlus { seed }][usize::from(which)];
        let l = kmeans_1d(&v, k, init, KMeansAlgorithm::default()).unwrap();
        let e = kmeans_1d(&v, k, init, KMeansAlgorithm::Exact).unwrap();
        // f64 prefix sums lose about n·ε of Σx²; 1e-9 of it is far above that and far below
        // any real difference between clusterings of these inputs.
        let tol = 1e-9 * (1.0 + v.iter().map(|x| x * x).sum::<f64>());
        prop_assert!(e.inertia <= l.inertia + tol);
        prop_assert!(l.inertia <= l.inertia_history[0] + tol);
        for w in l.inertia_history.windows(2) {
            prop_assert!(w[1] <= w[0] + tol, "{:?}", l.inertia_history);
        }
        prop_assert!(l.centroids.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn codes_index_valid_centroids(x in strategies::tensor::<f32>(2, 12, 5.0), bits in 1u8..=4, exact in any::<bool>()) {
        let b = KMeansSpec::builder().bits(bits).per_channel(0);
        let spec = if exact { b.exact() } else { b }.check().unwrap();
        let (t, _) = kmeans_quantize(&x, &spec).unwrap();
        prop_assert!(t.codes().unpack().iter().all(|&c| usize::from(c) < t.levels()));
        // Each element dequantizes to the nearest entry of its table.
        let dq = t.dequantize();
        for (slice, (xs, ds)) in x.outer_iter().zip(dq.outer_iter()).enumerate() {
            let table = t.table(slice).unwrap();
            for (a, d) in xs.iter().zip(ds.iter()) {
                let best = table.iter().map(|c| (a - c).abs()).fold(f32::INFINITY, f32::min);
                prop_assert!(((a - d).abs() - best).abs() <= 1e-6 * (1.0 + a.abs()));
            }
        }
    }

    #[test]
    fn ternary_values_and_optimal_alpha(x in strategies::tensor::<f64>(2, 10, 3.0)) {
        let t = ternarize(&x, &TernarySpec::builder().per_channel(0).check().unwrap()).unwrap();
        let dq = t.dequantize();
        for (slice, (xs, ds)) in x.outer_iter().zip(dq.outer_iter()).enumerate() {
            let a = t.table(slice).unwrap()[2];
            prop_assert!(ds.iter().all(|&d| d == 0.0 || d == a || d == -a));
            // For the fixed codes b, ||w − αb||² is minimised at α = Σ|w|·|b| / Σ|b|.
            let (num, den) = xs.iter().zip(ds.iter()).filter(|(_, d)| **d != 0.0).fold((0.0, 0.0), |(n, m), (w, _)| (n + w.abs(), m + 1.0));
            let best = if den > 0.0 { num / den } else { 0.0 };
            prop_assert!((a - best).abs() <= 1e-12 * (1.0 + best), "{a} vs {best}");
        }
    }

    #[test]
    fn lat_never_worse_than_twn(x in prop::collection::vec(-3.0f64..3.0, 1..30), d in prop::collection::vec(0.0f64..5.0, 30)) {
        let w = Array1::from(x.clone());
        let dv = Array1::from(d[..x.len()].to_vec());
        let (_, info) = ternarize_lat(&w, &dv, &TernarySpec::default(), 100).unwrap();
        prop_assert!(info.lat_error[0] <= info.twn_error[0] + 1e-12 * (1.0 + info.twn_error[0]));
    }
}
