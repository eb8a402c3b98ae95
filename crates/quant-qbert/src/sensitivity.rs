//! Hessian sensitivity of a BERT-family checkpoint's weight matrices on calibration text:
//! Q-BERT's top eigenvalues and Ω, HAWQ-V2's average trace, and for each candidate
//! quantization the second-order loss increase `½ dᵀ H d` and the measured one.
//!
//! The loss is the label-free self-distillation loss
//! ([`SelfDistillation`]) over the chosen calibration
//! sentences, with the matrices as variables; at the loaded weights its Hessian is the
//! Gauss-Newton matrix, so every block product is one forward-mode pass from the matrix's
//! layer and one reverse pass back to it, and every quadratic form a forward-mode pass alone.

use std::time::Instant;

use ndarray::{Array1, Array2, s};
use quant_core::{GranularityRule, MethodParams, ParamDtype, rng};
use quant_hessian::{
    BlockOperator, HutchPlusPlus, Lanczos, Model, OperatorExt, Product, QbertParams, TopEigen, qbert_statistics_with_progress,
    split_subsets,
};
use quant_models::bert::{Bert, Importance, InputGrams, SelfDistillation, TokenBatch};
use quant_ptq::GptqParams;

use crate::error::{QbertError, Result};

/// One candidate quantization of a matrix: min-max uniform codes of `bits`, with the
/// granularity rule resolved on the matrix as stored (`out × in`, so `group:G` groups along
/// the input) and the parameter storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Candidate {
    /// Code width, 2 to 8.
    pub bits: u8,
    /// Which weights share a scale and offset.
    pub granularity: GranularityRule,
    /// How the scales and offsets are stored.
    pub param_dtype: ParamDtype,
}

impl core::fmt::Display for Candidate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} bits, {}, {} parameters", self.bits, self.granularity, self.param_dtype)
    }
}

impl Candidate {
    /// The method this candidate is for a matrix of `shape`.
    ///
    /// # Errors
    /// The core's errors for a width, granularity or storage that does not apply.
    pub fn method(&self, shape: &[usize]) -> Result<quant_core::Method> {
        let params = MethodParams {
            bits: self.bits,
            granularity: self.granularity.resolve(shape)?,
            param_dtype: self.param_dtype,
            ..MethodParams::default()
        };
        Ok(params.check()?)
    }

    /// Every combination of the widths and granularities, with `f32` parameters.
    pub fn grid(bits: &[u8], granularities: &[GranularityRule]) -> Vec<Candidate> {
        bits.iter()
            .flat_map(|&b| granularities.iter().map(move |&g| Candidate { bits: b, granularity: g, param_dtype: ParamDtype::default() }))
            .collect()
    }
}

/// How the candidates' codes are chosen, so that `d = Q(W) − W` is the perturbation the
/// quantized checkpoint will have.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CandidateRounding {
    /// Round to nearest (the quantizer's own codes).
    #[default]
    Nearest,
    /// Importance-weighted fits ([`quant_core::quantize_weighted`]) with each matrix's
    /// per-input importance (the diagonal of `XᵀX` per token, from [`InputGrams::importance`]
    /// or an imatrix file); matrices without one are rounded to nearest.
    Weighted {
        /// The per-input importance.
        importance: std::sync::Arc<Importance>,
    },
    /// GPTQ with each matrix's input Gram matrix (`Bert::input_grams` of calibration text);
    /// matrices without one are rounded to nearest.
    Gptq {
        /// The input Gram matrices.
        grams: std::sync::Arc<InputGrams>,
        /// GPTQ's settings.
        params: GptqParams,
    },
}

