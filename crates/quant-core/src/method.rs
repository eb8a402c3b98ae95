//! One vocabulary for every quantizer: [`Method`] says what to do to a tensor, [`Quantized`]
//! holds what came out, and [`MethodParams`] is the flat form a command line or a
//! configuration file names.
//!
//! ```
//! use ndarray::Array2;
//! use quant_core::{Granularity, Method, MethodKind, MethodParams, Scheme};
//!
//! let w = Array2::from_shape_fn((16, 64), |(i, j)| ((i * 37 + j * 11) % 23) as f32 / 23.0 - 0.5);
//! let params = MethodParams { kind: MethodKind::Uniform, bits: 4, scheme: Scheme::SymmetricNarrow, ..Default::default() };
//! let method = params.check()?.with_granularity(Granularity::PerGroup { axis: 1, size: 32 })?;
//! let q = method.quantize(&w)?;
//! assert_eq!(q.bits(), 4);
//! // Every method's result dequantizes, counts its storage and exposes its codes the same way.
//! let ternary: Method = "ternary".parse::<MethodKind>()?.default_method();
//! let t = ternary.quantize(&w)?;
//! assert!(t.bits_per_weight() < q.bits_per_weight());
//! # Ok::<(), quant_core::QuantError>(())
//! ```

use core::fmt;

use ndarray::{ArrayBase, ArrayD, ArrayViewMut, Data, Dimension};

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::kmeans::{KMeansSpec, kmeans_quantize};
use crate::lut::{LutTensor, TableDtype};
use crate::pack::PackedCodes;
use crate::spec::{Granularity, ParamDtype, RangeEstimator, Scheme, TableFit, UniformSpec};
use crate::tensor::QuantizedTensor;
use crate::ternary::{TernarySpec, binarize, ternarize};

/// Which quantizer, without its settings. Parses from and prints as the command line's
/// `--method` spellings: `uniform`, `ternary`, `binary`, `kmeans`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum MethodKind {
    /// Uniform affine or symmetric quantization ([`UniformSpec`]). The default.
    #[default]
    Uniform,
    /// TWN ternary, `{−α, 0, α}` per slice, 2-bit codes ([`TernarySpec`]).
    Ternary,
    /// Binary, `{−α, α}` per slice, 1-bit codes ([`TernarySpec`]).
    Binary,
    /// A k-means codebook per slice ([`KMeansSpec`]).
    KMeans,
}

impl MethodKind {
    /// Every kind, in the order the command line lists them.
    pub const ALL: [MethodKind; 4] = [MethodKind::Uniform, MethodKind::Ternary, MethodKind::Binary, MethodKind::KMeans];

    /// The name the command line and the file formats use.
    pub const fn name(self) -> &'static str {
        match self {
            MethodKind::Uniform => "uniform",
            MethodKind::Ternary => "ternary",
            MethodKind::Binary => "binary",
            MethodKind::KMeans => "kmeans",
        }
    }

    /// This kind with every setting at its default (uniform: 8-bit Q-BERT grid per tensor;
    /// k-means: 16 centroids; ternary: TWN's 0.7 threshold).
    pub fn default_method(self) -> Method {
        match self {
            MethodKind::Uniform => Method::Uniform(UniformSpec::default()),
            MethodKind::Ternary => Method::Ternary(TernarySpec::default()),
            MethodKind::Binary => Method::Binary(TernarySpec::default()),
            MethodKind::KMeans => Method::KMeans(KMeansSpec::default()),
        }
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for MethodKind {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        MethodKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| QuantError::InvalidName {
            what: "method",
            input: s.into(),
            expected: "uniform, ternary, binary or kmeans",
        })
    }
}

/// A validated quantization method: the quantizer and all its settings, granularity
/// included. Every layer of the family (groups, allocation, pipelines, file formats, the
/// command line) names methods with this type and quantizes through [`Method::quantize`].
///
/// With the `serde` feature it serializes as `{"uniform": {...spec fields...}}` (likewise
/// `kmeans`, `ternary`, `binary`); missing fields take the spec's defaults, and the spec is
/// validated as it is read.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum Method {
    /// Uniform quantization.
    Uniform(UniformSpec),
    /// A k-means codebook per slice.
    KMeans(KMeansSpec),
    /// TWN ternary per slice.
    Ternary(TernarySpec),
    /// Binary per slice (the spec's threshold is not used; its clip is).
    Binary(TernarySpec),
}

impl From<UniformSpec> for Method {
    fn from(spec: UniformSpec) -> Self {
        Method::Uniform(spec)
    }
}

impl From<KMeansSpec> for Method {
    fn from(spec: KMeansSpec) -> Self {
        Method::KMeans(spec)
    }
}

