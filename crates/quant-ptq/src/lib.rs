//! # quant-ptq
//!
//! Post-training methods of the `quant` family, on plain weight matrices. Data-free and
//! calibration-light methods: batch-norm
//! folding, DFQ's cross-layer equalization (pairs and depthwise-separable triples) and
//! high-bias absorption, and bias correction (analytical from batch-norm statistics, or
//! empirical from calibration data); and GPTQ ([`gptq`]), Hessian-weighted rounding of a
//! linear layer from its calibration inputs' `XᵀX`.
//!
//! Weights are `out × in` (PyTorch's `Linear.weight`: `y = W x + b`); a convolution is handled
//! by viewing its weight as `out × (in · kh · kw)` (for equalization the per-input-channel
//! range of the next layer is then over all its kernel positions: pass its columns grouped by
//! channel with [`equalize_pair_grouped`]). Formulas: docs/numerics.md, "Post-training methods".

//!
//! Errors are the core's ([`QuantError`]): these methods check what the quantizers check
//! (shapes, non-finite values, bit widths, tolerances).

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};

mod gptq;
pub use gptq::{Gptq, GptqHessian, GptqParams, gptq, layer_objective};

use quant_core::Float;
use quant_core::{QuantError, Result};

fn shape_err(expected: &[usize], got: &[usize]) -> QuantError {
    QuantError::ShapeMismatch { expected: expected.to_vec(), got: got.to_vec() }
}

fn finite<'a, F: Float>(xs: impl IntoIterator<Item = &'a F>) -> Result<()> {
    match xs.into_iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFinite { index }),
        None => Ok(()),
    }
}

/// Batch-norm statistics (or parameters) per channel, for folding and analytical bias
/// correction.
#[derive(Debug, Clone, Copy)]
pub struct BatchNorm<'a, F> {
    /// Scale `γ`.
    pub gamma: ArrayView1<'a, F>,
    /// Shift `β`.
    pub beta: ArrayView1<'a, F>,
    /// Running mean.
    pub mean: ArrayView1<'a, F>,
    /// Running variance.
    pub var: ArrayView1<'a, F>,
    /// `ε` added to the variance (PyTorch's default is 1e-5).
    pub eps: F,
}

/// Folds an eval-mode batch norm that follows a linear layer into it:
/// `W'[o,:] = W[o,:] · γ_o / sqrt(var_o + ε)`, `b'_o = (b_o − mean_o) · γ_o / sqrt(var_o + ε) + β_o`.
/// `b` is the layer's bias (zeros if it had none).
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when the statistics or the bias do not have one entry per
/// output channel; [`QuantError::NonFinite`] for a non-finite value or a non-positive
/// `var + ε`.
pub fn fold_batch_norm<F: Float>(mut w: ArrayViewMut2<'_, F>, mut b: ArrayViewMut1<'_, F>, bn: &BatchNorm<'_, F>) -> Result<()> {
    let out = w.nrows();
    for (len, _) in [(b.len(), 0), (bn.gamma.len(), 1), (bn.beta.len(), 2), (bn.mean.len(), 3), (bn.var.len(), 4)] {
        if len != out {
            return Err(shape_err(&[out], &[len]));
        }
    }
    finite(bn.gamma.iter().chain(bn.beta.iter()).chain(bn.mean.iter()).chain(bn.var.iter()))?;
    for o in 0..out {
        let denom = (bn.var[o] + bn.eps).sqrt();
        if !(denom > F::zero() && denom.is_finite()) {
            return Err(QuantError::NonFinite { index: o });
        }
        let k = bn.gamma[o] / denom;
        w.row_mut(o).mapv_inplace(|v| v * k);
        b[o] = (b[o] - bn.mean[o]) * k + bn.beta[o];
    }
    Ok(())
}

/// Per-row `max |·|` of a matrix.
fn row_ranges<F: Float>(w: &ArrayView2<'_, F>) -> Vec<F> {
    w.rows().into_iter().map(|r| r.iter().fold(F::zero(), |m, v| m.max(v.abs()))).collect()
}

