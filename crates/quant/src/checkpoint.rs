//! Quantized safetensors checkpoints: quantize a checkpoint tensor by tensor, write the packed
//! result as a valid safetensors file, read it back and dequantize it.
//!
//! Needs the `safetensors` feature. The file layout is specified in `docs/format.md` of the
//! repository: per quantized tensor `NAME`, the packed codes `NAME.qcodes` (U8) and its tables
//! under `NAME.q*` names, and a JSON description of every quantized tensor in the header
//! metadata under the key [`TENSORS_KEY`]. Other tensors (integers, booleans, skipped or empty
//! tensors) are copied byte for byte under their own names.
//!
//! ```
//! use quant::checkpoint::{QuantizeOptions, QuantizedCheckpoint, quantize_checkpoint};
//! use quant::quantizers::{GranularityRule, ParamDtype};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A tiny checkpoint built in memory (normally: std::fs::read or a memory map of a file).
//! let w: Vec<u8> = (0..64 * 32).flat_map(|i| ((i % 17) as f32 / 17.0 - 0.5).to_le_bytes()).collect();
//! let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![64, 32], &w)?;
//! let input = safetensors::serialize([("layer.weight", view)], None)?;
//!
//! let options = QuantizeOptions { bits: 4, granularity: GranularityRule::Group { size: 32 }, tables: ParamDtype::Quantized { bits: 6, super_group: 8 }, ..Default::default() };
//! let dir = std::env::temp_dir().join(format!("quant-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let out = dir.join("model.q.safetensors");
//! let report = quantize_checkpoint(&input, &out, &options, |_| true, |_| {})?;
//! assert!((report.tensors[0].entry.bits_per_weight - 4.5).abs() < 1e-9);
//!
//! let bytes = std::fs::read(&out)?;
//! let ckpt = QuantizedCheckpoint::parse(&bytes)?;
//! let w_hat = ckpt.dequantize("layer.weight")?;
//! assert_eq!(w_hat.shape(), &[64, 32]);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use quant_core::half::{bf16, f16};
use quant_core::{
    Granularity, GranularityRule, LutKind, LutTensor, Method, MethodKind, MethodParams, PackedCodes, ParamDtype, QuantError, QuantParams,
    Quantized, QuantizedTables, QuantizedTensor, RangeEstimator, Scheme, SliceParams, TableDtype, TableFit,
};
use safetensors::tensor::{SafeTensors, TensorView, View};
use safetensors::{Dtype, SafeTensorError};
use serde::{Deserialize, Serialize};

/// Header metadata key holding the format version ([`FORMAT_VERSION`]).
pub const FORMAT_KEY: &str = "quant.format";
/// The format version this module writes and reads.
pub const FORMAT_VERSION: &str = "1";
/// Header metadata key holding the JSON object `{name: TensorEntry}` of quantized tensors.
pub const TENSORS_KEY: &str = "quant.tensors";

/// Everything that can go wrong reading, quantizing or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The bytes are not a valid safetensors file (truncated, a header that lies about offsets
    /// or sizes, an unknown dtype, malformed JSON).
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    /// The quantization metadata or a stored part is missing or inconsistent.
    #[error("invalid quantized checkpoint: {0}")]
    Metadata(String),
    /// Quantizing or rebuilding one tensor failed.
    #[error("tensor '{name}': {source}")]
    Tensor {
        /// The tensor.
        name: String,
        /// Why.
        source: QuantError,
    },
    /// A tensor the options cannot apply to (for example a channel axis it does not have).
    #[error("tensor '{name}': {source}")]
    Unsupported {
        /// The tensor.
        name: String,
        /// Why: [`QuantError::InvalidAxis`] for a missing channel axis or a scalar.
        source: QuantError,
    },
    /// Options that cannot be used whatever the tensor: bits out of range for the method and
    /// scheme, a group size of zero, a table storage or fit the method does not have.
    #[error("invalid options: {0}")]
    Options(QuantError),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<SafeTensorError> for CheckpointError {
    fn from(e: SafeTensorError) -> Self {
        match e {
            SafeTensorError::IoError(io) => CheckpointError::Io(io),
            other => CheckpointError::Format(other.to_string()),
        }
    }
}

/// `Result` with [`CheckpointError`].
pub type Result<T> = core::result::Result<T, CheckpointError>;

