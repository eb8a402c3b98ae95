//! Q-BERT's per-block curvature statistics over data subsets.

use ndarray::{Array1, ArrayView1};
use quant_core::Float;

use crate::curvature::{BlockCurvature, BlockOperator, Product};
use crate::error::{HessianError, Result};
use crate::ext::OperatorExt;
use crate::lanczos::Lanczos;
use crate::model::{Autodiff, Batch};
use crate::operator::HessianOperator;
use crate::power::PowerIteration;
use quant_core::rng;

/// Splits `0..samples` into `subsets` disjoint subsets of near-equal size (sizes differ by
/// at most one) after a seeded shuffle. Each subset is sorted.
///
/// # Errors
/// [`HessianError::InvalidSubsets`] when `subsets` is 0 or exceeds `samples`.
pub fn split_subsets(samples: usize, subsets: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    if subsets == 0 || subsets > samples {
        return Err(HessianError::InvalidSubsets { subsets, samples });
    }
    let perm = rng::permutation(samples, seed);
    let (base, extra) = (samples / subsets, samples % subsets);
    let mut out = Vec::with_capacity(subsets);
    let mut start = 0;
    for s in 0..subsets {
        let len = base + usize::from(s < extra);
        let mut part = perm[start..start + len].to_vec();
        part.sort_unstable();
        out.push(part);
        start += len;
    }
    Ok(out)
}

/// Which eigensolver finds each block's top eigenvalue.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum TopEigen {
    /// Power iteration (Q-BERT's choice): the eigenvalue of largest magnitude, so a
    /// dominant negative curvature shows as a negative value.
    Power(PowerIteration),
    /// Lanczos: the largest algebraic eigenvalue, plus the smallest (reported in
    /// [`BlockStats::smallest`]).
    Lanczos(Lanczos),
}

impl Default for TopEigen {
    fn default() -> Self {
        TopEigen::Power(PowerIteration::default())
    }
}

/// Parameters of [`qbert_statistics`] (a record: the subset count is checked against the
/// model's samples when run, the solver by its own builder).
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `subsets` | 10 | data subsets (Q-BERT's choice) | `1..=samples` |
/// | `seed` | 0 | seed of the split and of every solver start | any |
/// | `solver` | power iteration, defaults | the top-eigenvalue solver | any valid |
/// | `product` | the Hessian | the curvature matrix ([`Product::GaussNewton`] where the model offers it) | any the model offers |
///
/// Each (block, subset) pair gets its own solver seed derived from `seed`
/// ([`pair_seed`](QbertParams::pair_seed)), so the results do not depend on the order or
/// the thread the pairs run on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QbertParams {
    /// Data subsets.
    pub subsets: usize,
    /// Seed of the split and of every solver start.
    pub seed: u64,
    /// The top-eigenvalue solver.
    pub solver: TopEigen,
    /// The curvature matrix whose blocks are measured.
    pub product: Product,
    /// Lanczos only: start each block's solve on a subset from its top Ritz vector on the
    /// previous subset (mixed with the pair's random start), not from the random start
    /// alone. The subsets' Hessians share most of their top directions, so fewer products
    /// reach the tolerance; each eigenvalue still meets it. Subsets then run in order (the
    /// blocks of a subset still in parallel), and results stay independent of the threads.
    pub warm_start: bool,
}

impl Default for QbertParams {
    fn default() -> Self {
        Self { subsets: 10, seed: 0, solver: TopEigen::default(), product: Product::Hessian, warm_start: false }
    }
}

impl QbertParams {
    /// The solver seed of the pair (block `block`, subset `subset`): a hash of the run's seed
    /// and the pair, so each pair's result is fixed before any thread runs.
    pub fn pair_seed(&self, block: usize, subset: usize) -> u64 {
        self.seed ^ rng::mix(self.seed, block as u64, subset as u64)
    }
}

