//! Linear operators: the interface the eigen and trace solvers work on.

use core::marker::PhantomData;
use std::sync::Arc;

use ndarray::{Array1, ArrayBase, ArrayView1, ArrayView2, ArrayViewMut1, Data, Ix2};
use quant_core::Float;

use crate::curvature::{BlockCurvature, Product};
use crate::error::{HessianError, Result, check_finite, check_len};
use crate::model::{Autodiff, Batch};

/// A linear operator on `F^dim`, applied into a caller buffer.
///
/// The solvers ([`OperatorExt`](crate::OperatorExt)) assume it is symmetric; that is the
/// caller's promise (Hessians are). Dense matrices, closures ([`FnOperator`]) and model
/// Hessians ([`HessianOperator`]) implement it.
pub trait LinearOperator<F: Float> {
    /// The dimension `n` (the operator maps `F^n` to `F^n`).
    fn dim(&self) -> usize;

    /// Writes `A x` into `out`; both have length [`dim`](LinearOperator::dim).
    ///
    /// # Errors
    /// [`HessianError::ShapeMismatch`] for wrong lengths, and whatever the operator reports.
    fn apply_into(&self, x: ArrayView1<'_, F>, out: ArrayViewMut1<'_, F>) -> Result<()>;

    /// `A x` in a new vector.
    ///
    /// # Errors
    /// As [`apply_into`](LinearOperator::apply_into).
    fn apply(&self, x: ArrayView1<'_, F>) -> Result<Array1<F>> {
        let mut out = Array1::zeros(self.dim());
        self.apply_into(x, out.view_mut())?;
        Ok(out)
    }

    /// Writes the quadratic form `xᵢᵀ A xᵢ` of each row `xᵢ` of `x` into `out[i]`. By default
    /// one application per row; an operator with a cheaper way overrides it (a Gauss-Newton
    /// block `(2/n) JᵀJ`: `(2/n)‖J xᵢ‖²`, one forward-mode pass for all the rows).
    ///
    /// # Errors
    /// [`HessianError::ShapeMismatch`] for rows of another length than [`dim`](Self::dim) or
    /// an `out` of another length than the rows; as [`apply_into`](Self::apply_into).
    fn quadratic_forms_into(&self, x: ArrayView2<'_, F>, mut out: ArrayViewMut1<'_, F>) -> Result<()> {
        check_len(self.dim(), x.ncols())?;
        check_len(x.nrows(), out.len())?;
        let mut w = Array1::zeros(self.dim());
        for (row, o) in x.outer_iter().zip(out.iter_mut()) {
            self.apply_into(row, w.view_mut())?;
            *o = row.dot(&w);
        }
        Ok(())
    }
}

impl<F: Float, T: LinearOperator<F> + ?Sized> LinearOperator<F> for &T {
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn apply_into(&self, x: ArrayView1<'_, F>, out: ArrayViewMut1<'_, F>) -> Result<()> {
        (**self).apply_into(x, out)
    }
    fn quadratic_forms_into(&self, x: ArrayView2<'_, F>, out: ArrayViewMut1<'_, F>) -> Result<()> {
        (**self).quadratic_forms_into(x, out)
    }
}

/// A square matrix is an operator (`out = A x`). A non-square matrix reports
/// [`HessianError::ShapeMismatch`] on application.
impl<F: Float, S: Data<Elem = F>> LinearOperator<F> for ArrayBase<S, Ix2> {
    fn dim(&self) -> usize {
        self.nrows()
    }
    fn apply_into(&self, x: ArrayView1<'_, F>, mut out: ArrayViewMut1<'_, F>) -> Result<()> {
        if self.nrows() != self.ncols() {
            return Err(HessianError::ShapeMismatch { expected: vec![self.nrows(), self.nrows()], got: self.shape().to_vec() });
        }
        check_len(self.nrows(), x.len())?;
        check_len(self.nrows(), out.len())?;
        out.assign(&self.dot(&x));
        Ok(())
    }
}

/// A closure `f(x, out)` of a given dimension as an operator (handy for test doubles and
/// for operators defined elsewhere).
pub struct FnOperator<F, C> {
    dim: usize,
    f: C,
    _f: PhantomData<fn(F)>,
}

