//! # quant
//!
//! Hessian-aware neural-network quantization in Rust: the facade of the `quant` crate family.
//! Add this crate and reach everything through it:
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`quantizers`] | `quant-core` | the method vocabulary (`Method`, `Quantized`), uniform, k-means, ternary and binary quantizers, bit-packed tensors, STE, LSQ, calibration |
//! | [`hessian`] | `quant-hessian` | the `Autodiff` trait, exact HVPs, power iteration, Lanczos, traces, Q-BERT statistics |
//! | [`ptq`] | `quant-ptq` | post-training methods: batch-norm folding, DFQ, bias correction, AdaRound, EasyQuant |
//! | [`models`] | `quant-models` | reference models: quadratic, MLP, a small BERT-style encoder |
//! | [`mixed`] | `quant-mixed` | Omega and trace sensitivities, Q-BERT ranking, exact budget-constrained allocation, Pareto frontier |
//! | [`group`] | `quant-group` | group-wise quantization with per-group tables (in progress) |
//! | `checkpoint` | `quant-safetensors` | quantized safetensors checkpoints (feature `safetensors`) |
//! | [`data`] | `quant-qbert` | the embedded UCI digits data and a seeded train/test split |
//! | [`train`] | `quant-qbert` | Adam training and quantization-aware fine-tuning (STE) |
//! | [`pipeline`] | `quant-qbert` | the Q-BERT pipeline: sensitivity, allocation, group-wise quantization, report |
//! | [`sensitivity`] | `quant-qbert` | a BERT-family checkpoint's per-matrix Hessian sensitivity on calibration text |
//! | [`plan`] | `quant-qbert` | a quantization per tensor under a bits-per-weight budget (five metrics, llama.cpp's recipe, plan files) |
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
//! - `serde` (default): serialize specs, allocations, layer specs, sensitivities and pipeline
//!   reports.
//! - `digits` (default): the embedded UCI digits data (`data::digits`).
//! - `safetensors`: quantized safetensors checkpoints (`checkpoint`).

mod error;

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

/// Post-training methods: batch-norm folding, DFQ equalization and bias correction,
/// AdaRound, EasyQuant (the `quant-ptq` crate).
pub mod ptq {
    pub use quant_ptq::*;
}

/// Reference models, differentiable exactly through the Hessian engine: a quadratic, an MLP
/// and a small BERT-style encoder (the `quant-models` crate).
pub mod models {
    pub use quant_models::*;
}

/// Sensitivity metrics and bit allocation: Omega, HAWQ-V2 trace × perturbation, Q-BERT
/// ranking, the exact budget optimum and the Pareto frontier (the `quant-mixed` crate).
pub mod mixed {
    pub use quant_mixed::*;
}

/// The Q-BERT pipeline: sensitivity, allocation, group-wise quantization, fine-tuning and
/// the report (the `quant-qbert` crate).
pub mod pipeline {
    pub use quant_qbert::pipeline::*;
    pub use quant_qbert::{QbertError, Result};
}

/// Hessian sensitivity of a BERT-family checkpoint's matrices on calibration text: Q-BERT's
/// top eigenvalues and Ω, HAWQ-V2's average trace, and each candidate quantization's
/// second-order and measured loss increase (the `quant-qbert` crate's `sensitivity`).
pub mod sensitivity {
    pub use quant_qbert::sensitivity::*;
}

/// A quantization per tensor of a BERT-family checkpoint under a bits-per-weight budget:
/// allocated from a sensitivity report by five metrics, llama.cpp's `q4_k_m` recipe, or a
/// plan file (the `quant-qbert` crate's `plan`).
pub mod plan {
    pub use quant_qbert::plan::*;
}

/// Plain SVG box and scatter plots, as the reports draw them (the `quant-qbert` crate's
/// `plot`).
pub mod plot {
    pub use quant_qbert::plot::*;
}

/// Adam training and quantization-aware training with the STE (the `quant-qbert` crate).
pub mod train {
    pub use quant_qbert::train::*;
}

/// The embedded UCI digits data (feature `digits`) and a seeded train/test split (the
/// `quant-qbert` crate).
pub mod data {
    pub use quant_qbert::data::*;
}

/// Quantized safetensors checkpoints: quantize, write, read back, dequantize and report (the
/// `quant-safetensors` crate; feature `safetensors`).
#[cfg(feature = "safetensors")]
pub mod checkpoint {
    pub use quant_safetensors::*;
}

/// GGUF, llama.cpp's format: the reader, the writer and the GGML block codecs (the
/// `quant-gguf` crate); BERT-family models in GGUF are in [`models::bert`].
pub mod gguf {
    pub use quant_gguf::*;
}

/// Group-wise quantization (the `quant-group` crate).
pub mod group {
    pub use quant_group::*;
}

/// The names most programs need: the traits (float, model, operator, solver and
/// quantizable-model traits), the method vocabulary, the uniform specs and the quantize
/// functions.
pub mod prelude {
    pub use quant_core::{
        Float, Granularity, Method, MethodKind, MethodParams, QuantParams, Quantized, QuantizedTensor, RangeEstimator, Rounding, ScaleMode,
        Scheme, UniformSpec, calibrate, fake_quantize, quantize, ste_backward,
    };
    pub use quant_hessian::{Autodiff, Batch, Block, Differentiable, LinearOperator, MatrixBlock, Model, OperatorExt, Real};
    pub use quant_qbert::pipeline::{Budget, Grouping, PipelineParams, QbertPipeline, QbertReport, QuantizableModel, Strategy};
}

/// Re-export of `ndarray`, whose arrays and views appear in every signature.
pub use ndarray;

/// Re-export of `safetensors`, whose `TensorView` [`checkpoint`]'s raw tensors are (feature
/// `safetensors`).
#[cfg(feature = "safetensors")]
pub use quant_safetensors::safetensors;

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
