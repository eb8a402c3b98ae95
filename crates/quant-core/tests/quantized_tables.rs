//! Two-level (k-quant style) parameter tables: hand-computed goldens, the covering error bound,
//! the data refinement never hurting, exact storage accounting and round trips.

use half::f16;
use ndarray::{Array2, array};
use proptest::prelude::*;
use quant_core::{
    PackedCodes, ParamDtype, QuantError, QuantParams, QuantizedTables, QuantizedTensor, Scheme, SliceParams, UniformSpec, quantize,
};

fn spec(bits: u8, scheme: Scheme, group: usize, tbits: u8, super_group: u32) -> Result<UniformSpec, QuantError> {
    UniformSpec::builder()
        .bits(bits)
        .scheme(scheme)
        .per_group(1, group)
        .param_dtype(ParamDtype::Quantized { bits: tbits, super_group })
        .check()
}

// f16(1/3) = 1365/4096 rounds down, so the super-scale is bumped to the next f16, 1366/4096.
const THIRD_UP: f64 = 1366.0 / 4096.0;

#[test]
fn symmetric_golden() -> Result<(), QuantError> {
    // Steps before the tables: 7/7 = 1 and 3.5/7 = 0.5. Two-bit table codes (top 3):
    // d = f16↑(1/3); codes ceil(1/d) = 3 and ceil(0.5/d) = 2; the data refinement keeps both
    // (worked out by hand in the test's comments: a = 1 clips 3.5 badly, a = 3 rounds -1 far).
    let w = array![[7.0f32, -1.0, 0.0, 2.0, 3.5, 0.0, 0.0, -1.0]];
    let q = quantize(&w, &spec(4, Scheme::SymmetricNarrow, 4, 2, 2)?)?;
    let t = q.params().tables().ok_or(QuantError::Empty)?;
    assert_eq!(t.super_scales()[0].to_f64(), THIRD_UP);
    assert_eq!(t.scale_codes().unpack(), vec![3, 2]);
    assert!(t.offset_codes().is_none() && t.super_offsets().is_empty());
    let steps: Vec<f32> = q.params().slices().iter().map(|s| s.scale).collect();
    assert_eq!(steps, vec![(3.0 * THIRD_UP) as f32, (2.0 * THIRD_UP) as f32]);
    // 8 four-bit codes (4 bytes) + one f16 super-scale (2) + two 2-bit codes (1 byte).
    assert_eq!(q.storage_bytes(), 7);
    let s0 = 3.0 * THIRD_UP;
    let back = q.dequantize();
    assert_eq!(back[[0, 0]], (7.0 * s0) as f32);
    assert_eq!(back[[0, 1]], (-s0) as f32);
    assert_eq!(back[[0, 3]], (2.0 * s0) as f32);
    Ok(())
}

#[test]
fn grid_golden_covers_every_range() -> Result<(), QuantError> {
    // Ranges [-1, 2] and [0.5, 3.5] at 2 bits (3 steps each), 2-bit tables in one super-group.
    // Offsets: min -1 < 0, so dm = -f16↑(1/3); codes ceil(-1/dm) = 3 and 0 (a positive
    // offset is lowered to 0). Steps needed from the lowered offsets: (2 + 3·1366/4096)/3 and
    // 3.5/3; d = f16↑(3.5/9) = 1593/4096 (nearest f16 is already above); codes 3 and 3.
    let s = spec(2, Scheme::AsymmetricGrid, 4, 2, 2)?;
    let p = QuantParams::from_ranges(&s, &[(-1.0f32, 2.0), (0.5, 3.5)])?;
    let t = p.tables().ok_or(QuantError::Empty)?;
    assert_eq!(t.super_offsets()[0].to_f64(), -THIRD_UP);
    assert_eq!(t.offset_codes().map(PackedCodes::unpack), Some(vec![3, 0]));
    assert_eq!(t.super_scales()[0].to_f64(), 1593.0 / 4096.0);
    assert_eq!(t.scale_codes().unpack(), vec![3, 3]);
    let sl = p.slices();
    assert_eq!(sl[0].offset, (-3.0 * THIRD_UP) as f32);
    assert_eq!(sl[1].offset, 0.0);
    for (sp, (lo, hi)) in sl.iter().zip([(-1.0f32, 2.0f32), (0.5, 3.5)]) {
        assert!(sp.offset <= lo && sp.offset + 3.0 * sp.scale >= hi, "{sp:?} does not cover [{lo}, {hi}]");
    }
    // Grid storage: super-scale and super-offset (4 bytes) + two 2-bit scale codes and two
    // 2-bit offset codes (1 byte each).
    assert_eq!(p.storage_bytes(), 6);
    Ok(())
}

