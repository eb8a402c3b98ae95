//! The fuzz target's body (`fuzz::exercise`) over random bytes in the ordinary test run, plus
//! inputs that once broke something, so CI checks "never panics" without a fuzzer.

use proptest::prelude::*;
use quant_core::fuzz;

/// Extreme `f32` values: uniform random bytes almost never produce a lone huge value, which
/// is how the fuzzer's first crash slipped past the plain byte property below.
fn extreme_value() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(f32::MAX.to_bits()),
        Just((-f32::MAX).to_bits()),
        Just(f32::MIN_POSITIVE.to_bits()),
        Just(1u32),
        Just(0x8000_0001),
        Just(0x7F00_0000),
        Just(0xFF6C_6C6C),
        Just(0u32),
        Just(f32::NAN.to_bits()),
        Just(f32::INFINITY.to_bits()),
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        prop_assert_eq!(fuzz::exercise(&bytes), Ok(()));
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn extreme_values_never_break_invariants(
        head in prop::collection::vec(any::<u8>(), 5),
        rounding in 0u8..2,
        mode in any::<u8>(),
        shape in prop::collection::vec(0u8..7, 0..4),
        values in prop::collection::vec(extreme_value(), 216),
    ) {
        // Bits, scheme, granularity, axis, group size; min-max range (byte 0), a deterministic
        // rounding (no seed bytes), the scale mode; then the shape and enough values.
        let mut bytes = head;
        bytes.extend([0, rounding, mode]);
        bytes.push(shape.len() as u8);
        bytes.extend(&shape);
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        prop_assert_eq!(fuzz::exercise(&bytes), Ok(()));
    }
}

/// Hand-made hostile inputs: NaN and infinite values, empty and 0-d shapes, extreme ranges.
#[test]
fn hostile_inputs() {
    let nan = f32::NAN.to_bits().to_le_bytes();
    let inf = f32::INFINITY.to_bits().to_le_bytes();
    let max = f32::MAX.to_bits().to_le_bytes();
    let tiny = 1u32.to_le_bytes(); // the smallest subnormal
    // bits 8, exact-zero, per group axis 1 size 3, min-max, half-even, reciprocal, shape [2, 5].
    let header = [8u8, 1, 2, 1, 3, 0, 0, 0, 2, 2, 5];
    for vals in [[nan; 10], [inf; 10], [max; 10], [tiny; 10]] {
        let mut bytes = header.to_vec();
        bytes.extend(vals.iter().flatten());
        assert_eq!(fuzz::exercise(&bytes), Ok(()));
    }
    let mut mixed = header.to_vec();
    for (i, v) in [max, tiny, nan, inf].iter().cycle().take(10).enumerate() {
        let _ = i;
        mixed.extend(v);
    }
    assert_eq!(fuzz::exercise(&mixed), Ok(()));
    assert_eq!(fuzz::exercise(&[]), Ok(()));
    assert_eq!(fuzz::exercise(&[0xff; 64]), Ok(()));
}

/// Inputs long enough for the fast kernels' blocks of sixteen groups (groups of 16 to 128
/// along rows of 512), with finite values, a NaN, and huge values.
#[test]
fn sixteen_group_blocks() {
    let (nan, max) = (f32::NAN.to_bits(), f32::MAX.to_bits());
    for (bits, scheme, size) in [(4u8, 2u8, 253u8), (4, 0, 252), (8, 3, 254), (3, 1, 255), (4, 1, 253)] {
        // bits, scheme, per group, axis 1, size; min-max, half-even, reciprocal; shape [3, 512].
        let header = [bits, scheme, 2, 1, size, 0, 0, 0, 2, 3, 255];
        let seeds: [Vec<u32>; 3] = [
            (0..64u32).map(|i| (i as f32 * 0.37 - 11.0).to_bits()).collect(),
            (0..64u32).map(|i| if i == 40 { nan } else { (i as f32).to_bits() }).collect(),
            (0..64u32).map(|i| if i % 9 == 0 { max } else { (-(i as f32)).to_bits() }).collect(),
        ];
        for values in seeds {
            let mut bytes = header.to_vec();
            bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            assert_eq!(fuzz::exercise(&bytes), Ok(()), "bits {bits} scheme {scheme} size {size}");
        }
    }
}

/// Found by the property above: a 5-bit grid over [-2^127, 2^127] overflowed `S·31` to
/// infinity before the offset was added (the range clip was ±MAX/2; it is now ±MAX/4).
#[test]
fn regression_grid_top_code_overflow() {
    let mut bytes = vec![125u8, 160, 0, 0, 0, 33, 0, 0, 43, 39, 67, 2];
    let mut values = [0u32; 32];
    values[10] = 0x7F00_0000;
    values[31] = 0xFF00_0000;
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    assert_eq!(fuzz::exercise(&bytes), Ok(()));
}

/// Found by `cargo fuzz run uniform`: a single element at -3.1e38 under `SymmetricFull` and
/// division. Only the lower end of the range was clipped, so `amax` (from the upper end,
/// equal to the lower) escaped the ±MAX/4 clip and `S·(−2)` overflowed. Both ends are now
/// clipped into the interval.
#[test]
fn regression_fuzz_symmetric_full_single_huge_value() {
    let bytes = [0xc0u8, 0xff, 0x6c, 0x3a, 0xff, 0xff, 0xff, 0xff, 0x6c, 0x6c, 0x6c, 0x6c, 0xff, 0x1a];
    assert_eq!(fuzz::exercise(&bytes), Ok(()));
}

/// Found by `cargo fuzz run uniform` once tensors could be long: 2-bit symmetric-full per
/// tensor over a [2, 512] tensor of values up to ±2.4e38, stochastic rounding. The LSQ shift
/// gradient (−Σ dY·S·g over the clipped values) passed f32's range and came out infinite;
/// the sums are now kept in f64 and an overflow is `QuantError::GradientOverflow`.
#[test]
fn regression_fuzz_lsq_gradient_overflow() {
    let bytes = [
        192u8, 255, 255, 255, 255, 156, 254, 250, 192, 91, 154, 154, 30, 0, 0, 0, 90, 198, 255, 244, 165, 54, 255, 250, 154, 154, 154, 154,
        154, 1, 159, 250, 32, 10,
    ];
    assert_eq!(fuzz::exercise(&bytes), Ok(()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn codebook_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        prop_assert_eq!(fuzz::exercise_codebook(&bytes), Ok(()));
    }

    #[test]
    fn codebook_extreme_values(head in prop::collection::vec(any::<u8>(), 14), shape in prop::collection::vec(0u8..6, 1..3), values in prop::collection::vec(extreme_value(), 72)) {
        let mut bytes = head;
        bytes.extend([0, 0]); // linear init (no seed bytes), exact algorithm (no Lloyd bytes)
        bytes.push(shape.len() as u8 - 1);
        bytes.extend(&shape);
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        prop_assert_eq!(fuzz::exercise_codebook(&bytes), Ok(()));
    }
}
