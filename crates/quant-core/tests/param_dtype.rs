//! Steps and offsets stored at f16 / bf16: representable, accounted for, and within the
//! error bound once their rounding is included.

use ndarray::Array2;
use proptest::prelude::*;
use quant_core::{ParamDtype, Scheme, UniformSpec, calibrate, quantize};

fn spec(bits: u8, scheme: Scheme, dtype: ParamDtype, group: usize) -> UniformSpec {
    UniformSpec::builder().bits(bits).scheme(scheme).per_group(1, group).param_dtype(dtype).check().expect("valid")
}

#[test]
fn half_precision_parameters_are_stored_exactly_and_counted_at_two_bytes() -> Result<(), quant_core::QuantError> {
    let w = Array2::from_shape_fn((64, 64), |(i, j)| (((i * 131 + j * 71) % 97) as f32 / 97.0 - 0.5) * 0.04);
    for (dtype, back) in [
        (ParamDtype::F16, (|v: f32| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32),
        (ParamDtype::Bf16, |v: f32| half::bf16::from_f32(v).to_f32()),
    ] {
        let p = calibrate(&w, &spec(4, Scheme::SymmetricNarrow, dtype, 32))?;
        assert!(p.slices().iter().all(|s| back(s.scale) == s.scale && back(s.offset) == s.offset && s.scale > 0.0));
        let q = quantize(&w, &spec(4, Scheme::SymmetricNarrow, dtype, 32))?;
        // 4-bit codes plus one 2-byte step per group of 32: GGML's Q4_0 budget.
        assert_eq!(q.storage_bytes(), 64 * 64 / 2 + (64 * 64 / 32) * 2);
        assert!((q.bits_per_weight() - 4.5).abs() < 1e-12);
        let asym = quantize(&w, &spec(4, Scheme::AsymmetricGrid, dtype, 64))?;
        assert!((asym.bits_per_weight() - 4.5).abs() < 1e-12);
    }
    // Native keeps F's width: 4 bytes per f32 step.
    let native = quantize(&w, &spec(4, Scheme::SymmetricNarrow, ParamDtype::Native, 32))?;
    assert!((native.bits_per_weight() - 5.0).abs() < 1e-12);
    Ok(())
}

#[test]
fn extreme_ranges_stay_finite() -> Result<(), quant_core::QuantError> {
    let w = Array2::from_shape_vec((1, 4), vec![-1e30f32, 1e30, 0.0, 1e-30]).expect("shape");
    for dtype in [ParamDtype::F16, ParamDtype::Bf16] {
        let q = quantize(&w, &spec(8, Scheme::AsymmetricGrid, dtype, 4))?;
        assert!(q.dequantize().iter().all(|v| v.is_finite()));
    }
    // A zero-width range: the step becomes the smallest positive value, never 0.
    let z = Array2::<f32>::zeros((2, 8));
    let p = calibrate(&z, &spec(4, Scheme::SymmetricNarrow, ParamDtype::F16, 8))?;
    assert!(p.slices().iter().all(|s| s.scale > 0.0));
    assert!(quantize(&z, &spec(4, Scheme::SymmetricNarrow, ParamDtype::F16, 8))?.dequantize().iter().all(|&v| v == 0.0));
    Ok(())
}

proptest! {
    #[test]
    fn error_is_within_half_a_step_plus_the_parameter_rounding(
        v in prop::collection::vec(-3.0f64..3.0, 64),
        bits in 2u8..=8,
        asym in any::<bool>(),
        bf in any::<bool>(),
    ) {
        let x = Array2::from_shape_vec((2, 32), v).expect("shape");
        let scheme = if asym { Scheme::AsymmetricGrid } else { Scheme::SymmetricNarrow };
        let dtype = if bf { ParamDtype::Bf16 } else { ParamDtype::F16 };
        let s = spec(bits, scheme, dtype, 16);
        let p = calibrate(&x, &s).expect("valid");
        let xq = quantize(&x, &s).expect("valid").dequantize();
        // Relative rounding of a stored value: 2^-11 (f16) or 2^-8 (bf16). The grid's far end
        // moves by at most levels · ΔS + Δoffset, which clamping adds to the half step.
        let u = if bf { 2f64.powi(-8) } else { 2f64.powi(-11) };
        let levels = f64::from((1u32 << bits) - 1);
        let pairs: Vec<(f64, f64)> = x.iter().copied().zip(xq.iter().copied()).collect();
        for (g, chunk) in pairs.chunks(16).enumerate() {
            let sp = p.slices()[g];
            let (lo, hi) = chunk.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(v, _)| (a.min(v), b.max(v)));
            let bound = sp.scale / 2.0 + levels * sp.scale * u + (hi - lo).abs().max(lo.abs()) * u + 1e-12;
            for &(a, b) in chunk {
                prop_assert!((a - b).abs() <= bound, "group {g}: {a} vs {b}, bound {bound}");
            }
        }
    }
}
