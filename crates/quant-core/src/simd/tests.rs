//! Every AVX-512 kernel against its portable counterpart, bit for bit (on CPUs without
//! AVX-512 the tests have nothing to compare and pass trivially).
use super::*;
use crate::kernel::{self, Kernel};
use crate::pack::{pack_into, packed_len, unpack_from};
use crate::params::SliceParams;
use crate::range;
use crate::spec::{ParamDtype, Rounding, ScaleMode, UniformSpec};
use core::ops::Range;
use proptest::prelude::*;

/// Values with many exact ties, signed zeros, and a few extremes.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -4.0f32..4.0,
        2 => (-64i32..64).prop_map(|k| k as f32 * 0.0625),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => prop_oneof![Just(f32::MAX), Just(-f32::MAX), Just(f32::MIN_POSITIVE), Just(1e-40f32), Just(3e30f32)],
    ]
}

/// Data and a split of it into runs (some of length 0 or 1, most below 100).
fn runs() -> impl Strategy<Value = (Vec<f32>, Vec<Range<usize>>)> {
    runs_of(1)
}

/// [`runs`] with every length a multiple of `step`.
fn runs_of(step: usize) -> impl Strategy<Value = (Vec<f32>, Vec<Range<usize>>)> {
    prop::collection::vec(prop_oneof![3 => 0usize..40, 1 => 40usize..140], 1..24).prop_flat_map(move |lens| {
        let lens: Vec<usize> = lens.into_iter().map(|l| l * step).collect();
        let total: usize = lens.iter().sum();
        let mut at = 0;
        let ranges: Vec<Range<usize>> = lens
            .iter()
            .map(|&l| {
                at += l;
                at - l..at
            })
            .collect();
        // Half the cases keep only non-negative values (zeros of both signs stay), so that
        // runs whose minimum is a zero, where the sign of the result depends on the
        // operand order, are common.
        (prop::collection::vec(value(), total), any::<bool>(), Just(ranges))
            .prop_map(|(xs, nonneg, ranges)| (xs.into_iter().map(|x| if nonneg && x != 0.0 { x.abs() } else { x }).collect(), ranges))
    })
}

fn schemes() -> impl Strategy<Value = (Scheme, u8)> {
    (
        prop_oneof![
            Just(Scheme::AsymmetricGrid),
            Just(Scheme::AsymmetricExactZero),
            Just(Scheme::SymmetricNarrow),
            Just(Scheme::SymmetricFull)
        ],
        1u8..=8,
    )
        .prop_map(|(s, b)| (s, b.max(s.min_bits())))
}

