//! The self-distillation loss: how far the sentence embeddings move from the loaded model's.

use ndarray::{Array1, Array2, ArrayView1, ArrayViewMut1, Axis, s};
use quant_hessian::{Batch, Block, Differentiable, HessianError, Model, Real};

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
        let mut w0 = Vec::new();
        for (b, block) in model.blocks().iter().enumerate() {
            if variables.contains(&b) {
                at[b] = Some(w0.len());
                blocks.push(Block::new(block.name(), w0.len(), block.len()));
                w0.extend(model.weights().slice(s![block.range()]).iter().copied());
            }
        }
        Ok(Self { model, sentences, targets, at, blocks, w0: Array1::from(w0) })
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
        let (sub, targets) = match batch {
            Batch::All => (std::borrow::Cow::Borrowed(&self.sentences), self.targets.view().to_owned()),
            Batch::Indices(idx) => {
                let chosen = idx.iter().map(|&i| self.sentences.sentences()[i].clone()).collect();
                let sub = TokenBatch::new(chosen).map_err(|_| HessianError::Empty)?;
                (std::borrow::Cow::Owned(sub), self.targets.select(Axis(0), idx))
            }
        };
        let p = Params { w, w0: self.model.weights(), at: &self.at };
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
}
