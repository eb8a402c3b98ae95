//! # quant-safetensors
//!
//! Quantized safetensors checkpoints for the `quant` family: quantize a checkpoint tensor by tensor, write the packed
//! result as a valid safetensors file, read it back and dequantize it.
//!
//! The file layout is specified in `docs/format.md` of the
//! repository: per quantized tensor `NAME`, the packed codes `NAME.qcodes` (U8) and its tables
//! under `NAME.q*` names, and a JSON description of every quantized tensor in the header
//! metadata under the key [`TENSORS_KEY`]. Other tensors (integers, booleans, skipped or empty
//! tensors) are copied byte for byte under their own names.
//!
//! Outputs are written through `OUT.partial` and renamed when complete ([`PartialFile`],
//! [`StreamWriter`]). For a checkpoint larger than memory, [`SafetensorsFile`] reads one
//! tensor at a time and [`quantize_file_by`] / [`dequantize_file`] keep about one tensor in
//! memory.
//!
//! ```
//! use quant_safetensors::{QuantizeOptions, QuantizedCheckpoint, quantize_checkpoint};
//! use quant_core::{GranularityRule, ParamDtype};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A tiny checkpoint built in memory (normally a file's bytes, or `SafetensorsFile::open`
//! // and `quantize_file_by` to read it one tensor at a time).
//! let w: Vec<u8> = (0..64 * 32).flat_map(|i| ((i % 17) as f32 / 17.0 - 0.5).to_le_bytes()).collect();
//! let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![64, 32], &w)?;
//! let input = safetensors::serialize([("layer.weight", view)], None)?;
//!
//! let options = QuantizeOptions { bits: 4, granularity: GranularityRule::Group { size: 32 }, tables: ParamDtype::Quantized { bits: 6, super_group: 8 }, ..Default::default() };
//! let dir = std::env::temp_dir().join(format!("quant-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let out = dir.join("model.q.safetensors");
//! let report = quantize_checkpoint(&input, &out, &options, |_| true, |_| {})?;
//! assert!((report.tensors[0].entry.bits_per_weight - 4.5).abs() < 1e-9);
//!
//! let bytes = std::fs::read(&out)?;
//! let ckpt = QuantizedCheckpoint::parse(&bytes)?;
//! let w_hat = ckpt.dequantize("layer.weight")?;
//! assert_eq!(w_hat.shape(), &[64, 32]);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

//!
//! The crate depends on the core vocabulary only (`quant-core`): it writes what a
//! [`Method`](quant_core::Method) produces and reads it back as a
//! [`Quantized`](quant_core::Quantized). Errors are in library terms ([`CheckpointError`],
//! with the core's [`QuantError`](quant_core::QuantError) inside); the `quant` command line
//! adds the flag names.

mod error;
mod file;
mod format;
mod read;
mod source;
mod write;

pub use error::{CheckpointError, Result};
pub use file::{PartialFile, StreamWriter, partial_path, write_file};
pub use format::{
    FORMAT_KEY, FORMAT_VERSION, PART_SUFFIXES, PassReason, PassThrough, Progress, Report, TENSORS_KEY, TensorEntry, TensorReport,
};
pub use read::{QuantizedCheckpoint, dequantize_checkpoint, dequantize_file, exercise_reader, inspect};
pub use source::SafetensorsFile;
pub use write::{
    QuantizeOptions, quantize_checkpoint, quantize_checkpoint_by, quantize_checkpoint_with, quantize_file_by, quantize_tensor, selection,
};

/// Re-export of `safetensors`, whose types the reader's [`QuantizedCheckpoint::raw`] returns.
pub use safetensors;

/// The format specification's code blocks, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/format.md")]
struct FormatDoctests;
