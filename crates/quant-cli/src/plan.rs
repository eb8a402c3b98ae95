//! `quant quantize` with a quantization per tensor: allocated from a sensitivity report under
//! a bits-per-weight budget, llama.cpp's `q4_k_m` recipe, or a plan file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use quant::checkpoint::QuantizeOptions;
use quant::plan::{CandidatePattern, Metric, Plan, TensorMenu};
use quant::quantizers::{GranularityRule, MethodKind, ParamDtype, RangeEstimator, Scheme, TableFit};
use quant::sensitivity::{Candidate, EmbeddingRows, SensitivityReport};

/// The flags that give each tensor its own quantization.
#[derive(clap::Args)]
pub(crate) struct PlanArgs {
    /// A sensitivity report of this model (written by `quant sensitivity`); with
    /// --target-bpw, each encoder matrix gets the candidate of the least total predicted loss
    /// increase under the budget.
    #[arg(long, value_name = "SENS.json", conflicts_with = "plan")]
    pub(crate) sensitivity: Option<PathBuf>,
    /// The budget: mean bits per weight over the allocated matrices, tables included.
    #[arg(long, value_name = "B", conflicts_with = "plan")]
    pub(crate) target_bpw: Option<f64>,
    /// What the allocation minimises: quadratic (1/2 d^T H d), measured (L(W0 + d)), trace
    /// (HAWQ-V2's Tr(H)/n x ||d||^2), omega (Omega x ||d||^2) or omega-rank (Q-BERT: rank by
    /// Omega, the most sensitive share one step wider). Default: quadratic; trace for
    /// --format gguf, whose GGML types the report does not price (trace and omega there).
    #[arg(long, value_parser = parse_metric, conflicts_with_all = ["plan", "recipe"])]
    pub(crate) metric: Option<Metric>,
    /// The candidates allowed, comma-separated: BITS, BITS@GRANULARITY or
    /// BITS@GRANULARITY@TABLES (default: all the report's; for --recipe without a report,
    /// 2, 3, 4, 6 and 8 bits at groups of 128).
    #[arg(long, value_delimiter = ',', value_parser = parse_pattern, conflicts_with = "plan")]
    pub(crate) candidates: Vec<CandidatePattern>,
    /// Apply a plan file (written by --save-plan or by hand: a list of tensors, each with
    /// name, bits, granularity and param_dtype); tensors it does not name are copied unchanged.
    #[arg(long, value_name = "PLAN.json")]
    pub(crate) plan: Option<PathBuf>,
    /// llama.cpp's hand-written rule as a baseline: attention value and FFN-down matrices
    /// one step wider in the first and last eighth of the layers and in every third layer
    /// between (with --target-bpw, the widest base width that fits; without, 4 bits).
    #[arg(long, value_parser = ["q4_k_m"], conflicts_with = "plan")]
    pub(crate) recipe: Option<String>,
    /// Allocate the embedding tables too (the report must have them); by default they are
    /// kept at 8 bits per row, outside the budget, as Q-BERT kept them.
    #[arg(long, conflicts_with = "plan")]
    pub(crate) include_embeddings: bool,
    /// Write the plan as JSON (to edit and apply with --plan).
    #[arg(long, value_name = "PLAN.json")]
    pub(crate) save_plan: Option<PathBuf>,
}

fn parse_metric(s: &str) -> Result<Metric, String> {
    s.parse().map_err(|e: quant::pipeline::QbertError| e.to_string())
}

fn parse_pattern(s: &str) -> Result<CandidatePattern, String> {
    s.parse().map_err(|e: quant::pipeline::QbertError| e.to_string())
}

impl PlanArgs {
    /// Whether any flag asks for a per-tensor plan.
    pub(crate) fn active(&self) -> bool {
        self.sensitivity.is_some() || self.plan.is_some() || self.recipe.is_some() || self.target_bpw.is_some()
    }
}

/// Embedding tables kept outside the budget: 8-bit codes with a scale and offset per row.
const EMBEDDING_CANDIDATE: Candidate =
    Candidate { bits: 8, granularity: GranularityRule::Channel { axis: 0 }, param_dtype: ParamDtype::Native };

/// Whether `name` is an embedding table (`…word_embeddings.weight` and the like).
fn is_embedding(name: &str) -> bool {
    name.ends_with("_embeddings.weight")
}

