//! K-means codebook quantization for 1-D data (weights): Lloyd in O(k log n) per iteration on
//! sorted data, and the exact optimum by dynamic programming over contiguous clusters.

mod dp;
mod penalty;

use ndarray::{ArrayBase, Data, Dimension};

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::lut::{LutKind, LutTensor, TableDtype};
use crate::par;
use crate::rng;
use crate::spec::Granularity;
use crate::uniform::{layout_of_granularity, row_major};

/// How the centroids start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum KMeansInit {
    /// Evenly spaced over `[min, max]` of the non-zero values (Deep Compression). The default.
    #[default]
    Linear,
    /// k-means++ (D² sampling), seeded: the draws depend only on the seed.
    PlusPlus {
        /// The seed.
        seed: u64,
    },
    /// At the quantiles `(j + ½)/k` of the data (density-based).
    Density,
}

/// Which clustering algorithm runs.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum KMeansAlgorithm {
    /// Lloyd's iterations from the initial centroids, until no label changes, the largest
    /// centroid move is at most `tol · (max − min)`, or `max_iter` iterations.
    Lloyd {
        /// Iteration cap (at least 1).
        max_iter: usize,
        /// Relative tolerance on centroid moves (0 = until labels stop changing).
        tol: f64,
    },
    /// The globally optimal clustering (least inertia), by dynamic programming over
    /// contiguous clusters of the sorted data; the initialisation is not used.
    Exact,
}

impl Default for KMeansAlgorithm {
    fn default() -> Self {
        KMeansAlgorithm::Lloyd { max_iter: 300, tol: 0.0 }
    }
}

/// A validated k-means quantization spec.
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `k` | 16 | centroids per slice (`bits(b)` sets `k = 2^b`) | `1..=256` |
/// | `granularity` | per tensor | which elements share a codebook | group size ≥ 1 |
/// | `init` | [`KMeansInit::Linear`] | starting centroids (Lloyd only) | any |
/// | `algorithm` | Lloyd, 300 iterations, tol 0 | clustering | `max_iter ≥ 1`, `tol ≥ 0` |
/// | `table` | [`TableDtype::F32`] | table storage precision | any |
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(into = "crate::serde_specs::KMeansFields", try_from = "crate::serde_specs::KMeansFields")
)]
pub struct KMeansSpec {
    k: usize,
    granularity: Granularity,
    init: KMeansInit,
    algorithm: KMeansAlgorithm,
    table: TableDtype,
}

impl Default for KMeansSpec {
    fn default() -> Self {
        Self {
            k: 16,
            granularity: Granularity::PerTensor,
            init: KMeansInit::Linear,
            algorithm: KMeansAlgorithm::default(),
            table: TableDtype::F32,
        }
    }
}

/// Chained setters for a [`KMeansSpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KMeansSpecBuilder {
    spec: KMeansSpec,
    bits: Option<u8>,
}

impl KMeansSpec {
    /// A builder with the defaults in the table.
    pub fn builder() -> KMeansSpecBuilder {
        KMeansSpecBuilder { spec: Self::default(), bits: None }
    }
    /// Centroids per slice.
    pub fn k(&self) -> usize {
        self.k
    }
    /// The granularity.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }
    /// The initialisation.
    pub fn init(&self) -> KMeansInit {
        self.init
    }
    /// The algorithm.
    pub fn algorithm(&self) -> KMeansAlgorithm {
        self.algorithm
    }
    /// The table precision.
    pub fn table(&self) -> TableDtype {
        self.table
    }
    /// A copy with another granularity (validated).
    ///
    /// # Errors
    /// [`QuantError::InvalidGroupSize`] for a group size of zero.
    pub fn with_granularity(&self, granularity: Granularity) -> Result<Self> {
        KMeansSpecBuilder { spec: *self, bits: None }.granularity(granularity).check()
    }
}

