//! A multilayer perceptron with softmax cross-entropy; no hidden layers gives softmax
//! regression.

use ndarray::{Array1, Array2, ArrayBase, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, CowArray, Data, Ix2, Zip, s};

use crate::common::{accuracy_of, matrix, softmax_cross_entropy};
use quant_hessian::{HessianError, Result};

use crate::common::{check_finite, check_len};
use quant_core::rng;
use quant_hessian::Real;
use quant_hessian::{Batch, Block, BlockCurvature, Differentiable, MatrixBlock, Model, Product};

/// The hidden-layer nonlinearity of an [`Mlp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Activation {
    /// `max(0, x)`; its second derivative is 0 away from the kink, so the Hessian comes from
    /// the loss and the products of layers only.
    #[default]
    Relu,
    /// `tanh(x)` (in `f32` by a faster route, within 3 ulp of the exact value).
    Tanh,
    /// GELU in its tanh form (as GPT-2 and `gelu_new` compute it):
    /// `½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))`; it differs from the exact erf form by
    /// under 1e-3 everywhere. Where `2√(2/π)(x + 0.044715 x³) < −40` (about `x < −12.7`) the
    /// value and derivatives, all below `4e-18·|x|`, are returned as exact zeros.
    Gelu,
}

const GELU_C: f64 = 0.797_884_560_802_865_4; // √(2/π)
const GELU_A: f64 = 0.044_715;
/// Below `y = −40` GELU and its derivatives are taken as 0.
const GELU_CUTOFF: f64 = 40.0;

impl Activation {
    /// `(σ(z), σ'(z), σ''(z))`.
    // Called per element inside `Real::map_with_derivative`: without the hint it stays a call
    // (the f32 GELU gradient was 10-20% slower when the models moved to this crate).
    #[inline]
    pub(crate) fn eval<T: Real>(self, z: T) -> (T, T, T) {
        let (zero, one, two) = (T::zero(), T::one(), T::cast(2.0));
        match self {
            Activation::Relu => {
                if z > zero {
                    (z, one, zero)
                } else {
                    (zero, zero, zero)
                }
            }
            Activation::Tanh => {
                let t = z.tanh_fast();
                let d = one - t * t;
                (t, d, -two * t * d)
            }
            Activation::Gelu => {
                // ½(1 + tanh u) = s(y), the logistic function of y = 2u: one exp, no tanh, no
                // cancellation. With y' = dy/dz and s' = s(1 − s) = ds/dy:
                // σ = z s, σ' = s + z s' y', σ'' = 2 s' y' + z (s'' y'² + s' y'').
                let (c2, a) = (T::cast(2.0 * GELU_C), T::cast(GELU_A));
                let z2 = z * z;
                let y = c2 * z * (one + a * z2);
                if y < T::cast(-GELU_CUTOFF) {
                    // σ, σ', σ'' are below |z|·e^(−40) ≈ 4e-18·|z|: return exact zeros (as the
                    // tanh form does once tanh rounds to −1) rather than values that reach
                    // the subnormal range and slow every later product.
                    return (zero, zero, zero);
                }
                let s = one / (one + (-y).exp());
                let s1 = s * (one - s);
                let s2 = s1 * (one - two * s);
                let y1 = c2 * (one + T::cast(3.0) * a * z2);
                let y2 = T::cast(6.0) * c2 * a * z;
                (z * s, s + z * s1 * y1, two * s1 * y1 + z * (s2 * y1 * y1 + s1 * y2))
            }
        }
    }
}

/// A multilayer perceptron `softmax(W_L σ(… σ(x W_1 + b_1) …) + b_L)` with mean
/// cross-entropy loss and optional L2 regularisation `½ λ ‖w‖²`.
///
/// Parameters are one flat vector, layer by layer: `W_l` (`fan_in × fan_out`, row-major)
/// then `b_l`; each is its own [`Block`] named `fc{l}.weight` / `fc{l}.bias` (`l` from 1).
/// The gradient is written once, generic over [`Real`], so the Hessian-vector products of
/// the [`Autodiff`](quant_hessian::Autodiff) impl are exact.
#[derive(Debug, Clone)]
pub struct Mlp<F> {
    x: Array2<F>,
    labels: Vec<usize>,
    widths: Vec<usize>,
    activation: Activation,
    l2: F,
    blocks: Vec<Block>,
}

