//! Second-order products of a model prepared once at fixed parameters and batch: block
//! Hessian-vector products and Gauss-Newton products that pay only for their block.

use ndarray::{Array1, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, s};
use quant_core::Float;

use crate::error::{HessianError, Result, check_finite, check_len};
use crate::model::{Autodiff, Batch, Block, Model};
use crate::operator::LinearOperator;

/// Which curvature matrix a product applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Product {
    /// The Hessian `H` of the loss.
    #[default]
    Hessian,
    /// The Gauss-Newton matrix `G = Jᵀ (∂²ℓ/∂y²) J` of a loss `ℓ(y(w))` written as a function
    /// of the model's outputs `y`: the Hessian without the terms of the outputs' own second
    /// derivatives. Positive semi-definite when `ℓ` is convex in `y`; for softmax
    /// cross-entropy it is the generalised Gauss-Newton matrix (the Fisher); for a squared
    /// error whose residual is zero it equals the Hessian.
    GaussNewton,
}

/// A model's loss at fixed parameters `w` on a fixed batch, prepared for many second-order
/// products: a model may keep its forward pass (the same for every product) and compute per
/// product only what depends on the vector.
///
/// Products are per block: for `v` supported on block `b` (given as the block's own
/// coordinates), [`block_product_into`](BlockCurvature::block_product_into) writes the block's
/// rows of `M v`, that is `M_bb v`, the Hessian of the loss with respect to the block's
/// parameters alone (what Q-BERT and HAWQ measure). A model that knows which layers a block
/// touches starts the tangents at the block's layer and stops the reverse pass once the
/// block's gradient is complete; [`Autodiff::curvature`]'s default,
/// [`PaddedCurvature`], pads `v` with zeros and runs the whole-model product.
pub trait BlockCurvature<F: Float>: Send + Sync {
    /// The model's blocks (the indices products take).
    fn blocks(&self) -> &[Block];

    /// Writes `M_bb v` for the matrix `product` into `out`; `v` and `out` have block `block`'s
    /// length.
    ///
    /// # Errors
    /// [`HessianError::InvalidBlock`], [`HessianError::ShapeMismatch`],
    /// [`HessianError::Unsupported`] for a product the model does not offer, and the model's
    /// errors.
    fn block_product_into(&self, product: Product, block: usize, v: ArrayView1<'_, F>, out: ArrayViewMut1<'_, F>) -> Result<()>;

    /// Whether the model offers `product` (every model offers the Hessian).
    fn supports(&self, product: Product) -> bool {
        product == Product::Hessian
    }

    /// `M_bb v` for several vectors at once: the rows of `v` (`k × block length`) into the
    /// rows of `out`. The default applies them one by one; a model may widen its matrix
    /// products instead.
    ///
    /// # Errors
    /// As [`block_product_into`](BlockCurvature::block_product_into).
    fn block_products_into(&self, product: Product, block: usize, v: ArrayView2<'_, F>, mut out: ArrayViewMut2<'_, F>) -> Result<()> {
        if v.dim() != out.dim() {
            return Err(HessianError::ShapeMismatch { expected: vec![v.nrows(), v.ncols()], got: vec![out.nrows(), out.ncols()] });
        }
        for (row, o) in v.outer_iter().zip(out.outer_iter_mut()) {
            self.block_product_into(product, block, row, o)?;
        }
        Ok(())
    }

    /// The quadratic forms `v_iᵀ M_bb v_i` of the rows of `v` (`k × block length`) into
    /// `out` (length `k`): for example the second-order loss change `½ dᵀ H d` of candidate
    /// perturbations `d`, or Hutchinson's samples of a trace. The default applies the
    /// products; a model with a Gauss-Newton form `G = Jᵀ Λ J` needs only forward mode,
    /// `vᵀ G v = (J v)ᵀ Λ (J v)`, and no reverse pass.
    ///
    /// # Errors
    /// As [`block_product_into`](BlockCurvature::block_product_into), and
    /// [`HessianError::ShapeMismatch`] when `out` does not have one entry per row of `v`.
    fn block_quadratic_forms_into(
        &self,
        product: Product,
        block: usize,
        v: ArrayView2<'_, F>,
        mut out: ArrayViewMut1<'_, F>,
    ) -> Result<()> {
        check_len(v.nrows(), out.len())?;
        let mut mv = Array1::zeros(v.ncols());
        for (row, o) in v.outer_iter().zip(out.iter_mut()) {
            self.block_product_into(product, block, row, mv.view_mut())?;
            *o = row.dot(&mv);
        }
        Ok(())
    }
}

/// Checks a block index and the lengths of a product's vectors; returns the block.
///
/// # Errors
/// [`HessianError::InvalidBlock`], [`HessianError::ShapeMismatch`].
pub fn check_block_product(blocks: &[Block], block: usize, v: usize, out: usize) -> Result<&Block> {
    let b = blocks.get(block).ok_or(HessianError::InvalidBlock { index: block, count: blocks.len() })?;
    check_len(b.len(), v)?;
    check_len(b.len(), out)?;
    Ok(b)
}

