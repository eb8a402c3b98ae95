//! Integer-only linear layers: gemmlowp arithmetic goldens, fixed-point multipliers against
//! real arithmetic, the layer against its float reference, fixed-point against f32
//! requantization, and saturation at the int32 and int8 limits.

use ndarray::{Array1, Array2};
use proptest::prelude::*;
use quant_core::QuantError;
use quant_core::integer::{
    ActivationQuant, FixedMultiplier, QuantizedLinear, Requantization, rounding_divide_by_pot, saturating_rounding_doubling_high_mul,
};

#[test]
fn gemmlowp_goldens() {
    // The one overflow case saturates.
    assert_eq!(saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN), i32::MAX);
    // 2 · 2^30 · 2^30 / 2^32 = 2^29 exactly.
    assert_eq!(saturating_rounding_doubling_high_mul(1 << 30, 1 << 30), 1 << 29);
    // 2 · 3 · 2^30 / 2^32 = 1.5: gemmlowp's nudge-and-truncate rounds ties upward.
    assert_eq!(saturating_rounding_doubling_high_mul(3, 1 << 30), 2);
    assert_eq!(saturating_rounding_doubling_high_mul(-3, 1 << 30), -1);
    assert_eq!(saturating_rounding_doubling_high_mul(-5, 1 << 30), -2); // -2.5
    assert_eq!(saturating_rounding_doubling_high_mul(-7, 1 << 29), -2); // -1.75
    assert_eq!(saturating_rounding_doubling_high_mul(5, 1 << 29), 1); // 1.25
    // x / 2^e, ties away from zero.
    assert_eq!(rounding_divide_by_pot(5, 1), 3);
    assert_eq!(rounding_divide_by_pot(-5, 1), -3);
    assert_eq!(rounding_divide_by_pot(7, 2), 2); // 1.75
    assert_eq!(rounding_divide_by_pot(-6, 2), -2); // -1.5
    assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
    assert_eq!(rounding_divide_by_pot(9, 0), 9);
}

#[test]
fn multiplier_goldens() -> Result<(), QuantError> {
    // 0.5 = 2^30 · 2^(0 − 31).
    let half = FixedMultiplier::new(0.5)?;
    assert_eq!((half.m0(), half.shift()), (1 << 30, 0));
    assert_eq!(half.apply(7), 4); // 3.5: ties upward
    assert_eq!(half.apply(-7), -3);
    assert_eq!(half.apply(-9), -4); // -4.5
    // 0.75 = 0.75 · 2^0 → M0 = 0.75 · 2^31.
    let m = FixedMultiplier::new(0.75)?;
    assert_eq!((m.m0(), m.shift()), (1_610_612_736, 0));
    // 3.0 = 0.75 · 2^2: a left shift.
    let m = FixedMultiplier::new(3.0)?;
    assert_eq!((m.m0(), m.shift()), (1_610_612_736, 2));
    assert_eq!(m.apply(100), 300);
    // 2^-10 = 0.5 · 2^-9.
    let m = FixedMultiplier::new(2f64.powi(-10))?;
    assert_eq!((m.m0(), m.shift()), (1 << 30, -9));
    assert_eq!(m.apply(1536), 2); // 1.5 → 2
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-12, 3e9] {
        assert!(matches!(FixedMultiplier::new(bad), Err(QuantError::InvalidMultiplier { .. })), "{bad}");
    }
    Ok(())
}

proptest! {
    #[test]
    fn fixed_multiplier_is_round_of_the_product(m in 1e-6f64..100.0, x in -1_000_000i32..1_000_000) {
        let f = FixedMultiplier::new(m).expect("in range");
        prop_assert!((f.value() - m).abs() <= m * 2f64.powi(-30));
        let exact = f64::from(x) * f.value();
        // Two roundings (the high multiply and the shift): within one of the exact product.
        prop_assert!((f64::from(f.apply(x)) - exact).abs() <= 1.0, "{x} · {m}: {} vs {exact}", f.apply(x));
    }

    #[test]
    fn saturation_at_the_limits(m in 1e-3f64..8.0, x in prop::sample::select(vec![i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX])) {
        // Never panics; sign follows the input; large inputs saturate instead of wrapping.
        let f = FixedMultiplier::new(m).expect("in range");
        let y = f.apply(x);
        prop_assert!(x == 0 || y == 0 || (y > 0) == (x > 0), "{x} -> {y}");
        if m >= 1.0 && x == i32::MAX {
            prop_assert_eq!(y, i32::MAX);
        }
    }
}

