//! Quantizing a checkpoint and writing the result.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{ArrayViewD, IxDyn};
use quant_core::half::f16;
use quant_core::{
    ErrorStats, Granularity, GranularityRule, LutKind, Method, MethodKind, MethodParams, ParamDtype, QuantError, Quantized, RangeEstimator,
    Scheme, TableDtype, TableFit,
};
use safetensors::Dtype;

use crate::error::{CheckpointError, Result};
use crate::file::{PartialFile, StreamWriter};
use crate::format::{
    FORMAT_KEY, FORMAT_VERSION, PART_SUFFIXES, Part, PassReason, PassThrough, Progress, Report, TENSORS_KEY, TensorEntry, TensorReport,
    dtype_name, f16_part, f32_part, is_float, table_dtype_name, table_part, to_f32, u8_part,
};
use crate::source::{SafetensorsFile, TensorSource};

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

impl QuantizeOptions {
    /// The recommended options for `method` at `bits`, chosen by measurement on
    /// all-MiniLM-L6-v2 (mean cosine of 200 sentence embeddings against the f32 model's; the
    /// table and the script are in `docs/benchmarks.md`, "Defaults by measurement"):
    ///
    /// - uniform at 7 or 8 bits: one range per output channel (`channel:0`), Q-BERT's
    ///   asymmetric grid, f32 tables (cosine 0.9997 at 8 bits, 0.9985 at 7);
    /// - uniform at 6 bits and below: groups of 32 along the input dimension with the grid's
    ///   step and minimum stored as 6-bit codes under an f16 scale per 8 groups (GGML's
    ///   k-quant layout), fitted by [`TableFit::Cover`]: 4.5 bits per weight at 4 bits,
    ///   cosine 0.972 (one range per channel gives 0.388: a row's many near-zero weights land
    ///   on one nonzero level of the same sign, and the errors add up in every output); at 3
    ///   bits and below each group's range is also searched for the least squared error
    ///   ([`RangeEstimator::Mse`], 100 candidates; about ten times slower, and worth it there:
    ///   cosine 0.889 against 0.869 at 3 bits, 0.607 against 0.250 at 2);
    /// - k-means, ternary and binary: one table per output channel, f32.
    pub fn recommended(method: MethodKind, bits: u8) -> Self {
        let base = Self { method, bits, ..Self::default() };
        if method == MethodKind::Uniform && bits <= 6 {
            let range = if bits <= 3 { RangeEstimator::Mse { steps: 100 } } else { RangeEstimator::MinMax };
            Self {
                granularity: GranularityRule::Group { size: 32 },
                tables: ParamDtype::Quantized { bits: 6, super_group: 8 },
                range,
                ..base
            }
        } else {
            base
        }
    }

    /// Why these options cannot quantize a tensor of `shape`, if they cannot: the
    /// granularity's channel axis is missing, the tensor is a scalar under a per-channel or
    /// per-group rule, or the group is longer than the last axis. Such tensors are copied
    /// unchanged by the checkpoint functions (and reported with this reason).
    pub fn pass_reason(&self, shape: &[usize]) -> Option<PassReason> {
        match self.granularity.resolve(shape) {
            Err(e) => Some(PassReason::DoesNotFit { detail: e.to_string() }),
            Ok(Granularity::PerGroup { axis, size }) if size > shape[axis] => {
                Some(PassReason::DoesNotFit { detail: format!("a group of {size} is longer than the last axis ({})", shape[axis]) })
            }
            Ok(_) => None,
        }
    }

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

    /// Checks the options that do not depend on a tensor and returns them.
    ///
    /// # Errors
    /// [`CheckpointError::Options`] for bits out of range for the method and scheme, a group
    /// size of 0, a table format or fit the method cannot use, or an invalid range estimator.
    pub fn check(self) -> Result<Self> {
        if let GranularityRule::Group { size: 0 } = self.granularity {
            return Err(CheckpointError::Options(QuantError::InvalidGroupSize { size: 0 }));
        }
        self.params(Granularity::PerTensor).check().map_err(CheckpointError::Options)?;
        Ok(self)
    }

