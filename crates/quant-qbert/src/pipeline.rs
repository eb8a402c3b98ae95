//! The Q-BERT pipeline: per-layer Hessian sensitivity, bit allocation, group-wise
//! quantization, activation quantization, optional quantization-aware fine-tuning, and a
//! report.

use core::fmt;

use ndarray::{Array1, Array2, ArrayView1, ArrayViewMut2, s};
use quant_core::{ErrorStats, Float, Granularity, KMeansSpec, MethodKind, MethodParams, RangeObserver, Scheme, UniformSpec};
use quant_group::{Method, OutputGroupCodebook, quantize_output_groups};
use quant_hessian::{Autodiff, Batch, MatrixBlock, PowerIteration, QbertParams, Real, TopEigen, qbert_statistics_for};
use quant_mixed::{LayerOption, LayerSpec, Problem, qbert_ranking};
use quant_models::{Encoder, Mlp};

pub use quant_mixed::Budget;

use crate::error::{QbertError, Result};
use crate::train::{Adam, TrainParams, shuffle, train_qat};

/// A model the pipeline can quantize: an [`Autodiff`] model that names its weight matrices
/// and evaluates accuracy with an activation hook.
pub trait QuantizableModel<F: Float>: Autodiff<F> + Sync {
    /// The weight-matrix blocks with their `fan_in × fan_out` shapes as stored, in forward
    /// order (the first is treated as the embedding, the last as the classifier). The
    /// pipeline hands the group quantizers their transposes (`out × in`).
    fn weight_blocks(&self) -> Vec<MatrixBlock>;
    /// Attention heads per projection (1 for models without attention).
    fn heads(&self) -> usize {
        1
    }
    /// Accuracy on `batch` with `hook(site, input)` applied to the input of every linear map.
    ///
    /// Returns the same `Result` as [`Autodiff`]'s methods, so one error type serves a whole
    /// model implementation.
    ///
    /// # Errors
    /// The model's errors.
    fn accuracy_hooked(
        &self,
        w: ArrayView1<'_, F>,
        batch: Batch<'_>,
        hook: &mut dyn FnMut(usize, ArrayViewMut2<'_, F>),
    ) -> quant_hessian::Result<f64>;
}

impl<F: Real<Base = F>> QuantizableModel<F> for Encoder<F> {
    fn weight_blocks(&self) -> Vec<MatrixBlock> {
        Encoder::weight_blocks(self)
    }
    fn heads(&self) -> usize {
        self.config().heads
    }
    fn accuracy_hooked(
        &self,
        w: ArrayView1<'_, F>,
        batch: Batch<'_>,
        hook: &mut dyn FnMut(usize, ArrayViewMut2<'_, F>),
    ) -> quant_hessian::Result<f64> {
        self.accuracy_with(w, batch, hook)
    }
}

impl<F: Real<Base = F>> QuantizableModel<F> for Mlp<F> {
    fn weight_blocks(&self) -> Vec<MatrixBlock> {
        Mlp::weight_blocks(self)
    }
    fn accuracy_hooked(
        &self,
        w: ArrayView1<'_, F>,
        batch: Batch<'_>,
        hook: &mut dyn FnMut(usize, ArrayViewMut2<'_, F>),
    ) -> quant_hessian::Result<f64> {
        self.accuracy_with(w, batch, hook)
    }
}

/// How finely each weight matrix is split into groups of output units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Grouping {
    /// One range per matrix.
    PerTensor,
    /// One range per attention head (per `fan_out / heads` output units).
    PerHead,
    /// `k` groups per head.
    Finer(usize),
}

impl Grouping {
    /// The group count for a matrix with `fan_out` outputs: the largest count `≤` the asked
    /// one that divides `fan_out`.
    fn groups(self, heads: usize, fan_out: usize) -> usize {
        let want = match self {
            Grouping::PerTensor => 1,
            Grouping::PerHead => heads,
            Grouping::Finer(k) => heads * k,
        };
        (1..=want.min(fan_out)).rev().find(|g| fan_out.is_multiple_of(*g)).unwrap_or(1)
    }