/// Cross-layer equalization of two consecutive linear layers with a ReLU (or any positively
/// homogeneous activation) between them (DFQ, Nagel et al. 2019): with `r1_i` the range of
/// row `i` of `W1` and `r2_i` the range of column `i` of `W2`, `s_i = sqrt(r1_i / r2_i)` (1
/// where either range is 0), then `W1[i,:] /= s_i`, `b1_i /= s_i`, `W2[:,i] *= s_i`. Both
/// ranges become `sqrt(r1_i · r2_i)`; the network's function is unchanged (up to rounding).
/// Returns `s`.
///
/// # Errors
/// [`QuantError::ShapeMismatch`] unless `W2` has one column per row of `W1` and `b1` one entry
/// per row; [`QuantError::NonFinite`] for non-finite weights.
pub fn equalize_pair<F: Float>(w1: ArrayViewMut2<'_, F>, b1: ArrayViewMut1<'_, F>, w2: ArrayViewMut2<'_, F>) -> Result<Array1<F>> {
    let channels = w1.nrows();
    equalize_pair_grouped(w1, b1, w2, channels)
}

/// [`equalize_pair`] when `W2`'s columns come in `channels` equal consecutive groups, one per
/// output channel of `W1` (a convolution flattened to `out × (in · kh · kw)`).
///
/// # Errors
/// As [`equalize_pair`]; also when `channels` does not divide `W2`'s columns.
pub fn equalize_pair_grouped<F: Float>(
    mut w1: ArrayViewMut2<'_, F>,
    mut b1: ArrayViewMut1<'_, F>,
    mut w2: ArrayViewMut2<'_, F>,
    channels: usize,
) -> Result<Array1<F>> {
    let n = w1.nrows();
    if channels != n || b1.len() != n || n == 0 || !w2.ncols().is_multiple_of(n) {
        return Err(shape_err(&[n, n], &[b1.len(), w2.ncols()]));
    }
    finite(w1.iter().chain(w2.iter()).chain(b1.iter()))?;
    let per = w2.ncols() / n;
    let r1 = row_ranges(&w1.view());
    let s: Array1<F> = (0..n)
        .map(|i| {
            let r2 = w2.slice(ndarray::s![.., i * per..(i + 1) * per]).iter().fold(F::zero(), |m, v| m.max(v.abs()));
            let s = (r1[i] / r2).sqrt();
            if r1[i] > F::zero() && r2 > F::zero() && s.is_finite() && s > F::zero() { s } else { F::one() }
        })
        .collect();
    for i in 0..n {
        w1.row_mut(i).mapv_inplace(|v| v / s[i]);
        b1[i] /= s[i];
        w2.slice_mut(ndarray::s![.., i * per..(i + 1) * per]).mapv_inplace(|v| v * s[i]);
    }
    Ok(s)
}

/// Equalization of a depthwise-separable triple (DFQ): `W1` (`c × in`, bias `b1`), a
/// per-channel middle layer `D` (`c × k`: each channel's depthwise kernel, bias `bd`) and
/// `W3` (`out × c`), with positively homogeneous activations between. With ranges `r1`, `r2`,
/// `r3` per channel and `m = cbrt(r1 r2 r3)`: `s1 = r1 / m`, `s2 = m / r3`; `W1[i,:] /= s1`,
/// `b1 /= s1`, `D[i,:] *= s1 / s2`, `bd /= s2`, `W3[:,i] *= s2`. All three ranges become `m`.
/// Returns `(s1, s2)`.
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when the shapes do not chain; [`QuantError::NonFinite`].
pub fn equalize_triple<F: Float>(
    mut w1: ArrayViewMut2<'_, F>,
    mut b1: ArrayViewMut1<'_, F>,
    mut d: ArrayViewMut2<'_, F>,
    mut bd: ArrayViewMut1<'_, F>,
    mut w3: ArrayViewMut2<'_, F>,
) -> Result<(Array1<F>, Array1<F>)> {
    let c = w1.nrows();
    if c == 0 || b1.len() != c || d.nrows() != c || bd.len() != c || w3.ncols() != c {
        return Err(shape_err(&[c, c, c, c], &[b1.len(), d.nrows(), bd.len(), w3.ncols()]));
    }
    finite(w1.iter().chain(d.iter()).chain(w3.iter()).chain(b1.iter()).chain(bd.iter()))?;
    let r1 = row_ranges(&w1.view());
    let r2 = row_ranges(&d.view());
    let r3 = row_ranges(&w3.t());
    let (mut s1, mut s2) = (Array1::from_elem(c, F::one()), Array1::from_elem(c, F::one()));
    for i in 0..c {
        let m = (r1[i] * r2[i] * r3[i]).cbrt();
        if m > F::zero() && m.is_finite() {
            s1[i] = r1[i] / m;
            s2[i] = m / r3[i];
        }
        w1.row_mut(i).mapv_inplace(|v| v / s1[i]);
        b1[i] /= s1[i];
        let k = s1[i] / s2[i];
        d.row_mut(i).mapv_inplace(|v| v * k);
        bd[i] /= s2[i];
        w3.column_mut(i).mapv_inplace(|v| v * s2[i]);
    }
    Ok((s1, s2))
}