impl KMeansSpecBuilder {
    /// Sets the number of centroids.
    pub fn k(mut self, k: usize) -> Self {
        self.spec.k = k;
        self.bits = None;
        self
    }
    /// Sets `k = 2^bits` (`bits` in `1..=8`).
    pub fn bits(mut self, bits: u8) -> Self {
        self.bits = Some(bits);
        self
    }
    /// Sets the granularity.
    pub fn granularity(mut self, g: Granularity) -> Self {
        self.spec.granularity = g;
        self
    }
    /// One codebook per index along `axis`.
    pub fn per_channel(self, axis: usize) -> Self {
        self.granularity(Granularity::PerChannel { axis })
    }
    /// One codebook per group of `size` along `axis`.
    pub fn per_group(self, axis: usize, size: usize) -> Self {
        self.granularity(Granularity::PerGroup { axis, size })
    }
    /// Sets the initialisation.
    pub fn init(mut self, init: KMeansInit) -> Self {
        self.spec.init = init;
        self
    }
    /// Sets the algorithm.
    pub fn algorithm(mut self, a: KMeansAlgorithm) -> Self {
        self.spec.algorithm = a;
        self
    }
    /// Shorthand for [`KMeansAlgorithm::Exact`].
    pub fn exact(self) -> Self {
        self.algorithm(KMeansAlgorithm::Exact)
    }
    /// Sets the table precision.
    pub fn table(mut self, t: TableDtype) -> Self {
        self.spec.table = t;
        self
    }
    /// Validates.
    ///
    /// # Errors
    /// [`QuantError::InvalidBits`], [`QuantError::InvalidClusterCount`],
    /// [`QuantError::InvalidIterations`], [`QuantError::InvalidTolerance`],
    /// [`QuantError::InvalidGroupSize`].
    pub fn check(self) -> Result<KMeansSpec> {
        let mut s = self.spec;
        if let Some(bits) = self.bits {
            if !(1..=8).contains(&bits) {
                return Err(QuantError::InvalidBits { bits, min: 1, max: 8 });
            }
            s.k = 1 << bits;
        }
        validate_k(s.k)?;
        if let KMeansAlgorithm::Lloyd { max_iter, tol } = s.algorithm {
            validate_lloyd(max_iter, tol)?;
        }
        if let Granularity::PerGroup { size: 0, .. } = s.granularity {
            return Err(QuantError::InvalidGroupSize { size: 0 });
        }
        Ok(s)
    }
}

fn validate_k(k: usize) -> Result<()> {
    if (1..=256).contains(&k) { Ok(()) } else { Err(QuantError::InvalidClusterCount { k }) }
}

fn validate_lloyd(max_iter: usize, tol: f64) -> Result<()> {
    if max_iter == 0 {
        return Err(QuantError::InvalidIterations);
    }
    if !(tol.is_finite() && tol >= 0.0) {
        return Err(QuantError::InvalidTolerance { tol });
    }
    Ok(())
}

/// The result of clustering one set of values.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// The `k` centroids in ascending order (repeated values when there are fewer distinct
    /// data values than `k`).
    pub centroids: Vec<f64>,
    /// `Σ (x − nearest centroid)²`.
    pub inertia: f64,
    /// Lloyd iterations run (0 for the exact algorithm).
    pub iterations: usize,
    /// Lloyd: the inertia of each iteration's assignment against the centroids it was made
    /// for (the first entry is the initial centroids' inertia); never increases. Empty for
    /// the exact algorithm.
    pub inertia_history: Vec<f64>,
    /// Whether Lloyd stopped on its criterion rather than the iteration cap (always true for
    /// the exact algorithm).
    pub converged: bool,
}

/// Distinct sorted values (centred on their mean for accuracy) with multiplicities and
/// prefix sums of count, sum and sum of squares.
struct Sorted {
    values: Vec<f64>,
    shift: f64,
    s0: Vec<f64>,
    s1: Vec<f64>,
    s2: Vec<f64>,
}

