//! Sensitivity metrics: Q-BERT's Ω, the top eigenvalue, the average trace, and HAWQ-V2's
//! trace × perturbation for each candidate quantizer.

use ndarray::{ArrayBase, Data, Dimension};
use quant_core::{ErrorStats, Float, Method};

use crate::allocate::{LayerOption, LayerSpec};
use crate::error::{MixedError, Result};

/// Q-BERT's statistic over the per-subset top eigenvalues of one block.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Omega {
    /// Mean of the eigenvalues.
    pub mean: f64,
    /// Population standard deviation (divisor `N`).
    pub std: f64,
    /// `Ω = |mean| + std`.
    pub omega: f64,
    /// Whether any eigenvalue is negative: the parameters are not at a local minimum of
    /// that subset's loss (Q-BERT saw this on SQuAD). Reported, never hidden.
    pub negative: bool,
}

/// `Ω = |mean(λ)| + std(λ)` over per-subset top eigenvalues.
///
/// # Errors
/// [`MixedError::Empty`] for no eigenvalues, [`MixedError::NonFinite`].
pub fn omega(eigenvalues: &[f64]) -> Result<Omega> {
    if eigenvalues.is_empty() {
        return Err(MixedError::Empty { what: "eigenvalues" });
    }
    if let Some(index) = eigenvalues.iter().position(|v| !v.is_finite()) {
        return Err(MixedError::NonFinite { what: "eigenvalue", index });
    }
    let n = eigenvalues.len() as f64;
    let mean = eigenvalues.iter().sum::<f64>() / n;
    let std = (eigenvalues.iter().map(|l| (l - mean) * (l - mean)).sum::<f64>() / n).sqrt();
    Ok(Omega { mean, std, omega: mean.abs() + std, negative: eigenvalues.iter().any(|&l| l < 0.0) })
}

/// A layer's curvature, the factor each candidate's squared quantization error is weighted
/// by.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Curvature {
    /// Q-BERT's `Ω` (never negative).
    Omega(f64),
    /// The top Hessian eigenvalue (HAWQ).
    TopEigenvalue(f64),
    /// The average trace `Tr(H_i) / n_i` (HAWQ-V2).
    AverageTrace(f64),
}

impl Curvature {
    /// The value as given (may be negative for the eigenvalue and trace).
    pub fn value(&self) -> f64 {
        match *self {
            Curvature::Omega(v) | Curvature::TopEigenvalue(v) | Curvature::AverageTrace(v) => v,
        }
    }
    /// The weight used for allocation: the magnitude, so a saddle direction still counts as
    /// sensitive. [`negative`](Curvature::negative) reports the sign.
    pub fn weight(&self) -> f64 {
        self.value().abs()
    }
    /// Whether the curvature is negative (the model is not at a local minimum).
    pub fn negative(&self) -> bool {
        self.value() < 0.0
    }
}

/// A candidate for a layer, scored by its squared error and exact storage.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Candidate {
    /// Quantized by a method (any quantizer, scheme and granularity, per-group included).
    Quantized(Method),
    /// Kept in f32 (32 bits, no error): for layers such as a classifier that stay unquantized.
    Float32,
}

impl From<Method> for Candidate {
    fn from(method: Method) -> Self {
        Candidate::Quantized(method)
    }
}

/// What one candidate does to one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perturbation {
    /// Bits per code (32 for [`Candidate::Float32`]).
    pub bits: u8,
    /// Elements per group, when the candidate is group-wise.
    pub group_size: Option<usize>,
    /// `‖Q(W) − W‖²`, accumulated in f64.
    pub squared_error: f64,
    /// Storage in bytes: packed codes plus every table (scales, zero points, LUTs, alphas).
    pub bytes: u64,
}

fn squared_error<F: Float, S: Data<Elem = F>, D: Dimension>(w: &ArrayBase<S, D>, q: &ndarray::ArrayD<F>) -> f64 {
    ErrorStats::of(w.iter().copied(), q.iter().copied()).squared_error
}

fn group_of(g: quant_core::Granularity) -> Option<usize> {
    match g {
        quant_core::Granularity::PerGroup { size, .. } => Some(size),
        _ => None,
    }
}

impl Candidate {
    /// Quantizes `w` and measures the error and the storage.
    ///
    /// # Errors
    /// The quantizer's errors (for example a non-finite weight or an axis out of range).
    pub fn perturbation<F: Float, S: Data<Elem = F>, D: Dimension>(&self, w: &ArrayBase<S, D>) -> Result<Perturbation> {
        Ok(match self {
            Candidate::Quantized(method) => {
                let q = method.quantize(w)?;
                Perturbation {
                    bits: method.bits(),
                    group_size: group_of(method.granularity()),
                    squared_error: squared_error(w, &q.dequantize()),
                    bytes: q.storage_bytes() as u64,
                }
            }
            Candidate::Float32 => Perturbation { bits: 32, group_size: None, squared_error: 0.0, bytes: 4 * w.len() as u64 },
        })
    }
}

/// Scores every candidate on a layer's weights: HAWQ-V2's sensitivity
/// `|curvature| · ‖Q(W) − W‖²` (with [`Curvature::AverageTrace`] this is exactly
/// `Tr(H)/n · ‖Q(W) − W‖²`), the exact storage, and bit-operations `macs · bits · act_bits`
/// (pass `macs = 0` when BOPs do not matter).
///
/// # Errors
/// [`MixedError::Empty`] for no candidates or an empty tensor, [`MixedError::NonFinite`]
/// for a non-finite curvature, and the quantizers' errors.
pub fn score_layer<F: Float, S: Data<Elem = F>, D: Dimension>(
    name: impl Into<String>,
    w: &ArrayBase<S, D>,
    curvature: Curvature,
    candidates: &[Candidate],
    macs: u64,
    act_bits: u8,
) -> Result<LayerSpec> {
    if candidates.is_empty() {
        return Err(MixedError::Empty { what: "candidates" });
    }
    if w.is_empty() {
        return Err(MixedError::Empty { what: "weights" });
    }
    if !curvature.value().is_finite() {
        return Err(MixedError::NonFinite { what: "curvature", index: 0 });
    }
    let mut options = Vec::with_capacity(candidates.len());
    for c in candidates {
        let p = c.perturbation(w)?;
        let bops = macs.checked_mul(u64::from(p.bits)).and_then(|v| v.checked_mul(u64::from(act_bits))).ok_or(MixedError::Overflow)?;
        options.push(LayerOption {
            bits: p.bits,
            group_size: p.group_size,
            bytes: p.bytes,
            bops,
            sensitivity: curvature.weight() * p.squared_error,
        });
    }
    let mut spec = LayerSpec::new(name, w.len() as u64, options);
    spec.negative_curvature = curvature.negative();
    Ok(spec)
}
