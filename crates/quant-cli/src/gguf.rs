//! `quant quantize --format gguf`: a BERT-family model directory to a GGUF file llama.cpp
//! loads as an embedding model, each tensor in a GGML type; and GGUF input for `inspect`,
//! `dequantize`, `embed` and `eval`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use quant::gguf::{GgmlType, GgufFile, GgufWriter, MAGIC, codec};
use quant::mixed::{Budget, LayerOption, LayerSpec, MixedError, Problem};
use quant::models::bert::{Bert, GgufModelInfo, gguf_tensor_name, hf_tensor_name};
use quant::plan::{Metric, llama_cpp_more_bits};
use quant::quantizers::ErrorStats;
use quant::sensitivity::SensitivityReport;
use rayon::prelude::*;
use serde::Serialize;

/// The GGUF magic, to recognise a GGUF input whatever its extension.
pub(crate) fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == MAGIC
}

/// Parses a GGML type name for `--type`: the types this crate encodes.
pub(crate) fn parse_type(s: &str) -> Result<GgmlType, String> {
    let names = || codec::SUPPORTED.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
    match GgmlType::from_name(s) {
        Some(t) if codec::SUPPORTED.contains(&t) => Ok(t),
        Some(t) => Err(format!("{t} has no encoder here; one of {}", names())),
        None => Err(format!("unknown GGML type '{s}'; one of {}", names())),
    }
}

/// How each tensor's type is chosen.
pub(crate) enum TypeRule {
    /// One type for every tensor llama.cpp's quantizer quantizes (with its fallbacks), as
    /// `llama-quantize --pure` does.
    Uniform(GgmlType),
    /// llama.cpp's `Q4_K_M` mixture.
    RecipeQ4KM,
    /// A type per tensor, chosen elsewhere (the allocator), by checkpoint name; the other
    /// tensors llama.cpp quantizes (the word embeddings) take the second type.
    PerTensor(Vec<(String, GgmlType)>, GgmlType),
}

/// Whether llama.cpp's quantizer quantizes a tensor (`tensor_allows_quantization`): matrices
/// whose name ends in `weight`, but not norms, position embeddings or token types.
fn quantizable(gguf_name: &str, shape: &[usize]) -> bool {
    shape.len() >= 2
        && gguf_name.ends_with("weight")
        && !gguf_name.contains("_norm.weight")
        && gguf_name != "position_embd.weight"
        && gguf_name != "token_types.weight"
}

/// llama.cpp's `llama_ftype` of a file for `general.file_type`.
fn file_type(rule: &TypeRule) -> u32 {
    match rule {
        TypeRule::RecipeQ4KM | TypeRule::PerTensor(..) => 15,
        TypeRule::Uniform(t) => match t {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 7,
            GgmlType::Q5_0 => 8,
            GgmlType::Q5_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 14,
            GgmlType::Q5_K => 16,
            GgmlType::Q6_K => 18,
            GgmlType::BF16 => 32,
            _ => 0,
        },
    }
}

/// One tensor of the output.
#[derive(Serialize, Clone)]
pub(crate) struct GgufTensor {
    /// The checkpoint's name.
    pub(crate) name: String,
    /// llama.cpp's name.
    pub(crate) gguf_name: String,
    pub(crate) shape: Vec<usize>,
    /// The type the rule asked for.
    pub(crate) requested: String,
    /// The type written.
    #[serde(rename = "type")]
    pub(crate) ty: String,
    /// Why the written type differs from the requested one, if it does.
    pub(crate) fallback: Option<String>,
    pub(crate) bits_per_weight: f64,
    pub(crate) bytes: u64,
    /// Signal to quantization noise of the written values, in dB (`None` when exact).
    pub(crate) sqnr_db: Option<f64>,
}