/// High-bias absorption through a ReLU (DFQ): for each channel of layer 1 whose pre-activation
/// is distributed as `N(β_i, γ_i²)` (its batch-norm shift and scale), `c_i = max(0, β_i − 3|γ_i|)`
/// is moved out of the layer: `b1_i −= c_i`, `b2 += W2[:, i] · c_i`. Exact for inputs whose
/// pre-activations stay at or above `c_i` (99.87% of them under the Gaussian model). Returns `c`.
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when the shapes do not chain; [`QuantError::NonFinite`].
pub fn absorb_high_bias<F: Float>(
    mut b1: ArrayViewMut1<'_, F>,
    w2: ArrayView2<'_, F>,
    mut b2: ArrayViewMut1<'_, F>,
    beta: ArrayView1<'_, F>,
    gamma: ArrayView1<'_, F>,
) -> Result<Array1<F>> {
    let n = b1.len();
    if w2.ncols() != n || beta.len() != n || gamma.len() != n || b2.len() != w2.nrows() {
        return Err(shape_err(&[n, n, n, w2.nrows()], &[w2.ncols(), beta.len(), gamma.len(), b2.len()]));
    }
    finite(beta.iter().chain(gamma.iter()).chain(w2.iter()))?;
    let three = F::cast(3.0);
    let c: Array1<F> = (0..n).map(|i| (beta[i] - three * gamma[i].abs()).max(F::zero())).collect();
    for i in 0..n {
        b1[i] -= c[i];
    }
    b2.zip_mut_with(&w2.dot(&c), |b, &v| *b += v);
    Ok(c)
}

/// The standard normal CDF `Φ(x)`, from a Chebyshev fit of `erfc` (the one published in
/// Numerical Recipes, fractional error below 1.2e-7 everywhere).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The standard normal density `φ(x)`.
pub fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// `E[ReLU(X)]` for `X ~ N(β, γ²)`: `β (1 − Φ(−β/γ)) + γ φ(−β/γ)` (`max(β, 0)` when `γ = 0`).
pub fn relu_expectation(beta: f64, gamma: f64) -> f64 {
    let g = gamma.abs();
    if g == 0.0 {
        return beta.max(0.0);
    }
    let z = -beta / g;
    beta * (1.0 - normal_cdf(z)) + g * normal_pdf(z)
}

/// `E[ReLU6(X)] = E[min(max(X, 0), 6)]` for `X ~ N(β, γ²)`: `E[ReLU(X)] − E[ReLU(X − 6)]`.
pub fn relu6_expectation(beta: f64, gamma: f64) -> f64 {
    relu_expectation(beta, gamma) - relu_expectation(beta - 6.0, gamma)
}

