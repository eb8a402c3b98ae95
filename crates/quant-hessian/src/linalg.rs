//! Small dense vector helpers shared by the iterative solvers.

use ndarray::{Array1, ArrayView1};
use quant_core::Float;

/// Euclidean norm.
#[inline]
pub(crate) fn norm<F: Float>(v: ArrayView1<'_, F>) -> F {
    v.dot(&v).sqrt()
}

/// Removes from `v` its components along the orthonormal `basis` vectors, twice
/// (classical Gram–Schmidt twice is as good as modified Gram–Schmidt and stays orthogonal
/// to working precision).
pub(crate) fn orthogonalize<F: Float>(v: &mut Array1<F>, basis: &[Array1<F>]) {
    for _ in 0..2 {
        for q in basis {
            let c = q.dot(v);
            v.scaled_add(-c, q);
        }
    }
}

/// Scales `v` to unit norm and returns the old norm (0 leaves `v` unchanged).
pub(crate) fn normalize<F: Float>(v: &mut Array1<F>) -> F {
    let n = norm(v.view());
    if n > F::zero() {
        v.mapv_inplace(|x| x / n);
    }
    n
}