/// What `quant quantize --format gguf --json` prints.
#[derive(Serialize)]
pub(crate) struct GgufReport {
    pub(crate) format: &'static str,
    pub(crate) output: String,
    pub(crate) file_type: u32,
    pub(crate) tensors: Vec<GgufTensor>,
    pub(crate) fallbacks: usize,
    pub(crate) original_bytes: u64,
    pub(crate) gguf_bytes: u64,
    /// Bits per weight over the quantized matrices (the tensors llama.cpp quantizes).
    pub(crate) quantized_bits_per_weight: f64,
    pub(crate) seconds: f64,
    /// The allocation, for `--sensitivity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) allocation: Option<GgufAllocation>,
}

/// The type rule applied to one tensor: `(requested, written, fallback note)`.
fn type_for(rule: &TypeRule, gguf_name: &str, shape: &[usize], layers: usize) -> (GgmlType, GgmlType, Option<String>) {
    if shape.len() < 2 {
        return (GgmlType::F32, GgmlType::F32, None);
    }
    // llama.cpp's converter and quantizer both keep these in f32, whatever the file type
    // (its CPU backend cannot add an f16 token-type row to f32 activations).
    if !quantizable(gguf_name, shape) {
        return (GgmlType::F32, GgmlType::F32, None);
    }
    let requested = match rule {
        TypeRule::Uniform(t) => *t,
        // BERT has no output matrix, so llama.cpp treats its word embeddings as tied to one
        // and gives them the output's type: q8_0 when their rows are not whole k-blocks,
        // else q6_K.
        TypeRule::RecipeQ4KM if gguf_name == "token_embd.weight" => {
            if shape.last().is_some_and(|&r| r % GgmlType::Q4_K.block_size() == 0) {
                GgmlType::Q6_K
            } else {
                GgmlType::Q8_0
            }
        }
        TypeRule::RecipeQ4KM => {
            let layer = gguf_name.strip_prefix("blk.").and_then(|r| r.split_once('.')).and_then(|(l, _)| l.parse::<usize>().ok());
            let wider = matches!(layer, Some(i) if (gguf_name.contains(".attn_v.") || gguf_name.contains(".ffn_down.")) && llama_cpp_more_bits(i, layers));
            if wider { GgmlType::Q6_K } else { GgmlType::Q4_K }
        }
        TypeRule::PerTensor(list, other) => {
            list.iter().find(|(n, _)| gguf_tensor_name(n).as_deref() == Some(gguf_name)).map_or(*other, |(_, t)| *t)
        }
    };
    let row = shape.last().copied().unwrap_or(1) as u64;
    let written = requested.fallback_for_row(row);
    let note = (written != requested).then(|| {
        format!("rows of {row} are not whole {} blocks of {}; {written} as llama.cpp falls back", requested, requested.block_size())
    });
    (requested, written, note)
}

/// Encodes `values` (rows of `row` values) as `ty`, rows in parallel.
pub(crate) fn encode(ty: GgmlType, values: &[f32], row: usize) -> Result<Vec<u8>, String> {
    let rows_per_chunk = (65536 / row.max(1)).max(1);
    let parts: Result<Vec<Vec<u8>>, _> = values.par_chunks(rows_per_chunk * row.max(1)).map(|c| codec::quantize(ty, c)).collect();
    Ok(parts.map_err(|e| e.to_string())?.concat())
}

