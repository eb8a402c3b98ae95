//! The error type of `quant-mixed`.

/// Everything that can go wrong in `quant-mixed`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MixedError {
    /// A quantizer failed while scoring a candidate.
    #[error(transparent)]
    Core(#[from] quant_core::QuantError),
    /// No layers, no eigenvalues, or a layer without candidate options.
    #[error("nothing to allocate: {what}")]
    Empty {
        /// What was empty.
        what: &'static str,
    },
    /// A sensitivity, eigenvalue or share that must be finite is not.
    #[error("non-finite {what} at index {index}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Its index (layer, option or eigenvalue).
        index: usize,
    },
    /// A layer index (in a tie) past the number of layers, or a layer tied twice.
    #[error("layer {layer} is out of range or already tied (there are {layers} layers)")]
    InvalidTie {
        /// The layer index.
        layer: usize,
        /// The number of layers.
        layers: usize,
    },
    /// After applying fixed / minimum / maximum widths and ties, a layer (or tie group) has
    /// no option left.
    #[error("layer {layer} ({name}) has no candidate left after its width constraints and ties")]
    NoOptions {
        /// The layer index.
        layer: usize,
        /// Its name.
        name: String,
    },
    /// No assignment meets the budget; the smallest achievable total is attached.
    #[error("no assignment fits the budget of {budget}; the smallest possible total is {minimum}")]
    Infeasible {
        /// The budget (bytes or bit-operations).
        budget: u64,
        /// The least total any assignment reaches.
        minimum: u64,
    },
    /// A share outside `[0, 1]`, or a compression ratio that is not finite and `≥ 1`.
    #[error("invalid {what}: {value}")]
    InvalidValue {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// A total that does not fit in 64 bits.
    #[error("a total size or bit-operation count overflows u64")]
    Overflow,
}

/// `Result` with [`MixedError`].
pub type Result<T> = core::result::Result<T, MixedError>;
