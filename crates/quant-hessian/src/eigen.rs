//! Eigenpair results and the symmetric tridiagonal eigensolver behind Lanczos and SLQ.

use ndarray::Array2;
use quant_core::Float;

/// Eigenpairs from an iterative solver, with its diagnostics.
#[derive(Debug, Clone, PartialEq)]
pub struct Eigenpairs<F> {
    /// The eigenvalues, in the order the solver reports them (see each solver).
    pub values: Vec<F>,
    /// The unit eigenvectors as columns (`dim × values.len()`).
    pub vectors: Array2<F>,
    /// `‖A v − λ v‖` for each pair: measured from the last operator application (power
    /// iteration, on the deflated operator for pairs after the first) or read off the
    /// Lanczos recurrence (`β_m |e_mᵀ y|`).
    pub residuals: Vec<F>,
    /// Iterations spent on each pair (power iteration) or Lanczos steps (the same for all).
    pub iterations: Vec<usize>,
    /// Operator applications (Hessian-vector products) used in total.
    pub hvps: usize,
    /// Whether every pair met the stopping rule.
    pub converged: bool,
}

impl<F: Float> Eigenpairs<F> {
    /// The same result in `f64` (what [`HessianError::NoConvergence`](crate::HessianError)
    /// carries).
    pub fn to_f64(&self) -> Eigenpairs<f64> {
        Eigenpairs {
            values: self.values.iter().map(|v| v.as_f64()).collect(),
            vectors: self.vectors.mapv(|v| v.as_f64()),
            residuals: self.residuals.iter().map(|v| v.as_f64()).collect(),
            iterations: self.iterations.clone(),
            hvps: self.hvps,
            converged: self.converged,
        }
    }
}

/// Eigen-decomposition of the symmetric tridiagonal matrix with diagonal `d` and
/// off-diagonal `e` (`e[i]` couples `i` and `i + 1`; `e.len() == d.len()`, the last entry
/// is ignored) by the implicit QL method with Wilkinson-type shifts.
///
/// On return `d` holds the eigenvalues in ascending order and each row of `z` has been
/// multiplied by the eigenvector matrix: start `z` as the identity for the full vectors,
/// or as a few rows of it (say the first and last) when only those components are needed,
/// at a cost linear in the row count. Returns `false` when an eigenvalue took more than
/// 60 sweeps (not seen on finite input).
pub(crate) fn tridiagonal_eigen(d: &mut [f64], e: &mut [f64], z: &mut Array2<f64>) -> bool {
    let n = d.len();
    debug_assert_eq!(e.len(), n);
    debug_assert_eq!(z.ncols(), n);
    if n == 0 {
        return true;
    }
    e[n - 1] = 0.0;
    for l in 0..n {
        let mut sweeps = 0;
        loop {
            // The first negligible off-diagonal at or after l splits the matrix.
            let mut m = l;
            while m + 1 < n && e[m].abs() > f64::EPSILON * (d[m].abs() + d[m + 1].abs()) {
                m += 1;
            }
            if m == l {
                break;
            }
            sweeps += 1;
            if sweeps > 60 {
                return false;
            }
            // Shift from the leading 2 × 2 block, then chase the bulge from m up to l.
            let g0 = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let r0 = g0.hypot(1.0);
            let mut g = d[m] - d[l] + e[l] / (g0 + r0.copysign(g0));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut deflated = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                let r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                let g1 = d[i + 1] - p;
                let r1 = (d[i] - g1) * s + 2.0 * c * b;
                p = s * r1;
                d[i + 1] = g1 + p;
                g = c * r1 - b;
                for row in 0..z.nrows() {
                    let (zi, zi1) = (z[[row, i]], z[[row, i + 1]]);
                    z[[row, i + 1]] = s * zi + c * zi1;
                    z[[row, i]] = c * zi - s * zi1;
                }
            }
            if deflated {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    // Ascending order, columns of z alongside.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
    let sorted: Vec<f64> = order.iter().map(|&i| d[i]).collect();
    d.copy_from_slice(&sorted);
    let zs = z.select(ndarray::Axis(1), &order);
    z.assign(&zs);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense tridiagonal matrix.
    fn dense(d: &[f64], e: &[f64]) -> Array2<f64> {
        let n = d.len();
        Array2::from_shape_fn((n, n), |(i, j)| {
            if i == j {
                d[i]
            } else if i + 1 == j {
                e[i]
            } else if j + 1 == i {
                e[j]
            } else {
                0.0
            }
        })
    }

    #[test]
    fn eigenpairs_satisfy_the_definition() {
        for n in [1usize, 2, 3, 7, 40] {
            let d: Vec<f64> = (0..n).map(|i| ((i * 37 % 11) as f64) - 5.0).collect();
            let e: Vec<f64> = (0..n).map(|i| if i + 1 < n { 1.0 + (i % 3) as f64 * 0.5 } else { 0.0 }).collect();
            let t = dense(&d, &e);
            let (mut dd, mut ee) = (d.clone(), e.clone());
            let mut z = Array2::eye(n);
            assert!(tridiagonal_eigen(&mut dd, &mut ee, &mut z));
            for (j, &lambda) in dd.iter().enumerate() {
                let v = z.column(j);
                let r = t.dot(&v) - &v * lambda;
                // Backward-stable: residual of a few ulps of ‖T‖ ≈ 10.
                assert!(r.iter().all(|x| x.abs() < 1e-12), "n = {n}, pair {j}: {r}");
                assert!((v.dot(&v) - 1.0).abs() < 1e-12);
            }
            assert!(dd.windows(2).all(|w| w[0] <= w[1]));
            // Trace preserved.
            assert!((dd.iter().sum::<f64>() - d.iter().sum::<f64>()).abs() < 1e-10);
        }
    }

    #[test]
    fn partial_rows_match_full_vectors() {
        let d = [2.0, -1.0, 3.5, 0.25, 1.0];
        let e = [0.5, 1.5, -0.75, 2.0, 0.0];
        let mut z = Array2::eye(5);
        let (mut d1, mut e1) = (d, e);
        assert!(tridiagonal_eigen(&mut d1, &mut e1, &mut z));
        let mut rows = Array2::eye(5).select(ndarray::Axis(0), &[0, 4]);
        let (mut d2, mut e2) = (d, e);
        assert!(tridiagonal_eigen(&mut d2, &mut e2, &mut rows));
        assert_eq!(d1, d2);
        assert_eq!(rows.row(0), z.row(0));
        assert_eq!(rows.row(1), z.row(4));
    }
}
