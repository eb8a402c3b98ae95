//! The self-distillation loss: how far the sentence embeddings move from the loaded model's.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, s};
use quant_hessian::{Batch, Block, BlockCurvature, Differentiable, HessianError, Model, PaddedCurvature, Product, Real};

use super::error::{BertError, Result};
use super::model::{Bert, Caches, Params};
use super::tokenize::TokenBatch;
use crate::common::check_len;

/// `L(W) = (1/n) Σ_i ‖e(x_i; W) − e(x_i; W₀)‖²` over calibration sentences `x_i`, where `e` is
/// the checkpoint's sentence embedding and `W₀` its loaded weights.
///
/// It needs no labels. At `W₀` the loss and its gradient are zero and the Hessian is the
/// Gauss-Newton matrix `(2/n) Σ_i J_iᵀ J_i` (positive semi-definite): the curvature the
/// sensitivity of each weight matrix is measured in. The [`Differentiable`] impl gives the
/// gradient in any [`Real`], so the Hessian engine's dual numbers give exact Hessian-vector
/// products; its samples are the sentences (a [`Batch`] selects some).
///
/// The variables are every tensor of the model ([`new`](Self::new)) or a chosen few
/// ([`with_variables`](Self::with_variables), for example the weight matrices a quantizer
/// will change); the others stay at their loaded values, and the parameter vector, the
/// blocks and every gradient and HVP cover only the variables.
#[derive(Debug, Clone)]
pub struct SelfDistillation<F> {
    model: Bert<F>,
    sentences: TokenBatch,
    targets: Array2<F>,
    /// Per model block, where it starts in the variable vector.
    at: Vec<Option<usize>>,
    /// The variables' blocks (the checkpoint's names, ranges in the variable vector).
    blocks: Vec<Block>,
    /// Per variable block, the model blocks it covers and where each starts within it (one
    /// tensor each, or a whole encoder layer after [`grouped_by_layer`](Self::grouped_by_layer)).
    parts: Vec<Vec<(usize, usize)>>,
    /// The variables at the loaded weights.
    w0: Array1<F>,
}

impl<F: Real<Base = F>> SelfDistillation<F> {
    /// The loss of `model` on `sentences` over every tensor, with targets embedded at the
    /// model's loaded weights.
    ///
    /// # Errors
    /// [`BertError::EmptySentence`] and [`BertError::TokenOutOfRange`] for sentences the
    /// model cannot take.
    pub fn new(model: Bert<F>, sentences: TokenBatch) -> Result<Self> {
        let all: Vec<usize> = (0..model.blocks().len()).collect();
        Self::with_variables(model, sentences, &all)
    }

    /// The loss over the tensors `variables` (indices into [`Bert::blocks`], in any order;
    /// kept in block order), the rest held at the loaded weights.
    ///
    /// # Errors
    /// As [`new`](Self::new), and [`BertError::ParameterCount`] for an index past the model's
    /// blocks or no variables.
    pub fn with_variables(model: Bert<F>, sentences: TokenBatch, variables: &[usize]) -> Result<Self> {
        let n = model.blocks().len();
        if variables.is_empty() || variables.iter().any(|&b| b >= n) {
            return Err(BertError::ParameterCount { expected: n, got: variables.iter().copied().max().unwrap_or(0) });
        }
        let targets = model.embed(&sentences)?;
        let mut at = vec![None; n];
        let mut blocks = Vec::new();
        let mut parts = Vec::new();
        let mut w0 = Vec::new();
        for (b, block) in model.blocks().iter().enumerate() {
            if variables.contains(&b) {
                at[b] = Some(w0.len());
                blocks.push(Block::new(block.name(), w0.len(), block.len()));
                parts.push(vec![(b, 0)]);
                w0.extend(model.weights().slice(s![block.range()]).iter().copied());
            }
        }
        Ok(Self { model, sentences, targets, at, blocks, parts, w0: Array1::from(w0) })
    }