/// Decodes `bytes` of `ty` into `n` values, rows in parallel.
fn decode(ty: GgmlType, bytes: &[u8], n: usize, row: usize) -> Result<Vec<f32>, String> {
    let row_bytes = ty.bytes_for(row as u64, row as u64).ok_or("a row is not whole blocks")? as usize;
    let rows_per_chunk = (65536 / row.max(1)).max(1);
    let mut out = vec![0f32; n];
    out.par_chunks_mut(rows_per_chunk * row)
        .zip(bytes.par_chunks(rows_per_chunk * row_bytes))
        .try_for_each(|(o, b)| codec::dequantize_into(ty, b, o))
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Writes `model` (loaded from `dir`) as a BERT GGUF under `rule`.
pub(crate) fn write_bert(dir: &Path, model: &Bert<f32>, rule: &TypeRule, output: &Path) -> Result<GgufReport, String> {
    let start = Instant::now();
    let info = GgufModelInfo::from_dir(dir).map_err(|e| e.to_string())?;
    let layers = info.config.num_hidden_layers;
    let ftype = file_type(rule);
    let mut w = GgufWriter::new();
    for (k, v) in info.metadata(ftype) {
        w.metadata(&k, v).map_err(|e| e.to_string())?;
    }
    let weights = model.weights();
    let weights = weights.as_slice().ok_or("the model's weights are not contiguous")?;
    let mut plan = Vec::new();
    for b in model.blocks() {
        let name = b.name().strip_prefix(model.prefix()).unwrap_or(b.name()).to_string();
        let Some(gguf_name) = gguf_tensor_name(&name) else { continue };
        let shape = model.tensor_shape(b.name()).ok_or_else(|| format!("no shape for {name}"))?;
        let (requested, ty, fallback) = type_for(rule, &gguf_name, &shape, layers);
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        w.tensor(&gguf_name, &dims, ty).map_err(|e| e.to_string())?;
        plan.push((name, gguf_name, shape, requested, ty, fallback, b.range()));
    }
    let mut tensors = Vec::with_capacity(plan.len());
    w.write_file(output, |i, sink| {
        let (name, gguf_name, shape, requested, ty, fallback, range) = &plan[i];
        let x = &weights[range.clone()];
        let row = shape.last().copied().unwrap_or(1);
        let bytes = encode(*ty, x, row).map_err(|reason| quant::gguf::GgufError::Tensor { name: gguf_name.clone(), reason })?;
        let y = decode(*ty, &bytes, x.len(), row).map_err(|reason| quant::gguf::GgufError::Tensor { name: gguf_name.clone(), reason })?;
        sink.write_all(&bytes)?;
        tensors.push(GgufTensor {
            name: name.clone(),
            gguf_name: gguf_name.clone(),
            shape: shape.clone(),
            requested: requested.to_string(),
            ty: ty.to_string(),
            fallback: fallback.clone(),
            bits_per_weight: 8.0 * bytes.len() as f64 / x.len().max(1) as f64,
            bytes: bytes.len() as u64,
            sqnr_db: ErrorStats::of(x.iter().copied(), y.iter().copied()).sqnr_db(),
        });
        Ok(())
    })
    .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    let quantized: Vec<&GgufTensor> = tensors.iter().filter(|t| quantizable(&t.gguf_name, &t.shape)).collect();
    let qn: u64 = quantized.iter().map(|t| t.shape.iter().product::<usize>() as u64).sum();
    let qb: u64 = quantized.iter().map(|t| t.bytes).sum();
    Ok(GgufReport {
        format: "gguf",
        output: output.display().to_string(),
        file_type: ftype,
        fallbacks: tensors.iter().filter(|t| t.fallback.is_some()).count(),
        original_bytes: 4 * weights.len() as u64,
        gguf_bytes: std::fs::metadata(output).map(|m| m.len()).unwrap_or(0),
        quantized_bits_per_weight: if qn == 0 { 0.0 } else { 8.0 * qb as f64 / qn as f64 },
        tensors,
        seconds: start.elapsed().as_secs_f64(),
        allocation: None,
    })
}

/// Prints the report as a table (or JSON).
pub(crate) fn print_report(r: &GgufReport, json: bool) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    write_report(&mut out, r, json).map_err(|e| format!("cannot write the report: {e}"))
}

fn write_report(out: &mut impl Write, r: &GgufReport, json: bool) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{}", serde_json::to_string_pretty(r).map_err(std::io::Error::other)?);
    }
    writeln!(out, "{:<34} {:>14} {:>7} {:>7} {:>8} {:>10} {:>8}", "tensor", "shape", "asked", "type", "bits/w", "bytes", "SQNR dB")?;
    for t in &r.tensors {
        let sqnr = t.sqnr_db.map_or("exact".to_string(), |v| format!("{v:.2}"));
        writeln!(
            out,
            "{:<34} {:>14} {:>7} {:>7} {:>8.4} {:>10} {sqnr:>8}",
            t.gguf_name,
            format!("{:?}", t.shape),
            t.requested,
            t.ty,
            t.bits_per_weight,
            t.bytes
        )?;
    }
    if r.fallbacks > 0 {
        writeln!(out, "{} tensor(s) fell back to a type their rows fit (as llama.cpp does); --json gives each reason", r.fallbacks)?;
    }
    writeln!(
        out,
        "total: {} bytes -> {} bytes ({:.3} bits per weight over the quantized matrices) in {:.2} s",
        r.original_bytes, r.gguf_bytes, r.quantized_bits_per_weight, r.seconds
    )
}

