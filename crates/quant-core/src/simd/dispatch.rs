//! The safe entry points: each takes the CPU token that proves the features its kernel
//! enables, and runs the portable code on other architectures.

use core::ops::Range;

#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Avx512, Codes, Grid};
use crate::params::SliceParams;

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
