//! The error type of `quant-core`.

/// Everything that can go wrong in `quant-core`.
///
/// Every variant carries the offending values as typed fields; bad input never panics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The bit width is outside what the scheme defines.
    #[error("{bits} bits is out of range for this scheme (allowed {min}..={max})")]
    InvalidBits {
        /// The requested width.
        bits: u8,
        /// The smallest width the scheme allows.
        min: u8,
        /// The largest width the scheme allows.
        max: u8,
    },
    /// An axis does not exist in the tensor.
    #[error("axis {axis} is out of range for a tensor of {ndim} dimensions")]
    InvalidAxis {
        /// The requested axis.
        axis: usize,
        /// The tensor's number of dimensions.
        ndim: usize,
    },
    /// A group size of zero.
    #[error("group size must be at least 1, got {size}")]
    InvalidGroupSize {
        /// The requested size.
        size: usize,
    },
    /// Percentiles outside `0 <= lower < upper <= 100` (or NaN).
    #[error("percentiles must satisfy 0 <= lower < upper <= 100, got lower {lower}, upper {upper}")]
    InvalidPercentile {
        /// The lower percentile.
        lower: f64,
        /// The upper percentile.
        upper: f64,
    },
    /// An EMA momentum outside `[0, 1)` (or NaN).
    #[error("EMA momentum must lie in [0, 1), got {momentum}")]
    InvalidMomentum {
        /// The requested momentum.
        momentum: f64,
    },
    /// A search with no candidates.
    #[error("the MSE clipping search needs at least 1 candidate, got {steps}")]
    InvalidSearchSteps {
        /// The requested number of candidates.
        steps: u16,
    },
    /// A NaN or infinite value in the input.
    #[error("non-finite value at flat index {index} (row-major)")]
    NonFinite {
        /// Row-major index of the first offending element.
        index: usize,
    },
    /// A tensor with no elements.
    #[error("the tensor is empty")]
    Empty,
    /// Two arrays that must have the same shape do not.
    #[error("shape mismatch: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The shape that was required.
        expected: Vec<usize>,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// Quantization parameters do not fit the tensor they are applied to.
    #[error("the parameters hold {got} slices but this tensor and granularity need {expected}")]
    ParamCountMismatch {
        /// How many slices the tensor has under the granularity.
        expected: usize,
        /// How many the parameters hold.
        got: usize,
    },
    /// A matrix-vector product whose operands do not fit: the matrix must be 2-D,
    /// `x` as long as its columns and `y` as its rows.
    #[error("cannot multiply a {matrix:?} matrix by a vector of {x} into one of {y}")]
    MatvecShape {
        /// The matrix's shape.
        matrix: Vec<usize>,
        /// `x`'s length.
        x: usize,
        /// `y`'s length.
        y: usize,
    },
    /// A code does not fit the bit width (when packing caller-supplied codes).
    #[error("code {code} at index {index} does not fit in {bits} bits")]
    CodeOutOfRange {
        /// Index of the offending code.
        index: usize,
        /// The code.
        code: u8,
        /// The bit width.
        bits: u8,
    },
    /// Packed storage whose length does not match its declared element count and width.
    #[error("packed storage holds {got} bytes but {len} codes of {bits} bits need {expected}")]
    PackedLength {
        /// Declared number of codes.
        len: usize,
        /// Declared width.
        bits: u8,
        /// Bytes required.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// A codebook size outside `1..=256`.
    #[error("codebook size must lie in 1..=256, got {k}")]
    InvalidClusterCount {
        /// The requested number of centroids.
        k: usize,
    },
    /// A ternary threshold factor that is not finite and positive.
    #[error("threshold factor must be finite and positive, got {factor}")]
    InvalidThreshold {
        /// The requested factor.
        factor: f64,
    },
    /// A clipping bound that is not finite and positive.
    #[error("clipping bound must be finite and positive, got {clip}")]
    InvalidClip {
        /// The requested bound.
        clip: f64,
    },
    /// An iteration cap of zero.
    #[error("the iteration cap must be at least 1")]
    InvalidIterations,
    /// A tolerance that is negative or NaN.
    #[error("tolerance must be finite and non-negative, got {tol}")]
    InvalidTolerance {
        /// The requested tolerance.
        tol: f64,
    },
    /// A curvature estimate with a negative entry (LAT needs `d ≥ 0`).
    #[error("curvature estimate must be non-negative, got {value} at flat index {index}")]
    NegativeCurvature {
        /// Row-major index.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A table value outside the range of the table's storage type (for example above 65504 in f16).
    #[error("table value {value} does not fit the table's storage type")]
    TableOverflow {
        /// The value.
        value: f64,
    },
    /// A codebook-only operation on a ternary or binary tensor.
    #[error("this operation needs a codebook (k-means) tensor")]
    NotACodebook,
    /// Two-level table settings that cannot be used (see
    /// [`ParamDtype::Quantized`](crate::ParamDtype::Quantized)), or stored tables that do not
    /// fit together.
    #[error("invalid quantized tables: {reason}")]
    InvalidTables {
        /// What is wrong.
        reason: &'static str,
    },
    /// Stored slice parameters that cannot be used: a step that is not finite and positive, a
    /// non-finite offset or a zero point outside the code range.
    #[error("invalid parameters for slice {index}: {reason}")]
    InvalidParams {
        /// The slice.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A requantization multiplier with no fixed-point form (not finite, or outside
    /// `[2^-31, 2^31)`).
    #[error("multiplier {value} has no fixed-point form (needs 2^-31 <= M < 2^31)")]
    InvalidMultiplier {
        /// The multiplier.
        value: f64,
    },
    /// An LSQ step or shift gradient too large for the element type (finite input can give
    /// one: the sum of `N` terms `dY·S`).
    #[error("the LSQ step or shift gradient of slice {slice} is too large for the element type")]
    GradientOverflow {
        /// The slice whose gradient overflowed.
        slice: usize,
    },
    /// A running observer was asked for parameters before it saw any data.
    #[error("the observer has not observed any data yet")]
    NothingObserved,
    /// A numeric setting out of its documented range (a learning rate, a regulariser, a
    /// search range: not a tolerance).
    #[error("{name} = {value} is out of range")]
    InvalidSetting {
        /// The setting, as its field is named.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A matrix that must be symmetric positive definite (a layer Hessian `XᵀX` after
    /// dampening) is not: its Cholesky factorisation failed.
    #[error("the {what} is not positive definite (add dampening)")]
    NotPositiveDefinite {
        /// Which matrix.
        what: &'static str,
    },
    /// A name (as a command line or a file spells it) that names no value of the type.
    #[error("'{input}' is not a valid {what} (expected {expected})")]
    InvalidName {
        /// What was being parsed (`"scheme"`, `"granularity"`, ...).
        what: &'static str,
        /// The text given.
        input: String,
        /// The accepted spellings.
        expected: &'static str,
    },
    /// A setting that the chosen method does not have (for example f16 tables for ternary
    /// quantization, which stores one α per slice at the tensor's precision).
    #[error("{method} quantization does not support {setting}")]
    UnsupportedSetting {
        /// The method.
        method: crate::method::MethodKind,
        /// The setting and its value, for example `table dtype f16`.
        setting: String,
    },
}

/// `Result` with [`QuantError`].
pub type Result<T> = core::result::Result<T, QuantError>;