/// One block's curvature over the data subsets.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockStats {
    /// The block's name.
    pub name: String,
    /// Its parameter count.
    pub params: usize,
    /// The top eigenvalue of the block Hessian on each subset.
    pub eigenvalues: Vec<f64>,
    /// The smallest eigenvalue on each subset (Lanczos only; empty with power iteration).
    pub smallest: Vec<f64>,
    /// Whether the solver converged on each subset (the last iterate is reported when not).
    pub converged: Vec<bool>,
    /// Hessian-vector products used over all subsets.
    pub hvps: usize,
    /// Mean of `eigenvalues`.
    pub mean: f64,
    /// Population standard deviation of `eigenvalues` (divisor `N`, as NumPy's default).
    pub std: f64,
    /// Q-BERT's sensitivity `Ω = |mean| + std`.
    pub omega: f64,
}

impl BlockStats {
    /// Whether any subset showed negative curvature (a negative top eigenvalue, or with
    /// Lanczos a negative smallest one): the parameters are not at a local minimum of that
    /// subset's loss. Q-BERT saw this on SQuAD.
    pub fn negative_curvature(&self) -> bool {
        self.eigenvalues.iter().chain(&self.smallest).any(|&l| l < 0.0)
    }
}

struct Task<F> {
    top: f64,
    smallest: Option<f64>,
    converged: bool,
    hvps: usize,
    /// The top Ritz vector (Lanczos with warm starts only), the next subset's hint.
    vector: Option<Array1<F>>,
}

fn run_task<F: Float>(
    curvature: &dyn BlockCurvature<F>,
    product: Product,
    block: usize,
    seed: u64,
    solver: TopEigen,
    hint: Option<&Array1<F>>,
    keep: bool,
) -> Result<Task<F>> {
    let op = BlockOperator::new(curvature, product, block)?;
    match solver {
        TopEigen::Power(p) => match op.power_iteration(&p.with_seed(seed)) {
            Ok(e) => Ok(Task { top: e.values[0].as_f64(), smallest: None, converged: true, hvps: e.hvps, vector: None }),
            Err(HessianError::NoConvergence { partial }) => {
                Ok(Task { top: partial.values[0], smallest: None, converged: false, hvps: partial.hvps, vector: None })
            }
            Err(e) => Err(e),
        },
        TopEigen::Lanczos(l) => match crate::lanczos::lanczos_from(&op, &l.with_seed(seed), hint) {
            Ok(e) => Ok(Task {
                top: e.top.values[0].as_f64(),
                smallest: Some(e.smallest.values[0].as_f64()),
                converged: true,
                hvps: e.top.hvps,
                vector: keep.then(|| e.top.vectors.column(0).to_owned()),
            }),
            Err(HessianError::NoConvergence { partial }) => Ok(Task {
                top: partial.values[0],
                smallest: partial.values.last().copied(),
                converged: false,
                hvps: partial.hvps,
                vector: None,
            }),
            Err(e) => Err(e),
        },
    }
}

