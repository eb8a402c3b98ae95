//! Ternary (TWN, stochastic, loss-aware) and binary quantization.

use ndarray::{Array, ArrayBase, Data, Dimension};

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::layout::Layout;
use crate::lut::{LutKind, LutTensor};
use crate::rng;
use crate::spec::Granularity;
use crate::uniform::{layout_of_granularity, row_major};

/// A validated ternary / binary specification.
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `granularity` | per tensor | which elements share α (per channel 0 = per row, TernaryBERT's choice for embeddings) | group size ≥ 1 |
/// | `threshold` | 0.7 | TWN: `Δ = threshold · mean|w|` | finite, > 0 |
/// | `clip` | none | clip to `[−c, c]` first (TernaryBERT: 2.5); the STE zeroes the gradient outside | finite, > 0 |
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(into = "crate::serde_specs::TernaryFields", try_from = "crate::serde_specs::TernaryFields")
)]
pub struct TernarySpec {
    granularity: Granularity,
    threshold: f64,
    clip: Option<f64>,
}

/// Chained setters for a [`TernarySpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TernarySpecBuilder {
    spec: TernarySpec,
}

impl Default for TernarySpec {
    fn default() -> Self {
        Self { granularity: Granularity::PerTensor, threshold: 0.7, clip: None }
    }
}

impl TernarySpec {
    /// A builder with the defaults in the table.
    pub fn builder() -> TernarySpecBuilder {
        TernarySpecBuilder { spec: Self::default() }
    }
    /// The granularity.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }
    /// The TWN threshold factor.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }
    /// The clipping bound, if any.
    pub fn clip(&self) -> Option<f64> {
        self.clip
    }
    /// A copy with another granularity (validated).
    ///
    /// # Errors
    /// [`QuantError::InvalidGroupSize`] for a group size of zero.
    pub fn with_granularity(&self, granularity: Granularity) -> Result<Self> {
        TernarySpecBuilder { spec: *self }.granularity(granularity).check()
    }
}

impl TernarySpecBuilder {
    /// Sets the granularity.
    pub fn granularity(mut self, g: Granularity) -> Self {
        self.spec.granularity = g;
        self
    }
    /// One α per index along `axis` (per row with `axis = 0`).
    pub fn per_channel(self, axis: usize) -> Self {
        self.granularity(Granularity::PerChannel { axis })
    }
    /// One α per group of `size` along `axis`.
    pub fn per_group(self, axis: usize, size: usize) -> Self {
        self.granularity(Granularity::PerGroup { axis, size })
    }
    /// Sets the TWN threshold factor.
    pub fn threshold(mut self, factor: f64) -> Self {
        self.spec.threshold = factor;
        self
    }
    /// Clips to `[−c, c]` before quantizing.
    pub fn clip(mut self, c: f64) -> Self {
        self.spec.clip = Some(c);
        self
    }
    /// Validates.
    ///
    /// # Errors
    /// [`QuantError::InvalidThreshold`], [`QuantError::InvalidClip`], [`QuantError::InvalidGroupSize`].
    pub fn check(self) -> Result<TernarySpec> {
        let s = self.spec;
        if !(s.threshold.is_finite() && s.threshold > 0.0) {
            return Err(QuantError::InvalidThreshold { factor: s.threshold });
        }
        if let Some(c) = s.clip
            && !(c.is_finite() && c > 0.0)
        {
            return Err(QuantError::InvalidClip { clip: c });
        }
        if let Granularity::PerGroup { size: 0, .. } = s.granularity {
            return Err(QuantError::InvalidGroupSize { size: 0 });
        }
        Ok(s)
    }
}

/// Validates `x` and returns its layout and clipped slices.
fn prepare<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &TernarySpec) -> Result<(Layout, Vec<Vec<F>>)> {
    let layout = layout_of_granularity(x.shape(), spec.granularity)?;
    let data = row_major(x);
    if let Some(index) = data.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    let mut slices = layout.gather(&data);
    if let Some(c) = spec.clip {
        let c = F::cast(c);
        for v in slices.iter_mut().flatten() {
            *v = v.max(-c).min(c);
        }
    }
    Ok((layout, slices))
}

fn mean_abs<F: Float>(xs: &[F]) -> f64 {
    xs.iter().map(|v| v.as_f64().abs()).sum::<f64>() / xs.len().max(1) as f64
}

/// TWN's threshold and α for one slice: `Δ = t·mean|w|`, `α = mean |w|` over `|w| > Δ`,
/// and `α = 0` when no element exceeds `Δ` (an all-zero slice) instead of 0/0.
fn twn_slice<F: Float>(xs: &[F], threshold: f64) -> (f64, f64) {
    let delta = threshold * mean_abs(xs);
    let (sum, count) = xs.iter().map(|v| v.as_f64().abs()).filter(|&a| a > delta).fold((0.0, 0usize), |(s, c), a| (s + a, c + 1));
    (delta, if count == 0 { 0.0 } else { sum / count as f64 })
}