impl<F: Float, C> FnOperator<F, C>
where
    C: Fn(ArrayView1<'_, F>, ArrayViewMut1<'_, F>) -> Result<()>,
{
    /// The operator `x ↦ f(x)` on `F^dim`; `f` writes its result into the second argument.
    pub fn new(dim: usize, f: C) -> Self {
        Self { dim, f, _f: PhantomData }
    }
}

impl<F: Float, C> LinearOperator<F> for FnOperator<F, C>
where
    C: Fn(ArrayView1<'_, F>, ArrayViewMut1<'_, F>) -> Result<()>,
{
    fn dim(&self) -> usize {
        self.dim
    }
    fn apply_into(&self, x: ArrayView1<'_, F>, out: ArrayViewMut1<'_, F>) -> Result<()> {
        check_len(self.dim, x.len())?;
        check_len(self.dim, out.len())?;
        (self.f)(x, out)
    }
}

/// The Hessian of a model's loss at fixed parameters on a fixed batch, as an operator: the
/// full Hessian `H`, or the block-diagonal part `H_ii` of one block (the Hessian with
/// respect to that block's parameters alone, the curvature Q-BERT ranks layers by).
///
/// A block operator is built on the model's prepared [`BlockCurvature`]
/// ([`Autodiff::curvature`]), so a model that restricts its products to the block's layers
/// is fast here without further work; [`BlockOperator`](crate::BlockOperator) applies one
/// block of a curvature prepared once and shared between blocks, and offers the
/// Gauss-Newton matrix too.
#[derive(Clone)]
pub struct HessianOperator<'a, F, M: ?Sized> {
    model: &'a M,
    w: ArrayView1<'a, F>,
    batch: Batch<'a>,
    block: Option<(usize, usize, Arc<dyn BlockCurvature<F> + 'a>)>,
}

impl<F: core::fmt::Debug, M: ?Sized> core::fmt::Debug for HessianOperator<'_, F, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HessianOperator")
            .field("w", &self.w)
            .field("batch", &self.batch)
            .field("block", &self.block.as_ref().map(|(b, _, _)| *b))
            .finish_non_exhaustive()
    }
}

impl<'a, F: Float, M: Autodiff<F> + ?Sized> HessianOperator<'a, F, M> {
    /// The full Hessian at `w` on `batch`.
    ///
    /// # Errors
    /// [`HessianError::ShapeMismatch`] when `w` is not of the model's dimension,
    /// [`HessianError::NonFinite`], and the batch's errors ([`Batch::check`]).
    pub fn full(model: &'a M, w: ArrayView1<'a, F>, batch: Batch<'a>) -> Result<Self> {
        check_len(model.dim(), w.len())?;
        if model.dim() == 0 {
            return Err(HessianError::Empty);
        }
        check_finite(w.iter())?;
        batch.check(model.samples())?;
        Ok(Self { model, w, batch, block: None })
    }

    /// The Hessian of block `index` with respect to its own parameters, at `w` on `batch`.
    ///
    /// # Errors
    /// As [`full`](Self::full), plus [`HessianError::InvalidBlock`] and
    /// [`HessianError::BlockOutOfRange`], and what the model reports while preparing its
    /// curvature.
    pub fn block(model: &'a M, w: ArrayView1<'a, F>, batch: Batch<'a>, index: usize) -> Result<Self>
    where
        M: Sync,
    {
        let len = model.block(index)?.len();
        let mut op = Self::full(model, w, batch)?;
        op.block = Some((index, len, Arc::from(model.curvature(w, batch)?)));
        Ok(op)
    }
}

impl<F: Float, M: Autodiff<F> + ?Sized> LinearOperator<F> for HessianOperator<'_, F, M> {
    fn dim(&self) -> usize {
        self.block.as_ref().map_or(self.model.dim(), |(_, len, _)| *len)
    }

    fn apply_into(&self, x: ArrayView1<'_, F>, mut out: ArrayViewMut1<'_, F>) -> Result<()> {
        check_len(self.dim(), x.len())?;
        check_len(self.dim(), out.len())?;
        check_finite(x.iter())?;
        match &self.block {
            None => self.model.hvp_into(self.w, x, self.batch, out.view_mut())?,
            Some((index, _, curvature)) => curvature.block_product_into(Product::Hessian, *index, x, out.view_mut())?,
        }
        check_finite(out.iter())
    }
}
