//! Invariants of uniform quantization over random tensors and specs, f32 and f64.

use ndarray::{Array1, ArrayD, Axis};
use proptest::prelude::*;
use quant_core::{Granularity, Rounding, UniformSpec, calibrate, check, fake_quantize, quantize, strategies};

macro_rules! invariants {
    ($name:ident, $t:ty) => {
        mod $name {
            use super::*;
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(300))]

                #[test]
                fn error_bounded_by_half_a_step((x, spec) in strategies::tensor_and_spec::<$t>(3, 8, 100.0)) {
                    prop_assert_eq!(check::error_bound(&x, &spec), Ok(()));
                }

                #[test]
                fn codes_in_range((x, spec) in strategies::tensor_and_spec::<$t>(3, 8, 100.0)) {
                    prop_assert_eq!(check::codes_in_range(&x, &spec), Ok(()));
                }

                #[test]
                fn fake_quant_idempotent((x, spec) in strategies::tensor_and_spec::<$t>(3, 8, 100.0)) {
                    prop_assert_eq!(check::fake_quant_idempotent(&x, &spec), Ok(()));
                }

                #[test]
                fn dequantize_equals_fake_quant((x, spec) in strategies::tensor_and_spec::<$t>(3, 8, 100.0)) {
                    prop_assert_eq!(check::dequantize_matches_fake_quant(&x, &spec), Ok(()));
                }

                #[test]
                fn monotone((x, spec) in strategies::tensor_and_spec::<$t>(3, 8, 100.0)) {
                    prop_assert_eq!(check::monotone(&x, &spec), Ok(()));
                }

                #[test]
                fn per_channel_equals_per_tensor_on_slices(x in strategies::tensor::<$t>(3, 6, 10.0), axis in 0usize..3, bits in 2u8..=8) {
                    let axis = axis % x.ndim();
                    let spec = UniformSpec::builder().bits(bits).per_channel(axis).check().unwrap();
                    prop_assert_eq!(check::per_channel_matches_slices(&x, &spec), Ok(()));
                }

                #[test]
                fn one_group_spanning_the_axis_equals_per_channel_of_the_rest(x in strategies::tensor::<$t>(2, 6, 10.0), bits in 1u8..=8) {
                    // Groups as long as the last axis: one group per row = per-channel on axis 0
                    // for 2-D tensors (and per-tensor for 1-D ones).
                    let last = x.ndim() - 1;
                    let groups = UniformSpec::builder().bits(bits).per_group(last, x.shape()[last]).check().unwrap();
                    let other = if x.ndim() == 2 { Granularity::PerChannel { axis: 0 } } else { Granularity::PerTensor };
                    let a = quantize(&x, &groups).unwrap().dequantize();
                    let b = quantize(&x, &groups.with_granularity(other).unwrap()).unwrap().dequantize();
                    prop_assert_eq!(a, b);
                }

                #[test]
                fn ste_mask_marks_values_inside_the_clip_range((x, spec) in strategies::tensor_and_spec::<$t>(2, 8, 100.0)) {
                    prop_assume!(spec.granularity() == Granularity::PerTensor && !matches!(spec.rounding(), Rounding::Stochastic { .. }));
                    let p = calibrate(&x, &spec).unwrap();
                    let s = p.slices()[0];
                    // The clip range in real units: codes 0 and max_code, each widened by half a step.
                    let lo = s.scale * (-0.5 - s.zero_point as $t) + s.offset;
                    let hi = s.scale * (spec.max_code() as $t - s.zero_point as $t + 0.5) + s.offset;
                    let fq = p.fake_quantize(&x).unwrap();
                    let grad = ArrayD::<$t>::ones(x.raw_dim());
                    let back = quant_core::ste_backward(&grad, &fq.mask).unwrap();
                    for ((&v, &m), &g) in x.iter().zip(fq.mask.iter()).zip(back.iter()) {
                        // Strictly inside (away from the rounding boundary by a relative margin)
                        // the mask is set; strictly outside it is not.
                        let margin = (hi - lo).abs() * 1e-4;
                        if v > lo + margin && v < hi - margin { prop_assert!(m); }
                        if v < lo - margin || v > hi + margin { prop_assert!(!m); }
                        prop_assert_eq!(g, if m { 1.0 } else { 0.0 });
                    }
                }

                #[test]
                fn stochastic_rounding_is_seeded((x, spec) in strategies::tensor_and_spec::<$t>(2, 8, 10.0), seed in any::<u64>()) {
                    let s = UniformSpec::builder().bits(spec.bits()).scheme(spec.scheme()).granularity(spec.granularity())
                        .rounding(Rounding::Stochastic { seed }).check().unwrap();
                    prop_assert_eq!(quantize(&x, &s).unwrap(), quantize(&x, &s).unwrap());
                    prop_assert_eq!(fake_quantize(&x, &s).unwrap(), fake_quantize(&x, &s).unwrap());
                }
            }
        }
    };
}
invariants!(f32_invariants, f32);
invariants!(f64_invariants, f64);

proptest! {
    #[test]
    fn pack_round_trips_every_width_and_length(codes in prop::collection::vec(any::<u8>(), 0..200), bits in 1u8..=8) {
        prop_assert_eq!(check::pack_round_trip(&codes, bits), Ok(()));
    }
}

#[test]
fn stochastic_rounding_is_unbiased() {
    // x = 0.3 steps above a grid point: the mean of many stochastic codes approaches 0.3.
    let x = Array1::from_elem(20_000, 0.3f32 * 0.25);
    let spec = UniformSpec::builder()
        .bits(8)
        .scheme(quant_core::Scheme::SymmetricNarrow)
        .rounding(Rounding::Stochastic { seed: 42 })
        .check()
        .unwrap();
    let p = quant_core::QuantParams::from_ranges(&spec, &[(-31.75f32, 31.75)]).unwrap();
    let q = p.quantize(&x).unwrap().int_repr();
    let mean = q.iter().map(|&v| f64::from(v)).sum::<f64>() / q.len() as f64;
    // Bernoulli(0.3): standard error sqrt(0.21/20000) = 0.0032; 5 standard errors.
    assert!((mean - 0.3).abs() < 0.016, "{mean}");
    assert!(q.iter().all(|&v| v == 0 || v == 1));
}

#[test]
fn per_channel_axis_one_of_a_3d_tensor() {
    let x = ArrayD::from_shape_fn(vec![3, 4, 5], |ix| (ix[0] as f32 - 1.0) * (ix[1] as f32 + 1.0) + ix[2] as f32 * 0.1);
    let spec = UniformSpec::builder().bits(4).per_channel(1).check().unwrap();
    let q = quantize(&x, &spec).unwrap();
    assert_eq!(q.params().len(), 4);
    for (i, lane) in x.axis_iter(Axis(1)).enumerate() {
        let lo = lane.iter().copied().fold(f32::INFINITY, f32::min);
        assert_eq!(q.params().slices()[i].offset, lo);
    }
}
