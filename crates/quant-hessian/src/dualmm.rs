//! Products of `Dual<f32>` matrices with an AVX-512 kernel, chosen at run time.
//!
//! `(A + Ȧε)(B + Ḃε) = AB + (AḂ + ȦB)ε` in one pass: B is packed in panels of 16 dual
//! columns, each depth one vector of values and one of tangents; per row of A and depth the
//! kernel does three fused multiply-adds (`a·b` into the values, `a·ḃ` and `ȧ·b` into the
//! tangents; two for a constant A) and interleaves values and tangents back into the dual
//! layout when it stores. The plane products of `real.rs` (three `f32` products by
//! `matrixmultiply`) are the fallback and what the tests compare with.
//!
//! Blocking: the depth is cut into blocks of [`KC`] so that a packed panel (`KC × 32`
//! floats, 16 KiB) stays in L1 while the kernel walks down all rows of `A`, [`MR`] at a time.
#![allow(unsafe_code)]

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::dual::Dual;

/// Depth of one block of the product.
const KC: usize = 256;
/// Rows of `A` per kernel call.
const MR: usize = 6;
/// Dual columns per panel (32 floats: two vectors).
const NR: usize = 16;

/// Whether this CPU runs the kernel.
pub(crate) fn enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The left operand: a dual matrix or a constant one, as a base pointer with strides in
/// `f32` units (a dual element's tangent follows its value).
#[derive(Clone, Copy)]
struct Left {
    ptr: *const f32,
    rows: usize,
    depth: usize,
    row_stride: isize,
    col_stride: isize,
    dual: bool,
}

impl Left {
    fn dual(a: &ArrayView2<'_, Dual<f32>>) -> Self {
        let s = a.strides();
        Self { ptr: a.as_ptr().cast(), rows: a.nrows(), depth: a.ncols(), row_stride: 2 * s[0], col_stride: 2 * s[1], dual: true }
    }

    fn constant(c: &ArrayView2<'_, f32>) -> Self {
        let s = c.strides();
        Self { ptr: c.as_ptr(), rows: c.nrows(), depth: c.ncols(), row_stride: s[0], col_stride: s[1], dual: false }
    }
}

/// `out = a · b` (or `+=` when `accumulate`) for a dual `a`. `false` (nothing written) when
/// the kernel does not apply: no AVX-512, or `out` not in standard (row-major, contiguous)
/// layout. Shapes must agree (callers guarantee it).
pub(crate) fn matmul(
    a: ArrayView2<'_, Dual<f32>>,
    b: ArrayView2<'_, Dual<f32>>,
    accumulate: bool,
    out: ArrayViewMut2<'_, Dual<f32>>,
) -> bool {
    product(Left::dual(&a), b, accumulate, out)
}

/// [`matmul`] for a constant left operand `c`.
pub(crate) fn matmul_constant(
    c: ArrayView2<'_, f32>,
    b: ArrayView2<'_, Dual<f32>>,
    accumulate: bool,
    out: ArrayViewMut2<'_, Dual<f32>>,
) -> bool {
    product(Left::constant(&c), b, accumulate, out)
}

fn product(a: Left, b: ArrayView2<'_, Dual<f32>>, accumulate: bool, mut out: ArrayViewMut2<'_, Dual<f32>>) -> bool {
    if !enabled() || !out.is_standard_layout() || a.depth != b.nrows() || out.dim() != (a.rows, b.ncols()) {
        return false;
    }
    let (m, n) = out.dim();
    if m == 0 || n == 0 {
        return true;
    }
    let k = a.depth;
    if k == 0 {
        if !accumulate {
            out.fill(Dual::default());
        }
        return true;
    }
    let panels = n.div_ceil(NR);
    // One panel at a time (`KC × 2·NR` floats, 32 KiB): small enough to stay off the
    // allocator's fresh-pages path and in L1.
    let mut panel = vec![0f32; KC * 2 * NR];
    let c = out.as_mut_ptr().cast::<f32>();
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let load = accumulate || k0 > 0;
        for p in 0..panels {
            let cols = (n - p * NR).min(NR);
            pack(&b, k0, kc, p * NR, &mut panel);
            let panel = &panel[..kc * 2 * NR];
            for i in (0..m).step_by(MR) {
                let rows = MR.min(m - i);
                // SAFETY: rows `i..i + rows` of `a` and depths `k0..k0 + kc` lie inside `a`
                // (checked shapes); `c` points at `out`'s contiguous `m × n` duals (standard
                // layout checked above), and the kernel reads and writes `rows` rows of
                // `cols` duals starting at column `p·NR`, all inside it. The kernel needs
                // AVX-512F, which `enabled()` confirmed.
                unsafe {
                    let cp = c.add(2 * (i * n + p * NR));
                    let ap = a.ptr.offset(i as isize * a.row_stride + k0 as isize * a.col_stride);
                    let a_at = Left { ptr: ap, ..a };
                    #[cfg(target_arch = "x86_64")]
                    match rows {
                        6 => x86::kernel::<6>(a_at, kc, panel, cp, 2 * n, cols, load),
                        5 => x86::kernel::<5>(a_at, kc, panel, cp, 2 * n, cols, load),
                        4 => x86::kernel::<4>(a_at, kc, panel, cp, 2 * n, cols, load),
                        3 => x86::kernel::<3>(a_at, kc, panel, cp, 2 * n, cols, load),
                        2 => x86::kernel::<2>(a_at, kc, panel, cp, 2 * n, cols, load),
                        _ => x86::kernel::<1>(a_at, kc, panel, cp, 2 * n, cols, load),
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (cp, a_at, cols, load);
                }
            }
        }
    }
    true
}