/// Analytical bias correction: the quantized layer's expected output error
/// `(W_q − W) E[x]` is subtracted from its bias, `b −= (W_q − W) E[x]`, with `E[x]` the expected
/// input (for example [`relu_expectation`] of the previous batch norm's `β`, `γ`).
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when the shapes differ; [`QuantError::NonFinite`].
pub fn correct_bias<F: Float>(
    w: ArrayView2<'_, F>,
    w_q: ArrayView2<'_, F>,
    mut b: ArrayViewMut1<'_, F>,
    expected_input: ArrayView1<'_, F>,
) -> Result<()> {
    if w.dim() != w_q.dim() || b.len() != w.nrows() || expected_input.len() != w.ncols() {
        return Err(shape_err(&[w.nrows(), w.ncols()], &[b.len(), expected_input.len()]));
    }
    finite(w.iter().chain(w_q.iter()).chain(expected_input.iter()))?;
    let err = (&w_q - &w).dot(&expected_input);
    b.zip_mut_with(&err, |b, &e| *b -= e);
    Ok(())
}

/// Empirical bias correction: with the float model's and the quantized model's outputs of this
/// layer on the same calibration inputs (`batch × out` each; the quantized model's inputs to
/// this layer already carry the earlier layers' quantization), subtracts the mean output
/// error: `b −= mean_batch(y_quant − y_float)`. Afterwards the quantized layer's mean output on
/// the calibration set equals the float layer's.
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when the shapes differ; [`QuantError::Empty`] for an empty
/// batch; [`QuantError::NonFinite`].
pub fn correct_bias_empirical<F: Float>(mut b: ArrayViewMut1<'_, F>, y_float: ArrayView2<'_, F>, y_quant: ArrayView2<'_, F>) -> Result<()> {
    if y_float.dim() != y_quant.dim() || y_float.ncols() != b.len() {
        return Err(shape_err(y_float.shape(), y_quant.shape()));
    }
    if y_float.nrows() == 0 {
        return Err(QuantError::Empty);
    }
    finite(y_float.iter().chain(y_quant.iter()))?;
    let err = (&y_quant - &y_float).mean_axis(Axis(0)).ok_or(QuantError::Empty)?;
    b.zip_mut_with(&err, |b, &e| *b -= e);
    Ok(())
}

/// AdaRound settings (defaults from the paper and AIMET: 10,000 iterations, Adam at 1e-3,
/// `λ = 0.01`, `β` annealed from 20 to 2 after a 20% warm start).
///
/// | Name | Default | Range |
/// |---|---|---|
/// | `bits` | 4 | `2..=8` (symmetric, `−(2^(b−1) − 1) ..= 2^(b−1) − 1`) |
/// | `iterations` | 10,000 | `≥ 1` |
/// | `lr` | 1e-3 | finite, `> 0` |
/// | `lambda` | 0.01 | finite, `≥ 0` |
/// | `beta` | (20, 2) | finite, `> 0` |
/// | `warm_start` | 0.2 | `[0, 1)` |
/// | `batch_size` | 0 (whole batch) | any (mini-batches of 32 or so keep large calibration sets affordable) |
/// | `seed` | 0 | any |
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaRound {
    /// Weight code width.
    pub bits: u8,
    /// Adam steps.
    pub iterations: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Weight of the rounding regulariser.
    pub lambda: f64,
    /// `β` at the end of the warm start and at the last iteration (cosine annealing).
    pub beta: (f64, f64),
    /// Fraction of the iterations without the regulariser.
    pub warm_start: f64,
    /// Calibration rows per Adam step, drawn with replacement (seeded); the whole batch when
    /// it has no more rows (the default, 0, means the whole batch).
    pub batch_size: usize,
    /// Seed of the mini-batch draws.
    pub seed: u64,
}

impl Default for AdaRound {
    fn default() -> Self {
        Self { bits: 4, iterations: 10_000, lr: 1e-3, lambda: 0.01, beta: (20.0, 2.0), warm_start: 0.2, batch_size: 0, seed: 0 }
    }
}

/// The result of [`AdaRound::round`].
#[derive(Debug, Clone, PartialEq)]
pub struct AdaRoundResult {
    /// The signed integer codes, `out × in`.
    pub codes: Array2<i32>,
    /// The per-output-channel steps used.
    pub scales: Array1<f64>,
    /// The dequantized weights `S_o · code`.
    pub weights: Array2<f64>,
    /// `‖Ŵ x − W x‖²` averaged over the calibration batch, for the learned rounding.
    pub reconstruction: f64,
    /// The same for round-to-nearest with the same steps.
    pub nearest: f64,
}

