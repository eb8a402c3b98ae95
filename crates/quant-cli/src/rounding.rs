//! `quant quantize --rounding weighted|gptq`: importance-weighted fits or GPTQ on the encoder
//! matrices of a BERT-family checkpoint, with input statistics from calibration text or a
//! statistics file; `quant statistics` writes such a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use quant::models::bert::{Bert, BertTokenizer, Importance, InputGrams, TextLines, TokenBatch};
use quant::ndarray::{Array2, ArrayView2, ArrayViewD, Ix2};
use quant::ptq::{GptqParams, layer_objective};
use quant::quantizers::{Method, QuantError, Quantized};
use quant::sensitivity::{CandidateRounding, gptq_sequential};
use serde::Serialize;

use crate::embed::bert_error;

/// Sentences per forward pass when collecting statistics.
const CHUNK: usize = 64;

/// How codes are chosen, shared by `quantize` and `sensitivity`.
#[derive(clap::Args)]
pub(crate) struct GptqArgs {
    /// How codes are chosen: nearest (round to nearest); weighted (each group's grid fitted
    /// for the least error weighted by the mean square of its inputs, the diagonal of
    /// X^T X); gptq (GPTQ with each encoder matrix's layer Hessian 2 X^T X). Statistics come
    /// from the calibration sentences; tensors without them are rounded to nearest.
    #[arg(long, default_value = "nearest", value_parser = ["nearest", "weighted", "gptq"])]
    pub(crate) rounding: String,
    /// GPTQ's dampening, a fraction of the mean diagonal of the layer Hessian.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) damp: f64,
    /// GPTQ: quantize the inputs of largest X^T X diagonal first (groups fitted up front).
    #[arg(long)]
    pub(crate) act_order: bool,
    /// GPTQ: how each group's grid is fitted when GPTQ reaches it: weighted (the
    /// importance-weighted fit, with the group's X^T X diagonal as weights) or plain (the
    /// quantizer's own fit, as in the GPTQ paper).
    #[arg(long, default_value = "weighted", value_parser = ["weighted", "plain"])]
    pub(crate) group_fit: String,
}

impl GptqArgs {
    fn params(&self) -> Result<GptqParams, String> {
        let importance_fit = self.group_fit == "weighted";
        GptqParams { damp: self.damp, act_order: self.act_order, importance_fit, ..GptqParams::default() }
            .check()
            .map_err(|e| e.to_string())
    }

    /// The rounding from statistics already collected (checked settings first).
    fn with_statistics(&self, stats: Statistics) -> Result<CandidateRounding, String> {
        match (self.rounding.as_str(), stats) {
            ("nearest", _) => Ok(CandidateRounding::Nearest),
            ("weighted", Statistics::Grams(g)) => Ok(CandidateRounding::Weighted { importance: Arc::new(g.importance()) }),
            ("weighted", Statistics::Importance(i)) => Ok(CandidateRounding::Weighted { importance: i }),
            (_, Statistics::Grams(grams)) => Ok(CandidateRounding::Gptq { grams, params: self.params()? }),
            (_, Statistics::Importance(_)) => {
                Err("--rounding gptq needs the full X^T X: an imatrix file holds only its diagonal (use --calibration, or a statistics file from `quant statistics`)".into())
            }
        }
    }

    /// The rounding, with the input statistics of `batch` (checked settings first).
    pub(crate) fn rounding(&self, model: &Bert<f32>, batch: &TokenBatch) -> Result<CandidateRounding, String> {
        if self.rounding == "nearest" {
            return Ok(CandidateRounding::Nearest);
        }
        if self.rounding == "gptq" {
            self.params()?;
        }
        let grams = model.input_grams(batch, CHUNK).map_err(bert_error)?;
        self.with_statistics(Statistics::Grams(Arc::new(grams)))
    }
}