impl Method {
    /// The quantizer.
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Uniform(_) => MethodKind::Uniform,
            Method::KMeans(_) => MethodKind::KMeans,
            Method::Ternary(_) => MethodKind::Ternary,
            Method::Binary(_) => MethodKind::Binary,
        }
    }

    /// Bits per code: the uniform width, `⌈log2 k⌉` (at least 1) for k-means, 2 for ternary
    /// and 1 for binary.
    pub fn bits(&self) -> u8 {
        match self {
            Method::Uniform(s) => s.bits(),
            Method::KMeans(s) => code_bits(s.k()),
            Method::Ternary(_) => 2,
            Method::Binary(_) => 1,
        }
    }

    /// Which elements share one set of parameters.
    pub fn granularity(&self) -> Granularity {
        match self {
            Method::Uniform(s) => s.granularity(),
            Method::KMeans(s) => s.granularity(),
            Method::Ternary(s) | Method::Binary(s) => s.granularity(),
        }
    }

    /// A copy with another granularity, every other setting kept (validated).
    ///
    /// # Errors
    /// [`QuantError::InvalidGroupSize`] for a group size of zero.
    pub fn with_granularity(&self, granularity: Granularity) -> Result<Self> {
        Ok(match self {
            Method::Uniform(s) => Method::Uniform(s.with_granularity(granularity)?),
            Method::KMeans(s) => Method::KMeans(s.with_granularity(granularity)?),
            Method::Ternary(s) => Method::Ternary(s.with_granularity(granularity)?),
            Method::Binary(s) => Method::Binary(s.with_granularity(granularity)?),
        })
    }

    /// Quantizes `x` (any dimension, row-major element order) by this method.
    ///
    /// # Errors
    /// The quantizer's errors: [`QuantError::Empty`], [`QuantError::InvalidAxis`],
    /// [`QuantError::NonFinite`], and for k-means [`QuantError::TableOverflow`].
    pub fn quantize<F: Float, S: Data<Elem = F>, D: Dimension>(&self, x: &ArrayBase<S, D>) -> Result<Quantized<F>> {
        Ok(match self {
            Method::Uniform(spec) => Quantized::Uniform(crate::uniform::quantize(x, spec)?),
            Method::KMeans(spec) => Quantized::Table(kmeans_quantize(x, spec)?.0),
            Method::Ternary(spec) => Quantized::Table(ternarize(x, spec)?),
            Method::Binary(spec) => Quantized::Table(binarize(x, spec)?),
        })
    }

    /// The flat settings of this method (the inverse of [`MethodParams::check`] for the
    /// settings `MethodParams` names; k-means initialisation and algorithm and the ternary
    /// threshold and clip are not among them).
    pub fn params(&self) -> MethodParams {
        let base = MethodParams { kind: self.kind(), bits: self.bits(), granularity: self.granularity(), ..MethodParams::default() };
        match self {
            Method::Uniform(s) => {
                MethodParams { scheme: s.scheme(), range: s.range(), param_dtype: s.param_dtype(), table_fit: s.table_fit(), ..base }
            }
            Method::KMeans(s) => MethodParams {
                param_dtype: match s.table() {
                    TableDtype::F16 => ParamDtype::F16,
                    _ => ParamDtype::Native,
                },
                ..base
            },
            Method::Ternary(_) | Method::Binary(_) => base,
        }
    }
}

/// Code width of a `k`-entry codebook: `⌈log2 k⌉`, at least 1.
pub(crate) fn code_bits(k: usize) -> u8 {
    (usize::BITS - (k.max(2) - 1).leading_zeros()) as u8
}

/// The settings of every method in one flat form, as a command line or a configuration file
/// names them; [`check`](MethodParams::check) validates them into a [`Method`].
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `kind` | [`MethodKind::Uniform`] | the quantizer | any |
/// | `bits` | 8 | uniform code width; k-means uses `2^bits` centroids; ternary and binary ignore it | `1..=8` (`2..=8` symmetric) |
/// | `scheme` | [`Scheme::AsymmetricGrid`] | uniform grid placement | uniform only (others ignore it) |
/// | `granularity` | [`Granularity::PerTensor`] | which elements share parameters | group size ≥ 1 |
/// | `range` | [`RangeEstimator::MinMax`] | uniform range estimation | uniform only (others ignore it) |
/// | `param_dtype` | [`ParamDtype::Native`] | how steps, offsets or tables are stored | uniform: any; k-means: native or f16; ternary, binary: native |
/// | `table_fit` | [`TableFit::Cover`] | how two-level tables are fitted | other than `Cover` needs uniform with `Quantized` tables |
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(default))]
pub struct MethodParams {
    /// The quantizer.
    pub kind: MethodKind,
    /// Code width (k-means: `2^bits` centroids).
    pub bits: u8,
    /// Uniform scheme.
    pub scheme: Scheme,
    /// Which elements share parameters.
    pub granularity: Granularity,
    /// Uniform range estimation.
    pub range: RangeEstimator,
    /// Storage of per-slice parameters or tables.
    pub param_dtype: ParamDtype,
    /// Fit of two-level tables.
    pub table_fit: TableFit,
}

