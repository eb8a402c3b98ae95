//! `quant sensitivity`: per-matrix Hessian sensitivity of a BERT-family checkpoint on
//! calibration text, written as JSON.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use quant::models::bert::{Bert, BertTokenizer, TextLines};
use quant::quantizers::{GranularityRule, ParamDtype};
use quant::sensitivity::{Candidate, Progress, SensitivityParams, SensitivityReport, Stage, bert_sensitivity_with_progress};
use serde::Serialize;

use crate::embed::bert_error;

/// The flags of `quant sensitivity`.
#[derive(clap::Args)]
pub(crate) struct SensitivityArgs {
    /// The model directory (or its config.json or model.safetensors).
    pub(crate) model_dir: PathBuf,
    /// Calibration sentences, one per line (UTF-8).
    #[arg(long)]
    pub(crate) calibration: PathBuf,
    /// Calibration subsets (Q-BERT used 10).
    #[arg(long, default_value_t = 10)]
    pub(crate) subsets: usize,
    /// Sentences per subset.
    #[arg(long, default_value_t = 32)]
    pub(crate) per_subset: usize,
    /// Seed of the sentence choice and split, the Lanczos starts and the trace probes.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Candidate code widths (2 to 8), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4,6,8")]
    pub(crate) bits: Vec<u8>,
    /// Candidate granularities (tensor, channel:AXIS, group:SIZE), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "group:32,group:128", value_parser = crate::parse::<GranularityRule>)]
    pub(crate) granularity: Vec<GranularityRule>,
    /// Storage of the candidates' scales and offsets (f32, f16, bf16, qN), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "f32", value_parser = crate::parse::<ParamDtype>)]
    pub(crate) param_dtype: Vec<ParamDtype>,
    /// Hutch++'s budget per matrix and subset (a third block products, the rest quadratic forms).
    #[arg(long, default_value_t = 9)]
    pub(crate) trace_budget: usize,
    /// How the candidates' codes are chosen (with weighted or gptq, the input statistics come
    /// from all the calibration sentences, so the scores are those of the checkpoint that
    /// `quant quantize --rounding weighted|gptq --calibration` with the same file writes).
    #[command(flatten)]
    pub(crate) gptq: crate::rounding::GptqArgs,
    /// Also measure the embedding tables.
    #[arg(long)]
    pub(crate) include_embeddings: bool,
    /// Also Q-BERT's grouping: the top eigenvalue of each encoder layer's whole Hessian block
    /// (its matrices together) on each subset, with the layer's Omega ("layers" in the report);
    /// `quant quantize --metric omega|omega-rank` then gives each matrix its layer's Omega.
    #[arg(long)]
    pub(crate) layer_blocks: bool,
    /// The JSON file to write.
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// Also print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress on stderr.
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

/// The file `-o` writes: where the numbers came from, then the report.
#[derive(Serialize)]
struct SensitivityFile<'a> {
    model: String,
    calibration: String,
    calibration_sentences: usize,
    seconds: f64,
    #[serde(flatten)]
    report: &'a SensitivityReport,
}

pub(crate) fn run(a: SensitivityArgs) -> Result<(), String> {
    let start = Instant::now();
    let dir = crate::model_dir(&a.model_dir);
    let lines = TextLines::read(&a.calibration).map_err(bert_error)?;
    let model = Bert::<f32>::load(&dir).map_err(bert_error)?;
    let tokenizer = BertTokenizer::from_dir(&dir, model.config().max_position_embeddings).map_err(bert_error)?;
    let batch = tokenizer.encode(&lines.sentences).map_err(bert_error)?;
    let mut tensors = model.weight_matrices();
    if a.include_embeddings {
        tensors.extend(model.embedding_tables());
    }
    let rounding = a.gptq.rounding(&model, &batch)?;
    let params = SensitivityParams {
        rounding,
        subsets: a.subsets,
        per_subset: a.per_subset,
        seed: a.seed,
        trace_budget: a.trace_budget,
        layer_blocks: a.layer_blocks,
        candidates: a
            .param_dtype
            .iter()
            .flat_map(|&p| Candidate::grid(&a.bits, &a.granularity).into_iter().map(move |c| Candidate { param_dtype: p, ..c }))
            .collect(),
        ..SensitivityParams::default()
    };
    if !a.quiet {
        eprintln!(
            "sensitivity of {} tensor(s) on {} subsets of {} of the {} sentence(s) in {}, {} candidate(s) each",
            tensors.len(),
            a.subsets,
            a.per_subset,
            lines.sentences.len(),
            a.calibration.display(),
            params.candidates.len()
        );
    }
    // Each stage's line as it ends; on a terminal also a line rewritten as each subset ends.
    let (quiet, live) = (a.quiet, std::io::stderr().is_terminal());
    let report = bert_sensitivity_with_progress(&model, &batch, &tensors, &params, |p| match p {
        _ if quiet => {}
        Progress::Stage(stage) => eprintln!("{}  {}", if live { "\r\x1b[2K" } else { "" }, stage_line(stage)),
        Progress::Subset { stage, done, of } if live => {
            eprint!("\r\x1b[2K  {stage}: subset {done} of {of}, {:.0} s so far", start.elapsed().as_secs_f64())
        }
        _ => {}
    })
    .map_err(|e| e.to_string())?;
    let file = SensitivityFile {
        model: dir.display().to_string(),
        calibration: a.calibration.display().to_string(),
        calibration_sentences: lines.sentences.len(),
        seconds: start.elapsed().as_secs_f64(),
        report: &report,
    };
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
    crate::write_atomic(&a.output, text.as_bytes())?;
    if a.json {
        println!("{text}");
        return Ok(());
    }
    if !a.quiet {
        println!("{:<56} {:>10} {:>10} {:>10} {:>12}", "tensor", "mean", "std", "Omega", "Tr(H)/n");
        for m in &report.matrices {
            println!("{:<56} {:>10.4e} {:>10.4e} {:>10.4e} {:>12.4e}", m.name, m.mean, m.std, m.omega, m.average_trace);
        }
        if !report.layers.is_empty() {
            println!("{:<56} {:>10} {:>10} {:>10}", "layer (Q-BERT's grouping)", "mean", "std", "Omega");
            for l in &report.layers {
                println!("{:<56} {:>10.4e} {:>10.4e} {:>10.4e}", l.name, l.mean, l.std, l.omega);
            }
        }
        for r in &report.embedding_rows {
            println!("{}: the calibration sentences use {} of {} rows", r.name, r.used, r.rows);
        }
        for s in &report.stages {
            println!("{}", stage_line(s));
        }
        println!("wrote {} in {:.1} s", a.output.display(), file.seconds);
    }
    Ok(())
}

/// One stage of the run as the progress on stderr and the summary on stdout say it: what it
/// computed, how much, how long.
fn stage_line(stage: &Stage) -> String {
    let work: Vec<String> = [
        (stage.block_products, "block product(s)"),
        (stage.quadratic_forms, "quadratic form(s)"),
        (stage.loss_evaluations, "loss evaluation(s)"),
    ]
    .into_iter()
    .filter(|&(n, _)| n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    format!("{}: {} in {:.1} s", stage.name, work.join(", "), stage.seconds)
}