/// The rounding flags of `quantize`.
#[derive(clap::Args)]
pub(crate) struct RoundingArgs {
    #[command(flatten)]
    pub(crate) gptq: GptqArgs,
    /// Calibration sentences for --rounding weighted or gptq, one per line (the model
    /// directory's config.json and tokenizer.json must be beside the input).
    #[arg(long, value_name = "FILE", conflicts_with = "statistics")]
    pub(crate) calibration: Option<PathBuf>,
    /// Input statistics for --rounding weighted or gptq instead of --calibration: a file
    /// `quant statistics` wrote (X^T X per matrix), or for weighted a llama.cpp imatrix
    /// (.dat) file.
    #[arg(long, value_name = "FILE")]
    pub(crate) statistics: Option<PathBuf>,
    /// GPTQ in sequential mode: the encoder's layers in order, each layer's statistics
    /// collected after the earlier layers are quantized (needs --calibration; one forward
    /// pass per layer).
    #[arg(long)]
    pub(crate) sequential: bool,
}

/// Input statistics: full Gram matrices, or per-input importance only (an imatrix file).
#[derive(Clone)]
enum Statistics {
    Grams(Arc<InputGrams>),
    Importance(Arc<Importance>),
}

/// Reads a statistics file: `quant statistics`' safetensors file, else llama.cpp's imatrix.
fn read_statistics(path: &Path) -> Result<Statistics, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match InputGrams::from_safetensors(&bytes) {
        Ok(g) => Ok(Statistics::Grams(Arc::new(g))),
        Err(as_grams) => match Importance::from_imatrix(&bytes) {
            Ok(i) => Ok(Statistics::Importance(Arc::new(i))),
            Err(as_imatrix) => Err(format!(
                "{}: neither a statistics file ({}) nor an imatrix file ({})",
                path.display(),
                bert_error(as_grams),
                bert_error(as_imatrix)
            )),
        },
    }
}

/// The model and calibration batch of `dir` and `calibration`.
fn calibration_batch(dir: &Path, calibration: &Path, quiet: bool) -> Result<(Bert<f32>, TokenBatch), String> {
    let lines = TextLines::read(calibration).map_err(bert_error)?;
    if lines.sentences.is_empty() {
        return Err(format!("{} holds no sentences", calibration.display()));
    }
    let model = Bert::<f32>::load(dir).map_err(|e| format!("the model directory beside the input is needed: {}", bert_error(e)))?;
    let tokenizer = BertTokenizer::from_dir(dir, model.config().max_position_embeddings).map_err(bert_error)?;
    let batch = tokenizer.encode(&lines.sentences).map_err(bert_error)?;
    if !quiet {
        eprintln!("input statistics of {} sentence(s) ({} tokens) of {}", lines.sentences.len(), batch.tokens(), calibration.display());
    }
    Ok((model, batch))
}

/// One matrix's layer objective `tr((W − Q) H (W − Q)ᵀ)`, `H = XᵀX`, for round-to-nearest
/// and for the rounding used (with an imatrix file, the diagonal form `Σ h_j (w − q)²`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Objective {
    name: String,
    nearest: f64,
    rounded: f64,
}

/// The rounding's inputs and what it measured.
pub(crate) struct Rounder {
    rounding: CandidateRounding,
    /// Matrices quantized up front (sequential GPTQ), by name, with the method used.
    done: BTreeMap<String, (Method, Quantized<f32>)>,
    /// The statistics the objectives are measured with.
    grams: Option<Arc<InputGrams>>,
    importance: Option<Arc<Importance>>,
    objectives: Mutex<Vec<Objective>>,
}

