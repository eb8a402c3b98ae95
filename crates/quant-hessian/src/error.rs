//! The error type of `quant-hessian`.

use crate::eigen::Eigenpairs;

/// Everything that can go wrong in `quant-hessian`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HessianError {
    /// A value that must be finite is NaN or infinite (in parameters, a direction, data, or
    /// an operator's output).
    #[error("non-finite value at index {index}")]
    NonFinite {
        /// Flat index of the first offending value.
        index: usize,
    },
    /// A vector or matrix has the wrong length or shape.
    #[error("shape mismatch: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape given.
        got: Vec<usize>,
    },
    /// An operator of dimension 0, or an empty data set or batch.
    #[error("empty operator, data set or batch")]
    Empty,
    /// A block index past the model's block count.
    #[error("block {index} does not exist (the model has {count} blocks)")]
    InvalidBlock {
        /// The index asked for.
        index: usize,
        /// The number of blocks.
        count: usize,
    },
    /// A block that does not lie inside the parameter vector, or is empty.
    #[error("block {index} covers {start}..{end}, outside the parameter vector of length {dim} or empty")]
    BlockOutOfRange {
        /// The block's index.
        index: usize,
        /// Its first parameter.
        start: usize,
        /// One past its last parameter.
        end: usize,
        /// The parameter vector's length.
        dim: usize,
    },
    /// A sample index in a batch past the number of samples.
    #[error("sample index {index} is out of range for {samples} samples")]
    SampleOutOfRange {
        /// The index.
        index: usize,
        /// The number of samples.
        samples: usize,
    },
    /// A class label past the number of classes.
    #[error("label {label} of sample {index} is not below the class count {classes}")]
    InvalidLabel {
        /// The sample.
        index: usize,
        /// Its label.
        label: usize,
        /// The number of classes.
        classes: usize,
    },
    /// A layer width of zero (or fewer than one class).
    #[error("layer {layer} has width 0")]
    InvalidWidth {
        /// The layer (0 = inputs).
        layer: usize,
    },
    /// A matrix that must be symmetric is not (`a[row, col] != a[col, row]`).
    #[error("matrix is not symmetric at ({row}, {col})")]
    NotSymmetric {
        /// Row of the first mismatch.
        row: usize,
        /// Column of the first mismatch.
        col: usize,
    },
    /// More eigenpairs asked for than the operator's dimension, or none.
    #[error("cannot compute {k} eigenpairs of a {dim}-dimensional operator")]
    InvalidEigenCount {
        /// Eigenpairs asked for.
        k: usize,
        /// The dimension.
        dim: usize,
    },
    /// An iteration cap, step count, sample cap, probe count or budget of zero (or below
    /// the method's minimum).
    #[error("{what} is {value}; it must be at least {min}")]
    TooFew {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The least allowed.
        min: usize,
    },
    /// A tolerance that is not finite and non-negative (or not positive where 0 cannot
    /// be met).
    #[error("invalid tolerance {tol}")]
    InvalidTolerance {
        /// The tolerance.
        tol: f64,
    },
    /// A regularisation strength or step that is not finite and non-negative.
    #[error("invalid {what}: {value}")]
    InvalidValue {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// More data subsets than samples (or none).
    #[error("cannot split {samples} samples into {subsets} subsets")]
    InvalidSubsets {
        /// Subsets asked for.
        subsets: usize,
        /// Samples available.
        samples: usize,
    },
    /// An iterative eigensolver hit its iteration cap before the stopping rule held. The
    /// partial result (eigenvalues, vectors and residuals so far, in `f64`) is attached.
    #[error("no convergence after {} operator applications (residuals {:?})", .partial.hvps, .partial.residuals)]
    NoConvergence {
        /// What was computed before the cap.
        partial: Box<Eigenpairs<f64>>,
    },
    /// The model does not offer this product (for example a Gauss-Newton product from a
    /// model whose loss is not written as a function of its outputs).
    #[error("the model does not offer {what}")]
    Unsupported {
        /// The product asked for.
        what: &'static str,
    },
    /// An error raised by a user's model.
    #[error("model error: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `Result` with [`HessianError`].
pub type Result<T> = core::result::Result<T, HessianError>;

/// Checks that every value is finite.
pub(crate) fn check_finite<'a, F: quant_core::Float>(values: impl IntoIterator<Item = &'a F>) -> Result<()> {
    match values.into_iter().position(|v| !v.is_finite()) {
        Some(index) => Err(HessianError::NonFinite { index }),
        None => Ok(()),
    }
}

/// Checks a vector length.
pub(crate) fn check_len(expected: usize, got: usize) -> Result<()> {
    if expected == got { Ok(()) } else { Err(HessianError::ShapeMismatch { expected: vec![expected], got: vec![got] }) }
}

/// Checks a tolerance: finite and `> 0`.
pub(crate) fn check_tol(tol: f64) -> Result<()> {
    if tol.is_finite() && tol > 0.0 { Ok(()) } else { Err(HessianError::InvalidTolerance { tol }) }
}

/// Checks a count against its minimum.
pub(crate) fn check_at_least(what: &'static str, value: usize, min: usize) -> Result<()> {
    if value >= min { Ok(()) } else { Err(HessianError::TooFew { what, value, min }) }
}
