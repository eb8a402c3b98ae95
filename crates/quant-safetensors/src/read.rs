//! Reading a quantized checkpoint back: parsing, rebuilding tensors, dequantizing, reports.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::ArrayD;
use quant_core::half::f16;
use quant_core::{
    Granularity, LutKind, LutTensor, Method, MethodKind, MethodParams, PackedCodes, ParamDtype, QuantParams, Quantized, QuantizedTables,
    QuantizedTensor, Scheme, SliceParams, TableDtype,
};
use safetensors::Dtype;
use safetensors::tensor::{SafeTensors, TensorView};

use crate::error::{CheckpointError, Result};
use crate::file::{PartialFile, StreamWriter};
use crate::format::{
    FORMAT_KEY, FORMAT_VERSION, PART_SUFFIXES, PassThrough, Progress, Report, TENSORS_KEY, TensorEntry, TensorReport, dtype_name,
    header_metadata, to_f32,
};
use crate::source::{InMemory, SafetensorsFile, TensorSource};

/// The quantized tensors' descriptions in a header's metadata, after checking the format
/// version.
fn entries_of(metadata: &BTreeMap<String, String>) -> Result<BTreeMap<String, TensorEntry>> {
    match metadata.get(FORMAT_KEY).map(String::as_str) {
        Some(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(CheckpointError::Metadata(format!("format version {v} is not supported (this build reads {FORMAT_VERSION})")));
        }
        None => return Err(CheckpointError::Metadata("not a quantized checkpoint (no quant.format in the header)".into())),
    }
    let json = metadata.get(TENSORS_KEY).ok_or_else(|| CheckpointError::Metadata(format!("no {TENSORS_KEY} in the header")))?;
    serde_json::from_str(json).map_err(|e| CheckpointError::Metadata(format!("{TENSORS_KEY}: {e}")))
}

/// A stored floating-point part's values in f32.
fn view_f32(v: &TensorView<'_>) -> Vec<f32> {
    to_f32(v.dtype(), v.data())
}

/// A quantized tensor's stored parts, looked up by their full names (`NAME.SUFFIX`): from a
/// whole file in memory ([`QuantizedCheckpoint`]) or from the parts of one tensor read from
/// a file ([`dequantize_file`]). One rebuild, with every part checked, serves both.
struct Parts<L>(L);

impl<'p, L: Fn(&str) -> Option<TensorView<'p>>> Parts<L> {
    fn part(&self, name: &str, suffix: &str, dtypes: &[Dtype], len: Option<usize>) -> Result<TensorView<'p>> {
        let full = format!("{name}.{suffix}");
        let v = (self.0)(&full).ok_or_else(|| CheckpointError::Metadata(format!("tensor '{name}': part {full} is missing")))?;
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

    /// Rebuilds tensor `name` described by `e` from its parts, checking every part.
    fn rebuild(&self, name: &str, e: &TensorEntry) -> Result<Quantized<f32>> {
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
                    let scales = view_f32(&self.part(name, "qscales", &float_types, None)?);
                    let offsets = match scheme {
                        Scheme::AsymmetricGrid => Some(view_f32(&self.part(name, "qoffsets", &float_types, Some(scales.len()))?)),
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
                let alphas = view_f32(&self.part(name, "qalphas", &[Dtype::F32], None)?);
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
                Ok(Quantized::Table(LutTensor::from_parts(e.shape.clone(), g, kind, view_f32(&lut), codes).map_err(err)?))
            }
            // `Method` is non-exhaustive; this build writes no other method.
            other => Err(CheckpointError::Metadata(format!("tensor '{name}': method {} has no stored form", other.kind()))),
        }
    }
}

