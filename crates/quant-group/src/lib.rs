//! # quant-group
//!
//! Group-wise quantization for the `quant` family (Q-BERT's second idea). It will hold group
//! layouts (output rows, attention heads, input-dimension blocks, tiles), a group quantizer
//! applying any `quant-core` quantizer per group with its own range or lookup table, tables
//! stored at f32/f16/bf16 or themselves quantized, and fused kernels including a packed
//! matrix-vector product.
//!
//! Until then, `quant-core` already quantizes per group of contiguous elements along any axis
//! ([`Granularity::PerGroup`]).

#[doc(no_inline)]
pub use quant_core::Granularity;