/// A layer `W` (`out × in`) and its calibration inputs (`batch × in`), checked and in f64.
fn layer_and_inputs<F: Float>(w: ArrayView2<'_, F>, x: ArrayView2<'_, F>) -> Result<(Array2<f64>, Array2<f64>)> {
    if x.ncols() != w.ncols() {
        return Err(shape_err(&[x.nrows(), w.ncols()], x.shape()));
    }
    if w.is_empty() || x.nrows() == 0 {
        return Err(QuantError::Empty);
    }
    finite(w.iter().chain(x.iter()))?;
    Ok((w.mapv(|v| v.as_f64()), x.mapv(|v| v.as_f64())))
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

impl AdaRound {
    /// Checks the table's ranges and returns the settings.
    ///
    /// # Errors
    /// [`QuantError::InvalidBits`], [`QuantError::InvalidIterations`],
    /// [`QuantError::InvalidSetting`] (for `lr`, `lambda`, `beta` or `warm_start` out of range).
    pub fn check(self) -> Result<Self> {
        if !(2..=8).contains(&self.bits) {
            return Err(QuantError::InvalidBits { bits: self.bits, min: 2, max: 8 });
        }
        if self.iterations == 0 {
            return Err(QuantError::InvalidIterations);
        }
        for (name, v) in [("lr", self.lr), ("beta.0", self.beta.0), ("beta.1", self.beta.1)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(QuantError::InvalidSetting { name, value: v });
            }
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(QuantError::InvalidSetting { name: "lambda", value: self.lambda });
        }
        if !(0.0..1.0).contains(&self.warm_start) {
            return Err(QuantError::InvalidSetting { name: "warm_start", value: self.warm_start });
        }
        Ok(self)
    }

    /// Learns the rounding of one layer `W` (`out × in`) on its calibration inputs `x`
    /// (`batch × in`; with earlier layers already quantized, their quantized outputs), with
    /// symmetric per-output-channel steps `S_o = max|W[o,:]| / (2^(b−1) − 1)`. Memory: `x`, `W`
    /// and a few `out × in` buffers; no activations of other layers.
    ///
    /// `h(V) = clamp(1.2 σ(V) − 0.1, 0, 1)`, `W̃ = S clamp(⌊W/S⌋ + h(V), qmin, qmax)`, loss
    /// `mean_batch ‖W̃ x − W x‖² + λ Σ (1 − |2h − 1|^β)`, `V` initialised so `h(V) = frac(W/S)`,
    /// Adam on `V` over the full batch or seeded mini-batches (`batch_size`); the rounding is
    /// hard (`V ≥ 0` rounds up) at the end. Cost per step: two `rows × in × out` products.
    ///
    /// # Errors
    /// [`QuantError::InvalidBits`], [`QuantError::InvalidIterations`],
    /// [`QuantError::InvalidSetting`] (for `lr`, `lambda`, `beta` or `warm_start` out of range),
    /// [`QuantError::ShapeMismatch`], [`QuantError::Empty`], [`QuantError::NonFinite`].
    pub fn round<F: Float>(&self, w: ArrayView2<'_, F>, x: ArrayView2<'_, F>) -> Result<AdaRoundResult> {
        self.check()?;
        let (w, x) = layer_and_inputs(w, x)?;
        let (out, inp) = w.dim();
        let qmax = f64::from((1i32 << (self.bits - 1)) - 1);
        let scales: Array1<f64> = w
            .rows()
            .into_iter()
            .map(|r| r.iter().fold(0.0f64, |m, v| m.max(v.abs())) / qmax)
            .map(|s| if s > 0.0 { s } else { 1.0 })
            .collect();
        let scaled = Array2::from_shape_fn((out, inp), |(o, k)| w[[o, k]] / scales[o]);
        let floor = scaled.mapv(f64::floor);
        let target = x.dot(&w.t()); // batch × out
        let recon = |codes: &Array2<f64>| {
            let wq = Array2::from_shape_fn((out, inp), |(o, k)| codes[[o, k]] * scales[o]);
            (x.dot(&wq.t()) - &target).mapv(|r| r * r).sum() / x.nrows() as f64
        };
        let nearest_codes = scaled.mapv(|v| v.round_ties_even().clamp(-qmax, qmax));
        // V with h(V) = frac(W/S): σ(V) = (frac + 0.1) / 1.2.
        let mut v = Array2::from_shape_fn((out, inp), |(o, k)| {
            let p = ((scaled[[o, k]] - floor[[o, k]]) + 0.1) / 1.2;
            (p / (1.0 - p)).ln()
        });
        let mut adam = quant_core::optim::Adam::new(out * inp);
        let warm = (self.warm_start * self.iterations as f64) as usize;
        for it in 0..self.iterations {
            let h = v.mapv(|vv| (1.2 * sigmoid(vv) - 0.1).clamp(0.0, 1.0));
            let pre = &floor + &h;
            let codes = pre.mapv(|c| c.clamp(-qmax, qmax));
            let wq = Array2::from_shape_fn((out, inp), |(o, k)| codes[[o, k]] * scales[o]);
            // d(mean_batch ‖r‖²)/dW̃ = (2 / batch) rᵀ x, on the whole batch or a seeded draw.
            let g_w = if self.batch_size == 0 || self.batch_size >= x.nrows() {
                let r = x.dot(&wq.t()) - &target; // batch × out
                r.t().dot(&x) * (2.0 / x.nrows() as f64)
            } else {
                let rows: Vec<usize> =
                    (0..self.batch_size).map(|j| quant_core::rng::index(self.seed, (it * self.batch_size + j) as u64, x.nrows())).collect();
                let xb = x.select(Axis(0), &rows);
                let r = xb.dot(&wq.t()) - &target.select(Axis(0), &rows);
                r.t().dot(&xb) * (2.0 / rows.len() as f64)
            };
            let beta = if it < warm {
                None
            } else {
                let t = (it - warm) as f64 / (self.iterations - warm).max(1) as f64;
                Some(self.beta.1 + 0.5 * (self.beta.0 - self.beta.1) * (1.0 + (std::f64::consts::PI * t).cos()))
            };
            let grad = Array2::from_shape_fn((out, inp), |(o, k)| {
                let s = sigmoid(v[[o, k]]);
                let hv = 1.2 * s - 0.1;
                // The clamps on h and on the code pass no gradient.
                if !(0.0..=1.0).contains(&hv) || pre[[o, k]] < -qmax || pre[[o, k]] > qmax {
                    return 0.0;
                }
                let dh_dv = 1.2 * s * (1.0 - s);
                let mut g = g_w[[o, k]] * scales[o];
                if let Some(beta) = beta {
                    let u = 2.0 * hv - 1.0;
                    g += self.lambda * -beta * u.abs().powf(beta - 1.0) * u.signum() * 2.0;
                }
                g * dh_dv
            });
            // Both in row-major order: the i-th update is the i-th element of `v`.
            let mut vs = v.iter_mut();
            adam.step(grad.iter().copied(), self.lr, |_, d| {
                if let Some(x) = vs.next() {
                    *x -= d;
                }
            });
        }
        let codes =
            Array2::from_shape_fn((out, inp), |(o, k)| (floor[[o, k]] + if v[[o, k]] >= 0.0 { 1.0 } else { 0.0 }).clamp(-qmax, qmax));
        let reconstruction = recon(&codes);
        let nearest = recon(&nearest_codes);
        let weights = Array2::from_shape_fn((out, inp), |(o, k)| codes[[o, k]] * scales[o]);
        Ok(AdaRoundResult { codes: codes.mapv(|c| c as i32), scales, weights, reconstruction, nearest })
    }

    /// AdaRound over a stack of linear layers `y = act(W x + b)` (ReLU after every layer but
    /// the last), layer by layer: each layer is rounded on the inputs the already-rounded
    /// layers before it produce from `x`. Only one layer's activations are held at a time.
    /// `layers[l]` is `(W_l` (`out × in`), `b_l)`.
    ///
    /// # Errors
    /// As [`round`](Self::round); [`QuantError::ShapeMismatch`] when the layers do not chain
    /// or a bias has the wrong length.
    pub fn round_relu_stack<F: Float>(
        &self,
        layers: &[(ArrayView2<'_, F>, ArrayView1<'_, F>)],
        x: ArrayView2<'_, F>,
    ) -> Result<Vec<AdaRoundResult>> {
        let mut h = x.mapv(|v| v.as_f64());
        let mut out = Vec::with_capacity(layers.len());
        for (l, (w, b)) in layers.iter().enumerate() {
            if b.len() != w.nrows() {
                return Err(shape_err(&[w.nrows()], &[b.len()]));
            }
            let r = self.round(w.mapv(|v| v.as_f64()).view(), h.view())?;
            let b = b.mapv(|v| v.as_f64());
            h = h.dot(&r.weights.t()) + &b;
            if l + 1 < layers.len() {
                h.mapv_inplace(|v| v.max(0.0));
            }
            out.push(r);
        }
        Ok(out)
    }
}