    fn label(self, heads: usize) -> String {
        match self {
            Grouping::PerTensor => "1".into(),
            Grouping::PerHead => format!("{heads} (head)"),
            Grouping::Finer(k) => format!("{} ({k}/head)", heads * k),
        }
    }
}

/// Validated parameters of the [`QbertPipeline`].
///
/// | Name | Default | Purpose |
/// |---|---|---|
/// | `subsets` | 10 | data subsets for the eigenvalue statistics (Q-BERT) |
/// | `subset_size` | 64 | training samples per subset (`None`: split the whole training set) |
/// | `power` | tol 1e-3, 100 iterations | the top-eigenvalue solver |
/// | `direct_bits` | 8, 4, 3, 2 | widths of the direct-quantization study |
/// | `groupings` | per tensor, per head, 4 per head | group settings of the study |
/// | `mixed` | (2, 3), (2, 4) | mixed-precision pairs: the more sensitive `share` get the higher width |
/// | `share` | 0.5 | fraction of quantized layers given the higher width |
/// | `random_draws` | 5 | random assignments averaged for the baseline |
/// | `method` | uniform | the quantizer applied per group |
/// | `embedding_bits` | 8 | width of the first weight matrix (Q-BERT keeps embeddings at 8 bits) |
/// | `keep_classifier` | true | leave the last weight matrix in f32 |
/// | `activation_bits` | 8 | fake-quantized inputs of every linear map (asymmetric, EMA ranges) |
/// | `ema_momentum` | 0.9 | momentum of the activation range observers |
/// | `finetune` | 3 epochs, lr 5e-4 | quantization-aware fine-tuning (`None` to skip): with uniform groups, the STE on latent weights (ranges re-derived from them each step); with k-means groups, the centroids learned with the codes fixed (Deep Compression) |
/// | `seed` | 0 | seed of subsets, solvers, random baselines and fine-tuning |
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PipelineParams {
    /// Data subsets for the statistics.
    pub subsets: usize,
    /// Samples per subset (a seeded draw from the training set); `None` splits all of it.
    pub subset_size: Option<usize>,
    /// Power-iteration tolerance.
    pub power_tol: f64,
    /// Power-iteration cap.
    pub power_max_iter: usize,
    /// Widths of the direct study.
    pub direct_bits: Vec<u8>,
    /// Groupings of the direct study.
    pub groupings: Vec<Grouping>,
    /// Mixed-precision (low, high) pairs.
    pub mixed: Vec<(u8, u8)>,
    /// Share of layers at the high width.
    pub share: f64,
    /// Random baselines averaged.
    pub random_draws: usize,
    /// The per-group quantizer.
    pub method: MethodKind,
    /// Width of the embedding matrix (`None`: quantize it like the others).
    pub embedding_bits: Option<u8>,
    /// Keep the classifier in f32.
    pub keep_classifier: bool,
    /// Activation width.
    pub activation_bits: u8,
    /// EMA momentum of activation ranges.
    pub ema_momentum: f64,
    /// Fine-tuning, if any.
    pub finetune: Option<TrainParams>,
    /// Seed.
    pub seed: u64,
}

impl Default for PipelineParams {
    fn default() -> Self {
        Self {
            subsets: 10,
            subset_size: Some(64),
            power_tol: 1e-3,
            power_max_iter: 100,
            direct_bits: vec![8, 4, 3, 2],
            groupings: vec![Grouping::PerTensor, Grouping::PerHead, Grouping::Finer(4)],
            mixed: vec![(2, 3), (2, 4)],
            share: 0.5,
            random_draws: 5,
            method: MethodKind::Uniform,
            embedding_bits: Some(8),
            keep_classifier: true,
            activation_bits: 8,
            ema_momentum: 0.9,
            finetune: Some(TrainParams { epochs: 3, batch_size: 64, lr: 5e-4, seed: 0 }),
            seed: 0,
        }
    }
}

impl PipelineParams {
    /// Checks the table's ranges and returns the parameters.
    ///
    /// # Errors
    /// [`QbertError::InvalidParameter`] for zero subsets, a tolerance that is not positive, widths
    /// outside `1..=8`, a share outside `[0, 1]`, a momentum outside `[0, 1)`, or bad
    /// fine-tuning parameters.
    pub fn check(self) -> Result<Self> {
        let bad = |what, value: f64| Err(QbertError::InvalidParameter { what, value });
        if self.subsets == 0 {
            return bad("subsets", 0.0);
        }
        if self.subset_size == Some(0) {
            return bad("subset_size", 0.0);
        }
        if !(self.power_tol.is_finite() && self.power_tol > 0.0) {
            return bad("power_tol", self.power_tol);
        }
        let widths = self
            .direct_bits
            .iter()
            .chain(self.mixed.iter().flat_map(|(a, b)| [a, b]))
            .chain(self.embedding_bits.iter())
            .chain([&self.activation_bits]);
        for &b in widths {
            if !(1..=8).contains(&b) {
                return bad("bits", f64::from(b));
            }
        }
        if !(0.0..=1.0).contains(&self.share) {
            return bad("share", self.share);
        }
        if !(0.0..1.0).contains(&self.ema_momentum) {
            return bad("ema_momentum", self.ema_momentum);
        }
        if let Some(&(_, hi)) = self.mixed.iter().find(|(lo, hi)| hi <= lo) {
            return bad("mixed widths (high not above low)", f64::from(hi));
        }
        if self.groupings.iter().any(|g| matches!(g, Grouping::Finer(0))) {
            return bad("groups per head", 0.0);
        }
        if let Some(t) = self.finetune {
            t.check()?;
        }
        Ok(self)
    }
}

/// The Q-BERT pipeline with validated parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct QbertPipeline {
    params: PipelineParams,
}

/// One weight matrix's sensitivity.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LayerReport {
    /// Block name.
    pub name: String,
    /// Parameters.
    pub params: usize,
    /// Top Hessian eigenvalue of the block on each data subset.
    pub eigenvalues: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Their standard deviation.
    pub std: f64,
    /// `Ω = |mean| + std`.
    pub omega: f64,
    /// A negative eigenvalue was seen (not at a local minimum).
    pub negative: bool,
    /// Width in the first mixed-precision setting by Ω (`None`: kept in f32).
    pub mixed_bits: Option<u8>,
    /// Groups in that setting.
    pub groups: usize,
    /// Bytes of the matrix in that setting (codes and tables, or f32).
    pub bytes: u64,
    /// Signal-to-quantization-noise ratio of the matrix in that setting, in dB (`None`
    /// when kept in f32).
    pub sqnr_db: Option<f64>,
}