impl CandidateRounding {
    /// `"nearest"`, `"weighted"` or `"gptq"`, as the report and the command line spell it.
    pub fn name(&self) -> &'static str {
        match self {
            CandidateRounding::Nearest => "nearest",
            CandidateRounding::Weighted { .. } => "weighted",
            CandidateRounding::Gptq { .. } => "gptq",
        }
    }

    /// `method` applied to the matrix `w` (`out × in`) named `name`: by GPTQ or the
    /// importance-weighted fit when the rounding says so, the matrix has input statistics and
    /// the method is uniform; otherwise by the method itself.
    ///
    /// # Errors
    /// The core's errors; GPTQ's ([`quant_ptq::gptq`]).
    pub fn quantize(&self, name: &str, w: ndarray::ArrayView2<'_, f32>, method: &quant_core::Method) -> Result<quant_core::Quantized<f32>> {
        Ok(self.quantize_all(name, w, core::slice::from_ref(method))?.remove(0))
    }

    /// [`quantize`](Self::quantize) with each of `methods`, the layer Hessian prepared once.
    ///
    /// # Errors
    /// As [`quantize`](Self::quantize).
    pub fn quantize_all(
        &self,
        name: &str,
        w: ndarray::ArrayView2<'_, f32>,
        methods: &[quant_core::Method],
    ) -> Result<Vec<quant_core::Quantized<f32>>> {
        let prepared = match self {
            CandidateRounding::Gptq { grams, params } if methods.iter().any(|m| matches!(m, quant_core::Method::Uniform(_))) => {
                grams.get(name).map(|h| quant_ptq::GptqHessian::new(h.view(), params)).transpose()?
            }
            _ => None,
        };
        let importance: Option<Vec<f32>> = match self {
            CandidateRounding::Weighted { importance } => importance.get(name).map(|h| h.iter().map(|&v| v as f32).collect()),
            _ => None,
        };
        methods
            .iter()
            .map(|method| match (&prepared, &importance, method) {
                (Some(p), _, quant_core::Method::Uniform(spec)) => Ok(quant_core::Quantized::Uniform(p.quantize(w, spec)?)),
                (_, Some(h), quant_core::Method::Uniform(spec)) => {
                    Ok(quant_core::Quantized::Uniform(quant_core::quantize_weighted(&w, spec, h)?))
                }
                _ => Ok(method.quantize(&w)?),
            })
            .collect()
    }
}

