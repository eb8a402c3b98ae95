//! Importance-weighted fits: never worse than the plain grid on the weighted error, equal to it
//! without information, better where the weights say so; bad weights are typed errors.

use ndarray::{Array2, ArrayD};
use quant_core::{
    ParamDtype, QuantError, RangeEstimator, Scheme, TableFit, UniformSpec, calibrate_weighted, fit_slice, fit_slices, quantize,
    quantize_weighted, rng,
};

type R = Result<(), QuantError>;

/// Heavy-tailed weights (a few columns far more active than the rest), as activations give.
fn importance(n: usize, seed: u64) -> Vec<f32> {
    (0..n).map(|j| (rng::normal::<f64>(1, seed, j as u64)[0] * 1.5).exp() as f32).collect()
}

fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let z = rng::normal::<f32>(rows * cols, seed, 99);
    // Rows of different scales and a few outliers.
    Array2::from_shape_fn((rows, cols), |(i, j)| {
        let v = z[i * cols + j] * (1.0 + i as f32 / rows as f32);
        if (i * 7 + j * 13) % 97 == 0 { v * 6.0 } else { v }
    })
}

fn weighted_sse(w: &Array2<f32>, q: &ArrayD<f32>, h: &[f32]) -> f64 {
    w.indexed_iter().map(|((i, j), &x)| f64::from(h[j]) * (f64::from(q[[i, j]]) - f64::from(x)).powi(2)).sum()
}

