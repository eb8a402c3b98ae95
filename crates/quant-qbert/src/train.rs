//! Seeded mini-batch training with Adam, and quantization-aware fine-tuning with the
//! straight-through estimator.

use ndarray::{Array1, ArrayView1};
use quant_core::Float;
pub(crate) use quant_core::optim::Adam;
use quant_hessian::{Autodiff, Batch};

use crate::error::{QbertError, Result};

/// A weight projection for quantization-aware training (`w ↦ Q(w)`).
pub type Projection<'a, F> = &'a dyn Fn(ArrayView1<'_, F>) -> Result<Array1<F>>;

/// Validated training parameters.
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `epochs` | 20 | passes over the training samples | `≥ 1` |
/// | `batch_size` | 64 | samples per step | `≥ 1` |
/// | `lr` | 1e-3 | Adam's step size | `> 0`, finite |
/// | `seed` | 0 | seed of the per-epoch shuffles | any |
///
/// Adam uses `β₁ = 0.9`, `β₂ = 0.999`, `ε = 1e-8` (Kingma and Ba's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TrainParams {
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Step size.
    pub lr: f64,
    /// Shuffle seed.
    pub seed: u64,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self { epochs: 20, batch_size: 64, lr: 1e-3, seed: 0 }
    }
}

impl TrainParams {
    /// Checks the table's ranges.
    ///
    /// # Errors
    /// [`QbertError::InvalidParameter`].
    pub fn check(self) -> Result<Self> {
        if self.epochs == 0 {
            return Err(QbertError::InvalidParameter { what: "epochs", value: 0.0 });
        }
        if self.batch_size == 0 {
            return Err(QbertError::InvalidParameter { what: "batch_size", value: 0.0 });
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(QbertError::InvalidParameter { what: "lr", value: self.lr });
        }
        Ok(self)
    }
}

/// A seeded permutation of `0..n` (SplitMix64 draws, Fisher–Yates).
pub(crate) fn shuffle(items: &mut [usize], seed: u64) {
    let mut draws = quant_core::rng::SplitMix64::new(seed ^ 0x5DEE_CE66_D1CE_4E5B);
    for i in (1..items.len()).rev() {
        items.swap(i, (draws.next_u64() % (i as u64 + 1)) as usize);
    }
}

/// Trains `w` in place on the `samples` of `model` with Adam and returns the mean loss of
/// every epoch. `progress(epoch, loss)` is called after each epoch.
///
/// # Errors
/// [`QbertError::InvalidParameter`] for bad parameters, [`QbertError::Empty`] for no samples,
/// `HessianError::SampleOutOfRange` (as [`QbertError::Hessian`]) for an index past the
/// model's samples (checked before the model sees any), [`QbertError::NonFiniteLoss`] when a
/// step's loss is NaN or infinite (training stops there), and the model's errors.
pub fn train<F, M>(
    model: &M,
    w: &mut Array1<F>,
    samples: &[usize],
    params: &TrainParams,
    progress: impl FnMut(usize, f64),
) -> Result<Vec<f64>>
where
    F: Float,
    M: Autodiff<F> + ?Sized,
{
    run(model, w, samples, params, None, progress)
}

/// Quantization-aware training with the straight-through estimator: as [`train`], but each
/// step evaluates the gradient at `project(w)` (the fake-quantized weights) and applies it
/// to the latent full-precision `w` unchanged (the STE's identity; with min-max ranges
/// nothing is clipped, so the mask is all ones).
///
/// # Errors
/// As [`train`], plus the projection's errors.
pub fn train_qat<F, M>(
    model: &M,
    w: &mut Array1<F>,
    samples: &[usize],
    params: &TrainParams,
    project: Projection<'_, F>,
    progress: impl FnMut(usize, f64),
) -> Result<Vec<f64>>
where
    F: Float,
    M: Autodiff<F> + ?Sized,
{
    run(model, w, samples, params, Some(project), progress)
}

fn run<F, M>(
    model: &M,
    w: &mut Array1<F>,
    samples: &[usize],
    params: &TrainParams,
    project: Option<Projection<'_, F>>,
    mut progress: impl FnMut(usize, f64),
) -> Result<Vec<f64>>
where
    F: Float,
    M: Autodiff<F> + ?Sized,
{
    let p = params.check()?;
    if samples.is_empty() {
        return Err(QbertError::Empty { what: "samples" });
    }
    Batch::Indices(samples).check(model.samples())?;
    let mut adam = Adam::new(w.len());
    let mut g = Array1::<F>::zeros(w.len());
    let mut order = samples.to_vec();
    let mut losses = Vec::with_capacity(p.epochs);
    for epoch in 0..p.epochs {
        shuffle(&mut order, p.seed.wrapping_add(epoch as u64));
        let mut total = 0.0;
        for batch in order.chunks(p.batch_size) {
            let loss = match project {
                Some(q) => {
                    let wq = q(w.view())?;
                    model.loss_grad_into(wq.view(), Batch::Indices(batch), g.view_mut())?
                }
                None => model.loss_grad_into(w.view(), Batch::Indices(batch), g.view_mut())?,
            };
            if !loss.is_finite() {
                return Err(QbertError::NonFiniteLoss { epoch });
            }
            total += loss.as_f64() * batch.len() as f64;
            let mut ws = w.iter_mut();
            adam.step(g.iter().map(|v| v.as_f64()), p.lr, |_, d| {
                if let Some(wi) = ws.next() {
                    *wi -= F::cast(d);
                }
            });
        }
        let mean = total / samples.len() as f64;
        losses.push(mean);
        progress(epoch, mean);
    }
    Ok(losses)
}