impl<F: Real<Base = F>> Mlp<F> {
    /// An MLP on inputs `x` (`samples × features`) with class `labels`, the given hidden
    /// widths and `classes` outputs.
    ///
    /// # Errors
    /// [`HessianError::Empty`] for no samples, [`HessianError::ShapeMismatch`] when `labels`
    /// does not have one entry per row, [`HessianError::InvalidWidth`] for a zero width or
    /// no features or classes, [`HessianError::InvalidLabel`], [`HessianError::NonFinite`].
    pub fn new(
        x: &ArrayBase<impl Data<Elem = F>, Ix2>,
        labels: &[usize],
        hidden: &[usize],
        classes: usize,
        activation: Activation,
    ) -> Result<Self> {
        if x.nrows() == 0 {
            return Err(HessianError::Empty);
        }
        check_len(x.nrows(), labels.len())?;
        check_finite(x.iter())?;
        let widths: Vec<usize> = core::iter::once(x.ncols()).chain(hidden.iter().copied()).chain(core::iter::once(classes)).collect();
        if let Some(layer) = widths.iter().position(|&w| w == 0) {
            return Err(HessianError::InvalidWidth { layer });
        }
        if let Some((index, &label)) = labels.iter().enumerate().find(|&(_, &l)| l >= classes) {
            return Err(HessianError::InvalidLabel { index, label, classes });
        }
        let mut blocks = Vec::with_capacity(2 * (widths.len() - 1));
        let mut start = 0;
        for (l, pair) in widths.windows(2).enumerate() {
            let (fi, fo) = (pair[0], pair[1]);
            blocks.push(Block::new(format!("fc{}.weight", l + 1), start, fi * fo));
            blocks.push(Block::new(format!("fc{}.bias", l + 1), start + fi * fo, fo));
            start += fi * fo + fo;
        }
        Ok(Self { x: x.to_owned(), labels: labels.to_vec(), widths, activation, l2: F::zero(), blocks })
    }