impl Rounder {
    /// `None` for round-to-nearest; otherwise the statistics (and, for sequential GPTQ, the
    /// quantized matrices, with `method_for` giving each matrix's method).
    pub(crate) fn new(
        args: &RoundingArgs,
        input: &Path,
        quiet: bool,
        method_for: impl Fn(&str, &[usize]) -> Option<Method>,
    ) -> Result<Option<Self>, String> {
        let name = args.gptq.rounding.as_str();
        if name == "nearest" {
            if args.calibration.is_some() || args.statistics.is_some() {
                return Err("--calibration and --statistics are used by --rounding weighted or gptq only".into());
            }
            if args.sequential {
                return Err("--sequential is used by --rounding gptq only".into());
            }
            return Ok(None);
        }
        if args.sequential && name != "gptq" {
            return Err("--sequential is used by --rounding gptq only".into());
        }
        let dir = input.parent().map(Path::to_path_buf).unwrap_or_default();
        let (stats, done) = match (&args.calibration, &args.statistics) {
            (None, None) => return Err(format!("--rounding {name} needs --calibration FILE or --statistics FILE")),
            (None, Some(_)) if args.sequential => {
                return Err("--sequential collects statistics layer by layer: it needs --calibration, not --statistics".into());
            }
            (_, Some(path)) => (read_statistics(path)?, BTreeMap::new()),
            (Some(cal), None) => {
                let (model, batch) = calibration_batch(&dir, cal, quiet)?;
                if args.sequential {
                    let chosen = Mutex::new(BTreeMap::new());
                    let record = |name: &str, shape: &[usize]| {
                        let m = method_for(name, shape);
                        if let (Some(m), Ok(mut c)) = (&m, chosen.lock()) {
                            c.insert(name.to_string(), *m);
                        }
                        m
                    };
                    let seq = gptq_sequential(&model, &batch, CHUNK, &args.gptq.params()?, record).map_err(|e| e.to_string())?;
                    let chosen = chosen.into_inner().unwrap_or_default();
                    let done = seq.quantized.into_iter().filter_map(|(n, q)| chosen.get(&n).map(|m| (n, (*m, q)))).collect();
                    (Statistics::Grams(Arc::new(seq.grams)), done)
                } else {
                    (Statistics::Grams(Arc::new(model.input_grams(&batch, CHUNK).map_err(bert_error)?)), BTreeMap::new())
                }
            }
        };
        // The objectives are measured with the full statistics where there are any.
        let (grams, importance) = match &stats {
            Statistics::Grams(g) => (Some(g.clone()), None),
            Statistics::Importance(i) => (None, Some(i.clone())),
        };
        let rounding = args.gptq.with_statistics(stats)?;
        Ok(Some(Self { rounding, done, grams, importance, objectives: Mutex::new(Vec::new()) }))
    }

