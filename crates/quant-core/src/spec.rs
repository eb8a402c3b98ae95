//! Quantization specifications: what to quantize to, validated once.

use crate::error::{QuantError, Result};

/// How the integer grid is placed over the real line.
///
/// Every scheme stores unsigned codes `u` in `0..=umax` and dequantizes with the one formula
/// `x̂ = S · (u − Z) + m` (step `S`, integer zero point `Z`, real offset `m`), which reproduces each
/// source convention bit for bit (see `docs/numerics.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Scheme {
    /// Q-BERT's asymmetric grid: `2^b` levels evenly spaced over `[lo, hi]`,
    /// `Δ = (hi − lo)/(2^b − 1)`, `x̂ = Δ·u + lo` (`Z = 0`, `m = lo`). Uses the whole range;
    /// zero is generally not exactly representable. The default.
    #[default]
    AsymmetricGrid,
    /// PyTorch's affine scheme: the range is widened to contain 0, `S = (hi − lo)/(2^b − 1)`
    /// floored at `F::EPSILON`, `Z = −round(lo/S)` clamped to `0..=2^b − 1`, `m = 0`.
    /// Zero is exactly representable.
    AsymmetricExactZero,
    /// Signed narrow range `−(2^(b−1) − 1)..=2^(b−1) − 1`, `S = amax/(2^(b−1) − 1)`
    /// (NVIDIA's and the MIT lab's convention). Needs at least 2 bits.
    SymmetricNarrow,
    /// Signed full range `−2^(b−1)..=2^(b−1) − 1`, `S = amax/((2^b − 1)/2)` floored at
    /// `F::EPSILON` (PyTorch's symmetric observer: `amax/127.5` for int8). Needs at least 2 bits.
    SymmetricFull,
}

impl Scheme {
    /// The smallest bit width the scheme defines.
    pub const fn min_bits(self) -> u8 {
        match self {
            Scheme::AsymmetricGrid | Scheme::AsymmetricExactZero => 1,
            Scheme::SymmetricNarrow | Scheme::SymmetricFull => 2,
        }
    }

    /// Whether the scheme is symmetric about zero.
    pub const fn is_symmetric(self) -> bool {
        matches!(self, Scheme::SymmetricNarrow | Scheme::SymmetricFull)
    }

    /// The largest stored code for `bits` (codes are `0..=umax`).
    pub const fn max_code(self, bits: u8) -> u8 {
        let levels = (1u16 << bits) - 1;
        match self {
            Scheme::SymmetricNarrow => (levels - 1) as u8,
            _ => levels as u8,
        }
    }

    /// The zero point of a symmetric scheme in the stored (unsigned) code domain:
    /// stored code `u` represents the signed integer `u − offset`.
    pub const fn signed_offset(self, bits: u8) -> i32 {
        match self {
            Scheme::SymmetricNarrow => (1i32 << (bits - 1)) - 1,
            Scheme::SymmetricFull => 1i32 << (bits - 1),
            _ => 0,
        }
    }
}

/// Which elements share one set of parameters.
///
/// With the `serde` feature it serializes as `{"kind": "tensor"}`, `{"kind": "channel",
/// "axis": A}` or `{"kind": "group", "axis": A, "size": S}` (the quantized safetensors
/// format's spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(tag = "kind"))]
pub enum Granularity {
    /// One set for the whole tensor.
    #[default]
    #[cfg_attr(feature = "serde", serde(rename = "tensor"))]
    PerTensor,
    /// One set per index along `axis`, reducing over all other axes (axis 0 for the output
    /// channels of Linear and Conv weights).
    #[cfg_attr(feature = "serde", serde(rename = "channel"))]
    PerChannel {
        /// The channel axis.
        axis: usize,
    },
    /// Contiguous runs of `size` elements along `axis`, one set per run and per position on
    /// the other axes (GGML-style blocks when `axis` is the last one). When `size` does not
    /// divide the axis length, the last group of each run is shorter (ragged); it is never
    /// padded.
    #[cfg_attr(feature = "serde", serde(rename = "group"))]
    PerGroup {
        /// The axis along which groups run.
        axis: usize,
        /// Elements per group (at least 1).
        size: usize,
    },
}