impl Default for MethodParams {
    fn default() -> Self {
        Self {
            kind: MethodKind::Uniform,
            bits: 8,
            scheme: Scheme::default(),
            granularity: Granularity::default(),
            range: RangeEstimator::default(),
            param_dtype: ParamDtype::default(),
            table_fit: TableFit::default(),
        }
    }
}

impl MethodParams {
    /// Validates the settings into a [`Method`].
    ///
    /// # Errors
    /// The spec builders' errors ([`QuantError::InvalidBits`], [`QuantError::InvalidGroupSize`],
    /// [`QuantError::InvalidPercentile`], [`QuantError::InvalidSearchSteps`],
    /// [`QuantError::InvalidTables`]), and [`QuantError::UnsupportedSetting`] for a table
    /// storage or table fit the method does not have.
    pub fn check(&self) -> Result<Method> {
        let unsupported = |setting: String| QuantError::UnsupportedSetting { method: self.kind, setting };
        if self.kind != MethodKind::Uniform && self.table_fit != TableFit::Cover {
            return Err(unsupported(format!("table fit {}", self.table_fit)));
        }
        Ok(match self.kind {
            MethodKind::Uniform => Method::Uniform(
                UniformSpec::builder()
                    .bits(self.bits)
                    .scheme(self.scheme)
                    .granularity(self.granularity)
                    .range(self.range)
                    .param_dtype(self.param_dtype)
                    .table_fit(self.table_fit)
                    .check()?,
            ),
            MethodKind::KMeans => {
                let table = match self.param_dtype {
                    ParamDtype::Native => TableDtype::F32,
                    ParamDtype::F16 => TableDtype::F16,
                    other => return Err(unsupported(format!("table dtype {other}"))),
                };
                Method::KMeans(KMeansSpec::builder().bits(self.bits).granularity(self.granularity).table(table).check()?)
            }
            MethodKind::Ternary | MethodKind::Binary => {
                if self.param_dtype != ParamDtype::Native {
                    return Err(unsupported(format!("table dtype {}", self.param_dtype)));
                }
                let spec = TernarySpec::builder().granularity(self.granularity).check()?;
                if self.kind == MethodKind::Ternary { Method::Ternary(spec) } else { Method::Binary(spec) }
            }
        })
    }
}

/// A tensor quantized by any [`Method`]: uniform codes with per-slice steps and offsets, or
/// codes into per-slice tables (ternary, binary, k-means). Exhaustive: every quantizer stores
/// one of these two forms, so file writers can match on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Quantized<F> {
    /// Uniform codes with per-slice parameters.
    Uniform(QuantizedTensor<F>),
    /// Codes into per-slice lookup tables.
    Table(LutTensor<F>),
}

impl<F: Float> Quantized<F> {
    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Quantized::Uniform(q) => q.shape(),
            Quantized::Table(t) => t.shape(),
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.codes().len()
    }
    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bits per code.
    pub fn bits(&self) -> u8 {
        self.codes().bits()
    }
    /// The bit-packed codes, row-major.
    pub fn codes(&self) -> &PackedCodes {
        match self {
            Quantized::Uniform(q) => q.codes(),
            Quantized::Table(t) => t.codes(),
        }
    }
    /// Bytes of storage: packed codes plus every table (steps, offsets, zero points, α, LUTs).
    pub fn storage_bytes(&self) -> usize {
        match self {
            Quantized::Uniform(q) => q.storage_bytes(),
            Quantized::Table(t) => t.storage_bytes(),
        }
    }
    /// Storage bits per element, every table included.
    pub fn bits_per_weight(&self) -> f64 {
        match self {
            Quantized::Uniform(q) => q.bits_per_weight(),
            Quantized::Table(t) => t.bits_per_weight(),
        }
    }
    /// The dequantized tensor.
    pub fn dequantize(&self) -> ArrayD<F> {
        match self {
            Quantized::Uniform(q) => q.dequantize(),
            Quantized::Table(t) => t.dequantize(),
        }
    }
    /// Dequantizes into `out` (any layout; its shape must equal [`shape`](Self::shape)).
    ///
    /// # Errors
    /// [`QuantError::ShapeMismatch`].
    pub fn dequantize_into<D: Dimension>(&self, out: ArrayViewMut<'_, F, D>) -> Result<()> {
        match self {
            Quantized::Uniform(q) => q.dequantize_into(out),
            Quantized::Table(t) => t.dequantize_into(out),
        }
    }
    /// The uniform tensor, when this is one.
    pub fn as_uniform(&self) -> Option<&QuantizedTensor<F>> {
        match self {
            Quantized::Uniform(q) => Some(q),
            Quantized::Table(_) => None,
        }
    }
    /// The table tensor, when this is one.
    pub fn as_table(&self) -> Option<&LutTensor<F>> {
        match self {
            Quantized::Table(t) => Some(t),
            Quantized::Uniform(_) => None,
        }
    }
}
