//! Per-tensor quantization plans for a BERT-family checkpoint: a width (and grouping, and
//! table storage) for every weight matrix under a bits-per-weight budget, chosen from a
//! [`SensitivityReport`] by one of five metrics, by llama.cpp's `q4_k_m` rule, or at random.
//!
//! A [`TensorMenu`] holds the candidates of every tensor with their exact storage and, when
//! it comes from a report, their sensitivities. Its allocators return a [`Plan`]: per tensor
//! the chosen [`Candidate`], its bits per weight and bytes, and its predicted loss increase.
//! Plans serialize (feature `serde`), so a user can write one, edit it and apply it.
//!
//! | metric | objective per tensor and candidate | allocator |
//! |---|---|---|
//! | [`Metric::Quadratic`] | `½ dᵀ H d` | exact (multiple-choice knapsack) |
//! | [`Metric::Measured`] | `L(W₀ + d)` | exact |
//! | [`Metric::Trace`] | `Tr(H)/n · ‖d‖²` (HAWQ-V2) | exact |
//! | [`Metric::Omega`] | `Ω · ‖d‖²` (HAWQ-V2 with Q-BERT's Ω) | exact |
//! | [`Metric::OmegaRank`] | none: rank by `Ω` | Q-BERT's: the most sensitive share gets the next wider candidate |
//!
//! The budget is the mean bits per weight over the allocated tensors, tables included.
//! Candidates form a *ladder* for the ranked allocators and the recipe: ordered by total
//! storage, keeping for each width its cheapest candidate (so `2 bits, group:32` at 4 bits per
//! weight does not sit between 3 and 4 bits at groups of 128).

use ndarray::ArrayD;
use quant_core::{GranularityRule, ParamDtype};
use quant_mixed::{Budget, LayerOption, LayerSpec, MixedError, Problem};

use crate::error::{QbertError, Result};
use crate::sensitivity::{Candidate, SensitivityReport};

/// How a plan's widths are chosen from a sensitivity report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Q-BERT: rank the tensors by `Ω`; the most sensitive share gets the next wider
    /// candidate, as large a share as the budget allows. With a report made with
    /// [`layer_blocks`](crate::sensitivity::SensitivityParams::layer_blocks) each matrix takes
    /// its layer's `Ω` (Q-BERT's grouping: a layer's matrices rank together).
    OmegaRank,
    /// `Ω · ‖d‖²` per candidate, allocated exactly (`Ω` per layer as for
    /// [`OmegaRank`](Self::OmegaRank)).
    Omega,
    /// HAWQ-V2: `Tr(H)/n · ‖d‖²` per candidate, allocated exactly.
    Trace,
    /// The second-order loss increase `½ dᵀ H d` per candidate, allocated exactly.
    Quadratic,
    /// The measured loss increase `L(W₀ + d)` per candidate, allocated exactly.
    Measured,
}

impl Metric {
    /// Every metric, in the order the command line lists them.
    pub const ALL: [Metric; 5] = [Metric::OmegaRank, Metric::Omega, Metric::Trace, Metric::Quadratic, Metric::Measured];

    /// The name the command line and the plan files use.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::OmegaRank => "omega-rank",
            Metric::Omega => "omega",
            Metric::Trace => "trace",
            Metric::Quadratic => "quadratic",
            Metric::Measured => "measured",
        }
    }
}

impl core::fmt::Display for Metric {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for Metric {
    type Err = QbertError;
    fn from_str(s: &str) -> Result<Self> {
        Metric::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| QbertError::InvalidName {
            what: "metric",
            input: s.into(),
            expected: "omega-rank, omega, trace, quadratic or measured",
        })
    }
}

/// A set of candidates by what they must match: `BITS`, `BITS@GRANULARITY` or
/// `BITS@GRANULARITY@TABLES` (for example `4`, `3@group:128`, `4@group:32@f16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidatePattern {
    /// The width.
    pub bits: u8,
    /// The granularity, or any.
    pub granularity: Option<GranularityRule>,
    /// The table storage, or any.
    pub param_dtype: Option<ParamDtype>,
}

impl CandidatePattern {
    /// Whether `c` matches.
    pub fn matches(&self, c: &Candidate) -> bool {
        c.bits == self.bits && self.granularity.is_none_or(|g| g == c.granularity) && self.param_dtype.is_none_or(|p| p == c.param_dtype)
    }
}

