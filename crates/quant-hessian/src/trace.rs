//! Trace estimators: Hutchinson (Rademacher probes) and Hutch++.

use ndarray::{Array1, Array2};
use quant_core::Float;

use crate::error::{Result, check_at_least, check_finite, check_tol};
use crate::linalg::{orthogonalize, solver_dim};
use crate::operator::LinearOperator;
use crate::power::apply_checked;
use quant_core::rng;

/// A stochastic trace estimate with its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceEstimate {
    /// The estimate of `Tr(A)`.
    pub trace: f64,
    /// The standard error of the estimate (sample standard deviation of the per-probe terms
    /// over the square root of their number; for Hutch++ only the stochastic part has one).
    pub std_error: f64,
    /// Probe vectors used in the stochastic part.
    pub samples: usize,
    /// Operator applications (`A x`): every probe of Hutchinson, the sketch of Hutch++.
    pub hvps: usize,
    /// Quadratic forms `xᵀ A x` asked of the operator
    /// ([`LinearOperator::quadratic_forms_into`]; Hutch++ only, which takes its two trace
    /// terms as forms: for a Gauss-Newton block a forward-mode pass instead of a product).
    pub quadratic_forms: usize,
    /// The operator's dimension `n`.
    pub dim: usize,
    /// Whether the tolerance was met before the sample cap (always true for Hutch++, which
    /// runs a fixed budget).
    pub converged: bool,
}

impl TraceEstimate {
    /// The average trace per parameter `Tr(A) / n` (HAWQ-V2's sensitivity).
    pub fn per_parameter(&self) -> f64 {
        self.trace / self.dim as f64
    }
}

/// Validated parameters of Hutchinson's estimator `Tr(A) ≈ mean vᵀ A v` over Rademacher `v`.
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `max_samples` | 200 | probe cap (NNCF's default) | `≥ 2` |
/// | `min_samples` | 10 | probes before the rule may stop | `2..=max_samples` |
/// | `tol` | 1e-3 | stop when `std_error ≤ tol·|trace|` | `> 0`, finite |
/// | `seed` | 0 | seed of the probes | any |
///
/// Reaching the cap is not an error: the estimate comes back with `converged = false` and
/// its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hutchinson {
    max_samples: usize,
    min_samples: usize,
    tol: f64,
    seed: u64,
}

impl Default for Hutchinson {
    fn default() -> Self {
        Self { max_samples: 200, min_samples: 10, tol: 1e-3, seed: 0 }
    }
}

/// Chained setters for [`Hutchinson`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HutchinsonBuilder(Hutchinson);

impl Hutchinson {
    /// A builder with the defaults in the table.
    pub fn builder() -> HutchinsonBuilder {
        HutchinsonBuilder(Self::default())
    }
}

impl HutchinsonBuilder {
    /// Sets the probe cap.
    pub fn max_samples(mut self, n: usize) -> Self {
        self.0.max_samples = n;
        self
    }
    /// Sets the least number of probes.
    pub fn min_samples(mut self, n: usize) -> Self {
        self.0.min_samples = n;
        self
    }
    /// Sets the relative standard-error tolerance.
    pub fn tol(mut self, tol: f64) -> Self {
        self.0.tol = tol;
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
    /// [`HessianError::TooFew`](crate::HessianError::TooFew), [`HessianError::InvalidTolerance`](crate::HessianError::InvalidTolerance).
    pub fn check(self) -> Result<Hutchinson> {
        let p = self.0;
        check_at_least("max_samples", p.max_samples, 2)?;
        check_at_least("min_samples", p.min_samples, 2)?;
        check_at_least("max_samples", p.max_samples, p.min_samples)?;
        check_tol(p.tol)?;
        Ok(p)
    }
}

/// Running mean and variance (Welford).
#[derive(Default)]
struct Welford {
    n: usize,
    mean: f64,
    m2: f64,
}

impl Welford {
    fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }
    fn std_error(&self) -> f64 {
        if self.n < 2 { f64::INFINITY } else { (self.m2 / (self.n - 1) as f64 / self.n as f64).sqrt() }
    }
}

