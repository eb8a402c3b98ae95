//! The straight-through estimator and LSQ gradients for a learnable scale and zero point.

use ndarray::{Array, ArrayBase, Data, Dimension, Zip};

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::kernel;
use crate::params::QuantParams;
use crate::spec::Scheme;
use crate::uniform::row_major;

/// The STE backward pass: `grad` where `mask` is `true`, zero elsewhere.
///
/// `mask` is the [`FakeQuantized::mask`](crate::FakeQuantized) of the forward pass.
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when the shapes differ.
pub fn ste_backward<F, S1, S2, D>(grad: &ArrayBase<S1, D>, mask: &ArrayBase<S2, D>) -> Result<Array<F, D>>
where
    F: Float,
    S1: Data<Elem = F>,
    S2: Data<Elem = bool>,
    D: Dimension,
{
    if grad.shape() != mask.shape() {
        return Err(QuantError::ShapeMismatch { expected: grad.shape().to_vec(), got: mask.shape().to_vec() });
    }
    Ok(Zip::from(grad).and(mask).map_collect(|&g, &m| if m { g } else { F::zero() }))
}

/// Gradients of LSQ (learned step size quantization) with a learnable zero point.
#[derive(Debug, Clone, PartialEq)]
pub struct LsqGradients<F, D: Dimension> {
    /// Gradient with respect to the input (the STE: passed inside the range, zero outside).
    pub input: Array<F, D>,
    /// Gradient with respect to each slice's step `S`.
    pub scale: Vec<F>,
    /// Gradient with respect to each slice's shift: the zero point `Z` for the integer
    /// zero-point schemes, the real offset `m` for [`Scheme::AsymmetricGrid`].
    pub zero_point: Vec<F>,
}

/// LSQ / LSQ+ gradients of `x̂ = S·(clamp(round((x − m)/S) + Z) − Z) + m` given the upstream
/// gradient `grad_out` (NUMERICS.md §3).
///
/// Per element, with `q` the unclamped rounded code, `qmin = 0`, `qmax` the largest code and
/// `g = 1/√(N·Q_P)` when `grad_scaling` is on (`N` the elements sharing the slice, `Q_P` the
/// largest positive integer of the scheme's natural domain; `g = 1` otherwise):
/// - inside: `dS += dY·((q − Z) − (x − m)/S)·g` (that is `(x̂ − x)/S`), shift `+= 0`, `dx = dY`;
/// - below: `dS += dY·(qmin − Z)·g`, `dZ += −dY·S·g` (`dm += dY·g`), `dx = 0`;
/// - above: `dS += dY·(qmax − Z)·g`, `dZ += −dY·S·g` (`dm += dY·g`), `dx = 0`.
///
/// The per-slice sums are accumulated in f64 and rounded to `F` once.
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when `grad_out` and `x` differ in shape,
/// [`QuantError::GradientOverflow`] when a slice's step or shift gradient is too large for
/// `F` (finite input can do that: `N` terms of `dY·S`), and the errors of
/// [`QuantParams::quantize`].
pub fn lsq_gradients<F, S1, S2, D>(
    x: &ArrayBase<S1, D>,
    grad_out: &ArrayBase<S2, D>,
    params: &QuantParams<F>,
    grad_scaling: bool,
) -> Result<LsqGradients<F, D>>
where
    F: Float,
    S1: Data<Elem = F>,
    S2: Data<Elem = F>,
    D: Dimension,
{
    if x.shape() != grad_out.shape() {
        return Err(QuantError::ShapeMismatch { expected: x.shape().to_vec(), got: grad_out.shape().to_vec() });
    }
    let layout = params.layout_for(x.shape())?;
    let data = row_major(x);
    let dy = row_major(grad_out);
    if let Some(index) = data.iter().chain(dy.iter()).position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index: index % data.len() });
    }
    let spec = params.spec();
    let grid = spec.scheme() == Scheme::AsymmetricGrid;
    let umax = F::from_int(i32::from(spec.max_code()));
    let q_p = f64::from(i32::from(spec.max_code()) - spec.scheme().signed_offset(spec.bits())).max(1.0);
    let kernels = params.kernels();
    let mut counts = vec![0usize; params.len()];
    layout.for_each_segment(0..data.len(), |p, r| counts[p] += r.len());
    // The sums are kept in f64: a slice's gradient adds up to N terms of dY·S, which can
    // pass F's range (f32) while every input is finite.
    let mut d_s = vec![0f64; params.len()];
    let mut d_z = vec![0f64; params.len()];
    let mut dx = vec![F::zero(); data.len()];
    let mut q = Vec::new();
    layout.for_each_segment(0..data.len(), |p, r| {
        let sp = &params.slices()[p];
        let g = if grad_scaling { 1.0 / (counts[p] as f64 * q_p).sqrt() } else { 1.0 };
        let z = F::from_int(sp.zero_point);
        q.resize(r.len(), F::zero());
        kernel::unclamped_run(&kernels[p], spec.rounding(), r.start, &data[r.clone()], &mut q);
        for (j, i) in r.enumerate() {
            let d = dy[i];
            let qj = q[j];
            let (bound, inside) = if qj < F::zero() {
                (F::zero(), false)
            } else if qj > umax {
                (umax, false)
            } else {
                (qj, true)
            };
            let dg = d.as_f64() * g;
            if inside {
                // `(q − Z) − (x − m)/S` is at most half a step from zero here: computed in F.
                d_s[p] += dg * ((qj - z) - (data[i] - sp.offset) / sp.scale).as_f64();
                dx[i] = d;
            } else {
                d_s[p] += dg * (bound - z).as_f64();
                d_z[p] += if grid { dg } else { -dg * sp.scale.as_f64() };
            }
        }
    });
    let narrow = |sums: Vec<f64>| -> Result<Vec<F>> {
        sums.into_iter()
            .enumerate()
            .map(|(slice, v)| Some(F::cast(v)).filter(|v| v.is_finite()).ok_or(QuantError::GradientOverflow { slice }))
            .collect()
    };
    let (scale, zero_point) = (narrow(d_s)?, narrow(d_z)?);
    let input = Array::from_shape_vec(x.raw_dim(), dx)
        .map_err(|_| QuantError::ShapeMismatch { expected: x.shape().to_vec(), got: vec![data.len()] })?;
    Ok(LsqGradients { input, scale, zero_point })
}