impl core::fmt::Display for CandidatePattern {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.bits)?;
        if let Some(g) = self.granularity {
            write!(f, "@{g}")?;
        }
        if let Some(p) = self.param_dtype {
            write!(f, "@{p}")?;
        }
        Ok(())
    }
}

impl core::str::FromStr for CandidatePattern {
    type Err = QbertError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || QbertError::InvalidName {
            what: "candidate",
            input: s.into(),
            expected: "BITS, BITS@GRANULARITY or BITS@GRANULARITY@TABLES",
        };
        let mut parts = s.split('@');
        let bits = parts.next().and_then(|b| b.parse::<u8>().ok()).ok_or_else(bad)?;
        let granularity = parts.next().map(str::parse::<GranularityRule>).transpose().map_err(|_| bad())?;
        let param_dtype = parts.next().map(str::parse::<ParamDtype>).transpose().map_err(|_| bad())?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self { bits, granularity, param_dtype })
    }
}

/// One tensor of a [`Plan`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PlanEntry {
    /// The tensor's name in the checkpoint.
    pub name: String,
    /// Its shape as stored; an empty shape in an edited plan is not checked.
    #[cfg_attr(feature = "serde", serde(default))]
    pub shape: Vec<usize>,
    /// The quantization chosen.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub candidate: Candidate,
    /// Bits per weight, tables included (recomputed when the plan is applied).
    #[cfg_attr(feature = "serde", serde(default))]
    pub bits_per_weight: f64,
    /// Bytes of storage, tables included (recomputed when the plan is applied).
    #[cfg_attr(feature = "serde", serde(default))]
    pub bytes: u64,
    /// Whether the tensor counts in the budget (the embedding tables are kept at a fixed
    /// width outside it unless they are allocated too).
    #[cfg_attr(feature = "serde", serde(default = "yes"))]
    pub allocated: bool,
    /// `½ dᵀ H d` for this choice, when the report has it.
    #[cfg_attr(feature = "serde", serde(default))]
    pub quadratic: Option<f64>,
    /// The measured loss increase for this choice, when the report has it.
    #[cfg_attr(feature = "serde", serde(default))]
    pub measured: Option<f64>,
}

#[cfg(feature = "serde")]
fn yes() -> bool {
    true
}

/// A quantization for each of a set of tensors, with totals over the allocated ones.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Plan {
    /// How the plan was made (`"quadratic"`, `"omega-rank"`, `"recipe q4_k_m"`, ...).
    #[cfg_attr(feature = "serde", serde(default))]
    pub method: String,
    /// The budget it was made for, in bits per weight over the allocated tensors.
    #[cfg_attr(feature = "serde", serde(default))]
    pub target_bits_per_weight: Option<f64>,
    /// Bits per weight over the allocated tensors, tables included.
    #[cfg_attr(feature = "serde", serde(default))]
    pub bits_per_weight: f64,
    /// Bytes of the allocated tensors.
    #[cfg_attr(feature = "serde", serde(default))]
    pub bytes: u64,
    /// Weights of the allocated tensors.
    #[cfg_attr(feature = "serde", serde(default))]
    pub params: u64,
    /// The sum of the allocated tensors' `½ dᵀ H d`, when every one is known.
    #[cfg_attr(feature = "serde", serde(default))]
    pub predicted_quadratic: Option<f64>,
    /// The sum of the allocated tensors' measured increases, when every one is known.
    #[cfg_attr(feature = "serde", serde(default))]
    pub predicted_measured: Option<f64>,
    /// Per tensor.
    pub tensors: Vec<PlanEntry>,
    /// What the user should know (tensors without a sensitivity, and the like).
    #[cfg_attr(feature = "serde", serde(default))]
    pub notes: Vec<String>,
}

impl Plan {
    /// Recomputes the totals from the entries.
    fn totals(mut self) -> Self {
        let allocated: Vec<&PlanEntry> = self.tensors.iter().filter(|e| e.allocated).collect();
        self.bytes = allocated.iter().map(|e| e.bytes).sum();
        self.params = allocated.iter().map(|e| e.shape.iter().product::<usize>() as u64).sum();
        self.bits_per_weight = if self.params == 0 { 0.0 } else { (self.bytes * 8) as f64 / self.params as f64 };
        self.predicted_quadratic = allocated.iter().map(|e| e.quadratic).sum();
        self.predicted_measured = allocated.iter().map(|e| e.measured).sum();
        self
    }