impl Sorted {
    fn new(data: &[f64]) -> Self {
        let mut v = data.to_vec();
        v.sort_unstable_by(f64::total_cmp);
        let shift = v.iter().sum::<f64>() / v.len() as f64;
        let mut values = Vec::new();
        let mut counts: Vec<f64> = Vec::new();
        for x in v {
            match (values.last(), counts.last_mut()) {
                (Some(&last), Some(count)) if last == x - shift => *count += 1.0,
                _ => {
                    values.push(x - shift);
                    counts.push(1.0);
                }
            }
        }
        let m = values.len();
        let (mut s0, mut s1, mut s2) = (vec![0.0; m + 1], vec![0.0; m + 1], vec![0.0; m + 1]);
        for i in 0..m {
            s0[i + 1] = s0[i] + counts[i];
            s1[i + 1] = s1[i] + counts[i] * values[i];
            s2[i + 1] = s2[i] + counts[i] * values[i] * values[i];
        }
        Self { values, shift, s0, s1, s2 }
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn prefix(&self) -> dp::Prefix<'_> {
        dp::Prefix { s0: &self.s0, s1: &self.s1, s2: &self.s2 }
    }

    /// Sum of squared deviations from the mean of distinct values `j..i` (0 when empty).
    fn cost(&self, j: usize, i: usize) -> f64 {
        self.prefix().cost(j, i)
    }

    /// `Σ (x − c)²` over distinct values `j..i`.
    fn cost_at(&self, j: usize, i: usize, c: f64) -> f64 {
        let (w, s, q) = (self.s0[i] - self.s0[j], self.s1[i] - self.s1[j], self.s2[i] - self.s2[j]);
        (q - 2.0 * c * s + c * c * w).max(0.0)
    }

    /// For ascending centroids, the end of each cluster: values `≤` the midpoint to the next
    /// centroid go to the lower one.
    fn boundaries(&self, c: &[f64]) -> Vec<usize> {
        let mut b: Vec<usize> = c.windows(2).map(|w| self.values.partition_point(|&x| x <= (w[0] + w[1]) / 2.0)).collect();
        b.push(self.len());
        b
    }

    fn inertia(&self, c: &[f64], b: &[usize]) -> f64 {
        let mut start = 0;
        b.iter()
            .zip(c)
            .map(|(&end, &cj)| {
                let e = self.cost_at(start, end, cj);
                start = end;
                e
            })
            .sum()
    }
}

fn init_centroids(s: &Sorted, k: usize, init: KMeansInit) -> Vec<f64> {
    let m = s.len();
    let mut c = match init {
        KMeansInit::Linear => {
            // Non-zero weights in the original units: the value equal to −shift is the zero.
            let nz: Vec<f64> = s.values.iter().copied().filter(|&v| v + s.shift != 0.0).collect();
            let (lo, hi) = match (nz.first(), nz.last()) {
                (Some(&lo), Some(&hi)) => (lo, hi),
                _ => (-s.shift, -s.shift),
            };
            if k == 1 { vec![(lo + hi) / 2.0] } else { (0..k).map(|j| lo + (hi - lo) * j as f64 / (k - 1) as f64).collect() }
        }
        KMeansInit::Density => {
            let n = s.s0[m];
            (0..k)
                .map(|j| {
                    let rank = (j as f64 + 0.5) / k as f64 * n;
                    let i = s.s0[1..].partition_point(|&cum| cum <= rank).min(m - 1);
                    s.values[i]
                })
                .collect()
        }
        KMeansInit::PlusPlus { seed } => {
            let weight = |i: usize| s.s0[i + 1] - s.s0[i];
            let pick = |u: f64, w: &[f64]| -> usize {
                let total: f64 = w.iter().sum();
                let mut t = u * total;
                for (i, &wi) in w.iter().enumerate() {
                    if t < wi {
                        return i;
                    }
                    t -= wi;
                }
                w.len() - 1
            };
            let counts: Vec<f64> = (0..m).map(weight).collect();
            let first = pick(rng::unit(seed, 0), &counts);
            let mut chosen = vec![s.values[first]];
            let mut d2: Vec<f64> = s.values.iter().map(|&v| (v - s.values[first]).powi(2)).collect();
            for j in 1..k {
                let w: Vec<f64> = d2.iter().zip(&counts).map(|(d, c)| d * c).collect();
                let idx = if w.iter().sum::<f64>() > 0.0 { pick(rng::unit(seed, j as u64), &w) } else { first };
                let c = s.values[idx];
                chosen.push(c);
                for (d, &v) in d2.iter_mut().zip(&s.values) {
                    *d = d.min((v - c).powi(2));
                }
            }
            chosen
        }
    };
    c.sort_by(f64::total_cmp);
    c
}

