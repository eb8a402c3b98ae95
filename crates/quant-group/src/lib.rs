//! # quant-group
//!
//! Group-wise quantization for the `quant` family (Q-BERT's second idea): split each matrix
//! into groups, each with its own range or lookup table.
//!
//! Available now: Q-BERT's grouping of consecutive output units (one group per attention
//! head, finer splits, or per unit) with any `quant-core` quantizer per group
//! ([`quantize_output_groups`]), codebook fine-tuning ([`OutputGroupCodebook`]), explicit
//! layouts of an `out × in` matrix ([`GroupLayout`]: output rows, input blocks, 2-D tiles and
//! fused-QKV heads, quantized by [`quantize_groups`]). The matrix-vector product straight
//! from packed codes is `quant_core::matvec`. `quant-core` itself quantizes GGML-style blocks of
//! contiguous elements along any axis ([`Granularity::PerGroup`]) with fused kernels, and
//! stores per-group steps at f32, f16, bf16 or as two-level k-quant style tables
//! (`ParamDtype::Quantized`, fitted by covering and search or, faster, by least squares:
//! `TableFit`). Planned: a vectorised packed matrix-vector product.
//!
//! ```
//! use ndarray::Array2;
//! use quant_core::{Scheme, UniformSpec};
//! use quant_group::{quantize_output_groups, Method};
//!
//! // A 64 × 64 projection with 4 heads: one range per head.
//! let w = Array2::from_shape_fn((64, 64), |(i, j)| ((i * 7 + j * 13) % 29) as f32 / 29.0 - 0.5);
//! let spec = UniformSpec::builder().bits(3).scheme(Scheme::SymmetricNarrow).check()?;
//! let q = quantize_output_groups(w.view(), 4, &Method::Uniform(spec))?;
//! println!("{:.3} bits per weight", q.bits_per_weight);
//! # Ok::<(), quant_group::GroupError>(())
//! ```

mod error;
mod layout;
mod rows;

pub use error::{GroupError, Result};
pub use layout::{GroupLayout, QkvOrder, quantize_groups};
pub use quant_core::{Granularity, Method};
pub use rows::{GroupQuantized, OutputGroupCodebook, quantize_output_groups};
