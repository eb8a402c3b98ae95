//! Q-BERT's grouping: consecutive output units (rows of `W` in `y = W x`) share a range or a
//! lookup table.

use ndarray::{Array2, ArrayView2};
use quant_core::{Float, Granularity, KMeansSpec, TernarySpec, UniformSpec, kmeans_quantize, quantize, ternarize};

use crate::error::{GroupError, Result};

/// The quantizer applied to each group.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum GroupMethod {
    /// Uniform quantization with the spec's bits, scheme, range estimator and rounding; its
    /// granularity is replaced by one range per group.
    Uniform(UniformSpec),
    /// A k-means codebook per group (the spec's granularity is replaced likewise).
    KMeans(KMeansSpec),
    /// Ternary (TWN) with one `alpha` per group.
    Ternary(TernarySpec),
}

impl GroupMethod {
    /// Bits per weight code.
    pub fn bits(&self) -> u8 {
        match self {
            GroupMethod::Uniform(s) => s.bits(),
            GroupMethod::KMeans(s) => (usize::BITS - (s.k().max(2) - 1).leading_zeros()) as u8,
            GroupMethod::Ternary(_) => 2,
        }
    }
}

/// A weight matrix quantized group by group, dequantized, with its exact storage.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupQuantized<F> {
    /// The dequantized weights, in the input's `fan_in × fan_out` layout.
    pub weights: Array2<F>,
    /// Storage in bytes: packed codes plus every group's table.
    pub bytes: usize,
    /// `8 · bytes / elements`.
    pub bits_per_weight: f64,
}

/// Quantizes a weight matrix stored `fan_in × fan_out` (as `y = x W`) in `groups` groups of
/// consecutive output units, Q-BERT's grouping: for an attention projection with `H` heads,
/// `groups = H` gives one group per head, `groups = fan_out` one per output unit (per
/// channel), and `groups = 1` is per-tensor quantization.
///
/// Each group `(fan_out / groups)` output units × `fan_in` inputs is quantized on its own by
/// `method`. Group counts that do not divide `fan_out` are refused (no ragged groups: heads
/// always split evenly).
///
/// # Errors
/// [`GroupError::InvalidGroups`], and the quantizer's errors (non-finite weights, for one).
pub fn quantize_output_groups<F: Float>(w: ArrayView2<'_, F>, groups: usize, method: &GroupMethod) -> Result<GroupQuantized<F>> {
    let (fan_in, fan_out) = w.dim();
    if groups == 0 || fan_out % groups != 0 {
        return Err(GroupError::InvalidGroups { groups, units: fan_out });
    }
    // Output units as rows, then each group of rows as one row of the reshaped matrix.
    let per_group = (fan_out / groups) * fan_in;
    let rows: Vec<F> = w.t().iter().copied().collect();
    let grouped =
        Array2::from_shape_vec((groups, per_group), rows).unwrap_or_else(|_| unreachable!("groups × per_group = fan_in × fan_out"));
    let per_row = Granularity::PerChannel { axis: 0 };
    let (flat, bytes) = match method {
        GroupMethod::Uniform(spec) => {
            let q = quantize(&grouped, &spec.with_granularity(per_row)?)?;
            (q.dequantize(), q.storage_bytes())
        }
        GroupMethod::KMeans(spec) => {
            let spec = KMeansSpec::builder()
                .k(spec.k())
                .init(spec.init())
                .algorithm(spec.algorithm())
                .table(spec.table())
                .granularity(per_row)
                .check()?;
            let (q, _) = kmeans_quantize(&grouped, &spec)?;
            (q.dequantize(), q.storage_bytes())
        }
        GroupMethod::Ternary(spec) => {
            let mut b = TernarySpec::builder().threshold(spec.threshold()).granularity(per_row);
            if let Some(c) = spec.clip() {
                b = b.clip(c);
            }
            let q = ternarize(&grouped, &b.check()?)?;
            (q.dequantize(), q.storage_bytes())
        }
    };
    let unit_rows =
        Array2::from_shape_vec((fan_out, fan_in), flat.iter().copied().collect()).unwrap_or_else(|_| unreachable!("same element count"));
    let weights = unit_rows.t().to_owned();
    Ok(GroupQuantized { bits_per_weight: 8.0 * bytes as f64 / w.len().max(1) as f64, weights, bytes })
}