    /// Adds `name` (of `shape`) at the fixed quantization `candidate`, outside the budget,
    /// replacing an entry of that name.
    ///
    /// # Errors
    /// The core's errors when the candidate does not apply to the shape.
    pub fn with_fixed(mut self, name: &str, shape: &[usize], candidate: Candidate) -> Result<Self> {
        let bytes = storage_bytes(&candidate, shape)?;
        self.tensors.retain(|e| e.name != name);
        self.tensors.push(PlanEntry {
            name: name.into(),
            shape: shape.to_vec(),
            candidate,
            bits_per_weight: bits_per_weight(bytes, shape),
            bytes,
            allocated: false,
            quadratic: None,
            measured: None,
        });
        Ok(self.totals())
    }

    /// Checks the plan against a checkpoint: every tensor exists (`shape_of` returns its
    /// shape), its recorded shape (when given) agrees, no tensor is named twice and every
    /// choice applies to its tensor; the bits per weight, bytes and totals are recomputed.
    ///
    /// # Errors
    /// [`QbertError::Plan`] naming the tensor.
    pub fn check(mut self, shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Result<Self> {
        let plan_error = |tensor: &str, reason: String| QbertError::Plan { tensor: tensor.into(), reason };
        let mut seen = std::collections::BTreeSet::new();
        for e in &mut self.tensors {
            if !seen.insert(e.name.clone()) {
                return Err(plan_error(&e.name, "is named twice".into()));
            }
            let Some(shape) = shape_of(&e.name) else {
                return Err(plan_error(&e.name, "is not a floating-point tensor of the checkpoint".into()));
            };
            if !e.shape.is_empty() && e.shape != shape {
                return Err(plan_error(&e.name, format!("has shape {shape:?} in the checkpoint, {:?} in the plan", e.shape)));
            }
            let bytes =
                storage_bytes(&e.candidate, &shape).map_err(|err| plan_error(&e.name, format!("cannot take {}: {err}", e.candidate)))?;
            e.shape = shape;
            e.bytes = bytes;
            e.bits_per_weight = bits_per_weight(bytes, &e.shape);
        }
        Ok(self.totals())
    }
}

/// Storage bytes of `candidate` on a tensor of `shape` (it does not depend on the values).
fn storage_bytes(candidate: &Candidate, shape: &[usize]) -> Result<u64> {
    let zeros = ArrayD::<f32>::zeros(shape);
    Ok(candidate.method(shape)?.quantize(&zeros)?.storage_bytes() as u64)
}

fn bits_per_weight(bytes: u64, shape: &[usize]) -> f64 {
    let n: usize = shape.iter().product();
    if n == 0 { 0.0 } else { (bytes * 8) as f64 / n as f64 }
}

/// What a report says about one candidate on one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scores {
    perturbation: f64,
    quadratic: f64,
    measured: f64,
}

/// The candidates of every tensor with their exact storage and (from a report) their
/// sensitivities; the allocators of this module are its methods.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMenu {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    candidates: Vec<Candidate>,
    /// `bytes[t][c]`.
    bytes: Vec<Vec<u64>>,
    /// `scores[t][c]`, from a report.
    scores: Option<Vec<Vec<Scores>>>,
    /// Per tensor `(Ω, Tr(H)/n)`, from a report.
    curvature: Option<Vec<(f64, f64)>>,
}