/// Parameters of [`bert_sensitivity`] (a record; checked when run).
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `subsets` | 10 | calibration subsets (Q-BERT's choice) | `≥ 1` |
/// | `per_subset` | 32 | sentences per subset | `≥ 1` |
/// | `seed` | 0 | the choice and split of the sentences, every solver start and probe | any |
/// | `lanczos_tol` | 1e-3 | relative residual of each top eigenvalue | `(0, 1)` |
/// | `trace_budget` | 9 | Hutch++'s budget per matrix and subset: a third block products (the sketch), the rest quadratic forms | `≥ 3` |
/// | `candidates` | 2, 3, 4, 6, 8 bits × groups of 32 and 128 | the quantizations scored | non-empty |
/// | `rounding` | nearest | how the candidates' codes are chosen | nearest, importance-weighted or GPTQ with input statistics |
/// | `layer_blocks` | false | also Q-BERT's grouping: each encoder layer's whole Hessian block | |
#[derive(Debug, Clone, PartialEq)]
pub struct SensitivityParams {
    /// Calibration subsets.
    pub subsets: usize,
    /// Sentences per subset.
    pub per_subset: usize,
    /// Seed of the sentence choice and split, the Lanczos starts and the Hutch++ probes.
    pub seed: u64,
    /// Relative residual tolerance of the top eigenvalues.
    pub lanczos_tol: f64,
    /// Hutch++'s budget per matrix and subset: a third block products (the sketch), two
    /// thirds quadratic forms (the two trace terms; forward mode only).
    pub trace_budget: usize,
    /// The candidate quantizations.
    pub candidates: Vec<Candidate>,
    /// How the candidates' codes are chosen.
    pub rounding: CandidateRounding,
    /// Also the top eigenvalues of each encoder layer's Hessian block (all the layer's
    /// measured matrices as one block, Q-BERT's grouping) per subset, with their Ω
    /// ([`SensitivityReport::layers`]).
    pub layer_blocks: bool,
}

impl Default for SensitivityParams {
    fn default() -> Self {
        Self {
            subsets: 10,
            per_subset: 32,
            seed: 0,
            lanczos_tol: 1e-3,
            trace_budget: 9,
            candidates: Candidate::grid(&[2, 3, 4, 6, 8], &[GranularityRule::Group { size: 32 }, GranularityRule::Group { size: 128 }]),
            rounding: CandidateRounding::Nearest,
            layer_blocks: false,
        }
    }
}

impl SensitivityParams {
    /// Checks the ranges above.
    ///
    /// # Errors
    /// [`QbertError::InvalidParameter`], [`QbertError::Empty`] for no candidates.
    pub fn check(self) -> Result<Self> {
        let bad = |what: &'static str, value: f64| Err(QbertError::InvalidParameter { what, value });
        if self.subsets == 0 {
            return bad("subsets", 0.0);
        }
        if self.per_subset == 0 {
            return bad("per_subset", 0.0);
        }
        if !(self.lanczos_tol > 0.0 && self.lanczos_tol < 1.0) {
            return bad("lanczos_tol", self.lanczos_tol);
        }
        if self.trace_budget < 3 {
            return bad("trace_budget", self.trace_budget as f64);
        }
        if self.candidates.is_empty() {
            return Err(QbertError::Empty { what: "candidates" });
        }
        Ok(self)
    }
}

/// A candidate's effect on one matrix.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CandidateSensitivity {
    /// The candidate.
    pub candidate: Candidate,
    /// Bits per weight of the quantized matrix, its parameters included.
    pub bits_per_weight: f64,
    /// `‖d‖²` for `d = Q(W) − W`.
    pub perturbation: f64,
    /// `½ dᵀ H d` over all the calibration sentences used (the loss's second-order increase).
    pub quadratic: f64,
    /// The loss at `W₀ + d` (the measured increase: the loss is 0 at `W₀`).
    pub measured: f64,
}

/// One matrix's sensitivity.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MatrixSensitivity {
    /// The tensor's name in the checkpoint.
    pub name: String,
    /// Its shape as stored (`out × in`).
    pub shape: Vec<usize>,
    /// The top eigenvalue of its Hessian block on each subset (negative values are kept).
    pub eigenvalues: Vec<f64>,
    /// Whether each subset's Lanczos run met its tolerance.
    pub converged: Vec<bool>,
    /// Mean of `eigenvalues`.
    pub mean: f64,
    /// Population standard deviation of `eigenvalues`.
    pub std: f64,
    /// Q-BERT's `Ω = |mean| + std`.
    pub omega: f64,
    /// HAWQ-V2's `Tr(H_i) / n_i`, averaged over the subsets (Hutch++ on each).
    pub average_trace: f64,
    /// The standard error of `average_trace` (the probes' part, combined over subsets).
    pub average_trace_std_error: f64,
    /// Each candidate's effect.
    pub candidates: Vec<CandidateSensitivity>,
}

/// One encoder layer's sensitivity under Q-BERT's grouping: the top eigenvalue of the Hessian
/// block of all its measured matrices together.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LayerSensitivity {
    /// The layer (the checkpoint's prefix, `encoder.layer.3` for example).
    pub name: String,
    /// The matrices in the block, in the model's order.
    pub tensors: Vec<String>,
    /// The block's parameters.
    pub params: usize,
    /// The top eigenvalue of the block on each subset (negative values are kept).
    pub eigenvalues: Vec<f64>,
    /// Whether each subset's Lanczos run met its tolerance.
    pub converged: Vec<bool>,
    /// Mean of `eigenvalues`.
    pub mean: f64,
    /// Population standard deviation of `eigenvalues`.
    pub std: f64,
    /// Q-BERT's `Ω = |mean| + std`.
    pub omega: f64,
}

