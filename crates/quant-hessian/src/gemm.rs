//! The matrix products behind [`Real::matmul_into`](crate::Real::matmul_into), in place on
//! ndarray views, on the calling thread (callers parallelise above it, so a product gives the
//! same bits whatever the thread count).
//!
//! Both types go through faer's packed kernels (run-time dispatch to the CPU's widest
//! vectors): 15–30% faster than ndarray's `general_mat_mul` (matrixmultiply) on the digits
//! MLP's `f64` shapes and 15–25% on BERT's `f32` shapes in isolation (docs/benchmarks.md).
//! `f32` products of fewer than [`F32_MIN_ROWS`] rows (attention within one sentence) stay
//! on matrixmultiply. faer's micro-kernels return with the upper halves of the vector
//! registers dirty, which slowed every later legacy-SSE instruction (GELU's `erff`, the
//! elementwise passes) until cleared: each product here ends with
//! [`quant_core::clear_upper_vector_state`] (without it, MiniLM's forward passes were 1.4–1.5x
//! slower on faer than on matrixmultiply, which is why `f32` had stayed there).
#![allow(unsafe_code)]

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};

use crate::error::{HessianError, Result};
use faer::traits::ComplexField;
use faer::{Accum, MatMut, MatRef, Par};
use ndarray::{ArrayView2, ArrayViewMut2};

/// `f32` products with fewer rows go to matrixmultiply.
pub(crate) const F32_MIN_ROWS: usize = 128;

/// `out = a · b`, or `out += a · b` when `accumulate`, by faer. Shapes must agree (`a: m×k`,
/// `b: k×n`, `out: m×n`); the callers check them, and a mismatch panics here rather than
/// reading out of bounds.
fn gemm_faer<T: ComplexField + Copy + num_traits::Zero + num_traits::One>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    accumulate: bool,
    mut out: ArrayViewMut2<'_, T>,
) {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(k == k2 && out.dim() == (m, n), "matrix product of {m}×{k} and {k2}×{n} into {:?}", out.dim());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out.fill(T::zero());
        }
        return;
    }
    let accum = if accumulate { Accum::Add } else { Accum::Replace };
    let (fa, fb, fo) = faer_views(a, b, &mut out);
    matmul(fo, accum, fa, fb, T::one(), Par::Seq);
    quant_core::clear_upper_vector_state();
}

/// faer views of `a`, `b` and `out`, each of its own shape and strides.
fn faer_views<'v, T>(
    a: ArrayView2<'v, T>,
    b: ArrayView2<'v, T>,
    out: &'v mut ArrayViewMut2<'_, T>,
) -> (MatRef<'v, T>, MatRef<'v, T>, MatMut<'v, T>) {
    let view = |v: &ArrayView2<'v, T>| (v.nrows(), v.ncols(), v.strides()[0], v.strides()[1]);
    let ((ar, ac, a0, a1), (br, bc, b0, b1)) = (view(&a), view(&b));
    let ((or, oc), so) = (out.dim(), [out.strides()[0], out.strides()[1]]);
    // SAFETY: an ndarray view of shape (r, c) and element strides (s0, s1) guarantees that
    // `ptr + i·s0 + j·s1` is a valid, initialised element for every i < r, j < c for the
    // view's lifetime, which outlives the returned views (they borrow `a`, `b` and `out` for
    // 'v); that is faer's contract for `from_raw_parts` (any strides, negative and zero
    // included, for reading). `a` and `b` are shared borrows, so nothing writes to them
    // meanwhile. `out` is a unique borrow, and a mutable ndarray view never has two indices
    // at one address (its constructors refuse overlapping strides), so the writes through
    // the returned `MatMut` do not alias each other, `a` or `b`. Each view keeps its own
    // shape: faer checks that they agree before touching memory.
    unsafe {
        (
            MatRef::from_raw_parts(a.as_ptr(), ar, ac, a0, a1),
            MatRef::from_raw_parts(b.as_ptr(), br, bc, b0, b1),
            MatMut::from_raw_parts_mut(out.as_mut_ptr(), or, oc, so[0], so[1]),
        )
    }
}

