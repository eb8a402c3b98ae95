//! GGUF, the file format of llama.cpp and ggml, for the `quant` family: read and write
//! version 3 files, and encode and decode GGML's block types.
//!
//! A GGUF file is a header (magic `GGUF`, version, typed metadata, tensor entries) followed by
//! an aligned data section. [`GgufFile`] maps a file and checks its header against hostile
//! input (counts, lengths, types, offsets, overlaps) before handing out any tensor's bytes;
//! [`GgufWriter`] streams tensors into `PATH.partial` and renames it into place on success.
//! [`codec`] holds the block codecs, bit-exact with ggml's layouts.
//!
//! ```
//! use quant_gguf::{GgmlType, Header, GgufWriter};
//!
//! let mut w = GgufWriter::new();
//! w.metadata("general.architecture", "bert")?;
//! w.tensor("token_embd.weight", &[384, 10], GgmlType::F16)?;
//! let mut bytes = Vec::new();
//! w.write_to(&mut bytes, |_, out| Ok(std::io::Write::write_all(out, &[0u8; 384 * 10 * 2])?))?;
//! let header = Header::parse(&bytes, Some(bytes.len() as u64))?;
//! assert_eq!(header.get("general.architecture").and_then(|v| v.as_str()), Some("bert"));
//! assert_eq!(header.tensors[0].shape(), vec![10, 384]);
//! # Ok::<(), quant_gguf::GgufError>(())
//! ```

pub mod codec;
pub mod convert;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod kquants;
mod read;
mod types;
mod value;
mod write;

pub use error::{GgufError, Result};
pub use read::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GgufFile, Header, MAGIC, MAX_DIMS, TensorInfo, VERSION};
pub use types::GgmlType;
pub use value::{Value, ValueType};
pub use write::{GgufWriter, TensorSink};