/// How the codes of two-level tables ([`ParamDtype::Quantized`]) are fitted to the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TableFit {
    /// Every slice's table codes first cover its estimated range (offsets rounded down,
    /// steps up), then a search over nearby codes (step code `a−2..=a+1`, offset code
    /// `b−1..=b+1`) keeps the least squared error on the data. The default: the best SQNR
    /// per bit of the two, at about 0.7 ns per element per candidate.
    #[default]
    Cover,
    /// Least squares: from the estimated range, `iterations` rounds of (codes for the current
    /// step and offset, then the step and offset minimising the squared error for those codes,
    /// in closed form); then table codes rounded to the nearest. Slices are fitted sixteen
    /// at a time in vector lanes, so this is several times faster than [`TableFit::Cover`]
    /// (4-bit groups of 32 with q6 tables: 3 iterations reach 22.65 dB on Gaussian weights,
    /// against 22.86 for `Cover`). The grids need not cover their slice's range: values
    /// beyond the grid are clamped.
    LeastSquares {
        /// Fitting rounds, at least 1 (3 is a good default).
        iterations: u8,
    },
}

/// How the real range `[lo, hi]` of each slice is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum RangeEstimator {
    /// The slice's minimum and maximum.
    #[default]
    MinMax,
    /// Percentiles of the slice, linearly interpolated between order statistics (NumPy's
    /// default). Q-BERT uses `lower = 0.1`, `upper = 99.9` for activations.
    Percentile {
        /// Lower percentile in `[0, 100)`.
        lower: f64,
        /// Upper percentile in `(lower, 100]`.
        upper: f64,
    },
    /// The clip range minimising `‖Q(x) − x‖²` over `steps` candidates
    /// `[α·lo, α·hi]`, `α = k/steps`, `k = 1..=steps` (each side shrinks towards zero;
    /// a side on the same side of zero as the whole slice stays put).
    Mse {
        /// Number of candidate clip ranges (at least 1; 100 is a good default).
        steps: u16,
    },
}

/// How a scaled value is rounded to an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum Rounding {
    /// Round half to even (IEEE, PyTorch, NumPy). The default.
    #[default]
    HalfEven,
    /// Round half away from zero (C's `round`, TFLite's reference kernels).
    HalfAwayFromZero,
    /// Stochastic rounding: up with probability equal to the fractional part. The random
    /// number of element `i` (row-major) depends only on `seed` and `i`, so results are the
    /// same with and without rayon and for any split of the work.
    Stochastic {
        /// The seed.
        seed: u64,
    },
}

/// How `x / S` is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum ScaleMode {
    /// `x · (1/S)` with the reciprocal rounded once (PyTorch's fake-quant kernels). The default.
    #[default]
    Reciprocal,
    /// `x / S`, correctly rounded division.
    Divide,
}

/// The precision the per-slice parameters (step and offset) are stored at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ParamDtype {
    /// The tensor's own float type (`F::BYTES` per value). The default.
    #[default]
    Native,
    /// IEEE half (2 bytes per value), as GGML stores its block scales. Ranges are clipped to
    /// `±32752` so that steps and offsets stay finite; steps that round to 0 become the
    /// smallest positive half.
    F16,
    /// bfloat16 (2 bytes per value): f32's range with 8 bits of mantissa. Ranges are clipped
    /// to a quarter of its largest value.
    Bf16,
    /// Two-level tables, as GGML's k-quants store them: every slice's step (and, for
    /// [`Scheme::AsymmetricGrid`], its offset) is itself a `bits`-wide unsigned code times one
    /// f16 scale shared by a *super-group* of `super_group` consecutive slices. Ranges are
    /// clipped to `±32752` as for [`ParamDtype::F16`].
    ///
    /// The table codes are chosen so that every slice's grid still covers its estimated
    /// range: offsets are rounded down and steps up (see [`QuantizedTables`](crate::QuantizedTables)),
    /// so min-max quantization keeps its error bound of half the (stored) step.
    /// Not available for [`Scheme::AsymmetricExactZero`], whose integer zero points have no
    /// second-level form.
    Quantized {
        /// Width of the table codes, `2..=8`.
        bits: u8,
        /// Slices per super-group (`≥ 1`); GGML's k-quants use 8 or 16.
        super_group: u32,
    },
}

