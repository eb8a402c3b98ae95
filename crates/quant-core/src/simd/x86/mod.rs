//! The AVX-512 kernels, by job, and the helpers they share.

mod dequantize;
mod pack;
mod quantize;
mod transpose;

pub(super) use dequantize::{dequantize_equal_runs, dequantize_runs};
pub(super) use pack::{pack4, unpack4};
#[cfg(test)]
pub(super) use quantize::min_max_runs;
pub(super) use quantize::{fused_equal, fused_runs};
pub(super) use transpose::transpose16;

use core::arch::x86_64::*;

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