    /// The method for a tensor of `shape`.
    ///
    /// # Errors
    /// [`CheckpointError::Unsupported`] when the granularity does not fit the shape;
    /// [`CheckpointError::Options`] as [`check`](Self::check).
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

/// Quantizes every floating-point tensor of the safetensors file `input` for which `select`
/// returns true and writes the result to `output` (deterministic bytes, written to
/// `OUT.partial` beside it and renamed only on success: see [`write_file`](crate::write_file)). Other tensors are copied byte for byte; the input's
/// own header metadata is kept. `progress` is called before each tensor.
///
/// Memory: `input` may be a memory map; one tensor at a time is converted, quantized and
/// written (to a spool file: see [`StreamWriter`]). For a checkpoint larger than memory use
/// [`quantize_file_by`], which reads the input one tensor at a time too.
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
    progress: impl FnMut(Progress<'_>),
) -> Result<Report> {
    options.check()?;
    quantize_checkpoint_with(input, output, |name, _| select(name).then_some(*options), progress)
}

/// As [`quantize_checkpoint`], with each tensor's own options: `choose(name, shape)` is asked
/// for every non-empty floating-point tensor and returns its options, or `None` to copy it
/// unchanged (a mixed-precision plan, for example).
///
/// # Errors
/// As [`quantize_checkpoint`]; options are checked per tensor.
pub fn quantize_checkpoint_with(
    input: &[u8],
    output: &Path,
    choose: impl Fn(&str, &[usize]) -> Option<QuantizeOptions>,
    progress: impl FnMut(Progress<'_>),
) -> Result<Report> {
    quantize_checkpoint_by(input, output, choose, |_, x, method| method.quantize(&x), progress)
}

/// As [`quantize_checkpoint_with`], with the quantization itself done by
/// `quantize(name, values, method)`, where `method` is the chosen options' method for the
/// tensor's shape: for a rounding other than the method's own (GPTQ, for example). The result
/// must have the tensor's shape and `method`'s layout (it is checked when the file is read
/// back); the options describe it in the file.
///
/// # Errors
/// As [`quantize_checkpoint`]; `quantize`'s errors, under the tensor's name.
pub fn quantize_checkpoint_by(
    input: &[u8],
    output: &Path,
    choose: impl Fn(&str, &[usize]) -> Option<QuantizeOptions>,
    quantize: impl Fn(&str, ArrayViewD<'_, f32>, &Method) -> core::result::Result<Quantized<f32>, QuantError>,
    progress: impl FnMut(Progress<'_>),
) -> Result<Report> {
    quantize_from(&crate::source::InMemory::parse(input)?, output, choose, quantize, progress)
}

/// As [`quantize_checkpoint_by`], reading the input one tensor at a time from a file (so a
/// checkpoint larger than memory goes through: memory holds one tensor's bytes, its f32
/// values, its quantized form and its reconstruction at a time).
///
/// # Errors
/// As [`quantize_checkpoint_by`]; [`CheckpointError::Open`] when reading the input fails.
pub fn quantize_file_by(
    input: &SafetensorsFile,
    output: &Path,
    choose: impl Fn(&str, &[usize]) -> Option<QuantizeOptions>,
    quantize: impl Fn(&str, ArrayViewD<'_, f32>, &Method) -> core::result::Result<Quantized<f32>, QuantError>,
    progress: impl FnMut(Progress<'_>),
) -> Result<Report> {
    quantize_from(input, output, choose, quantize, progress)
}

/// What the checkpoint functions do with tensor `name` of `dtype` and `shape`: quantize it
/// with the options `choose` gives, or keep it unchanged for the reason returned (not
/// floating point, empty, not chosen, or a granularity that does not fit: see
/// [`QuantizeOptions::pass_reason`]). A caller can run it over a header first to refuse
/// what would be kept.
///
/// # Errors
/// The [`PassReason`] when the tensor is kept.
pub fn selection(
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    choose: impl Fn(&str, &[usize]) -> Option<QuantizeOptions>,
) -> core::result::Result<QuantizeOptions, PassReason> {
    if !is_float(dtype) {
        return Err(PassReason::NotFloat);
    }
    if shape.iter().product::<usize>() == 0 {
        return Err(PassReason::Empty);
    }
    let options = choose(name, shape).ok_or(PassReason::NotSelected)?;
    options.pass_reason(shape).map_or(Ok(options), Err)
}

/// Writes a tensor unchanged and returns its report row.
fn keep(out: &mut StreamWriter, name: &str, dtype: Dtype, shape: &[usize], data: &[u8], reason: PassReason) -> Result<PassThrough> {
    out.add(name, dtype, shape, data)?;
    Ok(PassThrough { name: name.into(), dtype: dtype_name(dtype), shape: shape.to_vec(), bytes: data.len(), reason: Some(reason) })
}

/// The quantize loop over any input: each tensor is read, quantized (or not) and written to
/// the output's spools before the next is read.
fn quantize_from(
    src: &impl TensorSource,
    output: &Path,
    choose: impl Fn(&str, &[usize]) -> Option<QuantizeOptions>,
    quantize: impl Fn(&str, ArrayViewD<'_, f32>, &Method) -> core::result::Result<Quantized<f32>, QuantError>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Report> {
    let mut metadata = src.metadata();
    if metadata.contains_key(TENSORS_KEY) {
        return Err(CheckpointError::Metadata("the input is already quantized (dequantize it first)".into()));
    }
    // Claimed before the work, so that an output that cannot be written fails at once.
    let mut out = StreamWriter::new(PartialFile::create(output)?);
    let names = src.names();
    let total = names.len();
    let (mut reports, mut passthrough) = (Vec::new(), Vec::new());
    for (index, name) in names.iter().enumerate() {
        progress(Progress { index, total, name });
        let (dtype, shape) = src.info(name)?;
        let data = src.bytes(name)?;
        let n: usize = shape.iter().product();
        let options = match selection(name, dtype, &shape, &choose) {
            Ok(o) => o,
            Err(reason) => {
                passthrough.push(keep(&mut out, name, dtype, &shape, &data, reason)?);
                continue;
            }
        };
        let options = &options.check()?;
        let values = to_f32(dtype, &data);
        // Only the f32 copy is kept while quantizing (a tensor that would grow is read again).
        drop(data);
        let x = ArrayViewD::from_shape(IxDyn(&shape), &values).map_err(|e| CheckpointError::Format(format!("tensor '{name}': {e}")))?;
        let method = options.method_for(name, x.shape())?;
        let q = quantize(name, x.view(), &method).map_err(|source| CheckpointError::Tensor { name: name.into(), source })?;
        if q.shape() != x.shape() || q.bits() != method.bits() {
            return Err(CheckpointError::Metadata(format!("tensor '{name}': the quantizer returned another shape or width")));
        }
        let original_bytes = n * dtype.bitsize() / 8;
        if q.storage_bytes() >= original_bytes {
            let reason = PassReason::WouldGrow { quantized_bytes: q.storage_bytes() };
            passthrough.push(keep(&mut out, name, dtype, &shape, &src.bytes(name)?, reason)?);
            continue;
        }
        let back = q.dequantize();
        let stats = ErrorStats::of(values.iter().copied(), back.iter().copied());
        drop(back);
        let (sqnr_db, max_abs_err) = (stats.sqnr_db(), stats.max_abs);
        let mut quantized_bytes = 0;
        for (suffix, part) in parts_of(&q) {
            quantized_bytes += part.data.len();
            let stored = format!("{name}.{suffix}");
            if src.info(&stored).is_ok() {
                return Err(CheckpointError::Metadata(format!("tensor '{stored}' collides with a stored part name")));
            }
            out.add(&stored, part.dtype, &part.shape, &part.data)?;
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
            dtype: dtype_name(dtype),
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
            original_bytes,
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
    out.finish(&metadata)?;
    Ok(Report::new(reports, passthrough))
}
