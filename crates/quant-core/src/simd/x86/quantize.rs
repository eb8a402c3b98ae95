//! The fused quantize kernels: each run's range, parameters and codes in one pass.

use crate::params::SliceParams;
use crate::simd::{Avx512, Codes, Grid};
use crate::spec::Scheme;
use core::arch::x86_64::*;
use core::ops::Range;

use super::{PREFETCH_L1, PREFETCH_L2, load, load16, neg, store16};

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn min_max(xs: &[f32]) -> Option<(f32, f32)> {
    let first = *xs.first()?;
    let mut lo = _mm512_set1_ps(first);
    let mut hi = lo;
    let mut bad = _mm512_setzero_ps();
    let zero = _mm512_setzero_ps();
    let full = xs.len() / 16 * 16;
    // Ask for the data ahead, one 64-byte line per iteration: into L2 from far ahead and
    // into L1 from nearer (hints: addresses past the end are never dereferenced).
    let ahead = xs.as_ptr().wrapping_add(PREFETCH_L1);
    let far = xs.as_ptr().wrapping_add(PREFETCH_L2);
    for at in (0..full).step_by(16) {
        _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(at).cast());
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(at).cast());
        let x = load(xs, at);
        // `_mm512_min_ps(a, b)` is `a < b ? a : b`, the portable loop's expression.
        lo = _mm512_min_ps(lo, x);
        hi = _mm512_max_ps(hi, x);
        bad = _mm512_add_ps(bad, _mm512_mul_ps(x, zero));
    }
    // The portable tree (lanes l and l + 8, then + 4, + 2, + 1), on `lo` and `−hi` in one
    // vector: max(a, b) = −min(−a, −b) exactly, signs of zeros included.
    let nh = neg(hi);
    let mut w = _mm512_min_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(lo, nh), _mm512_shuffle_f32x4::<0b11_10_11_10>(lo, nh));
    w = _mm512_min_ps(w, _mm512_shuffle_f32x4::<0b10_11_00_01>(w, w));
    w = _mm512_min_ps(w, _mm512_permute_ps::<0b11_10_11_10>(w));
    w = _mm512_min_ps(w, _mm512_permute_ps::<0b01>(w));
    let (mut l0, mut h0) = (_mm512_cvtss_f32(w), -_mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(w)));
    let mut finite = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(bad, zero) == 0xFFFF;
    for &x in &xs[full..] {
        l0 = if l0 < x { l0 } else { x };
        h0 = if h0 > x { h0 } else { x };
        finite &= x.is_finite();
    }
    (finite && first.is_finite()).then_some((l0, h0))
}

/// Lane `i` of the result: the minimum (the maximum if `MAX`) of the sixteen lanes of
/// `v[i]`, combined in `min_max`'s tree order: lanes l and l + 8 with the lower lane as
/// the first operand of `_mm512_min_ps` (`_mm512_max_ps`), then l and l + 4, l + 2,
/// l + 1. So even the sign of a zero agrees with one tree per vector (and `max(a, b)` is
/// `−min(−a, −b)` operand for operand, `min_max`'s way to the maximum). Four steps, each
/// halving the number of vectors: 45 operations where sixteen trees take over 100.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce16x16<const MAX: bool>(v: &[__m512; 16]) -> __m512 {
    let op = |a: __m512, b: __m512| if MAX { _mm512_max_ps(a, b) } else { _mm512_min_ps(a, b) };
    // The steps leave position 4l + k's result in lane 4k + l; taking vector 4k + l to
    // position 4l + k (the map is its own inverse) puts vector i's result in lane i.
    const AT: [usize; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];
    // Lanes l and l + 8: 128-bit quarters 0, 1 against 2, 3, two positions per vector.
    let a: [__m512; 8] = core::array::from_fn(|p| {
        let (x, y) = (v[AT[2 * p]], v[AT[2 * p + 1]]);
        op(_mm512_shuffle_f32x4::<0b01_00_01_00>(x, y), _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y))
    });
    // Lanes l and l + 4: quarter k of the result holds position 4p + k.
    let b: [__m512; 4] = core::array::from_fn(|p| {
        let (x, y) = (a[2 * p], a[2 * p + 1]);
        op(_mm512_shuffle_f32x4::<0b10_00_10_00>(x, y), _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y))
    });
    // Lanes l and l + 2, within quarters: two positions per quarter.
    let c: [__m512; 2] = core::array::from_fn(|p| {
        let (x, y) = (b[2 * p], b[2 * p + 1]);
        op(_mm512_shuffle_ps::<0b01_00_01_00>(x, y), _mm512_shuffle_ps::<0b11_10_11_10>(x, y))
    });
    // Lanes l and l + 1: four positions per quarter.
    op(_mm512_shuffle_ps::<0b10_00_10_00>(c[0], c[1]), _mm512_shuffle_ps::<0b11_01_11_01>(c[0], c[1]))
}