/// Ternary code of `w` with threshold `delta`: 0 = −α, 1 = 0, 2 = +α.
fn ternary_code(w: f64, delta: f64) -> u8 {
    if w > delta {
        2
    } else if w < -delta {
        0
    } else {
        1
    }
}

fn ternary_table<F: Float>(alpha: f64) -> [F; 3] {
    let a = F::cast(alpha);
    [-a, F::zero(), a]
}

/// Ternary weight networks (TWN): `w_t = α·sign(w)·[|w| > Δ]` with `Δ = 0.7·mean|w|` and
/// `α` the mean of `|w|` above `Δ`, one α per slice. Codes take 2 bits.
///
/// ```
/// use ndarray::array;
/// use quant_core::{ternarize, TernarySpec};
/// let w = array![[0.9f32, -0.1, -1.1, 0.05]];
/// let t = ternarize(&w, &TernarySpec::default())?;
/// assert_eq!(t.dequantize().iter().copied().collect::<Vec<_>>(), [1.0, 0.0, -1.0, 0.0]);
/// # Ok::<(), quant_core::QuantError>(())
/// ```
///
/// # Errors
/// [`QuantError::Empty`], [`QuantError::InvalidAxis`], [`QuantError::NonFinite`].
pub fn ternarize<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &TernarySpec) -> Result<LutTensor<F>> {
    let (layout, slices) = prepare(x, spec)?;
    let mut tables = Vec::with_capacity(3 * slices.len());
    let codes: Vec<Vec<u8>> = slices
        .iter()
        .map(|xs| {
            let (delta, alpha) = twn_slice(xs, spec.threshold);
            tables.extend(ternary_table::<F>(alpha));
            // An empty mask (α = 0) stores every code as the zero entry.
            xs.iter().map(|v| if alpha == 0.0 { 1 } else { ternary_code(v.as_f64(), delta) }).collect()
        })
        .collect();
    LutTensor::build(x.shape(), &layout, spec.granularity, LutKind::Ternary, 3, tables, &codes)
}

/// Binary quantization: `w_b = α·sign(w)` with `α = mean|w|` per slice (`w = 0` maps to `+α`).
///
/// # Errors
/// As [`ternarize`].
pub fn binarize<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &TernarySpec) -> Result<LutTensor<F>> {
    let (layout, slices) = prepare(x, spec)?;
    let mut tables = Vec::with_capacity(2 * slices.len());
    let codes: Vec<Vec<u8>> = slices
        .iter()
        .map(|xs| {
            let a = F::cast(mean_abs(xs));
            tables.extend([-a, a]);
            xs.iter().map(|v| u8::from(*v >= F::zero())).collect()
        })
        .collect();
    LutTensor::build(x.shape(), &layout, spec.granularity, LutKind::Binary, 2, tables, &codes)
}

/// Stochastic ternarization: with `s = max|w|` per slice and `r = w/s ∈ [−1, 1]`, the code is
/// `+1` with probability `r` for `r > 0`, `−1` with probability `−r` for `r < 0`, else 0; the
/// table is `{−s, 0, s}`, so the result is unbiased. The draw for element `i` (row-major)
/// depends only on `(seed, i)`.
///
/// # Errors
/// As [`ternarize`].
pub fn ternarize_stochastic<F: Float, S: Data<Elem = F>, D: Dimension>(
    x: &ArrayBase<S, D>,
    spec: &TernarySpec,
    seed: u64,
) -> Result<LutTensor<F>> {
    let (layout, slices) = prepare(x, spec)?;
    let index = layout.gather(&(0..layout.len()).collect::<Vec<usize>>());
    let mut tables = Vec::with_capacity(3 * slices.len());
    let codes: Vec<Vec<u8>> = slices
        .iter()
        .zip(&index)
        .map(|(xs, idx)| {
            let s = xs.iter().map(|v| v.as_f64().abs()).fold(0.0, f64::max);
            tables.extend(ternary_table::<F>(s));
            xs.iter()
                .zip(idx)
                .map(|(v, &i)| {
                    let r = if s > 0.0 { v.as_f64() / s } else { 0.0 };
                    let u = rng::unit(seed, i as u64);
                    if r > 0.0 && u < r {
                        2
                    } else if r < 0.0 && u < -r {
                        0
                    } else {
                        1
                    }
                })
                .collect()
        })
        .collect();
    LutTensor::build(x.shape(), &layout, spec.granularity, LutKind::Ternary, 3, tables, &codes)
}