/// How many rows of an embedding table the calibration sentences reach: the rows of tokens,
/// positions or segments they never use have no measured curvature.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EmbeddingRows {
    /// The table (as the model names it).
    pub name: String,
    /// Its rows.
    pub rows: usize,
    /// Rows the calibration sentences use.
    pub used: usize,
}

impl EmbeddingRows {
    /// The three embedding tables' row use by `sentences`: distinct token ids, positions up
    /// to the longest sentence, distinct segment ids.
    pub fn of(config: &quant_models::bert::BertConfig, sentences: &[quant_models::bert::Sentence]) -> Vec<Self> {
        let distinct = |ids: &mut dyn Iterator<Item = u32>, rows: usize| {
            let mut seen = vec![false; rows];
            ids.filter(|&i| (i as usize) < rows).for_each(|i| seen[i as usize] = true);
            seen.iter().filter(|&&b| b).count()
        };
        let longest = sentences.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        vec![
            EmbeddingRows {
                name: "embeddings.word_embeddings.weight".into(),
                rows: config.vocab_size,
                used: distinct(&mut sentences.iter().flat_map(|s| s.ids.iter().copied()), config.vocab_size),
            },
            EmbeddingRows {
                name: "embeddings.position_embeddings.weight".into(),
                rows: config.max_position_embeddings,
                used: longest.min(config.max_position_embeddings),
            },
            EmbeddingRows {
                name: "embeddings.token_type_embeddings.weight".into(),
                rows: config.type_vocab_size,
                used: distinct(&mut sentences.iter().flat_map(|s| s.type_ids.iter().copied()), config.type_vocab_size),
            },
        ]
    }
}

/// Work and time of one stage.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Stage {
    /// What the stage computes.
    pub name: String,
    /// Block Hessian-vector products (a forward-mode and a reverse pass each).
    pub block_products: usize,
    /// Quadratic forms `dᵀ H d` (a forward-mode pass each).
    pub quadratic_forms: usize,
    /// Loss evaluations (a forward pass over the chosen sentences each, from the changed
    /// matrix's layer up).
    pub loss_evaluations: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The stages' names ([`Stage::name`]).
const EIGENVALUES: &str = "top eigenvalues (Lanczos)";
const LAYER_EIGENVALUES: &str = "top eigenvalues per layer (Lanczos)";
const TRACES: &str = "traces (Hutch++) and quadratic forms";
const MEASURED: &str = "measured losses";

/// What [`bert_sensitivity_with_progress`] reports as it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// The stage named `stage` (a [`Stage::name`]) has finished its work on `done` of its
    /// `of` calibration subsets (the eigenvalue and trace stages, which go subset by subset).
    Subset {
        /// The stage's name.
        stage: &'a str,
        /// Subsets done.
        done: usize,
        /// Subsets in all.
        of: usize,
    },
    /// A stage has ended (the values the report lists).
    Stage(&'a Stage),
}

