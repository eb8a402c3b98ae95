//! `quant quantize --rounding gptq`: GPTQ on the encoder matrices of a BERT-family checkpoint,
//! with each matrix's layer Hessian from calibration text.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use quant::models::bert::{Bert, BertTokenizer, TextLines, TokenBatch};
use quant::ndarray::{ArrayViewD, Ix2};
use quant::ptq::{GptqParams, layer_objective};
use quant::quantizers::{Method, QuantError, Quantized};
use quant::sensitivity::CandidateRounding;
use serde::Serialize;

use crate::embed::bert_error;

/// How codes are chosen, shared by `quantize` and `sensitivity`.
#[derive(clap::Args)]
pub(crate) struct GptqArgs {
    /// How codes are chosen: nearest (round to nearest), or gptq (GPTQ with each encoder
    /// matrix's layer Hessian 2 X^T X from the calibration sentences; other tensors are
    /// rounded to nearest).
    #[arg(long, default_value = "nearest", value_parser = ["nearest", "gptq"])]
    pub(crate) rounding: String,
    /// GPTQ's dampening, a fraction of the mean diagonal of the layer Hessian.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) damp: f64,
    /// GPTQ: quantize the inputs of largest X^T X diagonal first (groups fitted up front).
    #[arg(long)]
    pub(crate) act_order: bool,
}

impl GptqArgs {
    /// The rounding, with the input statistics of `batch` for GPTQ (checked settings first).
    pub(crate) fn rounding(&self, model: &Bert<f32>, batch: &TokenBatch) -> Result<CandidateRounding, String> {
        if self.rounding == "nearest" {
            return Ok(CandidateRounding::Nearest);
        }
        let params =
            GptqParams { damp: self.damp, act_order: self.act_order, ..GptqParams::default() }.check().map_err(|e| e.to_string())?;
        let grams = model.input_grams(batch, 64).map_err(bert_error)?;
        Ok(CandidateRounding::Gptq { grams: std::sync::Arc::new(grams), params })
    }
}

/// The rounding flags of `quantize`.
#[derive(clap::Args)]
pub(crate) struct RoundingArgs {
    #[command(flatten)]
    pub(crate) gptq: GptqArgs,
    /// Calibration sentences for --rounding gptq, one per line (the model directory's
    /// config.json and tokenizer.json must be beside the input).
    #[arg(long, value_name = "FILE")]
    pub(crate) calibration: Option<PathBuf>,
}

/// One matrix's layer objective `tr((W − Q) H (W − Q)ᵀ)`, `H = XᵀX`, for round-to-nearest
/// and for GPTQ.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Objective {
    name: String,
    nearest: f64,
    gptq: f64,
}

/// GPTQ's inputs and what it measured.
pub(crate) struct Rounder {
    rounding: CandidateRounding,
    objectives: Mutex<Vec<Objective>>,
}

impl Rounder {
    /// `None` for round-to-nearest; for GPTQ the Gram matrices of the calibration text.
    pub(crate) fn new(args: &RoundingArgs, input: &Path, quiet: bool) -> Result<Option<Self>, String> {
        if args.gptq.rounding == "nearest" {
            if args.calibration.is_some() {
                return Err("--calibration is used by --rounding gptq only".into());
            }
            return Ok(None);
        }
        let calibration = args.calibration.as_ref().ok_or("--rounding gptq needs --calibration FILE")?;
        let dir = input.parent().map(Path::to_path_buf).unwrap_or_default();
        let lines = TextLines::read(calibration).map_err(bert_error)?;
        if lines.sentences.is_empty() {
            return Err(format!("{} holds no sentences", calibration.display()));
        }
        let model = Bert::<f32>::load(&dir)
            .map_err(|e| format!("--rounding gptq needs the model directory beside the input: {}", bert_error(e)))?;
        let tokenizer = BertTokenizer::from_dir(&dir, model.config().max_position_embeddings).map_err(bert_error)?;
        let batch = tokenizer.encode(&lines.sentences).map_err(bert_error)?;
        if !quiet {
            eprintln!(
                "gptq: input statistics of {} sentence(s) ({} tokens) of {}",
                lines.sentences.len(),
                batch.tokens(),
                calibration.display()
            );
        }
        Ok(Some(Self { rounding: args.gptq.rounding(&model, &batch)?, objectives: Mutex::new(Vec::new()) }))
    }

    /// Quantizes `x` as the rounding does; for a matrix GPTQ rounded, records its layer
    /// objective beside round-to-nearest's.
    pub(crate) fn quantize(&self, name: &str, x: ArrayViewD<'_, f32>, method: &Method) -> Result<Quantized<f32>, QuantError> {
        let h = match (&self.rounding, method) {
            (CandidateRounding::Gptq { grams, .. }, Method::Uniform(_)) => grams.get(name),
            _ => None,
        };
        let (Some(h), Ok(w)) = (h, x.view().into_dimensionality::<Ix2>()) else {
            return method.quantize(&x);
        };
        let q = self.rounding.quantize(name, w.view(), method).map_err(|e| match e {
            quant::pipeline::QbertError::Core(c) => c,
            other => QuantError::UnsupportedSetting { method: method.kind(), setting: other.to_string() },
        })?;
        let objective = |q: &Quantized<f32>| -> Result<f64, QuantError> {
            let deq = q.dequantize().into_dimensionality::<Ix2>().map_err(|_| QuantError::Empty)?;
            layer_objective(w.view(), deq.view(), h.view())
        };
        let record = Objective { name: name.into(), nearest: objective(&method.quantize(&w)?)?, gptq: objective(&q)? };
        if let Ok(mut o) = self.objectives.lock() {
            o.push(record);
        }
        Ok(q)
    }

    /// The objectives measured, in tensor order.
    pub(crate) fn objectives(&self) -> Vec<Objective> {
        let mut o = self.objectives.lock().map(|o| o.clone()).unwrap_or_default();
        o.sort_by(|a, b| a.name.cmp(&b.name));
        o
    }

    /// Prints the objectives as a table.
    pub(crate) fn print(&self) {
        let o = self.objectives();
        if o.is_empty() {
            return;
        }
        println!("{:<52} {:>14} {:>14} {:>8}", "GPTQ layer objective tr((W-Q)XtX(W-Q)t)", "nearest", "gptq", "ratio");
        for r in &o {
            println!("{:<52} {:>14.6e} {:>14.6e} {:>8.3}", r.name, r.nearest, r.gptq, r.gptq / r.nearest);
        }
        let (n, g): (f64, f64) = o.iter().fold((0.0, 0.0), |(a, b), r| (a + r.nearest, b + r.gptq));
        println!("total: nearest {n:.6e}, gptq {g:.6e} ({:.3} of nearest)", g / n);
    }
}