    /// The same loss with Q-BERT's grouping: the variables of each encoder layer form one
    /// block (named after the layer, `encoder.layer.3` for example, with the checkpoint's
    /// prefix), so block products and eigenvalues are those of the layer's whole Hessian
    /// block; variables outside the layers (the embeddings) stay blocks of their own. The
    /// variable vector is unchanged (a layer's variables are consecutive in it).
    pub fn grouped_by_layer(mut self) -> Self {
        let mut blocks: Vec<Block> = Vec::new();
        let mut parts: Vec<Vec<(usize, usize)>> = Vec::new();
        let mut last_layer = None;
        for (block, part) in self.blocks.iter().zip(&self.parts) {
            let mb = part[0].0;
            let layer = self.model.layer_of(mb);
            // The same layer as the block before: it joins that block (its variables follow).
            if let (true, Some(group), Some(members)) = (layer.is_some() && layer == last_layer, blocks.last_mut(), parts.last_mut()) {
                members.push((mb, group.len()));
                *group = Block::new(group.name(), group.range().start, group.len() + block.len());
                continue;
            }
            last_layer = layer;
            let name = match layer {
                Some(l) => layer_name(block.name(), l),
                None => block.name().to_string(),
            };
            blocks.push(Block::new(&name, block.range().start, block.len()));
            parts.push(vec![(mb, 0)]);
        }
        self.blocks = blocks;
        self.parts = parts;
        self
    }

    /// The encoder layer of a variable block (of its lowest tensor), `None` for the
    /// embeddings or a block past the end.
    pub fn block_layer(&self, block: usize) -> Option<usize> {
        self.parts.get(block).and_then(|p| self.model.layer_of(p[0].0))
    }

    /// The model tensors each variable block covers (indices into [`Bert::blocks`]).
    pub fn block_tensors(&self, block: usize) -> Vec<usize> {
        self.parts.get(block).map(|p| p.iter().map(|&(mb, _)| mb).collect()).unwrap_or_default()
    }

    /// The model (its loaded weights are `W₀`).
    pub fn model(&self) -> &Bert<F> {
        &self.model
    }

    /// The calibration sentences.
    pub fn sentences(&self) -> &TokenBatch {
        &self.sentences
    }

    /// The target embeddings `e(x_i; W₀)`.
    pub fn targets(&self) -> &Array2<F> {
        &self.targets
    }

    /// The variables at the loaded weights, where the loss is zero.
    pub fn weights(&self) -> ArrayView1<'_, F> {
        self.w0.view()
    }
}

impl<F: Real<Base = F>> Model for SelfDistillation<F> {
    fn dim(&self) -> usize {
        self.w0.len()
    }
    fn blocks(&self) -> &[Block] {
        &self.blocks
    }
    fn samples(&self) -> usize {
        self.sentences.len()
    }
}

impl<F: Real<Base = F>> SelfDistillation<F> {
    /// The loss alone at `w` on `batch` (one forward pass, no gradient).
    ///
    /// # Errors
    /// [`HessianError::ShapeMismatch`] for a `w` of the wrong length, the batch's errors,
    /// [`HessianError::NonFinite`] for a loss that is not finite.
    pub fn loss(&self, w: ArrayView1<'_, F>, batch: Batch<'_>) -> quant_hessian::Result<F> {
        check_len(self.dim(), w.len())?;
        batch.check(self.samples())?;
        let (sub, targets) = self.batch_of(batch)?;
        let p = Params { w, w0: self.model.weights(), at: &self.at, out: &self.at, stop: None };
        let hidden = self.model.encode(&p, &sub, None);
        let e = self.model.pool(&hidden, &sub);
        let sum = e.iter().zip(targets.iter()).fold(F::zero(), |acc, (&a, &t)| acc + (a - t) * (a - t));
        let loss = sum / F::cast(sub.len() as f64);
        if !loss.is_finite() {
            return Err(HessianError::NonFinite { index: 0 });
        }
        Ok(loss)
    }

    /// The input of every encoder layer at the loaded weights on `batch`, kept for
    /// [`loss_with_block`](Self::loss_with_block).
    ///
    /// # Errors
    /// The batch's errors.
    pub fn layer_inputs(&self, batch: Batch<'_>) -> quant_hessian::Result<LayerInputs<F>> {
        batch.check(self.samples())?;
        let (sub, targets) = self.batch_of(batch)?;
        let layout = self.model.full_layout();
        let p = Params { w: self.model.weights(), w0: self.model.weights(), at: &layout, out: &layout, stop: None };
        let x = self.model.embed_rows(&p, &sub, None);
        let mut inputs = Vec::new();
        self.model.encode_layers(&p, &sub, x, 0, None, Some(&mut inputs));
        Ok(LayerInputs { sentences: sub.into_owned(), targets, inputs })
    }

