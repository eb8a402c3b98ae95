//! Public-API behaviour: typed errors on bad input, STE/LSQ, observers, storage accounting.

use approx::assert_abs_diff_eq;
use ndarray::{Array1, Array2, Array3, ArrayD, IxDyn, array};
use quant_core::{
    Granularity, PackedCodes, QuantError, QuantParams, QuantizedTensor, RangeEstimator, RangeObserver, Scheme, UniformSpec,
    UniformSpecBuilder, calibrate, fake_quantize, lsq_gradients, quantize, ste_backward,
};

type R = Result<(), QuantError>;

#[test]
fn invalid_specs_are_typed_errors() {
    assert_eq!(UniformSpec::new(0, Scheme::AsymmetricGrid), Err(QuantError::InvalidBits { bits: 0, min: 1, max: 8 }));
    assert_eq!(UniformSpec::new(9, Scheme::AsymmetricExactZero), Err(QuantError::InvalidBits { bits: 9, min: 1, max: 8 }));
    assert_eq!(UniformSpec::new(1, Scheme::SymmetricNarrow), Err(QuantError::InvalidBits { bits: 1, min: 2, max: 8 }));
    assert_eq!(UniformSpec::new(1, Scheme::SymmetricFull), Err(QuantError::InvalidBits { bits: 1, min: 2, max: 8 }));
    assert_eq!(UniformSpec::builder().per_group(0, 0).check(), Err(QuantError::InvalidGroupSize { size: 0 }));
    for (lower, upper) in [(f64::NAN, 99.0), (1.0, f64::NAN), (50.0, 50.0), (-1.0, 99.0), (1.0, 100.5)] {
        let e = UniformSpec::builder().range(RangeEstimator::Percentile { lower, upper }).check();
        assert!(matches!(e, Err(QuantError::InvalidPercentile { .. })), "{lower} {upper}");
    }
    assert_eq!(UniformSpec::builder().range(RangeEstimator::Mse { steps: 0 }).check(), Err(QuantError::InvalidSearchSteps { steps: 0 }));
}

#[test]
fn bad_tensors_are_typed_errors() -> R {
    let spec = UniformSpec::default();
    let mut x = Array2::<f32>::zeros((4, 5));
    x[[2, 3]] = f32::NAN;
    assert_eq!(quantize(&x, &spec), Err(QuantError::NonFinite { index: 13 }));
    x[[0, 1]] = f32::NEG_INFINITY;
    assert_eq!(quantize(&x, &spec), Err(QuantError::NonFinite { index: 1 }));
    for g in [Granularity::PerChannel { axis: 0 }, Granularity::PerChannel { axis: 1 }, Granularity::PerGroup { axis: 1, size: 2 }] {
        let s = spec.with_granularity(g)?;
        assert_eq!(quantize(&x, &s), Err(QuantError::NonFinite { index: 1 }), "{g:?}");
        assert_eq!(fake_quantize(&x, &s).map(|_| ()), Err(QuantError::NonFinite { index: 1 }), "{g:?}");
        assert_eq!(calibrate(&x, &s).map(|_| ()), Err(QuantError::NonFinite { index: 1 }), "{g:?}");
    }
    let pct = UniformSpec::builder().range(RangeEstimator::Percentile { lower: 1.0, upper: 99.0 }).check()?;
    assert_eq!(quantize(&x, &pct), Err(QuantError::NonFinite { index: 1 }));
    let empty = Array2::<f64>::zeros((0, 3));
    assert_eq!(quantize(&empty, &spec), Err(QuantError::Empty));
    let per_ch = spec.with_granularity(Granularity::PerChannel { axis: 2 })?;
    assert_eq!(quantize(&Array2::<f64>::zeros((2, 3)), &per_ch), Err(QuantError::InvalidAxis { axis: 2, ndim: 2 }));
    // A 0-d tensor is one element: fine per tensor, no axis per channel.
    let scalar = ArrayD::<f32>::from_elem(IxDyn(&[]), 1.5);
    assert_eq!(quantize(&scalar, &spec)?.dequantize().iter().copied().collect::<Vec<_>>(), [1.5]);
    assert!(matches!(quantize(&scalar, &per_ch), Err(QuantError::InvalidAxis { .. })));
    Ok(())
}

