//! Golden values from NUMERICS.md §1 (PyTorch's logic in f32, reciprocal multiply, half-even).
//!
//! Expected numbers are the decimal values given there; nine significant digits identify an
//! `f32` uniquely, so the comparisons are exact.

// The literals are the published decimals, kept verbatim; each names one f32 exactly.
#![allow(clippy::excessive_precision)]

use ndarray::{Array1, Array2, array};
use quant_core::{Granularity, Rounding, ScaleMode, Scheme, UniformSpec, calibrate, quantize};

type R = Result<(), quant_core::QuantError>;

/// Quantizes `values` with parameters calibrated on `[lo, hi]`; returns (S, Z, codes, dequantized).
fn apply(spec: &UniformSpec, lo: f32, hi: f32, values: &[f32]) -> Result<(f32, i32, Vec<i32>, Vec<f32>), quant_core::QuantError> {
    let p = calibrate(&array![lo, hi], spec)?;
    let q = p.quantize(&Array1::from(values.to_vec()))?;
    let s = p.slices()[0];
    Ok((s.scale, s.zero_point, q.int_repr(), q.dequantize().iter().copied().collect()))
}

#[test]
fn torch_affine_u8_min_minus1_max_2() -> R {
    let spec = UniformSpec::new(8, Scheme::AsymmetricExactZero)?;
    let (s, z, q, dq) = apply(&spec, -1.0, 2.0, &[-1.0, 1.0, 0.5])?;
    assert_eq!(s, 0.011_764_706_1);
    assert_eq!(z, 85);
    assert_eq!(q, [0, 170, 127]);
    assert_eq!(dq, [-1.0, 1.0, 0.494_117_647]);
    Ok(())
}

#[test]
fn torch_affine_u8_min_minus03_max_09() -> R {
    let spec = UniformSpec::new(8, Scheme::AsymmetricExactZero)?;
    let (s, z, q, dq) = apply(&spec, -0.3, 0.9, &[0.5, 1.0])?;
    assert_eq!(s, 0.004_705_882_63);
    assert_eq!(z, 64);
    // 1.0 -> 276 unclamped, clamps to 255.
    assert_eq!(q, [170, 255]);
    assert_eq!(dq, [0.498_823_553, 0.898_823_559]);
    Ok(())
}

#[test]
fn symmetric_narrow_i8_amax_1() -> R {
    let spec = UniformSpec::new(8, Scheme::SymmetricNarrow)?;
    let (s, _, q, dq) = apply(&spec, -1.0, 1.0, &[1.0, -1.0, 0.5])?;
    assert_eq!(s, 0.007_874_015_72);
    // 0.5 * 127 = 63.5 is a tie: half-even gives 64.
    assert_eq!(q, [127, -127, 64]);
    assert_eq!(dq, [1.0, -1.0, 0.503_937_006]);
    Ok(())
}

#[test]
fn symmetric_full_i8_torch_amax_1() -> R {
    let spec = UniformSpec::new(8, Scheme::SymmetricFull)?;
    let (s, _, q, dq) = apply(&spec, -1.0, 1.0, &[1.0, 0.5, -1.0])?;
    assert_eq!(s, 0.007_843_137_72);
    // S rounds up from 1/127.5, so 1/S = 127.49999: +amax -> 127, and -amax -> -127 (not
    // the -128 an exact 127.5 would tie to), as in PyTorch's reciprocal-multiply kernel.
    assert_eq!(q, [127, 64, -127]);
    assert_eq!(dq, [0.996_078_491, 0.501_960_814, -0.996_078_491]);
    Ok(())
}

#[test]
fn mit_lab_two_bit_example() -> R {
    let x: Array2<f32> = array![
        [0.0523, 0.6364, -0.0968, -0.0020, 0.1940],
        [0.7500, 0.5507, 0.6188, -0.1734, 0.4677],
        [-0.0669, 0.3836, 0.4297, 0.6267, -0.0695],
        [0.1536, -0.0038, 0.6075, 0.6817, 0.0601],
        [0.6446, -0.2500, 0.5376, -0.2226, 0.2333]
    ];
    let expected: Array2<i32> = array![[-1, 1, -1, -1, 0], [1, 1, 1, -2, 0], [-1, 0, 0, 1, -1], [-1, -1, 1, 1, -1], [1, -2, 1, -2, 0]];
    // The lab's signed range [-2, 1] with Z = -1 is PyTorch's affine scheme shifted by -2:
    // stored code u = q + 2, stored zero point 1.
    let q = quantize(&x, &UniformSpec::new(2, Scheme::AsymmetricExactZero)?)?;
    let s = q.params().slices()[0];
    assert_eq!(s.scale, 1.0f32 / 3.0);
    assert_eq!(s.zero_point - 2, -1);
    let signed: Vec<i32> = q.int_repr().into_iter().map(|u| u - 2).collect();
    assert_eq!(signed, expected.iter().copied().collect::<Vec<_>>());
    Ok(())
}