/// EasyQuant settings: scale candidates `α · S₀` for `α` on a uniform grid over
/// `[lo, hi]` (which always includes 1), alternating weight and activation searches.
///
/// | Name | Default | Range |
/// |---|---|---|
/// | `weight_bits`, `activation_bits` | 8, 8 | `2..=8` (symmetric) |
/// | `range` | (0.5, 2.0) | `0 < lo ≤ 1 ≤ hi`, finite |
/// | `candidates` | 100 | `≥ 1` |
/// | `rounds` | 2 | `≥ 1` (ncnn's converter does one pass; the paper alternates several) |
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EasyQuant {
    /// Weight code width.
    pub weight_bits: u8,
    /// Activation code width.
    pub activation_bits: u8,
    /// The candidate range as multiples of the initial (max-abs) scale.
    pub range: (f64, f64),
    /// Candidates per search.
    pub candidates: usize,
    /// Alternations of the weight and the activation search.
    pub rounds: usize,
}

impl Default for EasyQuant {
    fn default() -> Self {
        Self { weight_bits: 8, activation_bits: 8, range: (0.5, 2.0), candidates: 100, rounds: 2 }
    }
}

/// The result of [`EasyQuant::search`].
#[derive(Debug, Clone, PartialEq)]
pub struct EasyQuantResult {
    /// Per-output-channel weight steps.
    pub weight_scales: Array1<f64>,
    /// The activation step (per tensor).
    pub activation_scale: f64,
    /// Cosine similarity of the layer's float and quantized outputs on the calibration batch
    /// with these scales.
    pub cosine: f64,
    /// The same with the initial max-abs scales.
    pub initial_cosine: f64,
}

