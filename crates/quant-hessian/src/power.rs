//! Power iteration for the dominant eigenpairs, with deflation by orthogonalisation.

use ndarray::{Array1, Array2};
use quant_core::Float;

use crate::eigen::Eigenpairs;
use crate::error::{HessianError, Result, check_at_least, check_finite, check_tol};
use crate::linalg::{norm, normalize, orthogonalize, solver_dim};
use crate::operator::LinearOperator;
use quant_core::rng;

/// Validated parameters of power iteration.
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `k` | 1 | eigenpairs wanted (largest magnitude first) | `1..=dim` |
/// | `max_iter` | 100 | iteration cap per eigenpair (PyHessian's default) | `≥ 1` |
/// | `tol` | 1e-3 | relative tolerance of the stopping rule (PyHessian's default) | `> 0`, finite |
/// | `seed` | 0 | seed of the random start vectors | any |
///
/// Pairs after the first are found on the deflated operator `(I − QQᵀ) A (I − QQᵀ)`, `Q`
/// the vectors found so far, and their residuals are measured there: the components of
/// `A v` along `Q` are of the size of the earlier pairs' own residuals and are left out,
/// so each pair can meet `tol` on its own.
///
/// The stopping rule for each pair is `|λ_t − λ_{t−1}| ≤ tol·|λ_t|` **and**
/// `‖A v − λ_t v‖ ≤ tol·|λ_t|`. The first alone (PyHessian's rule) stops early when the
/// eigenvalue stalls before the vector has converged, with eigenvalue errors above `tol`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerIteration {
    k: usize,
    max_iter: usize,
    tol: f64,
    seed: u64,
}

impl Default for PowerIteration {
    fn default() -> Self {
        Self { k: 1, max_iter: 100, tol: 1e-3, seed: 0 }
    }
}

/// Chained setters for [`PowerIteration`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerIterationBuilder(PowerIteration);

impl PowerIteration {
    /// A builder with the defaults in the table.
    pub fn builder() -> PowerIterationBuilder {
        PowerIterationBuilder(Self::default())
    }
    /// Eigenpairs wanted.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Iteration cap per pair.
    pub fn max_iter(&self) -> usize {
        self.max_iter
    }
    /// Relative tolerance.
    pub fn tol(&self) -> f64 {
        self.tol
    }
    /// Seed of the start vectors.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The same parameters with another seed (used to give each data subset its own start).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

impl PowerIterationBuilder {
    /// Sets the number of eigenpairs.
    pub fn k(mut self, k: usize) -> Self {
        self.0.k = k;
        self
    }
    /// Sets the iteration cap per pair.
    pub fn max_iter(mut self, n: usize) -> Self {
        self.0.max_iter = n;
        self
    }
    /// Sets the relative tolerance.
    pub fn tol(mut self, tol: f64) -> Self {
        self.0.tol = tol;
        self
    }
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = seed;
        self
    }
    /// Validates (the bound `k ≤ dim` is checked when the operator is known).
    ///
    /// # Errors
    /// [`HessianError::TooFew`] for `k` or `max_iter` of 0, [`HessianError::InvalidTolerance`].
    pub fn check(self) -> Result<PowerIteration> {
        check_at_least("k", self.0.k, 1)?;
        check_at_least("max_iter", self.0.max_iter, 1)?;
        check_tol(self.0.tol)?;
        Ok(self.0)
    }
}

/// Applies `op` and checks the output.
pub(crate) fn apply_checked<F: Float, O: LinearOperator<F> + ?Sized>(op: &O, x: &Array1<F>, out: &mut Array1<F>) -> Result<()> {
    op.apply_into(x.view(), out.view_mut())?;
    check_finite(out.iter())
}

pub(crate) fn power_iteration<F: Float, O: LinearOperator<F> + ?Sized>(op: &O, p: &PowerIteration) -> Result<Eigenpairs<F>> {
    let n = solver_dim(op, p.k)?;
    let tol = F::cast(p.tol);
    let mut found: Vec<Array1<F>> = Vec::with_capacity(p.k);
    let mut res =
        Eigenpairs { values: vec![], vectors: Array2::zeros((n, 0)), residuals: vec![], iterations: vec![], hvps: 0, converged: true };
    let mut w = Array1::zeros(n);
    for j in 0..p.k {
        let mut v = rng::normal::<F>(n, p.seed, j as u64);
        orthogonalize(&mut v, &found);
        normalize(&mut v);
        let mut prev: Option<F> = None;
        let (mut lambda, mut residual, mut iters, mut ok) = (F::zero(), F::zero(), 0, false);
        while iters < p.max_iter {
            iters += 1;
            apply_checked(op, &v, &mut w)?;
            res.hvps += 1;
            // Deflation: work on (I − QQᵀ) A (I − QQᵀ) with Q the vectors already found.
            orthogonalize(&mut w, &found);
            lambda = v.dot(&w);
            let mut r = w.clone();
            r.scaled_add(-lambda, &v);
            residual = norm(r.view());
            let bound = tol * lambda.abs();
            if residual <= bound && prev.is_some_and(|q| (lambda - q).abs() <= bound) || residual == F::zero() {
                ok = true;
                break;
            }
            prev = Some(lambda);
            if normalize(&mut w) == F::zero() {
                // A v = 0 within the deflated space: eigenvalue 0, v stays an eigenvector.
                break;
            }
            core::mem::swap(&mut v, &mut w);
        }
        res.values.push(lambda);
        res.residuals.push(residual);
        res.iterations.push(iters);
        found.push(v);
        res.converged &= ok;
        if !ok {
            res.vectors = stack(&found, n);
            return Err(HessianError::NoConvergence { partial: Box::new(res.to_f64()) });
        }
    }
    res.vectors = stack(&found, n);
    Ok(res)
}

/// Columns from vectors.
pub(crate) fn stack<F: Float>(vs: &[Array1<F>], n: usize) -> Array2<F> {
    let mut m = Array2::zeros((n, vs.len()));
    for (mut c, v) in m.columns_mut().into_iter().zip(vs) {
        c.assign(v);
    }
    m
}