#[test]
fn extreme_finite_ranges_stay_finite() -> R {
    let x = array![f32::MAX, -f32::MAX, 0.0, 1.0];
    for scheme in [Scheme::AsymmetricGrid, Scheme::AsymmetricExactZero, Scheme::SymmetricNarrow, Scheme::SymmetricFull] {
        let q = quantize(&x, &UniformSpec::new(8, scheme)?)?;
        assert!(q.params().slices()[0].scale.is_finite(), "{scheme:?}");
        assert!(q.dequantize().iter().all(|v| v.is_finite()), "{scheme:?}");
    }
    let tiny = array![1e-30f32, -2e-30, 3e-30];
    let q = quantize(&tiny, &UniformSpec::new(8, Scheme::SymmetricNarrow)?)?;
    assert!(q.dequantize().iter().zip(tiny.iter()).all(|(a, b)| (a - b).abs() <= 3e-30 / 127.0));
    Ok(())
}

#[test]
fn params_must_fit_the_tensor() -> R {
    let spec = UniformSpec::builder().per_channel(0).check()?;
    let p = calibrate(&Array2::<f32>::ones((3, 4)), &spec)?;
    assert_eq!(p.quantize(&Array2::<f32>::ones((5, 4))).map(|_| ()), Err(QuantError::ParamCountMismatch { expected: 5, got: 3 }));
    // Another length on a non-channel axis is fine (activations with a new batch size).
    assert!(p.quantize(&Array2::<f32>::ones((3, 9))).is_ok());
    assert_eq!(QuantParams::<f32>::from_ranges(&spec, &[]), Err(QuantError::Empty));
    assert_eq!(QuantParams::from_ranges(&spec, &[(0.0, 1.0), (f32::NAN, 1.0)]), Err(QuantError::NonFinite { index: 1 }));
    Ok(())
}

#[test]
fn from_parts_validates() -> R {
    let spec = UniformSpec::new(3, Scheme::SymmetricNarrow)?;
    let x = array![0.5f32, -1.0, 0.25];
    let q = quantize(&x, &spec)?;
    let again = QuantizedTensor::from_parts(vec![3], q.params().clone(), q.codes().clone())?;
    assert_eq!(again, q);
    assert!(matches!(QuantizedTensor::from_parts(vec![4], q.params().clone(), q.codes().clone()), Err(QuantError::ShapeMismatch { .. })));
    // Code 7 is out of the narrow 3-bit range 0..=6.
    let bad = PackedCodes::pack(&[7, 0, 0], 3)?;
    assert_eq!(
        QuantizedTensor::from_parts(vec![3], q.params().clone(), bad),
        Err(QuantError::CodeOutOfRange { index: 0, code: 7, bits: 3 })
    );
    Ok(())
}

#[test]
fn storage_is_counted_exactly() -> R {
    let x = Array2::from_shape_fn((16, 24), |(i, j)| (i * 24 + j) as f32 / 100.0);
    let cases = [
        (Scheme::SymmetricNarrow, 3, Granularity::PerChannel { axis: 0 }, 16 * 24 * 3 / 8 + 16 * 4),
        (Scheme::AsymmetricExactZero, 4, Granularity::PerGroup { axis: 1, size: 8 }, 16 * 24 / 2 + 48 * 5),
        (Scheme::AsymmetricGrid, 2, Granularity::PerTensor, 16 * 24 / 4 + 8),
        (Scheme::AsymmetricGrid, 5, Granularity::PerGroup { axis: 1, size: 7 }, (16 * 24 * 5usize).div_ceil(8) + 16 * 4 * 8),
    ];
    for (scheme, bits, g, bytes) in cases {
        let q = quantize(&x, &UniformSpec::builder().scheme(scheme).bits(bits).granularity(g).check()?)?;
        assert_eq!(q.storage_bytes(), bytes, "{scheme:?} {bits} {g:?}");
        assert_eq!(q.codes().as_bytes().len(), (16 * 24 * usize::from(bits)).div_ceil(8));
        assert_abs_diff_eq!(q.bits_per_weight(), bytes as f64 * 8.0 / 384.0, epsilon = 1e-12);
    }
    Ok(())
}