/// Diagnostics of [`ternarize_lat`].
#[derive(Debug, Clone, PartialEq)]
pub struct LatInfo {
    /// Alternations used, per slice.
    pub iterations: Vec<usize>,
    /// The curvature-weighted error `Σ d (w − α b)²` per slice, at TWN's solution and at LAT's.
    pub twn_error: Vec<f64>,
    /// The curvature-weighted error of the returned solution, per slice.
    pub lat_error: Vec<f64>,
}

/// Loss-aware ternarization (LAT, Hou & Kwok 2018): minimises the curvature-weighted error
/// `Σ d_i (w_i − α b_i)²`, `b ∈ {−1, 0, 1}`, with `d` a diagonal curvature estimate of the same
/// shape (for example Adam's second moment). Starting from TWN, it alternates the two exact
/// partial minimisers: `α = Σ d|w|·|b| / Σ d|b|` and `b = sign(w)·[|w| > α/2]`, until the codes
/// stop changing or `max_iter` alternations. Each step can only lower the weighted error, so
/// the result is never worse than TWN's on it.
///
/// # Errors
/// As [`ternarize`], plus [`QuantError::ShapeMismatch`] when `d` has another shape,
/// [`QuantError::NegativeCurvature`] for `d < 0`, [`QuantError::NonFinite`] in `d`, and
/// [`QuantError::InvalidIterations`] for `max_iter = 0`.
pub fn ternarize_lat<F, S1, S2, D>(
    x: &ArrayBase<S1, D>,
    d: &ArrayBase<S2, D>,
    spec: &TernarySpec,
    max_iter: usize,
) -> Result<(LutTensor<F>, LatInfo)>
where
    F: Float,
    S1: Data<Elem = F>,
    S2: Data<Elem = F>,
    D: Dimension,
{
    if x.shape() != d.shape() {
        return Err(QuantError::ShapeMismatch { expected: x.shape().to_vec(), got: d.shape().to_vec() });
    }
    if max_iter == 0 {
        return Err(QuantError::InvalidIterations);
    }
    let (layout, slices) = prepare(x, spec)?;
    let dd = row_major(d);
    if let Some(index) = dd.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    if let Some(index) = dd.iter().position(|&v| v < F::zero()) {
        return Err(QuantError::NegativeCurvature { index, value: dd[index].as_f64() });
    }
    let d_slices = layout.gather(&dd);
    let mut info = LatInfo { iterations: Vec::new(), twn_error: Vec::new(), lat_error: Vec::new() };
    let mut tables = Vec::with_capacity(3 * slices.len());
    let mut codes = Vec::with_capacity(slices.len());
    for (xs, ds) in slices.iter().zip(&d_slices) {
        let w: Vec<f64> = xs.iter().map(|v| v.as_f64()).collect();
        let dw: Vec<f64> = ds.iter().map(|v| v.as_f64()).collect();
        let (delta, twn_alpha) = twn_slice(xs, spec.threshold);
        let mut b: Vec<u8> = w.iter().map(|&v| if twn_alpha == 0.0 { 1 } else { ternary_code(v, delta) }).collect();
        let mut alpha = twn_alpha;
        info.twn_error.push(weighted_error(&w, &dw, &b, alpha));
        let mut iters = 0;
        while iters < max_iter {
            iters += 1;
            let (num, den) =
                w.iter().zip(&dw).zip(&b).filter(|(_, c)| **c != 1).fold((0.0, 0.0), |(n, m), ((wv, dv), _)| (n + dv * wv.abs(), m + dv));
            if den > 0.0 {
                alpha = num / den;
            }
            let next: Vec<u8> = w.iter().map(|&v| if alpha > 0.0 { ternary_code(v, alpha / 2.0) } else { 1 }).collect();
            if next == b {
                break;
            }
            b = next;
        }
        info.iterations.push(iters);
        info.lat_error.push(weighted_error(&w, &dw, &b, alpha));
        tables.extend(ternary_table::<F>(alpha));
        codes.push(b);
    }
    let t = LutTensor::build(x.shape(), &layout, spec.granularity, LutKind::Ternary, 3, tables, &codes)?;
    Ok((t, info))
}

/// `Σ d (w − α b)²` with `b` from ternary codes.
fn weighted_error(w: &[f64], d: &[f64], codes: &[u8], alpha: f64) -> f64 {
    w.iter().zip(d).zip(codes).map(|((wv, dv), &c)| dv * (wv - alpha * (f64::from(c) - 1.0)).powi(2)).sum()
}

/// The STE mask of the clipping step: `true` where `|x| ≤ clip` (everywhere without a clip).
/// Multiply the upstream gradient by it (TernaryBERT zeroes the gradient outside the clip).
///
/// # Errors
/// [`QuantError::NonFinite`] for NaN or infinite input.
pub fn clip_mask<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &TernarySpec) -> Result<Array<bool, D>> {
    if let Some(index) = row_major(x).iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    let c = spec.clip.map_or(F::infinity(), F::cast);
    Ok(x.mapv(|v| v.abs() <= c))
}