/// One row of the study.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StudyRow {
    /// How widths were chosen (`"f32"`, `"direct"`, `"mixed by Omega"`, `"mixed at random"`,
    /// `"exact optimum"`).
    pub method: String,
    /// Weight widths (`"4"`, `"2/3"`).
    pub bits: String,
    /// Groups per matrix.
    pub groups: String,
    /// Model size in bytes (quantized matrices with their tables, everything else f32).
    pub bytes: u64,
    /// f32 size over `bytes`.
    pub compression: f64,
    /// Test accuracy, weights quantized.
    pub accuracy: f64,
    /// Test accuracy, weights and activations quantized.
    pub accuracy_act: f64,
    /// Test accuracy after quantization-aware fine-tuning (weights and activations), if run.
    pub finetuned: Option<f64>,
}

/// What the pipeline found.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QbertReport {
    /// Per weight matrix sensitivity.
    pub layers: Vec<LayerReport>,
    /// The study, the f32 model first.
    pub rows: Vec<StudyRow>,
    /// Hessian-vector products spent on the statistics.
    pub hvps: usize,
    /// Activation width used in `accuracy_act`.
    pub activation_bits: u8,
}

/// How [`QbertPipeline::quantize`] chooses each matrix's width.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Strategy {
    /// Every allocated matrix at this width.
    Uniform(u8),
    /// Q-BERT's ranking: the `share` of matrices with the largest Ω at `high`, the rest at `low`.
    Ranking {
        /// Width of the less sensitive matrices.
        low: u8,
        /// Width of the more sensitive ones.
        high: u8,
        /// Fraction at `high`.
        share: f64,
    },
    /// The exact least `Σ Ω·‖Q(W) − W‖²` over widths in `choices` with the whole model
    /// within the budget (bytes, or a compression ratio against f32).
    Budget {
        /// Candidate widths.
        choices: Vec<u8>,
        /// The budget for the whole model.
        budget: Budget,
    },
}

/// A model quantized by [`QbertPipeline::quantize`] (its `layers` serialise with serde).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedModel<F> {
    /// The parameters with every allocated matrix quantized and dequantized (ready for the
    /// model's forward pass).
    pub weights: Array1<F>,
    /// Per weight matrix: sensitivity, width, groups, bytes, SQNR.
    pub layers: Vec<LayerReport>,
    /// The whole model's size in bytes.
    pub bytes: u64,
    /// f32 size over `bytes`.
    pub compression: f64,
    /// Hessian-vector products spent.
    pub hvps: usize,
}

/// A width (or f32) and a group count per weight matrix.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    bits: Vec<Option<u8>>,
    groups: Vec<usize>,
}

impl QbertPipeline {
    /// A pipeline with these parameters ([`PipelineParams::check`]ed).
    ///
    /// # Errors
    /// As [`PipelineParams::check`].
    pub fn new(params: PipelineParams) -> Result<Self> {
        Ok(Self { params: params.check()? })
    }

    /// The parameters.
    pub fn params(&self) -> &PipelineParams {
        &self.params
    }

    /// Q-BERT's per-matrix statistics on the training samples (a seeded draw of
    /// `subsets × subset_size` of them, split into `subsets`).
    fn statistics<F: Float, M: QuantizableModel<F>>(
        &self,
        model: &M,
        w: ArrayView1<'_, F>,
        train_set: &[usize],
    ) -> Result<Vec<quant_hessian::BlockStats>> {
        let p = &self.params;
        let power = PowerIteration::builder().tol(p.power_tol).max_iter(p.power_max_iter).check()?;
        let qp = QbertParams { subsets: p.subsets, seed: p.seed, solver: TopEigen::Power(power), ..QbertParams::default() };
        let block_ids: Vec<usize> = model.weight_blocks().iter().map(|m| m.block).collect();
        let mut pool = train_set.to_vec();
        if let Some(size) = p.subset_size {
            shuffle(&mut pool, p.seed ^ 0x51AB);
            pool.truncate((size * p.subsets).min(pool.len()));
            pool.sort_unstable();
        }
        Ok(qbert_statistics_for(model, w, &pool, &block_ids, &qp)?)
    }

    /// The matrices the allocation decides: all but a fixed embedding and a kept classifier.
    fn free(&self, n: usize) -> Vec<usize> {
        (0..n).filter(|&i| !(i == 0 && self.params.embedding_bits.is_some() || i + 1 == n && self.params.keep_classifier)).collect()
    }

