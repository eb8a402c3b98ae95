//! Small dense vector helpers shared by the iterative solvers.

use ndarray::{Array1, ArrayView1};
use quant_core::Float;

use crate::error::{HessianError, Result};
use crate::operator::LinearOperator;

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

/// The operator's dimension, checked to be non-zero and at least `k` (the pairs asked for;
/// 0 when none are).
pub(crate) fn solver_dim<F: Float, O: LinearOperator<F> + ?Sized>(op: &O, k: usize) -> Result<usize> {
    let n = op.dim();
    if n == 0 {
        return Err(HessianError::Empty);
    }
    if k > n {
        return Err(HessianError::InvalidEigenCount { k, dim: n });
    }
    Ok(n)
}