    /// Softmax regression (an MLP without hidden layers).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn softmax_regression(x: &ArrayBase<impl Data<Elem = F>, Ix2>, labels: &[usize], classes: usize) -> Result<Self> {
        Self::new(x, labels, &[], classes, Activation::Relu)
    }

    /// The same model with L2 regularisation `½ λ ‖w‖²` added to the loss (every parameter,
    /// biases included).
    ///
    /// # Errors
    /// [`HessianError::InvalidValue`] unless `λ` is finite and `≥ 0`.
    pub fn with_l2(mut self, lambda: f64) -> Result<Self> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(HessianError::InvalidValue { what: "l2", value: lambda });
        }
        self.l2 = F::cast(lambda);
        Ok(self)
    }

    /// Layer widths, inputs first, classes last.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// The activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Seeded initial parameters: weights normal with variance `2 / fan_in` (He) for ReLU
    /// and `1 / fan_in` otherwise, biases zero.
    pub fn init(&self, seed: u64) -> Array1<F> {
        let mut w = Array1::zeros(self.dim());
        let gain = if self.activation == Activation::Relu { 2.0 } else { 1.0 };
        for (l, pair) in self.widths.windows(2).enumerate() {
            let r = self.blocks[2 * l].range();
            let std = F::cast((gain / pair[0] as f64).sqrt());
            w.slice_mut(s![r.clone()]).assign(&rng::normal::<F>(r.len(), seed, l as u64).mapv(|v| v * std));
        }
        w
    }

    /// Class scores (`rows × classes`) for inputs `x` (`rows × features`).
    ///
    /// # Errors
    /// [`HessianError::ShapeMismatch`] for a wrong `w` length or feature count.
    pub fn logits(&self, w: ArrayView1<'_, F>, x: ArrayView2<'_, F>) -> Result<Array2<F>> {
        check_len(self.dim(), w.len())?;
        check_len(self.widths[0], x.ncols())?;
        let (logits, _) = self.forward::<F>(w, x)?;
        Ok(logits)
    }

    /// The weight-matrix blocks with their `fan_in × fan_out` shapes.
    pub fn weight_blocks(&self) -> Vec<MatrixBlock> {
        self.widths.windows(2).enumerate().map(|(l, p)| MatrixBlock::new(2 * l, p[0], p[1])).collect()
    }

    /// Class scores with `hook(site, input)` called on the input of every layer (site `l`
    /// for layer `l`) before it is applied; it may change the input in place (for example
    /// to fake-quantize activations).
    ///
    /// # Errors
    /// As [`logits`](Self::logits).
    pub fn logits_with(
        &self,
        w: ArrayView1<'_, F>,
        x: ArrayView2<'_, F>,
        mut hook: impl FnMut(usize, ndarray::ArrayViewMut2<'_, F>),
    ) -> Result<Array2<F>> {
        check_len(self.dim(), w.len())?;
        check_len(self.widths[0], x.ncols())?;
        let layers = self.widths.len() - 1;
        let mut h = x.to_owned();
        for l in 0..layers {
            hook(l, h.view_mut());
            let (weight, bias) = self.layer(w, l);
            let mut z = h.dot(&weight);
            z += &bias;
            if l + 1 < layers {
                let act = self.activation;
                z.mapv_inplace(|v| act.eval(v).0);
            }
            h = z;
        }
        Ok(h)
    }

    /// The fraction of the batch's samples whose largest score is the label.
    ///
    /// # Errors
    /// As [`logits`](Self::logits), plus the batch's errors.
    pub fn accuracy(&self, w: ArrayView1<'_, F>, batch: Batch<'_>) -> Result<f64> {
        self.accuracy_with(w, batch, |_, _| {})
    }

    /// [`accuracy`](Self::accuracy) with an input hook as in [`logits_with`](Self::logits_with).
    ///
    /// # Errors
    /// As [`accuracy`](Self::accuracy).
    pub fn accuracy_with(
        &self,
        w: ArrayView1<'_, F>,
        batch: Batch<'_>,
        hook: impl FnMut(usize, ndarray::ArrayViewMut2<'_, F>),
    ) -> Result<f64> {
        batch.check(self.samples())?;
        let (x, labels) = self.gather(batch);
        let logits = self.logits_with(w, x.view(), hook)?;
        Ok(accuracy_of(logits.view(), &labels))
    }

    fn gather(&self, batch: Batch<'_>) -> (CowArray<'_, F, Ix2>, Vec<usize>) {
        match batch {
            Batch::All => (self.x.view().into(), self.labels.clone()),
            Batch::Indices(idx) => (self.x.select(Axis(0), idx).into(), idx.iter().map(|&i| self.labels[i]).collect()),
        }
    }

    /// Layer `l`'s weight (`fan_in × fan_out`) and bias views of `w`.
    fn layer<'w, T: Real>(&self, w: ArrayView1<'w, T>, l: usize) -> (CowArray<'w, T, Ix2>, ArrayView1<'w, T>) {
        let (fi, fo) = (self.widths[l], self.widths[l + 1]);
        let br = self.blocks[2 * l + 1].range();
        (matrix(w, &self.blocks[2 * l], fi, fo), w.slice_move(s![br]))
    }

    /// Forward pass: the logits and, per hidden layer, `(activation, its derivative)`.
    #[allow(clippy::type_complexity)]
    fn forward<T: Real<Base = F>>(&self, w: ArrayView1<'_, T>, x: ArrayView2<'_, F>) -> Result<(Array2<T>, Vec<(Array2<T>, Array2<T>)>)> {
        let layers = self.widths.len() - 1;
        let mut hidden: Vec<(Array2<T>, Array2<T>)> = Vec::with_capacity(layers - 1);
        for l in 0..layers {
            let (weight, bias) = self.layer(w, l);
            let mut z = match hidden.last() {
                None => T::matmul_base(x, weight.view()),
                Some((h, _)) => T::matmul(h.view(), weight.view()),
            };
            z += &bias;
            if l + 1 == layers {
                return Ok((z, hidden));
            }
            let mut dh = Array2::zeros(z.raw_dim());
            let act = self.activation;
            T::map_with_derivative(z.view_mut(), dh.view_mut(), |v| act.eval(v));
            hidden.push((z, dh));
        }
        unreachable!("an MLP has at least one layer")
    }
}

impl<F> Model for Mlp<F> {
    fn dim(&self) -> usize {
        self.blocks.last().map_or(0, |b| b.range().end)
    }
    fn blocks(&self) -> &[Block] {
        &self.blocks
    }
    fn samples(&self) -> usize {
        self.labels.len()
    }
}

