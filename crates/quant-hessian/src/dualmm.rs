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

quant_core::cpu_token! {
    /// AVX-512F, the only feature the dual product kernels enable; detected here and
    /// nowhere else in this crate.
    pub(crate) struct Avx512F = ["avx512f"];
}

/// The left operand: a dual matrix or a constant one, as a base pointer with strides in
/// units of `T` (a dual element's tangent follows its value).
#[derive(Clone, Copy)]
pub(crate) struct Left<T> {
    ptr: *const T,
    rows: usize,
    depth: usize,
    row_stride: isize,
    col_stride: isize,
    dual: bool,
}

impl<T> Left<T> {
    fn dual(a: &ArrayView2<'_, Dual<T>>) -> Self {
        let s = a.strides();
        Self { ptr: a.as_ptr().cast(), rows: a.nrows(), depth: a.ncols(), row_stride: 2 * s[0], col_stride: 2 * s[1], dual: true }
    }

    fn constant(c: &ArrayView2<'_, T>) -> Self {
        let s = c.strides();
        Self { ptr: c.as_ptr(), rows: c.nrows(), depth: c.ncols(), row_stride: s[0], col_stride: s[1], dual: false }
    }
}

/// The base types with a kernel: `f32` (16 lanes) and `f64` (8 lanes).
pub(crate) trait Lanes: Copy + Default + 'static {
    /// Dual columns per panel (one vector of values, one of tangents).
    const NR: usize;

    /// `rows` (1 to [`MR`]) rows of `C` times one panel; see `x86::kernel_*`.
    ///
    /// # Safety
    /// As the kernels (AVX-512F is proven by `t`): `a` addressing `rows × kc` elements, `panel`
    /// holding `kc · 2·NR` values, `c` addressing `rows` rows of `cols` duals `ldc` apart.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(t: Avx512F, rows: usize, a: Left<Self>, kc: usize, panel: &[Self], c: *mut Self, ldc: usize, cols: usize, load: bool);
}

/// `out = a · b` (or `+=` when `accumulate`) for a dual `a`. `false` (nothing written) when
/// the kernel does not apply: no AVX-512, or `out` not in standard (row-major, contiguous)
/// layout.
pub(crate) fn matmul<T: Lanes>(
    a: ArrayView2<'_, Dual<T>>,
    b: ArrayView2<'_, Dual<T>>,
    accumulate: bool,
    out: ArrayViewMut2<'_, Dual<T>>,
) -> bool {
    product(Left::dual(&a), b, accumulate, out)
}

/// [`matmul`] for a constant left operand `c`.
pub(crate) fn matmul_constant<T: Lanes>(
    c: ArrayView2<'_, T>,
    b: ArrayView2<'_, Dual<T>>,
    accumulate: bool,
    out: ArrayViewMut2<'_, Dual<T>>,
) -> bool {
    product(Left::constant(&c), b, accumulate, out)
}

fn product<T: Lanes>(a: Left<T>, b: ArrayView2<'_, Dual<T>>, accumulate: bool, mut out: ArrayViewMut2<'_, Dual<T>>) -> bool {
    let Some(t) = Avx512F::new() else { return false };
    if !out.is_standard_layout() || a.depth != b.nrows() || out.dim() != (a.rows, b.ncols()) {
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
    let nr = T::NR;
    // One panel at a time (`KC × 2·NR` values, 32 KiB): small enough to stay off the
    // allocator's fresh-pages path and in L1.
    let mut panel = vec![T::default(); KC * 2 * nr];
    let c = out.as_mut_ptr().cast::<T>();
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let load = accumulate || k0 > 0;
        for j0 in (0..n).step_by(nr) {
            let cols = (n - j0).min(nr);
            pack(&b, k0, kc, j0, nr, &mut panel);
            let panel = &panel[..kc * 2 * nr];
            for i in (0..m).step_by(MR) {
                // SAFETY: rows `i..i + rows` of `a` and depths `k0..k0 + kc` lie inside `a`
                // (checked shapes); `c` points at `out`'s contiguous `m × n` duals (standard
                // layout checked above), and the kernel reads and writes `rows` rows of
                // `cols` duals starting at column `j0`, all inside it. The kernels need
                // AVX-512F, which the token `t` proves.
                unsafe {
                    let a_at = Left { ptr: a.ptr.offset(i as isize * a.row_stride + k0 as isize * a.col_stride), ..a };
                    T::kernel(t, MR.min(m - i), a_at, kc, panel, c.add(2 * (i * n + j0)), 2 * n, cols, load);
                }
            }
        }
    }
    true
}