/// What to do with each selected floating-point tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantizeOptions {
    /// The quantizer. Default uniform.
    pub method: MethodKind,
    /// Code width for uniform (`1..=8`, `2..=8` symmetric) and k-means (`2^bits` centroids);
    /// ternary always uses 2 and binary 1. Default 8.
    pub bits: u8,
    /// The uniform scheme. Default [`Scheme::AsymmetricGrid`] (Q-BERT's).
    pub scheme: Scheme,
    /// Which elements share parameters, resolved per tensor from its shape. Default per
    /// channel along axis 0.
    pub granularity: GranularityRule,
    /// Range estimation for uniform quantization. Default min-max.
    pub range: RangeEstimator,
    /// Table storage: [`ParamDtype::Native`] (f32, the default), f16, bf16 (uniform only) or
    /// two-level tables (uniform only). K-means tables take f32 or f16; ternary and binary
    /// store their α at f32.
    pub tables: ParamDtype,
    /// How two-level tables ([`ParamDtype::Quantized`]) are fitted. Default
    /// [`TableFit::Cover`]; [`TableFit::LeastSquares`] needs two-level tables.
    pub table_fit: TableFit,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        Self {
            method: MethodKind::Uniform,
            bits: 8,
            scheme: Scheme::AsymmetricGrid,
            granularity: GranularityRule::Channel { axis: 0 },
            range: RangeEstimator::MinMax,
            tables: ParamDtype::Native,
            table_fit: TableFit::Cover,
        }
    }
}

/// The description of one quantized tensor, stored in the header metadata and reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// The original shape.
    pub shape: Vec<usize>,
    /// The original dtype (`F32`, `F16`, `BF16`, `F64`).
    pub dtype: String,
    /// The quantizer.
    pub method: MethodKind,
    /// Code width in bits.
    pub bits: u8,
    /// Uniform scheme: `asymmetric`, `asymmetric-exact-zero`, `symmetric`, `symmetric-full`
    /// (absent for the table methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    /// The resolved granularity.
    pub granularity: Granularity,
    /// Table storage: `f32`, `f16`, `bf16` or `qN`.
    pub table_dtype: String,
    /// Slices per super-group for `qN` tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub super_group: Option<u32>,
    /// The range estimator used (informational): `minmax`, `percentile:P`, `mse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeEstimator>,
    /// How `qN` tables were fitted (informational; reading does not need it): `cover` or
    /// `least-squares:N` (N refits). Absent for other tables and in files written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_fit: Option<TableFit>,
    /// Storage bits per element, every table byte included.
    pub bits_per_weight: f64,
    /// `10·log10(Σx² / Σ(x − x̂)²)`; `null` when the reconstruction is exact.
    pub sqnr_db: Option<f64>,
    /// Largest `|x − x̂|`.
    pub max_abs_err: f64,
    /// Bytes of the original tensor data.
    pub original_bytes: usize,
    /// Bytes of every stored part (codes and tables).
    pub quantized_bytes: usize,
}

/// One row of a [`Report`]: a quantized tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorReport {
    /// The tensor's name.
    pub name: String,
    /// Its description.
    #[serde(flatten)]
    pub entry: TensorEntry,
}

/// A tensor copied unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassThrough {
    /// The tensor's name.
    pub name: String,
    /// Its dtype.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub bytes: usize,
}

/// What a quantization did, or what a file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Quantized tensors, by name.
    pub tensors: Vec<TensorReport>,
    /// Tensors stored unchanged, by name.
    pub passthrough: Vec<PassThrough>,
    /// Bytes of tensor data before quantization (headers not counted).
    pub original_bytes: usize,
    /// Bytes of tensor data after (pass-through tensors included on both sides).
    pub quantized_bytes: usize,
    /// `original_bytes / quantized_bytes`.
    pub compression_ratio: f64,
}

impl Report {
    fn new(tensors: Vec<TensorReport>, passthrough: Vec<PassThrough>) -> Self {
        let pass: usize = passthrough.iter().map(|p| p.bytes).sum();
        let original_bytes = pass + tensors.iter().map(|t| t.entry.original_bytes).sum::<usize>();
        let quantized_bytes = pass + tensors.iter().map(|t| t.entry.quantized_bytes).sum::<usize>();
        let compression_ratio = if quantized_bytes == 0 { 1.0 } else { original_bytes as f64 / quantized_bytes as f64 };
        Self { tensors, passthrough, original_bytes, quantized_bytes, compression_ratio }
    }
}

/// Progress of a long operation: tensor `index` of `total` is being processed.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// 0-based index of the tensor.
    pub index: usize,
    /// Number of tensors.
    pub total: usize,
    /// Its name.
    pub name: &'a str,
}

/// The stored `table_dtype` name: `f32`, `f16`, `bf16` or `qN` (the super-group is stored
/// beside it). Tensors are quantized as f32, so native parameters are f32.
fn table_dtype_name(d: ParamDtype) -> String {
    match d {
        ParamDtype::Native => "f32".into(),
        ParamDtype::Quantized { bits, .. } => format!("q{bits}"),
        other => other.to_string(),
    }
}

/// Every suffix a quantized tensor's parts are stored under (`NAME.suffix`).
pub const PART_SUFFIXES: [&str; 10] = [
    "qcodes",
    "qscales",
    "qoffsets",
    "qzero_points",
    "qscale_codes",
    "qsuper_scales",
    "qoffset_codes",
    "qsuper_offsets",
    "qalphas",
    "qlut",
];