impl<F: Real<Base = F>> Differentiable<F> for Mlp<F> {
    fn loss_grad<T: Real<Base = F>>(&self, w: ArrayView1<'_, T>, batch: Batch<'_>, mut grad: ArrayViewMut1<'_, T>) -> Result<T> {
        check_len(self.dim(), w.len())?;
        check_len(self.dim(), grad.len())?;
        batch.check(self.samples())?;
        let (x, labels) = self.gather(batch);
        let (mut g, hidden) = self.forward::<T>(w, x.view())?;
        let mut loss = softmax_cross_entropy(g.view_mut(), &labels);
        for l in (0..self.widths.len() - 1).rev() {
            let dw = match l {
                0 => T::matmul_base(x.t(), g.view()),
                _ => T::matmul(hidden[l - 1].0.t(), g.view()),
            };
            let wr = self.blocks[2 * l].range();
            grad.slice_mut(s![wr]).iter_mut().zip(dw.iter()).for_each(|(o, &v)| *o = v);
            let br = self.blocks[2 * l + 1].range();
            grad.slice_mut(s![br]).assign(&g.sum_axis(Axis(0)));
            if l > 0 {
                let (weight, _) = self.layer(w, l);
                let mut back = T::matmul(g.view(), weight.t());
                back *= &hidden[l - 1].1;
                g = back;
            }
        }
        if self.l2 > F::zero() {
            let lam = T::from_base(self.l2);
            loss += T::cast(0.5) * lam * w.dot(&w);
            grad.scaled_add(lam, &w);
        }
        if !loss.is_finite() {
            return Err(HessianError::NonFinite { index: 0 });
        }
        Ok(loss)
    }

    /// The loss prepared for block products: the forward and reverse passes at `w` are kept,
    /// and a block's product runs forward mode from the block's layer and a reverse pass
    /// back to it (Pearlmutter's R-operator), nothing below.
    ///
    /// Both the Hessian and the generalised Gauss-Newton matrix `Jᵀ (∇²ℓ) J` of the logits
    /// (the Fisher of the softmax; it drops the activations' second derivatives, so for ReLU
    /// it equals the Hessian) are offered; the L2 term `λ I` is part of both.
    fn curvature<'a>(&'a self, w: ArrayView1<'a, F>, batch: Batch<'a>) -> Result<Box<dyn BlockCurvature<F> + 'a>>
    where
        Self: Sized + Sync,
    {
        Ok(Box::new(MlpCurvature::new(self, w, batch)?))
    }
}

/// An [`Mlp`] prepared at `w` on a batch.
struct MlpCurvature<'a, F> {
    mlp: &'a Mlp<F>,
    w: ArrayView1<'a, F>,
    /// Each layer's input (`inputs[0]` the batch's rows).
    inputs: Vec<Array2<F>>,
    /// Per hidden layer `σ'(z)`.
    slope: Vec<Array2<F>>,
    /// Per hidden layer `(∂L/∂a) ⊙ σ''(z)`, the curvature of the activation the Hessian adds.
    bend: Vec<Array2<F>>,
    /// Softmax probabilities of the logits.
    probs: Array2<F>,
    /// `1 / rows`.
    inv: F,
    /// Work arrays kept between products (one set per concurrent product).
    work: std::sync::Mutex<Vec<MlpWork<F>>>,
}