/// Replaces the model's tensors with those of a GGUF file (decoded); returns how many.
pub(crate) fn apply_gguf(model: &mut Bert<f32>, path: &Path) -> Result<usize, String> {
    let file = GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = model.set_from_gguf(&file).map_err(|e| format!("{}: {e}", path.display()))?;
    if n == 0 {
        return Err(format!("{} holds no tensor of this model under llama.cpp's BERT names", path.display()));
    }
    Ok(n)
}

/// `quant inspect` of a GGUF file.
#[derive(Serialize)]
struct InspectTensor {
    name: String,
    hf_name: Option<String>,
    shape: Vec<usize>,
    #[serde(rename = "type")]
    ty: String,
    bytes: u64,
    bits_per_weight: f64,
}

#[derive(Serialize)]
struct InspectReport {
    format: &'static str,
    version: u32,
    alignment: u64,
    metadata: Vec<(String, String)>,
    tensors: Vec<InspectTensor>,
    total_bytes: u64,
}

pub(crate) fn inspect(path: &Path, json: bool) -> Result<(), String> {
    let file = GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let h = file.header();
    let tensors: Vec<InspectTensor> = h
        .tensors
        .iter()
        .map(|t| InspectTensor {
            name: t.name.clone(),
            hf_name: hf_tensor_name(&t.name),
            shape: t.shape(),
            ty: t.ggml_type.to_string(),
            bytes: t.bytes(),
            bits_per_weight: 8.0 * t.bytes() as f64 / t.elements().max(1) as f64,
        })
        .collect();
    let report = InspectReport {
        format: "gguf",
        version: h.version,
        alignment: h.alignment,
        metadata: h.metadata.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        total_bytes: tensors.iter().map(|t| t.bytes).sum(),
        tensors,
    };
    let mut out = std::io::stdout().lock();
    write_inspect(&mut out, &report, json).map_err(|e| format!("cannot write the report: {e}"))
}

fn write_inspect(out: &mut impl Write, report: &InspectReport, json: bool) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{}", serde_json::to_string_pretty(report).map_err(std::io::Error::other)?);
    }
    writeln!(out, "GGUF version {}, alignment {}, {} metadata entries:", report.version, report.alignment, report.metadata.len())?;
    for (k, v) in &report.metadata {
        writeln!(out, "  {k:<44} {v}")?;
    }
    writeln!(out, "{:<34} {:>14} {:>7} {:>8} {:>10}", "tensor", "shape", "type", "bits/w", "bytes")?;
    for t in &report.tensors {
        writeln!(out, "{:<34} {:>14} {:>7} {:>8.4} {:>10}", t.name, format!("{:?}", t.shape), t.ty, t.bits_per_weight, t.bytes)?;
    }
    writeln!(out, "total: {} tensor bytes", report.total_bytes)
}

