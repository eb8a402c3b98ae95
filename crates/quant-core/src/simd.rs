//! AVX-512 versions of the f32 uniform hot loops, chosen at run time.
//!
//! Each function here computes exactly what its portable counterpart computes, in the same
//! order of operations (the tests compare them bit for bit):
//!
//! | here | portable |
//! |---|---|
//! | [`fused_runs`] | per run: `range::min_max`, `SliceParams::for_spec` (f32 or f16 steps), `kernel::quantize_run` with half-even rounding, and 4-bit packing when asked |
//! | [`fused_equal`] | [`fused_runs`] on contiguous runs of one length; 16 runs of 16, 32, 64 or 128 values at a time go through one unrolled kernel that reduces their sixteen ranges together and packs 64 nibbles per store |
//! | `min_max_runs` (tests only) | `range::min_max` per run (same 16 lanes, same tree reduction, so even the sign of a zero bound agrees) |
//! | [`dequantize_runs`] | `kernel::dequantize_run` per run, from bytes or packed nibbles |
//! | [`dequantize_equal_runs`] | [`dequantize_runs`] on contiguous runs of one length (a multiple of 16); for packed nibbles each run's sixteen possible values computed once, then one permute per sixteen codes; optionally through non-temporal stores |
//! | [`pack4`] / [`unpack4`] | `pack::pack_into` / `pack::unpack_from` at 4 bits |
//!
//! Every entry point takes an [`Avx512`] token, which only a CPU with AVX-512 F and BW
//! gives out; on other CPUs and architectures the portable code runs.
//! The only `unsafe` is the token-checked call into `#[target_feature]` functions and the
//! unaligned (or masked) loads and stores, each on a range the surrounding code has
//! bounds-checked; the prefetch hints may point past the end but never dereference.
#![allow(unsafe_code)]
// Kernel entry points take the CPU token, the data, its runs and its layout as plain
// arguments: bundling them would only move the list into a struct built at each call.
#![allow(clippy::too_many_arguments)]

use core::ops::Range;

use crate::params::SliceParams;
use crate::spec::Scheme;

/// Defines a function whose body is compiled twice, for the baseline target and for AVX-512
/// (F and BW), and picks the second at run time on CPUs that have it: the same Rust, so the
/// same results (Rust never fuses or reorders float operations), with the wider vector units
/// where the compiler vectorises. The body must be safe code.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$($g:ident: $b:path),*>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn plain<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            if let Some(t) = crate::cpu::Avx512::new() {
                #[target_feature(enable = "avx512f,avx512bw")]
                #[allow(clippy::too_many_arguments)]
                fn wide<$($g: $b),*>(_t: crate::cpu::Avx512, $($arg: $ty),*) $(-> $ret)? {
                    plain($($arg),*)
                }
                // SAFETY: `t` proves the CPU has AVX-512F and BW, the features `wide`
                // enables; `wide` is safe code.
                #[allow(unsafe_code)]
                return unsafe { wide(t, $($arg),*) };
            }
            plain($($arg),*)
        }
    };
}

pub(crate) use crate::cpu::Avx512;

/// How [`fused_runs`] derives each run's parameters from its range: `SliceParams::for_spec`
/// for the scheme and width, with the step and offset kept in f32 (`ParamDtype::Native`) or
/// rounded to f16 (`ParamDtype::F16`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    pub(crate) scheme: Scheme,
    pub(crate) bits: u8,
    pub(crate) divide: bool,
    pub(crate) f16: bool,
}