impl TensorMenu {
    /// The menu of a sensitivity report, restricted to the candidates matching any of
    /// `patterns` (all of them when `patterns` is empty). A matrix in one of the report's
    /// [`layers`](SensitivityReport::layers) takes that layer's `Ω`.
    ///
    /// # Errors
    /// [`QbertError::Empty`] for a report without tensors or candidates; [`QbertError::UnknownCandidate`]
    /// for a pattern no candidate of the report matches; [`QbertError::Plan`] for a tensor
    /// whose candidates differ from the first tensor's or whose numbers are not finite.
    pub fn from_report(report: &SensitivityReport, patterns: &[CandidatePattern]) -> Result<Self> {
        let first = report.matrices.first().ok_or(QbertError::Empty { what: "tensors in the sensitivity report" })?;
        let all: Vec<Candidate> = first.candidates.iter().map(|c| c.candidate).collect();
        if all.is_empty() {
            return Err(QbertError::Empty { what: "candidates in the sensitivity report" });
        }
        let keep = select(&all, patterns)?;
        let (mut names, mut shapes, mut bytes, mut scores, mut curvature) = (vec![], vec![], vec![], vec![], vec![]);
        for m in &report.matrices {
            let bad = |reason: String| QbertError::Plan { tensor: m.name.clone(), reason };
            if m.candidates.iter().map(|c| c.candidate).ne(all.iter().copied()) {
                return Err(bad("has other candidates than the report's first tensor".into()));
            }
            if !(m.omega.is_finite() && m.average_trace.is_finite()) {
                return Err(bad("has a non-finite Omega or trace in the report".into()));
            }
            let n: usize = m.shape.iter().product();
            let mut b = Vec::with_capacity(keep.len());
            let mut s = Vec::with_capacity(keep.len());
            for &c in &keep {
                let cs = &m.candidates[c];
                if !(cs.bits_per_weight.is_finite() && cs.perturbation.is_finite() && cs.quadratic.is_finite() && cs.measured.is_finite()) {
                    return Err(bad(format!("has non-finite numbers for {} in the report", cs.candidate)));
                }
                b.push((cs.bits_per_weight * n as f64 / 8.0).round() as u64);
                s.push(Scores { perturbation: cs.perturbation, quadratic: cs.quadratic, measured: cs.measured });
            }
            names.push(m.name.clone());
            shapes.push(m.shape.clone());
            bytes.push(b);
            scores.push(s);
            // Q-BERT's grouping, when the report has it: a matrix takes its layer's Ω.
            let omega = report.layers.iter().find(|l| l.tensors.contains(&m.name)).map_or(m.omega, |l| l.omega);
            if !omega.is_finite() {
                return Err(bad("has a non-finite layer Omega in the report".into()));
            }
            curvature.push((omega, m.average_trace));
        }
        Ok(Self {
            names,
            shapes,
            candidates: keep.iter().map(|&c| all[c]).collect(),
            bytes,
            scores: Some(scores),
            curvature: Some(curvature),
        })
    }

    /// A menu without sensitivities (for the recipe and fixed widths): `tensors` are names
    /// and shapes, every candidate applies to each.
    ///
    /// # Errors
    /// [`QbertError::Empty`] for no tensors or candidates; [`QbertError::Plan`] for a
    /// candidate that does not apply to a tensor.
    pub fn from_shapes(tensors: &[(String, Vec<usize>)], candidates: &[Candidate]) -> Result<Self> {
        if tensors.is_empty() {
            return Err(QbertError::Empty { what: "tensors" });
        }
        if candidates.is_empty() {
            return Err(QbertError::Empty { what: "candidates" });
        }
        let bytes = tensors
            .iter()
            .map(|(name, shape)| {
                candidates
                    .iter()
                    .map(|c| {
                        storage_bytes(c, shape)
                            .map_err(|e| QbertError::Plan { tensor: name.clone(), reason: format!("cannot take {c}: {e}") })
                    })
                    .collect::<Result<Vec<u64>>>()
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            names: tensors.iter().map(|t| t.0.clone()).collect(),
            shapes: tensors.iter().map(|t| t.1.clone()).collect(),
            candidates: candidates.to_vec(),
            bytes,
            scores: None,
            curvature: None,
        })
    }

    /// The tensors' names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The candidates every tensor chooses from.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The ladder of the ranked allocators and the recipe: candidate indices by total
    /// storage, keeping for each width only its cheapest candidate, so widths increase
    /// along it.
    pub fn ladder(&self) -> Vec<usize> {
        let total = |c: usize| self.bytes.iter().map(|b| b[c]).sum::<u64>();
        let mut order: Vec<usize> = (0..self.candidates.len()).collect();
        order.sort_by_key(|&c| (total(c), self.candidates[c].bits, c));
        let mut ladder: Vec<usize> = Vec::new();
        for c in order {
            if ladder.last().is_none_or(|&l| self.candidates[c].bits > self.candidates[l].bits) {
                ladder.push(c);
            }
        }
        ladder
    }

