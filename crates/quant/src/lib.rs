//! # quant
//!
//! Hessian-aware neural-network quantization in Rust: the facade of the `quant` crate family.
//! Add this crate and reach everything through it:
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`quantizers`] | `quant-core` | the method vocabulary (`Method`, `Quantized`), uniform, k-means, ternary and binary quantizers, bit-packed tensors, STE, LSQ, calibration |
//! | [`hessian`] | `quant-hessian` | the `Autodiff` trait, exact HVPs, power iteration, Lanczos, traces, Q-BERT statistics |
//! | [`mixed`] | `quant-mixed` | Omega and trace sensitivities, Q-BERT ranking, exact budget-constrained allocation, Pareto frontier |
//! | [`group`] | `quant-group` | group-wise quantization with per-group tables (in progress) |
//! | [`data`] | this crate | the embedded UCI digits data and a seeded train/test split |
//! | [`train`] | this crate | Adam training and quantization-aware fine-tuning (STE) |
//! | [`pipeline`] | this crate | the Q-BERT pipeline: sensitivity, allocation, group-wise quantization, report |
//!
//! ## Quick start
//! ```
//! use quant::prelude::*;
//!
//! let digits = quant::data::digits()?;
//! let spec = UniformSpec::builder().bits(4).scheme(Scheme::AsymmetricGrid).per_channel(1).check()?;
//! let q = quantize(&digits.images, &spec)?;
//! println!("{} bytes, {:.2} bits per value", q.storage_bytes(), q.bits_per_weight());
//! # Ok::<(), quant::Error>(())
//! ```
//!
//! ## Features
//! - `rayon` (default): parallel quantization and Q-BERT statistics; results are identical
//!   without it.
//! - `serde`: serialize allocations, layer specs and sensitivities.

#[cfg(feature = "safetensors")]
pub mod checkpoint;
mod error;

pub mod data;
pub mod pipeline;
mod plot;
pub mod train;

pub use error::{Error, Result};

/// Every quantizer and the one method vocabulary ([`Method`](quant_core::Method),
/// [`Quantized`](quant_core::Quantized)), packed storage, STE and calibration (the
/// `quant-core` crate). Named so that it does not shadow the standard `core`.
pub mod quantizers {
    pub use quant_core::*;
}

/// The `Autodiff` model trait, exact and finite-difference Hessian-vector products, power
/// iteration, Lanczos, trace estimators and Q-BERT statistics (the `quant-hessian` crate).
pub mod hessian {
    pub use quant_hessian::*;
}

/// Sensitivity metrics and bit allocation: Omega, HAWQ-V2 trace × perturbation, Q-BERT
/// ranking, the exact budget optimum and the Pareto frontier (the `quant-mixed` crate).
pub mod mixed {
    pub use quant_mixed::*;
}

/// Group-wise quantization (the `quant-group` crate).
pub mod group {
    pub use quant_group::*;
}

/// The names most programs need: the traits (float, model, operator, solver and
/// quantizable-model traits), the uniform specs and the quantize functions.
pub mod prelude {
    pub use crate::pipeline::QuantizableModel;
    pub use quant_core::{
        Float, Granularity, QuantParams, QuantizedTensor, RangeEstimator, Rounding, ScaleMode, Scheme, UniformSpec, calibrate,
        fake_quantize, quantize, ste_backward,
    };
    pub use quant_hessian::{Autodiff, Differentiable, LinearOperator, Model, OperatorExt, Real};
}

/// Re-export of `ndarray`, whose arrays and views appear in every signature.
pub use ndarray;

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// The format specification's code blocks, compiled as doctests.
#[cfg(all(doctest, feature = "safetensors"))]
#[doc = include_str!("../../../docs/format.md")]
struct FormatDoctests;