fn specs() -> Vec<UniformSpec> {
    let mut out = Vec::new();
    for bits in [2u8, 3, 4, 8] {
        for scheme in [Scheme::AsymmetricGrid, Scheme::AsymmetricExactZero, Scheme::SymmetricNarrow, Scheme::SymmetricFull] {
            for dtype in [ParamDtype::Native, ParamDtype::F16] {
                for range in [RangeEstimator::MinMax, RangeEstimator::Mse { steps: 50 }] {
                    let b = UniformSpec::builder().bits(bits).scheme(scheme).param_dtype(dtype).range(range);
                    for spec in [b.per_group(1, 32).check(), b.per_channel(0).check(), b.per_tensor().check()] {
                        out.push(spec.expect("valid spec"));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_slice_is_at_most_the_plain_grids_weighted_error() -> R {
    let mut strictly_better = 0;
    let specs = specs();
    for (k, spec) in specs.iter().enumerate() {
        let w = matrix(12, 96, k as u64);
        let h = importance(96, 1000 + k as u64);
        let weighted = quantize_weighted(&w, spec, &h)?.dequantize();
        let plain = quantize(&w, spec)?.dequantize();
        // Slice by slice: rows of groups (or whole rows / the whole tensor).
        let (ew, ep) = (weighted_sse(&w, &weighted, &h), weighted_sse(&w, &plain, &h));
        assert!(ew <= ep * (1.0 + 1e-12), "{spec:?}: {ew} > {ep}");
        for i in 0..12 {
            let row = |q: &ArrayD<f32>| (0..96).map(|j| f64::from(h[j]) * f64::from(q[[i, j]] - w[[i, j]]).powi(2)).sum::<f64>();
            if spec.granularity() != quant_core::Granularity::PerTensor {
                assert!(row(&weighted) <= row(&plain) * (1.0 + 1e-12) + 1e-30, "{spec:?} row {i}");
            }
        }
        if ew < ep * 0.99 {
            strictly_better += 1;
        }
    }
    // Heavy-tailed weights leave room almost everywhere: at 8 bits and with min-max many
    // fits still improve.
    assert!(strictly_better * 10 >= specs.len() * 7, "{strictly_better} of {}", specs.len());
    Ok(())
}

#[test]
fn two_level_tables_lower_the_weighted_error_overall() -> R {
    for (k, scheme) in [Scheme::AsymmetricGrid, Scheme::SymmetricNarrow].into_iter().enumerate() {
        for fit in [TableFit::Cover, TableFit::LeastSquares { iterations: 3 }] {
            for bits in [2u8, 3, 4] {
                let spec = UniformSpec::builder()
                    .bits(bits)
                    .scheme(scheme)
                    .per_group(1, 32)
                    .param_dtype(ParamDtype::Quantized { bits: 6, super_group: 8 })
                    .table_fit(fit)
                    .check()?;
                let w = matrix(16, 256, 50 + k as u64);
                let h = importance(256, 60 + k as u64);
                let ew = weighted_sse(&w, &quantize_weighted(&w, &spec, &h)?.dequantize(), &h);
                let ep = weighted_sse(&w, &quantize(&w, &spec)?.dequantize(), &h);
                assert!(ew < ep, "{spec:?}: {ew} >= {ep}");
            }
        }
    }
    Ok(())
}

#[test]
fn all_zero_weights_give_the_plain_quantizer() -> R {
    for spec in specs().iter().step_by(5) {
        let w = matrix(6, 64, 7);
        assert_eq!(quantize_weighted(&w, spec, &[0.0; 64])?, quantize(&w, spec)?, "{spec:?}");
    }
    Ok(())
}

#[test]
fn an_outlier_on_an_inactive_input_does_not_set_the_grid() -> R {
    // Column 5 holds a large weight but its input is never active (weight 0): the weighted
    // grid clips it and the active columns are quantized as if it were not there.
    let mut w = matrix(4, 32, 3);
    for i in 0..4 {
        w[[i, 5]] = 40.0;
    }
    let mut h = vec![1.0f32; 32];
    h[5] = 0.0;
    let spec = UniformSpec::builder().bits(4).per_channel(0).check()?;
    let ew = weighted_sse(&w, &quantize_weighted(&w, &spec, &h)?.dequantize(), &h);
    let ep = weighted_sse(&w, &quantize(&w, &spec)?.dequantize(), &h);
    assert!(ew < 0.1 * ep, "{ew} vs {ep}");
    Ok(())
}

#[test]
fn the_stored_layout_is_the_plain_quantizers() -> R {
    // Requantizing with the weighted parameters gives the same tensor: codes are nearest codes.
    let spec = UniformSpec::builder().bits(3).per_group(1, 16).check()?;
    let w = matrix(5, 48, 11);
    let h = importance(48, 12);
    let params = calibrate_weighted(&w, &spec, &h)?;
    let q = quantize_weighted(&w, &spec, &h)?;
    assert_eq!(params.quantize(&w)?, q);
    assert_eq!(q.params().len(), 5 * 3);
    Ok(())
}

#[test]
fn bad_weights_are_typed_errors() -> R {
    let w = matrix(3, 8, 1);
    let spec = UniformSpec::builder().bits(4).per_channel(0).check()?;
    assert!(matches!(quantize_weighted(&w, &spec, &[1.0; 7]), Err(QuantError::ShapeMismatch { .. })));
    let mut h = vec![1.0f32; 8];
    h[2] = -0.5;
    assert!(matches!(quantize_weighted(&w, &spec, &h), Err(QuantError::NegativeCurvature { index: 2, .. })));
    h[2] = f32::NAN;
    assert!(matches!(quantize_weighted(&w, &spec, &h), Err(QuantError::NonFinite { index: 2 })));
    h[2] = f32::INFINITY;
    assert!(matches!(quantize_weighted(&w, &spec, &h), Err(QuantError::NonFinite { index: 2 })));
    let mut bad = w.clone();
    bad[[1, 3]] = f32::NAN;
    assert!(matches!(quantize_weighted(&bad, &spec, &[1.0; 8]), Err(QuantError::NonFinite { index: 11 })));
    let empty = Array2::<f32>::zeros((0, 8));
    assert!(matches!(quantize_weighted(&empty, &spec, &[1.0; 8]), Err(QuantError::Empty)));
    // Many slices at once: the same checks, and the length must divide the elements.
    let xs: Vec<f32> = w.iter().copied().collect();
    assert!(matches!(fit_slices(&xs, 0, None, &spec), Err(QuantError::Empty)));
    assert!(matches!(fit_slices::<f32>(&[], 8, None, &spec), Err(QuantError::Empty)));
    assert!(matches!(fit_slices(&xs, 7, None, &spec), Err(QuantError::ShapeMismatch { .. })));
    assert!(matches!(fit_slices(&xs, 8, Some(&[1.0; 7]), &spec), Err(QuantError::ShapeMismatch { .. })));
    let mut nan = xs.clone();
    nan[17] = f32::NAN;
    assert!(matches!(fit_slices(&nan, 8, Some(&[1.0; 8]), &spec), Err(QuantError::NonFinite { index: 17 })));
    Ok(())
}

/// `fit_slices` gives every slice what `fit_slice` gives it alone (sixteen to the vector
/// there, one here), with weights and without.
#[test]
fn many_slices_at_once_equal_each_alone() -> R {
    let w = matrix(37, 24, 5);
    let h = importance(24, 6);
    let xs: Vec<f32> = w.iter().copied().collect();
    for spec in specs().iter().step_by(5) {
        for weights in [Some(&h[..]), None] {
            let many = fit_slices(&xs, 24, weights, spec)?;
            assert_eq!(many.len(), 37);
            for (r, p) in many.iter().enumerate() {
                assert_eq!(*p, fit_slice(&xs[r * 24..(r + 1) * 24], weights, spec)?, "{spec:?} row {r}");
            }
        }
    }
    Ok(())
}