impl<'a, F: Real<Base = F>> MlpCurvature<'a, F> {
    fn new(mlp: &'a Mlp<F>, w: ArrayView1<'a, F>, batch: Batch<'a>) -> Result<Self> {
        quant_hessian::check_curvature_inputs(mlp, w, batch)?;
        let (x, labels) = mlp.gather(batch);
        let layers = mlp.widths.len() - 1;
        let mut inputs = vec![x.into_owned()];
        let (mut slope, mut second) = (Vec::new(), Vec::new());
        let mut logits = Array2::zeros((0, 0));
        for l in 0..layers {
            let (weight, bias) = mlp.layer(w, l);
            let mut z = inputs[l].dot(&weight);
            z += &bias;
            if l + 1 == layers {
                logits = z;
                break;
            }
            let (mut d1, mut d2) = (Array2::zeros(z.raw_dim()), Array2::zeros(z.raw_dim()));
            let act = mlp.activation;
            ndarray::Zip::from(&mut z).and(&mut d1).and(&mut d2).for_each(|z, d1, d2| {
                let (a, s1, s2) = act.eval(*z);
                (*z, *d1, *d2) = (a, s1, s2);
            });
            inputs.push(z);
            slope.push(d1);
            second.push(d2);
        }
        let mut g = logits;
        let loss = softmax_cross_entropy(g.view_mut(), &labels);
        if !loss.is_finite() {
            return Err(HessianError::NonFinite { index: 0 });
        }
        let inv = F::cast(1.0 / labels.len() as f64);
        // g = (P − Y)/n: the probabilities back.
        let mut probs = g.mapv(|v| v / inv);
        for (mut row, &y) in probs.outer_iter_mut().zip(&labels) {
            row[y] += F::one();
        }
        // ∂L/∂a_l = g_l W_lᵀ, then g_{l−1} = (∂L/∂a_l) ⊙ σ'(z_{l−1}).
        let mut bend = vec![Array2::zeros((0, 0)); second.len()];
        for l in (1..layers).rev() {
            let (weight, _) = mlp.layer(w, l);
            let da = g.dot(&weight.t());
            bend[l - 1] = &da * &second[l - 1];
            g = da * &slope[l - 1];
        }
        Ok(Self { mlp, w, inputs, slope, bend, probs, inv, work: std::sync::Mutex::new(Vec::new()) })
    }

    /// `M_bb v` for the weight or bias of one layer.
    ///
    /// Rows (samples) are independent until the block's gradient sums them, so the product
    /// runs in chunks of [`CHUNK`] rows, each through forward mode and the reverse pass with
    /// its intermediates in cache, and the chunks' gradients are added in order (the same
    /// bits on any thread count).
    fn product(&self, product: Product, block: usize, v: ArrayView1<'_, F>, mut out: ArrayViewMut1<'_, F>) {
        let mlp = self.mlp;
        let (m, is_bias) = (block / 2, block % 2 == 1);
        let (fi, fo) = (mlp.widths[m], mlp.widths[m + 1]);
        let v = v.as_standard_layout();
        // Work arrays are kept between products: fresh ones every call cost page faults.
        let mut work = self.work.lock().map(|mut pool| pool.pop()).unwrap_or(None).unwrap_or_else(|| self.new_work());
        let rows = self.inputs[0].nrows();
        let mut sum = Array2::<F>::zeros(if is_bias { (1, fo) } else { (fi, fo) });
        for r0 in (0..rows).step_by(CHUNK) {
            let r1 = (r0 + CHUNK).min(rows);
            self.chunk(product, m, is_bias, v.view(), r0..r1, &mut work, sum.view_mut());
        }
        out.iter_mut().zip(sum.iter()).for_each(|(o, &x)| *o = x);
        if mlp.l2 > F::zero() {
            out.scaled_add(mlp.l2, &v);
        }
        if let Ok(mut pool) = self.work.lock() {
            pool.push(work);
        }
    }

