//! A small BERT-style encoder classifier with a hand-written backward pass.

use ndarray::{Array1, Array2, ArrayBase, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Data, Ix2, s};

use crate::common::{accuracy_of, layer_norm, layer_norm_back, matrix, rows_and_labels, softmax_cross_entropy};
use crate::mlp::Activation;
use quant_hessian::{HessianError, Result};

use crate::common::{check_finite, check_len};
use quant_core::rng;
use quant_hessian::Real;
use quant_hessian::{Batch, Block, Differentiable, MatrixBlock, Model};

/// The shape of an [`Encoder`].
///
/// | Name | Purpose | Range |
/// |---|---|---|
/// | `tokens` | tokens per sample (sequence length) | `≥ 1` |
/// | `features` | input features per token | `≥ 1` |
/// | `d_model` | hidden width | multiple of `heads` |
/// | `heads` | attention heads | `≥ 1` |
/// | `d_ff` | feed-forward width | `≥ 1` |
/// | `layers` | encoder layers | `≥ 1` |
/// | `classes` | output classes | `≥ 1` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncoderConfig {
    /// Tokens per sample.
    pub tokens: usize,
    /// Input features per token.
    pub features: usize,
    /// Hidden width.
    pub d_model: usize,
    /// Attention heads (`d_model / heads` per head).
    pub heads: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Output classes.
    pub classes: usize,
}

impl EncoderConfig {
    fn check(&self) -> Result<()> {
        let widths = [self.tokens, self.features, self.d_model, self.heads, self.d_ff, self.layers, self.classes];
        if let Some(layer) = widths.iter().position(|&w| w == 0) {
            return Err(HessianError::InvalidWidth { layer });
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(HessianError::ShapeMismatch {
                expected: vec![self.heads * (self.d_model / self.heads).max(1)],
                got: vec![self.d_model],
            });
        }
        Ok(())
    }
}

/// Block indices of one encoder layer.
pub(crate) type LayerBlocks = crate::common::LayerPairs;

/// A BERT-style encoder classifier on sequences of feature vectors.
///
/// Per sample: `E = X W_e + b_e + P` (a linear token embedding of the input features plus
/// learned positions); per layer, multi-head self-attention with per-head softmax
/// `(Q_h K_hᵀ / √d_h)`, output projection, residual and layer norm (post-norm, as BERT),
/// then a GELU feed-forward, residual and layer norm; mean pooling over tokens; a linear
/// classifier; mean cross-entropy.
///
/// Parameters are one flat vector of named blocks: `embedding.weight`, `embedding.bias`,
/// `embedding.position`, then per layer `i`: `encoder.i.attention.{q,k,v,out}.{weight,bias}`,
/// `encoder.i.attention.norm.{gain,bias}`, `encoder.i.ffn.{in,out}.{weight,bias}`,
/// `encoder.i.ffn.norm.{gain,bias}`, and `classifier.{weight,bias}`. Weights are stored
/// `fan_in × fan_out` (row-major), so head `h` of a Q, K or V projection owns the columns
/// `h·d_h..(h+1)·d_h`. The backward pass is written by hand, generic over [`Real`], so the
/// Hessian-vector products of the [`Autodiff`](quant_hessian::Autodiff) impl are exact.
#[derive(Debug, Clone)]
pub struct Encoder<F> {
    pub(crate) x: Array2<F>,
    pub(crate) labels: Vec<usize>,
    pub(crate) cfg: EncoderConfig,
    pub(crate) blocks: Vec<Block>,
    pub(crate) embedding: (usize, usize, usize),
    pub(crate) layer_blocks: Vec<LayerBlocks>,
    pub(crate) classifier: (usize, usize),
}

/// Layer-norm epsilon.
pub(crate) const LN_EPS: f64 = 1e-5;

