//! The pluggable model traits: [`Model`], [`Autodiff`] and [`Differentiable`].

use core::ops::Range;

use ndarray::{Array1, ArrayView1, ArrayViewMut1, Zip};
use quant_core::Float;

use crate::curvature::{BlockCurvature, PaddedCurvature};
use crate::dual::Dual;
use crate::error::{HessianError, Result, check_finite, check_len};
use crate::real::Real;

/// A parameter block that is a weight matrix: its index among the model's blocks and its
/// shape as the model stores it, `fan_in × fan_out` (`y = x W`). The family's convention is
/// `out × in`; code that takes matrices out of a model with this layout transposes them at
/// that boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatrixBlock {
    /// Index of the block in the model's blocks.
    pub block: usize,
    /// Rows as stored (inputs).
    pub fan_in: usize,
    /// Columns as stored (outputs).
    pub fan_out: usize,
}

impl MatrixBlock {
    /// Block `block`, stored `fan_in × fan_out`.
    pub const fn new(block: usize, fan_in: usize, fan_out: usize) -> Self {
        Self { block, fan_in, fan_out }
    }
    /// Number of weights.
    pub const fn len(&self) -> usize {
        self.fan_in * self.fan_out
    }
    /// Whether the matrix has no weights.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A named contiguous block (layer) of a model's flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Block {
    name: String,
    start: usize,
    len: usize,
}

impl Block {
    /// The block `name` covering parameters `start..start + len`.
    pub fn new(name: impl Into<String>, start: usize, len: usize) -> Self {
        Self { name: name.into(), start, len }
    }
    /// The name (for example `"fc1.weight"`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The parameter range.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the block is empty (models should not have empty blocks).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Which samples a loss, gradient or Hessian-vector product averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Batch<'a> {
    /// Every sample.
    #[default]
    All,
    /// The samples at these indices (repeats count repeatedly).
    Indices(&'a [usize]),
}

impl Batch<'_> {
    /// The number of samples the batch holds, out of `samples`.
    pub fn len(&self, samples: usize) -> usize {
        match self {
            Batch::All => samples,
            Batch::Indices(i) => i.len(),
        }
    }

    /// Checks the batch against a data set of `samples` samples.
    ///
    /// # Errors
    /// [`HessianError::Empty`] for an empty batch or data set,
    /// [`HessianError::SampleOutOfRange`] for an index past the end.
    pub fn check(&self, samples: usize) -> Result<()> {
        if self.len(samples) == 0 {
            return Err(HessianError::Empty);
        }
        if let Batch::Indices(idx) = self
            && let Some(&index) = idx.iter().find(|&&i| i >= samples)
        {
            return Err(HessianError::SampleOutOfRange { index, samples });
        }
        Ok(())
    }
}

/// The shape of a model: the length of its flat parameter vector, its named blocks, and
/// how many data samples it holds.
pub trait Model {
    /// Length of the flat parameter vector.
    fn dim(&self) -> usize;
    /// The named blocks (layers), each a contiguous range of the parameter vector.
    fn blocks(&self) -> &[Block];
    /// The number of data samples (what [`Batch::Indices`] index into).
    fn samples(&self) -> usize;

    /// Checks that `index` names a block that lies inside the parameter vector, and returns it.
    ///
    /// # Errors
    /// [`HessianError::InvalidBlock`], [`HessianError::BlockOutOfRange`].
    fn block(&self, index: usize) -> Result<&Block> {
        let blocks = self.blocks();
        let block = blocks.get(index).ok_or(HessianError::InvalidBlock { index, count: blocks.len() })?;
        let r = block.range();
        if r.is_empty() || r.end > self.dim() {
            return Err(HessianError::BlockOutOfRange { index, start: r.start, end: r.end, dim: self.dim() });
        }
        Ok(block)
    }
}

