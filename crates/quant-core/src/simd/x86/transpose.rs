//! Sixteen runs laid out column-wise, for the table fits.

use crate::simd::Avx512;
use core::arch::x86_64::*;

use super::{PREFETCH_L1, PREFETCH_L2};

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
pub(in crate::simd) fn transpose16(_t: Avx512, src: &[f32], len: usize, dst: &mut [f32]) {
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
