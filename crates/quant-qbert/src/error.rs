//! The error type of the crate.

/// Everything that can go wrong in the pipeline, training or the data sets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QbertError {
    /// From `quant-core`.
    #[error(transparent)]
    Core(#[from] quant_core::QuantError),
    /// From `quant-hessian`.
    #[error(transparent)]
    Hessian(#[from] quant_hessian::HessianError),
    /// From `quant-group`.
    #[error(transparent)]
    Group(#[from] quant_group::GroupError),
    /// From `quant-mixed`.
    #[error(transparent)]
    Mixed(#[from] quant_mixed::MixedError),
    /// A pipeline or training parameter out of range.
    #[error("invalid {what}: {value}")]
    InvalidParameter {
        /// Which parameter.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// A budget the pipeline does not allocate under (it allocates bytes and compression
    /// ratios; bit-operation budgets need per-layer MAC counts, which `quant-mixed` takes).
    #[error("the pipeline does not allocate under a {budget} budget")]
    UnsupportedBudget {
        /// The budget's kind.
        budget: &'static str,
    },
    /// A required input was empty.
    #[error("no {what} given")]
    Empty {
        /// What was empty (`"samples"`, ...).
        what: &'static str,
    },
    /// Training met a NaN or infinite loss (a learning rate too large, or bad data).
    #[error("the training loss became NaN or infinite in epoch {epoch}")]
    NonFiniteLoss {
        /// The 0-based epoch.
        epoch: usize,
    },
    /// From the data sets.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// From the BERT-family model.
    #[error(transparent)]
    Bert(#[from] quant_models::bert::BertError),
    /// Fewer calibration sentences than the subsets need.
    #[error("{needed} calibration sentences are needed ({subsets} subsets of {per_subset}), the file has {available}")]
    TooFewSentences {
        /// Sentences needed.
        needed: usize,
        /// Subsets asked for.
        subsets: usize,
        /// Sentences per subset.
        per_subset: usize,
        /// Sentences given.
        available: usize,
    },
}

/// `Result` with [`QbertError`].
pub type Result<T> = core::result::Result<T, QbertError>;