/// A model with a loss, its gradient and Hessian-vector products on a chosen batch.
///
/// The required core is the loss and gradient; [`hvp_into`](Autodiff::hvp_into) defaults to
/// a central finite difference of the gradient ([`finite_difference_hvp`]), so a model from
/// another framework that only has gradients plugs in with three small methods. Models
/// whose gradient is written generic over [`Real`] implement [`Differentiable`] instead and
/// get this trait, with exact Hessian-vector products, from a blanket impl.
///
/// The loss is an average over the batch's samples; callers have checked that `w`, `v` and
/// the output buffers have length [`dim`](Model::dim) and that the batch is valid.
pub trait Autodiff<F: Float>: Model {
    /// Writes the gradient of the loss at `w` on `batch` into `grad` and returns the loss.
    ///
    /// # Errors
    /// Whatever the model reports (for example [`HessianError::NonFinite`] for a loss that
    /// overflowed).
    fn loss_grad_into(&self, w: ArrayView1<'_, F>, batch: Batch<'_>, grad: ArrayViewMut1<'_, F>) -> Result<F>;

    /// Writes the Hessian-vector product `H(w) v` on `batch` into `out`.
    ///
    /// # Errors
    /// As [`loss_grad_into`](Autodiff::loss_grad_into).
    fn hvp_into(&self, w: ArrayView1<'_, F>, v: ArrayView1<'_, F>, batch: Batch<'_>, out: ArrayViewMut1<'_, F>) -> Result<()> {
        finite_difference_hvp(self, w, v, batch, out)
    }

    /// Whether [`hvp_into`](Autodiff::hvp_into) is exact or a finite difference.
    fn hvp_kind(&self) -> HvpKind {
        HvpKind::FiniteDifference
    }

    /// The loss at `w` on `batch` prepared for many block products ([`BlockCurvature`]). The
    /// default, [`PaddedCurvature`], runs a whole-model [`hvp_into`](Autodiff::hvp_into) per
    /// product; a model that knows its layers keeps its forward pass and restricts each
    /// product to the layers its block touches.
    ///
    /// # Errors
    /// [`HessianError::ShapeMismatch`] for a `w` of the wrong length, the batch's errors, and
    /// what the model reports while preparing.
    fn curvature<'a>(&'a self, w: ArrayView1<'a, F>, batch: Batch<'a>) -> Result<Box<dyn BlockCurvature<F> + 'a>>
    where
        Self: Sync,
    {
        Ok(Box::new(PaddedCurvature::new(self, w, batch)?))
    }
}

/// How a model computes Hessian-vector products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HvpKind {
    /// Exact up to rounding (forward over reverse, or the model's own).
    Exact,
    /// Central finite difference of the gradient ([`finite_difference_hvp`]).
    FiniteDifference,
}

/// A model whose loss gradient is written once, generic over [`Real`].
///
/// Every such model is an [`Autodiff`] model with exact Hessian-vector products: the
/// gradient evaluated at `Dual::new(w, v)` (forward over reverse) has tangent `H v`.
pub trait Differentiable<F: Real<Base = F>>: Model {
    /// Writes the gradient of the loss at `w` on `batch` into `grad` and returns the loss,
    /// computed in `T`.
    ///
    /// # Errors
    /// Whatever the model reports.
    fn loss_grad<T: Real<Base = F>>(&self, w: ArrayView1<'_, T>, batch: Batch<'_>, grad: ArrayViewMut1<'_, T>) -> Result<T>;

    /// The loss at `w` on `batch` prepared for block products; see [`Autodiff::curvature`]
    /// (which forwards here). The default runs the exact whole-model product per block
    /// product.
    ///
    /// # Errors
    /// As [`Autodiff::curvature`].
    fn curvature<'a>(&'a self, w: ArrayView1<'a, F>, batch: Batch<'a>) -> Result<Box<dyn BlockCurvature<F> + 'a>>
    where
        Self: Sized + Sync,
    {
        Ok(Box::new(PaddedCurvature::new(self, w, batch)?))
    }
}

impl<F: Real<Base = F>, M: Differentiable<F>> Autodiff<F> for M {
    fn loss_grad_into(&self, w: ArrayView1<'_, F>, batch: Batch<'_>, grad: ArrayViewMut1<'_, F>) -> Result<F> {
        self.loss_grad::<F>(w, batch, grad)
    }

    /// Forward over reverse: the gradient at `w + v ε`.
    ///
    /// The two dual work vectors (parameters and gradient) are kept per thread for the next
    /// call of the same size and type: for a model of millions of parameters, fresh
    /// allocations of that size come from the kernel page by page on every call (a sixth of
    /// an HVP's time on all-MiniLM-L6-v2 at 8 sentences). [`release_hvp_buffers`] frees them.
    fn hvp_into(&self, w: ArrayView1<'_, F>, v: ArrayView1<'_, F>, batch: Batch<'_>, mut out: ArrayViewMut1<'_, F>) -> Result<()> {
        check_len(w.len(), v.len())?;
        let (mut wd, mut g) = take_buffers::<F>();
        wd.clear();
        wd.extend(w.iter().zip(&v).map(|(&a, &b)| Dual::new(a, b)));
        g.clear();
        g.resize(w.len(), Dual::constant(F::zero()));
        let result = self.loss_grad::<Dual<F>>(ArrayView1::from(&wd[..]), batch, ArrayViewMut1::from(&mut g[..]));
        if result.is_ok() {
            Zip::from(&mut out).and(&ArrayView1::from(&g[..])).for_each(|o, d| *o = d.tangent);
        }
        put_buffers(wd, g);
        result.map(|_| ())
    }