/// How [`fused_runs`] lays out the codes it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codes {
    /// One byte per code.
    Bytes,
    /// Two 4-bit codes per byte, the first in the low nibble (the packed 4-bit layout);
    /// every run must start on an even element and have an even length.
    Nibbles,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Avx512, Codes, Grid};
    use crate::params::SliceParams;
    use crate::spec::Scheme;
    use core::arch::x86_64::*;
    use core::ops::Range;

    /// How far ahead (in elements) the min-max pass prefetches into L1 (8 KiB) and into L2
    /// (32 KiB). The two levels matter on small groups: with only the L1 hint, groups of 32
    /// quantized at 7 to 8 GB/s on one core, with both at 9 GB/s (docs/benchmarks.md).
    const PREFETCH_L1: usize = 2048;
    const PREFETCH_L2: usize = 8192;

    /// Sixteen f32 from `xs[at..at + 16]` (bounds-checked).
    #[inline(always)]
    fn load(xs: &[f32], at: usize) -> __m512 {
        let s = &xs[at..at + 16];
        // SAFETY: `s` holds 16 f32 (64 bytes); the load is unaligned. AVX-512F is enabled in
        // every (target-feature) caller.
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }

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

    /// Dequantizes the codes of one run into `out`: one code per byte of `codes`, or two
    /// (low nibble first) for [`Codes::Nibbles`], where `out.len()` must be even.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn dequantize_run(p: &SliceParams<f32>, layout: Codes, codes: &[u8], out: &mut [f32]) {
        let n = match layout {
            Codes::Bytes => codes.len().min(out.len()),
            Codes::Nibbles => (codes.len() * 2).min(out.len()),
        };
        let full = n / 16 * 16;
        let (s, m, z) = (_mm512_set1_ps(p.scale), _mm512_set1_ps(p.offset), _mm512_set1_epi32(p.zero_point));
        let nibble = _mm512_set1_epi32(15);
        for at in (0..full).step_by(16) {
            let o = &mut out[at..at + 16];
            let u = match layout {
                Codes::Bytes => {
                    let cs = &codes[at..at + 16];
                    // SAFETY: `cs` holds 16 bytes; unaligned load.
                    _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(cs.as_ptr().cast()) })
                }
                Codes::Nibbles => {
                    let cs = &codes[at / 2..at / 2 + 8];
                    // SAFETY: `cs` holds 8 bytes; the load reads exactly those.
                    let t = _mm512_cvtepu8_epi64(unsafe { _mm_loadl_epi64(cs.as_ptr().cast()) });
                    // Byte b in a 64-bit lane: b | b << 28 holds the low nibble in the low
                    // 32-bit half and the high nibble at the bottom of the high half.
                    _mm512_and_si512(_mm512_or_si512(t, _mm512_slli_epi64::<28>(t)), nibble)
                }
            };
            let v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(u, z)), s), m);
            // SAFETY: `o` holds 16 f32; unaligned store.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
        }
        for (i, o) in out[full..n].iter_mut().enumerate() {
            let i = full + i;
            let c = match layout {
                Codes::Bytes => codes[i],
                Codes::Nibbles => (codes[i / 2] >> (4 * (i % 2))) & 15,
            };
            *o = (i32::from(c) - p.zero_point) as f32 * p.scale + p.offset;
        }
    }

    /// Sixteen f32 from an array (no bounds to check).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load16(a: &[f32; 16]) -> __m512 {
        // SAFETY: the array holds 64 bytes; unaligned load.
        unsafe { _mm512_loadu_ps(a.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store16(v: __m512) -> [f32; 16] {
        let mut a = [0f32; 16];
        // SAFETY: the array holds 64 bytes; unaligned store.
        unsafe { _mm512_storeu_ps(a.as_mut_ptr(), v) };
        a
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn neg(v: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN)))
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
    pub(super) fn fused_runs(
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
                                _mm512_mask_cvtepi64_storeu_epi8(
                                    or.as_mut_ptr().cast(),
                                    bytes,
                                    _mm512_or_si512(v, _mm512_srli_epi64::<28>(v)),
                                );
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
    pub(super) fn fused_equal(
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
    pub(super) fn min_max_runs(_t: Avx512, xs: &[f32], runs: impl Iterator<Item = Range<usize>>, out: &mut Vec<(f32, f32)>) -> bool {
        for r in runs {
            match min_max(&xs[r]) {
                Some(b) => out.push(b),
                None => return false,
            }
        }
        true
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn dequantize_runs(
        _t: Avx512,
        codes: &[u8],
        layout: Codes,
        runs: impl Iterator<Item = (Range<usize>, SliceParams<f32>)>,
        out: &mut [f32],
    ) {
        for (r, p) in runs {
            let cs = match layout {
                Codes::Bytes => &codes[r.clone()],
                Codes::Nibbles => &codes[r.start / 2..r.end.div_ceil(2)],
            };
            dequantize_run(&p, layout, cs, &mut out[r]);
        }
    }

    /// [`dequantize_runs`] for runs of `len` codes each (`len` a multiple of 16), laid out as
    /// `layout` says: run k covers `out[k·len..(k + 1)·len]` and the codes from element
    /// `k·len`, with the k-th parameters. For packed nibbles, the sixteen values a run's codes
    /// can take are computed once with `dequantize_run`'s expression and looked up by one
    /// permute per sixteen codes (it reads only the low four bits of each index). With
    /// `stream` the values go out through [`Stream`].
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn dequantize_equal_runs(
        _t: Avx512,
        codes: &[u8],
        layout: Codes,
        len: usize,
        params: impl Iterator<Item = SliceParams<f32>>,
        out: &mut [f32],
        stream: bool,
    ) {
        let runs = out.len() / len;
        let out = &mut out[..runs * len];
        let params = params.take(runs);
        let direct = |k: usize, v: __m512| {
            let o = &mut out[16 * k..16 * k + 16];
            // SAFETY: `o` holds 16 f32; unaligned store.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
        };
        match (layout, stream) {
            (Codes::Nibbles, false) => nibble_vectors(codes, len, params, direct),
            (Codes::Bytes, false) => byte_vectors(codes, len, params, direct),
            (_, true) => {
                let mut sink = Stream::new(out);
                match layout {
                    Codes::Nibbles => nibble_vectors(codes, len, params, |_, v| sink.push(v)),
                    Codes::Bytes => byte_vectors(codes, len, params, |_, v| sink.push(v)),
                }
                sink.finish();
            }
        }
    }

    /// [`dequantize_equal_runs`]'s values from one code per byte: vector k (values
    /// `16k..16k + 16` of the runs, in order) to `emit`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn byte_vectors(codes: &[u8], len: usize, params: impl Iterator<Item = SliceParams<f32>>, mut emit: impl FnMut(usize, __m512)) {
        let mut k = 0;
        for (cs, p) in codes.chunks_exact(len).zip(params) {
            let (s, m, z) = (_mm512_set1_ps(p.scale), _mm512_set1_ps(p.offset), _mm512_set1_epi32(p.zero_point));
            for c in cs.chunks_exact(16) {
                // SAFETY: `c` holds 16 bytes; unaligned load.
                let u = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(c.as_ptr().cast()) });
                emit(k, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(u, z)), s), m));
                k += 1;
            }
        }
    }

    /// [`dequantize_equal_runs`]'s values from packed nibbles: vector k (values `16k..16k + 16` of the runs, in
    /// order) to `emit`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn nibble_vectors(codes: &[u8], len: usize, params: impl Iterator<Item = SliceParams<f32>>, mut emit: impl FnMut(usize, __m512)) {
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut k = 0;
        for (cs, p) in codes.chunks_exact(len / 2).zip(params) {
            let (s, m, z) = (_mm512_set1_ps(p.scale), _mm512_set1_ps(p.offset), _mm512_set1_epi32(p.zero_point));
            let values = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(iota, z)), s), m);
            for c in cs.chunks_exact(8) {
                // SAFETY: `c` holds 8 bytes; the load reads exactly those.
                let t = _mm512_cvtepu8_epi64(unsafe { _mm_loadl_epi64(c.as_ptr().cast()) });
                // Byte b in a 64-bit lane: b | b << 28 holds the low nibble at the bottom of
                // the low 32-bit half and the high nibble at the bottom of the high half.
                emit(k, _mm512_permutexvar_ps(_mm512_or_si512(t, _mm512_slli_epi64::<28>(t)), values));
                k += 1;
            }
        }
    }

    /// Writes 16-value vectors in order (vector k to `out[16k..16k + 16]`) with non-temporal
    /// stores, which skip reading the old contents of each line and leave it out of the
    /// caches. Such stores need 64-byte-aligned lines, and `out` may start anywhere: each
    /// aligned line is put together from two neighbouring vectors, and the partial lines at
    /// both ends take ordinary masked stores.
    struct Stream<'a> {
        out: &'a mut [f32],
        /// Values before the first aligned line (0..16).
        head: usize,
        /// Lanes `head..head + 16` of two neighbouring vectors.
        shift: __m512i,
        prev: __m512,
        pushed: usize,
    }

    impl<'a> Stream<'a> {
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn new(out: &'a mut [f32]) -> Self {
            // f32 addresses are multiples of 4, so the next 64-byte boundary is 0 to 15
            // values away (computed from the address: `align_offset` may decline to answer).
            let head = (64 - out.as_ptr() as usize % 64) % 64 / 4;
            let h = head as i32;
            let shift = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(h));
            Self { out, head, shift, prev: _mm512_setzero_ps(), pushed: 0 }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        fn push(&mut self, v: __m512) {
            let k = self.pushed;
            if k == 0 {
                let o = &mut self.out[..16];
                // SAFETY: `o` holds 16 f32; the mask writes only its first `head`.
                unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr(), ((1u32 << self.head) - 1) as u16, v) };
            } else {
                let at = self.head + 16 * (k - 1);
                let o = &mut self.out[at..at + 16];
                debug_assert!(o.as_ptr().cast::<u8>().align_offset(64) == 0);
                // SAFETY: `o` holds 16 f32 and starts on a 64-byte boundary (`head` values
                // past one, then whole lines), as the non-temporal store requires.
                unsafe { _mm512_stream_ps(o.as_mut_ptr(), _mm512_permutex2var_ps(self.prev, self.shift, v)) };
            }
            self.prev = v;
            self.pushed = k + 1;
        }

        /// Writes the last vector's values after the last aligned line and orders the
        /// non-temporal stores before any later store (they are weakly ordered).
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn finish(self) {
            if let Some(k) = self.pushed.checked_sub(1) {
                let o = &mut self.out[16 * k..16 * k + 16];
                // SAFETY: `o` holds 16 f32; the mask writes only lanes `head..16`.
                unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr(), !((1u32 << self.head) - 1) as u16, self.prev) };
            }
            _mm_sfence();
        }
    }

    /// 16 x 16 transpose of `r` (`out[k]` holds element `k` of every input, in input order).
    #[target_feature(enable = "avx512f")]
    fn transpose16x16(r: [__m512; 16]) -> [__m512; 16] {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // u[4i + j], 128-bit lane L: element 4L + j of inputs 4i..4i + 4.
        let mut u = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            u[4 * i] = _mm512_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
            u[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * i], t[4 * i + 2]);
            u[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
            u[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * i + 1], t[4 * i + 3]);
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for j in 0..4 {
            let x0 = _mm512_shuffle_f32x4::<0x44>(u[j], u[4 + j]);
            let y0 = _mm512_shuffle_f32x4::<0xEE>(u[j], u[4 + j]);
            let x1 = _mm512_shuffle_f32x4::<0x44>(u[8 + j], u[12 + j]);
            let y1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + j], u[12 + j]);
            out[j] = _mm512_shuffle_f32x4::<0x88>(x0, x1);
            out[4 + j] = _mm512_shuffle_f32x4::<0xDD>(x0, x1);
            out[8 + j] = _mm512_shuffle_f32x4::<0x88>(y0, y1);
            out[12 + j] = _mm512_shuffle_f32x4::<0xDD>(y0, y1);
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose16(_t: Avx512, src: &[f32], len: usize, dst: &mut [f32]) {
        assert!(src.len() >= 16 * len && dst.len() >= 16 * len);
        let mut k0 = 0;
        while k0 < len {
            let w = (len - k0).min(16);
            let mask = ((1u32 << w) - 1) as u16;
            let mut r = [_mm512_setzero_ps(); 16];
            for (g, v) in r.iter_mut().enumerate() {
                let at = src.as_ptr().wrapping_add(g * len + k0);
                // Two-level software prefetch, as in `min_max` (hints only: they may point
                // past the end but never dereference).
                _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_L2).cast());
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_L1).cast());
                // SAFETY: lanes k0..k0 + w of input g lie inside `src` (asserted above).
                *v = unsafe { _mm512_maskz_loadu_ps(mask, at) };
            }
            for (k, v) in transpose16x16(r).iter().take(w).enumerate() {
                // SAFETY: row k0 + k < len of `dst` (asserted above).
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add((k0 + k) * 16), *v) };
            }
            k0 += 16;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn pack4(_t: Avx512, codes: &[u8], out: &mut [u8]) -> usize {
        let full = (codes.len() / 64).min(out.len() / 32) * 64;
        // Byte pairs (c0, c1) become c0 + 16·c1.
        let weights = _mm512_set1_epi16(0x1001);
        for at in (0..full).step_by(64) {
            let c = &codes[at..at + 64];
            let o = &mut out[at / 2..at / 2 + 32];
            // SAFETY: `c` holds 64 bytes and `o` 32; unaligned load and store.
            unsafe {
                let v = _mm512_maddubs_epi16(_mm512_loadu_si512(c.as_ptr().cast()), weights);
                _mm256_storeu_si256(o.as_mut_ptr().cast(), _mm512_cvtepi16_epi8(v));
            }
        }
        full
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn unpack4(_t: Avx512, bytes: &[u8], out: &mut [u8]) -> usize {
        let full = (out.len() / 64).min(bytes.len() / 32) * 64;
        let (low, high) = (_mm512_set1_epi16(0x000F), _mm512_set1_epi16(0x0F00));
        for at in (0..full).step_by(64) {
            let b = &bytes[at / 2..at / 2 + 32];
            let o = &mut out[at..at + 64];
            // SAFETY: `b` holds 32 bytes and `o` 64; unaligned load and store.
            unsafe {
                // Each byte widened to 16 bits: low nibble in the low byte, high nibble moved
                // to the high byte gives the two codes in order.
                let t = _mm512_cvtepu8_epi16(_mm256_loadu_si256(b.as_ptr().cast()));
                let v = _mm512_or_si512(_mm512_and_si512(t, low), _mm512_and_si512(_mm512_slli_epi16::<4>(t), high));
                _mm512_storeu_si512(o.as_mut_ptr().cast(), v);
            }
        }
        full
    }
}