/// `quant dequantize` of a GGUF file: every tensor decoded to f32, under its Hugging Face
/// name where it is a BERT tensor (its GGUF name otherwise), in a safetensors file.
pub(crate) fn dequantize(input: &Path, output: &Path) -> Result<usize, String> {
    let file = GgufFile::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let claimed = quant::checkpoint::PartialFile::create(output).map_err(|e| e.to_string())?;
    let mut out = quant::checkpoint::StreamWriter::new(claimed);
    let mut n = 0;
    for t in &file.header().tensors {
        let shape = t.shape();
        let len = t.elements() as usize;
        let values =
            codec::dequantize(t.ggml_type, file.data(t), len).map_err(|e| format!("{}: tensor '{}': {e}", input.display(), t.name))?;
        let name = hf_tensor_name(&t.name).unwrap_or_else(|| t.name.clone());
        out.add_f32(&name, &shape, &values).map_err(|e| e.to_string())?;
        n += 1;
    }
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    out.finish(&meta).map_err(|e| e.to_string())?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_on_minilm_shapes() {
        let r = TypeRule::RecipeQ4KM;
        // 384-wide rows: q4_K falls back to q5_0, q6_K to q8_0 (attention value, layer 2).
        assert_eq!(type_for(&r, "blk.0.attn_q.weight", &[384, 384], 6).1, GgmlType::Q5_0);
        assert_eq!(type_for(&r, "blk.2.attn_v.weight", &[384, 384], 6).1, GgmlType::Q8_0);
        assert_eq!(type_for(&r, "blk.1.attn_v.weight", &[384, 384], 6).1, GgmlType::Q5_0);
        // FFN down has rows of 1536 = 6 x 256: the k-quants fit.
        assert_eq!(type_for(&r, "blk.5.ffn_down.weight", &[384, 1536], 6).1, GgmlType::Q6_K);
        assert_eq!(type_for(&r, "blk.4.ffn_down.weight", &[384, 1536], 6).1, GgmlType::Q4_K);
        // Norms, biases, position and token-type tables stay f32.
        assert_eq!(type_for(&r, "blk.0.attn_output_norm.weight", &[384], 6).1, GgmlType::F32);
        assert_eq!(type_for(&r, "position_embd.weight", &[512, 384], 6).1, GgmlType::F32);
        assert_eq!(type_for(&r, "token_types.weight", &[2, 384], 6).1, GgmlType::F32);
        // The word embeddings take the (absent) output matrix's type, as llama.cpp's quantizer
        // gives it: q8_0 on 384-wide rows, q6_K on whole k-blocks.
        assert_eq!(type_for(&r, "token_embd.weight", &[30522, 384], 6), (GgmlType::Q8_0, GgmlType::Q8_0, None));
        assert_eq!(type_for(&r, "token_embd.weight", &[30522, 512], 6).1, GgmlType::Q6_K);
    }
}

/// The flags `quant quantize --format gguf` uses.
pub(crate) struct QuantizeArgs {
    pub(crate) input: PathBuf,
    pub(crate) output: PathBuf,
    pub(crate) ggml_type: Option<GgmlType>,
    pub(crate) embedding_type: Option<GgmlType>,
    pub(crate) plan: crate::plan::PlanArgs,
    pub(crate) rounding: crate::rounding::RoundingArgs,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

/// `quant quantize --format gguf`.
pub(crate) fn quantize(a: QuantizeArgs) -> Result<(), String> {
    if a.rounding.gptq.rounding != "nearest" || a.rounding.calibration.is_some() || a.rounding.statistics.is_some() {
        return Err("--rounding, --calibration and --statistics apply to the safetensors format; GGUF tensors are encoded by this crate's least-squares GGML encoders".into());
    }
    if a.plan.plan.is_some() || a.plan.save_plan.is_some() {
        return Err("--plan and --save-plan apply to the safetensors format; for GGUF use --type, --recipe q4_k_m or --sensitivity with --target-bpw".into());
    }
    let dir = crate::model_dir(&a.input);
    let model = Bert::<f32>::load(&dir).map_err(|e| e.to_string())?;
    let mut allocation = None;
    let rule = match (a.ggml_type, &a.plan.recipe, &a.plan.sensitivity) {
        (Some(t), _, _) => TypeRule::Uniform(t),
        (None, Some(_), None) => {
            if a.plan.target_bpw.is_some() {
                return Err("--recipe q4_k_m with --format gguf is llama.cpp's fixed mixture; --target-bpw needs --sensitivity".into());
            }
            TypeRule::RecipeQ4KM
        }
        (None, None, Some(path)) => {
            let target = a.plan.target_bpw.ok_or("--sensitivity needs --target-bpw")?;
            let metric = a.plan.metric.unwrap_or(Metric::Trace);
            if !a.plan.candidates.is_empty() || a.plan.include_embeddings {
                return Err("--candidates and --include-embeddings apply to the safetensors format; for GGUF the allocator chooses among the GGML types each matrix's rows fit".into());
            }
            let (list, alloc) = allocate(&model, path, target, metric)?;
            allocation = Some(alloc);
            TypeRule::PerTensor(list, a.embedding_type.unwrap_or(EMBEDDING_TYPE))
        }
        (None, Some(_), Some(_)) => return Err("--recipe and --sensitivity: choose one".into()),
        (None, None, None) => return Err("--format gguf needs --type TYPE, --recipe q4_k_m or --sensitivity with --target-bpw".into()),
    };
    let mut report = write_bert(&dir, &model, &rule, &a.output)?;
    report.allocation = allocation;
    if let Some(input) = [dir.join("model.safetensors"), a.input.clone()].iter().find(|p| p.is_file()) {
        crate::keep_permissions(input, &a.output)?;
    }
    if !a.quiet && !a.json && report.fallbacks > 0 {
        for t in report.tensors.iter().filter(|t| t.fallback.is_some()).take(3) {
            eprintln!("note: {}: {}", t.gguf_name, t.fallback.as_deref().unwrap_or_default());
        }
    }
    print_report(&report, a.json)
}

/// The type of the word embeddings when the allocator prices only the encoder's matrices:
/// 8 bits, as Q-BERT kept them.
const EMBEDDING_TYPE: GgmlType = GgmlType::Q8_0;

/// The GGML types the allocator chooses among (each matrix only those its rows fit).
const ALLOCATABLE: [GgmlType; 10] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
];

