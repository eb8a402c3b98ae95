//! Lanczos with full re-orthogonalisation: extreme eigenpairs and the tridiagonal matrices
//! behind stochastic Lanczos quadrature.

use ndarray::{Array1, Array2, Axis};
use quant_core::Float;

use crate::eigen::{Eigenpairs, tridiagonal_eigen};
use crate::error::{HessianError, Result, check_at_least, check_tol};
use crate::linalg::{normalize, orthogonalize, solver_dim};
use crate::operator::LinearOperator;
use crate::power::{apply_checked, stack};
use quant_core::rng;

/// A Krylov basis `Q` and the tridiagonal `T = Qᵀ A Q` (diagonal `alpha`, off-diagonal `beta`).
pub(crate) struct Krylov<F> {
    pub(crate) q: Vec<Array1<F>>,
    pub(crate) alpha: Vec<f64>,
    pub(crate) beta: Vec<f64>,
    pub(crate) hvps: usize,
    /// Largest `|α| + |β|` so far: the scale for breakdown.
    scale: f64,
    /// Whether the last step found an invariant subspace (`β = 0`).
    pub(crate) broke_down: bool,
}

impl<F: Float> Krylov<F> {
    /// Starts from `start` (normalised here; must be non-zero).
    pub(crate) fn new(mut start: Array1<F>) -> Self {
        normalize(&mut start);
        Self { q: vec![start], alpha: vec![], beta: vec![], hvps: 0, scale: 0.0, broke_down: false }
    }

    /// Steps taken (the order of `T`).
    pub(crate) fn len(&self) -> usize {
        self.alpha.len()
    }

    /// One Lanczos step. On breakdown (`β ≈ 0`, an invariant subspace) with `restart`, the
    /// next vector is a fresh random one orthogonal to the basis and `β` is recorded as 0,
    /// so `T` stays the projection of `A` and eigenvalues outside the subspace are still
    /// found; without `restart`, or once the basis spans the space, no vector is added.
    pub(crate) fn step<O: LinearOperator<F> + ?Sized>(&mut self, op: &O, w: &mut Array1<F>, restart: Option<u64>) -> Result<()> {
        let j = self.alpha.len();
        let n = op.dim();
        apply_checked(op, &self.q[j], w)?;
        self.hvps += 1;
        let a = self.q[j].dot(w);
        w.scaled_add(-a, &self.q[j]);
        if j > 0 {
            w.scaled_add(-F::cast(self.beta[j - 1]), &self.q[j - 1]);
        }
        orthogonalize(w, &self.q);
        let b = normalize(w).as_f64();
        let a = a.as_f64();
        self.scale = self.scale.max(a.abs() + b);
        self.alpha.push(a);
        // b is finite: apply_checked rejected non-finite outputs.
        self.broke_down = b <= 1e3 * f64::EPSILON * self.scale * (n as f64).sqrt().max(1.0) || self.q.len() == n;
        if self.broke_down {
            self.beta.push(0.0);
            if let (Some(seed), true) = (restart, self.q.len() < n) {
                let mut v = rng::normal::<F>(n, seed, 1 + j as u64);
                orthogonalize(&mut v, &self.q);
                if normalize(&mut v) > F::zero() {
                    self.q.push(v);
                }
            }
        } else {
            self.beta.push(b);
            self.q.push(w.clone());
        }
        Ok(())
    }

    /// Whether another step is possible.
    pub(crate) fn can_continue(&self) -> bool {
        self.q.len() > self.alpha.len()
    }

    /// Eigenvalues of `T` (ascending) and the rows `rows` of its eigenvector matrix.
    pub(crate) fn ritz(&self, rows: &[usize]) -> (Vec<f64>, Array2<f64>) {
        let m = self.len();
        let mut d = self.alpha.clone();
        let mut e = self.beta.clone();
        let mut z = Array2::eye(m).select(Axis(0), rows);
        // The QL method converges on all finite tridiagonals in practice; should it not,
        // the values so far are still Ritz values of a nearby matrix.
        let _ = tridiagonal_eigen(&mut d, &mut e, &mut z);
        (d, z)
    }
}