/// Sixteen runs' constants (`kernel::Kernel::new` lane by lane, with the clamp to the
/// code range `−Z..=umax − Z` applied before rounding) from their ranges.
struct Consts16 {
    scale: [f32; 16],
    inv: [f32; 16],
    offset: [f32; 16],
    qlo: [f32; 16],
    qhi: [f32; 16],
    zero_point: [i32; 16],
}

impl Consts16 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn new(lo: __m512, hi: __m512, g: &Grid) -> Self {
        let (scale, zp, offset) = params16(lo, hi, g);
        let zf = _mm512_cvtepi32_ps(zp);
        let max_code = _mm512_set1_ps(f32::from(g.scheme.max_code(g.bits)));
        let mut zero_point = [0i32; 16];
        // SAFETY: the array holds 64 bytes; unaligned store.
        unsafe { _mm512_storeu_si512(zero_point.as_mut_ptr().cast(), zp) };
        Self {
            scale: store16(scale),
            inv: store16(_mm512_div_ps(_mm512_set1_ps(1.0), scale)),
            offset: store16(offset),
            qlo: store16(neg(zf)),
            qhi: store16(_mm512_sub_ps(max_code, zf)),
            zero_point,
        }
    }

    /// Run `j`'s constants, broadcast.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn run(&self, j: usize) -> Bcast {
        Bcast::new(self.scale[j], self.inv[j], self.offset[j], self.qlo[j], self.qhi[j], self.zero_point[j])
    }

    fn params(&self, j: usize) -> SliceParams<f32> {
        SliceParams { scale: self.scale[j], zero_point: self.zero_point[j], offset: self.offset[j] }
    }
}

/// Codes for the 16 values in `x` with constants `c`, as eight bytes of pairs (the low
/// half of the result): byte k holds codes 2k (low nibble) and 2k + 1.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn nibbles_of(x: __m512, c: &Bcast, divide: bool) -> __m128i {
    // Each 64-bit lane holds codes c0 (low half) and c1: c0 | c1 << 4 in its low byte.
    let v = codes_of(x, c, divide);
    _mm512_cvtepi64_epi8(_mm512_or_si512(v, _mm512_srli_epi64::<28>(v)))
}

/// The codes of [`equal_block`]'s block (`xs`) into `out`, with run `j`'s constants
/// from `k`; `SUB` as for [`codes_from`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn codes_block<const V: usize, const SUB: bool>(xs: &[f32], k: &Consts16, divide: bool, layout: Codes, out: &mut [u8]) {
    let codes = |w: usize| codes_from::<SUB>(load(xs, 16 * w), &k.run(w / V), divide);
    match layout {
        Codes::Bytes => {
            for w in 0..16 * V {
                let o = &mut out[16 * w..16 * w + 16];
                // SAFETY: `o` holds 16 bytes; unaligned store.
                unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(codes(w))) };
            }
        }
        Codes::Nibbles => {
            for w in (0..16 * V).step_by(4) {
                let o = &mut out[8 * w..8 * w + 32];
                let v = pack64(codes(w), codes(w + 1), codes(w + 2), codes(w + 3));
                // SAFETY: `o` holds 32 bytes; unaligned store.
                unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), v) };
            }
        }
    }
}

