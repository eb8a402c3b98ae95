//! Integer-only inference: int8 × int8 → int32 linear layers with the zero-point terms folded
//! into the bias, and requantization by a fixed-point multiplier (gemmlowp / TFLite
//! arithmetic) or an f32 multiplier.
//!
//! Conventions (docs/numerics.md, "Integer-only linear layers"): activations are int8 with a
//! zero point, `x = S_x (q_x − Z_x)`; weights are int8 symmetric per output channel,
//! `w = S_w[o] q_w`; the layer computes
//! `acc[o] = Σ_k q_x[k] q_w[o,k] + q_b[o]` with `q_b[o] = round(b[o] / (S_x S_w[o])) − Z_x Σ_k q_w[o,k]`,
//! then `q_y = clamp(Z_y + requant(acc[o], M[o]), lo, 127)` with `M[o] = S_x S_w[o] / S_y` and
//! `lo = Z_y` when ReLU is fused (the clamp is the ReLU), −128 otherwise.

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::error::{QuantError, Result};

mod gemm;
pub use gemm::gemm_i8_reference;
#[doc(hidden)]
pub use gemm::{KernelChoice, gemm_i8_with};

/// gemmlowp's `SaturatingRoundingDoublingHighMul`: the high 32 bits of `2·a·b`, rounded to
/// nearest with ties upward (toward +∞: gemmlowp nudges by `±2^30` and truncates toward
/// zero, so `1.5 → 2` but `−1.5 → −1`), saturating the one overflowing case
/// `a = b = i32::MIN`.
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = i64::from(a) * i64::from(b);
    let nudge = if ab >= 0 { 1i64 << 30 } else { 1 - (1i64 << 30) };
    // Division truncates toward zero, as in gemmlowp.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp's `RoundingDivideByPOT`: `x / 2^exponent` rounded to nearest, ties away from zero
/// (`exponent` in `0..=31`).
pub fn rounding_divide_by_pot(x: i32, exponent: u32) -> i32 {
    let exponent = exponent.min(31);
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// A positive real multiplier as `M0 · 2^(shift − 31)` with `M0` in `[2^30, 2^31)` (TFLite's
/// `QuantizeMultiplier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedMultiplier {
    m0: i32,
    shift: i32,
}

impl FixedMultiplier {
    /// The fixed-point form of `m`.
    ///
    /// # Errors
    /// [`QuantError::InvalidMultiplier`] unless `m` is finite and in `(0, 2^31)`; multipliers
    /// below `2^-31` (which would shift every accumulator to 0) are refused too.
    pub fn new(m: f64) -> Result<Self> {
        if !(m.is_finite() && m >= 2f64.powi(-31) && m < 2f64.powi(31)) {
            return Err(QuantError::InvalidMultiplier { value: m });
        }
        // m = f · 2^e with f in [0.5, 1).
        let mut e = m.log2().floor() as i32 + 1;
        let mut f = m / 2f64.powi(e);
        if f >= 1.0 {
            f /= 2.0;
            e += 1;
        } else if f < 0.5 {
            f *= 2.0;
            e -= 1;
        }
        let mut q = (f * 2f64.powi(31)).round() as i64;
        if q == 1i64 << 31 {
            q /= 2;
            e += 1;
        }
        Ok(Self { m0: q as i32, shift: e })
    }

    /// The integer multiplier `M0`.
    pub fn m0(&self) -> i32 {
        self.m0
    }
    /// The power of two: `M = M0 · 2^(shift − 31)`.
    pub fn shift(&self) -> i32 {
        self.shift
    }
    /// The real value represented.
    pub fn value(&self) -> f64 {
        f64::from(self.m0) * 2f64.powi(self.shift - 31)
    }

    #[inline(always)]
    fn apply_inline(&self, x: i32) -> i32 {
        self.apply(x)
    }

    /// `x · M` rounded in integer arithmetic (TFLite's `MultiplyByQuantizedMultiplier`): the
    /// doubling high multiply, then a rounding right shift for `M < 1`. For `M ≥ 1` TFLite
    /// shifts `x` left first, which can overflow int32; here that product is formed in 128
    /// bits with the same rounding and saturated to int32 instead.
    #[inline]
    pub fn apply(&self, x: i32) -> i32 {
        if self.shift > 0 {
            let ab = i128::from(x) * i128::from(self.m0) * (1i128 << self.shift);
            let nudge = if ab >= 0 { 1i128 << 30 } else { 1 - (1i128 << 30) };
            let v = (ab + nudge) / (1i128 << 31);
            return v.clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as i32;
        }
        rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, self.m0), (-self.shift) as u32)
    }
}

