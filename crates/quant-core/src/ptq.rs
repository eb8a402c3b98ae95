//! Data-free and calibration-light post-training methods on plain weight matrices: batch-norm
//! folding, DFQ's cross-layer equalization (pairs and depthwise-separable triples) and
//! high-bias absorption, and bias correction (analytical from batch-norm statistics, or
//! empirical from calibration data).
//!
//! Weights are `out × in` (PyTorch's `Linear.weight`: `y = W x + b`); a convolution is handled
//! by viewing its weight as `out × (in · kh · kw)` (for equalization the per-input-channel
//! range of the next layer is then over all its kernel positions: pass its columns grouped by
//! channel with [`equalize_pair_grouped`]). Formulas: docs/numerics.md, "Post-training methods".

use ndarray::{Array1, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};

use crate::error::{QuantError, Result};
use crate::float::Float;

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
    if channels != n || b1.len() != n || n == 0 || w2.ncols() % n != 0 {
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