/// Packs rows `k0..k0 + kc`, columns `j0..j0 + nr` of `b`: depth `kk` holds the `nr`
/// values, then the `nr` tangents (zeros past the last column).
fn pack<T: Lanes>(b: &ArrayView2<'_, Dual<T>>, k0: usize, kc: usize, j0: usize, nr: usize, panel: &mut [T]) {
    let n = b.ncols();
    for (kk, row) in panel.chunks_exact_mut(2 * nr).take(kc).enumerate() {
        let (values, tangents) = row.split_at_mut(nr);
        for j in 0..nr {
            let d = if j0 + j < n { b[[k0 + kk, j0 + j]] } else { Dual::default() };
            values[j] = d.value;
            tangents[j] = d.tangent;
        }
    }
}

/// One kernel per base type: `$t` values in vectors `$v` of `$nr` lanes.
macro_rules! dual_kernel {
    ($t:ty, $nr:expr, $kernel:ident, $v:ty, $mask:ty, $set1:ident, $zero:ident, $load:ident, $maskz_load:ident, $mask_store:ident, $fmadd:ident, $permute2:ident, $interleave_lo:expr, $interleave_hi:expr, $even:expr, $odd:expr) => {
        impl Lanes for $t {
            const NR: usize = $nr;

            unsafe fn kernel(
                t: Avx512F,
                rows: usize,
                a: Left<Self>,
                kc: usize,
                panel: &[Self],
                c: *mut Self,
                ldc: usize,
                cols: usize,
                load: bool,
            ) {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the caller's contract is the kernels'.
                unsafe {
                    match rows {
                        6 => Kernels::$kernel::<6>(t, a, kc, panel, c, ldc, cols, load),
                        5 => Kernels::$kernel::<5>(t, a, kc, panel, c, ldc, cols, load),
                        4 => Kernels::$kernel::<4>(t, a, kc, panel, c, ldc, cols, load),
                        3 => Kernels::$kernel::<3>(t, a, kc, panel, c, ldc, cols, load),
                        2 => Kernels::$kernel::<2>(t, a, kc, panel, c, ldc, cols, load),
                        _ => Kernels::$kernel::<1>(t, a, kc, panel, c, ldc, cols, load),
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (t, rows, a, kc, panel, c, ldc, cols, load);
            }
        }

        #[cfg(target_arch = "x86_64")]
        impl Kernels {
            /// `R` rows of `C` (row stride `ldc` values, dual layout) times one panel:
            /// `C[r, 0..cols] (+)= A[r, :] · panel`.
            ///
            /// # Safety
            /// AVX-512F must be available; `a.ptr` must address `R` rows and `kc` depths of
            /// `A` with its strides; `panel` holds `kc · 2·NR` values; `c` addresses `R` rows
            /// of at least `cols` duals (`2·cols` values) each, `ldc` values apart.
            #[target_feature(enable = "avx512f")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn $kernel<const R: usize>(
                _t: Avx512F,
                a: Left<$t>,
                kc: usize,
                panel: &[$t],
                c: *mut $t,
                ldc: usize,
                cols: usize,
                load: bool,
            ) {
                use core::arch::x86_64::*;
                const NR: usize = $nr;
                // Lanes of the two dual-layout vectors (NR/2 duals each) that hold columns.
                let width = 2 * cols;
                let lanes = |w: usize| -> $mask { if w >= NR { <$mask>::MAX } else { ((1u32 << w) - 1) as $mask } };
                let (m0, m1) = (lanes(width), lanes(width.saturating_sub(NR)));
                // Interleave (values, tangents) into the dual layout, and back.
                let (lo_idx, hi_idx, even, odd) = ($interleave_lo, $interleave_hi, $even, $odd);
                // acc[r] = (values, tangents) of row r's NR columns.
                let mut acc: [[$v; 2]; R] = [[$zero(); 2]; R];
                if load {
                    for (r, acc) in acc.iter_mut().enumerate() {
                        // SAFETY (caller): row `r` of `c` holds `width` valid values; the
                        // masked loads read only those.
                        let (d0, d1) = unsafe {
                            let row = c.add(r * ldc);
                            ($maskz_load(m0, row), $maskz_load(m1, row.add(NR)))
                        };
                        acc[0] = $permute2(d0, even, d1);
                        acc[1] = $permute2(d0, odd, d1);
                    }
                }
                for kk in 0..kc {
                    let p = &panel[kk * 2 * NR..(kk + 1) * 2 * NR];
                    // SAFETY: `p` holds 2·NR values; unaligned loads of NR each.
                    let (bv, bt) = unsafe { ($load(p.as_ptr()), $load(p.as_ptr().add(NR))) };
                    for (r, acc) in acc.iter_mut().enumerate() {
                        // SAFETY (caller): element (r, kk) of `A` is inside it.
                        let e = unsafe { a.ptr.offset(r as isize * a.row_stride + kk as isize * a.col_stride) };
                        let av = $set1(unsafe { *e });
                        acc[0] = $fmadd(av, bv, acc[0]);
                        acc[1] = $fmadd(av, bt, acc[1]);
                        if a.dual {
                            let at = $set1(unsafe { *e.add(1) });
                            acc[1] = $fmadd(at, bv, acc[1]);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let (d0, d1) = ($permute2(acc[0], lo_idx, acc[1]), $permute2(acc[0], hi_idx, acc[1]));
                    // SAFETY (caller): as for the loads.
                    unsafe {
                        let row = c.add(r * ldc);
                        $mask_store(row, m0, d0);
                        $mask_store(row.add(NR), m1, d1);
                    }
                }
            }
        }
    };
}

/// The kernels, one associated function per base type.
#[cfg(target_arch = "x86_64")]
struct Kernels;

dual_kernel!(
    f32,
    16,
    kernel_f32,
    __m512,
    __mmask16,
    _mm512_set1_ps,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_maskz_loadu_ps,
    _mm512_mask_storeu_ps,
    _mm512_fmadd_ps,
    _mm512_permutex2var_ps,
    _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
    _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
    _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)
);
dual_kernel!(
    f64,
    8,
    kernel_f64,
    __m512d,
    __mmask8,
    _mm512_set1_pd,
    _mm512_setzero_pd,
    _mm512_loadu_pd,
    _mm512_maskz_loadu_pd,
    _mm512_mask_storeu_pd,
    _mm512_fmadd_pd,
    _mm512_permutex2var_pd,
    _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11),
    _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15),
    _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14),
    _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15)
);

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, s};
    use quant_core::Float;

    fn dual_matrix<T: Float>(r: usize, c: usize, seed: usize) -> Array2<Dual<T>> {
        Array2::from_shape_fn((r, c), |(i, j)| {
            let k = (i * 31 + j * 17 + seed * 7) % 23;
            Dual::new(T::cast(f64::from(k as f32 / 7.0 - 1.5)), T::cast(f64::from(((k * 5) % 11) as f32 / 3.0 - 1.0)))
        })
    }

    /// The product element by element in f64 dual arithmetic: `(value, tangent)` and the
    /// sums of the absolute terms of each (for the rounding bound).
    fn reference<T: Float>(a: ArrayView2<'_, Dual<T>>, b: ArrayView2<'_, Dual<T>>) -> Array2<[f64; 4]> {
        Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| {
            (0..a.ncols()).fold([0.0; 4], |[v, t, sv, st], k| {
                let (x, y) = (a[[i, k]], b[[k, j]]);
                let (xv, xt, yv, yt) = (x.value.as_f64(), x.tangent.as_f64(), y.value.as_f64(), y.tangent.as_f64());
                [v + xv * yv, t + xv * yt + xt * yv, sv + (xv * yv).abs(), st + (xv * yt).abs() + (xt * yv).abs()]
            })
        })
    }

    /// Within the worst-case bound of a `depth`-term sum in `T`: `2·depth·ε·Σ|terms|`.
    fn close<T: Float>(got: &Array2<Dual<T>>, want: &Array2<[f64; 4]>, depth: usize) {
        assert_eq!(got.dim(), want.dim());
        let gamma = 2.0 * depth as f64 * T::epsilon().as_f64();
        for (g, &[v, t, sv, st]) in got.iter().zip(want) {
            assert!((g.value.as_f64() - v).abs() <= gamma * sv + 1e-30, "value {g:?} vs {v} (bound {})", gamma * sv);
            assert!((g.tangent.as_f64() - t).abs() <= gamma * st + 1e-30, "tangent {g:?} vs {t} (bound {})", gamma * st);
        }
    }

    fn products_match<T: Lanes + Float>() {
        // Rows not a multiple of 6, columns not a multiple of the panel width, depths across
        // a KC block.
        for &(m, k, n) in &[(1, 1, 1), (5, 3, 7), (6, 16, 16), (9, 130, 17), (13, 257, 40), (3, 128, 33), (7, 600, 9)] {
            let a = dual_matrix::<T>(m, k, 1);
            let b = dual_matrix::<T>(k, n, 2);
            let want = reference(a.view(), b.view());
            let mut out = Array2::from_elem((m, n), Dual::new(T::cast(9.0), T::cast(9.0)));
            assert!(matmul(a.view(), b.view(), false, out.view_mut()));
            close(&out, &want, k);
            // Transposed and strided operands.
            let at = a.t().to_owned();
            let bt = b.t().to_owned();
            let mut out2 = Array2::from_elem((m, n), Dual::default());
            assert!(matmul(at.t(), bt.t(), false, out2.view_mut()));
            close(&out2, &want, k);
            let wide = dual_matrix::<T>(m, 2 * k, 1);
            let sub = wide.slice(s![.., ..;2]);
            let mut out3 = Array2::from_elem((m, n), Dual::default());
            assert!(matmul(sub, b.view(), false, out3.view_mut()));
            close(&out3, &reference(sub, b.view()), k);
            // Accumulation.
            assert!(matmul(a.view(), b.view(), true, out.view_mut()));
            close(&out, &want.mapv(|[v, t, sv, st]| [2.0 * v, 2.0 * t, 2.0 * sv, 2.0 * st]), 2 * k);
            // A constant left operand.
            let cst = Array2::from_shape_fn((m, k), |(i, j)| T::cast(f64::from((i as f32 - j as f32) / 5.0)));
            let mut out4 = Array2::from_elem((m, n), Dual::default());
            assert!(matmul_constant(cst.view(), b.view(), false, out4.view_mut()));
            close(&out4, &reference(cst.mapv(Dual::constant).view(), b.view()), k);
        }
    }

    #[test]
    fn dual_products_match_the_reference_for_every_shape_and_layout() {
        if Avx512F::new().is_some() {
            products_match::<f32>();
            products_match::<f64>();
        }
    }

    #[test]
    fn every_kernel_enables_only_what_its_token_checked() {
        let bad = quant_core::target_feature_violations(&[("dualmm.rs", include_str!("dualmm.rs"))], &[("Avx512F", Avx512F::FEATURES)]);
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn a_non_standard_output_is_left_to_the_fallback() {
        let a = dual_matrix::<f32>(3, 4, 1);
        let b = dual_matrix::<f32>(4, 5, 2);
        let mut out = Array2::from_elem((5, 3), Dual::default());
        assert!(!matmul(a.view(), b.view(), false, out.view_mut().reversed_axes()));
    }
}