/// How accumulators are scaled to the output: in integer arithmetic or with an f32 multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Requantization {
    /// `M0 · 2^(shift − 31)` in int32 arithmetic (gemmlowp rounding). The default.
    #[default]
    FixedPoint,
    /// `round_half_even(acc · M)` with `M` as f32.
    Float,
}

/// The affine int8 quantization of an activation tensor: `x = scale · (q − zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationQuant {
    /// The step `S` (finite, positive).
    pub scale: f32,
    /// The zero point `Z`, in `−128..=127`.
    pub zero_point: i32,
}

impl ActivationQuant {
    /// The int8 quantization covering `[lo, hi]` (widened to include 0, so 0 is exact).
    ///
    /// # Errors
    /// [`QuantError::NonFinite`] for a non-finite bound.
    pub fn from_range(lo: f32, hi: f32) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite()) {
            return Err(QuantError::NonFinite { index: 0 });
        }
        let (lo, hi) = (lo.min(0.0).min(hi), hi.max(0.0).max(lo));
        let scale = ((f64::from(hi) - f64::from(lo)) / 255.0) as f32;
        let scale = if scale > 0.0 && scale.is_finite() { scale } else { f32::EPSILON };
        let zero_point = (-128.0 - f64::from(lo) / f64::from(scale)).round().clamp(-128.0, 127.0) as i32;
        Ok(Self { scale, zero_point })
    }

    fn check(&self) -> Result<()> {
        if !(self.scale.is_finite() && self.scale > 0.0 && (-128..=127).contains(&self.zero_point)) {
            return Err(QuantError::InvalidParams {
                index: 0,
                reason: "activation scale must be finite and positive, zero point in -128..=127",
            });
        }
        Ok(())
    }

    /// Quantizes real values (half-even rounding, saturating at the int8 limits).
    pub fn quantize(&self, x: f32) -> i8 {
        let q = (f64::from(x) / f64::from(self.scale)).round_ties_even() + f64::from(self.zero_point);
        q.clamp(-128.0, 127.0) as i8
    }

    /// The real value of a code.
    pub fn dequantize(&self, q: i8) -> f32 {
        self.scale * (i32::from(q) - self.zero_point) as f32
    }
}

/// An int8 linear layer `y = W x + b` (optionally followed by ReLU) run in integer arithmetic.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLinear {
    out_features: usize,
    in_features: usize,
    weights: Vec<i8>,
    packed: gemm::PackedWeights,
    weight_scales: Vec<f32>,
    bias: Vec<i32>,
    input: ActivationQuant,
    output: ActivationQuant,
    fixed: Vec<FixedMultiplier>,
    float: Vec<f32>,
    requant: Requantization,
    relu: bool,
}