/// Appends each run's minimum and maximum (as `range::min_max` computes them) to `out`;
/// `false` as soon as a run is empty or holds a non-finite value.
/// (The tests' window on the min-max step of [`fused_runs`].)
#[cfg(test)]
pub(crate) fn min_max_runs(t: Avx512, xs: &[f32], runs: impl Iterator<Item = Range<usize>>, out: &mut Vec<(f32, f32)>) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `t` proves AVX-512F and BW, the features the kernel enables.
        unsafe { x86::min_max_runs(t, xs, runs, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (t, xs, runs, out);
        false
    }
}

/// One pass over an item's runs in blocks of 16: each run's range, its parameters
/// (`SliceParams::for_spec` with `ParamDtype::Native`, handed to `push` in run order) and
/// its half-even codes into `codes` (first code = element `base`, laid out as `layout`
/// says), while the block is in cache. `false` (with some runs done) when a run is empty or
/// holds a non-finite value.
pub(crate) fn fused_runs(
    t: Avx512,
    xs: &[f32],
    runs: impl Iterator<Item = Range<usize>>,
    g: &Grid,
    layout: Codes,
    codes: &mut [u8],
    base: usize,
    push: impl FnMut(SliceParams<f32>),
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `t` proves AVX-512F and BW, the features the kernel enables.
        unsafe { x86::fused_runs(t, xs, runs, g, layout, codes, base, push) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (t, xs, runs, g, layout, codes, base, push);
        false
    }
}

