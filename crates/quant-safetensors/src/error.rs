//! The error type of the crate.

use quant_core::QuantError;
use safetensors::SafeTensorError;

/// Everything that can go wrong reading, quantizing or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The bytes are not a valid safetensors file (truncated, a header that lies about offsets
    /// or sizes, an unknown dtype, malformed JSON).
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    /// The quantization metadata or a stored part is missing or inconsistent.
    #[error("invalid quantized checkpoint: {0}")]
    Metadata(String),
    /// Quantizing or rebuilding one tensor failed.
    #[error("tensor '{name}': {source}")]
    Tensor {
        /// The tensor.
        name: String,
        /// Why.
        source: QuantError,
    },
    /// A tensor the options cannot apply to (for example a channel axis it does not have).
    #[error("tensor '{name}': {source}")]
    Unsupported {
        /// The tensor.
        name: String,
        /// Why: [`QuantError::InvalidAxis`] for a missing channel axis or a scalar.
        source: QuantError,
    },
    /// Options that cannot be used whatever the tensor: bits out of range for the method and
    /// scheme, a group size of zero, a table storage or fit the method does not have.
    #[error("invalid options: {0}")]
    Options(QuantError),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The input could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The output's partial file could not be created (a directory that does not exist, no
    /// permission).
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing or renaming the output failed (a full disk, for example).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl From<SafeTensorError> for CheckpointError {
    fn from(e: SafeTensorError) -> Self {
        match e {
            SafeTensorError::IoError(io) => CheckpointError::Io(io),
            other => CheckpointError::Format(other.to_string()),
        }
    }
}

/// `Result` with [`CheckpointError`].
pub type Result<T> = core::result::Result<T, CheckpointError>;
