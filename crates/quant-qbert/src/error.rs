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
    /// A name (metric, candidate) the parser does not know.
    #[error("invalid {what} '{input}': expected {expected}")]
    InvalidName {
        /// What was being parsed.
        what: &'static str,
        /// The input.
        input: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A plan or a sensitivity report that does not fit the checkpoint (or itself).
    #[error("tensor '{tensor}' {reason}")]
    Plan {
        /// The tensor.
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A candidate pattern that matches none of the report's candidates.
    #[error("no candidate of the sensitivity report matches '{pattern}' (it has {available})")]
    UnknownCandidate {
        /// The pattern.
        pattern: String,
        /// The report's candidates.
        available: String,
    },
    /// A bits-per-weight budget below every assignment.
    #[error("no assignment fits {target} bits per weight; the least achievable is {least:.4}")]
    BudgetTooSmall {
        /// The budget asked for.
        target: f64,
        /// The least bits per weight any assignment (of this allocator) reaches.
        least: f64,
    },
    /// A metric that needs a sensitivity report, asked of a menu without one.
    #[error("the {metric} metric needs a sensitivity report")]
    Unscored {
        /// The metric.
        metric: &'static str,
    },
}

/// `Result` with [`QbertError`].
pub type Result<T> = core::result::Result<T, QbertError>;
