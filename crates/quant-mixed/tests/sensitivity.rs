//! Ω, curvature signs and candidate scoring with the real quantizers.

use ndarray::Array2;
use quant_core::{KMeansSpec, Method, Scheme, TernarySpec, UniformSpec};
use quant_mixed::{Budget, Candidate, Curvature, MixedError, Problem, omega, score_layer};

#[test]
fn omega_is_mean_magnitude_plus_population_std() -> Result<(), MixedError> {
    let o = omega(&[1.0, 3.0])?;
    assert_eq!((o.mean, o.std, o.omega, o.negative), (2.0, 1.0, 3.0, false));
    // A negative eigenvalue is reported, and |mean| keeps Ω positive.
    let o = omega(&[-4.0, -2.0, 0.5])?;
    assert!(o.negative);
    assert!((o.mean + 11.0 / 6.0).abs() < 1e-15);
    assert!(o.omega > 0.0);
    assert_eq!(omega(&[]).err(), Some(MixedError::Empty { what: "eigenvalues" }));
    assert!(matches!(omega(&[1.0, f64::INFINITY]), Err(MixedError::NonFinite { index: 1, .. })));
    Ok(())
}

fn weights() -> Array2<f32> {
    Array2::from_shape_fn((32, 64), |(i, j)| ((i * 131 + j * 71) % 97) as f32 / 97.0 - 0.5)
}

#[test]
fn scoring_uses_exact_storage_and_errors_that_shrink_with_bits() -> Result<(), Box<dyn std::error::Error>> {
    let w = weights();
    let mut candidates = Vec::new();
    for b in [2u8, 3, 4, 8] {
        candidates.push(Candidate::Quantized(Method::Uniform(
            UniformSpec::builder().bits(b).scheme(Scheme::SymmetricNarrow).per_group(1, 32).check()?,
        )));
    }
    candidates.push(Candidate::Quantized(Method::KMeans(KMeansSpec::builder().bits(2).check()?)));
    candidates.push(Candidate::Quantized(Method::Ternary(TernarySpec::builder().check()?)));
    candidates.push(Candidate::Quantized(Method::Binary(TernarySpec::builder().check()?)));
    candidates.push(Candidate::Float32);
    let layer = score_layer("fc", &w, Curvature::AverageTrace(0.5), &candidates, 1000, 8)?;
    let o = &layer.options;
    for pair in o[..4].windows(2) {
        assert!(pair[1].sensitivity < pair[0].sensitivity, "more bits, less error: {pair:?}");
        assert!(pair[1].bytes > pair[0].bytes);
    }
    // The sizes are the quantized tensors' own storage, tables included.
    let q = quant_core::quantize(&w, &UniformSpec::builder().bits(4).scheme(Scheme::SymmetricNarrow).per_group(1, 32).check()?)?;
    assert_eq!(o[2].bytes, q.storage_bytes() as u64);
    assert_eq!(o[2].group_size, Some(32));
    // Sensitivity = trace/n · ‖Q(W) − W‖², recomputed here.
    let err: f64 = w.iter().zip(q.dequantize().iter()).map(|(&a, &b)| f64::from(a - b).powi(2)).sum();
    assert!((o[2].sensitivity - 0.5 * err).abs() <= 1e-12 * o[2].sensitivity);
    assert_eq!((o[4].bits, o[5].bits, o[6].bits, o[7].bits), (2, 2, 1, 32));
    assert_eq!(o[7].bytes, 4 * 32 * 64);
    assert_eq!(o[7].sensitivity, 0.0);
    assert_eq!(o[3].bops, 1000 * 8 * 8);
    Ok(())
}

#[test]
fn negative_curvature_is_reported_and_weighted_by_magnitude() -> Result<(), Box<dyn std::error::Error>> {
    let w = weights();
    let c = [
        Candidate::Quantized(Method::Uniform(UniformSpec::builder().bits(2).check()?)),
        Candidate::Quantized(Method::Uniform(UniformSpec::builder().bits(8).check()?)),
    ];
    let pos = score_layer("a", &w, Curvature::TopEigenvalue(3.0), &c, 0, 8)?;
    let neg = score_layer("b", &w, Curvature::TopEigenvalue(-3.0), &c, 0, 8)?;
    assert!(!pos.negative_curvature && neg.negative_curvature);
    assert_eq!(pos.options[0].sensitivity, neg.options[0].sensitivity);
    let plan = Problem::new(vec![pos, neg])?.solve(Budget::CompressionRatio(1.0))?;
    assert!(plan.layers[1].negative_curvature);
    assert!(matches!(score_layer("x", &w, Curvature::Omega(f64::NAN), &c, 0, 8), Err(MixedError::NonFinite { .. })));
    assert!(matches!(score_layer("x", &w, Curvature::Omega(1.0), &[], 0, 8), Err(MixedError::Empty { .. })));
    let bad = Array2::from_elem((2, 2), f32::NAN);
    assert!(matches!(score_layer("x", &bad, Curvature::Omega(1.0), &c, 0, 8), Err(MixedError::Core(_))));
    Ok(())
}