/// A quantized checkpoint read from safetensors bytes (a file's contents or a memory map).
#[derive(Debug)]
pub struct QuantizedCheckpoint<'a> {
    st: SafeTensors<'a>,
    entries: BTreeMap<String, TensorEntry>,
    metadata: BTreeMap<String, String>,
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
        let st = crate::format::parse_safetensors(bytes)?;
        let metadata = header_metadata(bytes)?;
        let entries = entries_of(&metadata)?;
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
    pub fn user_metadata(&self) -> BTreeMap<String, String> {
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

    /// Rebuilds quantized tensor `name` from its stored parts, checking every part.
    ///
    /// # Errors
    /// [`CheckpointError::Metadata`] for an unknown name or a missing or mis-shaped part;
    /// [`CheckpointError::Tensor`] when the parts do not form a valid tensor (for example a
    /// code past its table, or a zero step).
    pub fn tensor(&self, name: &str) -> Result<Quantized<f32>> {
        let e = self.entries.get(name).ok_or_else(|| CheckpointError::Metadata(format!("no quantized tensor '{name}'")))?;
        Parts(|full: &str| self.st.tensor(full).ok()).rebuild(name, e)
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
            passthrough.push(PassThrough {
                name,
                dtype: dtype_name(v.dtype()),
                shape: v.shape().to_vec(),
                bytes: v.data().len(),
                reason: None,
            });
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

/// Dequantizes a quantized checkpoint back to f32 tensors under their original names and
/// writes it to `output` (through `OUT.partial`, renamed when complete). Pass-through tensors
/// are copied byte for byte and the original header metadata is restored. Each tensor is
/// rebuilt from its parts (every part checked), dequantized and written before the next.
///
/// Returns the number of tensors dequantized.
///
/// # Errors
/// As [`QuantizedCheckpoint::parse`] and [`QuantizedCheckpoint::tensor`];
/// [`CheckpointError::Create`] / [`CheckpointError::Write`] when the output cannot be written.
/// On an error nothing is left under `output`'s name.
pub fn dequantize_checkpoint(input: &[u8], output: &Path, progress: impl FnMut(Progress<'_>)) -> Result<usize> {
    dequantize_from(&InMemory::parse(input)?, output, progress)
}

/// As [`dequantize_checkpoint`], reading the input one tensor at a time from a file (memory
/// holds one tensor's parts and its f32 values at a time).
///
/// # Errors
/// As [`dequantize_checkpoint`]; [`CheckpointError::Open`] when reading the input fails.
pub fn dequantize_file(input: &SafetensorsFile, output: &Path, progress: impl FnMut(Progress<'_>)) -> Result<usize> {
    dequantize_from(input, output, progress)
}

fn dequantize_from(src: &impl TensorSource, output: &Path, mut progress: impl FnMut(Progress<'_>)) -> Result<usize> {
    let metadata = src.metadata();
    let entries = entries_of(&metadata)?;
    let stored = src.names();
    let owner = |n: &str| {
        n.rsplit_once('.')
            .filter(|(base, suffix)| PART_SUFFIXES.contains(suffix) && entries.contains_key(*base))
            .map(|(b, _)| b.to_string())
    };
    let mut parts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut raw = Vec::new();
    for n in &stored {
        match owner(n) {
            Some(base) => parts.entry(base).or_default().push(n.clone()),
            None if entries.contains_key(n) => {
                return Err(CheckpointError::Metadata(format!("tensor '{n}' is both quantized and stored raw")));
            }
            None => raw.push(n.clone()),
        }
    }
    let mut out = StreamWriter::new(PartialFile::create(output)?);
    let total = entries.len();
    for (index, (name, e)) in entries.iter().enumerate() {
        progress(Progress { index, total, name });
        // This tensor's parts, read and rebuilt (every part checked) before the next.
        let mine = parts.get(name).map(Vec::as_slice).unwrap_or_default();
        let mut read = BTreeMap::new();
        for p in mine {
            let (dtype, shape) = src.info(p)?;
            read.insert(p.as_str(), (dtype, shape, src.bytes(p)?));
        }
        let lookup = |full: &str| read.get(full).and_then(|(d, s, b)| TensorView::new(*d, s.clone(), b).ok());
        let weight = Parts(lookup).rebuild(name, e)?;
        drop(read);
        let values = weight.dequantize();
        drop(weight);
        let values = values.as_standard_layout();
        out.add_f32(name, &e.shape, values.as_slice().unwrap_or_default())?;
    }
    for name in &raw {
        let (dtype, shape) = src.info(name)?;
        out.add(name, dtype, &shape, &src.bytes(name)?)?;
    }
    let user: BTreeMap<String, String> = metadata.into_iter().filter(|(k, _)| k != FORMAT_KEY && k != TENSORS_KEY).collect();
    out.finish(&user)?;
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
    let st = crate::format::parse_safetensors(bytes)?;
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let mut passthrough = Vec::new();
    for name in names {
        let v = st.tensor(name)?;
        passthrough.push(PassThrough {
            name: name.into(),
            dtype: dtype_name(v.dtype()),
            shape: v.shape().to_vec(),
            bytes: v.data().len(),
            reason: None,
        });
    }
    Ok(Report::new(Vec::new(), passthrough))
}

/// Runs every reading entry point on arbitrary bytes (the body of the `checkpoint` fuzz target,
/// also run by the test suite): [`inspect`], the header check of [`SafetensorsFile`],
/// [`QuantizedCheckpoint::parse`], and for every described tensor
/// [`QuantizedCheckpoint::tensor`] and its dequantization. Never panics;
/// returns how many tensors were rebuilt.
#[doc(hidden)]
pub fn exercise_reader(bytes: &[u8]) -> usize {
    let _ = inspect(bytes);
    // The file reader's header check, on the same bytes.
    if let Some(n) = bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
        && let Some(header) = usize::try_from(n).ok().and_then(|n| bytes.get(8..8usize.checked_add(n)?))
    {
        let _ = crate::source::parse_header(header, (bytes.len() - 8 - header.len()) as u64);
    }
    let Ok(ckpt) = QuantizedCheckpoint::parse(bytes) else { return 0 };
    let _ = ckpt.passthrough_names();
    let _ = ckpt.report();
    let names: Vec<String> = ckpt.entries().keys().cloned().collect();
    names.iter().filter_map(|n| ckpt.tensor(n).ok()).map(|q| q.dequantize().len().min(1)).sum()
}
