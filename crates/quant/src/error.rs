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
    /// From loading or running a BERT-family checkpoint (`quant-models`).
    #[error(transparent)]
    Bert(#[from] quant_models::bert::BertError),
    /// From the Q-BERT pipeline, training and the data sets (`quant-qbert`).
    #[error(transparent)]
    Qbert(#[from] quant_qbert::QbertError),
    /// From the quantized safetensors checkpoints.
    #[cfg(feature = "safetensors")]
    #[error(transparent)]
    Checkpoint(#[from] quant_safetensors::CheckpointError),
}

impl From<quant_qbert::data::DataError> for Error {
    fn from(e: quant_qbert::data::DataError) -> Self {
        Error::Qbert(e.into())
    }
}

/// `Result` with the umbrella [`Error`].
pub type Result<T> = core::result::Result<T, Error>;