    /// The loss on the batch of `inputs` at the loaded weights with the variable block
    /// `block` replaced by `values`: the same value as [`loss`](Self::loss) at that point, by
    /// a forward pass from the block's layer up (the layers below are unchanged).
    ///
    /// # Errors
    /// [`HessianError::InvalidBlock`], [`HessianError::ShapeMismatch`] for `values` of another
    /// length than the block, [`HessianError::NonFinite`].
    pub fn loss_with_block(&self, inputs: &LayerInputs<F>, block: usize, values: ArrayView1<'_, F>) -> quant_hessian::Result<F> {
        let b = self.blocks.get(block).ok_or(HessianError::InvalidBlock { index: block, count: self.blocks.len() })?;
        check_len(b.len(), values.len())?;
        // The block's tensors read from `values`; every other tensor (the other variables are
        // at their loaded values too) from the model's weights, with no copy of the variables.
        let mut at = vec![None; self.at.len()];
        for &(mb, off) in &self.parts[block] {
            at[mb] = Some(off);
        }
        let p = Params { w: values, w0: self.model.weights(), at: &at, out: &at, stop: None };
        // The lowest tensor of the block (parts are in the model's order).
        let mb = self.parts[block][0].0;
        let hidden = match self.model.layer_of(mb) {
            Some(l) => self.model.encode_layers(&p, &inputs.sentences, inputs.inputs[l].clone(), l, None, None),
            None => self.model.encode(&p, &inputs.sentences, None),
        };
        let e = self.model.pool(&hidden, &inputs.sentences);
        let sum = e.iter().zip(inputs.targets.iter()).fold(F::zero(), |acc, (&a, &t)| acc + (a - t) * (a - t));
        let loss = sum / F::cast(inputs.sentences.len() as f64);
        if !loss.is_finite() {
            return Err(HessianError::NonFinite { index: 0 });
        }
        Ok(loss)
    }

    /// The batch's sentences and their target embeddings.
    fn batch_of(&self, batch: Batch<'_>) -> quant_hessian::Result<(std::borrow::Cow<'_, TokenBatch>, Array2<F>)> {
        Ok(match batch {
            Batch::All => (std::borrow::Cow::Borrowed(&self.sentences), self.targets.clone()),
            Batch::Indices(idx) => {
                let chosen = idx.iter().map(|&i| self.sentences.sentences()[i].clone()).collect();
                let sub = TokenBatch::new(chosen).map_err(|_| HessianError::Empty)?;
                (std::borrow::Cow::Owned(sub), self.targets.select(Axis(0), idx))
            }
        })
    }
}

impl<F: Real<Base = F>> Differentiable<F> for SelfDistillation<F> {
    fn loss_grad<T: Real<Base = F>>(
        &self,
        w: ArrayView1<'_, T>,
        batch: Batch<'_>,
        mut grad: ArrayViewMut1<'_, T>,
    ) -> quant_hessian::Result<T> {
        check_len(self.dim(), w.len())?;
        check_len(self.dim(), grad.len())?;
        batch.check(self.samples())?;
        let (sub, targets) = self.batch_of(batch)?;
        let p = Params { w, w0: self.model.weights(), at: &self.at, out: &self.at, stop: None };
        let mut caches = Caches::default();
        let hidden = self.model.encode(&p, &sub, Some(&mut caches));
        let e = self.model.pool(&hidden, &sub);
        let inv = T::cast(1.0 / sub.len() as f64);
        let mut diff = e;
        diff.zip_mut_with(&targets, |a, &t| *a -= T::from_base(t));
        let loss = diff.iter().fold(T::zero(), |s, &v| s + v * v) * inv;
        let two = T::cast(2.0);
        let de = diff.mapv(|v| v * two * inv);
        self.model.backward(&p, &sub, &hidden, &caches, &de, &mut grad);
        if !loss.is_finite() {
            return Err(HessianError::NonFinite { index: 0 });
        }
        Ok(loss)
    }