impl ParamDtype {
    /// Bytes per stored parameter value, for a tensor of `native_bytes` floats; for
    /// [`ParamDtype::Quantized`] the bytes of its super-group scales (2).
    pub const fn bytes(self, native_bytes: usize) -> usize {
        match self {
            ParamDtype::Native => native_bytes,
            ParamDtype::F16 | ParamDtype::Bf16 | ParamDtype::Quantized { .. } => 2,
        }
    }
}

/// A validated uniform-quantization specification.
///
/// Build it with [`UniformSpec::builder`] (or [`UniformSpec::new`]); once built it is valid
/// for every tensor except for shape-dependent checks (the axis must exist), which
/// [`quantize`](crate::quantize) reports as typed errors.
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `bits` | 8 | code width | `1..=8`; `2..=8` for symmetric schemes |
/// | `scheme` | [`Scheme::AsymmetricGrid`] | grid placement | any |
/// | `granularity` | [`Granularity::PerTensor`] | which elements share parameters | group size ≥ 1 |
/// | `range` | [`RangeEstimator::MinMax`] | range estimation | percentiles `0 ≤ lower < upper ≤ 100`, MSE steps ≥ 1 |
/// | `rounding` | [`Rounding::HalfEven`] | rounding | any |
/// | `scale_mode` | [`ScaleMode::Reciprocal`] | how `x/S` is computed | any |
/// | `param_dtype` | [`ParamDtype::Native`] | precision the steps and offsets are stored at | any |
/// | `table_fit` | [`TableFit::Cover`] | how two-level table codes are fitted | `LeastSquares` needs `Quantized` and ≥ 1 iteration |
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(into = "crate::serde_specs::UniformFields", try_from = "crate::serde_specs::UniformFields")
)]
pub struct UniformSpec {
    bits: u8,
    scheme: Scheme,
    granularity: Granularity,
    range: RangeEstimator,
    rounding: Rounding,
    scale_mode: ScaleMode,
    param_dtype: ParamDtype,
    table_fit: TableFit,
}

impl UniformSpec {
    /// A builder with the defaults in the table above.
    pub fn builder() -> UniformSpecBuilder {
        UniformSpecBuilder::default()
    }

    /// A per-tensor min-max spec with the given width and scheme.
    ///
    /// # Errors
    /// [`QuantError::InvalidBits`] when `bits` is outside the scheme's range.
    pub fn new(bits: u8, scheme: Scheme) -> Result<Self> {
        Self::builder().bits(bits).scheme(scheme).check()
    }

    /// The code width in bits.
    pub fn bits(&self) -> u8 {
        self.bits
    }
    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
    /// The granularity.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }
    /// The range estimator.
    pub fn range(&self) -> RangeEstimator {
        self.range
    }
    /// The rounding mode.
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }
    /// The precision the parameters are stored at.
    pub fn param_dtype(&self) -> ParamDtype {
        self.param_dtype
    }
    /// How two-level table codes are fitted ([`ParamDtype::Quantized`] only).
    pub fn table_fit(&self) -> TableFit {
        self.table_fit
    }
    /// How `x/S` is computed.
    pub fn scale_mode(&self) -> ScaleMode {
        self.scale_mode
    }
    /// The largest stored code (codes are `0..=max_code`).
    pub fn max_code(&self) -> u8 {
        self.scheme.max_code(self.bits)
    }
    /// A copy with another granularity (validated).
    ///
    /// # Errors
    /// [`QuantError::InvalidGroupSize`] for a group size of zero.
    pub fn with_granularity(&self, granularity: Granularity) -> Result<Self> {
        UniformSpecBuilder { spec: *self }.granularity(granularity).check()
    }
}

impl Default for UniformSpec {
    fn default() -> Self {
        UniformSpecBuilder::default().spec
    }
}

/// Chained setters for a [`UniformSpec`]; [`check`](UniformSpecBuilder::check) validates once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniformSpecBuilder {
    spec: UniformSpec,
}

impl Default for UniformSpecBuilder {
    fn default() -> Self {
        Self {
            spec: UniformSpec {
                bits: 8,
                scheme: Scheme::AsymmetricGrid,
                granularity: Granularity::PerTensor,
                range: RangeEstimator::MinMax,
                rounding: Rounding::HalfEven,
                scale_mode: ScaleMode::Reciprocal,
                param_dtype: ParamDtype::Native,
                table_fit: TableFit::Cover,
            },
        }
    }
}