fn lloyd(s: &Sorted, mut c: Vec<f64>, max_iter: usize, tol: f64) -> Clustering {
    let span = s.values.last().unwrap_or(&0.0) - s.values.first().unwrap_or(&0.0);
    let mut history = Vec::new();
    let mut prev: Option<Vec<usize>> = None;
    let mut converged = false;
    let mut iterations = 0;
    while iterations < max_iter {
        iterations += 1;
        let b = s.boundaries(&c);
        history.push(s.inertia(&c, &b));
        if prev.as_ref() == Some(&b) {
            converged = true;
            break;
        }
        let mut start = 0;
        let mut next: Vec<f64> = b
            .iter()
            .zip(&c)
            .map(|(&end, &cj)| {
                let w = s.s0[end] - s.s0[start];
                let mean = if w > 0.0 { (s.s1[end] - s.s1[start]) / w } else { cj };
                start = end;
                mean
            })
            .collect();
        next.sort_by(f64::total_cmp);
        let shift = next.iter().zip(&c).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        c = next;
        prev = Some(b);
        if tol > 0.0 && shift <= tol * span {
            converged = true;
            break;
        }
    }
    let b = s.boundaries(&c);
    let inertia = s.inertia(&c, &b);
    Clustering { centroids: c.iter().map(|v| v + s.shift).collect(), inertia, iterations, inertia_history: history, converged }
}

fn exact(s: &Sorted, k: usize) -> Clustering {
    let m = s.len();
    if k >= m {
        // Every distinct value is its own cluster; surplus centroids repeat the largest value.
        let mut c: Vec<f64> = s.values.iter().map(|v| v + s.shift).collect();
        let last = *c.last().unwrap_or(&s.shift);
        c.resize(k, last);
        return Clustering { centroids: c, inertia: 0.0, iterations: 0, inertia_history: Vec::new(), converged: true };
    }
    let ends = dp::optimal_ends(s.prefix(), k);
    // Each cluster's mean and its cost from the prefix sums.
    let starts = core::iter::once(0).chain(ends.iter().copied());
    let (centroids, costs): (Vec<f64>, Vec<f64>) = starts
        .zip(&ends)
        .map(|(start, &end)| {
            let w = s.s0[end] - s.s0[start];
            let c = if w > 0.0 { (s.s1[end] - s.s1[start]) / w } else { 0.0 };
            (c + s.shift, s.cost(start, end))
        })
        .unzip();
    let inertia = costs.iter().sum();
    Clustering { centroids, inertia, iterations: 0, inertia_history: Vec::new(), converged: true }
}

