//! The error type of `quant-group`.

/// Everything that can go wrong in `quant-group`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// From the per-group quantizer.
    #[error(transparent)]
    Core(#[from] quant_core::QuantError),
    /// A group count of zero, or one that does not divide the number of output units.
    #[error("{groups} groups do not evenly split {units} output units")]
    InvalidGroups {
        /// Groups asked for.
        groups: usize,
        /// Output units (rows of an `out × in` matrix).
        units: usize,
    },
    /// A group layout that does not fit the matrix (see [`GroupLayout`](crate::GroupLayout)).
    #[error("layout {layout:?} does not fit a {shape:?} matrix: {reason}")]
    InvalidLayout {
        /// The layout.
        layout: crate::GroupLayout,
        /// The matrix's `(out, in)` shape.
        shape: (usize, usize),
        /// Why.
        reason: &'static str,
    },
}

/// `Result` with [`GroupError`].
pub type Result<T> = core::result::Result<T, GroupError>;