impl QuantizedLinear {
    /// Quantizes a float layer: `w` is `out × in` (PyTorch's `Linear.weight`), quantized
    /// symmetrically per output channel to `−127..=127`; the bias to int32 at `S_x S_w[o]`
    /// with the input zero-point term folded in.
    ///
    /// # Errors
    /// [`QuantError::ShapeMismatch`] for a bias of the wrong length or an empty matrix;
    /// [`QuantError::NonFinite`] for non-finite weights or bias; [`QuantError::InvalidParams`]
    /// for invalid activation quantizations; [`QuantError::InvalidMultiplier`] when a channel's
    /// `S_x S_w / S_y` has no fixed-point form; [`QuantError::TableOverflow`] when a bias does
    /// not fit in int32 at its scale.
    pub fn new(
        w: ArrayView2<'_, f32>,
        b: Option<ArrayView1<'_, f32>>,
        input: ActivationQuant,
        output: ActivationQuant,
        requant: Requantization,
        relu: bool,
    ) -> Result<Self> {
        input.check()?;
        output.check()?;
        let (out_features, in_features) = w.dim();
        if out_features == 0 || in_features == 0 {
            return Err(QuantError::Empty);
        }
        if let Some(b) = &b
            && b.len() != out_features
        {
            return Err(QuantError::ShapeMismatch { expected: vec![out_features], got: vec![b.len()] });
        }
        if let Some(index) = w.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite { index });
        }
        if let Some(index) = b.as_ref().and_then(|b| b.iter().position(|v| !v.is_finite())) {
            return Err(QuantError::NonFinite { index });
        }
        let mut weights = Vec::with_capacity(out_features * in_features);
        let (mut weight_scales, mut bias, mut fixed, mut float) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (o, row) in w.rows().into_iter().enumerate() {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            let q: Vec<i8> = row.iter().map(|&v| (v / s).round_ties_even().clamp(-127.0, 127.0) as i8).collect();
            let sum_q: i64 = q.iter().map(|&v| i64::from(v)).sum();
            let acc_scale = f64::from(input.scale) * f64::from(s);
            let qb = b.as_ref().map_or(0.0, |b| (f64::from(b[o]) / acc_scale).round_ties_even());
            let folded = qb - f64::from(input.zero_point) * sum_q as f64;
            if folded.abs() >= 2f64.powi(31) {
                return Err(QuantError::TableOverflow { value: folded });
            }
            let m = acc_scale / f64::from(output.scale);
            fixed.push(FixedMultiplier::new(m)?);
            float.push(m as f32);
            bias.push(folded as i32);
            weight_scales.push(s);
            weights.extend(q);
        }
        let packed = gemm::PackedWeights::new(&weights, out_features, in_features);
        Ok(Self { out_features, in_features, weights, packed, weight_scales, bias, input, output, fixed, float, requant, relu })
    }

    /// `(out_features, in_features)`.
    pub fn dim(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }
    /// The int8 weights, `out × in` row-major.
    pub fn weights(&self) -> &[i8] {
        &self.weights
    }
    /// Per-output-channel weight steps.
    pub fn weight_scales(&self) -> &[f32] {
        &self.weight_scales
    }
    /// The int32 bias with the zero-point term folded in.
    pub fn bias(&self) -> &[i32] {
        &self.bias
    }
    /// The per-channel fixed-point multipliers.
    pub fn multipliers(&self) -> &[FixedMultiplier] {
        &self.fixed
    }
    /// The input quantization.
    pub fn input(&self) -> ActivationQuant {
        self.input
    }
    /// The output quantization.
    pub fn output(&self) -> ActivationQuant {
        self.output
    }
    /// A copy using another requantization path.
    pub fn with_requantization(&self, requant: Requantization) -> Self {
        Self { requant, ..self.clone() }
    }

    /// The int32 accumulators `Σ_k q_x q_w + q_b` of a batch (`batch × in` int8).
    ///
    /// # Errors
    /// [`QuantError::ShapeMismatch`] when `x` does not have `in_features` columns.
    pub fn accumulate(&self, x: ArrayView2<'_, i8>) -> Result<Array2<i32>> {
        let (batch, n) = (x.nrows(), self.out_features);
        let acc = self.accumulate_flat(x)?;
        Array2::from_shape_vec((batch, n), acc).map_err(|_| QuantError::ShapeMismatch { expected: vec![batch, n], got: vec![batch * n] })
    }

    /// The accumulators, row-major `batch × out`.
    fn accumulate_flat(&self, x: ArrayView2<'_, i8>) -> Result<Vec<i32>> {
        let (batch, k) = x.dim();
        if k != self.in_features {
            return Err(QuantError::ShapeMismatch { expected: vec![batch, self.in_features], got: vec![batch, k] });
        }
        let xs: std::borrow::Cow<'_, [i8]> = match x.as_slice() {
            Some(s) => s.into(),
            None => x.iter().copied().collect::<Vec<_>>().into(),
        };
        let mut acc = vec![0i32; batch * self.out_features];
        gemm::gemm(&xs, &self.packed, batch, k, self.out_features, &mut acc);
        for row in acc.chunks_exact_mut(self.out_features) {
            for (a, &b) in row.iter_mut().zip(&self.bias) {
                *a = a.wrapping_add(b);
            }
        }
        Ok(acc)
    }

    /// Runs the layer on a batch of int8 inputs (`batch × in`), returning int8 outputs.
    ///
    /// # Errors
    /// As [`accumulate`](Self::accumulate).
    pub fn forward(&self, x: ArrayView2<'_, i8>) -> Result<Array2<i8>> {
        let (batch, n) = (x.nrows(), self.out_features);
        let acc = self.accumulate_flat(x)?;
        let lo = if self.relu { self.output.zero_point } else { -128 };
        let zy = self.output.zero_point;
        let finish = |scaled: i32| zy.saturating_add(scaled).clamp(lo, 127) as i8;
        let mut out = vec![0i8; acc.len()];
        for (a_row, o_row) in acc.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            match self.requant {
                Requantization::FixedPoint => gemm::requantize(a_row, o_row, &self.fixed, zy, lo),
                Requantization::Float => {
                    for ((o, &a), &m) in o_row.iter_mut().zip(a_row).zip(&self.float) {
                        *o = finish((a as f32 * m).round_ties_even().clamp(i32::MIN as f32, i32::MAX as f32) as i32);
                    }
                }
            }
        }
        Array2::from_shape_vec((batch, n), out).map_err(|_| QuantError::ShapeMismatch { expected: vec![batch, n], got: vec![batch * n] })
    }
}