/// A small float layer, its int8 version and a float reference on the same quantized values.
fn layer(
    out: usize,
    inp: usize,
    seed: u64,
    relu: bool,
    requant: Requantization,
) -> Result<(QuantizedLinear, Array2<f32>, Array1<f32>), QuantError> {
    let r = |i: u64| (((i * 2654435761 + seed * 97) % 2001) as f32 / 1000.0 - 1.0) * 0.3;
    let w = Array2::from_shape_fn((out, inp), |(o, k)| r((o * inp + k) as u64));
    let b = Array1::from_shape_fn(out, |o| r(10_000 + o as u64));
    let input = ActivationQuant::from_range(-1.0, 1.5)?;
    let output = ActivationQuant::from_range(-2.0, 2.0)?;
    let l = QuantizedLinear::new(w.view(), Some(b.view()), input, output, requant, relu)?;
    Ok((l, w, b))
}

proptest! {
    #[test]
    fn matches_the_float_model_within_one_output_quantum(
        out in 1usize..12, inp in 1usize..40, seed in 0u64..500, relu in any::<bool>(), fixed in any::<bool>(), batch in 1usize..4,
    ) {
        let requant = if fixed { Requantization::FixedPoint } else { Requantization::Float };
        let (l, _, b) = layer(out, inp, seed, relu, requant).expect("valid");
        let xq = Array2::from_shape_fn((batch, inp), |(r, k)| (((r * 131 + k * 71) as u64 + seed) % 256) as i32 - 128).mapv(|v| v as i8);
        let y = l.forward(xq.view()).expect("shape");
        let (sx, zx, sy) = (l.input().scale, l.input().zero_point, l.output().scale);
        for r in 0..batch {
            for o in 0..out {
                // Float reference on the quantized weights and inputs.
                let s_w = l.weight_scales()[o];
                let mut acc = f64::from(b[o]);
                for k in 0..inp {
                    let w = f64::from(s_w) * f64::from(l.weights()[o * inp + k]);
                    acc += w * f64::from(sx) * f64::from(i32::from(xq[[r, k]]) - zx);
                }
                if relu {
                    acc = acc.max(0.0);
                }
                // Clamp to the output's representable range, then compare.
                let lo = f64::from(l.output().dequantize(-128));
                let hi = f64::from(l.output().dequantize(127));
                let expect = acc.clamp(lo, hi);
                let got = f64::from(l.output().dequantize(y[[r, o]]));
                // One output quantum: the output rounding (half) plus the bias rounding (at most
                // half of S_x·S_w, far below S_y here) and the multiplier's rounding.
                prop_assert!((got - expect).abs() <= f64::from(sy) * 1.0 + 1e-6, "row {r} out {o}: {got} vs {expect}");
            }
        }
    }

    #[test]
    fn fixed_point_and_float_requantization_agree(out in 1usize..10, inp in 1usize..64, seed in 0u64..500, relu in any::<bool>()) {
        let (l, _, _) = layer(out, inp, seed, relu, Requantization::FixedPoint).expect("valid");
        let xq = Array2::from_shape_fn((3, inp), |(r, k)| (((r * 37 + k * 113) as u64 * 7 + seed) % 256) as i32 - 128).mapv(|v| v as i8);
        let a = l.forward(xq.view()).expect("shape");
        let b = l.with_requantization(Requantization::Float).forward(xq.view()).expect("shape");
        for (x, y) in a.iter().zip(b.iter()) {
            // Different roundings of the same product (ties away vs to even, f32 vs fixed point).
            prop_assert!((i32::from(*x) - i32::from(*y)).abs() <= 1, "{x} vs {y}");
        }
    }

    #[test]
    fn outputs_saturate_at_the_int8_limits(seed in 0u64..200, relu in any::<bool>()) {
        // Inputs at the extremes through a layer whose output range is tiny: every output is
        // clamped, none wraps.
        let w = Array2::from_shape_fn((4, 32), |(o, k)| if (o + k + seed as usize).is_multiple_of(2) { 1.0 } else { -0.5 });
        let input = ActivationQuant::from_range(-100.0, 100.0).expect("finite");
        let output = ActivationQuant::from_range(-0.01, 0.01).expect("finite");
        let l = QuantizedLinear::new(w.view(), None, input, output, Requantization::FixedPoint, relu).expect("valid");
        for v in [-128i8, 127] {
            let y = l.forward(Array2::from_elem((1, 32), v).view()).expect("shape");
            for &q in y.iter() {
                prop_assert!(q == 127 || q == -128 || (relu && i32::from(q) == l.output().zero_point), "{q}");
            }
        }
    }
}

#[test]
fn zero_point_terms_are_folded_into_the_bias() -> Result<(), QuantError> {
    // acc = Σ q_x q_w + q_b with q_b = round(b / (S_x S_w)) − Z_x Σ q_w: an input equal to the
    // zero point everywhere (real 0) gives exactly the quantized bias.
    let (l, _, b) = layer(5, 7, 3, false, Requantization::FixedPoint)?;
    let zx = l.input().zero_point as i8;
    let acc = l.accumulate(Array2::from_elem((1, 7), zx).view())?;
    for o in 0..5 {
        let expect = (f64::from(b[o]) / (f64::from(l.input().scale) * f64::from(l.weight_scales()[o]))).round_ties_even() as i32;
        assert_eq!(acc[[0, o]], expect);
    }
    Ok(())
}