/// 64 codes (four vectors of `i32` in `0..=15`, in element order) as 32 bytes of
/// nibble pairs, the first code of each pair in the low nibble.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn pack64(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> __m256i {
    // 128-bit lane L: the bytes a[4L..4L + 4], b[4L..], c[4L..], d[4L..].
    let bytes = _mm512_packus_epi16(_mm512_packus_epi32(a, b), _mm512_packus_epi32(c, d));
    // Each 16-bit word's low byte becomes its two codes' pair; narrowed, byte 8L + 2u + s
    // holds pair 2L + s of input u (a = 0, ..., d = 3).
    let pairs = _mm512_cvtepi16_epi8(_mm512_or_si512(bytes, _mm512_srli_epi16::<4>(bytes)));
    // Within each 128-bit half, group the bytes by input (4u + 2l + s from 8l + 2u + s),
    // then the 32-bit pieces across halves (2u + h from 4h + u): a's eight pairs first.
    let by_input =
        _mm256_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15, 0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15);
    let grouped = _mm256_shuffle_epi8(pairs, by_input);
    _mm256_permutevar8x32_epi32(grouped, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// [`fused_runs`] for one block of 16 contiguous runs of `16·V` values each (`xs` starts
/// with the block, `out` with its codes laid out as `layout` says): the same parameters
/// and codes, with each run's loops unrolled and the sixteen ranges reduced together by
/// [`reduce16x16`]. `None` when a value is not finite.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn equal_block<const V: usize>(xs: &[f32], g: &Grid, layout: Codes, out: &mut [u8]) -> Option<Consts16> {
    let len = 16 * V;
    let xs = &xs[..16 * len];
    let zero = _mm512_setzero_ps();
    // Four chains for the finiteness check: x·0 is ±0 for finite x and NaN otherwise.
    let mut bad = [zero; 4];
    let (mut lo, mut hi) = ([zero; 16], [zero; 16]);
    for j in 0..16 {
        let run = &xs[j * len..(j + 1) * len];
        let (mut l, mut h) = (_mm512_set1_ps(run[0]), _mm512_set1_ps(run[0]));
        for v in 0..V {
            let at = 16 * v;
            // As `min_max`: one line into L2 from far ahead and into L1 from nearer.
            _mm_prefetch::<_MM_HINT_T1>(run.as_ptr().wrapping_add(at + PREFETCH_L2).cast());
            _mm_prefetch::<_MM_HINT_T0>(run.as_ptr().wrapping_add(at + PREFETCH_L1).cast());
            let x = load(run, at);
            l = _mm512_min_ps(l, x);
            h = _mm512_max_ps(h, x);
            let chain = (j * V + v) % 4;
            bad[chain] = _mm512_fmadd_ps(x, zero, bad[chain]);
        }
        (lo[j], hi[j]) = (l, h);
    }
    let bad = _mm512_add_ps(_mm512_add_ps(bad[0], bad[1]), _mm512_add_ps(bad[2], bad[3]));
    if _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(bad, zero) != 0xFFFF {
        return None;
    }
    let k = Consts16::new(reduce16x16::<false>(&lo), reduce16x16::<true>(&hi), g);
    // Symmetric and exact-zero schemes have offset +0.0 everywhere.
    let offsets = _mm512_castps_si512(load16(&k.offset));
    if _mm512_test_epi32_mask(offsets, offsets) == 0 {
        codes_block::<V, false>(xs, &k, g.divide, layout, out);
    } else {
        codes_block::<V, true>(xs, &k, g.divide, layout, out);
    }
    Some(k)
}

/// A run's constants, broadcast.
#[derive(Clone, Copy)]
struct Bcast {
    scale: __m512,
    inv: __m512,
    offset: __m512,
    lo: __m512,
    hi: __m512,
    zero_point: __m512i,
}

impl Bcast {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn new(scale: f32, inv: f32, offset: f32, lo: f32, hi: f32, zero_point: i32) -> Self {
        Self {
            scale: _mm512_set1_ps(scale),
            inv: _mm512_set1_ps(inv),
            offset: _mm512_set1_ps(offset),
            lo: _mm512_set1_ps(lo),
            hi: _mm512_set1_ps(hi),
            zero_point: _mm512_set1_epi32(zero_point),
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn codes_of(x: __m512, c: &Bcast, divide: bool) -> __m512i {
    codes_from::<true>(x, c, divide)
}

/// [`codes_of`]; with `SUB` false the offset is taken to be +0.0, for which
/// `x − offset` is `x` bit for bit (even for x = −0.0), and not subtracted.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn codes_from<const SUB: bool>(x: __m512, c: &Bcast, divide: bool) -> __m512i {
    let d = if SUB { _mm512_sub_ps(x, c.offset) } else { x };
    let y = if divide { _mm512_div_ps(d, c.scale) } else { _mm512_mul_ps(d, c.inv) };
    // `max(y, lo)` then `min(·, hi)` as the portable `half_even_code`; the conversion
    // rounds half to even (the default MXCSR mode).
    let y = _mm512_min_ps(_mm512_max_ps(y, c.lo), c.hi);
    _mm512_add_epi32(_mm512_cvtps_epi32(y), c.zero_point)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_run(c: &Bcast, divide: bool, xs: &[f32], out: &mut [u8]) {
    let n = xs.len().min(out.len());
    let full = n / 16 * 16;
    for at in (0..full).step_by(16) {
        let v = _mm512_cvtepi32_epi8(codes_of(load(xs, at), c, divide));
        let o = &mut out[at..at + 16];
        // SAFETY: `o` holds 16 bytes; unaligned store.
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), v) };
    }
    if full < n {
        let rest = n - full;
        let mask: __mmask16 = (1u32 << rest).wrapping_sub(1) as u16;
        let (xr, or) = (&xs[full..n], &mut out[full..n]);
        // SAFETY: the mask enables exactly `rest` lanes, and `xr` / `or` hold `rest`
        // elements; masked-off lanes are neither read nor written.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, xr.as_ptr());
            _mm512_mask_cvtepi32_storeu_epi8(or.as_mut_ptr().cast(), mask, codes_of(x, c, divide));
        }
    }
}