/// The curvature of any [`Autodiff`] model without preparation: a block product pads `v`
/// with zeros to the model's dimension, runs the whole-model [`Autodiff::hvp_into`] and keeps
/// the block's rows. It offers the Hessian only.
#[derive(Debug, Clone)]
pub struct PaddedCurvature<'a, F, M: ?Sized> {
    model: &'a M,
    w: ArrayView1<'a, F>,
    batch: Batch<'a>,
}

impl<'a, F: Float, M: Autodiff<F> + ?Sized> PaddedCurvature<'a, F, M> {
    /// The curvature of `model` at `w` on `batch`.
    ///
    /// # Errors
    /// [`HessianError::ShapeMismatch`] for a `w` of the wrong length, the batch's errors.
    pub fn new(model: &'a M, w: ArrayView1<'a, F>, batch: Batch<'a>) -> Result<Self> {
        check_len(model.dim(), w.len())?;
        batch.check(model.samples())?;
        Ok(Self { model, w, batch })
    }
}

impl<F: Float, M: Autodiff<F> + Sync + ?Sized> BlockCurvature<F> for PaddedCurvature<'_, F, M> {
    fn blocks(&self) -> &[Block] {
        self.model.blocks()
    }

    fn block_product_into(&self, product: Product, block: usize, v: ArrayView1<'_, F>, mut out: ArrayViewMut1<'_, F>) -> Result<()> {
        if product != Product::Hessian {
            return Err(HessianError::Unsupported { what: "a Gauss-Newton product" });
        }
        check_block_product(self.model.blocks(), block, v.len(), out.len())?;
        let r = self.model.block(block)?.range();
        let n = self.model.dim();
        let mut padded = Array1::zeros(n);
        padded.slice_mut(s![r.clone()]).assign(&v);
        let mut hv = Array1::zeros(n);
        self.model.hvp_into(self.w, padded.view(), self.batch, hv.view_mut())?;
        out.assign(&hv.slice(s![r]));
        Ok(())
    }
}

/// One block of a prepared [`BlockCurvature`] as a [`LinearOperator`] (what the eigen and trace
/// solvers take).
pub struct BlockOperator<'c, F> {
    curvature: &'c dyn BlockCurvature<F>,
    product: Product,
    block: usize,
    len: usize,
}

impl<F> core::fmt::Debug for BlockOperator<'_, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlockOperator").field("product", &self.product).field("block", &self.block).field("len", &self.len).finish()
    }
}

impl<'c, F: Float> BlockOperator<'c, F> {
    /// Block `block` of `curvature`'s matrix `product`.
    ///
    /// # Errors
    /// [`HessianError::InvalidBlock`], [`HessianError::Unsupported`].
    pub fn new(curvature: &'c dyn BlockCurvature<F>, product: Product, block: usize) -> Result<Self> {
        let blocks = curvature.blocks();
        let len = blocks.get(block).ok_or(HessianError::InvalidBlock { index: block, count: blocks.len() })?.len();
        if !curvature.supports(product) {
            return Err(HessianError::Unsupported { what: "a Gauss-Newton product" });
        }
        if len == 0 {
            return Err(HessianError::Empty);
        }
        Ok(Self { curvature, product, block, len })
    }
}

impl<F: Float> LinearOperator<F> for BlockOperator<'_, F> {
    fn dim(&self) -> usize {
        self.len
    }

    fn apply_into(&self, x: ArrayView1<'_, F>, mut out: ArrayViewMut1<'_, F>) -> Result<()> {
        check_len(self.len, x.len())?;
        check_len(self.len, out.len())?;
        check_finite(x.iter())?;
        self.curvature.block_product_into(self.product, self.block, x, out.view_mut())?;
        check_finite(out.iter())
    }

    /// The curvature's own quadratic forms (forward mode alone for a Gauss-Newton block).
    fn quadratic_forms_into(&self, x: ArrayView2<'_, F>, mut out: ArrayViewMut1<'_, F>) -> Result<()> {
        check_len(self.len, x.ncols())?;
        check_len(x.nrows(), out.len())?;
        check_finite(x.iter())?;
        self.curvature.block_quadratic_forms_into(self.product, self.block, x, out.view_mut())?;
        check_finite(out.iter())
    }
}

/// Checks `w` and `batch` against `model` as every prepared curvature must.
///
/// # Errors
/// [`HessianError::ShapeMismatch`], [`HessianError::NonFinite`], the batch's errors.
pub fn check_curvature_inputs<F: Float, M: Model + ?Sized>(model: &M, w: ArrayView1<'_, F>, batch: Batch<'_>) -> Result<()> {
    check_len(model.dim(), w.len())?;
    check_finite(w.iter())?;
    batch.check(model.samples())
}