    fn hvp_kind(&self) -> HvpKind {
        HvpKind::Exact
    }

    fn curvature<'a>(&'a self, w: ArrayView1<'a, F>, batch: Batch<'a>) -> Result<Box<dyn BlockCurvature<F> + 'a>>
    where
        Self: Sync,
    {
        Differentiable::curvature(self, w, batch)
    }
}

thread_local! {
    /// The blanket HVP's dual work vectors, by base type (see [`Autodiff::hvp_into`]).
    static HVP_BUFFERS: core::cell::RefCell<Option<Box<dyn core::any::Any>>> = const { core::cell::RefCell::new(None) };
}

/// This thread's dual work vectors for base type `F` (empty ones if none are kept, or if a
/// call is already using them: a nested HVP allocates its own).
fn take_buffers<F: Float>() -> (Vec<Dual<F>>, Vec<Dual<F>>) {
    HVP_BUFFERS
        .with(|b| b.borrow_mut().take())
        .and_then(|any| any.downcast::<(Vec<Dual<F>>, Vec<Dual<F>>)>().ok())
        .map_or_else(|| (Vec::new(), Vec::new()), |b| *b)
}

fn put_buffers<F: Float>(wd: Vec<Dual<F>>, g: Vec<Dual<F>>) {
    HVP_BUFFERS.with(|b| *b.borrow_mut() = Some(Box::new((wd, g))));
}

/// Frees this thread's HVP work vectors (which [`Autodiff::hvp_into`] keeps for the next
/// call of a [`Differentiable`] model).
pub fn release_hvp_buffers() {
    HVP_BUFFERS.with(|b| *b.borrow_mut() = None);
}

/// The central finite-difference Hessian-vector product
/// `(g(w + h v) − g(w − h v)) / (2h)`, with `h = ε^(1/3) · max(1, ‖w‖) / ‖v‖`.
///
/// The step balances truncation (`O(h²)` times the third derivative) against rounding in
/// the gradient (`O(ε / h)`); the result has about two thirds of the working precision:
/// relative error near `ε^(2/3)`, about `4e-11` in `f64` and `2.4e-5` in `f32`, for a loss
/// whose third derivatives are of the order of its second. Piecewise-linear activations
/// (ReLU) whose kinks fall inside `w ± h v` add an error of the size of the kink's jump.
/// `v = 0` gives 0 without evaluating the gradient.
///
/// # Errors
/// [`HessianError::ShapeMismatch`] when `w`, `v` and `out` differ from the model's
/// dimension, [`HessianError::NonFinite`] for a non-finite `w`, `v` or difference, and
/// whatever the model's gradient reports.
pub fn finite_difference_hvp<F: Float, M: Autodiff<F> + ?Sized>(
    model: &M,
    w: ArrayView1<'_, F>,
    v: ArrayView1<'_, F>,
    batch: Batch<'_>,
    mut out: ArrayViewMut1<'_, F>,
) -> Result<()> {
    let n = model.dim();
    check_len(n, w.len())?;
    check_len(n, v.len())?;
    check_len(n, out.len())?;
    check_finite(w.iter())?;
    check_finite(v.iter())?;
    let vnorm = v.dot(&v).sqrt();
    if vnorm == F::zero() {
        out.fill(F::zero());
        return Ok(());
    }
    let wnorm = w.dot(&w).sqrt();
    let h = F::epsilon().cbrt() * wnorm.max(F::one()) / vnorm;
    let mut wp = w.to_owned();
    wp.scaled_add(h, &v);
    let mut wm = w.to_owned();
    wm.scaled_add(-h, &v);
    let mut gp = Array1::zeros(n);
    model.loss_grad_into(wp.view(), batch, gp.view_mut())?;
    let mut gm = Array1::zeros(n);
    model.loss_grad_into(wm.view(), batch, gm.view_mut())?;
    let inv = (h + h).recip();
    Zip::from(&mut out).and(&gp).and(&gm).for_each(|o, &a, &b| *o = (a - b) * inv);
    check_finite(out.iter())
}
