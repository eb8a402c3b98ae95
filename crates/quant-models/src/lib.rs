//! # quant-models
//!
//! Models for the `quant` family, differentiable exactly through `quant-hessian`: their
//! gradients are written once, generic over [`Real`](quant_hessian::Real), so evaluated in
//! dual numbers they give exact Hessian-vector products.
//!
//! | model | what it is |
//! |---|---|
//! | [`Quadratic`] | `½ wᵀA w − bᵀw`, a known Hessian for solver tests |
//! | [`Mlp`] | a multilayer perceptron (softmax regression with no hidden layer) |
//! | [`Encoder`] | a small BERT-style encoder (attention, layer norm, GELU FFN) for classification |
//! | [`bert::Bert`] | a real BERT-family checkpoint from a Hugging Face directory (feature `bert`, default) |
//!
//! Errors are the Hessian engine's ([`HessianError`](quant_hessian::HessianError)): the
//! models are what its traits are implemented by.
//!
//! ## Weight convention
//! The family's convention is `out × in` (PyTorch's `Linear.weight`, every safetensors
//! checkpoint). These reference models store their matrices `fan_in × fan_out` (`y = x W`)
//! inside the flat parameter vector, as their blocks' shapes say; code that takes matrices
//! from them (the Q-BERT pipeline) converts at that boundary.
//!
//! ```
//! use ndarray::array;
//! use quant_hessian::{Batch, HessianOperator, Lanczos, OperatorExt, PowerIteration};
//! use quant_models::Quadratic;
//!
//! let a = array![[4.0, 1.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, -2.0]];
//! let model = Quadratic::new(&a, &array![0.0, 0.0, 0.0])?;
//! let w = array![0.5, -1.0, 2.0];
//! let h = HessianOperator::full(&model, w.view(), Batch::All)?;
//!
//! let top = h.power_iteration(&PowerIteration::builder().tol(1e-10).max_iter(1000).check()?)?;
//! assert!((top.values[0] - (3.5 + 5f64.sqrt() / 2.0)).abs() < 1e-8);
//!
//! let ends = h.lanczos(&Lanczos::default())?;
//! assert!(ends.is_indefinite()); // the smallest eigenvalue is −2: a saddle
//! # Ok::<(), quant_hessian::HessianError>(())
//! ```

#[cfg(feature = "bert")]
pub mod bert;
mod common;
mod encoder;
mod encoder_curvature;
mod mlp;
mod quadratic;
/// Embedding agreement and retrieval measures (feature `bert`).
#[cfg(feature = "bert")]
pub mod retrieval;

pub use encoder::{Encoder, EncoderConfig};
pub use mlp::{Activation, Mlp};
pub use quadratic::Quadratic;