/// Packs rows `k0..k0 + kc`, columns `j0..j0 + NR` of `b`: depth `kk` holds the 16 values,
/// then the 16 tangents (zeros past the last column).
fn pack(b: &ArrayView2<'_, Dual<f32>>, k0: usize, kc: usize, j0: usize, panel: &mut [f32]) {
    let n = b.ncols();
    for (kk, row) in panel.chunks_exact_mut(2 * NR).take(kc).enumerate() {
        let (values, tangents) = row.split_at_mut(NR);
        for j in 0..NR {
            let d = if j0 + j < n { b[[k0 + kk, j0 + j]] } else { Dual::default() };
            values[j] = d.value;
            tangents[j] = d.tangent;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Left, NR};
    use core::arch::x86_64::*;

    /// `R` rows of `C` (row stride `ldc` floats, dual layout) times one panel:
    /// `C[r, 0..cols] (+)= A[r, :] · panel`.
    ///
    /// # Safety
    /// AVX-512F must be available; `a.ptr` must address `R` rows and `kc` depths of `A` with
    /// its strides; `panel` holds `kc · 32` floats; `c` addresses `R` rows of at least `cols`
    /// duals (`2·cols` floats) each, `ldc` floats apart.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel<const R: usize>(a: Left, kc: usize, panel: &[f32], c: *mut f32, ldc: usize, cols: usize, load: bool) {
        // Lanes of the two dual-layout vectors (8 duals each) that hold real columns.
        let floats = 2 * cols;
        let m0: __mmask16 = if floats >= 16 { 0xFFFF } else { ((1u32 << floats) - 1) as u16 };
        let m1: __mmask16 = if floats >= 32 {
            0xFFFF
        } else if floats > 16 {
            ((1u32 << (floats - 16)) - 1) as u16
        } else {
            0
        };
        // Interleave (values, tangents) into dual layout, and back.
        let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        // acc[r] = (values, tangents) of row r's 16 columns.
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if load {
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY (caller): row `r` of `c` holds `floats` valid floats; the masked
                // loads read only those.
                let (d0, d1) = unsafe {
                    let row = c.add(r * ldc);
                    (_mm512_maskz_loadu_ps(m0, row), _mm512_maskz_loadu_ps(m1, row.add(16)))
                };
                acc[0] = _mm512_permutex2var_ps(d0, even, d1);
                acc[1] = _mm512_permutex2var_ps(d0, odd, d1);
            }
        }
        for kk in 0..kc {
            let p = &panel[kk * 2 * NR..(kk + 1) * 2 * NR];
            // SAFETY: `p` holds 32 floats; unaligned loads of 16 each.
            let (bv, bt) = unsafe { (_mm512_loadu_ps(p.as_ptr()), _mm512_loadu_ps(p.as_ptr().add(16))) };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY (caller): element (r, kk) of `A` is inside it.
                let e = unsafe { a.ptr.offset(r as isize * a.row_stride + kk as isize * a.col_stride) };
                let av = _mm512_set1_ps(unsafe { *e });
                acc[0] = _mm512_fmadd_ps(av, bv, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, bt, acc[1]);
                if a.dual {
                    let at = _mm512_set1_ps(unsafe { *e.add(1) });
                    acc[1] = _mm512_fmadd_ps(at, bv, acc[1]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let (d0, d1) = (_mm512_permutex2var_ps(acc[0], lo_idx, acc[1]), _mm512_permutex2var_ps(acc[0], hi_idx, acc[1]));
            // SAFETY (caller): as for the loads.
            unsafe {
                let row = c.add(r * ldc);
                _mm512_mask_storeu_ps(row, m0, d0);
                _mm512_mask_storeu_ps(row.add(16), m1, d1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, s};

    fn dual_matrix(r: usize, c: usize, seed: usize) -> Array2<Dual<f32>> {
        Array2::from_shape_fn((r, c), |(i, j)| {
            let k = (i * 31 + j * 17 + seed * 7) % 23;
            Dual::new(k as f32 / 7.0 - 1.5, ((k * 5) % 11) as f32 / 3.0 - 1.0)
        })
    }

    /// The product element by element in f64 dual arithmetic.
    fn reference(a: ArrayView2<'_, Dual<f32>>, b: ArrayView2<'_, Dual<f32>>) -> Array2<(f64, f64)> {
        Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| {
            (0..a.ncols()).fold((0.0, 0.0), |(v, t), k| {
                let (x, y) = (a[[i, k]], b[[k, j]]);
                let (xv, xt, yv, yt) = (f64::from(x.value), f64::from(x.tangent), f64::from(y.value), f64::from(y.tangent));
                (v + xv * yv, t + xv * yt + xt * yv)
            })
        })
    }

    fn close(got: &Array2<Dual<f32>>, want: &Array2<(f64, f64)>, depth: usize) {
        assert_eq!(got.dim(), want.dim());
        // Entries are sums of `depth` products of magnitude ≤ 2.3 · 2.4: f32 rounding bound.
        let tol = 1e-6 * depth as f64 * 6.0;
        for (g, &(v, t)) in got.iter().zip(want) {
            assert!((f64::from(g.value) - v).abs() <= tol && (f64::from(g.tangent) - t).abs() <= tol, "{g:?} vs ({v}, {t})");
        }
    }

    #[test]
    fn dual_products_match_the_reference_for_every_shape_and_layout() {
        if !enabled() {
            return;
        }
        // Rows not a multiple of 4, columns not a multiple of 16, depths across a KC block.
        for &(m, k, n) in &[(1, 1, 1), (5, 3, 7), (4, 16, 16), (9, 130, 17), (13, 257, 40), (3, 128, 33)] {
            let a = dual_matrix(m, k, 1);
            let b = dual_matrix(k, n, 2);
            let want = reference(a.view(), b.view());
            let mut out = Array2::from_elem((m, n), Dual::new(9.0, 9.0));
            assert!(matmul(a.view(), b.view(), false, out.view_mut()));
            close(&out, &want, k);
            // Transposed and strided operands.
            let at = a.t().to_owned();
            let bt = b.t().to_owned();
            let mut out2 = Array2::from_elem((m, n), Dual::default());
            assert!(matmul(at.t(), bt.t(), false, out2.view_mut()));
            close(&out2, &want, k);
            let wide = dual_matrix(m, 2 * k, 1);
            let sub = wide.slice(s![.., ..;2]);
            let mut out3 = Array2::from_elem((m, n), Dual::default());
            assert!(matmul(sub, b.view(), false, out3.view_mut()));
            close(&out3, &reference(sub, b.view()), k);
            // Accumulation.
            assert!(matmul(a.view(), b.view(), true, out.view_mut()));
            close(&out, &want.mapv(|(v, t)| (2.0 * v, 2.0 * t)), 2 * k);
            // A constant left operand.
            let cst = Array2::from_shape_fn((m, k), |(i, j)| (i as f32 - j as f32) / 5.0);
            let mut out4 = Array2::from_elem((m, n), Dual::default());
            assert!(matmul_constant(cst.view(), b.view(), false, out4.view_mut()));
            close(&out4, &reference(cst.mapv(Dual::constant).view(), b.view()), k);
        }
    }

    #[test]
    fn a_non_standard_output_is_left_to_the_fallback() {
        let a = dual_matrix(3, 4, 1);
        let b = dual_matrix(4, 5, 2);
        let mut out = Array2::from_elem((5, 3), Dual::default());
        assert!(!matmul(a.view(), b.view(), false, out.view_mut().reversed_axes()));
    }
}