#[test]
fn invalid_table_settings_are_typed_errors() {
    let b = |tbits, sg, scheme| {
        UniformSpec::builder().bits(4).scheme(scheme).param_dtype(ParamDtype::Quantized { bits: tbits, super_group: sg }).check()
    };
    assert!(matches!(b(1, 8, Scheme::AsymmetricGrid), Err(QuantError::InvalidTables { .. })));
    assert!(matches!(b(9, 8, Scheme::AsymmetricGrid), Err(QuantError::InvalidTables { .. })));
    assert!(matches!(b(6, 0, Scheme::AsymmetricGrid), Err(QuantError::InvalidTables { .. })));
    assert!(matches!(b(6, 8, Scheme::AsymmetricExactZero), Err(QuantError::InvalidTables { .. })));
    assert!(b(6, 8, Scheme::SymmetricFull).is_ok());
}

#[test]
fn stored_tables_are_validated() -> Result<(), QuantError> {
    let codes = PackedCodes::pack(&[3, 2, 1], 6)?;
    let one = f16::from_f32(0.5);
    // One super-scale per 2 slices: 3 slices need 2.
    assert!(QuantizedTables::from_parts(2, vec![one], codes.clone(), None).is_err());
    assert!(QuantizedTables::from_parts(2, vec![one, f16::ZERO], codes.clone(), None).is_err());
    assert!(QuantizedTables::from_parts(2, vec![one, f16::NAN], codes.clone(), None).is_err());
    assert!(QuantizedTables::from_parts(2, vec![one, one], PackedCodes::pack(&[3, 0, 1], 6)?, None).is_err());
    assert!(QuantizedTables::from_parts(2, vec![one, one], codes.clone(), Some((vec![one], PackedCodes::pack(&[0, 0, 0], 6)?))).is_err());
    let t = QuantizedTables::from_parts(2, vec![one, one], codes, None)?;
    // Tables without offsets do not fit a grid spec, nor another width.
    assert!(QuantParams::<f32>::from_tables(&spec(4, Scheme::AsymmetricGrid, 4, 6, 2)?, t.clone()).is_err());
    assert!(QuantParams::<f32>::from_tables(&spec(4, Scheme::SymmetricNarrow, 4, 4, 2)?, t.clone()).is_err());
    let p = QuantParams::<f32>::from_tables(&spec(4, Scheme::SymmetricNarrow, 4, 6, 2)?, t)?;
    assert_eq!(p.slices().iter().map(|s| s.scale).collect::<Vec<_>>(), vec![1.5, 1.0, 0.5]);
    Ok(())
}

#[test]
fn from_slices_checks_every_value() -> Result<(), QuantError> {
    let s = UniformSpec::builder().bits(4).scheme(Scheme::AsymmetricGrid).param_dtype(ParamDtype::F16).check()?;
    let good = SliceParams { scale: 0.5f32, zero_point: 0, offset: -1.0 };
    assert!(QuantParams::from_slices(&s, vec![good]).is_ok());
    for bad in [
        SliceParams { scale: 0.0, ..good },
        SliceParams { scale: f32::NAN, ..good },
        SliceParams { offset: f32::INFINITY, ..good },
        SliceParams { zero_point: 3, ..good },
        // Not an f16 value.
        SliceParams { scale: 0.1, ..good },
    ] {
        assert!(matches!(QuantParams::from_slices(&s, vec![bad]), Err(QuantError::InvalidParams { index: 0, .. })), "{bad:?}");
    }
    assert_eq!(QuantParams::<f32>::from_slices(&s, vec![]), Err(QuantError::Empty));
    Ok(())
}