    /// Rows `rows` of [`product`](Self::product): their share of `M_bb v` added to `sum`
    /// (`fan_in × fan_out` for a weight, `1 × fan_out` for a bias).
    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &self,
        product: Product,
        m: usize,
        is_bias: bool,
        v: ArrayView1<'_, F>,
        rows: std::ops::Range<usize>,
        work: &mut MlpWork<F>,
        mut sum: ArrayViewMut2<'_, F>,
    ) {
        let mlp = self.mlp;
        let layers = mlp.widths.len() - 1;
        let (fi, fo) = (mlp.widths[m], mlp.widths[m + 1]);
        let n = rows.len();
        let r = s![rows.clone(), ..];
        let MlpWork { z, a, g } = work;
        let mut z: Vec<ArrayViewMut2<'_, F>> = z.iter_mut().map(|z| z.slice_mut(s![..n, ..])).collect();
        let mut a: Vec<ArrayViewMut2<'_, F>> = a
            .iter_mut()
            .map(|a| {
                let k = n.min(a.nrows());
                a.slice_mut(s![..k, ..])
            })
            .collect();
        let mut g: Vec<ArrayViewMut2<'_, F>> = g.iter_mut().map(|g| g.slice_mut(s![..n, ..])).collect();
        // Forward mode: the tangent of z_m, then of every layer above.
        if is_bias {
            z[m].fill(F::zero());
            z[m] += &v;
        } else {
            let vm = v.into_shape_with_order((fi, fo)).unwrap_or_else(|_| unreachable!("the block is fan_in × fan_out"));
            F::matmul_into(self.inputs[m].slice(r), vm, false, z[m].view_mut());
        }
        for l in m + 1..layers {
            let (weight, _) = mlp.layer(self.w, l);
            product_into(a[l].view_mut(), z[l - 1].view(), self.slope[l - 1].slice(r));
            F::matmul_into(a[l].view(), weight.view(), false, z[l].view_mut());
        }
        // The softmax cross-entropy's Hessian of the logits: (diag p − p pᵀ) / n per row.
        g[layers - 1].assign(&z[layers - 1]);
        for (mut row, p) in g[layers - 1].outer_iter_mut().zip(self.probs.slice(r).outer_iter()) {
            let inner = row.iter().zip(p).fold(F::zero(), |a, (&t, &pi)| a + t * pi);
            row.zip_mut_with(&p, |t, &pi| *t = pi * (*t - inner) * self.inv);
        }
        // Reverse: back to layer m.
        for l in (m + 1..layers).rev() {
            let (weight, _) = mlp.layer(self.w, l);
            let (below, above) = g.split_at_mut(l);
            F::matmul_into(above[0].view(), weight.t(), false, below[l - 1].view_mut());
            let bend = (product == Product::Hessian).then(|| (self.bend[l - 1].slice(r), z[l - 1].view()));
            second_order_back(below[l - 1].view_mut(), self.slope[l - 1].slice(r), bend);
        }
        if is_bias {
            let mut total = sum.row_mut(0);
            total += &g[m].sum_axis(Axis(0));
        } else {
            F::matmul_into(self.inputs[m].slice(r).t(), g[m].view(), true, sum);
        }
    }

    /// Work arrays for one product's chunks: per layer the tangents of its output and of its
    /// input activation, and the second-order reverse pass's array, [`CHUNK`] rows each.
    fn new_work(&self) -> MlpWork<F> {
        let (rows, w) = (self.inputs[0].nrows().min(CHUNK), &self.mlp.widths);
        let layers = w.len() - 1;
        MlpWork {
            z: (0..layers).map(|l| Array2::zeros((rows, w[l + 1]))).collect(),
            a: (0..layers).map(|l| Array2::zeros((if l == 0 { 0 } else { rows }, w[l]))).collect(),
            g: (0..layers).map(|l| Array2::zeros((rows, w[l + 1]))).collect(),
        }
    }
}

/// `a = z ⊙ s` (flat loops over contiguous rows, compiled also for AVX-512 where the CPU has
/// it; `Zip` otherwise).
fn product_into<F: Real>(mut a: ArrayViewMut2<'_, F>, z: ArrayView2<'_, F>, s: ArrayView2<'_, F>) {
    if let (Some(a), Some(z), Some(s)) = (a.as_slice_mut(), z.as_slice(), s.as_slice()) {
        elementwise(Pass::Product { a, z, s });
    } else {
        Zip::from(&mut a).and(&z).and(&s).for_each(|a, &z, &s| *a = z * s);
    }
}

/// The reverse pass through an activation: `g = g ⊙ σ'(z) + (∂L/∂a ⊙ σ''(z)) ⊙ ż` with
/// `bend = (∂L/∂a ⊙ σ''(z), ż)` for the Hessian, `g = g ⊙ σ'(z)` without it (Gauss-Newton).
fn second_order_back<F: Real>(mut g: ArrayViewMut2<'_, F>, slope: ArrayView2<'_, F>, bend: Option<(ArrayView2<'_, F>, ArrayView2<'_, F>)>) {
    match bend {
        Some((b, z)) => {
            if let (Some(g), Some(s), Some(b), Some(z)) = (g.as_slice_mut(), slope.as_slice(), b.as_slice(), z.as_slice()) {
                elementwise(Pass::Bend { g, s, b, z });
            } else {
                Zip::from(&mut g).and(&slope).and(&b).and(&z).for_each(|g, &s, &b, &z| *g = *g * s + b * z);
            }
        }
        None => g.zip_mut_with(&slope, |g, &s| *g *= s),
    }
}