    /// The loss prepared for block products: one forward pass at `w` on the batch is kept,
    /// and each product runs only from the block's layer up and back.
    ///
    /// The Gauss-Newton product `G v = (2/n) J_bᵀ J_b v` is one forward-mode product from the
    /// block's layer (the tangent of the embeddings) and one reverse pass that stops at the
    /// block. The Hessian adds `(2/n) Σ_i Σ_k r_ik ∇² e_ik` for the residuals
    /// `r = e(W) − e(W₀)`: at the loaded weights (`w` equal to [`weights`](Self::weights))
    /// the residuals are zero and the Hessian product is the Gauss-Newton one; elsewhere it
    /// is the exact whole-model product (dual numbers) restricted to the block.
    fn curvature<'a>(&'a self, w: ArrayView1<'a, F>, batch: Batch<'a>) -> quant_hessian::Result<Box<dyn BlockCurvature<F> + 'a>>
    where
        Self: Sized + Sync,
    {
        Ok(Box::new(DistillCurvature::new(self, w, batch)?))
    }
}

/// `encoder.layer.L` from the name of a tensor in that layer (`encoder.layer.L.…` with any
/// prefix), or `layer.L` when the name does not say it.
fn layer_name(tensor: &str, layer: usize) -> String {
    let key = format!("layer.{layer}.");
    match tensor.find(&key) {
        Some(i) => tensor[..i + key.len() - 1].to_string(),
        None => format!("layer.{layer}"),
    }
}

/// The input of every encoder layer of a [`SelfDistillation`]'s model at its loaded weights on
/// one batch ([`SelfDistillation::layer_inputs`]).
#[derive(Debug, Clone)]
pub struct LayerInputs<F> {
    sentences: TokenBatch,
    targets: Array2<F>,
    inputs: Vec<Array2<F>>,
}

/// [`SelfDistillation`] prepared at `w` on a batch: the primal pass, kept.
struct DistillCurvature<'a, F> {
    loss: &'a SelfDistillation<F>,
    w: ArrayView1<'a, F>,
    batch: Batch<'a>,
    sentences: TokenBatch,
    /// Every tensor of the model at `w` (the variables from `w`, the rest as loaded).
    full: Array1<F>,
    /// Where each block starts in `full`.
    layout: Vec<Option<usize>>,
    hidden: Array2<F>,
    caches: Caches<F>,
    /// Whether `w` is the loaded weights (the Hessian is the Gauss-Newton matrix there).
    at_loaded: bool,
    /// `2/n`.
    scale: F,
}

impl<'a, F: Real<Base = F>> DistillCurvature<'a, F> {
    fn new(loss: &'a SelfDistillation<F>, w: ArrayView1<'a, F>, batch: Batch<'a>) -> quant_hessian::Result<Self> {
        quant_hessian::check_curvature_inputs(loss, w, batch)?;
        let (sub, _) = loss.batch_of(batch)?;
        let sentences = sub.into_owned();
        let model = &loss.model;
        let mut full = model.weights().to_owned();
        for (mb, at) in loss.at.iter().enumerate() {
            if let Some(start) = *at {
                let len = model.blocks()[mb].len();
                full.slice_mut(s![model.blocks()[mb].range()]).assign(&w.slice(s![start..start + len]));
            }
        }
        let layout = model.full_layout();
        let mut caches = Caches::default();
        let hidden = {
            let p = Params { w: full.view(), w0: model.weights(), at: &layout, out: &layout, stop: None };
            model.encode(&p, &sentences, Some(&mut caches))
        };
        let at_loaded = w.iter().zip(loss.w0.iter()).all(|(a, b)| a == b);
        let scale = F::cast(2.0 / sentences.len() as f64);
        Ok(Self { loss, w, batch, sentences, full, layout, hidden, caches, at_loaded, scale })
    }