#[test]
fn ties_follow_the_rounding_mode() -> R {
    // amax = 31.75 gives S = 0.25 exactly, so x / S = k + 0.5 exactly for these inputs.
    let xs = [0.125f32, 0.375, -0.625, -0.125, 31.75, -31.75];
    for mode in [ScaleMode::Reciprocal, ScaleMode::Divide] {
        let even = UniformSpec::builder().scheme(Scheme::SymmetricNarrow).scale_mode(mode).check()?;
        let (s, _, q, _) = apply(&even, -31.75, 31.75, &xs)?;
        assert_eq!(s, 0.25);
        assert_eq!(q, [0, 2, -2, 0, 127, -127], "{mode:?}");
        let away = UniformSpec::builder().scheme(Scheme::SymmetricNarrow).scale_mode(mode).rounding(Rounding::HalfAwayFromZero).check()?;
        let (_, _, q, _) = apply(&away, -31.75, 31.75, &xs)?;
        assert_eq!(q, [1, 2, -3, -1, 127, -127], "{mode:?}");
    }
    Ok(())
}

#[test]
fn qbert_grid_uses_the_whole_range() -> R {
    // Q-BERT: Delta = (max - min)/(2^k - 1), X_I = round((X - q0)/Delta), DQ = Delta X_I + q0.
    let x = array![-0.3f32, 0.0, 0.15, 0.9];
    let q = quantize(&x, &UniformSpec::new(2, Scheme::AsymmetricGrid)?)?;
    let s = q.params().slices()[0];
    assert_eq!(s.scale, (0.9f32 - -0.3) / 3.0);
    assert_eq!(s.offset, -0.3);
    // (0 + 0.3)/0.4 = 0.75 -> 1; (0.15 + 0.3)/0.4 = 1.125 -> 1.
    assert_eq!(q.int_repr(), [0, 1, 1, 3]);
    let dq = q.dequantize();
    assert_eq!(dq[0], -0.3);
    assert_eq!(dq[3], s.scale * 3.0 + -0.3);
    Ok(())
}

#[test]
fn zero_range_tensors_give_finite_documented_results() -> R {
    let zeros = Array1::<f32>::zeros(5);
    let fours = Array1::<f32>::from_elem(5, 4.0);
    for scheme in [Scheme::AsymmetricGrid, Scheme::AsymmetricExactZero, Scheme::SymmetricNarrow, Scheme::SymmetricFull] {
        let spec = UniformSpec::new(4, scheme)?;
        for x in [&zeros, &fours] {
            let q = quantize(x, &spec)?;
            let s = q.params().slices()[0];
            assert!(s.scale.is_finite() && s.scale > 0.0, "{scheme:?}");
            // Every element reconstructs exactly (zero and the constant are on the grid),
            // except in the full symmetric range, whose grid stops one step short of +amax.
            let back: Vec<f32> = q.dequantize().iter().copied().collect();
            if scheme == Scheme::SymmetricFull && x[0] != 0.0 {
                assert!(back.iter().all(|v| (v - x[0]).abs() <= s.scale), "{back:?}");
            } else {
                assert_eq!(back, x.to_vec(), "{scheme:?}");
            }
        }
        let s = quantize(&zeros, &spec)?.params().slices()[0].scale;
        let floor = match scheme {
            Scheme::AsymmetricExactZero | Scheme::SymmetricFull => f32::EPSILON,
            _ => f32::MIN_POSITIVE,
        };
        assert_eq!(s, floor, "{scheme:?}");
    }
    Ok(())
}

#[test]
fn per_group_ragged_last_group() -> R {
    // Row of 5 in groups of 2: groups {0,1}, {2,3}, {4}; the last has its own range.
    let x = array![[1.0f32, 2.0, 10.0, 20.0, -7.0]];
    let spec =
        UniformSpec::builder().bits(8).scheme(Scheme::AsymmetricGrid).granularity(Granularity::PerGroup { axis: 1, size: 2 }).check()?;
    let q = quantize(&x, &spec)?;
    assert_eq!(q.params().len(), 3);
    let offs: Vec<f32> = q.params().slices().iter().map(|s| s.offset).collect();
    assert_eq!(offs, [1.0, 10.0, -7.0]);
    // A one-element group is a zero-range slice and reconstructs exactly.
    assert_eq!(q.dequantize()[[0, 4]], -7.0);
    Ok(())
}
