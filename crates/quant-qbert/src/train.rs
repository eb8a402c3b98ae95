//! Seeded mini-batch training with Adam, and quantization-aware fine-tuning with the
//! straight-through estimator.

use ndarray::{Array1, ArrayView1};
use quant_core::Float;
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
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    for i in (1..items.len()).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        items.swap(i, (z % (i as u64 + 1)) as usize);
    }
}

/// Trains `w` in place on the `samples` of `model` with Adam and returns the mean loss of
/// every epoch. `progress(epoch, loss)` is called after each epoch.
///
/// # Errors
/// [`QbertError::InvalidParameter`] for bad parameters or no samples, and the model's errors.
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
        return Err(QbertError::InvalidParameter { what: "samples", value: 0.0 });
    }
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let mut m = Array1::<f64>::zeros(w.len());
    let mut v = Array1::<f64>::zeros(w.len());
    let mut g = Array1::<F>::zeros(w.len());
    let mut order = samples.to_vec();
    let mut step = 0i32;
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
            total += loss.as_f64() * batch.len() as f64;
            step += 1;
            let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
            for (((wi, &gi), mi), vi) in w.iter_mut().zip(&g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let gi = gi.as_f64();
                *mi = b1 * *mi + (1.0 - b1) * gi;
                *vi = b2 * *vi + (1.0 - b2) * gi * gi;
                *wi -= F::cast(p.lr * (*mi / c1) / ((*vi / c2).sqrt() + eps));
            }
        }
        let mean = total / samples.len() as f64;
        losses.push(mean);
        progress(epoch, mean);
    }
    Ok(losses)
}

/// Adam's moment estimates for a vector of parameters.
#[derive(Debug, Clone)]
pub(crate) struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    pub(crate) fn new(n: usize) -> Self {
        Self { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }

    /// The update `lr · m̂ / (√v̂ + ε)` for gradient `g` (to subtract from the parameters).
    pub(crate) fn step(&mut self, g: impl Iterator<Item = f64>, lr: f64) -> Vec<f64> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        self.t += 1;
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        self.m
            .iter_mut()
            .zip(self.v.iter_mut())
            .zip(g)
            .map(|((m, v), g)| {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                lr * (*m / c1) / ((*v / c2).sqrt() + eps)
            })
            .collect()
    }
}