/// A stored part of the output file.
struct Part<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

impl View for &Part<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn u8_part(bytes: Vec<u8>) -> Part<'static> {
    Part { dtype: Dtype::U8, shape: vec![bytes.len()], data: Cow::Owned(bytes) }
}

fn f32_part(values: &[f32], shape: Vec<usize>) -> Part<'static> {
    Part { dtype: Dtype::F32, shape, data: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()) }
}

fn f16_part(values: &[f16]) -> Part<'static> {
    Part { dtype: Dtype::F16, shape: vec![values.len()], data: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()) }
}

/// Per-slice values stored at the table dtype (exact: they were rounded to it).
fn table_part(values: &[f32], dtype: ParamDtype) -> Part<'static> {
    match dtype {
        ParamDtype::F16 => f16_part(&values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()),
        ParamDtype::Bf16 => Part {
            dtype: Dtype::BF16,
            shape: vec![values.len()],
            data: Cow::Owned(values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect()),
        },
        _ => f32_part(values, vec![values.len()]),
    }
}

/// Whether a dtype is quantized by this module.
fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// The elements of a floating-point tensor view as f32.
fn to_f32(view: &TensorView<'_>) -> Vec<f32> {
    let d = view.data();
    match view.dtype() {
        Dtype::F16 => d.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32).collect(),
        _ => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    }
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

impl QuantizeOptions {
    /// The method settings for a tensor of granularity `g`.
    fn params(&self, granularity: Granularity) -> MethodParams {
        MethodParams {
            kind: self.method,
            bits: self.bits,
            scheme: self.scheme,
            granularity,
            range: self.range,
            param_dtype: self.tables,
            table_fit: self.table_fit,
        }
    }

    /// Checks the options that do not depend on a tensor.
    ///
    /// # Errors
    /// [`CheckpointError::Options`] for bits out of range for the method and scheme, a group
    /// size of 0, a table format or fit the method cannot use, or an invalid range estimator.
    pub fn validate(&self) -> Result<()> {
        if let GranularityRule::Group { size: 0 } = self.granularity {
            return Err(CheckpointError::Options(QuantError::InvalidGroupSize { size: 0 }));
        }
        self.params(Granularity::PerTensor).check().map(|_| ()).map_err(CheckpointError::Options)
    }

    /// The method for a tensor of `shape`.
    ///
    /// # Errors
    /// [`CheckpointError::Unsupported`] when the granularity does not fit the shape;
    /// [`CheckpointError::Options`] as [`validate`](Self::validate).
    pub fn method_for(&self, name: &str, shape: &[usize]) -> Result<Method> {
        let g = self.granularity.resolve(shape).map_err(|source| CheckpointError::Unsupported { name: name.into(), source })?;
        self.params(g).check().map_err(CheckpointError::Options)
    }
}

/// The stored parts of one quantized tensor, under their suffixes.
fn parts_of(q: &Quantized<f32>) -> Vec<(&'static str, Part<'static>)> {
    match q {
        Quantized::Uniform(t) => {
            let p = t.params();
            let spec = p.spec();
            let mut parts = vec![("qcodes", u8_part(t.codes().as_bytes().to_vec()))];
            if let Some(tab) = p.tables() {
                parts.push(("qscale_codes", u8_part(tab.scale_codes().as_bytes().to_vec())));
                parts.push(("qsuper_scales", f16_part(tab.super_scales())));
                if let Some(oc) = tab.offset_codes() {
                    parts.push(("qoffset_codes", u8_part(oc.as_bytes().to_vec())));
                    parts.push(("qsuper_offsets", f16_part(tab.super_offsets())));
                }
            } else {
                let scales: Vec<f32> = p.slices().iter().map(|s| s.scale).collect();
                parts.push(("qscales", table_part(&scales, spec.param_dtype())));
                match spec.scheme() {
                    Scheme::AsymmetricGrid => {
                        let offsets: Vec<f32> = p.slices().iter().map(|s| s.offset).collect();
                        parts.push(("qoffsets", table_part(&offsets, spec.param_dtype())));
                    }
                    Scheme::AsymmetricExactZero => {
                        // Zero points lie in 0..=255 by construction.
                        parts.push(("qzero_points", u8_part(p.slices().iter().map(|s| s.zero_point.clamp(0, 255) as u8).collect())));
                    }
                    _ => {}
                }
            }
            parts
        }
        Quantized::Table(t) => {
            let codes = ("qcodes", u8_part(t.codes().as_bytes().to_vec()));
            let tables = t.tables();
            match t.kind() {
                LutKind::Ternary | LutKind::Binary => {
                    let alphas: Vec<f32> = tables.chunks(t.levels()).map(|c| c[c.len() - 1]).collect();
                    vec![codes, ("qalphas", f32_part(&alphas, vec![t.num_slices()]))]
                }
                kind => {
                    let shape = vec![t.num_slices(), t.levels()];
                    let lut = if kind == LutKind::Codebook(TableDtype::F16) {
                        Part {
                            dtype: Dtype::F16,
                            shape,
                            data: Cow::Owned(tables.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect()),
                        }
                    } else {
                        f32_part(tables, shape)
                    };
                    vec![codes, ("qlut", lut)]
                }
            }
        }
    }
}