pub(crate) fn hutchinson<F: Float, O: LinearOperator<F> + ?Sized>(op: &O, p: &Hutchinson) -> Result<TraceEstimate> {
    let n = solver_dim(op, 0)?;
    let mut w = Array1::zeros(n);
    let mut acc = Welford::default();
    let mut converged = false;
    while acc.n < p.max_samples {
        let v = rng::rademacher::<F>(n, p.seed, acc.n as u64);
        apply_checked(op, &v, &mut w)?;
        acc.push(v.dot(&w).as_f64());
        if acc.n >= p.min_samples && acc.std_error() <= p.tol * acc.mean.abs() {
            converged = true;
            break;
        }
    }
    Ok(TraceEstimate { trace: acc.mean, std_error: acc.std_error(), samples: acc.n, hvps: acc.n, quadratic_forms: 0, dim: n, converged })
}

/// Validated parameters of Hutch++ (Meyer, Musco, Musco and Woodruff, 2021).
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `budget` | 99 | operator applications in total (a third each for the sketch, the low-rank part and the probes) | `≥ 3` |
/// | `seed` | 0 | seed of the sketch and probes | any |
///
/// With `s = budget / 3`: `Q` is an orthonormal basis of `A S` for an `n × s` Rademacher
/// sketch `S`; the estimate is `Tr(Qᵀ A Q) + (1/s) Σ gᵀ (I − QQᵀ) A (I − QQᵀ) g` over `s`
/// Rademacher probes `g`. The low-rank part captures the large eigenvalues exactly, so for
/// the decaying spectra of Hessians the variance is far below Hutchinson's at equal cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HutchPlusPlus {
    budget: usize,
    seed: u64,
}

impl Default for HutchPlusPlus {
    fn default() -> Self {
        Self { budget: 99, seed: 0 }
    }
}

impl HutchPlusPlus {
    /// Hutch++ with `budget` operator applications.
    ///
    /// # Errors
    /// [`HessianError::TooFew`](crate::HessianError::TooFew) for a budget below 3.
    pub fn new(budget: usize, seed: u64) -> Result<Self> {
        check_at_least("budget", budget, 3)?;
        Ok(Self { budget, seed })
    }
}

pub(crate) fn hutch_pp<F: Float, O: LinearOperator<F> + ?Sized>(op: &O, p: &HutchPlusPlus) -> Result<TraceEstimate> {
    let n = solver_dim(op, 0)?;
    let s = p.budget / 3;
    let mut w = Array1::zeros(n);
    let mut hvps = 0;
    // Sketch A S and orthonormalise it (rank-deficient columns dropped).
    let mut basis: Vec<Array1<F>> = Vec::with_capacity(s);
    for j in 0..s {
        let v = rng::rademacher::<F>(n, p.seed, j as u64);
        apply_checked(op, &v, &mut w)?;
        hvps += 1;
        let mut y = w.clone();
        let before = y.dot(&y).sqrt();
        orthogonalize(&mut y, &basis);
        let after = y.dot(&y).sqrt();
        if after > F::cast(1e3) * F::epsilon() * before && basis.len() < n {
            y.mapv_inplace(|x| x / after);
            basis.push(y);
        }
    }
    // Exact trace of the projection, Tr(QᵀAQ) = Σ qᵀAq, and Hutchinson on the deflated
    // remainder: both are sums of quadratic forms, asked of the operator all at once.
    let forms = |rows: &[Array1<F>]| -> Result<Array1<F>> {
        let mut x = Array2::zeros((rows.len(), n));
        for (mut r, v) in x.outer_iter_mut().zip(rows) {
            r.assign(v);
        }
        let mut out = Array1::zeros(rows.len());
        op.quadratic_forms_into(x.view(), out.view_mut())?;
        check_finite(out.iter())?;
        Ok(out)
    };
    let low_rank: f64 = forms(&basis)?.iter().map(|v| v.as_f64()).sum();
    let probes: Vec<Array1<F>> = (0..s)
        .map(|j| {
            let mut g = rng::rademacher::<F>(n, p.seed, (s + j) as u64);
            orthogonalize(&mut g, &basis);
            g
        })
        .collect();
    let mut acc = Welford::default();
    for v in forms(&probes)? {
        acc.push(v.as_f64());
    }
    let std_error = if s >= 2 { acc.std_error() } else { f64::INFINITY };
    let quadratic_forms = basis.len() + s;
    Ok(TraceEstimate { trace: low_rank + acc.mean, std_error, samples: s, hvps, quadratic_forms, dim: n, converged: true })
}

