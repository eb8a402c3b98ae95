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
    /// From the data sets.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

/// `Result` with [`QbertError`].
pub type Result<T> = core::result::Result<T, QbertError>;