/// Quantizes one tensor (values `x`, row-major) as the options say; returns the result and
/// the method it was quantized with.
///
/// # Errors
/// [`CheckpointError::Options`] / [`CheckpointError::Unsupported`] / [`CheckpointError::Tensor`]
/// when the options do not fit the tensor or the values are not finite.
pub fn quantize_tensor(name: &str, x: ArrayViewD<'_, f32>, options: &QuantizeOptions) -> Result<(Quantized<f32>, Method)> {
    let method = options.method_for(name, x.shape())?;
    let q = method.quantize(&x).map_err(|source| CheckpointError::Tensor { name: name.into(), source })?;
    Ok((q, method))
}

/// SQNR in dB (`None` when the error is exactly 0) and the largest absolute error.
fn sqnr_and_max_error(x: &[f32], y: &[f32]) -> (Option<f64>, f64) {
    let (mut sig, mut noise, mut max) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in x.iter().zip(y) {
        let e = f64::from(a) - f64::from(b);
        sig += f64::from(a) * f64::from(a);
        noise += e * e;
        max = max.max(e.abs());
    }
    let sqnr = if noise > 0.0 { Some(10.0 * (sig / noise).log10()).filter(|v| v.is_finite()) } else { None };
    (sqnr, max)
}

/// The header metadata (`__metadata__`) of a safetensors buffer.
fn header_metadata(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Quantizes every floating-point tensor of the safetensors file `input` for which `select`
/// returns true and writes the result to `output` (atomically: a temporary file in the same
/// directory, renamed only on success). Other tensors are copied byte for byte; the input's
/// own header metadata is kept. `progress` is called before each tensor.
///
/// Memory: `input` may be a memory map; only one tensor is converted to f32 at a time, but
/// the quantized output (a fraction of the input) is held until it is written.
///
/// # Errors
/// [`CheckpointError::Format`] for an invalid input file; [`CheckpointError::Metadata`] for an
/// input that is already quantized or whose tensor names collide with the stored part names;
/// the per-tensor errors of [`quantize_tensor`]; [`CheckpointError::Io`] when writing fails.
pub fn quantize_checkpoint(
    input: &[u8],
    output: &Path,
    options: &QuantizeOptions,
    select: impl Fn(&str) -> bool,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Report> {
    options.validate()?;
    let st = SafeTensors::deserialize(input)?;
    let mut metadata = header_metadata(input)?;
    if metadata.contains_key(TENSORS_KEY) {
        return Err(CheckpointError::Metadata("the input is already quantized (dequantize it first)".into()));
    }
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let total = names.len();
    let mut parts: BTreeMap<String, Part<'_>> = BTreeMap::new();
    let (mut reports, mut passthrough) = (Vec::new(), Vec::new());
    for (index, name) in names.iter().enumerate() {
        progress(Progress { index, total, name });
        let view = st.tensor(name)?;
        let shape = view.shape().to_vec();
        let n: usize = shape.iter().product();
        if !(is_float(view.dtype()) && n > 0 && select(name)) {
            passthrough.push(PassThrough {
                name: name.clone(),
                dtype: dtype_name(view.dtype()),
                shape: shape.clone(),
                bytes: view.data().len(),
            });
            insert_part(&mut parts, name.clone(), Part { dtype: view.dtype(), shape, data: Cow::Borrowed(view.data()) })?;
            continue;
        }
        let values = to_f32(&view);
        let x = ArrayViewD::from_shape(IxDyn(&shape), &values).map_err(|e| CheckpointError::Format(format!("tensor '{name}': {e}")))?;
        let (q, method) = quantize_tensor(name, x, options)?;
        let back = q.dequantize();
        let (sqnr_db, max_abs_err) = sqnr_and_max_error(&values, back.as_slice().unwrap_or(&[]));
        let mut quantized_bytes = 0;
        for (suffix, part) in parts_of(&q) {
            quantized_bytes += part.data.len();
            insert_part(&mut parts, format!("{name}.{suffix}"), part)?;
        }
        if quantized_bytes != q.storage_bytes() {
            return Err(CheckpointError::Metadata(format!(
                "tensor '{name}': stored {quantized_bytes} bytes but accounted {}",
                q.storage_bytes()
            )));
        }
        let uniform = matches!(method, Method::Uniform(_));
        let (scheme, range) = if uniform { (Some(options.scheme), Some(options.range)) } else { (None, None) };
        let (super_group, table_fit) = match options.tables {
            ParamDtype::Quantized { super_group, .. } => (Some(super_group), uniform.then_some(options.table_fit)),
            _ => (None, None),
        };
        let entry = TensorEntry {
            shape,
            dtype: dtype_name(view.dtype()),
            method: options.method,
            bits: q.bits(),
            scheme,
            granularity: method.granularity(),
            table_dtype: table_dtype_name(options.tables),
            super_group,
            range,
            table_fit,
            bits_per_weight: q.bits_per_weight(),
            sqnr_db,
            max_abs_err,
            original_bytes: view.data().len(),
            quantized_bytes,
        };
        reports.push(TensorReport { name: name.clone(), entry });
    }
    // A tensor kept as is must not read back as a part of a quantized one.
    for p in &passthrough {
        if let Some((base, suffix)) = p.name.rsplit_once('.')
            && PART_SUFFIXES.contains(&suffix)
            && reports.iter().any(|r| r.name == base)
        {
            return Err(CheckpointError::Metadata(format!(
                "tensor '{}' would read back as a part of '{base}'; --skip '{base}' or rename it",
                p.name
            )));
        }
    }
    let entries: BTreeMap<&str, &TensorEntry> = reports.iter().map(|r| (r.name.as_str(), &r.entry)).collect();
    let json = serde_json::to_string(&entries).map_err(|e| CheckpointError::Metadata(e.to_string()))?;
    metadata.insert(FORMAT_KEY.into(), FORMAT_VERSION.into());
    metadata.insert(TENSORS_KEY.into(), json);
    safetensors::serialize_to_file(parts.iter().map(|(k, v)| (k.as_str(), v)), Some(metadata), output)?;
    Ok(Report::new(reports, passthrough))
}

fn insert_part<'a>(parts: &mut BTreeMap<String, Part<'a>>, name: String, part: Part<'a>) -> Result<()> {
    if parts.contains_key(&name) {
        return Err(CheckpointError::Metadata(format!("tensor '{name}' collides with a stored part name")));
    }
    parts.insert(name, part);
    Ok(())
}

/// A quantized checkpoint read from safetensors bytes (a file's contents or a memory map).
#[derive(Debug)]
pub struct QuantizedCheckpoint<'a> {
    st: SafeTensors<'a>,
    entries: BTreeMap<String, TensorEntry>,
    metadata: HashMap<String, String>,
}

