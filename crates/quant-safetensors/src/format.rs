//! The stored format: metadata keys, part names, the per-tensor description and reports,
//! and the conversions between safetensors dtypes and f32 shared by the reader and the writer.

use std::borrow::Cow;
use std::collections::BTreeMap;

use quant_core::half::{bf16, f16};
use quant_core::{Granularity, MethodKind, ParamDtype, RangeEstimator, Scheme, TableFit};
use safetensors::Dtype;
use safetensors::tensor::{SafeTensors, View};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Header metadata key holding the format version ([`FORMAT_VERSION`]).
pub const FORMAT_KEY: &str = "quant.format";
/// The format version this module writes and reads.
pub const FORMAT_VERSION: &str = "1";
/// Header metadata key holding the JSON object `{name: TensorEntry}` of quantized tensors.
pub const TENSORS_KEY: &str = "quant.tensors";

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
    /// Why it was not quantized (when it was written; `None` when read back from a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<PassReason>,
}

/// Why a tensor was copied unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PassReason {
    /// Not a floating-point tensor (integers, booleans).
    NotFloat,
    /// No elements.
    Empty,
    /// Not chosen (a `--skip` / `--only` pattern, or absent from a plan).
    NotSelected,
    /// The granularity does not fit the tensor's shape (a channel axis it does not have, a
    /// group longer than its last axis, a scalar).
    DoesNotFit {
        /// What does not fit.
        detail: String,
    },
    /// Quantized it would take at least as many bytes as it does now (a small tensor with a
    /// large table, such as 256 k-means centroids per row).
    WouldGrow {
        /// Bytes the quantized tensor would take.
        quantized_bytes: usize,
    },
}

impl std::fmt::Display for PassReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassReason::NotFloat => f.write_str("not floating point"),
            PassReason::Empty => f.write_str("empty"),
            PassReason::NotSelected => f.write_str("not selected"),
            PassReason::DoesNotFit { detail } => write!(f, "granularity does not fit: {detail}"),
            PassReason::WouldGrow { quantized_bytes } => write!(f, "quantized it would take {quantized_bytes} bytes"),
        }
    }
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
    pub(crate) fn new(tensors: Vec<TensorReport>, passthrough: Vec<PassThrough>) -> Self {
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
pub(crate) fn table_dtype_name(d: ParamDtype) -> String {
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
pub(crate) struct Part<'a> {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Cow<'a, [u8]>,
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

pub(crate) fn u8_part(bytes: Vec<u8>) -> Part<'static> {
    Part { dtype: Dtype::U8, shape: vec![bytes.len()], data: Cow::Owned(bytes) }
}

pub(crate) fn f32_part(values: &[f32], shape: Vec<usize>) -> Part<'static> {
    Part { dtype: Dtype::F32, shape, data: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()) }
}

pub(crate) fn f16_part(values: &[f16]) -> Part<'static> {
    Part { dtype: Dtype::F16, shape: vec![values.len()], data: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()) }
}

/// Per-slice values stored at the table dtype (exact: they were rounded to it).
pub(crate) fn table_part(values: &[f32], dtype: ParamDtype) -> Part<'static> {
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
pub(crate) fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// The elements of a floating-point tensor view as f32.
pub(crate) fn to_f32(dtype: Dtype, d: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F16 => d.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32).collect(),
        _ => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    }
}

pub(crate) fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// The header metadata (`__metadata__`) of a safetensors buffer.
/// Parses safetensors bytes; an error about one tensor's size or offsets names the tensor
/// (the `safetensors` crate's message does not for a size that disagrees with the shape).
pub(crate) fn parse_safetensors(bytes: &[u8]) -> Result<SafeTensors<'_>> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        let diagnosis = || {
            let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
            let header = bytes.get(8..8usize.checked_add(n)?)?;
            diagnose_header(header, bytes.len() - 8 - n)
        };
        match diagnosis() {
            Some(detail) => crate::error::CheckpointError::Format(detail),
            None => e.into(),
        }
    })
}

/// The first tensor of a header (JSON bytes) whose data does not fit `data_len` bytes: an
/// unknown dtype, a size that disagrees with its shape and dtype, or an end past the data.
pub(crate) fn diagnose_header(header: &[u8], data_len: usize) -> Option<String> {
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut entries: Vec<(&String, &serde_json::Value)> = header.iter().filter(|(k, _)| k.as_str() != "__metadata__").collect();
    entries.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64());
    for (name, v) in entries {
        let Ok(dtype) = serde_json::from_value::<Dtype>(v["dtype"].clone()) else {
            return Some(format!("tensor '{name}': unknown dtype {}", v["dtype"]));
        };
        let shape: Vec<usize> = serde_json::from_value(v["shape"].clone()).ok()?;
        let (start, end) = (v["data_offsets"][0].as_u64()? as usize, v["data_offsets"][1].as_u64()? as usize);
        let need =
            shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).and_then(|e| e.checked_mul(dtype.bitsize())).map(|b| b.div_ceil(8));
        if need != end.checked_sub(start) {
            let need = need.map_or("more than memory holds".to_string(), |b| format!("{b}"));
            return Some(format!(
                "tensor '{name}': shape {shape:?} of {dtype:?} needs {need} bytes, its offsets [{start}, {end}] give {}",
                end.saturating_sub(start)
            ));
        }
        if end > data_len {
            return Some(format!(
                "tensor '{name}': its data ends at byte {end}, past the file's {data_len} bytes of data (a truncated file?)"
            ));
        }
    }
    None
}

pub(crate) fn header_metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    Ok(meta.metadata().clone().unwrap_or_default().into_iter().collect())
}
