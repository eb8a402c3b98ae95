//! The error type of the BERT-family loader, tokenizer and model.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a BERT-family checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BertError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A configuration file that is not valid JSON of the expected shape.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value out of range (or a combination that cannot hold).
    #[error("config.json: {field} = {value} is invalid: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Its value, as written.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A checkpoint of another architecture (`model_type` or an unsupported setting).
    #[error("unsupported checkpoint: {reason}")]
    Unsupported {
        /// Why.
        reason: String,
    },
    /// `model.safetensors` could not be parsed.
    #[error("{path}: malformed safetensors: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("the checkpoint has no tensor '{name}' (looked for it with and without the 'bert.' prefix)")]
    MissingTensor {
        /// Its name, without prefix.
        name: String,
    },
    /// A tensor whose shape disagrees with the configuration.
    #[error("tensor '{name}' has shape {got:?} but config.json implies {expected:?}")]
    TensorShape {
        /// The tensor's name in the checkpoint.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A tensor stored in a type the loader does not read (F32, F16 and BF16 are read).
    #[error("tensor '{name}' is stored as {dtype}; F32, F16 and BF16 are supported")]
    TensorDtype {
        /// The tensor's name in the checkpoint.
        name: String,
        /// Its type.
        dtype: String,
    },
    /// A weight that is NaN or infinite.
    #[error("tensor '{name}' holds a non-finite value at flat index {index}")]
    NonFinite {
        /// The tensor's name in the checkpoint.
        name: String,
        /// The flat index of the first such value.
        index: usize,
    },
    /// The directory has no `tokenizer.json` (and no `vocab.txt` to build one from).
    #[error("{dir}: no tokenizer.json or vocab.txt")]
    MissingTokenizer {
        /// The model directory.
        dir: PathBuf,
    },
    /// The tokenizer failed to load or to encode.
    #[error("tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer's message.
        reason: String,
    },
    /// A token id outside the vocabulary, or a token type outside `type_vocab_size`.
    #[error("token {token} of sentence {sentence} is {id}, outside the table of {size}")]
    TokenOutOfRange {
        /// The sentence.
        sentence: usize,
        /// The position in it.
        token: usize,
        /// The id.
        id: u32,
        /// The table's rows.
        size: usize,
    },
    /// A sentence with no tokens at all (not even the special ones).
    #[error("sentence {sentence} has no tokens")]
    EmptySentence {
        /// The sentence.
        sentence: usize,
    },
    /// A parameter vector of the wrong length.
    #[error("the parameter vector holds {got} values but the model has {expected}")]
    ParameterCount {
        /// The model's parameter count.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// A statistics file (input Gram matrices or an imatrix) that cannot be read or written.
    #[error("input statistics: {reason}")]
    Statistics {
        /// What is wrong.
        reason: String,
    },
    /// A text file that is not UTF-8.
    #[error("{path}: line {line} is not valid UTF-8")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
    },
}

/// `Result` with [`BertError`].
pub type Result<T> = core::result::Result<T, BertError>;