impl<'a> QuantizedCheckpoint<'a> {
    /// Parses the header and the quantization metadata. Tensors are rebuilt on demand
    /// ([`tensor`](Self::tensor)).
    ///
    /// # Errors
    /// [`CheckpointError::Format`] for bytes that are not a valid safetensors file;
    /// [`CheckpointError::Metadata`] when the quantization metadata is missing, of another
    /// version or malformed.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)?;
        let metadata = header_metadata(bytes)?;
        match metadata.get(FORMAT_KEY).map(String::as_str) {
            Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(CheckpointError::Metadata(format!("format version {v} is not supported (this build reads {FORMAT_VERSION})")));
            }
            None => return Err(CheckpointError::Metadata("not a quantized checkpoint (no quant.format in the header)".into())),
        }
        let json = metadata.get(TENSORS_KEY).ok_or_else(|| CheckpointError::Metadata(format!("no {TENSORS_KEY} in the header")))?;
        let entries: BTreeMap<String, TensorEntry> =
            serde_json::from_str(json).map_err(|e| CheckpointError::Metadata(format!("{TENSORS_KEY}: {e}")))?;
        Ok(Self { st, entries, metadata })
    }

    /// Whether `bytes` look like a quantized checkpoint (a valid header with the format key).
    pub fn is_quantized(bytes: &[u8]) -> bool {
        header_metadata(bytes).is_ok_and(|m| m.contains_key(FORMAT_KEY))
    }

    /// The quantized tensors and their descriptions, by name.
    pub fn entries(&self) -> &BTreeMap<String, TensorEntry> {
        &self.entries
    }

    /// The header metadata other than the quantization keys (the original checkpoint's).
    pub fn user_metadata(&self) -> HashMap<String, String> {
        self.metadata
            .iter()
            .filter(|(k, _)| k.as_str() != FORMAT_KEY && k.as_str() != TENSORS_KEY)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Names of the tensors stored unchanged (everything that is not a part of a quantized tensor).
    pub fn passthrough_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.st.names().into_iter().filter(|n| self.owner_of(n).is_none()).map(String::from).collect();
        names.sort();
        names
    }

    /// The quantized tensor a stored name is a part of.
    fn owner_of<'s>(&self, stored: &'s str) -> Option<&'s str> {
        let (base, suffix) = stored.rsplit_once('.')?;
        (PART_SUFFIXES.contains(&suffix) && self.entries.contains_key(base)).then_some(base)
    }

    /// A stored pass-through tensor, as safetensors sees it.
    ///
    /// # Errors
    /// [`CheckpointError::Format`] when there is no such tensor.
    pub fn raw(&self, name: &str) -> Result<TensorView<'a>> {
        Ok(self.st.tensor(name)?)
    }

    fn part(&self, name: &str, suffix: &str, dtypes: &[Dtype], len: Option<usize>) -> Result<TensorView<'a>> {
        let full = format!("{name}.{suffix}");
        let v = self.st.tensor(&full).map_err(|_| CheckpointError::Metadata(format!("tensor '{name}': part {full} is missing")))?;
        if !dtypes.contains(&v.dtype()) {
            return Err(CheckpointError::Metadata(format!("tensor '{name}': part {full} has dtype {:?}", v.dtype())));
        }
        let n: usize = v.shape().iter().product();
        if len.is_some_and(|l| l != n) {
            return Err(CheckpointError::Metadata(format!("tensor '{name}': part {full} has {n} elements, expected {}", len.unwrap_or(0))));
        }
        Ok(v)
    }

    fn codes(&self, name: &str, n: usize, bits: u8) -> Result<PackedCodes> {
        let v = self.part(name, "qcodes", &[Dtype::U8], None)?;
        PackedCodes::from_bytes(v.data().to_vec(), n, bits).map_err(|source| CheckpointError::Tensor { name: name.into(), source })
    }

    /// Rebuilds quantized tensor `name` from its stored parts, checking every part.
    ///
    /// # Errors
    /// [`CheckpointError::Metadata`] for an unknown name or a missing or mis-shaped part;
    /// [`CheckpointError::Tensor`] when the parts do not form a valid tensor (for example a
    /// code past its table, or a zero step).
    pub fn tensor(&self, name: &str) -> Result<Quantized<f32>> {
        let e = self.entries.get(name).ok_or_else(|| CheckpointError::Metadata(format!("no quantized tensor '{name}'")))?;
        let n = e
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| CheckpointError::Metadata(format!("tensor '{name}': shape overflows")))?;
        let err = |source| CheckpointError::Tensor { name: name.into(), source };
        let g = e.granularity;
        let tables = match e.table_dtype.as_str() {
            q if q.starts_with('q') => match (q.parse::<ParamDtype>(), e.super_group) {
                (Ok(ParamDtype::Quantized { bits, .. }), Some(super_group)) => ParamDtype::Quantized { bits, super_group },
                _ => return Err(CheckpointError::Metadata(format!("tensor '{name}': table dtype '{q}' without a super-group"))),
            },
            d => d.parse::<ParamDtype>().map_err(|x| CheckpointError::Metadata(format!("tensor '{name}': {x}")))?,
        };
        let scheme = match (e.method, e.scheme) {
            (MethodKind::Uniform, None) => return Err(CheckpointError::Metadata(format!("tensor '{name}': no scheme"))),
            (_, s) => s.unwrap_or_default(),
        };
        let params = MethodParams { kind: e.method, bits: e.bits, scheme, granularity: g, param_dtype: tables, ..MethodParams::default() };
        let method = params.check().map_err(|x| CheckpointError::Metadata(format!("tensor '{name}': {x}")))?;
        match method {
            Method::Uniform(spec) => {
                let codes = self.codes(name, n, e.bits)?;
                let params = if let ParamDtype::Quantized { bits, super_group } = tables {
                    let sg = super_group as usize;
                    let slices = self.part(name, "qscale_codes", &[Dtype::U8], None)?;
                    let supers = self.part(name, "qsuper_scales", &[Dtype::F16], None)?;
                    let nsl = supers.data().len() / 2 * sg;
                    // The slice count follows from the granularity; the super-groups bound it.
                    let count = slice_count(&e.shape, g)
                        .ok_or_else(|| CheckpointError::Metadata(format!("tensor '{name}': granularity does not fit")))?;
                    if count > nsl || count + sg <= nsl {
                        return Err(CheckpointError::Metadata(format!("tensor '{name}': super-scales do not match {count} slices")));
                    }
                    let f16s = |v: &TensorView<'_>| v.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect::<Vec<_>>();
                    let scale_codes = PackedCodes::from_bytes(slices.data().to_vec(), count, bits).map_err(err)?;
                    let offsets = if scheme == Scheme::AsymmetricGrid {
                        let oc = self.part(name, "qoffset_codes", &[Dtype::U8], None)?;
                        let so = self.part(name, "qsuper_offsets", &[Dtype::F16], None)?;
                        Some((f16s(&so), PackedCodes::from_bytes(oc.data().to_vec(), count, bits).map_err(err)?))
                    } else {
                        None
                    };
                    let t = QuantizedTables::from_parts(sg, f16s(&supers), scale_codes, offsets).map_err(err)?;
                    QuantParams::from_tables(&spec, t).map_err(err)?
                } else {
                    let float_types = [Dtype::F32, Dtype::F16, Dtype::BF16];
                    let scales = to_f32(&self.part(name, "qscales", &float_types, None)?);
                    let offsets = match scheme {
                        Scheme::AsymmetricGrid => Some(to_f32(&self.part(name, "qoffsets", &float_types, Some(scales.len()))?)),
                        _ => None,
                    };
                    let zps = match scheme {
                        Scheme::AsymmetricExactZero => {
                            Some(self.part(name, "qzero_points", &[Dtype::U8], Some(scales.len()))?.data().to_vec())
                        }
                        _ => None,
                    };
                    let zp0 = scheme.signed_offset(e.bits);
                    let slices = (0..scales.len())
                        .map(|i| SliceParams {
                            scale: scales[i],
                            zero_point: zps.as_ref().map_or(zp0, |z| i32::from(z[i])),
                            offset: offsets.as_ref().map_or(0.0, |o| o[i]),
                        })
                        .collect();
                    QuantParams::from_slices(&spec, slices).map_err(err)?
                };
                Ok(Quantized::Uniform(QuantizedTensor::from_parts(e.shape.clone(), params, codes).map_err(err)?))
            }
            Method::Ternary(_) | Method::Binary(_) => {
                let alphas = to_f32(&self.part(name, "qalphas", &[Dtype::F32], None)?);
                let ternary = e.method == MethodKind::Ternary;
                let tables: Vec<f32> = alphas.iter().flat_map(|&a| if ternary { vec![-a, 0.0, a] } else { vec![-a, a] }).collect();
                let kind = if ternary { LutKind::Ternary } else { LutKind::Binary };
                let codes = self.codes(name, n, if ternary { 2 } else { 1 })?;
                Ok(Quantized::Table(LutTensor::from_parts(e.shape.clone(), g, kind, tables, codes).map_err(err)?))
            }
            Method::KMeans(_) => {
                let lut = self.part(name, "qlut", &[Dtype::F32, Dtype::F16], None)?;
                let kind = LutKind::Codebook(if lut.dtype() == Dtype::F16 { TableDtype::F16 } else { TableDtype::F32 });
                let codes = self.codes(name, n, e.bits)?;
                Ok(Quantized::Table(LutTensor::from_parts(e.shape.clone(), g, kind, to_f32(&lut), codes).map_err(err)?))
            }
            // `Method` is non-exhaustive; this build writes no other method.
            other => Err(CheckpointError::Metadata(format!("tensor '{name}': method {} has no stored form", other.kind()))),
        }
    }

    /// Rebuilds and dequantizes tensor `name` (f32, original shape).
    ///
    /// # Errors
    /// As [`tensor`](Self::tensor).
    pub fn dequantize(&self, name: &str) -> Result<ArrayD<f32>> {
        Ok(self.tensor(name)?.dequantize())
    }

    /// The report of what the file holds: every quantized tensor's stored description, with
    /// its stored bytes recounted from the parts (and checked against the description), and
    /// the pass-through tensors. Every quantized tensor is rebuilt, so a corrupt part is
    /// reported here.
    ///
    /// # Errors
    /// As [`tensor`](Self::tensor); [`CheckpointError::Metadata`] when the stored bytes differ
    /// from the description.
    pub fn report(&self) -> Result<Report> {
        let mut tensors = Vec::new();
        for (name, entry) in &self.entries {
            let q = self.tensor(name)?;
            let stored: usize = self
                .st
                .names()
                .into_iter()
                .filter(|s| self.owner_of(s) == Some(name.as_str()))
                .map(|s| self.st.tensor(s).map_or(0, |v| v.data().len()))
                .sum();
            if stored != entry.quantized_bytes || stored != q.storage_bytes() {
                return Err(CheckpointError::Metadata(format!(
                    "tensor '{name}': {stored} bytes stored, {} described, {} accounted",
                    entry.quantized_bytes,
                    q.storage_bytes()
                )));
            }
            tensors.push(TensorReport { name: name.clone(), entry: entry.clone() });
        }
        let mut passthrough = Vec::new();
        for name in self.passthrough_names() {
            let v = self.st.tensor(&name)?;
            passthrough.push(PassThrough { name, dtype: dtype_name(v.dtype()), shape: v.shape().to_vec(), bytes: v.data().len() });
        }
        Ok(Report::new(tensors, passthrough))
    }
}