fn bits_of(p: &SliceParams<f32>) -> (u32, i32, u32) {
    (p.scale.to_bits(), p.zero_point, p.offset.to_bits())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn transpose16_lays_runs_out_column_wise(len in 0usize..50) {
        // Distinct values (their bits name their position), every length of partial block.
        let src: Vec<f32> = (0..16 * len).map(|i| i as f32 + 0.5).collect();
        let mut got = vec![f32::NAN; 16 * len];
        if let Some(t) = Avx512::new() {
            transpose16(t, &src, len, &mut got);
            for k in 0..len {
                for g in 0..16 {
                    prop_assert_eq!(got[16 * k + g].to_bits(), src[g * len + k].to_bits());
                }
            }
        }
    }

    #[test]
    fn min_max_matches_portable((xs, rs) in runs(), poison in prop::option::of((any::<prop::sample::Index>(), prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)]))) {
        let Some(t) = Avx512::new() else { return Ok(()) };
        let mut xs = xs;
        if let Some((i, v)) = poison && !xs.is_empty() {
            let i = i.index(xs.len());
            xs[i] = v;
        }
        let mut got = Vec::new();
        let ok = min_max_runs(t, &xs, rs.iter().cloned(), &mut got);
        let want: Vec<_> = rs.iter().map(|r| (!r.is_empty()).then(|| range::min_max(&xs[r.clone()]).ok()).flatten()).collect();
        let all = want.iter().all(Option::is_some);
        prop_assert_eq!(ok, all);
        // Up to the first failing run, the same bounds, signs of zeros included.
        for (g, w) in got.iter().zip(&want) {
            let w = w.unwrap_or((f32::NAN, f32::NAN));
            prop_assert_eq!((g.0.to_bits(), g.1.to_bits()), (w.0.to_bits(), w.1.to_bits()));
        }
    }

    #[test]
    fn fused_runs_match_portable((xs, rs) in runs(), (scheme, bits) in schemes(), divide in any::<bool>(), f16 in any::<bool>()) {
        let Some(t) = Avx512::new() else { return Ok(()) };
        prop_assume!(rs.iter().all(|r| !r.is_empty()));
        let mode = if divide { ScaleMode::Divide } else { ScaleMode::Reciprocal };
        let dtype = if f16 { ParamDtype::F16 } else { ParamDtype::Native };
        let spec = UniformSpec::builder().bits(bits).scheme(scheme).scale_mode(mode).param_dtype(dtype).check().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let grid = Grid { scheme, bits, divide, f16 };
        let mut codes = vec![0u8; xs.len()];
        let mut params = Vec::new();
        prop_assert!(fused_runs(t, &xs, rs.iter().cloned(), &grid, Codes::Bytes, &mut codes, 0, |p| params.push(p)));
        let mut want = vec![0u8; xs.len()];
        for (r, got) in rs.iter().zip(&params) {
            let (lo, hi) = range::min_max(&xs[r.clone()]).map_err(|_| TestCaseError::fail("finite input"))?;
            let p = SliceParams::for_spec(lo, hi, &spec);
            prop_assert_eq!(bits_of(got), bits_of(&p), "run {:?} range [{}, {}]", r, lo, hi);
            let k = Kernel::new(&p, spec.max_code(), mode);
            kernel::quantize_run(&k, Rounding::HalfEven, r.start, &xs[r.clone()], &mut want[r.clone()]);
        }
        prop_assert_eq!(codes, want);
    }

    #[test]
    fn fused_equal_matches_portable(
        len in prop_oneof![Just(16usize), Just(32), Just(64), Just(128), Just(48), Just(6)],
        (first, n) in (0usize..3, 1usize..50),
        seed in prop::collection::vec(value(), 64),
        nonneg in any::<bool>(),
        (scheme, bits) in schemes(),
        divide in any::<bool>(),
        f16 in any::<bool>(),
        poison in prop::option::of((any::<prop::sample::Index>(), prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)])),
    ) {
        let Some(t) = Avx512::new() else { return Ok(()) };
        // Runs first..first + n of `len` values; the data repeats `seed` with a stride
        // prime to its length, so every run differs.
        let mut xs: Vec<f32> = (0..(first + n) * len).map(|i| seed[(i * 7 + i / 64) % 64]).map(|x| if nonneg && x != 0.0 { x.abs() } else { x }).collect();
        if let Some((i, v)) = poison {
            let i = first * len + i.index(n * len);
            xs[i] = v;
        }
        let mode = if divide { ScaleMode::Divide } else { ScaleMode::Reciprocal };
        let dtype = if f16 { ParamDtype::F16 } else { ParamDtype::Native };
        let spec = UniformSpec::builder().bits(bits).scheme(scheme).scale_mode(mode).param_dtype(dtype).check().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let grid = Grid { scheme, bits, divide, f16 };
        let base = first * len;
        let mut codes = vec![0u8; n * len];
        let mut params = Vec::new();
        let ok = fused_equal(t, &xs, first..first + n, len, &grid, Codes::Bytes, &mut codes, |p| params.push(p));
        prop_assert_eq!(ok, poison.is_none());
        if !ok {
            return Ok(());
        }
        let mut want = vec![0u8; n * len];
        for (k, got) in (first..first + n).zip(&params) {
            let r = k * len..(k + 1) * len;
            let (lo, hi) = range::min_max(&xs[r.clone()]).map_err(|_| TestCaseError::fail("finite input"))?;
            let p = SliceParams::for_spec(lo, hi, &spec);
            prop_assert_eq!(bits_of(got), bits_of(&p), "run {} range [{}, {}]", k, lo, hi);
            let kern = Kernel::new(&p, spec.max_code(), mode);
            kernel::quantize_run(&kern, Rounding::HalfEven, r.start, &xs[r.clone()], &mut want[r.start - base..r.end - base]);
        }
        prop_assert_eq!(params.len(), n);
        prop_assert_eq!(&codes, &want);
        if bits == 4 {
            let mut packed = vec![0u8; packed_len(n * len, 4)];
            let mut again = Vec::new();
            prop_assert!(fused_equal(t, &xs, first..first + n, len, &grid, Codes::Nibbles, &mut packed, |p| again.push(p)));
            let mut want_packed = vec![0u8; packed.len()];
            pack_into(&want, 4, &mut want_packed);
            prop_assert_eq!(packed, want_packed);
            prop_assert_eq!(again.iter().map(bits_of).collect::<Vec<_>>(), params.iter().map(bits_of).collect::<Vec<_>>());
        }
    }

    #[test]
    fn fused_runs_pack_nibbles_as_pack_into((xs, rs) in runs_of(2), scheme in prop_oneof![Just(Scheme::AsymmetricGrid), Just(Scheme::SymmetricNarrow)]) {
        let Some(t) = Avx512::new() else { return Ok(()) };
        prop_assume!(rs.iter().all(|r| !r.is_empty()));
        let grid = Grid { scheme, bits: 4, divide: false, f16: false };
        let mut bytes = vec![0u8; xs.len()];
        prop_assert!(fused_runs(t, &xs, rs.iter().cloned(), &grid, Codes::Bytes, &mut bytes, 0, |_| ()));
        let mut want = vec![0u8; packed_len(xs.len(), 4)];
        pack_into(&bytes, 4, &mut want);
        let mut got = vec![0u8; want.len()];
        let mut params = Vec::new();
        prop_assert!(fused_runs(t, &xs, rs.iter().cloned(), &grid, Codes::Nibbles, &mut got, 0, |p| params.push(p)));
        prop_assert_eq!(&got, &want);
        // Dequantizing from the packed nibbles equals dequantizing the bytes.
        let runs = || rs.iter().cloned().zip(params.iter().copied());
        let (mut from_nibbles, mut from_bytes) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
        dequantize_runs(t, &got, Codes::Nibbles, runs(), &mut from_nibbles);
        dequantize_runs(t, &bytes, Codes::Bytes, runs(), &mut from_bytes);
        let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits_of(&from_nibbles), bits_of(&from_bytes));
    }

    #[test]
    fn dequantize_runs_match_portable((xs, rs) in runs(), (scheme, bits) in schemes(), dtype in prop_oneof![Just(ParamDtype::Native), Just(ParamDtype::F16), Just(ParamDtype::Bf16)]) {
        let Some(t) = Avx512::new() else { return Ok(()) };
        prop_assume!(rs.iter().all(|r| !r.is_empty()));
        let spec = UniformSpec::builder().bits(bits).scheme(scheme).param_dtype(dtype).check().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut params = Vec::new();
        let mut codes = vec![0u8; xs.len()];
        let mut want = vec![0f32; xs.len()];
        for r in &rs {
            let (lo, hi) = range::min_max(&xs[r.clone()]).map_err(|_| TestCaseError::fail("finite input"))?;
            let p = SliceParams::for_spec(lo, hi, &spec);
            let k = Kernel::new(&p, spec.max_code(), ScaleMode::Reciprocal);
            kernel::quantize_run(&k, Rounding::HalfEven, r.start, &xs[r.clone()], &mut codes[r.clone()]);
            kernel::dequantize_run(&k, &codes[r.clone()], &mut want[r.clone()]);
            params.push(p);
        }
        let mut back = vec![0f32; xs.len()];
        dequantize_runs(t, &codes, Codes::Bytes, rs.iter().cloned().zip(params.iter().copied()), &mut back);
        let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits_of(&back), bits_of(&want));
    }

    #[test]
    fn dequantize_equal_runs_match_portable(
        len in prop_oneof![Just(16usize), Just(32), Just(48), Just(128)],
        runs in prop::collection::vec((0.0f32..2.0, 0i32..256, -4.0f32..4.0, any::<bool>()), 1..12),
        codes in prop::collection::vec(any::<u8>(), 12 * 128),
        extra in 0usize..128,
        (nibbles, stream, offset) in (any::<bool>(), any::<bool>(), 0usize..16),
    ) {
        let Some(t) = Avx512::new() else { return Ok(()) };
        let extra = extra % len;
        // Steps of every size and sign of zero offset; zero points across the code range.
        let zmax = if nibbles { 16 } else { 256 };
        let params: Vec<SliceParams<f32>> = runs.iter().map(|&(s, z, m, neg)| SliceParams { scale: s * s * s, zero_point: z % zmax, offset: if neg { -m } else { m } }).collect();
        let n = params.len() * len;
        let (codes, layout) = if nibbles { (&codes[..n / 2], Codes::Nibbles) } else { (&codes[..n], Codes::Bytes) };
        let mut bytes = vec![0u8; n];
        if nibbles {
            unpack_from(codes, 4, &mut bytes);
        } else {
            bytes.copy_from_slice(codes);
        }
        let mut want = vec![0f32; n];
        for (k, p) in params.iter().enumerate() {
            let kern = Kernel::new(p, 255, ScaleMode::Reciprocal);
            kernel::dequantize_run(&kern, &bytes[k * len..(k + 1) * len], &mut want[k * len..(k + 1) * len]);
        }
        // A partial run at the end of `out` is left alone, and so is everything outside
        // it; `offset` moves `out` against 64-byte lines (the streaming stores' unit).
        let mut buf = vec![f32::NAN; offset + n + extra + 16];
        dequantize_equal_runs(t, codes, layout, len, params.iter().copied(), &mut buf[offset..offset + n + extra], stream);
        let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits_of(&buf[offset..offset + n]), bits_of(&want));
        prop_assert!(buf[..offset].iter().chain(&buf[offset + n..]).all(|x| x.is_nan()));
    }

    #[test]
    fn pack4_and_unpack4_match_portable(codes in prop::collection::vec(0u8..16, 0..400)) {
        let Some(t) = Avx512::new() else { return Ok(()) };
        let n = packed_len(codes.len(), 4);
        let (mut got, mut want) = (vec![0u8; n], vec![0u8; n]);
        pack4(t, &codes, &mut got);
        pack_into(&codes, 4, &mut want);
        prop_assert_eq!(&got, &want);
        let (mut back, mut want_back) = (vec![0u8; codes.len()], vec![0u8; codes.len()]);
        unpack4(t, &got, &mut back);
        unpack_from(&want, 4, &mut want_back);
        prop_assert_eq!(&back, &want_back);
        prop_assert_eq!(back, codes);
    }
}