    fn params(&self) -> u64 {
        self.shapes.iter().map(|s| s.iter().product::<usize>() as u64).sum()
    }

    /// The byte budget of `target` bits per weight over the menu's tensors.
    fn budget(&self, target: f64) -> Result<u64> {
        if !(target.is_finite() && target > 0.0) {
            return Err(QbertError::InvalidParameter { what: "target bits per weight", value: target });
        }
        // A hair over, so that a target equal to a candidate's exact bits per weight admits it.
        Ok((target * self.params() as f64 / 8.0 * (1.0 + 1e-12)).floor() as u64)
    }

    /// The least bits per weight any assignment reaches.
    fn too_small(&self, target: f64) -> QbertError {
        let least: u64 = self.bytes.iter().map(|b| b.iter().copied().min().unwrap_or(0)).sum();
        QbertError::BudgetTooSmall { target, least: (least * 8) as f64 / self.params() as f64 }
    }

    /// The plan choosing candidate `picks[t]` for tensor `t`.
    fn plan(&self, method: String, target: Option<f64>, picks: &[usize]) -> Plan {
        let tensors = self
            .names
            .iter()
            .enumerate()
            .map(|(t, name)| {
                let c = picks[t];
                let s = self.scores.as_ref().map(|s| s[t][c]);
                PlanEntry {
                    name: name.clone(),
                    shape: self.shapes[t].clone(),
                    candidate: self.candidates[c],
                    bits_per_weight: bits_per_weight(self.bytes[t][c], &self.shapes[t]),
                    bytes: self.bytes[t][c],
                    allocated: true,
                    quadratic: s.map(|s| s.quadratic),
                    measured: s.map(|s| s.measured),
                }
            })
            .collect();
        Plan {
            method,
            target_bits_per_weight: target,
            bits_per_weight: 0.0,
            bytes: 0,
            params: 0,
            predicted_quadratic: None,
            predicted_measured: None,
            tensors,
            notes: Vec::new(),
        }
        .totals()
    }

    /// Every tensor at candidate `c` (an index into [`candidates`](Self::candidates)).
    ///
    /// # Errors
    /// [`QbertError::InvalidParameter`] for an index out of range.
    pub fn uniform(&self, c: usize) -> Result<Plan> {
        if c >= self.candidates.len() {
            return Err(QbertError::InvalidParameter { what: "candidate index", value: c as f64 });
        }
        Ok(self.plan(format!("uniform {}", self.candidates[c]), None, &vec![c; self.names.len()]))
    }

    /// The least total of `metric` under `target` bits per weight.
    ///
    /// # Errors
    /// [`QbertError::Unscored`] for a menu without a report; [`QbertError::BudgetTooSmall`];
    /// [`QbertError::InvalidParameter`] for a target that is not finite and positive.
    pub fn allocate(&self, metric: Metric, target: f64) -> Result<Plan> {
        let (Some(scores), Some(curvature)) = (&self.scores, &self.curvature) else {
            return Err(QbertError::Unscored { metric: metric.name() });
        };
        let budget = self.budget(target)?;
        if metric == Metric::OmegaRank {
            let omegas: Vec<f64> = curvature.iter().map(|c| c.0).collect();
            let order = quant_mixed::qbert_order(&omegas)?;
            return self.ranked(&order, target, metric.name().into());
        }
        let layers = self
            .names
            .iter()
            .enumerate()
            .map(|(t, name)| {
                let (omega, trace) = curvature[t];
                let options = self.candidates.iter().enumerate().map(|(c, cand)| {
                    let s = scores[t][c];
                    // Second-order terms of a Gauss-Newton Hessian are ≥ 0; a negative one
                    // (rounding, or a Hessian away from W₀) adds nothing.
                    let sensitivity = match metric {
                        Metric::Quadratic => s.quadratic.max(0.0),
                        Metric::Measured => s.measured.max(0.0),
                        Metric::Trace => trace.abs() * s.perturbation,
                        _ => omega.abs() * s.perturbation,
                    };
                    let group_size = match cand.granularity {
                        GranularityRule::Group { size } => Some(size),
                        _ => None,
                    };
                    LayerOption { bits: cand.bits, group_size, bytes: self.bytes[t][c], bops: 0, sensitivity }
                });
                LayerSpec::new(name.clone(), self.shapes[t].iter().product::<usize>() as u64, options.collect())
            })
            .collect();
        let allocation = match Problem::new(layers)?.solve(Budget::Bytes(budget)) {
            Err(MixedError::Infeasible { .. }) => return Err(self.too_small(target)),
            other => other?,
        };
        let picks: Vec<usize> = allocation.layers.iter().map(|l| l.option).collect();
        Ok(self.plan(metric.name().into(), Some(target), &picks))
    }