/// Reports `stage` as ended, then keeps it for the report.
fn end_stage(stages: &mut Vec<Stage>, on_progress: &mut impl FnMut(Progress<'_>), stage: Stage) {
    on_progress(Progress::Stage(&stage));
    stages.push(stage);
}

/// One matrix's trace estimate and quadratic forms on one subset.
struct SubsetTerms {
    trace: f64,
    std_error: f64,
    products: usize,
    /// The trace estimate's own quadratic forms.
    trace_forms: usize,
    forms: Array1<f32>,
}

/// The result of [`bert_sensitivity`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SensitivityReport {
    /// Calibration sentences used (`subsets × per_subset`).
    pub sentences: usize,
    /// Their tokens.
    pub tokens: usize,
    /// Subsets.
    pub subsets: usize,
    /// The seed.
    pub seed: u64,
    /// Per matrix, in the model's order.
    pub matrices: Vec<MatrixSensitivity>,
    /// Per stage: eigenvalues, traces and quadratic forms, measured losses.
    pub stages: Vec<Stage>,
    /// How the candidates' codes were chosen (`"nearest"` or `"gptq"`).
    #[cfg_attr(feature = "serde", serde(default = "nearest"))]
    pub rounding: String,
    /// How many rows of each embedding table the calibration sentences use (empty in reports
    /// written before it was recorded).
    #[cfg_attr(feature = "serde", serde(default))]
    pub embedding_rows: Vec<EmbeddingRows>,
    /// Per encoder layer, Q-BERT's grouping ([`SensitivityParams::layer_blocks`]; empty
    /// without it). A plan's Ω metrics then take each matrix's layer Ω.
    #[cfg_attr(feature = "serde", serde(default))]
    pub layers: Vec<LayerSensitivity>,
}

#[cfg(feature = "serde")]
fn nearest() -> String {
    "nearest".into()
}

/// Sensitivities of the tensors `tensors` (indices into [`Bert::blocks`], for example
/// [`Bert::weight_matrices`]) of `model` on `subsets × per_subset` sentences chosen from
/// `calibration` by a seeded permutation and split into consecutive subsets.
///
/// # Errors
/// [`QbertError::TooFewSentences`]; the parameters' errors; the model's and the engine's.
pub fn bert_sensitivity(
    model: &Bert<f32>,
    calibration: &TokenBatch,
    tensors: &[usize],
    params: &SensitivityParams,
) -> Result<SensitivityReport> {
    bert_sensitivity_with_progress(model, calibration, tensors, params, |_| {})
}

