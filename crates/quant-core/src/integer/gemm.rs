//! The int8 product `acc[r, o] = Σ_k x[r, k] w[o, k]` (int32, wrapping).
//!
//! Operands are widened to i16 and padded to a multiple of 32 along `k` once (the weights at
//! layer construction), then a 2 × 4 register-blocked kernel sums pairs of i16 products into
//! i32 lanes: the shape x86's `pmaddwd` computes. The kernel is compiled three times (baseline,
//! AVX2 and AVX-512BW) and picked at run time; every version computes the same integers as
//! [`gemm_i8_reference`].

use super::FixedMultiplier;
use crate::cpu::{Avx2, Avx512Dq, Avx512Vnni};

/// Elements of `k` per kernel step.
const STEP: usize = 32;

/// Weights widened to i16, `out × k_pad`, rows zero-padded to a multiple of [`STEP`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PackedWeights {
    data: Vec<i16>,
    k_pad: usize,
}

impl PackedWeights {
    pub(crate) fn new(w: &[i8], out: usize, k: usize) -> Self {
        let k_pad = k.div_ceil(STEP) * STEP;
        let mut data = vec![0i16; out * k_pad];
        for (dst, src) in data.chunks_exact_mut(k_pad).zip(w.chunks_exact(k)) {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = i16::from(s);
            }
        }
        Self { data, k_pad }
    }
}

/// Checks the operand lengths of the public product functions.
fn check_lengths(x: &[i8], w: &[i8], batch: usize, k: usize, out: usize, acc: &[i32]) -> crate::Result<()> {
    let want = |a: usize, b: usize| a.checked_mul(b);
    if want(batch, k) != Some(x.len()) || want(out, k) != Some(w.len()) || want(batch, out) != Some(acc.len()) {
        return Err(crate::QuantError::ShapeMismatch { expected: vec![batch, k, out], got: vec![x.len(), w.len(), acc.len()] });
    }
    Ok(())
}

/// The plain triple loop: the reference every fast path is tested against.
/// `x` is `batch × k`, `w` is `out × k` (both row-major); `acc` is `batch × out`.
///
/// # Errors
/// [`QuantError::ShapeMismatch`](crate::QuantError::ShapeMismatch) when a slice's length does
/// not match the dimensions.
pub fn gemm_i8_reference(x: &[i8], w: &[i8], batch: usize, k: usize, out: usize, acc: &mut [i32]) -> crate::Result<()> {
    check_lengths(x, w, batch, k, out, acc)?;
    for r in 0..batch {
        for o in 0..out {
            let mut s = 0i32;
            for j in 0..k {
                s = s.wrapping_add(i32::from(x[r * k + j]) * i32::from(w[o * k + j]));
            }
            acc[r * out + o] = s;
        }
    }
    Ok(())
}

/// Which compiled version of the product kernel to run.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChoice {
    /// The fastest the CPU supports.
    Best,
    /// The portable kernel compiled for AVX2 (portable when the CPU lacks AVX2).
    Avx2,
    /// The portable kernel for baseline x86-64 or any other architecture.
    Portable,
}

pub(crate) fn gemm(x: &[i8], w: &PackedWeights, batch: usize, k: usize, out: usize, acc: &mut [i32]) {
    gemm_with(KernelChoice::Best, x, w, batch, k, out, acc);
}

/// The int8 product with a chosen kernel (for tests that compare every version with
/// [`gemm_i8_reference`]): `x` is `batch × k`, `w` is `out × k`, `acc` is `batch × out`.
#[doc(hidden)]
///
/// # Errors
/// As [`gemm_i8_reference`].
pub fn gemm_i8_with(choice: KernelChoice, x: &[i8], w: &[i8], batch: usize, k: usize, out: usize, acc: &mut [i32]) -> crate::Result<()> {
    check_lengths(x, w, batch, k, out, acc)?;
    if k == 0 {
        acc.fill(0);
        return Ok(());
    }
    gemm_with(choice, x, &PackedWeights::new(w, out, k), batch, k, out, acc);
    Ok(())
}