#[test]
fn params16_covers_extreme_ranges() {
    let Some(t) = Avx512::new() else { return };
    let edges = [0.0f32, -0.0, 1.0, -1.0, f32::MIN_POSITIVE, -1e-40, 1e-40, f32::MAX, -f32::MAX, 1e38, -3e38, 0.5, 7.0];
    let edges: Vec<f32> = edges.into_iter().chain([65504.0, -32752.5, 40000.0, 1e-5, 3e-8, -6e-8]).collect();
    for (scheme, bits, f16) in [Scheme::AsymmetricGrid, Scheme::AsymmetricExactZero, Scheme::SymmetricNarrow, Scheme::SymmetricFull]
        .into_iter()
        .flat_map(|s| (s.min_bits()..=8).flat_map(move |b| [(s, b, false), (s, b, true)]))
    {
        {
            let dtype = if f16 { ParamDtype::F16 } else { ParamDtype::Native };
            let spec = UniformSpec::builder().bits(bits).scheme(scheme).param_dtype(dtype).check().unwrap_or_else(|e| panic!("{e}"));
            for &a in &edges {
                for &b in &edges {
                    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                    // A run [lo, hi, lo, ...] has exactly this range.
                    let xs = [lo, hi, lo, hi];
                    let mut params = Vec::new();
                    let mut codes = [0u8; 4];
                    let one_run = [Range { start: 0, end: 4 }];
                    assert!(fused_runs(
                        t,
                        &xs,
                        one_run.into_iter(),
                        &Grid { scheme, bits, divide: false, f16 },
                        Codes::Bytes,
                        &mut codes,
                        0,
                        |p| params.push(p)
                    ));
                    let (l, h) = range::min_max(&xs).unwrap_or_else(|_| panic!("finite"));
                    assert_eq!(
                        bits_of(&params[0]),
                        bits_of(&SliceParams::for_spec(l, h, &spec)),
                        "{scheme:?} {bits} f16 {f16} [{lo}, {hi}]"
                    );
                }
            }
        }
    }
}