/// [`bert_sensitivity`], calling `on_progress` as it runs: [`Progress::Subset`] each time
/// the eigenvalue or trace stage finishes another calibration subset, and [`Progress::Stage`]
/// with each [`Stage`] as it ends (the same values, in the same order, as the report's
/// [`SensitivityReport::stages`]). On MiniLM with the defaults the stages take minutes each,
/// and a command-line tool can say where it is. The results are the same.
///
/// # Errors
/// As [`bert_sensitivity`]; a stage that fails is not reported as ended.
pub fn bert_sensitivity_with_progress(
    model: &Bert<f32>,
    calibration: &TokenBatch,
    tensors: &[usize],
    params: &SensitivityParams,
    mut on_progress: impl FnMut(Progress<'_>),
) -> Result<SensitivityReport> {
    let params = params.clone().check()?;
    let (subsets, per) = (params.subsets, params.per_subset);
    let needed = subsets * per;
    if calibration.len() < needed {
        return Err(QbertError::TooFewSentences { needed, subsets, per_subset: per, available: calibration.len() });
    }
    let order = rng::permutation(calibration.len(), params.seed);
    let chosen = TokenBatch::new(order[..needed].iter().map(|&i| calibration.sentences()[i].clone()).collect())?;
    let tokens = chosen.tokens();
    let embedding_rows = EmbeddingRows::of(model.config(), chosen.sentences());
    let loss = SelfDistillation::with_variables(model.clone(), chosen, tensors)?;
    let w0 = loss.weights().to_owned();
    let parts = split_subsets(needed, subsets, params.seed)?;
    let mut stages = Vec::new();

    // Stage 1: top eigenvalues (Lanczos) on every subset.
    let start = Instant::now();
    let lanczos = Lanczos::builder().tol(params.lanczos_tol).smallest(false).check()?;
    let qp = QbertParams { subsets, seed: params.seed, solver: TopEigen::Lanczos(lanczos), product: Product::Hessian, warm_start: true };
    let all: Vec<usize> = (0..needed).collect();
    let blocks: Vec<usize> = (0..loss.blocks().len()).collect();
    let stats = qbert_statistics_with_progress(&loss, w0.view(), &all, &blocks, &qp, |done, of| {
        on_progress(Progress::Subset { stage: EIGENVALUES, done, of })
    })?;
    let products: usize = stats.iter().map(|s| s.hvps).sum();
    end_stage(
        &mut stages,
        &mut on_progress,
        Stage {
            name: EIGENVALUES.into(),
            block_products: products,
            quadratic_forms: 0,
            loss_evaluations: 0,
            seconds: start.elapsed().as_secs_f64(),
        },
    );

    // Q-BERT's grouping: the same on one block per encoder layer.
    let mut layers = Vec::new();
    if params.layer_blocks {
        let start = Instant::now();
        let grouped = loss.clone().grouped_by_layer();
        let groups: Vec<usize> = (0..grouped.blocks().len()).filter(|&b| grouped.block_layer(b).is_some()).collect();
        let stats = qbert_statistics_with_progress(&grouped, w0.view(), &all, &groups, &qp, |done, of| {
            on_progress(Progress::Subset { stage: LAYER_EIGENVALUES, done, of })
        })?;
        end_stage(
            &mut stages,
            &mut on_progress,
            Stage {
                name: LAYER_EIGENVALUES.into(),
                block_products: stats.iter().map(|s| s.hvps).sum(),
                quadratic_forms: 0,
                loss_evaluations: 0,
                seconds: start.elapsed().as_secs_f64(),
            },
        );
        for (st, &g) in stats.into_iter().zip(&groups) {
            let tensors = grouped.block_tensors(g).into_iter().map(|t| model.blocks()[t].name().to_string()).collect();
            layers.push(LayerSensitivity {
                name: st.name,
                tensors,
                params: st.params,
                eigenvalues: st.eigenvalues,
                converged: st.converged,
                mean: st.mean,
                std: st.std,
                omega: st.omega,
            });
        }
    }

    // The candidates' perturbations d = Q(W) − W, per matrix (rows: candidates).
    let mut shapes = Vec::with_capacity(blocks.len());
    let mut perturbations: Vec<Array2<f32>> = Vec::with_capacity(blocks.len());
    let mut bits_per_weight: Vec<Vec<f64>> = Vec::with_capacity(blocks.len());
    for block in loss.blocks() {
        let shape = model.tensor_shape(block.name()).ok_or(QbertError::Empty { what: "tensor of that name" })?;
        let w = w0.slice(s![block.range()]);
        let wm =
            w.to_shape(shape.as_slice()).map_err(|_| QbertError::InvalidParameter { what: "tensor shape", value: block.len() as f64 })?;
        let w2 = wm
            .view()
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| QbertError::InvalidParameter { what: "matrix rank", value: shape.len() as f64 })?;
        let methods = params.candidates.iter().map(|c| c.method(&shape)).collect::<Result<Vec<_>>>()?;
        let quantized = params.rounding.quantize_all(block.name(), w2, &methods)?;
        let mut d = Array2::zeros((params.candidates.len(), block.len()));
        let mut bpw = Vec::with_capacity(params.candidates.len());
        for (c, q) in quantized.iter().enumerate() {
            bpw.push(q.bits_per_weight());
            let deq = q.dequantize();
            d.row_mut(c).iter_mut().zip(deq.iter().zip(w.iter())).for_each(|(o, (&a, &b))| *o = a - b);
        }
        shapes.push(shape);
        perturbations.push(d);
        bits_per_weight.push(bpw);
    }

    // Stage 2: traces (Hutch++) and quadratic forms, one preparation per subset.
    let start = Instant::now();
    let nb = blocks.len();
    let mut trace_sum = vec![0.0f64; nb];
    let mut trace_var = vec![0.0f64; nb];
    let mut quad = vec![vec![0.0f64; params.candidates.len()]; nb];
    let (mut trace_products, mut forms) = (0usize, 0usize);
    for (si, subset) in parts.iter().enumerate() {
        let curvature = quant_hessian::Autodiff::curvature(&loss, w0.view(), quant_hessian::Batch::Indices(subset))?;
        let job = |&b: &usize| -> Result<SubsetTerms> {
            let op = BlockOperator::new(&*curvature, Product::Hessian, b)?;
            let hpp = HutchPlusPlus::new(params.trace_budget, qp.pair_seed(b, si))?;
            let t = op.hutch_plus_plus(&hpp)?;
            let d = &perturbations[b];
            let mut q = Array1::zeros(d.nrows());
            curvature.block_quadratic_forms_into(Product::Hessian, b, d.view(), q.view_mut())?;
            Ok(SubsetTerms { trace: t.trace, std_error: t.std_error, products: t.hvps, trace_forms: t.quadratic_forms, forms: q })
        };
        #[cfg(feature = "rayon")]
        let results: Vec<Result<SubsetTerms>> = {
            use rayon::prelude::*;
            blocks.par_iter().map(job).collect()
        };
        #[cfg(not(feature = "rayon"))]
        let results: Vec<Result<SubsetTerms>> = blocks.iter().map(job).collect();
        for (b, r) in results.into_iter().enumerate() {
            let SubsetTerms { trace: t, std_error: se, products: hvps, trace_forms, forms: q } = r?;
            trace_sum[b] += t;
            trace_var[b] += se * se;
            trace_products += hvps;
            forms += q.len() + trace_forms;
            for (acc, &v) in quad[b].iter_mut().zip(&q) {
                *acc += f64::from(v);
            }
        }
        on_progress(Progress::Subset { stage: TRACES, done: si + 1, of: parts.len() });
    }
    end_stage(
        &mut stages,
        &mut on_progress,
        Stage {
            name: TRACES.into(),
            block_products: trace_products,
            quadratic_forms: forms,
            loss_evaluations: 0,
            seconds: start.elapsed().as_secs_f64(),
        },
    );

    // Stage 3: the measured loss at W₀ + d on all the chosen sentences.
    let start = Instant::now();
    let pairs: Vec<(usize, usize)> = (0..nb).flat_map(|b| (0..params.candidates.len()).map(move |c| (b, c))).collect();
    // Each loss runs from the changed matrix's layer up; the layers below keep their inputs.
    let inputs = loss.layer_inputs(quant_hessian::Batch::All)?;
    let measure = |&(b, c): &(usize, usize)| -> Result<f64> {
        let values = &w0.slice(s![loss.blocks()[b].range()]) + &perturbations[b].row(c);
        Ok(f64::from(loss.loss_with_block(&inputs, b, values.view())?))
    };
    #[cfg(feature = "rayon")]
    let measured: Vec<Result<f64>> = {
        use rayon::prelude::*;
        pairs.par_iter().map(measure).collect()
    };
    #[cfg(not(feature = "rayon"))]
    let measured: Vec<Result<f64>> = pairs.iter().map(measure).collect();
    let measured: Vec<f64> = measured.into_iter().collect::<Result<_>>()?;
    end_stage(
        &mut stages,
        &mut on_progress,
        Stage {
            name: MEASURED.into(),
            block_products: 0,
            quadratic_forms: 0,
            loss_evaluations: pairs.len(),
            seconds: start.elapsed().as_secs_f64(),
        },
    );

    let s_count = subsets as f64;
    let matrices = stats
        .into_iter()
        .enumerate()
        .map(|(b, st)| {
            let n = st.params as f64;
            let candidates = params
                .candidates
                .iter()
                .enumerate()
                .map(|(c, &candidate)| CandidateSensitivity {
                    candidate,
                    bits_per_weight: bits_per_weight[b][c],
                    perturbation: perturbations[b].row(c).iter().map(|&x| f64::from(x) * f64::from(x)).sum(),
                    // The loss is a mean over sentences and the subsets are of equal size: the
                    // Hessian on all of them is the mean of the subsets'.
                    quadratic: 0.5 * quad[b][c] / s_count,
                    measured: measured[b * params.candidates.len() + c],
                })
                .collect();
            MatrixSensitivity {
                name: st.name,
                shape: shapes[b].clone(),
                eigenvalues: st.eigenvalues,
                converged: st.converged,
                mean: st.mean,
                std: st.std,
                omega: st.omega,
                average_trace: trace_sum[b] / s_count / n,
                average_trace_std_error: trace_var[b].sqrt() / s_count / n,
                candidates,
            }
        })
        .collect();
    Ok(SensitivityReport {
        sentences: needed,
        tokens,
        subsets,
        seed: params.seed,
        matrices,
        stages,
        rounding: params.rounding.name().into(),
        embedding_rows,
        layers,
    })
}