#[test]
fn extreme_and_constant_inputs_stay_finite() -> Result<(), QuantError> {
    let w = Array2::from_shape_vec((2, 4), vec![-1e30f32, 1e30, 0.0, 1e-30, 0.0, 0.0, 0.0, 0.0]).map_err(|_| QuantError::Empty)?;
    for scheme in [Scheme::AsymmetricGrid, Scheme::SymmetricNarrow] {
        let q = quantize(&w, &spec(4, scheme, 4, 6, 8)?)?;
        assert!(q.dequantize().iter().all(|v| v.is_finite()));
        assert!(q.params().slices().iter().all(|s| s.scale > 0.0));
        // The all-zero group reconstructs exactly.
        assert!(q.dequantize().iter().skip(4).all(|&v| v == 0.0));
    }
    Ok(())
}

fn per_group_sse(x: &[f64], y: &[f64], group: usize) -> Vec<f64> {
    x.chunks(group).zip(y.chunks(group)).map(|(a, b)| a.iter().zip(b).map(|(u, v)| (u - v) * (u - v)).sum()).collect()
}

proptest! {
    #[test]
    fn covering_tables_bound_the_error_and_refinement_never_hurts(
        v in prop::collection::vec(-4.0f64..4.0, 6 * 16),
        bits in 2u8..=8,
        tbits in 2u8..=8,
        super_group in 1u32..=4,
        sym in any::<bool>(),
    ) {
        let group = 16;
        let scheme = if sym { Scheme::SymmetricFull } else { Scheme::AsymmetricGrid };
        let x = Array2::from_shape_vec((6, group), v).expect("shape");
        let s = spec(bits, scheme, group, tbits, super_group).expect("valid");
        let flat: Vec<f64> = x.iter().copied().collect();
        let ranges: Vec<(f64, f64)> = flat
            .chunks(group)
            .map(|c| c.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &u| (a.min(u), b.max(u))))
            .collect();
        // Without data: the covering tables. Every element within half its stored step.
        let covering = QuantParams::from_ranges(&s, &ranges).expect("valid");
        let qc = covering.quantize(&x).expect("valid");
        let yc: Vec<f64> = qc.dequantize().iter().copied().collect();
        for (i, (a, b)) in flat.iter().zip(&yc).enumerate() {
            let step = covering.slices()[i / group].scale;
            prop_assert!((a - b).abs() <= step / 2.0 * (1.0 + 1e-9) + 1e-12, "element {i}: {a} -> {b}, step {step}");
        }
        // With data: refined codes, never a worse group.
        let qr = quantize(&x, &s).expect("valid");
        let yr: Vec<f64> = qr.dequantize().iter().copied().collect();
        for (g, (r, c)) in per_group_sse(&flat, &yr, group).iter().zip(per_group_sse(&flat, &yc, group)).enumerate() {
            prop_assert!(*r <= c * (1.0 + 1e-12) + 1e-300, "group {g}: refined {r} > covering {c}");
        }
        // Storage: the codes plus 2 bytes per super-scale (and super-offset) plus packed table codes.
        let tables = qr.params().tables().expect("quantized");
        let sgs = 6usize.div_ceil(super_group as usize);
        let per = if sym { 1 } else { 2 };
        let table_bytes = per * (2 * sgs + (6 * usize::from(tbits)).div_ceil(8));
        prop_assert_eq!(tables.storage_bytes(), table_bytes);
        prop_assert_eq!(qr.storage_bytes(), (6 * group * usize::from(bits)).div_ceil(8) + table_bytes);
        // Round trip through the stored parts.
        let params = QuantParams::from_tables(&s, tables.clone()).expect("valid");
        prop_assert_eq!(&params, qr.params());
        let back = QuantizedTensor::from_parts(qr.shape().to_vec(), params, qr.codes().clone()).expect("valid");
        prop_assert_eq!(back.dequantize(), qr.dequantize());
        // Effective values are exactly super-scale times code.
        let codes = tables.scale_codes().unpack();
        for (i, sp) in qr.params().slices().iter().enumerate() {
            let d = tables.super_scales()[i / super_group as usize].to_f64();
            prop_assert_eq!(sp.scale, d * f64::from(codes[i]));
        }
    }
}