/// Clusters 1-D `values` into `k` centroids.
///
/// Lloyd sorts once and then costs O(k log n) per iteration: assignments are the positions of
/// the midpoints between sorted centroids, and means come from prefix sums. The exact
/// algorithm finds the optimal partition of the sorted distinct values into contiguous
/// clusters (the Ckmeans.1d.dp problem of Wang & Song). For `k ≥ 4` it prices clusters
/// (Lagrangian relaxation): one O(m log m) pass per price, a handful of prices whatever `k`
/// is, and memory linear in `m`. When no price gives exactly `k` clusters (the least cost is
/// linear in the cluster count around `k`, as with exactly symmetric data), and for `k ≤ 3`,
/// the dynamic programme runs layer by layer: O(k·m log m) time and about `k·m` bytes of
/// back-pointers. Both are exact.
///
/// # Errors
/// [`QuantError::Empty`], [`QuantError::NonFinite`], [`QuantError::InvalidClusterCount`],
/// [`QuantError::InvalidIterations`], [`QuantError::InvalidTolerance`].
pub fn kmeans_1d(values: &[f64], k: usize, init: KMeansInit, algorithm: KMeansAlgorithm) -> Result<Clustering> {
    if values.is_empty() {
        return Err(QuantError::Empty);
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    validate_k(k)?;
    let s = Sorted::new(values);
    Ok(match algorithm {
        KMeansAlgorithm::Lloyd { max_iter, tol } => {
            validate_lloyd(max_iter, tol)?;
            lloyd(&s, init_centroids(&s, k, init), max_iter, tol)
        }
        KMeansAlgorithm::Exact => exact(&s, k),
    })
}

/// Diagnostics of [`kmeans_quantize`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansInfo {
    /// The clustering of each slice (centroids before rounding to the table precision).
    pub slices: Vec<Clustering>,
    /// Each slice's inertia with the stored (rounded) table and the final codes.
    pub inertia: Vec<f64>,
}

/// Index of the nearest entry of an ascending table given its midpoints (ties to the lower
/// entry).
fn nearest(mids: &[f64], x: f64) -> u8 {
    mids.partition_point(|&m| x > m) as u8
}

/// Quantizes `x` to a k-means codebook per slice.
///
/// ```
/// use ndarray::array;
/// use quant_core::{kmeans_quantize, KMeansSpec};
/// let w = array![0.1f32, 0.12, 0.5, 0.52, -0.3, -0.31];
/// let (t, info) = kmeans_quantize(&w, &KMeansSpec::builder().k(3).exact().check()?)?;
/// assert_eq!(t.bits(), 2);
/// assert!(info.inertia[0] < 1e-3);
/// # Ok::<(), quant_core::QuantError>(())
/// ```
///
/// # Errors
/// [`QuantError::Empty`], [`QuantError::InvalidAxis`], [`QuantError::NonFinite`], and
/// [`QuantError::TableOverflow`] when a centroid does not fit the table precision.
pub fn kmeans_quantize<F: Float, S: Data<Elem = F>, D: Dimension>(
    x: &ArrayBase<S, D>,
    spec: &KMeansSpec,
) -> Result<(LutTensor<F>, KMeansInfo)> {
    let layout = layout_of_granularity(x.shape(), spec.granularity)?;
    let data = row_major(x);
    if let Some(index) = data.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    let slices: Vec<Vec<f64>> = layout.gather(&data).into_iter().map(|s| s.into_iter().map(|v| v.as_f64()).collect()).collect();
    let results = par::map(slices, |xs| -> Result<(Clustering, Vec<F>, Vec<u8>, f64)> {
        let c = kmeans_1d(&xs, spec.k, spec.init, spec.algorithm)?;
        let mut table = c.centroids.iter().map(|&v| spec.table.round(F::cast(v))).collect::<Result<Vec<F>>>()?;
        table.sort_by(|a, b| a.partial_cmp(b).unwrap_or(core::cmp::Ordering::Equal));
        let t64: Vec<f64> = table.iter().map(|v| v.as_f64()).collect();
        let mids: Vec<f64> = t64.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let codes: Vec<u8> = xs.iter().map(|&v| nearest(&mids, v)).collect();
        let inertia = xs.iter().zip(&codes).map(|(&v, &q)| (v - t64[usize::from(q)]).powi(2)).sum();
        Ok((c, table, codes, inertia))
    });
    let mut info = KMeansInfo { slices: Vec::new(), inertia: Vec::new() };
    let mut tables = Vec::new();
    let mut codes = Vec::new();
    for r in results {
        let (c, t, q, e) = r?;
        info.slices.push(c);
        info.inertia.push(e);
        tables.extend(t);
        codes.push(q);
    }
    let t = LutTensor::build(x.shape(), &layout, spec.granularity, LutKind::Codebook(spec.table), spec.k, tables, &codes)?;
    Ok((t, info))
}