/// One matrix of a GGUF allocation.
#[derive(Serialize, Clone)]
pub(crate) struct AllocatedTensor {
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) ty: String,
    pub(crate) bits_per_weight: f64,
    /// `‖Q(W) − W‖²` of the chosen type's encoding.
    pub(crate) perturbation: f64,
    /// Its predicted loss increase: the metric's curvature times the perturbation.
    pub(crate) predicted: f64,
}

/// What `--sensitivity` adds to the report.
#[derive(Serialize, Clone)]
pub(crate) struct GgufAllocation {
    pub(crate) metric: String,
    pub(crate) target_bpw: f64,
    /// Bits per weight over the allocated matrices, as chosen.
    pub(crate) bits_per_weight: f64,
    /// The sum of the predicted loss increases.
    pub(crate) predicted: f64,
    /// The types each matrix could take, with their sizes and perturbations, were measured
    /// by encoding it; this many encodings.
    pub(crate) encodings: usize,
    pub(crate) seconds: f64,
    pub(crate) tensors: Vec<AllocatedTensor>,
    pub(crate) notes: Vec<String>,
}

/// `‖Q(W) − W‖²` of `values` (rows of `row`) encoded as `ty`, and the encoding's bytes.
fn perturbation(ty: GgmlType, values: &[f32], row: usize) -> Result<(f64, u64), String> {
    let bytes = encode(ty, values, row)?;
    let y = decode(ty, &bytes, values.len(), row)?;
    Ok((ErrorStats::of(values.iter().copied(), y).squared_error, bytes.len() as u64))
}