    /// The rounding's name, as the report spells it.
    pub(crate) fn name(&self) -> &'static str {
        self.rounding.name()
    }

    /// The objective of `q` for `w` under the statistics of `name`, if any.
    fn objective(&self, name: &str, w: ArrayView2<'_, f32>, q: &Quantized<f32>) -> Result<Option<f64>, QuantError> {
        let deq = q.dequantize().into_dimensionality::<Ix2>().map_err(|_| QuantError::Empty)?;
        if let Some(h) = self.grams.as_ref().and_then(|g| g.get(name)) {
            return layer_objective(w, deq.view(), h.view()).map(Some);
        }
        let Some(h) = self.importance.as_ref().and_then(|i| i.get(name)) else { return Ok(None) };
        if h.len() != w.ncols() {
            return Err(QuantError::ShapeMismatch { expected: vec![w.ncols()], got: vec![h.len()] });
        }
        let d: Array2<f64> = Array2::from_shape_fn(w.dim(), |(i, j)| f64::from(w[[i, j]]) - f64::from(deq[[i, j]]));
        Ok(Some(d.rows().into_iter().map(|r| r.iter().zip(h).map(|(e, hj)| hj * e * e).sum::<f64>()).sum()))
    }

    /// Quantizes `x` as the rounding does; for a matrix with statistics, records its layer
    /// objective beside round-to-nearest's.
    pub(crate) fn quantize(&self, name: &str, x: ArrayViewD<'_, f32>, method: &Method) -> Result<Quantized<f32>, QuantError> {
        let Ok(w) = x.view().into_dimensionality::<Ix2>() else {
            return method.quantize(&x);
        };
        let q = match self.done.get(name) {
            // Sequential GPTQ quantized it with this very method.
            Some((m, q)) if m == method => q.clone(),
            _ => self.rounding.quantize(name, w.view(), method).map_err(|e| match e {
                quant::pipeline::QbertError::Core(c) => c,
                other => QuantError::UnsupportedSetting { method: method.kind(), setting: other.to_string() },
            })?,
        };
        // The two objectives side by side (each a product with the in × in statistics).
        let (rounded, nearest) =
            rayon::join(|| self.objective(name, w.view(), &q), || method.quantize(&w).and_then(|n| self.objective(name, w.view(), &n)));
        if let Some(rounded) = rounded? {
            let nearest = nearest?.unwrap_or(f64::NAN);
            if let Ok(mut o) = self.objectives.lock() {
                o.push(Objective { name: name.into(), nearest, rounded });
            }
        }
        Ok(q)
    }

    /// The objectives measured, in tensor order.
    pub(crate) fn objectives(&self) -> Vec<Objective> {
        let mut o = self.objectives.lock().map(|o| o.clone()).unwrap_or_default();
        o.sort_by(|a, b| a.name.cmp(&b.name));
        o
    }

    /// Which form the objectives take: `"full"` (`XᵀX`) or `"diagonal"` (an imatrix file).
    pub(crate) fn objective_form(&self) -> &'static str {
        if self.grams.is_some() { "full" } else { "diagonal" }
    }

    /// Prints the objectives as a table.
    pub(crate) fn print(&self) {
        let o = self.objectives();
        if o.is_empty() {
            return;
        }
        let title = match self.objective_form() {
            "full" => "layer objective tr((W-Q)XtX(W-Q)t)",
            _ => "diagonal objective sum h (w-q)^2",
        };
        println!("{title:<52} {:>14} {:>14} {:>8}", "nearest", self.name(), "ratio");
        for r in &o {
            println!("{:<52} {:>14.6e} {:>14.6e} {:>8.3}", r.name, r.nearest, r.rounded, r.rounded / r.nearest);
        }
        let (n, g): (f64, f64) = o.iter().fold((0.0, 0.0), |(a, b), r| (a + r.nearest, b + r.rounded));
        println!("total: nearest {n:.6e}, {} {g:.6e} ({:.3} of nearest)", self.name(), g / n);
    }
}

/// `quant statistics`: the input statistics of calibration text, written for later runs.
#[derive(clap::Args)]
pub(crate) struct StatisticsArgs {
    /// The model directory (config.json, model.safetensors, tokenizer.json).
    pub(crate) model_dir: PathBuf,
    /// Calibration sentences, one per line.
    #[arg(long, value_name = "FILE")]
    pub(crate) calibration: PathBuf,
    /// The file to write.
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// safetensors (X^T X of every encoder matrix in f64, for --rounding weighted and gptq) or
    /// imatrix (llama.cpp's .dat importance matrix: the mean square of each input, under
    /// llama.cpp's tensor names, the layout of llama-imatrix's .dat files; for --rounding
    /// weighted).
    #[arg(long, default_value = "safetensors", value_parser = ["safetensors", "imatrix"])]
    pub(crate) format: String,
    /// No progress on stderr.
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

pub(crate) fn run_statistics(a: StatisticsArgs) -> Result<(), String> {
    let dir = crate::model_dir(&a.model_dir);
    let _partial = crate::check_output(&a.calibration, &a.output, a.force)?;
    let (model, batch) = calibration_batch(&dir, &a.calibration, a.quiet)?;
    let grams = model.input_grams(&batch, CHUNK).map_err(bert_error)?;
    let bytes = match a.format.as_str() {
        "imatrix" => {
            let dataset = a.calibration.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            grams.importance().to_imatrix(&dataset)
        }
        _ => grams.to_safetensors(),
    }
    .map_err(bert_error)?;
    crate::write_atomic(&a.output, &bytes)?;
    if !a.quiet {
        eprintln!("statistics of {} matrices over {} tokens written to {}", grams.names.len(), grams.tokens, a.output.display());
    }
    Ok(())
}
