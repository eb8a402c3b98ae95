//! Every encoder's output decodes within its type's error bound, on blocks of any scale: per
//! value for the 32-value types (round to nearest on their grids), as a root-mean-square
//! error for the k-quants (their encoders clip where that lowers the squared error, so a
//! single value may move further).

use proptest::prelude::*;
use quant_gguf::{GgmlType, codec};

/// The largest error allowed for a block `x` of type `ty` that decoded to `y`.
fn bound(ty: GgmlType, x: &[f32]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let (lo, hi) = x.iter().fold((f32::MAX, -f32::MAX), |(l, h), &v| (l.min(v), h.max(v)));
    // The f16 scale's own rounding (relative 2^-11) times the largest code, plus f16's
    // subnormal spacing for tiny scales.
    let f16_slack = |top: f32, d: f32| top * (d.abs() * 2f32.powi(-11) + 6e-8);
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => amax * 2f32.powi(-11) + 6e-8,
        GgmlType::BF16 => amax * 2f32.powi(-8),
        // Round to nearest: half a step of amax/127.
        GgmlType::Q8_0 => amax / 127.0 / 2.0 + f16_slack(127.0, amax / 127.0),
        // The side opposite the signed maximum has one level fewer: up to a whole step.
        GgmlType::Q4_0 => amax / 8.0 + f16_slack(8.0, amax / 8.0),
        GgmlType::Q5_0 => amax / 16.0 + f16_slack(16.0, amax / 16.0),
        // Half a step of the range, plus the f16 minimum's rounding.
        GgmlType::Q4_1 => (hi - lo) / 15.0 / 2.0 + f16_slack(15.0, (hi - lo) / 15.0) + lo.abs() * 2f32.powi(-11) + 6e-8,
        GgmlType::Q5_1 => (hi - lo) / 31.0 / 2.0 + f16_slack(31.0, (hi - lo) / 31.0) + lo.abs() * 2f32.powi(-11) + 6e-8,
        other => panic!("no bound for {other}"),
    }
}

/// The largest root-mean-square error allowed for a k-quant super-block: one step of a
/// min-max grid with the type's levels over the whole block (the sub-blocks' own grids are
/// finer, but their steps are coded in a few bits under the block's largest).
fn rms_bound(ty: GgmlType, x: &[f32]) -> f64 {
    let (lo, hi) = x.iter().fold((f32::MAX, -f32::MAX), |(l, h), &v| (l.min(v), h.max(v)));
    // Steps of the codes, the largest code magnitude and the largest scale code.
    let (steps, code, scale) = match ty {
        GgmlType::Q2_K => (3.0, 3.0, 15.0),
        GgmlType::Q3_K => (7.0, 4.0, 32.0),
        GgmlType::Q4_K => (15.0, 15.0, 63.0),
        GgmlType::Q5_K => (31.0, 31.0, 63.0),
        GgmlType::Q6_K => (63.0, 32.0, 128.0),
        other => panic!("no bound for {other}"),
    };
    // Plus the f16 super-scales' rounding: relative 2^-11 of the coded values, or for small
    // blocks half of f16's smallest spacing (2^-24) times the largest code and scale code, for
    // the step and the minimum.
    let amax = f64::from(hi.abs().max(lo.abs()));
    let f16_slack = amax * 2f64.powi(-10) + 2.0 * 2f64.powi(-25) * code * scale;
    f64::from(hi - lo.min(0.0).min(-hi)) / steps + f16_slack
}

proptest! {
    #[test]
    fn decoded_within_the_types_bound(
        raw in prop::collection::vec(-1.0f32..1.0, 256..=256),
        exp in -6i32..5,
        offset in -2.0f32..2.0,
        ty in prop::sample::select(codec::SUPPORTED.to_vec()),
    ) {
        let scale = 10f32.powi(exp);
        let x: Vec<f32> = raw.iter().map(|v| (v + offset) * scale).collect();
        let bytes = codec::quantize(ty, &x).unwrap();
        prop_assert_eq!(bytes.len(), x.len() / ty.block_size() * ty.block_bytes());
        let y = codec::dequantize(ty, &bytes, x.len()).unwrap();
        if ty.block_size() == 256 {
            let rms = (x.iter().zip(&y).map(|(a, q)| f64::from(a - q).powi(2)).sum::<f64>() / 256.0).sqrt();
            let b = rms_bound(ty, &x);
            prop_assert!(rms <= b, "{}: rms error {} above {}", ty, rms, b);
        } else {
            for (k, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let b = bound(ty, xs) * (1.0 + 1e-5);
                for (i, (a, q)) in xs.iter().zip(ys).enumerate() {
                    prop_assert!((a - q).abs() <= b, "{} element {}: {} decoded as {} (bound {})", ty, 32 * k + i, a, q, b);
                }
            }
        }
    }
}

#[test]
fn bad_lengths_and_values_are_typed_errors() {
    use quant_gguf::GgufError;
    assert!(matches!(codec::quantize(GgmlType::Q4_0, &[0.0; 31]), Err(GgufError::Length { .. })));
    assert!(matches!(codec::quantize(GgmlType::Q8_0, &[f32::NAN; 32]), Err(GgufError::NonFinite { index: 0 })));
    assert!(matches!(codec::quantize(GgmlType::Q4_K, &[0.0; 128]), Err(GgufError::Length { .. })));
    assert!(matches!(codec::quantize(GgmlType::IQ4_NL, &[0.0; 32]), Err(GgufError::NoCodec(_))));
    assert!(matches!(codec::dequantize(GgmlType::TQ2_0, &[0; 66], 256), Err(GgufError::NoCodec(_))));
    assert!(matches!(codec::dequantize(GgmlType::Q4_0, &[0; 17], 32), Err(GgufError::Length { .. })));
    assert!(matches!(codec::dequantize(GgmlType::Q4_0, &[0; 18], 33), Err(GgufError::Length { .. })));
    // The float types store NaN and infinities as they are.
    let bytes = codec::quantize(GgmlType::F16, &[f32::INFINITY, f32::NAN]).unwrap();
    let back = codec::dequantize(GgmlType::F16, &bytes, 2).unwrap();
    assert!(back[0] == f32::INFINITY && back[1].is_nan());
}