fn gemm_with(choice: KernelChoice, x: &[i8], w: &PackedWeights, batch: usize, k: usize, out: usize, acc: &mut [i32]) {
    let k_pad = w.k_pad;
    let mut x16 = vec![0i16; batch * k_pad];
    for (dst, src) in x16.chunks_exact_mut(k_pad).zip(x.chunks_exact(k.max(1))) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = i16::from(s);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if choice == KernelChoice::Best
            && let Some(t) = Avx512Vnni::new()
        {
            // SAFETY: `t` proves AVX-512F, BW and VNNI, the features the kernel enables.
            #[allow(unsafe_code)]
            unsafe {
                return kernel_avx512(t, &x16, &w.data, batch, k_pad, out, acc);
            }
        }
        if choice != KernelChoice::Portable
            && let Some(t) = Avx2::new()
        {
            // SAFETY: `t` proves AVX2, the feature the kernel enables.
            #[allow(unsafe_code)]
            unsafe {
                return kernel_avx2(t, &x16, &w.data, batch, k_pad, out, acc);
            }
        }
    }
    let _ = choice;
    kernel(&x16, &w.data, batch, k_pad, out, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw,avx512f,avx512vnni")]
#[allow(clippy::too_many_arguments)]
fn kernel_avx512(_t: Avx512Vnni, x: &[i16], w: &[i16], batch: usize, k_pad: usize, out: usize, acc: &mut [i32]) {
    use core::arch::x86_64::{__m512i, _mm512_dpwssd_epi32, _mm512_loadu_si512, _mm512_reduce_add_epi32, _mm512_setzero_si512};
    /// 32 i16 values as one vector.
    #[inline(always)]
    fn load(v: &[i16]) -> __m512i {
        debug_assert_eq!(v.len(), 32);
        // SAFETY: `v` holds exactly 32 i16 (64 bytes; callers pass `chunks_exact(32)` items),
        // and the unaligned load reads exactly those bytes; AVX-512F is enabled for this
        // function's caller.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_loadu_si512(v.as_ptr().cast())
        }
    }
    if !k_pad.is_multiple_of(32) {
        return kernel(x, w, batch, k_pad, out, acc);
    }
    // 4 × 4 blocks: 16 accumulators, 4 rows of x and one row of w in registers at a time.
    blocks::<4, 4>(x, w, batch, k_pad, out, acc, |xr, wr| {
        let mut a = [[_mm512_setzero_si512(); 4]; 4];
        for c in (0..k_pad).step_by(32) {
            let xs: [__m512i; 4] = core::array::from_fn(|i| load(&xr[i][c..c + 32]));
            for (j, wj) in wr.iter().enumerate() {
                let wv = load(&wj[c..c + 32]);
                for i in 0..4 {
                    a[i][j] = _mm512_dpwssd_epi32(a[i][j], xs[i], wv);
                }
            }
        }
        a.map(|row| row.map(|v| _mm512_reduce_add_epi32(v)))
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn kernel_avx2(_t: Avx2, x: &[i16], w: &[i16], batch: usize, k_pad: usize, out: usize, acc: &mut [i32]) {
    kernel(x, w, batch, k_pad, out, acc);
}

/// Rows of `x` and of `w` per register block.
const MR: usize = 2;
const NR: usize = 4;

#[inline(always)]
fn kernel(x: &[i16], w: &[i16], batch: usize, k_pad: usize, out: usize, acc: &mut [i32]) {
    blocks::<MR, NR>(x, w, batch, k_pad, out, acc, |xr, wr| micro(xr, wr, k_pad));
}

/// Runs `block` on every `R × C` block of rows of `x` and `w` (each `k_pad` long) and stores
/// its results. Missing rows and columns of an edge block repeat the last one; their results
/// are not stored.
#[inline(always)]
fn blocks<const R: usize, const C: usize>(
    x: &[i16],
    w: &[i16],
    batch: usize,
    k_pad: usize,
    out: usize,
    acc: &mut [i32],
    block: impl Fn([&[i16]; R], [&[i16]; C]) -> [[i32; C]; R],
) {
    let mut r = 0;
    while r < batch {
        let rows = R.min(batch - r);
        let mut o = 0;
        while o < out {
            let cols = C.min(out - o);
            let xr: [&[i16]; R] = core::array::from_fn(|i| &x[(r + i.min(rows - 1)) * k_pad..][..k_pad]);
            let wr: [&[i16]; C] = core::array::from_fn(|j| &w[(o + j.min(cols - 1)) * k_pad..][..k_pad]);
            let result = block(xr, wr);
            for (i, row) in result.iter().enumerate().take(rows) {
                for (j, &v) in row.iter().enumerate().take(cols) {
                    acc[(r + i) * out + o + j] = v;
                }
            }
            o += C;
        }
        r += R;
    }
}

/// `Σ a_j b_j` as one integer reduction: the form the loop vectoriser turns into `pmaddwd`
/// (and, with VNNI, `vpdpwssd`) accumulations.
#[inline(always)]
fn dot(a: &[i16], b: &[i16]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).fold(0i32, i32::wrapping_add)
}

/// One `MR × NR` (2 × 4) block of dot products over `k_pad`.
#[inline(always)]
fn micro(x: [&[i16]; MR], w: [&[i16]; NR], k_pad: usize) -> [[i32; NR]; MR] {
    core::array::from_fn(|i| core::array::from_fn(|j| dot(&x[i][..k_pad], &w[j][..k_pad])))
}

/// `out[o] = clamp(zy + round(acc[o] · M[o]), lo, 127)` for one row, with the fixed-point
/// multipliers (compiled for AVX-512 where available, so the 64-bit products vectorise).
pub(crate) fn requantize(acc: &[i32], out: &mut [i8], m: &[FixedMultiplier], zy: i32, lo: i32) {
    #[cfg(target_arch = "x86_64")]
    {
        // The kernel enables VL as well: the token checks all three (checking F and DQ alone
        // reached it on a CPU without VL, which is undefined behaviour).
        if let Some(t) = Avx512Dq::new() {
            // SAFETY: `t` proves AVX-512F, DQ and VL, the features the kernel enables.
            #[allow(unsafe_code)]
            unsafe {
                return requantize_avx512(t, acc, out, m, zy, lo);
            }
        }
    }
    requantize_body(acc, out, m, zy, lo);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn requantize_avx512(_t: Avx512Dq, acc: &[i32], out: &mut [i8], m: &[FixedMultiplier], zy: i32, lo: i32) {
    requantize_body(acc, out, m, zy, lo);
}

#[inline(always)]
fn requantize_body(acc: &[i32], out: &mut [i8], m: &[FixedMultiplier], zy: i32, lo: i32) {
    if m.iter().all(|m| m.shift() <= 0) {
        // Multipliers below 1 (the usual case): the same arithmetic as `apply`, branch-free so
        // that it vectorises. M0 > 0, so the high multiply cannot overflow.
        for ((o, &a), m) in out.iter_mut().zip(acc).zip(m) {
            let ab = i64::from(a) * i64::from(m.m0());
            let v = ab + if ab >= 0 { 1i64 << 30 } else { 1 - (1i64 << 30) };
            // Division by 2^31 truncating toward zero.
            let high = ((v + ((v >> 63) & ((1i64 << 31) - 1))) >> 31) as i32;
            let e = (-m.shift()).min(31) as u32;
            let mask = ((1i64 << e) - 1) as i32;
            let rem = high & mask;
            let threshold = (mask >> 1) + i32::from(high < 0);
            let scaled = (high >> e) + i32::from(rem > threshold);
            *o = zy.saturating_add(scaled).clamp(lo, 127) as i8;
        }
        return;
    }
    for ((o, &a), m) in out.iter_mut().zip(acc).zip(m) {
        *o = zy.saturating_add(m.apply_inline(a)).clamp(lo, 127) as i8;
    }
}
