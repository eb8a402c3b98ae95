//! The umbrella error of the facade.

/// Any error of the `quant` crates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
    /// From the embedded data sets.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

/// `Result` with the umbrella [`Error`].
pub type Result<T> = core::result::Result<T, Error>;