/// The least total of `metric` (HAWQ-V2's `Tr(H)/n · ‖d‖²` or `Ω · ‖d‖²`) over the encoder's
/// matrices of a sensitivity report, each in a GGML type its rows fit, under `target` bits
/// per weight; exact (quant-mixed's allocator).
pub(crate) fn allocate(
    model: &Bert<f32>,
    path: &Path,
    target: f64,
    metric: Metric,
) -> Result<(Vec<(String, GgmlType)>, GgufAllocation), String> {
    let start = Instant::now();
    if !matches!(metric, Metric::Trace | Metric::Omega) {
        return Err(format!(
            "--metric {metric} with --format gguf: the sensitivity report prices its own candidates, not GGML types; use trace (HAWQ-V2, the default) or omega, which weigh each type's measured perturbation"
        ));
    }
    if !(target.is_finite() && target > 0.0) {
        return Err(format!("--target-bpw {target} must be finite and positive"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let report: SensitivityReport =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a sensitivity report: {e}", path.display()))?;
    let weights = model.weights();
    let weights = weights.as_slice().ok_or("the model's weights are not contiguous")?;
    let mut layers = Vec::new();
    let mut options_of = Vec::new();
    let mut encodings = 0;
    let mut notes = Vec::new();
    for m in report.matrices.iter().filter(|m| gguf_tensor_name(&m.name).is_some_and(|g| g.starts_with("blk."))) {
        let block = model
            .blocks()
            .iter()
            .find(|b| b.name() == m.name || b.name().strip_prefix(model.prefix()) == Some(m.name.as_str()))
            .ok_or_else(|| format!("tensor '{}' of {} is not in the model", m.name, path.display()))?;
        let shape = model.tensor_shape(block.name()).unwrap_or_default();
        if shape != m.shape {
            return Err(format!(
                "tensor '{}' has shape {shape:?} in the model but {:?} in {}: a report of another model?",
                m.name,
                m.shape,
                path.display()
            ));
        }
        let curvature = match metric {
            Metric::Trace => m.average_trace.abs(),
            _ => m.omega.abs(),
        };
        if !curvature.is_finite() {
            return Err(format!("tensor '{}' has a non-finite {metric} in {}", m.name, path.display()));
        }
        let row = shape.last().copied().unwrap_or(1);
        let x = &weights[block.range()];
        let mut opts = Vec::new();
        let mut types = Vec::new();
        for ty in ALLOCATABLE.into_iter().filter(|t| row % t.block_size() == 0) {
            let (d, bytes) = perturbation(ty, x, row)?;
            encodings += 1;
            opts.push(LayerOption {
                bits: nominal_bits(ty),
                group_size: Some(ty.block_size()),
                bytes,
                bops: 0,
                sensitivity: curvature * d,
            });
            types.push((ty, d, bytes));
        }
        if types.len() < ALLOCATABLE.len() && notes.is_empty() {
            notes.push(format!("rows of {row} values: the k-quants (blocks of 256) are not offered to such matrices"));
        }
        layers.push(LayerSpec::new(m.name.clone(), x.len() as u64, opts));
        options_of.push((m.name.clone(), types, curvature, x.len()));
    }
    if layers.is_empty() {
        return Err(format!("{} has no encoder matrix of this model", path.display()));
    }
    let params: u64 = layers.iter().map(|l| l.params).sum();
    let budget = (target * params as f64 / 8.0).floor() as u64;
    let problem = Problem::new(layers).map_err(|e| e.to_string())?;
    let solution = match problem.solve(Budget::Bytes(budget)) {
        Err(MixedError::Infeasible { .. }) => {
            return Err(format!("--target-bpw {target} is below the smallest GGML type every matrix can take"));
        }
        other => other.map_err(|e| e.to_string())?,
    };
    let mut list = Vec::new();
    let mut tensors = Vec::new();
    let (mut bytes, mut predicted) = (0u64, 0f64);
    for ((name, types, curvature, n), l) in options_of.iter().zip(&solution.layers) {
        let (ty, d, b) = types[l.option];
        bytes += b;
        predicted += curvature * d;
        list.push((name.clone(), ty));
        tensors.push(AllocatedTensor {
            name: name.clone(),
            ty: ty.to_string(),
            bits_per_weight: 8.0 * b as f64 / *n as f64,
            perturbation: d,
            predicted: curvature * d,
        });
    }
    Ok((
        list,
        GgufAllocation {
            metric: metric.to_string(),
            target_bpw: target,
            bits_per_weight: 8.0 * bytes as f64 / params as f64,
            predicted,
            encodings,
            seconds: start.elapsed().as_secs_f64(),
            tensors,
            notes,
        },
    ))
}

/// The width of a type's codes, for the allocator's report.
fn nominal_bits(ty: GgmlType) -> u8 {
    match ty {
        GgmlType::Q2_K => 2,
        GgmlType::Q3_K => 3,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 4,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 5,
        GgmlType::Q6_K => 6,
        _ => 8,
    }
}