/// Symmetric fake quantization with step `s` and largest code `q`.
fn fq(v: f64, s: f64, q: f64) -> f64 {
    s * (v / s).round_ties_even().clamp(-q, q)
}

fn cosine(a: impl Iterator<Item = (f64, f64)>) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

impl EasyQuant {
    /// Checks the table's ranges and returns the settings.
    ///
    /// # Errors
    /// [`QuantError::InvalidBits`], [`QuantError::InvalidIterations`] (zero candidates or
    /// rounds), [`QuantError::InvalidSetting`] (bad range).
    pub fn check(self) -> Result<Self> {
        for bits in [self.weight_bits, self.activation_bits] {
            if !(2..=8).contains(&bits) {
                return Err(QuantError::InvalidBits { bits, min: 2, max: 8 });
            }
        }
        if self.candidates == 0 || self.rounds == 0 {
            return Err(QuantError::InvalidIterations);
        }
        let (lo, hi) = self.range;
        if !(lo.is_finite() && lo > 0.0 && lo <= 1.0) {
            return Err(QuantError::InvalidSetting { name: "range.0", value: lo });
        }
        if !(hi.is_finite() && hi >= 1.0) {
            return Err(QuantError::InvalidSetting { name: "range.1", value: hi });
        }
        Ok(self)
    }