impl UniformSpecBuilder {
    /// Sets the code width.
    pub fn bits(mut self, bits: u8) -> Self {
        self.spec.bits = bits;
        self
    }
    /// Sets the scheme.
    pub fn scheme(mut self, scheme: Scheme) -> Self {
        self.spec.scheme = scheme;
        self
    }
    /// Sets the granularity.
    pub fn granularity(mut self, granularity: Granularity) -> Self {
        self.spec.granularity = granularity;
        self
    }
    /// Shorthand for [`Granularity::PerTensor`].
    pub fn per_tensor(self) -> Self {
        self.granularity(Granularity::PerTensor)
    }
    /// Shorthand for [`Granularity::PerChannel`].
    pub fn per_channel(self, axis: usize) -> Self {
        self.granularity(Granularity::PerChannel { axis })
    }
    /// Shorthand for [`Granularity::PerGroup`].
    pub fn per_group(self, axis: usize, size: usize) -> Self {
        self.granularity(Granularity::PerGroup { axis, size })
    }
    /// Sets the precision the steps and offsets are stored at.
    pub fn param_dtype(mut self, dtype: ParamDtype) -> Self {
        self.spec.param_dtype = dtype;
        self
    }
    /// Sets how two-level table codes are fitted (needs [`ParamDtype::Quantized`] unless it is
    /// the default [`TableFit::Cover`]).
    pub fn table_fit(mut self, fit: TableFit) -> Self {
        self.spec.table_fit = fit;
        self
    }
    /// Sets the range estimator.
    pub fn range(mut self, range: RangeEstimator) -> Self {
        self.spec.range = range;
        self
    }
    /// Sets the rounding mode.
    pub fn rounding(mut self, rounding: Rounding) -> Self {
        self.spec.rounding = rounding;
        self
    }
    /// Sets how `x/S` is computed.
    pub fn scale_mode(mut self, scale_mode: ScaleMode) -> Self {
        self.spec.scale_mode = scale_mode;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// - [`QuantError::InvalidBits`]: bits outside `1..=8` (`2..=8` for symmetric schemes).
    /// - [`QuantError::InvalidGroupSize`]: a group size of zero.
    /// - [`QuantError::InvalidPercentile`]: percentiles not `0 ≤ lower < upper ≤ 100`.
    /// - [`QuantError::InvalidSearchSteps`]: an MSE search with zero candidates.
    /// - [`QuantError::InvalidTables`]: [`ParamDtype::Quantized`] with table bits outside
    ///   `2..=8`, a super-group of zero slices, or the exact-zero scheme.
    pub fn check(self) -> Result<UniformSpec> {
        let s = self.spec;
        let min = s.scheme.min_bits();
        if s.bits < min || s.bits > 8 {
            return Err(QuantError::InvalidBits { bits: s.bits, min, max: 8 });
        }
        if let ParamDtype::Quantized { bits, super_group } = s.param_dtype {
            let reason = if !(2..=8).contains(&bits) {
                Some("table codes must be 2 to 8 bits wide")
            } else if super_group == 0 {
                Some("a super-group needs at least one slice")
            } else if s.scheme == Scheme::AsymmetricExactZero {
                Some("the exact-zero scheme's integer zero points have no two-level form")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(QuantError::InvalidTables { reason });
            }
        }
        match s.table_fit {
            TableFit::LeastSquares { iterations: 0 } => {
                return Err(QuantError::InvalidTables { reason: "a least-squares table fit needs at least one iteration" });
            }
            TableFit::LeastSquares { .. } if !matches!(s.param_dtype, ParamDtype::Quantized { .. }) => {
                return Err(QuantError::InvalidTables { reason: "a table fit other than Cover needs ParamDtype::Quantized" });
            }
            _ => {}
        }
        if let Granularity::PerGroup { size: 0, .. } = s.granularity {
            return Err(QuantError::InvalidGroupSize { size: 0 });
        }
        match s.range {
            // Written so that NaN fails every comparison and is rejected.
            RangeEstimator::Percentile { lower, upper } if !(lower >= 0.0 && lower < upper && upper <= 100.0) => {
                return Err(QuantError::InvalidPercentile { lower, upper });
            }
            RangeEstimator::Mse { steps: 0 } => {
                return Err(QuantError::InvalidSearchSteps { steps: 0 });
            }
            _ => {}
        }
        Ok(s)
    }
}