/// What [`gptq_sequential`] made: every matrix it quantized, and the layer Hessians (`XᵀX`)
/// it used for each.
#[derive(Debug, Clone)]
pub struct SequentialGptq {
    /// The quantized matrices by name.
    pub quantized: std::collections::BTreeMap<String, quant_core::Quantized<f32>>,
    /// For each quantized matrix, `XᵀX` of its inputs as they were when it was rounded.
    pub grams: InputGrams,
}

/// GPTQ in sequential mode: the encoder's layers in order, each layer's matrices rounded with
/// the layer Hessians of inputs that already passed the quantized earlier layers (so the
/// rounding of layer `l` compensates what layers `0..l` lost). Within a layer all six
/// matrices take the statistics of the same pass. `method_for` gives each matrix's method by
/// name and shape (`None` leaves it unquantized); uniform methods are rounded by GPTQ, the
/// others by their own quantizer, and every quantized matrix's dequantized values replace it
/// before the next layer's statistics are collected. One forward pass over `batch` per layer
/// (in chunks of `chunk` sentences), with the Gram matrices of that layer's inputs only.
///
/// # Errors
/// The model's errors on the batch, the core's and GPTQ's errors, and
/// [`QbertError::Empty`] for a matrix the model does not hold.
pub fn gptq_sequential(
    model: &Bert<f32>,
    batch: &TokenBatch,
    chunk: usize,
    params: &GptqParams,
    method_for: impl Fn(&str, &[usize]) -> Option<quant_core::Method>,
) -> Result<SequentialGptq> {
    let mut current = model.clone();
    let mut out = SequentialGptq { quantized: std::collections::BTreeMap::new(), grams: InputGrams::default() };
    for l in 0..model.config().num_hidden_layers {
        // The layer's statistics (of its six matrices only), shared by its six matrices.
        let grams = std::sync::Arc::new(current.layer_input_grams(batch, chunk, l..l + 1)?);
        let rounding = CandidateRounding::Gptq { grams: grams.clone(), params: *params };
        for name in &grams.names {
            let shape = current.tensor_shape(name).ok_or(QbertError::Empty { what: "tensor of that name" })?;
            let Some(method) = method_for(name, &shape) else { continue };
            let block = current.blocks().iter().find(|b| b.name() == name).ok_or(QbertError::Empty { what: "tensor of that name" })?;
            let w = current.weights().slice(s![block.range()]).to_owned();
            let w2 = w
                .into_shape_with_order((shape[0], shape[1]))
                .map_err(|_| QbertError::InvalidParameter { what: "matrix rank", value: shape.len() as f64 })?;
            let h = grams.get(name).ok_or(QbertError::Empty { what: "input statistics of that matrix" })?;
            let q = rounding.quantize(name, w2.view(), &method)?;
            let deq = q.dequantize();
            current.set_tensor(name, deq.as_slice().ok_or(QbertError::Empty { what: "contiguous dequantized tensor" })?)?;
            out.grams.names.push(name.clone());
            out.grams.grams.push(h.clone());
            out.grams.tokens = grams.tokens;
            out.quantized.insert(name.clone(), q);
        }
    }
    Ok(out)
}
