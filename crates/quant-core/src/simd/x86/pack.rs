//! 4-bit packing and unpacking.

use crate::simd::Avx512;
use core::arch::x86_64::*;

#[target_feature(enable = "avx512f,avx512bw")]
pub(in crate::simd) fn pack4(_t: Avx512, codes: &[u8], out: &mut [u8]) -> usize {
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
pub(in crate::simd) fn unpack4(_t: Avx512, bytes: &[u8], out: &mut [u8]) -> usize {
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
