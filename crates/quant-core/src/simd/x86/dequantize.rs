//! The dequantize kernels: codes (bytes or packed nibbles) back to f32.

use crate::params::SliceParams;
use crate::simd::{Avx512, Codes};
use core::arch::x86_64::*;
use core::ops::Range;

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

#[target_feature(enable = "avx512f,avx512bw")]
pub(in crate::simd) fn dequantize_runs(
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
pub(in crate::simd) fn dequantize_equal_runs(
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