    /// Searches the scales of one linear layer `W` (`out × in`) for the calibration inputs `x`
    /// (`batch × in`) that maximise the cosine similarity between the float output `x Wᵀ` and
    /// the quantized one: each round first searches every output channel's weight step (that
    /// channel's output column's cosine, activations fixed), then the activation step (the
    /// whole output's cosine, weights fixed). The best whole-output cosine seen (the initial
    /// scales included) is returned, so it is never below the initial one.
    ///
    /// Cost: `rounds · candidates · 2 · batch · in · out` multiply-adds.
    ///
    /// # Errors
    /// [`QuantError::InvalidBits`], [`QuantError::InvalidIterations`] (zero candidates or
    /// rounds), [`QuantError::InvalidSetting`] (bad range), [`QuantError::ShapeMismatch`],
    /// [`QuantError::Empty`], [`QuantError::NonFinite`].
    pub fn search<F: Float>(&self, w: ArrayView2<'_, F>, x: ArrayView2<'_, F>) -> Result<EasyQuantResult> {
        self.check()?;
        let (lo, hi) = self.range;
        let (w, x) = layer_and_inputs(w, x)?;
        let (out, inp) = w.dim();
        let (qw, qa) = (f64::from((1i32 << (self.weight_bits - 1)) - 1), f64::from((1i32 << (self.activation_bits - 1)) - 1));
        let positive = |s: f64| if s > 0.0 && s.is_finite() { s } else { 1.0 };
        let mut ws: Array1<f64> = w.rows().into_iter().map(|r| positive(r.iter().fold(0.0f64, |m, v| m.max(v.abs())) / qw)).collect();
        let mut a_s = positive(x.iter().fold(0.0f64, |m, v| m.max(v.abs())) / qa);
        let alphas: Vec<f64> = {
            let mut v: Vec<f64> = (0..self.candidates)
                .map(|i| if self.candidates == 1 { 1.0 } else { lo + (hi - lo) * i as f64 / (self.candidates - 1) as f64 })
                .collect();
            v.push(1.0);
            v.sort_by(f64::total_cmp);
            v.dedup();
            v
        };
        let target = x.dot(&w.t());
        let quant_w = |ws: &Array1<f64>| Array2::from_shape_fn((out, inp), |(o, k)| fq(w[[o, k]], ws[o], qw));
        let whole = |ws: &Array1<f64>, a_s: f64| {
            let xq = x.mapv(|v| fq(v, a_s, qa));
            cosine(xq.dot(&quant_w(ws).t()).iter().copied().zip(target.iter().copied()))
        };
        let initial_cosine = whole(&ws, a_s);
        let mut best = (initial_cosine, ws.clone(), a_s);
        for _ in 0..self.rounds {
            // Weights, channel by channel, with the activations fixed.
            let xq = x.mapv(|v| fq(v, a_s, qa));
            let s0 = ws.clone();
            for o in 0..out {
                let col = target.column(o);
                let mut top = (f64::NEG_INFINITY, ws[o]);
                for &a in &alphas {
                    let s = s0[o] * a;
                    let row: Array1<f64> = w.row(o).mapv(|v| fq(v, s, qw));
                    let c = cosine(xq.dot(&row).iter().copied().zip(col.iter().copied()));
                    if c > top.0 {
                        top = (c, s);
                    }
                }
                ws[o] = top.1;
            }
            // The activation step, with the weights fixed.
            let wq = quant_w(&ws);
            let a0 = a_s;
            let mut top = (f64::NEG_INFINITY, a_s);
            for &a in &alphas {
                let s = a0 * a;
                let c = cosine(x.mapv(|v| fq(v, s, qa)).dot(&wq.t()).iter().copied().zip(target.iter().copied()));
                if c > top.0 {
                    top = (c, s);
                }
            }
            a_s = top.1;
            if top.0 > best.0 {
                best = (top.0, ws.clone(), a_s);
            }
        }
        Ok(EasyQuantResult { weight_scales: best.1, activation_scale: best.2, cosine: best.0, initial_cosine })
    }
}