/// [`fused_runs`] for the runs `k·len..(k + 1)·len` with `k` in `runs` (contiguous runs of
/// one length; the first code is element `runs.start·len`), with a faster kernel for 16
/// runs at a time when `len` is 16, 32, 64 or 128.
pub(crate) fn fused_equal(
    t: Avx512,
    xs: &[f32],
    runs: Range<usize>,
    len: usize,
    g: &Grid,
    layout: Codes,
    codes: &mut [u8],
    push: impl FnMut(SliceParams<f32>),
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `t` proves AVX-512F and BW, the features the kernel enables.
        unsafe { x86::fused_equal(t, xs, runs, len, g, layout, codes, push) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (t, xs, runs, len, g, layout, codes, push);
        false
    }
}

/// `scale·(u − zero_point) + offset` for the codes of each run (`kernel::dequantize_run`);
/// the ranges index `out` and the codes, laid out as `layout` says (for [`Codes::Nibbles`]
/// every range starts on an even element and has an even length).
pub(crate) fn dequantize_runs(
    t: Avx512,
    codes: &[u8],
    layout: Codes,
    runs: impl Iterator<Item = (Range<usize>, SliceParams<f32>)>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `t` proves AVX-512F and BW, the features the kernel enables.
    unsafe {
        x86::dequantize_runs(t, codes, layout, runs, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (t, codes, layout, runs, out);
    }
}

/// [`dequantize_runs`] for contiguous runs of `len` codes laid out as `layout` says, `len` a
/// multiple of 16: run k covers `out[k·len..(k + 1)·len]` and the codes from element
/// `k·len`, with the k-th of `params` (a partial last run of `out` is left alone). With
/// `stream`, `out` is written by non-temporal stores (the same values).
pub(crate) fn dequantize_equal_runs(
    t: Avx512,
    codes: &[u8],
    layout: Codes,
    len: usize,
    params: impl Iterator<Item = SliceParams<f32>>,
    out: &mut [f32],
    stream: bool,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `t` proves AVX-512F and BW, the features the kernel enables.
    unsafe {
        x86::dequantize_equal_runs(t, codes, layout, len, params, out, stream)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (t, codes, layout, len, params, out, stream);
    }
}

/// `dst[16k + g] = src[g·len + k]` for `g < 16`, `k < len`: sixteen runs of `len` values
/// laid out column-wise (`src` holds at least `16·len` values, `dst` room for as many).
pub(crate) fn transpose16(t: Avx512, src: &[f32], len: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `t` proves AVX-512F and BW, the features the kernel enables.
    unsafe {
        x86::transpose16(t, src, len, dst)
    }
    #[cfg(not(target_arch = "x86_64"))]
    for k in 0..len {
        for g in 0..16 {
            dst[16 * k + g] = src[g * len + k];
        }
    }
}

/// Packs 4-bit codes (`pack::pack_into` at 4 bits).
pub(crate) fn pack4(t: Avx512, codes: &[u8], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `t` proves AVX-512F and BW, the features the kernel enables.
        let done = unsafe { x86::pack4(t, codes, out) };
        crate::pack::pack_into(&codes[done..], 4, &mut out[done / 2..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    crate::pack::pack_into(codes, 4, out);
}

/// Unpacks `out.len()` 4-bit codes (`pack::unpack_from` at 4 bits).
pub(crate) fn unpack4(t: Avx512, bytes: &[u8], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `t` proves AVX-512F and BW, the features the kernel enables.
        let done = unsafe { x86::unpack4(t, bytes, out) };
        crate::pack::unpack_from(&bytes[done / 2..], 4, &mut out[done..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    crate::pack::unpack_from(bytes, 4, out);
}

#[cfg(test)]
mod tests {
    //! Every AVX-512 kernel against its portable counterpart, bit for bit (on CPUs without
    //! AVX-512 the tests have nothing to compare and pass trivially).
    use super::*;
    use crate::kernel::{self, Kernel};
    use crate::pack::{pack_into, packed_len, unpack_from};
    use crate::range;
    use crate::spec::{ParamDtype, Rounding, ScaleMode, UniformSpec};
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
}