/// How [`centroid_gradients`] combines the gradients of the weights sharing a centroid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum GradientReduction {
    /// `dL/dC_k = Σ dL/dW_j` over the weights labelled `k` (Deep Compression). The default.
    #[default]
    Sum,
    /// The mean instead of the sum (the MIT lab's update, which resets a centroid to the mean
    /// of its SGD-updated members); 0 for an unused centroid.
    Mean,
}

/// Gradients of the loss with respect to every table entry, slice after slice (the layout
/// of [`LutTensor::tables`]), from the gradient with respect to the dequantized weights.
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when `grad` has another shape than the tensor,
/// [`QuantError::NonFinite`] for a NaN or infinite gradient.
pub fn centroid_gradients<F: Float, S: Data<Elem = F>, D: Dimension>(
    t: &LutTensor<F>,
    grad: &ArrayBase<S, D>,
    reduction: GradientReduction,
) -> Result<Vec<F>> {
    if grad.shape() != t.shape() {
        return Err(QuantError::ShapeMismatch { expected: t.shape().to_vec(), got: grad.shape().to_vec() });
    }
    let g = row_major(grad);
    if let Some(index) = g.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    let layout = t.layout()?;
    let codes = t.codes().unpack();
    let levels = t.levels();
    let mut sums = vec![F::zero(); t.tables().len()];
    let mut counts = vec![0usize; t.tables().len()];
    layout.for_each_segment(0..g.len(), |p, r| {
        for i in r {
            let slot = p * levels + usize::from(codes[i]);
            if let Some(s) = sums.get_mut(slot) {
                *s += g[i];
                counts[slot] += 1;
            }
        }
    });
    if reduction == GradientReduction::Mean {
        for (s, &c) in sums.iter_mut().zip(&counts) {
            *s = if c == 0 { F::zero() } else { *s / F::cast(c as f64) };
        }
    }
    Ok(sums)
}

impl<F: Float> LutTensor<F> {
    /// One gradient step on a codebook with the codes fixed: `table -= lr · grads`, then each
    /// entry is rounded to the table precision (k-means QAT, Deep Compression).
    ///
    /// # Errors
    /// [`QuantError::NotACodebook`] for ternary or binary tensors,
    /// [`QuantError::ParamCountMismatch`] when `grads` is not one value per table entry,
    /// [`QuantError::NonFinite`] for non-finite gradients or learning rate, and
    /// [`QuantError::TableOverflow`]; on error the tensor is unchanged.
    pub fn apply_table_step(&mut self, grads: &[F], lr: F) -> Result<()> {
        let LutKind::Codebook(dtype) = self.kind else { return Err(QuantError::NotACodebook) };
        if grads.len() != self.tables.len() {
            return Err(QuantError::ParamCountMismatch { expected: self.tables.len(), got: grads.len() });
        }
        if !lr.is_finite() {
            return Err(QuantError::NonFinite { index: 0 });
        }
        if let Some(index) = grads.iter().position(|g| !g.is_finite()) {
            return Err(QuantError::NonFinite { index });
        }
        let next = self.tables.iter().zip(grads).map(|(&c, &g)| dtype.round(c - lr * g)).collect::<Result<Vec<F>>>()?;
        self.tables = next;
        Ok(())
    }
}