/// Number of parameter slices of a tensor of `shape` under `g` (`None` when it does not fit).
fn slice_count(shape: &[usize], g: Granularity) -> Option<usize> {
    match g {
        Granularity::PerTensor => Some(1),
        Granularity::PerChannel { axis } => shape.get(axis).copied(),
        Granularity::PerGroup { axis, size } => {
            let len = *shape.get(axis)?;
            if size == 0 {
                return None;
            }
            let others = shape.iter().enumerate().filter(|&(i, _)| i != axis).try_fold(1usize, |a, (_, &d)| a.checked_mul(d))?;
            others.checked_mul(len.div_ceil(size))
        }
    }
}

/// A tensor of the dequantized output, dequantized only when written.
struct Dequantized {
    weight: Quantized<f32>,
    shape: Vec<usize>,
}

/// One tensor of the dequantized output.
enum OutTensor<'a> {
    Dequantized(Box<Dequantized>),
    Raw(TensorView<'a>),
}

impl View for &OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            OutTensor::Dequantized(_) => Dtype::F32,
            OutTensor::Raw(v) => v.dtype(),
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            OutTensor::Dequantized(d) => &d.shape,
            OutTensor::Raw(v) => v.shape(),
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            OutTensor::Dequantized(d) => Cow::Owned(d.weight.dequantize().iter().flat_map(|v| v.to_le_bytes()).collect()),
            OutTensor::Raw(v) => Cow::Borrowed(v.data()),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            OutTensor::Dequantized(d) => 4 * d.shape.iter().product::<usize>(),
            OutTensor::Raw(v) => v.data().len(),
        }
    }
}