/// `out = a · b`, or `out += a · b` when `accumulate`, in `f64` (faer).
pub(crate) fn gemm_f64(a: ArrayView2<'_, f64>, b: ArrayView2<'_, f64>, accumulate: bool, out: ArrayViewMut2<'_, f64>) {
    gemm_faer(a, b, accumulate, out);
}

/// `out = a · b` or `out += a · b` in `f32`: faer from [`F32_MIN_ROWS`] rows, matrixmultiply
/// below.
pub(crate) fn gemm_f32(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>, accumulate: bool, mut out: ArrayViewMut2<'_, f32>) {
    if a.nrows() >= F32_MIN_ROWS {
        gemm_faer(a, b, accumulate, out);
    } else {
        ndarray::linalg::general_mat_mul(1.0, &a, &b, if accumulate { 1.0 } else { 0.0 }, &mut out);
    }
}

/// The Gram matrix `out = xᵀx` (or `out += xᵀx` when `accumulate`) of `x` (`rows × n`) in
/// `f64`, on the calling thread: faer computes the lower triangle only (half the
/// multiply-adds of a full product), which is then copied onto the upper one, so `out` is
/// exactly symmetric. With `accumulate`, only the lower triangle of the `out` given is read.
/// The bits do not depend on the thread count (nothing here runs in parallel).
///
/// # Errors
/// [`HessianError::ShapeMismatch`] unless `out` is `n × n`.
pub fn gram_into(x: ArrayView2<'_, f64>, accumulate: bool, mut out: ArrayViewMut2<'_, f64>) -> Result<()> {
    let n = x.ncols();
    if out.dim() != (n, n) {
        return Err(HessianError::ShapeMismatch { expected: vec![n, n], got: out.shape().to_vec() });
    }
    if n == 0 {
        return Ok(());
    }
    if x.nrows() == 0 {
        if !accumulate {
            out.fill(0.0);
        }
    } else {
        let accum = if accumulate { Accum::Add } else { Accum::Replace };
        let xt = x.t();
        let (fa, fb, fo) = faer_views(xt, x, &mut out);
        triangular::matmul(
            fo,
            BlockStructure::TriangularLower,
            accum,
            fa,
            BlockStructure::Rectangular,
            fb,
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
        quant_core::clear_upper_vector_state();
    }
    for i in 0..n {
        for j in 0..i {
            out[[j, i]] = out[[i, j]];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, s};

    /// The plain triple loop.
    fn reference(a: ArrayView2<'_, f64>, b: ArrayView2<'_, f64>) -> Array2<f64> {
        Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| (0..a.ncols()).map(|l| a[[i, l]] * b[[l, j]]).sum())
    }

    fn filled(r: usize, c: usize, seed: usize) -> Array2<f64> {
        Array2::from_shape_fn((r, c), |(i, j)| (((i * 31 + j * 17 + seed * 7) % 23) as f64 - 11.0) / 8.0)
    }

    #[test]
    fn every_layout_matches_the_triple_loop() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 2), (17, 33, 9), (64, 7, 130), (0, 3, 4), (4, 0, 3), (5, 3, 0)] {
            let a = filled(m, k, 1);
            let b = filled(k, n, 2);
            let want = reference(a.view(), b.view());
            // Row-major, transposed (column-major) and strided (every other row) operands.
            let at = a.t().to_owned();
            let wide = filled(2 * m.max(1), k, 3);
            let mut strided = wide.clone();
            strided.slice_mut(s![..;2, ..]).slice_mut(s![..m, ..]).assign(&a);
            for (name, av) in [("row", a.view()), ("col", at.t()), ("strided", strided.slice(s![..2 * m;2, ..]))] {
                let mut out = Array2::from_elem((m, n), 9.0);
                gemm_f64(av, b.t().to_owned().t(), false, out.view_mut());
                assert_eq!(out, want, "{name} {m}×{k}×{n}");
                gemm_f64(av, b.view(), true, out.view_mut());
                assert_eq!(out, &want * 2.0, "{name} accumulate {m}×{k}×{n}");
            }
            // A transposed output.
            let mut out_t = Array2::from_elem((n, m), 9.0);
            gemm_f64(a.view(), b.view(), false, out_t.view_mut().reversed_axes());
            assert_eq!(out_t.t(), want, "transposed out {m}×{k}×{n}");
        }
    }

    #[test]
    fn f32_agrees_with_the_f64_product_on_both_kernels() {
        // Below and from F32_MIN_ROWS rows (matrixmultiply, faer), in every layout.
        for &(m, k, n) in &[(40, 50, 30), (F32_MIN_ROWS, 33, 9), (200, 64, 130)] {
            let (a, b) = (filled(m, k, 4), filled(k, n, 5));
            let want = reference(a.view(), b.view());
            let (a32, b32) = (a.mapv(|v| v as f32), b.mapv(|v| v as f32));
            let at = a32.t().to_owned();
            for (name, av) in [("row", a32.view()), ("col", at.t())] {
                let mut out = Array2::<f32>::from_elem((m, n), 9.0);
                gemm_f32(av, b32.t().to_owned().t(), false, out.view_mut());
                // Products of multiples of 1/8 with sums under 2^24/64: exact in f32 too.
                assert_eq!(out.mapv(f64::from), want, "{name} {m}×{k}×{n}");
                gemm_f32(av, b32.view(), true, out.view_mut());
                assert_eq!(out.mapv(f64::from), &want * 2.0, "{name} accumulate {m}×{k}×{n}");
            }
        }
    }

    #[test]
    fn gram_is_the_symmetric_product_of_the_transpose() {
        // Sizes around faer's triangular recursion (a single block, several, odd splits).
        for &(rows, n) in &[(1, 1), (5, 3), (40, 17), (130, 64), (33, 200), (300, 129)] {
            let x = filled(rows, n, 6);
            let want = reference(x.t(), x.view());
            let xt = x.t().to_owned();
            let mut wide = filled(2 * rows, n, 7);
            wide.slice_mut(s![..;2, ..]).assign(&x);
            for (name, xv) in [("row", x.view()), ("col", xt.t()), ("strided", wide.slice(s![..;2, ..]))] {
                // Whatever the output held: replaced, every entry (the upper triangle too).
                let mut out = Array2::from_elem((n, n), 9.0);
                gram_into(xv, false, out.view_mut()).expect("shape");
                assert_eq!(out, want, "{name} {rows}×{n}");
                assert_eq!(out, out.t(), "{name} {rows}×{n}: symmetric");
                // Accumulating reads the lower triangle only: garbage above it is replaced.
                for i in 0..n {
                    for j in i + 1..n {
                        out[[i, j]] = -1e300;
                    }
                }
                gram_into(xv, true, out.view_mut()).expect("shape");
                assert_eq!(out, &want * 2.0, "{name} {rows}×{n}: accumulated");
            }
        }
    }

    #[test]
    fn gram_of_no_rows_or_a_wrong_output_shape() {
        let mut out = Array2::from_elem((3, 3), 9.0);
        gram_into(Array2::<f64>::zeros((0, 3)).view(), true, out.view_mut()).expect("shape");
        assert_eq!(out, Array2::from_elem((3, 3), 9.0), "accumulating nothing changes nothing");
        gram_into(Array2::<f64>::zeros((0, 3)).view(), false, out.view_mut()).expect("shape");
        assert_eq!(out, Array2::zeros((3, 3)));
        gram_into(Array2::<f64>::zeros((4, 0)).view(), false, Array2::zeros((0, 0)).view_mut()).expect("empty");
        for bad in [(3, 4), (2, 2), (0, 0)] {
            let err = gram_into(filled(5, 3, 1).view(), false, Array2::zeros(bad).view_mut());
            assert!(matches!(err, Err(HessianError::ShapeMismatch { .. })), "{bad:?}");
        }
    }
}