/// Whether `name` is an encoder weight matrix (`…layer.N.….weight`, not a norm).
fn is_encoder_matrix(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && name.contains("layer.") && name.ends_with(".weight") && !name.contains("LayerNorm")
}

/// The options that quantize as `c` does in the sensitivity report: min-max uniform codes on
/// Q-BERT's asymmetric grid.
fn options_of(c: &Candidate) -> QuantizeOptions {
    QuantizeOptions {
        method: MethodKind::Uniform,
        bits: c.bits,
        scheme: Scheme::AsymmetricGrid,
        granularity: c.granularity,
        range: RangeEstimator::MinMax,
        tables: c.param_dtype,
        table_fit: TableFit::Cover,
    }
}

/// The floating-point tensors of a safetensors file with their shapes, sorted by name.
pub(crate) fn float_shapes(src: &quant::checkpoint::SafetensorsFile) -> Vec<(String, Vec<usize>)> {
    use quant::checkpoint::safetensors::Dtype::{BF16, F16, F32, F64};
    src.names()
        .into_iter()
        .filter_map(|name| match src.info(&name) {
            Some((F32 | F16 | BF16 | F64, shape)) => Some((name.clone(), shape.to_vec())),
            _ => None,
        })
        .collect()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a {what}: {e}", path.display()))
}

/// The plan the flags ask for, checked against the checkpoint's floating-point tensors
/// (`shapes`, from [`float_shapes`]).
pub(crate) fn make_plan(args: &PlanArgs, shapes: &[(String, Vec<usize>)], rounding: &str) -> Result<(Plan, f64), String> {
    let mut notes = Vec::new();
    let shape_of = |name: &str| shapes.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone());
    let err = |e: quant::pipeline::QbertError| e.to_string();
    if let Some(path) = &args.plan {
        let plan: Plan = read_json(path, "plan")?;
        return Ok((plan.check(shape_of).map_err(err)?, 0.0));
    }
    let report: Option<SensitivityReport> = match &args.sensitivity {
        Some(path) => {
            let mut r: SensitivityReport = read_json(path, "sensitivity report")?;
            for m in &r.matrices {
                match shape_of(&m.name) {
                    None => return Err(format!("tensor '{}' of {} is not in the checkpoint", m.name, path.display())),
                    Some(s) if s != m.shape => {
                        return Err(format!(
                            "tensor '{}' has shape {s:?} in the checkpoint but {:?} in {}: a report of another model?",
                            m.name,
                            m.shape,
                            path.display()
                        ));
                    }
                    Some(_) => {}
                }
            }
            if args.include_embeddings {
                if let Some((name, _)) =
                    shapes.iter().find(|(n, s)| is_embedding(n) && s.len() == 2 && !r.matrices.iter().any(|m| &m.name == n))
                {
                    return Err(format!(
                        "--include-embeddings: {} has no sensitivity for '{name}' (run quant sensitivity with --include-embeddings)",
                        path.display()
                    ));
                }
            } else {
                r.matrices.retain(|m| !is_embedding(&m.name));
            }
            Some(r)
        }
        None => None,
    };
    let start = Instant::now();
    if let Some(r) = &report
        && r.rounding != rounding
    {
        notes.push(format!("the sensitivity report scored {} rounding; this run rounds by {rounding}", r.rounding));
    }
    let menu = match &report {
        Some(r) => TensorMenu::from_report(r, &args.candidates).map_err(err)?,
        None => {
            let tensors: Vec<(String, Vec<usize>)> = shapes.iter().filter(|(n, s)| is_encoder_matrix(n, s)).cloned().collect();
            let candidates: Vec<Candidate> = if args.candidates.is_empty() {
                Candidate::grid(&[2, 3, 4, 6, 8], &[GranularityRule::Group { size: 128 }])
            } else {
                args.candidates
                    .iter()
                    .map(|p| match p.granularity {
                        Some(granularity) => Ok(Candidate { bits: p.bits, granularity, param_dtype: p.param_dtype.unwrap_or_default() }),
                        None => {
                            Err(format!("--candidates {p}: without --sensitivity each candidate needs its granularity (BITS@GRANULARITY)"))
                        }
                    })
                    .collect::<Result<_, _>>()?
            };
            TensorMenu::from_shapes(&tensors, &candidates).map_err(err)?
        }
    };
    let mut plan = match (&args.recipe, args.target_bpw) {
        (Some(_), target) => menu.recipe_q4_k_m(target).map_err(err)?,
        (None, Some(target)) if report.is_some() => menu.allocate(args.metric.unwrap_or(Metric::Quadratic), target).map_err(err)?,
        (None, Some(_)) => return Err("--target-bpw needs --sensitivity (or --recipe)".into()),
        (None, None) => return Err("--sensitivity needs --target-bpw".into()),
    };
    let seconds = start.elapsed().as_secs_f64();
    plan.notes.extend(notes);
    if !args.include_embeddings {
        for (name, shape) in shapes.iter().filter(|(n, s)| is_embedding(n) && s.len() == 2) {
            plan = plan.with_fixed(name, shape, EMBEDDING_CANDIDATE).map_err(err)?;
        }
    } else {
        let rows = report.as_ref().map(|r| r.embedding_rows.as_slice()).unwrap_or_default();
        if rows.is_empty() {
            plan.notes.push(
                "word-embedding rows of tokens the calibration text never uses have no measured curvature: their error is not priced"
                    .into(),
            );
        }
        plan.notes.extend(unused_rows_notes(rows));
    }
    Ok((plan, seconds))
}