/// Dequantizes a quantized checkpoint back to f32 tensors under their original names and
/// writes it to `output` (atomically). Pass-through tensors are copied byte for byte and the
/// original header metadata is restored. Every tensor is rebuilt and checked before anything
/// is written; each is dequantized only when it is written.
///
/// Returns the number of tensors dequantized.
///
/// # Errors
/// As [`QuantizedCheckpoint::parse`] and [`QuantizedCheckpoint::tensor`];
/// [`CheckpointError::Io`] when writing fails.
pub fn dequantize_checkpoint(input: &[u8], output: &Path, mut progress: impl FnMut(Progress<'_>)) -> Result<usize> {
    let ckpt = QuantizedCheckpoint::parse(input)?;
    let mut out: BTreeMap<String, OutTensor<'_>> = BTreeMap::new();
    let total = ckpt.entries.len();
    for (index, (name, e)) in ckpt.entries.iter().enumerate() {
        progress(Progress { index, total, name });
        out.insert(name.clone(), OutTensor::Dequantized(Box::new(Dequantized { weight: ckpt.tensor(name)?, shape: e.shape.clone() })));
    }
    for name in ckpt.passthrough_names() {
        if out.contains_key(&name) {
            return Err(CheckpointError::Metadata(format!("tensor '{name}' is both quantized and stored raw")));
        }
        let v = ckpt.raw(&name)?;
        out.insert(name, OutTensor::Raw(v));
    }
    let meta = ckpt.user_metadata();
    safetensors::serialize_to_file(out.iter().map(|(k, v)| (k.as_str(), v)), if meta.is_empty() { None } else { Some(meta) }, output)?;
    Ok(total)
}

/// What a safetensors file holds: for a quantized checkpoint its [`QuantizedCheckpoint::report`],
/// otherwise every tensor as pass-through.
///
/// # Errors
/// As [`QuantizedCheckpoint::report`]; [`CheckpointError::Format`] for an invalid file.
pub fn inspect(bytes: &[u8]) -> Result<Report> {
    if QuantizedCheckpoint::is_quantized(bytes) {
        return QuantizedCheckpoint::parse(bytes)?.report();
    }
    let st = SafeTensors::deserialize(bytes)?;
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let mut passthrough = Vec::new();
    for name in names {
        let v = st.tensor(name)?;
        passthrough.push(PassThrough { name: name.into(), dtype: dtype_name(v.dtype()), shape: v.shape().to_vec(), bytes: v.data().len() });
    }
    Ok(Report::new(Vec::new(), passthrough))
}

/// Runs every reading entry point on arbitrary bytes (the body of the `checkpoint` fuzz target,
/// also run by the test suite): [`inspect`], [`QuantizedCheckpoint::parse`], and for every
/// described tensor [`QuantizedCheckpoint::tensor`] and its dequantization. Never panics;
/// returns how many tensors were rebuilt.
#[doc(hidden)]
pub fn exercise_reader(bytes: &[u8]) -> usize {
    let _ = inspect(bytes);
    let Ok(ckpt) = QuantizedCheckpoint::parse(bytes) else { return 0 };
    let _ = ckpt.passthrough_names();
    let _ = ckpt.report();
    let names: Vec<String> = ckpt.entries().keys().cloned().collect();
    names.iter().filter_map(|n| ckpt.tensor(n).ok()).map(|q| q.dequantize().len().min(1)).sum()
}