    /// Quantizes `model` for deployment: sensitivity on the `train` samples, widths by
    /// `strategy`, groups by `grouping`, the pipeline's per-group method; embedding and
    /// classifier as the parameters fix them.
    ///
    /// # Errors
    /// As [`run`](Self::run), plus [`QbertError::InvalidParameter`] for widths outside `1..=8` or
    /// a share outside `[0, 1]`, and `quant-mixed`'s `Infeasible` when no assignment fits
    /// the budget.
    pub fn quantize<F: Float, M: QuantizableModel<F>>(
        &self,
        model: &M,
        w: ArrayView1<'_, F>,
        train_set: &[usize],
        strategy: &Strategy,
        grouping: Grouping,
    ) -> Result<QuantizedModel<F>> {
        let blocks = check_inputs(model, w, &[train_set])?;
        if let Strategy::Ranking { low, high, .. } = strategy
            && low >= high
        {
            return Err(QbertError::InvalidParameter { what: "ranking widths (high not above low)", value: f64::from(*high) });
        }
        let widths: Vec<u8> = match strategy {
            Strategy::Uniform(b) => vec![*b],
            Strategy::Ranking { low, high, .. } => vec![*low, *high],
            Strategy::Budget { choices, .. } => choices.clone(),
        };
        if let Some(&b) = widths.iter().find(|b| !(1..=8).contains(*b)) {
            return Err(QbertError::InvalidParameter { what: "bits", value: f64::from(b) });
        }
        let stats = self.statistics(model, w, train_set)?;
        let free = self.free(blocks.len());
        let omegas: Vec<f64> = free.iter().map(|&i| stats[i].omega).collect();
        // No accuracy is measured here, so the test set is never read.
        let ctx = Ctx { model, w, blocks: &blocks, heads: model.heads(), p: &self.params, train: train_set, test: &[] };
        let chosen = match strategy {
            Strategy::Uniform(b) => vec![*b; free.len()],
            Strategy::Ranking { low, high, share } => qbert_ranking(&omegas, *share, *low, *high)?,
            Strategy::Budget { choices, budget } => {
                let total = match *budget {
                    Budget::Bytes(b) => b,
                    Budget::CompressionRatio(r) if r.is_finite() && r >= 1.0 => (4.0 * w.len() as f64 / r).floor() as u64,
                    Budget::CompressionRatio(r) => return Err(QbertError::InvalidParameter { what: "compression ratio", value: r }),
                    Budget::Bops(_) => return Err(QbertError::UnsupportedBudget { budget: "bit-operation" }),
                };
                ctx.exact_plan(&free, &omegas, choices, total, grouping)?
            }
        };
        let plan = ctx.mixed_plan(&free, &chosen, grouping);
        let (weights, bytes) = ctx.apply(&plan)?;
        let details = ctx.details(&plan)?;
        let layers = layer_reports(model, &blocks, &stats, &plan, &details);
        Ok(QuantizedModel {
            weights,
            layers,
            bytes,
            compression: 4.0 * w.len() as f64 / bytes as f64,
            hvps: stats.iter().map(|s| s.hvps).sum(),
        })
    }