/// `SliceParams::for_spec` for sixteen ranges at once (same operations lane by lane):
/// the steps, zero points and offsets.
#[inline]
#[target_feature(enable = "avx512f")]
fn params16(lo: __m512, hi: __m512, g: &Grid) -> (__m512, __m512i, __m512) {
    if !g.f16 {
        return from_range16(lo, hi, g);
    }
    // `for_spec` with f16 tables: the range clipped to ±32752, `from_range`, then the
    // step and offset rounded to f16 (ties to even, as `half` rounds), a step that
    // rounds to 0 replaced by the smallest f16 step.
    let limit = _mm512_set1_ps(32752.0);
    let clip = |v: __m512| _mm512_min_ps(_mm512_max_ps(v, neg(limit)), limit);
    let (scale, zp, offset) = from_range16(clip(lo), clip(hi), g);
    let round = |v: __m512| _mm512_cvtph_ps(_mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v));
    let scale = round(scale);
    let tiny = _mm512_set1_ps(half::f16::from_bits(1).to_f32());
    let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(scale, _mm512_setzero_ps());
    (_mm512_mask_blend_ps(positive, tiny, scale), zp, round(offset))
}

/// `SliceParams::from_range` for sixteen ranges at once (same operations lane by lane).
#[inline]
#[target_feature(enable = "avx512f")]
fn from_range16(lo: __m512, hi: __m512, g: &Grid) -> (__m512, __m512i, __m512) {
    let limit = f32::MAX / 4.0;
    // `max(v, a)` is `v > a ? v : a` and `min(v, a)` is `v < a ? v : a`: for the finite
    // values here, the portable `if`-chains' results.
    let clip = |v: __m512| _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-limit)), _mm512_set1_ps(limit));
    let (lo, hi) = (clip(lo), clip(hi));
    let levels_i = (1i32 << g.bits) - 1;
    let levels = _mm512_set1_ps(levels_i as f32);
    let zero = _mm512_setzero_ps();
    // The clipped range is at most f32::MAX/2 wide, so `hi − lo` is finite.
    let floor = |s: __m512, min: f32| _mm512_max_ps(s, _mm512_set1_ps(min));
    let amax = || _mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi));
    let signed = _mm512_set1_epi32(g.scheme.signed_offset(g.bits));
    match g.scheme {
        Scheme::AsymmetricGrid => (floor(_mm512_div_ps(_mm512_sub_ps(hi, lo), levels), f32::MIN_POSITIVE), _mm512_setzero_si512(), lo),
        Scheme::AsymmetricExactZero => {
            let (lo, hi) = (_mm512_min_ps(lo, zero), _mm512_max_ps(hi, zero));
            let scale = floor(_mm512_div_ps(_mm512_sub_ps(hi, lo), levels), f32::EPSILON);
            // −lo/S lies in 0..=levels, where the conversion's ties-to-even rounding is
            // the portable `round_ties_even`.
            let z = _mm512_cvtps_epi32(neg(_mm512_div_ps(lo, scale)));
            let z = _mm512_min_epi32(_mm512_max_epi32(z, _mm512_setzero_si512()), _mm512_set1_epi32(levels_i));
            (scale, z, zero)
        }
        Scheme::SymmetricNarrow => {
            let half = ((1i32 << (g.bits - 1)) - 1) as f32;
            (floor(_mm512_div_ps(amax(), _mm512_set1_ps(half)), f32::MIN_POSITIVE), signed, zero)
        }
        Scheme::SymmetricFull => {
            let denom = levels_i as f32 / 2.0;
            (floor(_mm512_div_ps(amax(), _mm512_set1_ps(denom)), f32::EPSILON), signed, zero)
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
pub(in crate::simd) fn fused_runs(
    _t: Avx512,
    xs: &[f32],
    mut runs: impl Iterator<Item = Range<usize>>,
    g: &Grid,
    layout: Codes,
    codes: &mut [u8],
    base: usize,
    mut push: impl FnMut(SliceParams<f32>),
) -> bool {
    loop {
        // The next block of up to 16 runs.
        let mut block = [(0usize, 0usize); 16];
        let mut m = 0;
        for slot in &mut block {
            let Some(r) = runs.next() else { break };
            *slot = (r.start, r.end);
            m += 1;
        }
        if m == 0 {
            return true;
        }
        let block = &block[..m];
        let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
        for (j, &(a, b)) in block.iter().enumerate() {
            let Some((l, h)) = min_max(&xs[a..b]) else { return false };
            (lo[j], hi[j]) = (l, h);
        }
        let k = Consts16::new(load16(&lo), load16(&hi), g);
        // One loop per layout, so that each kernel has a single call site here.
        match layout {
            Codes::Bytes => {
                for (j, &(a, b)) in block.iter().enumerate() {
                    quantize_run(&k.run(j), g.divide, &xs[a..b], &mut codes[a - base..b - base]);
                }
            }
            Codes::Nibbles => {
                for (j, &(a, b)) in block.iter().enumerate() {
                    let c = k.run(j);
                    let (xs, out) = (&xs[a..b], &mut codes[(a - base) / 2..(b - base) / 2]);
                    let n = xs.len().min(out.len() * 2);
                    let full = n / 16 * 16;
                    for at in (0..full).step_by(16) {
                        let o = &mut out[at / 2..at / 2 + 8];
                        // SAFETY: `o` holds 8 bytes; the store writes the low 8 bytes.
                        unsafe { _mm_storel_epi64(o.as_mut_ptr().cast(), nibbles_of(load(xs, at), &c, g.divide)) };
                    }
                    if full < n {
                        let rest = n - full;
                        let mask: __mmask16 = (1u32 << rest).wrapping_sub(1) as u16;
                        let (xr, or) = (&xs[full..n], &mut out[full / 2..n.div_ceil(2)]);
                        // SAFETY: the masks enable exactly `rest` lanes of `xr` and
                        // `rest / 2` bytes of `or` (`rest` is even); masked-off lanes
                        // are neither read nor written.
                        unsafe {
                            let x = _mm512_maskz_loadu_ps(mask, xr.as_ptr());
                            let v = codes_of(x, &c, g.divide);
                            let bytes: __mmask8 = ((1u32 << (rest / 2)) - 1) as u8;
                            _mm512_mask_cvtepi64_storeu_epi8(or.as_mut_ptr().cast(), bytes, _mm512_or_si512(v, _mm512_srli_epi64::<28>(v)));
                        }
                    }
                }
            }
        }
        for j in 0..m {
            push(k.params(j));
        }
        if m < 16 {
            return true;
        }
    }
}

/// [`fused_runs`] for the runs `k·len..(k + 1)·len` with `k` in `runs` (the first
/// code is element `runs.start·len`): blocks of 16 runs of 16, 32, 64 or 128 values take
/// [`equal_block`], the rest [`fused_runs`].
#[target_feature(enable = "avx512f,avx512bw")]
pub(in crate::simd) fn fused_equal(
    t: Avx512,
    xs: &[f32],
    runs: Range<usize>,
    len: usize,
    g: &Grid,
    layout: Codes,
    codes: &mut [u8],
    mut push: impl FnMut(SliceParams<f32>),
) -> bool {
    let base = runs.start * len;
    let mut k = runs.start;
    while k + 16 <= runs.end {
        let (xs, at) = (&xs[k * len..], k * len - base);
        let out = match layout {
            Codes::Bytes => &mut codes[at..],
            Codes::Nibbles => &mut codes[at / 2..],
        };
        let consts = match len {
            16 => equal_block::<1>(xs, g, layout, out),
            32 => equal_block::<2>(xs, g, layout, out),
            64 => equal_block::<4>(xs, g, layout, out),
            128 => equal_block::<8>(xs, g, layout, out),
            _ => break,
        };
        let Some(consts) = consts else { return false };
        for j in 0..16 {
            push(consts.params(j));
        }
        k += 16;
    }
    fused_runs(t, xs, (k..runs.end).map(|k| k * len..(k + 1) * len), g, layout, codes, base, push)
}

#[cfg(test)]
#[target_feature(enable = "avx512f,avx512bw")]
pub(in crate::simd) fn min_max_runs(_t: Avx512, xs: &[f32], runs: impl Iterator<Item = Range<usize>>, out: &mut Vec<(f32, f32)>) -> bool {
    for r in runs {
        match min_max(&xs[r]) {
            Some(b) => out.push(b),
            None => return false,
        }
    }
    true
}
