//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong reading, writing or decoding GGUF.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened, read or mapped.
    #[error("{path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The output could not be created, written or renamed into place.
    #[error("{path}: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes do not start with the magic `GGUF`.
    #[error("not a GGUF file (magic {0:02x?})")]
    Magic([u8; 4]),
    /// A version this crate does not read (it reads 2 and 3).
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// The file ends inside a header field.
    #[error("truncated at byte {offset}: {what}")]
    Truncated {
        /// Where the field starts.
        offset: u64,
        /// Which field.
        what: &'static str,
    },
    /// A header field holds an impossible value.
    #[error("malformed header at byte {offset}: {reason}")]
    Malformed {
        /// Where the field starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A metadata key appears twice.
    #[error("metadata key {0:?} appears twice")]
    DuplicateKey(String),
    /// A tensor name appears twice.
    #[error("tensor {0:?} appears twice")]
    DuplicateTensor(String),
    /// A GGML type id this crate does not know.
    #[error("unknown GGML type id {0}")]
    UnknownType(u32),
    /// A tensor whose data does not fit where its header says, or whose shape does not fit
    /// its type.
    #[error("tensor {name:?}: {reason}")]
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A type without an encoder or decoder here.
    #[error("GGML type {0} has no codec in this crate")]
    NoCodec(&'static str),
    /// A buffer of the wrong length for its type and element count.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// The length the type and shape need.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A value to encode is NaN or infinite.
    #[error("element {index} is not finite")]
    NonFinite {
        /// Its index.
        index: usize,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, GgufError>;
