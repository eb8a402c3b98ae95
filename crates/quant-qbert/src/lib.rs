//! # quant-qbert
//!
//! The Q-BERT pipeline of the `quant` family, on any model that implements
//! [`QuantizableModel`](pipeline::QuantizableModel): per-matrix Hessian sensitivity (top
//! eigenvalues over data subsets, Ω), direct and mixed-precision group-wise quantization
//! (ranked by Ω, at random, or the exact budgeted optimum), activation quantization,
//! quantization-aware fine-tuning, and a report with SVG plots. Also the training loops the
//! pipeline uses ([`train`]) and the embedded UCI digits data ([`data`]).
//!
//! | module | what it holds |
//! |---|---|
//! | [`pipeline`] | `QbertPipeline` and its parameters, strategies and report |
//! | [`train`] | Adam training and quantization-aware training (STE) |
//! | [`data`] | the embedded digits data (feature `digits`, default) and a seeded split |
//! | [`sensitivity`] | a BERT-family checkpoint's per-matrix sensitivity on calibration text |
//! | [`plot`] | plain SVG box and scatter plots (the reports' figures) |
//! | [`plan`] | a quantization per tensor under a bits-per-weight budget, from a sensitivity report, a recipe or a file |
//!
//! ```
//! use quant_qbert::pipeline::{PipelineParams, QbertPipeline};
//!
//! let d = quant_qbert::data::digits()?;
//! let (train, test) = quant_qbert::data::split(d.labels.len(), 0.2, 0)?;
//! assert_eq!(train.len() + test.len(), 1797);
//! // Validated once; `run` then takes a trained model (see the `qbert` example of `quant`).
//! let pipeline = QbertPipeline::new(PipelineParams { direct_bits: vec![4, 2], ..PipelineParams::default() })?;
//! assert_eq!(pipeline.params().direct_bits, [4, 2]);
//! # Ok::<(), quant_qbert::QbertError>(())
//! ```
//!
//! ## Features
//! - `digits` (default): the embedded digits data.
//! - `serde`: serialize pipeline parameters and reports.

pub mod data;
mod error;
pub mod pipeline;
pub mod plan;
pub mod plot;
pub mod sensitivity;
pub mod train;

pub use error::{QbertError, Result};