    /// The whole-model exact product, for the Hessian away from the loaded weights.
    fn padded(&self) -> quant_hessian::Result<PaddedCurvature<'_, F, SelfDistillation<F>>> {
        PaddedCurvature::new(self.loss, self.w, self.batch)
    }

    /// Whether the Gauss-Newton form answers `product` here.
    fn gauss_newton_answers(&self, product: Product) -> bool {
        product == Product::GaussNewton || (product == Product::Hessian && self.at_loaded)
    }

    /// The stacked embedding tangents `J_b v_i` of the rows of `v`.
    fn tangents(&self, b: usize, v: ArrayView2<'_, F>) -> Array2<F> {
        let model = &self.loss.model;
        let p = Params { w: self.full.view(), w0: model.weights(), at: &self.layout, out: &self.layout, stop: None };
        let v = v.as_standard_layout();
        model.embed_tangents(&p, &self.sentences, &self.hidden, &self.caches, &self.loss.parts[b], v.view())
    }

    /// `G_bb v_i` for the rows of `v` into the rows of `out`: one forward-mode pass for all
    /// of them, then a reverse pass each.
    fn gauss_newton(&self, b: usize, v: ArrayView2<'_, F>, mut out: ArrayViewMut2<'_, F>) {
        let model = &self.loss.model;
        let parts = &self.loss.parts[b];
        let mut wanted = vec![None; self.layout.len()];
        for &(mb, off) in parts {
            wanted[mb] = Some(off);
        }
        // One tensor: the reverse pass ends at it. Several (a layer): it ends at the first
        // block below the lowest one's layer, the previous layer's last norm, once the whole
        // layer's gradients are written (none below layer 0: the pass runs to the end).
        let stop = match parts.as_slice() {
            [(mb, _)] => Some(*mb),
            _ => model.layer_of(parts[0].0).and_then(|l| l.checked_sub(1)).map(|l| model.layer_norm2_gain(l)),
        };
        let p = Params { w: self.full.view(), w0: model.weights(), at: &self.layout, out: &wanted, stop };
        let mut de = self.tangents(b, v);
        de *= self.scale;
        let n = self.sentences.len();
        for (i, mut o) in out.outer_iter_mut().enumerate() {
            let dei = de.slice(s![i * n..(i + 1) * n, ..]).to_owned();
            model.backward(&p, &self.sentences, &self.hidden, &self.caches, &dei, &mut o);
        }
    }
}

impl<F: Real<Base = F>> BlockCurvature<F> for DistillCurvature<'_, F> {
    fn blocks(&self) -> &[Block] {
        &self.loss.blocks
    }

    fn supports(&self, product: Product) -> bool {
        matches!(product, Product::Hessian | Product::GaussNewton)
    }

    fn block_product_into(
        &self,
        product: Product,
        block: usize,
        v: ArrayView1<'_, F>,
        out: ArrayViewMut1<'_, F>,
    ) -> quant_hessian::Result<()> {
        // One direction is a stack of one.
        self.block_products_into(product, block, v.insert_axis(Axis(0)), out.insert_axis(Axis(0)))
    }

    /// One forward-mode pass for all the vectors (their tangents stacked), then a reverse pass
    /// each.
    fn block_products_into(
        &self,
        product: Product,
        block: usize,
        v: ArrayView2<'_, F>,
        out: ArrayViewMut2<'_, F>,
    ) -> quant_hessian::Result<()> {
        if v.dim() != out.dim() {
            return Err(HessianError::ShapeMismatch { expected: vec![v.nrows(), v.ncols()], got: vec![out.nrows(), out.ncols()] });
        }
        quant_hessian::check_block_product(&self.loss.blocks, block, v.ncols(), out.ncols())?;
        if !self.gauss_newton_answers(product) {
            return self.padded()?.block_products_into(product, block, v, out);
        }
        self.gauss_newton(block, v, out);
        Ok(())
    }

    /// Forward mode only: `vᵀ G v = (2/n) ‖J_b v‖²`, all vectors in one pass.
    fn block_quadratic_forms_into(
        &self,
        product: Product,
        block: usize,
        v: ArrayView2<'_, F>,
        mut out: ArrayViewMut1<'_, F>,
    ) -> quant_hessian::Result<()> {
        quant_hessian::check_block_product(&self.loss.blocks, block, v.ncols(), v.ncols())?;
        check_len(v.nrows(), out.len())?;
        if !self.gauss_newton_answers(product) {
            return self.padded()?.block_quadratic_forms_into(product, block, v, out);
        }
        let je = self.tangents(block, v);
        let n = self.sentences.len();
        for (i, o) in out.iter_mut().enumerate() {
            *o = je.slice(s![i * n..(i + 1) * n, ..]).iter().fold(F::zero(), |a, &x| a + x * x) * self.scale;
        }
        Ok(())
    }
}