    /// Q-BERT's ranked allocation: `order` lists the tensors most sensitive first; on the
    /// [`ladder`](Self::ladder), every tensor takes the widest step whose uniform assignment
    /// fits the budget, and the first tensors of `order` the next wider step, as many as
    /// still fit. `method` names the plan (`"omega-rank"`, `"random (seed 3)"`).
    ///
    /// # Errors
    /// [`QbertError::BudgetTooSmall`]; [`QbertError::InvalidParameter`] for a target that is
    /// not finite and positive or an `order` that is not a permutation of the tensors.
    pub fn ranked(&self, order: &[usize], target: f64, method: String) -> Result<Plan> {
        let n = self.names.len();
        let mut seen = vec![false; n];
        for &t in order {
            if t >= n || std::mem::replace(&mut seen[t], true) {
                return Err(QbertError::InvalidParameter { what: "tensor order", value: t as f64 });
            }
        }
        if order.len() != n {
            return Err(QbertError::InvalidParameter { what: "tensor order length", value: order.len() as f64 });
        }
        let budget = self.budget(target)?;
        let picks = self.two_steps(budget, order).ok_or_else(|| self.too_small(target))?;
        Ok(self.plan(method, Some(target), &picks))
    }

    /// On the ladder, the widest step `s` whose uniform assignment fits `budget`, with the
    /// longest prefix of `order` one step wider that still fits; `None` when even the cheapest
    /// step does not fit.
    fn two_steps(&self, budget: u64, order: &[usize]) -> Option<Vec<usize>> {
        let ladder = self.ladder();
        let n = self.names.len();
        let cost = |picks: &[usize]| picks.iter().enumerate().map(|(t, &c)| self.bytes[t][c]).sum::<u64>();
        for (i, &lo) in ladder.iter().enumerate().rev() {
            let base = vec![lo; n];
            if cost(&base) > budget {
                continue;
            }
            let Some(&hi) = ladder.get(i + 1) else { return Some(base) };
            // Widening a prefix only adds bytes: stop at the first that does not fit.
            let mut best = base;
            for &t in order {
                let mut picks = best.clone();
                picks[t] = hi;
                if cost(&picks) > budget {
                    break;
                }
                best = picks;
            }
            return Some(best);
        }
        None
    }

    /// llama.cpp's `q4_k_m` rule on BERT names: the attention value and FFN-down matrices
    /// (`…layer.N.attention.self.value.weight`, `…layer.N.output.dense.weight`) of the first
    /// and last eighth of the layers and of every third layer between
    /// (`i < L/8 || i ≥ 7L/8 || (i − L/8) % 3 == 2`, integer division) one ladder step wider
    /// than the rest. With a `target`, the widest base step that fits it; without, the 4-bit
    /// step (Q4_K with Q6_K, as llama.cpp's own).
    ///
    /// # Errors
    /// [`QbertError::BudgetTooSmall`]; [`QbertError::InvalidParameter`] for a target that is
    /// not finite and positive, or no 4-bit candidate without a target.
    pub fn recipe_q4_k_m(&self, target: Option<f64>) -> Result<Plan> {
        let layers = self.names.iter().filter_map(|n| layer_index(n)).max().map_or(0, |m| m + 1);
        let wide: Vec<usize> = (0..self.names.len())
            .filter(|&t| {
                let name = &self.names[t];
                let role = name.ends_with("attention.self.value.weight")
                    || (name.ends_with("output.dense.weight") && !name.ends_with("attention.output.dense.weight"));
                role && layer_index(name).is_some_and(|i| llama_cpp_more_bits(i, layers))
            })
            .collect();
        let ladder = self.ladder();
        if ladder.is_empty() {
            return Err(QbertError::Empty { what: "candidates" });
        }
        let recipe = |i: usize| {
            let mut picks = vec![ladder[i]; self.names.len()];
            if let Some(&hi) = ladder.get(i + 1) {
                for &t in &wide {
                    picks[t] = hi;
                }
            }
            picks
        };
        let picks = match target {
            Some(target) => {
                let budget = self.budget(target)?;
                let cost = |picks: &[usize]| picks.iter().enumerate().map(|(t, &c)| self.bytes[t][c]).sum::<u64>();
                match (0..ladder.len()).rev().map(recipe).find(|p| cost(p) <= budget) {
                    Some(picks) => picks,
                    None => {
                        let least = cost(&recipe(0));
                        return Err(QbertError::BudgetTooSmall { target, least: (least * 8) as f64 / self.params() as f64 });
                    }
                }
            }
            None => {
                let i = ladder
                    .iter()
                    .position(|&c| self.candidates[c].bits == 4)
                    .ok_or(QbertError::InvalidParameter { what: "recipe without a 4-bit candidate", value: 4.0 })?;
                recipe(i)
            }
        };
        Ok(self.plan("recipe q4_k_m".into(), target, &picks))
    }
}