/// Q-BERT's statistics: splits the model's samples into `subsets` seeded subsets, finds the
/// top eigenvalue of every block's Hessian on every subset, and returns per block the
/// eigenvalues, their mean and standard deviation, and `Ω = |mean| + std`.
///
/// Each subset's curvature is prepared once ([`Autodiff::curvature`]: a model may keep its
/// forward pass) and shared by every block's solver. With the `rayon` feature the blocks of
/// a subset run in parallel; each pair's work and seed are fixed in advance, so the results
/// are identical with and without it. A solver
/// that misses its tolerance does not fail the run: its last eigenvalue estimate is used
/// and `converged` records it.
///
/// # Errors
/// [`HessianError::InvalidSubsets`], [`HessianError::ShapeMismatch`] /
/// [`HessianError::NonFinite`] for `w`, block errors, and the model's errors.
pub fn qbert_statistics<F, M>(model: &M, w: ArrayView1<'_, F>, params: &QbertParams) -> Result<Vec<BlockStats>>
where
    F: Float,
    M: Autodiff<F> + Sync + ?Sized,
{
    let samples: Vec<usize> = (0..model.samples()).collect();
    let blocks: Vec<usize> = (0..model.blocks().len()).collect();
    qbert_statistics_for(model, w, &samples, &blocks, params)
}

/// [`qbert_statistics`] restricted to the given samples (split into the subsets, for example
/// a training set) and blocks (for example the weight matrices), in the order given.
///
/// # Errors
/// As [`qbert_statistics`], plus [`HessianError::SampleOutOfRange`] for a sample index past
/// the model's samples (reported when its subset is used).
pub fn qbert_statistics_for<F, M>(
    model: &M,
    w: ArrayView1<'_, F>,
    samples: &[usize],
    blocks: &[usize],
    params: &QbertParams,
) -> Result<Vec<BlockStats>>
where
    F: Float,
    M: Autodiff<F> + Sync + ?Sized,
{
    qbert_statistics_with_progress(model, w, samples, blocks, params, |_, _| {})
}

/// [`qbert_statistics_for`], calling `on_subset(done, subsets)` each time the solves of
/// another data subset have ended (`done` = 1, 2, …, `subsets`), for a caller that reports
/// progress: on a real model each subset takes seconds to minutes. The results are the same.
///
/// # Errors
/// As [`qbert_statistics_for`].
pub fn qbert_statistics_with_progress<F, M>(
    model: &M,
    w: ArrayView1<'_, F>,
    samples: &[usize],
    blocks: &[usize],
    params: &QbertParams,
    mut on_subset: impl FnMut(usize, usize),
) -> Result<Vec<BlockStats>>
where
    F: Float,
    M: Autodiff<F> + Sync + ?Sized,
{
    let subsets: Vec<Vec<usize>> = split_subsets(samples.len(), params.subsets, params.seed)?
        .into_iter()
        .map(|part| part.into_iter().map(|i| samples[i]).collect())
        .collect();
    for &b in blocks {
        model.block(b)?;
    }
    // Validates w once (shape, finiteness) before fanning out.
    HessianOperator::full(model, w, Batch::All)?;
    let nb = blocks.len();
    // results[s][i]: block blocks[i] on subset s.
    let mut results: Vec<Vec<Task<F>>> = Vec::with_capacity(subsets.len());
    let keep = params.warm_start && matches!(params.solver, TopEigen::Lanczos(_));
    for (s, subset) in subsets.iter().enumerate() {
        let curvature = model.curvature(w, Batch::Indices(subset))?;
        let previous = results.last();
        let job = |(i, &b): (usize, &usize)| {
            let hint = previous.and_then(|p: &Vec<Task<F>>| p[i].vector.as_ref());
            run_task(&*curvature, params.product, b, params.pair_seed(b, s), params.solver, hint, keep && s + 1 < subsets.len())
        };
        #[cfg(feature = "rayon")]
        let tasks: Result<Vec<Task<F>>> = {
            use rayon::prelude::*;
            blocks.par_iter().enumerate().map(job).collect()
        };
        #[cfg(not(feature = "rayon"))]
        let tasks: Result<Vec<Task<F>>> = blocks.iter().enumerate().map(job).collect();
        let tasks = tasks?;
        // Only the last subset's vectors are needed.
        if let Some(p) = results.last_mut() {
            p.iter_mut().for_each(|t| t.vector = None);
        }
        results.push(tasks);
        on_subset(s + 1, subsets.len());
    }
    let mut per_subset: Vec<_> = results.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(nb);
    for block in blocks.iter().map(|&b| &model.blocks()[b]) {
        let mut st = BlockStats {
            name: block.name().to_string(),
            params: block.len(),
            eigenvalues: vec![],
            smallest: vec![],
            converged: vec![],
            hvps: 0,
            mean: 0.0,
            std: 0.0,
            omega: 0.0,
        };
        for tasks in &mut per_subset {
            let t = tasks.next().ok_or(HessianError::Empty)?;
            st.eigenvalues.push(t.top);
            st.smallest.extend(t.smallest);
            st.converged.push(t.converged);
            st.hvps += t.hvps;
        }
        let (mean, std) = mean_std(&st.eigenvalues);
        st.mean = mean;
        st.std = std;
        st.omega = mean.abs() + std;
        out.push(st);
    }
    Ok(out)
}

/// Mean and population standard deviation.
pub(crate) fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}