/// Validated parameters of the Lanczos eigensolver.
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `k` | 1 | largest (algebraic) eigenpairs wanted | `1..=dim` |
/// | `max_iter` | 200 | Lanczos steps cap (capped at `dim`); memory is `steps × dim` | `≥ 1` |
/// | `tol` | 1e-6 | relative residual tolerance | `> 0`, finite |
/// | `smallest` | true | also require the smallest eigenvalue to converge | bool |
/// | `seed` | 0 | seed of the start vector | any |
///
/// A top pair `(θ, y)` has converged when `β_m |e_mᵀ y| ≤ tol·|θ|`; the smallest when the
/// same residual is `≤ tol·max|θ|` (relative to the operator norm, since the smallest
/// eigenvalue of a Hessian is often near 0). The residual bounds the eigenvalue error, and
/// Ritz values converge with its square, so the eigenvalues are usually far more accurate
/// than `tol`.
///
/// From one start vector Lanczos sees each distinct eigenvalue once: a repeated top
/// eigenvalue fills the top `k` only after the Krylov space has been exhausted and the
/// solver restarts from a fresh vector. Use [`PowerIteration`](crate::PowerIteration)
/// (deflation) when multiplicities matter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lanczos {
    k: usize,
    max_iter: usize,
    tol: f64,
    smallest: bool,
    seed: u64,
}

impl Default for Lanczos {
    fn default() -> Self {
        Self { k: 1, max_iter: 200, tol: 1e-6, smallest: true, seed: 0 }
    }
}

/// Chained setters for [`Lanczos`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LanczosBuilder(Lanczos);

impl Lanczos {
    /// A builder with the defaults in the table.
    pub fn builder() -> LanczosBuilder {
        LanczosBuilder(Self::default())
    }
    /// Eigenpairs wanted.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Steps cap.
    pub fn max_iter(&self) -> usize {
        self.max_iter
    }
    /// Relative tolerance.
    pub fn tol(&self) -> f64 {
        self.tol
    }
    /// Whether the smallest eigenvalue must converge too.
    pub fn smallest(&self) -> bool {
        self.smallest
    }
    /// Seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The same parameters with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

impl LanczosBuilder {
    /// Sets the number of top eigenpairs.
    pub fn k(mut self, k: usize) -> Self {
        self.0.k = k;
        self
    }
    /// Sets the steps cap.
    pub fn max_iter(mut self, n: usize) -> Self {
        self.0.max_iter = n;
        self
    }
    /// Sets the relative tolerance.
    pub fn tol(mut self, tol: f64) -> Self {
        self.0.tol = tol;
        self
    }
    /// Sets whether the smallest eigenvalue must converge.
    pub fn smallest(mut self, on: bool) -> Self {
        self.0.smallest = on;
        self
    }
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = seed;
        self
    }
    /// Validates.
    ///
    /// # Errors
    /// [`HessianError::TooFew`], [`HessianError::InvalidTolerance`].
    pub fn check(self) -> Result<Lanczos> {
        check_at_least("k", self.0.k, 1)?;
        check_at_least("max_iter", self.0.max_iter, 1)?;
        check_tol(self.0.tol)?;
        Ok(self.0)
    }
}

/// The extreme eigenpairs from [`Lanczos`].
#[derive(Debug, Clone, PartialEq)]
pub struct Extremes<F> {
    /// The `k` largest eigenpairs, largest first.
    pub top: Eigenpairs<F>,
    /// The smallest eigenpair (negative for a Hessian at a saddle point).
    pub smallest: Eigenpairs<F>,
}

impl<F: Float> Extremes<F> {
    /// Whether the smallest eigenvalue is negative beyond its residual: the operator is
    /// not positive semi-definite (for a loss Hessian, the parameters are not at a local
    /// minimum).
    pub fn is_indefinite(&self) -> bool {
        self.smallest.values[0] + self.smallest.residuals[0] < F::zero()
    }
}