    /// Runs the study on `model` at parameters `w` (trained), computing statistics on the
    /// `train` samples and accuracies on the `test` samples. `progress` receives one line
    /// per stage.
    ///
    /// # Errors
    /// [`QbertError::InvalidParameter`] for empty sample lists or a model with fewer than three
    /// weight matrices, and the errors of the Hessian, grouping, allocation and training
    /// stages.
    pub fn run<F: Float, M: QuantizableModel<F>>(
        &self,
        model: &M,
        w: ArrayView1<'_, F>,
        train_set: &[usize],
        test_set: &[usize],
        mut progress: impl FnMut(&str),
    ) -> Result<QbertReport> {
        let p = &self.params;
        let blocks = check_inputs(model, w, &[train_set, test_set])?;
        let heads = model.heads();
        let free = self.free(blocks.len());
        progress(&format!("Hessian statistics: top eigenvalue of {} weight matrices on {} subsets", blocks.len(), p.subsets));
        let stats = self.statistics(model, w, train_set)?;
        let hvps = stats.iter().map(|s| s.hvps).sum();
        let omegas: Vec<f64> = free.iter().map(|&i| stats[i].omega).collect();

        let ctx = Ctx { model, w, blocks: &blocks, heads, p, train: train_set, test: test_set };
        let mut rows = Vec::new();
        let f32_bytes = 4 * model.dim() as u64;
        progress("baseline: f32");
        let base_plan = Plan { bits: vec![None; blocks.len()], groups: vec![1; blocks.len()] };
        let (wq, _) = ctx.apply(&base_plan)?;
        rows.push(StudyRow {
            method: "f32".into(),
            bits: "32".into(),
            groups: "-".into(),
            bytes: f32_bytes,
            compression: 1.0,
            accuracy: ctx.accuracy(wq.view(), false)?,
            accuracy_act: ctx.accuracy(wq.view(), true)?,
            finetuned: None,
        });

        for &bits in &p.direct_bits {
            for &g in &p.groupings {
                progress(&format!("direct: {bits} bits, {} groups", g.label(heads)));
                let plan = ctx.uniform_plan(bits, g, &free);
                rows.push(ctx.row("direct", bits.to_string(), g.label(heads), &plan, bits <= 2 && g == Grouping::PerHead)?);
            }
        }

        let mut first_mixed: Option<Plan> = None;
        for &(lo, hi) in &p.mixed {
            progress(&format!("mixed {lo}/{hi}: by Omega, at random, exact optimum"));
            let label = format!("{lo}/{hi}");
            let chosen = qbert_ranking(&omegas, p.share, lo, hi)?;
            let plan = ctx.mixed_plan(&free, &chosen, Grouping::PerHead);
            first_mixed.get_or_insert_with(|| plan.clone());
            let omega_row = ctx.row("mixed by Omega", label.clone(), Grouping::PerHead.label(heads), &plan, true)?;
            let budget = omega_row.bytes;
            rows.push(omega_row);
            // Random assignments with the same number of layers at the high width.
            let high = chosen.iter().filter(|&&b| b == hi).count();
            let mut acc = (0.0, 0.0, 0u64);
            for draw in 0..p.random_draws.max(1) {
                let mut order: Vec<usize> = (0..free.len()).collect();
                shuffle(&mut order, p.seed ^ (0xA5A5 + draw as u64 + 1000 * u64::from(hi)));
                let mut widths = vec![lo; free.len()];
                for &i in &order[..high] {
                    widths[i] = hi;
                }
                let r = ctx.row(
                    "mixed at random",
                    label.clone(),
                    Grouping::PerHead.label(heads),
                    &ctx.mixed_plan(&free, &widths, Grouping::PerHead),
                    false,
                )?;
                acc = (acc.0 + r.accuracy, acc.1 + r.accuracy_act, acc.2 + r.bytes);
            }
            let n = p.random_draws.max(1) as f64;
            rows.push(StudyRow {
                method: format!("mixed at random (mean of {})", p.random_draws.max(1)),
                bits: label.clone(),
                groups: Grouping::PerHead.label(heads),
                bytes: (acc.2 as f64 / n).round() as u64,
                compression: f32_bytes as f64 / (acc.2 as f64 / n),
                accuracy: acc.0 / n,
                accuracy_act: acc.1 / n,
                finetuned: None,
            });
            // HAWQ-style exact optimum: Ω · ‖Q(W) − W‖² per choice, same byte budget.
            let widths = ctx.exact_plan(&free, &omegas, &[lo, hi], budget, Grouping::PerHead)?;
            rows.push(ctx.row(
                "exact optimum (Omega x error)",
                label,
                Grouping::PerHead.label(heads),
                &ctx.mixed_plan(&free, &widths, Grouping::PerHead),
                false,
            )?);
        }

        let shown = match &first_mixed {
            Some(plan) => plan.clone(),
            None => ctx.uniform_plan(p.direct_bits.last().copied().unwrap_or(8), Grouping::PerHead, &free),
        };
        let details = ctx.details(&shown)?;
        let layers = layer_reports(model, &blocks, &stats, &shown, &details);
        Ok(QbertReport { layers, rows, hvps, activation_bits: p.activation_bits })
    }
}

fn layer_reports<F: Float, M: QuantizableModel<F> + ?Sized>(
    model: &M,
    blocks: &[MatrixBlock],
    stats: &[quant_hessian::BlockStats],
    plan: &Plan,
    details: &[MatrixDetail],
) -> Vec<LayerReport> {
    stats
        .iter()
        .enumerate()
        .map(|(i, st)| LayerReport {
            name: model.blocks()[blocks[i].block].name().to_string(),
            params: st.params,
            eigenvalues: st.eigenvalues.clone(),
            mean: st.mean,
            std: st.std,
            omega: st.omega,
            negative: st.negative_curvature(),
            mixed_bits: plan.bits[i],
            groups: details[i].groups,
            bytes: details[i].bytes,
            sqnr_db: details[i].sqnr_db,
        })
        .collect()
}

/// Checks what [`QbertPipeline::run`] and [`QbertPipeline::quantize`] are given before any of
/// it reaches the model: non-empty sample lists whose indices are the model's samples, `w` of
/// the model's dimension, and at least three weight matrices, each a distinct block of the
/// model holding `fan_in · fan_out` parameters. Returns the weight matrices.
fn check_inputs<F: Float, M: QuantizableModel<F>>(model: &M, w: ArrayView1<'_, F>, sets: &[&[usize]]) -> Result<Vec<MatrixBlock>> {
    for set in sets {
        if set.is_empty() {
            return Err(QbertError::Empty { what: "samples" });
        }
        Batch::Indices(set).check(model.samples())?;
    }
    if w.len() != model.dim() {
        return Err(QbertError::Hessian(quant_hessian::HessianError::ShapeMismatch { expected: vec![model.dim()], got: vec![w.len()] }));
    }
    let blocks = model.weight_blocks();
    if blocks.len() < 3 {
        return Err(QbertError::InvalidParameter { what: "weight matrices", value: blocks.len() as f64 });
    }
    for (i, m) in blocks.iter().enumerate() {
        if blocks[..i].iter().any(|o| o.block == m.block) {
            return Err(QbertError::InvalidParameter { what: "duplicate weight block", value: m.block as f64 });
        }
        match model.blocks().get(m.block) {
            Some(b) if b.len() == m.fan_in * m.fan_out && m.fan_in > 0 && m.fan_out > 0 => {}
            _ => return Err(QbertError::InvalidParameter { what: "weight block shape", value: m.block as f64 }),
        }
    }
    Ok(blocks)
}