/// What the forward pass keeps for the backward pass, per encoder layer.
pub(crate) struct LayerCache<T> {
    pub(crate) input: Array2<T>,
    pub(crate) q: Array2<T>,
    pub(crate) k: Array2<T>,
    pub(crate) v: Array2<T>,
    /// Attention probabilities, `[sample][head][i][j]` flattened.
    pub(crate) probs: Vec<T>,
    pub(crate) context: Array2<T>,
    pub(crate) n1: Array2<T>,
    pub(crate) xhat1: Array2<T>,
    pub(crate) inv_std1: Vec<T>,
    pub(crate) hidden: Array2<T>,
    pub(crate) dhidden: Array2<T>,
    pub(crate) xhat2: Array2<T>,
    pub(crate) inv_std2: Vec<T>,
}

/// The elements of `a` in row-major order (borrowed when `a` is in standard layout).
pub(crate) fn flat<T: Real>(a: &Array2<T>) -> std::borrow::Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().copied().collect()),
    }
}

#[inline]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::zero(), |s, (&x, &y)| s + x * y)
}

impl<F: Real<Base = F>> Encoder<F> {
    /// An encoder over `x` (`samples × (tokens · features)`, each sample's tokens in order)
    /// with class `labels`.
    ///
    /// # Errors
    /// [`HessianError::InvalidWidth`] for a zero size, [`HessianError::ShapeMismatch`] when
    /// `d_model` is not a multiple of `heads`, `x` does not have `tokens · features` columns
    /// or `labels` one entry per row, [`HessianError::Empty`], [`HessianError::InvalidLabel`],
    /// [`HessianError::NonFinite`].
    pub fn new(x: &ArrayBase<impl Data<Elem = F>, Ix2>, labels: &[usize], cfg: EncoderConfig) -> Result<Self> {
        cfg.check()?;
        if x.nrows() == 0 {
            return Err(HessianError::Empty);
        }
        check_len(cfg.tokens * cfg.features, x.ncols())?;
        check_len(x.nrows(), labels.len())?;
        check_finite(x.iter())?;
        if let Some((index, &label)) = labels.iter().enumerate().find(|&(_, &l)| l >= cfg.classes) {
            return Err(HessianError::InvalidLabel { index, label, classes: cfg.classes });
        }
        let mut blocks = Vec::new();
        let mut start = 0;
        let mut add = |name: String, len: usize| {
            blocks.push(Block::new(name, start, len));
            start += len;
            blocks.len() - 1
        };
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let embedding = (
            add("embedding.weight".into(), cfg.features * d),
            add("embedding.bias".into(), d),
            add("embedding.position".into(), cfg.tokens * d),
        );
        let mut layer_blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let mut linear = |name: &str, fi: usize, fo: usize| {
                (add(format!("encoder.{i}.{name}.weight"), fi * fo), add(format!("encoder.{i}.{name}.bias"), fo))
            };
            let q = linear("attention.q", d, d);
            let k = linear("attention.k", d, d);
            let v = linear("attention.v", d, d);
            let out = linear("attention.out", d, d);
            let norm1 = (add(format!("encoder.{i}.attention.norm.gain"), d), add(format!("encoder.{i}.attention.norm.bias"), d));
            let mut linear = |name: &str, fi: usize, fo: usize| {
                (add(format!("encoder.{i}.{name}.weight"), fi * fo), add(format!("encoder.{i}.{name}.bias"), fo))
            };
            let ffn_in = linear("ffn.in", d, ff);
            let ffn_out = linear("ffn.out", ff, d);
            let norm2 = (add(format!("encoder.{i}.ffn.norm.gain"), d), add(format!("encoder.{i}.ffn.norm.bias"), d));
            layer_blocks.push(LayerBlocks { q, k, v, out, norm1, ffn_in, ffn_out, norm2 });
        }
        let classifier = (add("classifier.weight".into(), d * cfg.classes), add("classifier.bias".into(), cfg.classes));
        Ok(Self { x: x.to_owned(), labels: labels.to_vec(), cfg, blocks, embedding, layer_blocks, classifier })
    }

    /// The configuration.
    pub fn config(&self) -> EncoderConfig {
        self.cfg
    }

    /// Indices of the blocks that are weight matrices (embedding, Q, K, V, attention output,
    /// feed-forward in and out, classifier), the blocks quantization usually targets, with
    /// their `fan_in × fan_out` shapes.
    pub fn weight_blocks(&self) -> Vec<MatrixBlock> {
        let (d, ff) = (self.cfg.d_model, self.cfg.d_ff);
        let mut out = vec![MatrixBlock::new(self.embedding.0, self.cfg.features, d)];
        for lb in &self.layer_blocks {
            out.extend([
                MatrixBlock::new(lb.q.0, d, d),
                MatrixBlock::new(lb.k.0, d, d),
                MatrixBlock::new(lb.v.0, d, d),
                MatrixBlock::new(lb.out.0, d, d),
                MatrixBlock::new(lb.ffn_in.0, d, ff),
                MatrixBlock::new(lb.ffn_out.0, ff, d),
            ]);
        }
        out.push(MatrixBlock::new(self.classifier.0, d, self.cfg.classes));
        out
    }

    /// Seeded initial parameters: weights normal with variance `1 / fan_in`, biases and
    /// positions zero (positions small normal), layer-norm gains 1.
    pub fn init(&self, seed: u64) -> Array1<F> {
        let mut w = Array1::zeros(self.dim());
        for (stream, m) in self.weight_blocks().iter().enumerate() {
            let r = self.blocks[m.block].range();
            let std = F::cast((1.0 / m.fan_in as f64).sqrt());
            w.slice_mut(s![r.clone()]).assign(&rng::normal::<F>(r.len(), seed, stream as u64).mapv(|v| v * std));
        }
        let pos = self.blocks[self.embedding.2].range();
        w.slice_mut(s![pos.clone()]).assign(&rng::normal::<F>(pos.len(), seed, 1000).mapv(|v| v * F::cast(0.1)));
        for lb in &self.layer_blocks {
            for g in [lb.norm1.0, lb.norm2.0] {
                w.slice_mut(s![self.blocks[g].range()]).fill(F::one());
            }
        }
        w
    }

    /// Class scores (`rows × classes`) for inputs `x` (`rows × (tokens · features)`).
    ///
    /// `hook(site, input)` is called on the input of every linear map before it is applied
    /// (site 0 the embedding, then per layer Q/K/V input, attention output input, FFN input,
    /// FFN output input, and the classifier input last), and may change it in place, for
    /// example to fake-quantize activations. Pass `|_, _| {}` for none.
    ///
    /// # Errors
    /// [`HessianError::ShapeMismatch`] for a wrong `w` length or input width.
    pub fn logits_with(
        &self,
        w: ArrayView1<'_, F>,
        x: ArrayView2<'_, F>,
        mut hook: impl FnMut(usize, ArrayViewMut2<'_, F>),
    ) -> Result<Array2<F>> {
        check_len(self.dim(), w.len())?;
        check_len(self.cfg.tokens * self.cfg.features, x.ncols())?;
        let (logits, _, _) = self.forward::<F>(w, x, &mut hook);
        Ok(logits)
    }

    /// Class scores without a hook.
    ///
    /// # Errors
    /// As [`logits_with`](Self::logits_with).
    pub fn logits(&self, w: ArrayView1<'_, F>, x: ArrayView2<'_, F>) -> Result<Array2<F>> {
        self.logits_with(w, x, |_, _| {})
    }

    /// The fraction of the batch's samples whose largest score is the label, with an
    /// activation hook as in [`logits_with`](Self::logits_with).
    ///
    /// # Errors
    /// As [`logits_with`](Self::logits_with), plus the batch's errors.
    pub fn accuracy_with(&self, w: ArrayView1<'_, F>, batch: Batch<'_>, hook: impl FnMut(usize, ArrayViewMut2<'_, F>)) -> Result<f64> {
        batch.check(self.samples())?;
        let (x, labels) = self.inputs(batch);
        let logits = self.logits_with(w, x.view(), hook)?;
        Ok(accuracy_of(logits.view(), &labels))
    }

    /// The accuracy on a batch.
    ///
    /// # Errors
    /// As [`accuracy_with`](Self::accuracy_with).
    pub fn accuracy(&self, w: ArrayView1<'_, F>, batch: Batch<'_>) -> Result<f64> {
        self.accuracy_with(w, batch, |_, _| {})
    }

    /// The batch's input rows and labels.
    pub(crate) fn inputs(&self, batch: Batch<'_>) -> (ndarray::CowArray<'_, F, Ix2>, Vec<usize>) {
        let (rows, labels) = rows_and_labels(batch, &self.labels);
        let x = match &rows {
            None => self.x.view().into(),
            Some(r) => self.x.select(Axis(0), r).into(),
        };
        (x, labels)
    }

    pub(crate) fn vector<'w, T: Real>(&self, w: ArrayView1<'w, T>, b: usize) -> ArrayView1<'w, T> {
        w.slice_move(s![self.blocks[b].range()])
    }

    /// `x W + b` for block pair `(weight, bias)` with `x` of `T`.
    fn linear<T: Real>(&self, w: ArrayView1<'_, T>, x: &Array2<T>, (wb, bb): (usize, usize), fi: usize, fo: usize) -> Array2<T> {
        let mut y = T::matmul(x.view(), matrix(w, &self.blocks[wb], fi, fo).view());
        y += &self.vector(w, bb);
        y
    }

    /// The forward pass: logits, per-layer caches, and the pooled features (the
    /// classifier's input).
    pub(crate) fn forward<T: Real<Base = F>>(
        &self,
        w: ArrayView1<'_, T>,
        x: ArrayView2<'_, F>,
        hook: &mut dyn FnMut(usize, ArrayViewMut2<'_, F>),
    ) -> (Array2<T>, Vec<LayerCache<T>>, Array2<T>) {
        let c = self.cfg;
        let (n, tt, d, heads) = (x.nrows(), c.tokens, c.d_model, c.heads);
        let dh = d / heads;
        let scale = T::cast(1.0 / (dh as f64).sqrt());
        // Tokens as rows: (n · tokens) × features.
        let mut tokens =
            x.to_shape((n * tt, c.features)).map(|v| v.to_owned()).unwrap_or_else(|_| unreachable!("rows hold tokens × features"));
        let mut site = 0;
        hook(site, tokens.view_mut());
        let mut e = T::matmul_base(tokens.view(), matrix(w, &self.blocks[self.embedding.0], c.features, d).view());
        e += &self.vector(w, self.embedding.1);
        let pos = matrix(w, &self.blocks[self.embedding.2], tt, d);
        for mut sample in e.exact_chunks_mut((tt, d)) {
            sample += &pos;
        }
        let mut caches = Vec::with_capacity(c.layers);
        for lb in &self.layer_blocks {
            site += 1;
            let input = self.hooked(&e, site, hook);
            let q = self.linear(w, &input, lb.q, d, d);
            let k = self.linear(w, &input, lb.k, d, d);
            let v = self.linear(w, &input, lb.v, d, d);
            let mut probs = vec![T::zero(); n * heads * tt * tt];
            let (qs, ks, vs) = (flat(&q), flat(&k), flat(&v));
            let mut ctx = vec![T::zero(); n * tt * d];
            let mut row = vec![T::zero(); tt];
            for b in 0..n {
                for h in 0..heads {
                    let base = (b * heads + h) * tt * tt;
                    let at = |t: usize| (b * tt + t) * d + h * dh;
                    for i in 0..tt {
                        let qi = &qs[at(i)..at(i) + dh];
                        for (j, r) in row.iter_mut().enumerate() {
                            *r = dot(qi, &ks[at(j)..at(j) + dh]) * scale;
                        }
                        let m = row.iter().fold(T::neg_infinity(), |a, &v| a.max(v));
                        let mut sum = T::zero();
                        for r in row.iter_mut() {
                            *r = (*r - m).exp();
                            sum += *r;
                        }
                        let ci = at(i);
                        for (j, r) in row.iter().enumerate() {
                            let p = *r / sum;
                            probs[base + i * tt + j] = p;
                            let vj = &vs[at(j)..at(j) + dh];
                            for (c, &vv) in ctx[ci..ci + dh].iter_mut().zip(vj) {
                                *c += p * vv;
                            }
                        }
                    }
                }
            }
            let context = Array2::from_shape_vec((n * tt, d), ctx).unwrap_or_else(|_| unreachable!("n · tokens rows of d_model"));
            site += 1;
            let ctx_in = self.hooked(&context, site, hook);
            let mut r1 = self.linear(w, &ctx_in, lb.out, d, d);
            r1 += &e;
            let (n1, xhat1, inv_std1) = layer_norm(&r1, self.vector(w, lb.norm1.0), self.vector(w, lb.norm1.1), LN_EPS);
            site += 1;
            let n1_in = self.hooked(&n1, site, hook);
            let mut hidden = self.linear(w, &n1_in, lb.ffn_in, d, c.d_ff);
            let mut dhidden = Array2::zeros(hidden.raw_dim());
            T::map_with_derivative(hidden.view_mut(), dhidden.view_mut(), |z| Activation::Gelu.eval(z));
            site += 1;
            let hidden_in = self.hooked(&hidden, site, hook);
            let mut r2 = self.linear(w, &hidden_in, lb.ffn_out, c.d_ff, d);
            r2 += &n1;
            let (n2, xhat2, inv_std2) = layer_norm(&r2, self.vector(w, lb.norm2.0), self.vector(w, lb.norm2.1), LN_EPS);
            caches.push(LayerCache {
                input,
                q,
                k,
                v,
                probs,
                context: ctx_in,
                n1: n1_in,
                xhat1,
                inv_std1,
                hidden: hidden_in,
                dhidden,
                xhat2,
                inv_std2,
            });
            e = n2;
        }
        // Mean pooling over tokens.
        let inv_t = T::cast(1.0 / tt as f64);
        let mut pooled = Array2::zeros((n, d));
        for (mut p, sample) in pooled.outer_iter_mut().zip(e.exact_chunks((tt, d))) {
            p.assign(&(sample.sum_axis(Axis(0)) * inv_t));
        }
        site += 1;
        let pooled = self.hooked(&pooled, site, hook);
        let logits = self.linear(w, &pooled, self.classifier, d, c.classes);
        (logits, caches, pooled)
    }

    /// Applies the hook to a plain-float copy of `x` when `T` is the base type (same size);
    /// dual inputs (Hessian-vector products) pass through unchanged: the hooks are for
    /// evaluation and have no derivative to propagate.
    fn hooked<T: Real<Base = F>>(&self, x: &Array2<T>, site: usize, hook: &mut dyn FnMut(usize, ArrayViewMut2<'_, F>)) -> Array2<T> {
        if T::BYTES == F::BYTES {
            let mut base = x.mapv(|v| v.base());
            hook(site, base.view_mut());
            base.mapv(T::from_base)
        } else {
            x.clone()
        }
    }

    /// Writes `value` into the block `b` of `grad`.
    fn put<T: Real>(&self, grad: &mut ArrayViewMut1<'_, T>, b: usize, value: impl IntoIterator<Item = T>) {
        grad.slice_mut(s![self.blocks[b].range()]).iter_mut().zip(value).for_each(|(o, v)| *o = v);
    }

    /// Backward through `x W + b`: writes `dW`, `db`, returns `dx` when asked.
    #[allow(clippy::too_many_arguments)]
    fn linear_back<T: Real>(
        &self,
        w: ArrayView1<'_, T>,
        grad: &mut ArrayViewMut1<'_, T>,
        x: &Array2<T>,
        dy: &Array2<T>,
        (wb, bb): (usize, usize),
        fi: usize,
        fo: usize,
    ) -> Array2<T> {
        let dw = T::matmul(x.t(), dy.view());
        self.put(grad, wb, dw.iter().copied());
        self.put(grad, bb, dy.sum_axis(Axis(0)));
        T::matmul(dy.view(), matrix(w, &self.blocks[wb], fi, fo).t())
    }
}

impl<F> Model for Encoder<F> {
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

impl<F: Real<Base = F>> Differentiable<F> for Encoder<F> {
    fn loss_grad<T: Real<Base = F>>(&self, w: ArrayView1<'_, T>, batch: Batch<'_>, mut grad: ArrayViewMut1<'_, T>) -> Result<T> {
        check_len(self.dim(), w.len())?;
        check_len(self.dim(), grad.len())?;
        batch.check(self.samples())?;
        let (x, labels) = self.inputs(batch);
        let (mut g, caches, pooled) = self.forward::<T>(w, x.view(), &mut |_, _| {});
        let loss = softmax_cross_entropy(g.view_mut(), &labels);
        self.backward(w, x.view(), &caches, &pooled, &g, &mut grad, None);
        if !loss.is_finite() {
            return Err(HessianError::NonFinite { index: 0 });
        }
        Ok(loss)
    }

    /// The loss prepared for block products: the forward and backward passes at `w` are
    /// kept, and a block's exact Hessian product runs forward mode from the block's layer and
    /// the second-order reverse pass back to it (Pearlmutter's R-operator), nothing below.
    fn curvature<'a>(&'a self, w: ArrayView1<'a, F>, batch: Batch<'a>) -> Result<Box<dyn quant_hessian::BlockCurvature<F> + 'a>>
    where
        Self: Sized + Sync,
    {
        Ok(Box::new(crate::encoder_curvature::EncoderCurvature::new(self, w, batch)?))
    }
}

/// The gradients the backward pass saw inside one encoder layer (what the prepared
/// curvature's second-order pass needs).
pub(crate) struct LayerGrads<T> {
    /// With respect to the layer's output (the second norm's output).
    pub(crate) dn2: Array2<T>,
    /// With respect to the FFN activation's output.
    pub(crate) da: Array2<T>,
    /// With respect to the first norm's output (both paths summed).
    pub(crate) dn1: Array2<T>,
    /// With respect to the attention context.
    pub(crate) dctx: Array2<T>,
    /// With respect to the second norm's input (its backward pass's output).
    pub(crate) dr2: Array2<T>,
    /// With respect to the first norm's input.
    pub(crate) dr1: Array2<T>,
}

impl<F: Real<Base = F>> Encoder<F> {
    /// The backward pass from the logits' gradient `g` into `grad`; with `record`, each
    /// layer's [`LayerGrads`] (top layer first).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward<T: Real<Base = F>>(
        &self,
        w: ArrayView1<'_, T>,
        x: ArrayView2<'_, F>,
        caches: &[LayerCache<T>],
        pooled: &Array2<T>,
        g: &Array2<T>,
        grad: &mut ArrayViewMut1<'_, T>,
        mut record: Option<&mut Vec<LayerGrads<T>>>,
    ) {
        let c = self.cfg;
        let (tt, d, heads) = (c.tokens, c.d_model, c.heads);
        let dh = d / heads;
        let scale = T::cast(1.0 / (dh as f64).sqrt());
        let n = x.nrows();
        let mut grad = grad.view_mut();
        // Classifier and pooling.
        let dpooled = self.linear_back(w, &mut grad, pooled, g, self.classifier, d, c.classes);
        let inv_t = T::cast(1.0 / tt as f64);
        let mut de = Array2::zeros((n * tt, d));
        for (mut sample, dp) in de.exact_chunks_mut((tt, d)).into_iter().zip(dpooled.outer_iter()) {
            for mut row in sample.outer_iter_mut() {
                row.assign(&(&dp * inv_t));
            }
        }
        for (lb, cache) in self.layer_blocks.iter().zip(caches).rev() {
            // Second sublayer: N2 = LN(N1 + FFN(N1)).
            let (dr2, dg2, db2) = layer_norm_back(&de, &cache.xhat2, &cache.inv_std2, self.vector(w, lb.norm2.0));
            self.put(&mut grad, lb.norm2.0, dg2);
            self.put(&mut grad, lb.norm2.1, db2);
            let mut dhidden = self.linear_back(w, &mut grad, &cache.hidden, &dr2, lb.ffn_out, c.d_ff, d);
            let da = record.is_some().then(|| dhidden.clone());
            dhidden *= &cache.dhidden;
            let mut dn1 = self.linear_back(w, &mut grad, &cache.n1, &dhidden, lb.ffn_in, d, c.d_ff);
            dn1 += &dr2;
            // First sublayer: N1 = LN(E + Attention(E)).
            let (dr1, dg1, db1) = layer_norm_back(&dn1, &cache.xhat1, &cache.inv_std1, self.vector(w, lb.norm1.0));
            self.put(&mut grad, lb.norm1.0, dg1);
            self.put(&mut grad, lb.norm1.1, db1);
            let dcontext = self.linear_back(w, &mut grad, &cache.context, &dr1, lb.out, d, d);
            if let (Some(rec), Some(da)) = (record.as_deref_mut(), da) {
                rec.push(LayerGrads { dn2: de.clone(), da, dn1: dn1.clone(), dctx: dcontext.clone(), dr2: dr2.clone(), dr1: dr1.clone() });
            }
            let (mut dq, mut dk, mut dv) = (vec![T::zero(); n * tt * d], vec![T::zero(); n * tt * d], vec![T::zero(); n * tt * d]);
            let (qs, ks, vs, dcs) = (flat(&cache.q), flat(&cache.k), flat(&cache.v), flat(&dcontext));
            let mut da = vec![T::zero(); tt];
            for b in 0..n {
                for h in 0..heads {
                    let base = (b * heads + h) * tt * tt;
                    let at = |t: usize| (b * tt + t) * d + h * dh;
                    for i in 0..tt {
                        let dci = &dcs[at(i)..at(i) + dh];
                        let p = &cache.probs[base + i * tt..base + (i + 1) * tt];
                        for (j, a) in da.iter_mut().enumerate() {
                            *a = dot(dci, &vs[at(j)..at(j) + dh]);
                            for (g, &c) in dv[at(j)..at(j) + dh].iter_mut().zip(dci) {
                                *g += p[j] * c;
                            }
                        }
                        // Softmax backward, then the scaled dot products.
                        let inner = p.iter().zip(&da).map(|(&pj, &aj)| pj * aj).sum::<T>();
                        for j in 0..tt {
                            let ds = p[j] * (da[j] - inner) * scale;
                            for (g, &kk) in dq[at(i)..at(i) + dh].iter_mut().zip(&ks[at(j)..at(j) + dh]) {
                                *g += ds * kk;
                            }
                            for (g, &qq) in dk[at(j)..at(j) + dh].iter_mut().zip(&qs[at(i)..at(i) + dh]) {
                                *g += ds * qq;
                            }
                        }
                    }
                }
            }
            let shape = |v: Vec<T>| Array2::from_shape_vec((n * tt, d), v).unwrap_or_else(|_| unreachable!("n · tokens rows of d_model"));
            let (dq, dk, dv) = (shape(dq), shape(dk), shape(dv));
            let mut dinput = self.linear_back(w, &mut grad, &cache.input, &dq, lb.q, d, d);
            dinput += &self.linear_back(w, &mut grad, &cache.input, &dk, lb.k, d, d);
            dinput += &self.linear_back(w, &mut grad, &cache.input, &dv, lb.v, d, d);
            dinput += &dr1;
            de = dinput;
        }
        // Embedding: E = tokens W_e + b_e + P.
        let tokens = x.to_shape((n * tt, c.features)).map(|v| v.to_owned()).unwrap_or_else(|_| unreachable!("rows hold tokens × features"));
        let dwe = T::matmul_base(tokens.t(), de.view());
        self.put(&mut grad, self.embedding.0, dwe.iter().copied());
        self.put(&mut grad, self.embedding.1, de.sum_axis(Axis(0)));
        let mut dpos = Array2::<T>::zeros((tt, d));
        for sample in de.exact_chunks((tt, d)) {
            dpos += &sample;
        }
        self.put(&mut grad, self.embedding.2, dpos.iter().copied());
    }
}
