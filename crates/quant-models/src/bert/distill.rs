//! The self-distillation loss: how far the sentence embeddings move from the loaded model's.

use ndarray::{Array2, ArrayView1, ArrayViewMut1, Axis};
use quant_hessian::{Batch, Block, Differentiable, HessianError, Model, Real};

use super::error::Result;
use super::model::{Bert, Caches};
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
#[derive(Debug, Clone)]
pub struct SelfDistillation<F> {
    model: Bert<F>,
    sentences: TokenBatch,
    targets: Array2<F>,
}

impl<F: Real<Base = F>> SelfDistillation<F> {
    /// The loss of `model` on `sentences`, with targets embedded at the model's loaded weights.
    ///
    /// # Errors
    /// [`BertError::EmptySentence`](super::BertError::EmptySentence) and
    /// [`BertError::TokenOutOfRange`](super::BertError::TokenOutOfRange) for sentences the
    /// model cannot take.
    pub fn new(model: Bert<F>, sentences: TokenBatch) -> Result<Self> {
        let targets = model.embed(&sentences)?;
        Ok(Self { model, sentences, targets })
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

    /// The loaded weights `W₀`, where the loss is zero.
    pub fn weights(&self) -> ArrayView1<'_, F> {
        self.model.weights()
    }
}

impl<F: Real<Base = F>> Model for SelfDistillation<F> {
    fn dim(&self) -> usize {
        self.model.blocks().last().map_or(0, |b| b.range().end)
    }
    fn blocks(&self) -> &[Block] {
        self.model.blocks()
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
        let mut caches = Caches::default();
        let hidden = self.model.encode(w, &sub, Some(&mut caches));
        let e = self.model.pool(&hidden, &sub);
        let inv = T::cast(1.0 / sub.len() as f64);
        let mut diff = e;
        diff.zip_mut_with(&targets, |a, &t| *a -= T::from_base(t));
        let loss = diff.iter().fold(T::zero(), |s, &v| s + v * v) * inv;
        let two = T::cast(2.0);
        let de = diff.mapv(|v| v * two * inv);
        self.model.backward(w, &sub, &hidden, &caches, &de, &mut grad);
        if !loss.is_finite() {
            return Err(HessianError::NonFinite { index: 0 });
        }
        Ok(loss)
    }
}