/// A quantized matrix under codebook fine-tuning.
struct Book<F> {
    /// Its parameters in the flat vector.
    range: core::ops::Range<usize>,
    /// Its `fan_in × fan_out` shape (the model's layout).
    block: MatrixBlock,
    /// The codebook (over the `out × in` transpose).
    book: OutputGroupCodebook<F>,
    /// The Adam state of the centroids.
    adam: Adam,
}

/// One matrix's row of the layer report.
struct MatrixDetail {
    /// Output-unit groups (1 in f32).
    groups: usize,
    /// Stored bytes.
    bytes: u64,
    /// SQNR in dB, floored; `None` in f32.
    sqnr_db: Option<f64>,
}

/// Everything a study row needs.
struct Ctx<'a, F, M: ?Sized> {
    model: &'a M,
    w: ArrayView1<'a, F>,
    blocks: &'a [MatrixBlock],
    heads: usize,
    p: &'a PipelineParams,
    train: &'a [usize],
    test: &'a [usize],
}

impl<F: Float, M: QuantizableModel<F> + ?Sized> Ctx<'_, F, M> {
    fn fixed(&self, plan: &mut Plan) {
        if let Some(b) = self.p.embedding_bits {
            plan.bits[0] = Some(b);
            plan.groups[0] = 1;
        }
        if self.p.keep_classifier {
            let last = plan.bits.len() - 1;
            plan.bits[last] = None;
        }
    }

    fn uniform_plan(&self, bits: u8, g: Grouping, free: &[usize]) -> Plan {
        self.mixed_plan(free, &vec![bits; free.len()], g)
    }

    fn mixed_plan(&self, free: &[usize], widths: &[u8], g: Grouping) -> Plan {
        let mut plan = Plan { bits: vec![None; self.blocks.len()], groups: vec![1; self.blocks.len()] };
        for (&i, &b) in free.iter().zip(widths) {
            plan.bits[i] = Some(b);
            plan.groups[i] = g.groups(self.heads, self.blocks[i].fan_out);
        }
        self.fixed(&mut plan);
        plan
    }

    fn method(&self, bits: u8) -> Result<Method> {
        // Every other setting at its default: Q-BERT's asymmetric min-max grid, Lloyd from a
        // linear init with f32 tables, TWN's threshold (ternary ignores `bits`).
        Ok(MethodParams { kind: self.p.method, bits, ..MethodParams::default() }.check()?)
    }

    /// Weight matrix `k` of `w` as the model stores it (`fan_in × fan_out`); the group
    /// quantizers take `out × in`, so the calls below pass its transpose and read results
    /// back transposed.
    fn matrix(&self, w: ArrayView1<'_, F>, k: usize) -> Result<Array2<F>> {
        let MatrixBlock { block: b, fan_in: fi, fan_out: fo } = self.blocks[k];
        w.slice(s![self.model.blocks()[b].range()])
            .to_owned()
            .into_shape_with_order((fi, fo))
            .map_err(|_| QbertError::InvalidParameter { what: "weight block shape", value: (fi * fo) as f64 })
    }

    /// The plan applied to `w` (dequantized weights) and the model size in bytes.
    fn apply_to(&self, w: ArrayView1<'_, F>, plan: &Plan) -> Result<(Array1<F>, u64)> {
        let mut out = w.to_owned();
        let mut bytes = 4 * w.len() as u64;
        for (k, &MatrixBlock { block: b, fan_in: fi, fan_out: fo }) in self.blocks.iter().enumerate() {
            if let Some(bits) = plan.bits[k] {
                let range = self.model.blocks()[b].range();
                let m = self.matrix(w, k)?;
                let q = quantize_output_groups(m.t(), plan.groups[k], &self.method(bits)?)?;
                out.slice_mut(s![range]).iter_mut().zip(q.weights.t().iter()).for_each(|(o, &v)| *o = v);
                bytes = bytes - 4 * (fi * fo) as u64 + q.bytes as u64;
            }
        }
        Ok((out, bytes))
    }

    /// k-means fine-tuning (Deep Compression): codes fixed, every centroid moved by Adam on
    /// the summed gradient of the weights that share it; the parameters outside the
    /// quantized matrices train as usual. Returns the test accuracy with activations
    /// quantized.
    fn finetune_codebooks(&self, plan: &Plan, t: &TrainParams) -> Result<f64> {
        let mut base = self.w.to_owned();
        let mut books = Vec::new();
        let mut quantized = vec![false; base.len()];
        for (k, &block) in self.blocks.iter().enumerate() {
            if let Some(bits) = plan.bits[k] {
                let range = self.model.blocks()[block.block].range();
                quantized[range.clone()].iter_mut().for_each(|q| *q = true);
                let m = self.matrix(self.w, k)?;
                let book = OutputGroupCodebook::new(m.t(), plan.groups[k], &KMeansSpec::builder().bits(bits).check()?)?;
                let n = book.centroid_gradients(m.t())?.len();
                books.push(Book { range, block, book, adam: Adam::new(n) });
            }
        }
        let with_books = |base: &Array1<F>, books: &[Book<F>]| {
            let mut wq = base.clone();
            for Book { range, book, .. } in books {
                wq.slice_mut(s![range.clone()]).iter_mut().zip(book.weights().t().iter()).for_each(|(o, &v)| *o = v);
            }
            wq
        };
        let mut adam = Adam::new(base.len());
        let mut grad = Array1::<F>::zeros(base.len());
        let mut order = self.train.to_vec();
        for epoch in 0..t.epochs {
            shuffle(&mut order, self.p.seed ^ t.seed.wrapping_add(epoch as u64));
            for batch in order.chunks(t.batch_size) {
                let wq = with_books(&base, &books);
                self.model.loss_grad_into(wq.view(), Batch::Indices(batch), grad.view_mut())?;
                let mut params = base.iter_mut();
                adam.step(grad.iter().zip(&quantized).map(|(g, &q)| if q { 0.0 } else { g.as_f64() }), t.lr, |_, d| {
                    if let Some(w) = params.next() {
                        *w -= F::cast(d);
                    }
                });
                for Book { range, block, book, adam: state } in &mut books {
                    let shape = (block.fan_in, block.fan_out);
                    let g = grad.slice(s![range.clone()]).to_owned().into_shape_with_order(shape).map_err(|_| {
                        QbertError::Core(quant_core::QuantError::ShapeMismatch { expected: vec![shape.0, shape.1], got: vec![range.len()] })
                    })?;
                    let cg = book.centroid_gradients(g.t())?;
                    let mut d: Vec<F> = Vec::with_capacity(cg.len());
                    state.step(cg.iter().map(|v| v.as_f64()), t.lr, |_, x| d.push(F::cast(x)));
                    book.apply_step(&d)?;
                }
            }
        }
        self.accuracy(with_books(&base, &books).view(), true)
    }

    /// Per matrix under `plan`: groups, bytes and SQNR (dB; `None` in f32).
    fn details(&self, plan: &Plan) -> Result<Vec<MatrixDetail>> {
        let mut out = Vec::with_capacity(self.blocks.len());
        for (k, &MatrixBlock { fan_in: fi, fan_out: fo, .. }) in self.blocks.iter().enumerate() {
            let m = self.matrix(self.w, k)?;
            match plan.bits[k] {
                None => out.push(MatrixDetail { groups: 1, bytes: 4 * (fi * fo) as u64, sqnr_db: None }),
                Some(bits) => {
                    let q = quantize_output_groups(m.t(), plan.groups[k], &self.method(bits)?)?;
                    let e = ErrorStats::of(m.iter().copied(), q.weights.t().iter().copied());
                    out.push(MatrixDetail { groups: plan.groups[k], bytes: q.bytes as u64, sqnr_db: Some(e.sqnr_db_floored()) });
                }
            }
        }
        Ok(out)
    }

    fn apply(&self, plan: &Plan) -> Result<(Array1<F>, u64)> {
        self.apply_to(self.w, plan)
    }

    /// Test accuracy; with `activations`, every linear input is fake-quantized with ranges
    /// tracked by EMA observers over the training samples (in batches of 256).
    fn accuracy(&self, wq: ArrayView1<'_, F>, activations: bool) -> Result<f64> {
        if !activations {
            return Ok(self.model.accuracy_hooked(wq, Batch::Indices(self.test), &mut |_, _| {})?);
        }
        let mut observers: Vec<RangeObserver<F>> = Vec::new();
        let mut failure: Option<QbertError> = None;
        for batch in self.train.chunks(256) {
            self.model.accuracy_hooked(wq, Batch::Indices(batch), &mut |site, x| {
                while observers.len() <= site {
                    match RangeObserver::ema(self.p.ema_momentum, Granularity::PerTensor) {
                        Ok(o) => observers.push(o),
                        Err(e) => {
                            failure.get_or_insert(e.into());
                            return;
                        }
                    }
                }
                if let Err(e) = observers[site].observe(&x) {
                    failure.get_or_insert(e.into());
                }
            })?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let spec = UniformSpec::builder().bits(self.p.activation_bits).scheme(Scheme::AsymmetricGrid).check()?;
        let params = observers.iter().map(|o| o.params(&spec)).collect::<core::result::Result<Vec<_>, _>>()?;
        let mut failure: Option<QbertError> = None;
        let acc = self.model.accuracy_hooked(wq, Batch::Indices(self.test), &mut |site, mut x| {
            if let Some(q) = params.get(site) {
                match q.fake_quantize(&x) {
                    Ok(fq) => x.assign(&fq.values),
                    Err(e) => {
                        failure.get_or_insert(e.into());
                    }
                }
            }
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(acc),
        }
    }

    fn row(&self, method: &str, bits: String, groups: String, plan: &Plan, finetune: bool) -> Result<StudyRow> {
        let (wq, bytes) = self.apply(plan)?;
        let finetuned = match (finetune, self.p.finetune) {
            (true, Some(t)) if self.p.method == MethodKind::KMeans => Some(self.finetune_codebooks(plan, &t)?),
            (true, Some(t)) => {
                let mut latent = self.w.to_owned();
                let project = |w: ArrayView1<'_, F>| self.apply_to(w, plan).map(|(q, _)| q);
                train_qat(self.model, &mut latent, self.train, &TrainParams { seed: self.p.seed ^ t.seed, ..t }, &project, |_, _| {})?;
                let (q, _) = self.apply_to(latent.view(), plan)?;
                Some(self.accuracy(q.view(), true)?)
            }
            _ => None,
        };
        Ok(StudyRow {
            method: method.into(),
            bits,
            groups,
            bytes,
            compression: 4.0 * self.w.len() as f64 / bytes as f64,
            accuracy: self.accuracy(wq.view(), false)?,
            accuracy_act: self.accuracy(wq.view(), true)?,
            finetuned,
        })
    }

    /// The least `Σ Ω_i ‖Q_b(W_i) − W_i‖²` over widths in `choices` within `budget` bytes
    /// (per-head groups), by `quant-mixed`'s exact allocator.
    fn exact_plan(&self, free: &[usize], omegas: &[f64], choices: &[u8], budget: u64, grouping: Grouping) -> Result<Vec<u8>> {
        let mut layers = Vec::new();
        for (k, &i) in free.iter().enumerate() {
            let MatrixBlock { block: b, fan_in: fi, fan_out: fo } = self.blocks[i];
            let m = self.matrix(self.w, i)?;
            let g = grouping.groups(self.heads, fo);
            let mut options = Vec::new();
            for &bits in choices {
                let q = quantize_output_groups(m.t(), g, &self.method(bits)?)?;
                let err = ErrorStats::of(q.weights.t().iter().copied(), m.iter().copied()).squared_error;
                options.push(LayerOption { bits, group_size: Some(fo / g), bytes: q.bytes as u64, bops: 0, sensitivity: omegas[k] * err });
            }
            layers.push(LayerSpec::new(self.model.blocks()[b].name(), (fi * fo) as u64, options));
        }
        // Everything outside the free matrices (fixed ones quantized, the rest f32) is
        // outside the knapsack: the model size with the free matrices in f32, minus them.
        let mut fixed_only = Plan { bits: vec![None; self.blocks.len()], groups: vec![1; self.blocks.len()] };
        self.fixed(&mut fixed_only);
        let (_, with_free_f32) = self.apply(&fixed_only)?;
        let free_f32: u64 = free.iter().map(|&i| 4 * self.blocks[i].len() as u64).sum();
        let available = budget.saturating_sub(with_free_f32 - free_f32);
        let allocation = Problem::new(layers)?.solve(Budget::Bytes(available))?;
        Ok(allocation.layers.iter().map(|l| l.bits).collect())
    }
}

impl fmt::Display for QbertReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Per-layer sensitivity (top Hessian eigenvalue over {} subsets)",
            self.layers.first().map_or(0, |l| l.eigenvalues.len())
        )?;
        writeln!(
            f,
            "{:<32} {:>7} {:>10} {:>10} {:>10} {:>5} {:>7} {:>7} {:>8}",
            "layer", "params", "mean", "std", "Omega", "bits", "groups", "bytes", "SQNR dB"
        )?;
        for l in &self.layers {
            let bits = l.mixed_bits.map_or_else(|| "f32".to_string(), |b| b.to_string());
            let sqnr = l.sqnr_db.map_or_else(|| "-".to_string(), |d| format!("{d:.1}"));
            let flag = if l.negative { "  (negative curvature)" } else { "" };
            writeln!(
                f,
                "{:<32} {:>7} {:>10.4} {:>10.4} {:>10.4} {:>5} {:>7} {:>7} {:>8}{flag}",
                l.name, l.params, l.mean, l.std, l.omega, bits, l.groups, l.bytes, sqnr
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<34} {:>5} {:>12} {:>9} {:>6} {:>8} {:>8} {:>9}",
            "method",
            "bits",
            "groups",
            "bytes",
            "ratio",
            "acc w",
            format!("acc w+a{}", self.activation_bits),
            "fine-tune"
        )?;
        for r in &self.rows {
            let ft = r.finetuned.map_or_else(|| "-".to_string(), |a| format!("{:.2}%", 100.0 * a));
            writeln!(
                f,
                "{:<34} {:>5} {:>12} {:>9} {:>5.1}x {:>7.2}% {:>7.2}% {:>9}",
                r.method,
                r.bits,
                r.groups,
                r.bytes,
                r.compression,
                100.0 * r.accuracy,
                100.0 * r.accuracy_act,
                ft
            )?;
        }
        write!(f, "({} Hessian-vector products)", self.hvps)
    }
}