pub(crate) fn lanczos<F: Float, O: LinearOperator<F> + ?Sized>(op: &O, p: &Lanczos) -> Result<Extremes<F>> {
    lanczos_from(op, p, None)
}

/// [`lanczos`] from `hint` (an approximate top eigenvector, such as the same block's on
/// another data subset) mixed in equal parts with the seeded random start: the Krylov space
/// then holds the top direction at once, and the random half keeps every other direction in
/// it, so a hint that is wrong (another eigenvector) costs steps, not the answer. A hint of
/// another length or without a finite, non-zero norm is ignored.
pub(crate) fn lanczos_from<F: Float, O: LinearOperator<F> + ?Sized>(op: &O, p: &Lanczos, hint: Option<&Array1<F>>) -> Result<Extremes<F>> {
    let n = solver_dim(op, p.k)?;
    let cap = p.max_iter.min(n);
    let mut start = rng::normal::<F>(n, p.seed, 0);
    if let Some(h) = hint.filter(|h| h.len() == n) {
        let (hn, sn) = (h.dot(h).sqrt(), start.dot(&start).sqrt());
        if hn.is_finite() && hn > F::zero() && sn > F::zero() {
            start.mapv_inplace(|x| x / sn);
            start.scaled_add(F::one() / hn, h);
        }
    }
    let mut kr = Krylov::new(start);
    let mut w = Array1::zeros(n);
    let mut converged = false;
    while kr.len() < cap && kr.can_continue() {
        kr.step(op, &mut w, Some(p.seed))?;
        let m = kr.len();
        if m < p.k.max(2).min(n) {
            continue;
        }
        let (theta, z) = kr.ritz(&[m - 1]);
        let beta = kr.beta[m - 1];
        let norm = theta.iter().fold(0.0f64, |a, t| a.max(t.abs()));
        let res = |i: usize| beta * z[[0, i]].abs();
        let top_ok = (m - p.k..m).all(|i| res(i) <= p.tol * theta[i].abs());
        let low_ok = !p.smallest || res(0) <= p.tol * norm;
        if top_ok && low_ok {
            converged = true;
            break;
        }
    }
    if !kr.can_continue() {
        // The basis spans an invariant subspace of every start: T's eigenvalues are exact.
        converged = true;
    }
    let m = kr.len();
    let all: Vec<usize> = (0..m).collect();
    let (theta, z) = kr.ritz(&all);
    let beta = kr.beta[m - 1];
    let ritz_vector = |i: usize| {
        let mut v = Array1::zeros(n);
        for (q, &c) in kr.q.iter().zip(z.column(i)) {
            v.scaled_add(F::cast(c), q);
        }
        v
    };
    let pairs = |idx: &[usize]| Eigenpairs {
        values: idx.iter().map(|&i| F::cast(theta[i])).collect(),
        vectors: stack(&idx.iter().map(|&i| ritz_vector(i)).collect::<Vec<_>>(), n),
        residuals: idx.iter().map(|&i| F::cast(beta * z[[m - 1, i]].abs())).collect(),
        iterations: vec![m; idx.len()],
        hvps: kr.hvps,
        converged,
    };
    let top_idx: Vec<usize> = (m.saturating_sub(p.k)..m).rev().collect();
    let out = Extremes { top: pairs(&top_idx), smallest: pairs(&[0]) };
    if converged && top_idx.len() == p.k {
        Ok(out)
    } else {
        let mut partial = out.top.to_f64();
        let s = out.smallest.to_f64();
        partial.values.extend(s.values);
        partial.residuals.extend(s.residuals);
        partial.iterations.extend(s.iterations);
        partial.vectors = ndarray::concatenate(Axis(1), &[partial.vectors.view(), s.vectors.view()]).unwrap_or(partial.vectors);
        partial.converged = false;
        Err(HessianError::NoConvergence { partial: Box::new(partial) })
    }
}