#[test]
fn dequantize_into_any_layout() -> R {
    let x = Array3::from_shape_fn((2, 3, 4), |(a, b, c)| (a * 12 + b * 4 + c) as f64 * 0.3 - 2.0);
    let q = quantize(&x, &UniformSpec::builder().bits(5).per_group(2, 3).check()?)?;
    let mut out = Array3::<f64>::zeros((4, 3, 2));
    let mut view = out.view_mut().reversed_axes();
    q.dequantize_into(view.view_mut())?;
    assert_eq!(view.into_dyn(), q.dequantize());
    let mut wrong = Array2::<f64>::zeros((6, 4));
    assert!(matches!(q.dequantize_into(wrong.view_mut()), Err(QuantError::ShapeMismatch { .. })));
    Ok(())
}

#[test]
fn ste_backward_checks_shapes() -> R {
    let g = array![1.0f32, 2.0, 3.0];
    assert_eq!(ste_backward(&g, &array![true, false, true])?, array![1.0, 0.0, 3.0]);
    assert!(matches!(ste_backward(&g, &array![true, false]), Err(QuantError::ShapeMismatch { .. })));
    Ok(())
}

#[test]
fn lsq_gradients_too_large_for_f32_are_typed_errors() -> R {
    // S = 3e38/127; every value clipped above, so the shift gradient is −Σ dY·S = −1e6·S.
    let spec = UniformSpec::new(8, Scheme::SymmetricNarrow)?;
    let p = QuantParams::from_ranges(&spec, &[(-3e38f32, 3e38)])?;
    let (x, dy) = (Array1::from_elem(1000, 3.4e38f32), Array1::from_elem(1000, 1e3f32));
    assert!(matches!(lsq_gradients(&x, &dy, &p, false), Err(QuantError::GradientOverflow { slice: 0 })));
    // The same sums fit in f64.
    let p64 = QuantParams::from_ranges(&spec, &[(-3e38f64, 3e38)])?;
    let g = lsq_gradients(&x.mapv(f64::from), &dy.mapv(f64::from), &p64, false)?;
    let s = p64.slices()[0].scale;
    assert!((g.zero_point[0] / (-1e6 * s) - 1.0).abs() < 1e-12, "{}", g.zero_point[0]);
    assert!((g.scale[0] / (1e6 * 127.0) - 1.0).abs() < 1e-12, "{}", g.scale[0]);
    Ok(())
}

#[test]
fn lsq_gradients_by_hand() -> R {
    // 3-bit narrow symmetric, S = 1: codes -3..=3, stored zero point 3.
    let spec = UniformSpec::new(3, Scheme::SymmetricNarrow)?;
    let p = QuantParams::from_ranges(&spec, &[(-3.0f64, 3.0)])?;
    assert_eq!(p.slices()[0].scale, 1.0);
    let x = array![0.4, 2.6, 5.0, -5.0];
    let dy = array![1.0, 1.0, 1.0, 2.0];
    let g = lsq_gradients(&x, &dy, &p, false)?;
    // inside: (q - x/S) = -0.4 and +0.4; above: qmax - Z = 3; below: 2 * (qmin - Z) = -6.
    assert_abs_diff_eq!(g.scale[0], -3.0, epsilon = 1e-12);
    // outside: -dY * S for each: -1 - 2.
    assert_abs_diff_eq!(g.zero_point[0], -3.0, epsilon = 1e-12);
    assert_eq!(g.input, array![1.0, 1.0, 0.0, 0.0]);
    // With gradient scaling g = 1/sqrt(N * Q_P) = 1/sqrt(4 * 3).
    let gs = lsq_gradients(&x, &dy, &p, true)?;
    assert_abs_diff_eq!(gs.scale[0], -3.0 / 12f64.sqrt(), epsilon = 1e-12);
    assert!(matches!(lsq_gradients(&x, &array![1.0], &p, false), Err(QuantError::ShapeMismatch { .. })));
    Ok(())
}