#[test]
fn bad_layers_are_typed_errors() {
    let w = Array2::<f32>::ones((3, 4));
    let a = ActivationQuant { scale: 0.1, zero_point: 0 };
    let ok = |b: Option<Array1<f32>>, i: ActivationQuant| {
        QuantizedLinear::new(w.view(), b.as_ref().map(|b| b.view()), i, a, Requantization::FixedPoint, false)
    };
    assert!(matches!(ok(Some(Array1::zeros(2)), a), Err(QuantError::ShapeMismatch { .. })));
    assert!(matches!(ok(Some(Array1::from_elem(3, f32::NAN)), a), Err(QuantError::NonFinite { .. })));
    assert!(matches!(ok(None, ActivationQuant { scale: 0.0, zero_point: 0 }), Err(QuantError::InvalidParams { .. })));
    assert!(matches!(ok(None, ActivationQuant { scale: 0.1, zero_point: 300 }), Err(QuantError::InvalidParams { .. })));
    // A bias that does not fit int32 at its scale.
    assert!(matches!(ok(Some(Array1::from_elem(3, 1e12)), a), Err(QuantError::TableOverflow { .. })));
    let l = ok(None, a).expect("valid");
    assert!(matches!(l.forward(Array2::<i8>::zeros((1, 5)).view()), Err(QuantError::ShapeMismatch { .. })));
    assert!(matches!(ActivationQuant::from_range(f32::NAN, 1.0), Err(QuantError::NonFinite { .. })));
}

proptest! {
    #[test]
    fn every_product_kernel_equals_the_reference(
        batch in 1usize..10, k in 1usize..100, out in 1usize..12, seed in 0u64..1000,
    ) {
        use quant_core::integer::{KernelChoice, gemm_i8_reference, gemm_i8_with};
        let x: Vec<i8> = (0..batch * k).map(|i| ((i as u64 * 2654435761 + seed) % 256) as i32 as u8 as i8).collect();
        let w: Vec<i8> = (0..out * k).map(|i| (((i as u64 * 40503 + seed * 7) % 255) as i32 - 127) as i8).collect();
        let mut reference = vec![0i32; batch * out];
        gemm_i8_reference(&x, &w, batch, k, out, &mut reference).expect("lengths fit");
        for choice in [KernelChoice::Best, KernelChoice::Avx2, KernelChoice::Portable] {
            let mut acc = vec![0i32; batch * out];
            gemm_i8_with(choice, &x, &w, batch, k, out, &mut acc).expect("lengths fit");
            prop_assert_eq!(&acc, &reference, "{:?}", choice);
        }
    }

    #[test]
    fn the_layer_requantizes_every_output_as_apply_does(out in 1usize..40, inp in 1usize..64, seed in 0u64..300, relu in any::<bool>()) {
        // The vectorised requantization against FixedMultiplier::apply on the accumulators.
        let (l, _, _) = layer(out, inp, seed, relu, Requantization::FixedPoint).expect("valid");
        let xq = Array2::from_shape_fn((5, inp), |(r, k)| (((r * 59 + k * 23) as u64 * 13 + seed) % 256) as i32 - 128).mapv(|v| v as i8);
        let acc = l.accumulate(xq.view()).expect("shape");
        let y = l.forward(xq.view()).expect("shape");
        let lo = if relu { l.output().zero_point } else { -128 };
        for ((r, o), &a) in acc.indexed_iter() {
            let expect = (l.output().zero_point + l.multipliers()[o].apply(a)).clamp(lo, 127);
            prop_assert_eq!(i32::from(y[[r, o]]), expect);
        }
    }
}

#[test]
fn product_functions_check_their_lengths() {
    use quant_core::integer::{KernelChoice, gemm_i8_reference, gemm_i8_with};
    let mut acc = vec![0i32; 4];
    assert!(gemm_i8_reference(&[1, 2, 3], &[1, 2, 3, 4], 2, 2, 2, &mut acc).is_err());
    assert!(gemm_i8_with(KernelChoice::Best, &[1, 2, 3, 4], &[1, 2], 2, 2, 2, &mut acc).is_err());
    assert!(gemm_i8_with(KernelChoice::Best, &[1; 4], &[1; 4], 2, 2, 2, &mut acc[..3]).is_err());
    assert!(gemm_i8_reference(&[], &[], usize::MAX, 0, 2, &mut acc).is_err());
    // k = 0: empty sums.
    let mut acc = vec![7i32; 6];
    assert!(gemm_i8_with(KernelChoice::Best, &[], &[], 2, 0, 3, &mut acc).is_ok());
    assert_eq!(acc, vec![0; 6]);
}