/// An elementwise pass of the block products over contiguous slices.
enum Pass<'p, F> {
    /// `a = z ⊙ s`.
    Product { a: &'p mut [F], z: &'p [F], s: &'p [F] },
    /// `g = g ⊙ s + b ⊙ z`.
    Bend { g: &'p mut [F], s: &'p [F], b: &'p [F], z: &'p [F] },
}

quant_core::multiversion! {
    /// Runs `pass`, compiled also for AVX-512 and chosen at run time where the CPU has it: the
    /// same Rust, so the same bits, in wider vectors. On the digits MLP's first layer these
    /// passes wait mostly on the kept `σ'` and bend arrays, which stream from the last-level
    /// cache: the wider loops took their share of a block product from 22% to 16% in a
    /// profile.
    fn elementwise<F: Real>(pass: Pass<'_, F>) {
        match pass {
            Pass::Product { a, z, s } => a.iter_mut().zip(z.iter().zip(s)).for_each(|(a, (&z, &s))| *a = z * s),
            Pass::Bend { g, s, b, z } => {
                g.iter_mut().zip(s.iter().zip(b.iter().zip(z))).for_each(|(g, (&s, (&b, &z)))| *g = *g * s + b * z)
            }
        }
    }
}

/// Rows per chunk of a block product: small enough that a chunk's intermediates stay in the
/// core's cache at the widths of the reference models, large enough for full-speed products.
const CHUNK: usize = 128;

/// [`MlpCurvature`]'s work arrays for one product (see `new_work`).
struct MlpWork<F> {
    z: Vec<Array2<F>>,
    a: Vec<Array2<F>>,
    g: Vec<Array2<F>>,
}

impl<F: Real<Base = F>> BlockCurvature<F> for MlpCurvature<'_, F> {
    fn blocks(&self) -> &[Block] {
        &self.mlp.blocks
    }

    fn supports(&self, product: Product) -> bool {
        matches!(product, Product::Hessian | Product::GaussNewton)
    }

    fn block_product_into(&self, product: Product, block: usize, v: ArrayView1<'_, F>, out: ArrayViewMut1<'_, F>) -> Result<()> {
        quant_hessian::check_block_product(&self.mlp.blocks, block, v.len(), out.len())?;
        match product {
            Product::Hessian | Product::GaussNewton => self.product(product, block, v, out),
            _ => return Err(HessianError::Unsupported { what: "this product" }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of every sign and size, with zeros and subnormals (f32's from `1e-40`, f64's
    /// from `1e-310`, which is 0 in f32).
    fn values<F: Real>(n: usize, seed: u64) -> Vec<F> {
        let base = rng::normal::<F>(n, seed, 0);
        let scale = |i: usize| match i % 9 {
            0 => 0.0,
            3 => 1e-40,
            5 => 1e-310,
            7 => 1e30,
            _ => 1.0,
        };
        base.iter().enumerate().map(|(i, &v)| v * F::cast(scale(i))).collect()
    }

    fn passes_agree_with_scalar_loops<F: Real>() {
        // Lengths around the vector widths, so every remainder path runs.
        for n in [0, 1, 7, 8, 15, 16, 17, 31, 33, 64, 127, 130] {
            let (z, s, b) = (values::<F>(n, 1), values::<F>(n, 2), values::<F>(n, 3));
            let mut a = vec![F::zero(); n];
            elementwise(Pass::Product { a: &mut a, z: &z, s: &s });
            let want: Vec<F> = (0..n).map(|i| z[i] * s[i]).collect();
            assert!(a.iter().zip(&want).all(|(x, y)| x.as_f64().to_bits() == y.as_f64().to_bits()), "product, n = {n}");
            let mut g = values::<F>(n, 4);
            let want: Vec<F> = (0..n).map(|i| g[i] * s[i] + b[i] * z[i]).collect();
            elementwise(Pass::Bend { g: &mut g, s: &s, b: &b, z: &z });
            assert!(g.iter().zip(&want).all(|(x, y)| x.as_f64().to_bits() == y.as_f64().to_bits()), "bend, n = {n}");
        }
    }

    #[test]
    fn elementwise_passes_give_the_scalar_loops_bits() {
        passes_agree_with_scalar_loops::<f32>();
        passes_agree_with_scalar_loops::<f64>();
    }
}