/// llama.cpp's `use_more_bits(i, n)`: whether layer `i` of `n` is in the first or last eighth
/// of the layers or every third layer between, where its `q4_k_m` mixture widens the attention
/// value and FFN-down matrices.
pub fn llama_cpp_more_bits(i: usize, n: usize) -> bool {
    let eighth = n / 8;
    i < eighth || i >= 7 * n / 8 || i.checked_sub(eighth).is_some_and(|d| d % 3 == 2)
}

/// `N` of the `layer.N.` segment of a tensor name.
fn layer_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layer" || p == "layers" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

/// Indices of `all` matching any pattern (all when there are none).
fn select(all: &[Candidate], patterns: &[CandidatePattern]) -> Result<Vec<usize>> {
    if patterns.is_empty() {
        return Ok((0..all.len()).collect());
    }
    for p in patterns {
        if !all.iter().any(|c| p.matches(c)) {
            let have = all.iter().map(|c| format!("{}@{}@{}", c.bits, c.granularity, c.param_dtype)).collect::<Vec<_>>().join(", ");
            return Err(QbertError::UnknownCandidate { pattern: p.to_string(), available: have });
        }
    }
    Ok((0..all.len()).filter(|&c| patterns.iter().any(|p| p.matches(&all[c]))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_more_bits_rule() {
        // Six layers (MiniLM): n/8 = 0, 7n/8 = 5, so layers 2 and 5.
        assert_eq!((0..6).filter(|&i| llama_cpp_more_bits(i, 6)).collect::<Vec<_>>(), [2, 5]);
        // Twelve layers (BERT-base): n/8 = 1, 7n/8 = 10: 0, 3, 6, 9, 10, 11.
        assert_eq!((0..12).filter(|&i| llama_cpp_more_bits(i, 12)).collect::<Vec<_>>(), [0, 3, 6, 9, 10, 11]);
        // Thirty-two layers (LLaMA-7B): 0..4, 6, 9, …, 27, 28..32.
        let l32: Vec<usize> = (0..32).filter(|&i| llama_cpp_more_bits(i, 32)).collect();
        assert_eq!(l32, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
    }

    #[test]
    fn layer_index_of_bert_names() {
        assert_eq!(layer_index("encoder.layer.11.output.dense.weight"), Some(11));
        assert_eq!(layer_index("bert.encoder.layer.3.attention.self.value.weight"), Some(3));
        assert_eq!(layer_index("embeddings.word_embeddings.weight"), None);
    }

    #[test]
    fn patterns_parse_and_match() {
        let p: CandidatePattern = "3@group:128".parse().unwrap();
        let c = Candidate { bits: 3, granularity: GranularityRule::Group { size: 128 }, param_dtype: ParamDtype::Native };
        assert!(p.matches(&c));
        assert!(!"3@group:32".parse::<CandidatePattern>().unwrap().matches(&c));
        assert!("4".parse::<CandidatePattern>().unwrap().matches(&Candidate { bits: 4, ..c }));
        assert!("x".parse::<CandidatePattern>().is_err());
        assert!("3@group:0".parse::<CandidatePattern>().is_err());
        assert!("3@group:8@f16@x".parse::<CandidatePattern>().is_err());
        assert_eq!("4@group:32@f16".parse::<CandidatePattern>().unwrap().to_string(), "4@group:32@f16");
    }
}
