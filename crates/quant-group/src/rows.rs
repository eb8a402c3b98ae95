//! Q-BERT's grouping: consecutive output units (rows of `W` in `y = W x`) share a range or a
//! lookup table.

use ndarray::{Array2, ArrayView2};
use quant_core::{Float, Granularity, KMeansSpec, Method, kmeans_quantize};

use crate::error::{GroupError, Result};

/// A weight matrix quantized group by group, dequantized, with its exact storage.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupQuantized<F> {
    /// The dequantized weights, `out × in` like the input.
    pub weights: Array2<F>,
    /// Storage in bytes: packed codes plus every group's table.
    pub bytes: usize,
    /// `8 · bytes / elements`.
    pub bits_per_weight: f64,
}

/// Quantizes an `out × in` weight matrix (PyTorch's `Linear.weight`, `y = W x`) in `groups`
/// groups of consecutive output units (rows), Q-BERT's grouping: for an attention projection
/// with `H` heads, `groups = H` gives one group per head, `groups = out` one per output unit
/// (per channel), and `groups = 1` is per-tensor quantization.
///
/// Each group of `out / groups` rows is quantized on its own by `method` (its granularity
/// replaced by one set per group). Group counts that do not divide `out` are refused (no
/// ragged groups: heads always split evenly). A model that stores `fan_in × fan_out` passes
/// the transposed view (`w.t()`) and transposes the result back.
///
/// # Errors
/// [`GroupError::InvalidGroups`], and the quantizer's errors (non-finite weights, for one).
pub fn quantize_output_groups<F: Float>(w: ArrayView2<'_, F>, groups: usize, method: &Method) -> Result<GroupQuantized<F>> {
    let (units, fan_in) = w.dim();
    if groups == 0 || units % groups != 0 {
        return Err(GroupError::InvalidGroups { groups, units });
    }
    let q = method.with_granularity(Granularity::PerChannel { axis: 0 })?.quantize(&to_groups(w, groups))?;
    let weights = Array2::from_shape_vec((units, fan_in), q.dequantize().iter().copied().collect())
        .unwrap_or_else(|_| unreachable!("same element count"));
    Ok(GroupQuantized { bits_per_weight: 8.0 * q.storage_bytes() as f64 / w.len().max(1) as f64, weights, bytes: q.storage_bytes() })
}

/// An `out × in` weight matrix held as k-means codebooks over groups of consecutive output
/// units (rows), with its codes fixed, for codebook fine-tuning (Deep
/// Compression's centroid updates: each centroid moves by the gradients of the weights that
/// share it).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputGroupCodebook<F> {
    lut: quant_core::LutTensor<F>,
    units: usize,
    fan_in: usize,
    groups: usize,
}

/// Each group of rows of an `out × in` matrix as one row (`groups` divides `out`).
fn to_groups<F: Float>(m: ArrayView2<'_, F>, groups: usize) -> Array2<F> {
    let (units, fan_in) = m.dim();
    let rows: Vec<F> = m.iter().copied().collect();
    Array2::from_shape_vec((groups, units / groups * fan_in), rows).unwrap_or_else(|_| unreachable!("groups divide the rows"))
}

impl<F: Float> OutputGroupCodebook<F> {
    /// Clusters `w` per group of output units with `spec` (its granularity is replaced).
    ///
    /// # Errors
    /// As [`quantize_output_groups`].
    pub fn new(w: ArrayView2<'_, F>, groups: usize, spec: &KMeansSpec) -> Result<Self> {
        let (units, fan_in) = w.dim();
        if groups == 0 || units % groups != 0 {
            return Err(GroupError::InvalidGroups { groups, units });
        }
        let spec = spec.with_granularity(Granularity::PerChannel { axis: 0 })?;
        let (lut, _) = kmeans_quantize(&to_groups(w, groups), &spec)?;
        Ok(Self { lut, units, fan_in, groups })
    }

    /// The dequantized weights (`out × in`).
    pub fn weights(&self) -> Array2<F> {
        let flat = self.lut.dequantize();
        Array2::from_shape_vec((self.units, self.fan_in), flat.iter().copied().collect()).unwrap_or_else(|_| unreachable!("same count"))
    }

    /// Storage in bytes (codes and tables).
    pub fn bytes(&self) -> usize {
        self.lut.storage_bytes()
    }

    /// The summed gradient of every centroid, from the gradient of the loss with respect to
    /// the dequantized weights (`out × in`).
    ///
    /// # Errors
    /// [`GroupError::Core`] for a wrong shape or non-finite gradients.
    pub fn centroid_gradients(&self, grad: ArrayView2<'_, F>) -> Result<Vec<F>> {
        if grad.dim() != (self.units, self.fan_in) {
            return Err(GroupError::Core(quant_core::QuantError::ShapeMismatch {
                expected: vec![self.units, self.fan_in],
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