/// One note per embedding table with rows the calibration sentences never use.
pub(crate) fn unused_rows_notes(rows: &[EmbeddingRows]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.used < r.rows)
        .map(|r| {
            format!(
                "{}: {} of its {} rows ({:.1}%) are never used by the calibration sentences; they have no measured curvature and their error is not priced",
                r.name,
                r.rows - r.used,
                r.rows,
                100.0 * (r.rows - r.used) as f64 / r.rows as f64
            )
        })
        .collect()
}

/// The options of tensor `name` under `plan` (`None`: copied unchanged).
pub(crate) fn options_for(plan: &Plan, name: &str) -> Option<QuantizeOptions> {
    plan.tensors.iter().find(|e| e.name == name).map(|e| options_of(&e.candidate))
}

/// Writes the plan file if asked.
pub(crate) fn save(args: &PlanArgs, plan: &Plan) -> Result<(), String> {
    if let Some(path) = &args.save_plan {
        let text = serde_json::to_string_pretty(plan).map_err(|e| e.to_string())?;
        crate::write_atomic(path, (text + "\n").as_bytes())?;
    }
    Ok(())
}

/// Prints the plan as a table.
pub(crate) fn print_table(plan: &Plan, seconds: f64) {
    println!("{:<52} {:>4} {:>10} {:>7} {:>8} {:>11} {:>11}", "tensor", "bits", "groups", "tables", "bits/w", "1/2 dHd", "measured");
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4e}"));
    for e in &plan.tensors {
        let name = if e.allocated { e.name.clone() } else { format!("{} (fixed)", e.name) };
        println!(
            "{name:<52} {:>4} {:>10} {:>7} {:>8.4} {:>11} {:>11}",
            e.candidate.bits,
            e.candidate.granularity.to_string(),
            e.candidate.param_dtype.to_string(),
            e.bits_per_weight,
            opt(e.quadratic),
            opt(e.measured)
        );
    }
    println!(
        "plan ({}): {:.4} bits per weight over {} allocated weights ({} bytes); predicted 1/2 d^T H d {}, measured {}; allocated in {:.1} ms",
        plan.method,
        plan.bits_per_weight,
        plan.params,
        plan.bytes,
        opt(plan.predicted_quadratic),
        opt(plan.predicted_measured),
        seconds * 1e3
    );
    for n in &plan.notes {
        println!("note: {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_rows_are_counted_per_table() {
        let rows = [
            EmbeddingRows { name: "embeddings.word_embeddings.weight".into(), rows: 30522, used: 2847 },
            EmbeddingRows { name: "embeddings.token_type_embeddings.weight".into(), rows: 2, used: 2 },
        ];
        let notes = unused_rows_notes(&rows);
        assert_eq!(notes.len(), 1, "a table whose rows are all used gets no note");
        assert!(notes[0].starts_with("embeddings.word_embeddings.weight: 27675 of its 30522 rows (90.7%)"), "{}", notes[0]);
    }
}