#[test]
fn observers_track_ranges() -> R {
    let mut mm = RangeObserver::<f32>::min_max(Granularity::PerTensor);
    assert_eq!(mm.params(&UniformSpec::default()), Err(QuantError::NothingObserved));
    mm.observe(&array![1.0f32, 2.0])?;
    mm.observe(&array![-3.0f32, 0.5])?;
    assert_eq!(mm.ranges(), &[(-3.0, 2.0)]);
    let mut ema = RangeObserver::<f64>::ema(0.9, Granularity::PerTensor)?;
    ema.observe(&array![1.0, 2.0])?;
    ema.observe(&array![-3.0, 0.5])?;
    let (lo, hi) = ema.ranges()[0];
    assert_abs_diff_eq!(lo, 0.9 * 1.0 + 0.1 * -3.0, epsilon = 1e-12);
    assert_abs_diff_eq!(hi, 0.9 * 2.0 + 0.1 * 0.5, epsilon = 1e-12);
    let p = ema.params(&UniformSpec::new(8, Scheme::AsymmetricExactZero)?)?;
    assert_eq!(p.len(), 1);
    assert!(matches!(RangeObserver::<f32>::ema(1.0, Granularity::PerTensor), Err(QuantError::InvalidMomentum { .. })));
    assert!(matches!(RangeObserver::<f32>::ema(f64::NAN, Granularity::PerTensor), Err(QuantError::InvalidMomentum { .. })));
    // Per channel along the feature axis: the batch axis may change length.
    let mut pc = RangeObserver::<f32>::min_max(Granularity::PerChannel { axis: 1 });
    pc.observe(&Array2::from_shape_fn((2, 3), |(i, j)| (i + j) as f32))?;
    pc.observe(&Array2::from_shape_fn((5, 3), |(i, j)| -((i * j) as f32)))?;
    assert_eq!(pc.ranges(), &[(0.0, 1.0), (-4.0, 2.0), (-8.0, 3.0)]);
    let before = pc.clone();
    assert!(matches!(pc.observe(&Array2::<f32>::zeros((2, 4))), Err(QuantError::ParamCountMismatch { .. })));
    assert_eq!(pc, before);
    assert!(matches!(pc.observe(&Array1::from(vec![f32::NAN; 3]).insert_axis(ndarray::Axis(0))), Err(QuantError::NonFinite { .. })));
    Ok(())
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<UniformSpec>();
    check::<UniformSpecBuilder>();
    check::<QuantParams<f32>>();
    check::<QuantizedTensor<f64>>();
    check::<PackedCodes>();
    check::<RangeObserver<f32>>();
    check::<QuantError>();
    check::<quant_core::FakeQuantized<f32, ndarray::Ix2>>();
    check::<quant_core::LsqGradients<f64, ndarray::IxDyn>>();
}

/// Every method on extreme finite input: values near `±f32::MAX` and subnormal values give
/// finite results as `docs/numerics.md` ("Zero-range and extreme slices") documents.
#[test]
fn every_method_gives_documented_results_on_extreme_values() -> R {
    use quant_core::{Method, MethodKind, MethodParams};
    let huge = array![f32::MAX, -f32::MAX, 0.0, 1.0, 3e38, -1e38, 2.5, -0.5];
    let subnormal = array![1e-40f32, -2e-40, 3e-41, 0.0, 5e-40, -1e-39, 7e-40, 1e-45];
    for kind in [MethodKind::Uniform, MethodKind::KMeans, MethodKind::Ternary, MethodKind::Binary] {
        let method: Method = MethodParams { kind, bits: 2, granularity: Granularity::PerTensor, ..Default::default() }.check()?;
        for x in [&huge, &subnormal] {
            let back = method.quantize(x)?.dequantize();
            assert!(back.iter().all(|v| v.is_finite()), "{kind:?} {x}: {back}");
        }
        // Subnormal input reconstructs within the smallest normal number of itself (the step
        // floor of the uniform grids; the tables of the others hold subnormal values).
        let back = method.quantize(&subnormal)?.dequantize();
        assert!(back.iter().zip(subnormal.iter()).all(|(a, b)| (a - b).abs() <= f32::MIN_POSITIVE), "{kind:?}: {back}");
    }
    // The uniform grid near f32::MAX: the range is clipped to ±f32::MAX/4, so the largest
    // values come back as ±f32::MAX/4 and the rest within one step.
    let q = quantize(&huge, &UniformSpec::new(8, Scheme::AsymmetricGrid)?)?;
    let back = q.dequantize();
    let step = q.params().slices()[0].scale;
    assert!(step.is_finite() && step > 0.0);
    assert!((back[0] - f32::MAX / 4.0).abs() <= step && (back[1] + f32::MAX / 4.0).abs() <= step, "{back}");
    Ok(())
}
