//! Q-BERT's grouping: consecutive output units (rows of `W` in `y = W x`) share a range or a
//! lookup table.

use ndarray::{Array2, ArrayView2};
use quant_core::{Float, Granularity, KMeansSpec, Method, kmeans_quantize};

use crate::error::{GroupError, Result};

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
/// `method` (its granularity replaced by one set per group). Group counts that do not divide `fan_out` are refused (no ragged groups: heads
/// always split evenly).
///
/// # Errors
/// [`GroupError::InvalidGroups`], and the quantizer's errors (non-finite weights, for one).
pub fn quantize_output_groups<F: Float>(w: ArrayView2<'_, F>, groups: usize, method: &Method) -> Result<GroupQuantized<F>> {
    let (fan_in, fan_out) = w.dim();
    if groups == 0 || fan_out % groups != 0 {
        return Err(GroupError::InvalidGroups { groups, units: fan_out });
    }
    // Output units as rows, then each group of rows as one row of the reshaped matrix.
    let per_group = (fan_out / groups) * fan_in;
    let rows: Vec<F> = w.t().iter().copied().collect();
    let grouped =
        Array2::from_shape_vec((groups, per_group), rows).unwrap_or_else(|_| unreachable!("groups × per_group = fan_in × fan_out"));
    let q = method.with_granularity(Granularity::PerChannel { axis: 0 })?.quantize(&grouped)?;
    let (flat, bytes) = (q.dequantize(), q.storage_bytes());
    let unit_rows =
        Array2::from_shape_vec((fan_out, fan_in), flat.iter().copied().collect()).unwrap_or_else(|_| unreachable!("same element count"));
    let weights = unit_rows.t().to_owned();
    Ok(GroupQuantized { bits_per_weight: 8.0 * bytes as f64 / w.len().max(1) as f64, weights, bytes })
}

/// A weight matrix (`fan_in × fan_out`) held as k-means codebooks over groups of
/// consecutive output units, with its codes fixed, for codebook fine-tuning (Deep
/// Compression's centroid updates: each centroid moves by the gradients of the weights that
/// share it).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputGroupCodebook<F> {
    lut: quant_core::LutTensor<F>,
    fan_in: usize,
    fan_out: usize,
    groups: usize,
}

/// Output units as rows, then each group of rows as one row.
fn to_groups<F: Float>(m: ArrayView2<'_, F>, groups: usize) -> Array2<F> {
    let (fan_in, fan_out) = m.dim();
    let rows: Vec<F> = m.t().iter().copied().collect();
    Array2::from_shape_vec((groups, fan_out / groups * fan_in), rows).unwrap_or_else(|_| unreachable!("groups divide fan_out"))
}

impl<F: Float> OutputGroupCodebook<F> {
    /// Clusters `w` per group of output units with `spec` (its granularity is replaced).
    ///
    /// # Errors
    /// As [`quantize_output_groups`].
    pub fn new(w: ArrayView2<'_, F>, groups: usize, spec: &KMeansSpec) -> Result<Self> {
        let (fan_in, fan_out) = w.dim();
        if groups == 0 || fan_out % groups != 0 {
            return Err(GroupError::InvalidGroups { groups, units: fan_out });
        }
        let spec = spec.with_granularity(Granularity::PerChannel { axis: 0 })?;
        let (lut, _) = kmeans_quantize(&to_groups(w, groups), &spec)?;
        Ok(Self { lut, fan_in, fan_out, groups })
    }

    /// The dequantized weights (`fan_in × fan_out`).
    pub fn weights(&self) -> Array2<F> {
        let flat = self.lut.dequantize();
        let rows = Array2::from_shape_vec((self.fan_out, self.fan_in), flat.iter().copied().collect())
            .unwrap_or_else(|_| unreachable!("same count"));
        rows.t().to_owned()
    }

    /// Storage in bytes (codes and tables).
    pub fn bytes(&self) -> usize {
        self.lut.storage_bytes()
    }

    /// The summed gradient of every centroid, from the gradient of the loss with respect to
    /// the dequantized weights (`fan_in × fan_out`).
    ///
    /// # Errors
    /// [`GroupError::Core`] for a wrong shape or non-finite gradients.
    pub fn centroid_gradients(&self, grad: ArrayView2<'_, F>) -> Result<Vec<F>> {
        if grad.dim() != (self.fan_in, self.fan_out) {
            return Err(GroupError::Core(quant_core::QuantError::ShapeMismatch {
                expected: vec![self.fan_in, self.fan_out],
                got: grad.shape().to_vec(),
            }));
        }
        Ok(quant_core::centroid_gradients(&self.lut, &to_groups(grad, self.groups), quant_core::GradientReduction::Sum)?)
    }

    /// `centroid −= step` for every centroid (`step` from any optimiser, one per centroid).
    ///
    /// # Errors
    /// [`GroupError::Core`] for a wrong length or non-finite steps.
    pub fn apply_step(&mut self, step: &[F]) -> Result<()> {
        Ok(self.lut.apply_table_step(step, F::one())?)
    }
}