/// A spectral density estimate from stochastic Lanczos quadrature: Ritz values (nodes) and
/// quadrature weights, averaged over probes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpectralDensity {
    /// Quadrature nodes (Ritz values), grouped by probe, ascending within each probe.
    pub nodes: Vec<f64>,
    /// Their weights; each probe's weights sum to `1 / probes`, so all sum to 1.
    pub weights: Vec<f64>,
    /// Probes used.
    pub probes: usize,
    /// Operator applications used.
    pub hvps: usize,
}

impl SpectralDensity {
    /// The density smoothed by a Gaussian of width `sigma`, evaluated at `grid`
    /// (integrates to 1 over the real line).
    pub fn smoothed(&self, grid: &[f64], sigma: f64) -> Vec<f64> {
        let c = 1.0 / (sigma * (2.0 * core::f64::consts::PI).sqrt());
        grid.iter()
            .map(|&x| self.nodes.iter().zip(&self.weights).map(|(&t, &w)| w * c * (-0.5 * ((x - t) / sigma).powi(2)).exp()).sum())
            .collect()
    }

    /// The quadrature estimate of `Tr(f(A)) / n`, e.g. `f = |x| x` for the mean eigenvalue.
    pub fn integrate(&self, f: impl Fn(f64) -> f64) -> f64 {
        self.nodes.iter().zip(&self.weights).map(|(&t, &w)| w * f(t)).sum()
    }
}

/// Validated parameters of stochastic Lanczos quadrature.
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `probes` | 10 | random start vectors (Rademacher) | `≥ 1` |
/// | `steps` | 50 | Lanczos steps per probe (capped at `dim`) | `≥ 1` |
/// | `seed` | 0 | seed of the probes | any |
///
/// For each unit probe `v` the `m`-step Lanczos tridiagonal `T = Y Θ Yᵀ` gives nodes `θ_i`
/// and weights `(Y_{0i})²`, a Gauss quadrature exact for `vᵀ p(A) v` with polynomials of
/// degree below `2m`; averaging over probes estimates the eigenvalue density.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slq {
    probes: usize,
    steps: usize,
    seed: u64,
}

impl Default for Slq {
    fn default() -> Self {
        Self { probes: 10, steps: 50, seed: 0 }
    }
}

impl Slq {
    /// SLQ with `probes` probes of `steps` Lanczos steps each.
    ///
    /// # Errors
    /// [`HessianError::TooFew`](crate::HessianError::TooFew) for zero probes or steps.
    pub fn new(probes: usize, steps: usize, seed: u64) -> Result<Self> {
        check_at_least("probes", probes, 1)?;
        check_at_least("steps", steps, 1)?;
        Ok(Self { probes, steps, seed })
    }
}

pub(crate) fn slq<F: Float, O: LinearOperator<F> + ?Sized>(op: &O, p: &Slq) -> Result<SpectralDensity> {
    let n = solver_dim(op, 0)?;
    let mut out = SpectralDensity { nodes: vec![], weights: vec![], probes: p.probes, hvps: 0 };
    let mut w = Array1::zeros(n);
    for probe in 0..p.probes {
        let mut kr = crate::lanczos::Krylov::new(rng::rademacher::<F>(n, p.seed, probe as u64));
        // No restart: at an invariant subspace the quadrature is already exact.
        while kr.len() < p.steps.min(n) && kr.can_continue() && !kr.broke_down {
            kr.step(op, &mut w, None)?;
        }
        out.hvps += kr.hvps;
        let (theta, z): (Vec<f64>, Array2<f64>) = kr.ritz(&[0]);
        out.nodes.extend(&theta);
        out.weights.extend(z.row(0).iter().map(|y| y * y / p.probes as f64));
    }
    Ok(out)
}
