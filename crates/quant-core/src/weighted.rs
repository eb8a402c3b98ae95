//! Importance-weighted fits: every slice's grid chosen for the least weighted squared error
//! `Σ_j h_j (x_j − x̂_j)²` instead of the plain one.
//!
//! The weights come one per position along the tensor's last axis. For a linear layer's
//! weight matrix `W` (`out × in`, applied as `W x`) the natural choice is the diagonal of the
//! layer Hessian `XᵀX` of its calibration inputs: `h_j` is the summed square of input `j`, so
//! an error on a weight that multiplies a large input costs more (llama.cpp's importance
//! matrix holds the same numbers). With all weights equal the objective is the plain squared
//! error.
//!
//! One slice, in three steps, each keeping the best grid found so far on the weighted error:
//! 1. the spec's own range estimate (min-max, percentile or the plain MSE search) as the start;
//! 2. a search over the min-max range shrunk towards zero, `[α·lo, α·hi]`, and over the
//!    min-max range of the elements with a nonzero weight when that is narrower: for a
//!    [`RangeEstimator::Mse`] spec its own `α = k/steps`, `k = steps..=1`, otherwise the
//!    [`WEIGHTED_SEARCH_STEPS`] + 1 values `α = 1 − k/40`, `k = 0..=20` (clipping by up to
//!    half). Of these `K` candidates, every `⌊√K⌋`-th is tried, then every one within
//!    `⌊√K⌋ − 1` of the best of those (12 of the default 21);
//! 3. for [`Scheme::AsymmetricGrid`] and the symmetric schemes, rounds of weighted least
//!    squares: for the current codes `t`, the step `s` and offset `m` minimising
//!    `Σ h (x − s·t − m)²` (symmetric: `m = 0`), kept only while the weighted error falls
//!    (as many rounds as a [`TableFit::LeastSquares`] spec says, otherwise
//!    [`WEIGHTED_REFINE_ROUNDS`]). [`Scheme::AsymmetricExactZero`]'s integer zero point has no
//!    least-squares form, so it stops after step 2.
//!
//! Every candidate is what [`SliceParams::for_spec`] gives (for the default grid scheme with
//! native or tabled parameters computed lane-wise by the same operations), so steps and
//! offsets are the values of the spec's parameter type. Two-level tables
//! ([`ParamDtype::Quantized`]) are then built from the fitted slices; with [`TableFit::Cover`]
//! their codes are refined on the weighted error. The search ranks its candidates on weighted
//! errors summed term by term in the element type, in element order (the codes and the
//! reconstruction in the element type, as the quantizer computes them); its winner is then
//! compared with the start, and the least-squares rounds with each other, on errors summed in
//! f64. A candidate replaces the best only when strictly lower; since the start is the
//! unweighted estimate, a slice's weighted error (in f64) is never above that of the spec's
//! own grid (before two-level tables, which round the fitted values).
//!
//! A slice whose weights are all zero (inputs never active) keeps the spec's own grid.
//!
//! Slices that are contiguous runs of one length (groups along the last axis, rows) are fitted
//! sixteen at a time, one per vector lane, from a column-wise copy; every lane does exactly
//! the operations, in the same order, of a slice fitted alone ([`fit_slice`]), so results do
//! not depend on batching, threads or the CPU (on x86-64 with AVX-512 the same code is also
//! compiled for those units and chosen at run time). Other layouts are gathered slice by slice.

use ndarray::{ArrayBase, Data, Dimension};

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::layout::Layout;
use crate::par;
use crate::params::{QuantParams, SliceParams, clip, grid_step, stored_limit};
use crate::range::estimate;
use crate::spec::{ParamDtype, RangeEstimator, Scheme, TableFit, UniformSpec};
use crate::tables::refine_tables;
use crate::tensor::QuantizedTensor;
use crate::uniform::{first_non_finite, layout_of, row_major};

/// Candidates of the shrinking search beyond the min-max range itself, for specs without
/// their own MSE search: `α = 1 − k/40` for `k = 0..=20`.
pub const WEIGHTED_SEARCH_STEPS: u16 = 20;
/// Least-squares rounds of the refinement for specs without a [`TableFit::LeastSquares`]
/// setting of their own.
pub const WEIGHTED_REFINE_ROUNDS: u8 = 3;

/// A grid with step `s`, offset `m` and signed codes `lo..=hi` (integers), coded by the
/// reciprocal multiply (the default scale mode) with half-even ties, as the kernels code:
/// what the refinement of two-level table codes ranks its candidates on.
pub(crate) struct Signed<F> {
    s: F,
    inv: F,
    m: F,
    lo: F,
    hi: F,
}

impl<F: Float> Signed<F> {
    /// The grid of step `s`, offset `m` and codes `lo..=hi`.
    pub(crate) fn multiply(s: F, m: F, lo: F, hi: F) -> Self {
        Self { s, inv: F::one() / s, m, lo, hi }
    }

    /// One term `h (x − x̂)²` of [`weighted_sse`].
    #[inline(always)]
    fn term(&self, x: F, h: F) -> F {
        let y = (x - self.m) * self.inv;
        let y = if y > self.lo { y } else { self.lo };
        let y = if y < self.hi { y } else { self.hi };
        let e = y.round_ties_even_bounded() * self.s + self.m - x;
        h * (e * e)
    }
}

/// `Σ h (x − x̂)²` on the grid of `g`: sixteen partial sums in the element type (so the loop
/// fills the vector units), added in a fixed order and converted to f64 at the end.
#[inline(always)]
pub(crate) fn weighted_sse<F: Float>(xs: &[F], hs: &[F], g: &Signed<F>) -> f64 {
    const W: usize = 16;
    let mut acc = [F::zero(); W];
    let n = xs.len().min(hs.len());
    let full = n / W * W;
    let (xa, ha) = (&xs[..full], &hs[..full]);
    for k in (0..full).step_by(W) {
        let (a, b) = (&xa[k..k + W], &ha[k..k + W]);
        for l in 0..W {
            acc[l] += g.term(a[l], b[l]);
        }
    }
    // Tree reduction in the lanes (vector adds), then one conversion.
    let mut w = W / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    let mut sum = acc[0].as_f64();
    for k in full..n {
        sum += g.term(xs[k], hs[k]).as_f64();
    }
    sum
}

/// The range `[lo, hi]` whose grid under `spec` has step `s` and offset `m` (the inverse of
/// [`SliceParams::from_range`] for the grid and symmetric schemes).
fn range_of<F: Float>(s: f64, m: f64, spec: &UniformSpec) -> (F, F) {
    let levels = f64::from((1u32 << spec.bits()) - 1);
    match spec.scheme() {
        Scheme::SymmetricNarrow => {
            let amax = s * f64::from((1i32 << (spec.bits() - 1)) - 1);
            (F::cast(-amax), F::cast(amax))
        }
        Scheme::SymmetricFull => {
            let amax = s * levels / 2.0;
            (F::cast(-amax), F::cast(amax))
        }
        _ => (F::cast(m), F::cast(m + s * levels)),
    }
}

/// Slices fitted side by side, one per vector lane.
const SIDE: usize = 16;
/// Slices per parallel work item (a multiple of [`SIDE`]).
const ITEM: usize = 64 * SIDE;

/// What the fit of every slice shares, from the spec.
#[derive(Clone, Copy)]
struct Fit {
    spec: UniformSpec,
    /// The clipping search (importance-weighted fits); off for the plain fit.
    search: bool,
    max_code: i32,
    /// Candidates per base range, and whether `α = k/steps` (the spec's MSE search) rather
    /// than `α = 1 − k/40`.
    count: u16,
    own_steps: bool,
    /// Least-squares rounds, and whether they fit an offset (grid scheme) or go through 0.
    rounds: u8,
    affine: bool,
    divide: bool,
}

impl Fit {
    fn new(spec: &UniformSpec, search: bool) -> Self {
        let (count, own_steps) = match spec.range() {
            RangeEstimator::Mse { steps } => (steps, true),
            _ => (WEIGHTED_SEARCH_STEPS + 1, false),
        };
        let rounds = match (spec.scheme(), spec.table_fit()) {
            (Scheme::AsymmetricExactZero, _) => 0,
            (_, TableFit::LeastSquares { iterations }) => iterations,
            (_, TableFit::Cover) if search => WEIGHTED_REFINE_ROUNDS,
            (_, TableFit::Cover) => 0,
        };
        Self {
            spec: *spec,
            search,
            max_code: i32::from(spec.max_code()),
            count,
            own_steps,
            rounds,
            affine: spec.scheme() == Scheme::AsymmetricGrid,
            divide: spec.scale_mode() == crate::spec::ScaleMode::Divide,
        }
    }

    /// The spacing of the clipping search's coarse pass (and the reach of its fine pass around
    /// the best coarse candidate): `⌊√count⌋`, 4 for the default 21 candidates.
    fn stride(&self) -> u16 {
        self.count.isqrt().max(1)
    }

    /// The shrink factor of every candidate `k`.
    fn alphas<F: Float>(&self) -> Vec<F> {
        let alpha = |k: u16| if self.own_steps { f64::from(self.count - k) / f64::from(self.count) } else { 1.0 - f64::from(k) / 40.0 };
        (0..self.count.max(1)).map(|k| F::cast(alpha(k))).collect()
    }
}

/// The grids of `W` ranges as [`SliceParams::for_spec`] makes them, with their lanes. For the
/// grid scheme with native or tabled parameters (the default) the same operations run lane by
/// lane without branching on the spec, which the compiler vectorises; otherwise `for_spec`
/// per lane.
#[inline(always)]
fn candidates<F: Float, const W: usize>(lo: &[F; W], hi: &[F; W], fit: &Fit) -> ([SliceParams<F>; W], Grids<F, W>) {
    let spec = &fit.spec;
    let plain = spec.scheme() == Scheme::AsymmetricGrid && matches!(spec.param_dtype(), ParamDtype::Native | ParamDtype::Quantized { .. });
    if !plain {
        let params = core::array::from_fn(|l| SliceParams::for_spec(lo[l], hi[l], spec));
        return (params, Grids::of(&params, fit.max_code));
    }
    // for_spec: tabled parameters clip the range first (to less than from_range's ±F::MAX/4,
    // which is then a no-op); from_range's grid step; no rounding of native or tabled values.
    let limit = stored_limit(spec.param_dtype()).unwrap_or(F::max_value() / F::cast(4.0));
    let levels = F::from_int((1i32 << spec.bits()) - 1);
    let mut g = Grids { s: [F::one(); W], inv: [F::one(); W], m: [F::zero(); W], lo: [F::zero(); W], hi: [F::from_int(fit.max_code); W] };
    for l in 0..W {
        let (a, b) = (clip(lo[l], limit), clip(hi[l], limit));
        g.s[l] = grid_step(a, b, levels);
        g.m[l] = a;
    }
    for l in 0..W {
        g.inv[l] = F::one() / g.s[l];
    }
    (core::array::from_fn(|l| SliceParams { scale: g.s[l], zero_point: 0, offset: g.m[l] }), g)
}

/// The parameters a slot holds before its fit fills it.
fn blank<F: Float>() -> SliceParams<F> {
    SliceParams { scale: F::one(), zero_point: 0, offset: F::zero() }
}

/// The grids of `W` slices, one per lane, coded as the kernels code (half-even ties, the
/// spec's scale mode; the clamp to integer bounds before rounding equals the clamp after it).
struct Grids<F, const W: usize> {
    s: [F; W],
    inv: [F; W],
    m: [F; W],
    lo: [F; W],
    hi: [F; W],
}

impl<F: Float, const W: usize> Grids<F, W> {
    #[inline(always)]
    fn of(params: &[SliceParams<F>; W], max_code: i32) -> Self {
        let mut g = Self { s: [F::one(); W], inv: [F::one(); W], m: [F::zero(); W], lo: [F::zero(); W], hi: [F::zero(); W] };
        for (l, p) in params.iter().enumerate() {
            g.s[l] = p.scale;
            g.inv[l] = F::one() / p.scale;
            g.m[l] = p.offset;
            g.lo[l] = F::from_int(-p.zero_point);
            g.hi[l] = F::from_int(max_code - p.zero_point);
        }
        g
    }

    /// Lane `l`'s signed code of `x`: `round((x − m)/S)` clamped to the code range.
    #[inline(always)]
    fn code<const DIVIDE: bool>(&self, l: usize, x: F) -> F {
        let y = if DIVIDE { (x - self.m[l]) / self.s[l] } else { (x - self.m[l]) * self.inv[l] };
        let y = if y > self.lo[l] { y } else { self.lo[l] };
        let y = if y < self.hi[l] { y } else { self.hi[l] };
        y.round_ties_even_bounded()
    }
}

/// Every lane's `Σ h (x − x̂)²` on its grid, each term and the sum in the element type in
/// element order: what the clipping search ranks its candidates on.
#[inline(always)]
fn lane_sse<F: Float, const W: usize, const DIVIDE: bool>(xs: &[[F; W]], hs: &[[F; W]], g: &Grids<F, W>) -> [F; W] {
    let mut acc = [F::zero(); W];
    for (x, h) in xs.iter().zip(hs) {
        for l in 0..W {
            let e = g.code::<DIVIDE>(l, x[l]) * g.s[l] + g.m[l] - x[l];
            acc[l] += h[l] * (e * e);
        }
    }
    acc
}

/// Every lane's `[Σh, Σht, Σht², Σhx, Σhtx, Σh(x − x̂)²]` for the codes `t` of its grid, in
/// f64 (the error's terms from the reconstruction in the element type, as the quantizer
/// computes it): one least-squares step and the error of the grid it starts from.
#[inline(always)]
fn lane_moments<F: Float, const W: usize, const DIVIDE: bool>(xs: &[[F; W]], hs: &[[F; W]], g: &Grids<F, W>) -> [[f64; W]; 6] {
    let mut out = [[0f64; W]; 6];
    for (x, h) in xs.iter().zip(hs) {
        for l in 0..W {
            let code = g.code::<DIVIDE>(l, x[l]);
            let e = (code * g.s[l] + g.m[l] - x[l]).as_f64();
            let (t, h, x) = (code.as_f64(), h[l].as_f64(), x[l].as_f64());
            let ht = h * t;
            out[0][l] += h;
            out[1][l] += ht;
            out[2][l] += ht * t;
            out[3][l] += h * x;
            out[4][l] += ht * x;
            out[5][l] += h * (e * e);
        }
    }
    out
}

/// The refitted `(s, m)` of one round of weighted least squares from a lane's moments, or
/// `None` when the fit is degenerate (one code, or a non-positive or non-finite step).
#[inline(always)]
fn least_squares_step(fit: &Fit, [sw, st, stt, sx, stx]: [f64; 5]) -> Option<(f64, f64)> {
    let (s, m) = if fit.affine {
        let den = sw * stt - st * st;
        let s = (sw * stx - st * sx) / den;
        (s, (sx - s * st) / sw)
    } else {
        (stx / stt, 0.0)
    };
    (s > 0.0 && s.is_finite() && m.is_finite()).then_some((s, m))
}

/// One base range per lane for the clipping search (module documentation, step 2), over the
/// lanes in `mask` (the others score but never win).
struct Search<'a, F, const W: usize> {
    xs: &'a [[F; W]],
    hs: &'a [[F; W]],
    fit: &'a Fit,
    /// The shrink factor of every candidate `k`.
    alphas: &'a [F],
    base: [(F, F); W],
    mask: [bool; W],
}

impl<F: Float, const W: usize> Search<'_, F, W> {
    /// Candidate `k[l]` of every lane: its errors on the element-type sums, each replacing
    /// the lane's best (`best.0`, its error `best.1`) when strictly lower, for the lanes in
    /// `valid` and the mask.
    #[inline(always)]
    fn score<const DIVIDE: bool>(&self, k: [u16; W], valid: &[bool; W], best: &mut ([SliceParams<F>; W], [F; W])) -> [F; W] {
        let mut lo = [F::zero(); W];
        let mut hi = [F::zero(); W];
        for l in 0..W {
            let a = self.alphas[usize::from(k[l]).min(self.alphas.len() - 1)];
            let (a_lo, a_hi) = self.base[l];
            lo[l] = if a_lo < F::zero() { a_lo * a } else { a_lo };
            hi[l] = if a_hi > F::zero() { a_hi * a } else { a_hi };
        }
        let (candidate, grids) = candidates(&lo, &hi, self.fit);
        let e = lane_sse::<F, W, DIVIDE>(self.xs, self.hs, &grids);
        for l in 0..W {
            if valid[l] && self.mask[l] && e[l] < best.1[l] {
                best.1[l] = e[l];
                best.0[l] = candidate[l];
            }
        }
        e
    }

    /// The search, coarse to fine: every `stride`-th candidate, then every one within a
    /// stride of each lane's best coarse candidate.
    #[inline(always)]
    fn run<const DIVIDE: bool>(&self, best: &mut ([SliceParams<F>; W], [F; W])) {
        let (count, stride) = (self.fit.count, self.fit.stride());
        let (mut coarse_k, mut coarse_e) = ([0u16; W], [F::infinity(); W]);
        let mut k = 0;
        while k < count {
            let e = self.score::<DIVIDE>([k; W], &[true; W], best);
            for l in 0..W {
                if e[l] < coarse_e[l] {
                    coarse_e[l] = e[l];
                    coarse_k[l] = k;
                }
            }
            k += stride;
        }
        for d in 1..stride {
            for up in [false, true] {
                let ks: [Option<u16>; W] =
                    core::array::from_fn(
                        |l| if up { coarse_k[l].checked_add(d).filter(|&k| k < count) } else { coarse_k[l].checked_sub(d) },
                    );
                if ks.iter().zip(&self.mask).any(|(k, &m)| m && k.is_some()) {
                    self.score::<DIVIDE>(ks.map(|k| k.unwrap_or(0)), &ks.map(|k| k.is_some()), best);
                }
            }
        }
    }
}

/// Fits `W` slices held column-wise (`xs[j][l]` is element `j` of slice `l`, `hs[j][l]` its
/// weight; elements finite, weights finite and non-negative, at least one element) into
/// `out`, as the module documentation says. Every lane does exactly the operations, in the
/// same order, of a slice fitted alone (`W = 1`), so results do not depend on batching,
/// threads or the CPU.
#[inline(always)]
fn fit_lanes<F: Float, const W: usize, const DIVIDE: bool>(
    xs: &[[F; W]],
    hs: &[[F; W]],
    fit: &Fit,
    alphas: &[F],
    out: &mut [SliceParams<F>],
) {
    let spec = &fit.spec;
    // The min-max range of each lane, and that of its elements with a nonzero weight.
    let (mut lo, mut hi) = (xs[0], xs[0]);
    let (mut alo, mut ahi) = ([F::infinity(); W], [F::neg_infinity(); W]);
    for (x, h) in xs.iter().zip(hs) {
        for l in 0..W {
            lo[l] = if lo[l] < x[l] { lo[l] } else { x[l] };
            hi[l] = if hi[l] > x[l] { hi[l] } else { x[l] };
            let on = h[l] > F::zero();
            alo[l] = if on && x[l] < alo[l] { x[l] } else { alo[l] };
            ahi[l] = if on && x[l] > ahi[l] { x[l] } else { ahi[l] };
        }
    }
    // The spec's own estimate starts every lane.
    let mut start = [blank(); W];
    let mut column = Vec::new();
    let mut scratch = Vec::new();
    for l in 0..W {
        let (a, b) = match spec.range() {
            RangeEstimator::MinMax => (lo[l], hi[l]),
            _ => {
                column.clear();
                column.extend(xs.iter().map(|x| x[l]));
                // Elements are finite, so the estimate is.
                estimate(&column, spec, &mut scratch).unwrap_or((lo[l], hi[l]))
            }
        };
        start[l] = SliceParams::for_spec(a, b, spec);
    }
    let mut best = start;
    // No weight (all zero): the spec's grid.
    let idle: [bool; W] = core::array::from_fn(|l| alo[l] > ahi[l]);
    if fit.search {
        let mut search = (best, lane_sse::<F, W, DIVIDE>(xs, hs, &Grids::of(&best, fit.max_code)));
        // The min-max range for every lane, then the narrower range of the active elements
        // for the lanes that have one.
        let narrower: [bool; W] = core::array::from_fn(|l| !idle[l] && (alo[l], ahi[l]) != (lo[l], hi[l]));
        let second: [(F, F); W] = core::array::from_fn(|l| if narrower[l] { (alo[l], ahi[l]) } else { (lo[l], hi[l]) });
        let first: [(F, F); W] = core::array::from_fn(|l| (lo[l], hi[l]));
        for (base, mask) in [(first, [true; W]), (second, narrower)] {
            if mask.contains(&true) {
                Search { xs, hs, fit, alphas, base, mask }.run::<DIVIDE>(&mut search);
            }
        }
        best = search.0;
    }
    // From here every error is summed in f64, and the start is kept unless beaten there.
    let mut moments = lane_moments::<F, W, DIVIDE>(xs, hs, &Grids::of(&best, fit.max_code));
    let moved: [bool; W] = core::array::from_fn(|l| best[l] != start[l]);
    if moved.contains(&true) {
        let own = lane_moments::<F, W, DIVIDE>(xs, hs, &Grids::of(&start, fit.max_code));
        for l in 0..W {
            if moved[l] && own[5][l] <= moments[5][l] {
                best[l] = start[l];
                for i in 0..6 {
                    moments[i][l] = own[i][l];
                }
            }
        }
    }
    // Least-squares rounds, each lane until its error stops falling; a round's pass over the
    // candidate gives its error and the moments of the next round.
    let mut live: [bool; W] = core::array::from_fn(|l| !idle[l]);
    for _ in 0..fit.rounds {
        if !live.contains(&true) {
            break;
        }
        let mut candidate = best;
        for l in 0..W {
            if !live[l] {
                continue;
            }
            let step = least_squares_step(fit, core::array::from_fn(|i| moments[i][l]));
            let range = step.map(|(s, m)| range_of::<F>(s, m, spec)).filter(|(a, b)| a.is_finite() && b.is_finite());
            match range {
                Some((a, b)) => candidate[l] = SliceParams::for_spec(a, b, spec),
                None => live[l] = false,
            }
        }
        let next = lane_moments::<F, W, DIVIDE>(xs, hs, &Grids::of(&candidate, fit.max_code));
        for l in 0..W {
            if live[l] && next[5][l] < moments[5][l] {
                best[l] = candidate[l];
                for i in 0..6 {
                    moments[i][l] = next[i][l];
                }
            } else {
                live[l] = false;
            }
        }
    }
    for l in 0..W {
        out[l] = if idle[l] { start[l] } else { best[l] };
    }
}

/// [`fit_lanes`] for the spec's scale mode.
#[inline(always)]
fn fit_lanes_for<F: Float, const W: usize>(xs: &[[F; W]], hs: &[[F; W]], fit: &Fit, alphas: &[F], out: &mut [SliceParams<F>]) {
    if fit.divide { fit_lanes::<F, W, true>(xs, hs, fit, alphas, out) } else { fit_lanes::<F, W, false>(xs, hs, fit, alphas, out) }
}

/// The weights of one slice, `weights[(first + j) mod n]` for its `j`-th element, into `out`
/// (copied in runs up to each wrap of `weights`).
#[inline(always)]
fn weights_run<F: Float>(weights: &[F], first: usize, out: &mut [F]) {
    let n = weights.len();
    let (mut i, mut done) = (first % n, 0);
    while done < out.len() {
        let take = (n - i).min(out.len() - done);
        out[done..done + take].copy_from_slice(&weights[i..i + take]);
        done += take;
        i = 0;
    }
}

/// Sixteen consecutive runs of `len` values in `src` column-wise into `cols` (`cols[j][l]` is
/// value `j` of run `l`), by the AVX-512 transpose where `token` proves it.
#[inline(always)]
fn columns<F: Float>(token: Option<crate::simd::Avx512>, src: &[F], len: usize, cols: &mut [[F; SIDE]]) {
    match (token, F::as_f32_slice(src), F::as_f32_slice_mut(cols.as_flattened_mut())) {
        (Some(t), Some(src), Some(dst)) => crate::simd::transpose16(t, src, len, dst),
        _ => {
            for (j, row) in cols.iter_mut().enumerate() {
                for (l, v) in row.iter_mut().enumerate() {
                    *v = src[l * len + j];
                }
            }
        }
    }
}

/// [`fit_runs`] compiled for the baseline target only (the tests compare the two).
#[inline(always)]
fn fit_runs_portable<F: Float>(xs: &[F], len: usize, weights: &[F], first: usize, fit: &Fit, out: &mut [SliceParams<F>]) {
    if len == 0 || weights.is_empty() {
        out.fill(SliceParams::for_spec(F::zero(), F::zero(), &fit.spec));
        return;
    }
    let mut cols: Vec<[F; SIDE]> = vec![[F::zero(); SIDE]; len];
    let mut hs: Vec<[F; SIDE]> = vec![[F::zero(); SIDE]; len];
    let mut runs: Vec<F> = vec![F::zero(); SIDE * len];
    let mut one_x: Vec<[F; 1]> = vec![[F::zero()]; len];
    let mut one_h: Vec<[F; 1]> = vec![[F::zero()]; len];
    let token = crate::simd::Avx512::new();
    // Only the clipping search reads the shrink factors.
    let alphas = if fit.search { fit.alphas::<F>() } else { Vec::new() };
    let mut k = 0;
    while k < out.len() {
        if out.len() - k >= SIDE {
            columns(token, &xs[k * len..(k + SIDE) * len], len, &mut cols);
            // The sixteen slices' weights one after another, then column-wise as the elements.
            for (l, run) in runs.chunks_exact_mut(len).enumerate() {
                weights_run(weights, first + (k + l) * len, run);
            }
            columns(token, &runs, len, &mut hs);
            fit_lanes_for(&cols, &hs, fit, &alphas, &mut out[k..k + SIDE]);
            k += SIDE;
        } else {
            for (v, &x) in one_x.iter_mut().zip(&xs[k * len..(k + 1) * len]) {
                *v = [x];
            }
            weights_run(weights, first + k * len, one_h.as_flattened_mut());
            fit_lanes_for(&one_x, &one_h, fit, &alphas, &mut out[k..=k]);
            k += 1;
        }
    }
}

multiversion! {
    /// Fits the `out.len()` consecutive slices of `len` finite elements in `xs`: sixteen at a
    /// time from a column-wise copy, the rest one by one. Element `j` of slice `k` has the
    /// weight `weights[(first + k·len + j) mod weights.len()]`.
    fn fit_runs<F: Float>(xs: &[F], len: usize, weights: &[F], first: usize, fit: &Fit, out: &mut [SliceParams<F>]) {
        fit_runs_portable(xs, len, weights, first, fit, out)
    }
}

/// Fits the consecutive slices of `len` elements of `data` (finite), the weight of element
/// `e` being `weights[e mod weights.len()]`, in work items of [`ITEM`] slices.
fn fit_equal_runs<F: Float>(data: &[F], len: usize, weights: &[F], fit: &Fit) -> Vec<SliceParams<F>> {
    let n = data.len().checked_div(len).unwrap_or(0);
    let mut out = vec![blank(); n];
    let items: Vec<(usize, &mut [SliceParams<F>])> = out.chunks_mut(ITEM).enumerate().map(|(i, o)| (i * ITEM, o)).collect();
    par::map(items, |(first, out)| {
        let xs = &data[first * len..(first + out.len()) * len];
        fit_runs(xs, len, weights, first * len, fit, out);
    });
    out
}

/// Fits every slice of `data` (finite) under `layout`, the weight of element `e` (row-major)
/// being `weights[e mod weights.len()]`: contiguous runs of equal length directly, in work
/// items of [`ITEM`] slices; other layouts gathered slice by slice.
fn fit_all<F: Float>(data: &[F], layout: &Layout, weights: &[F], fit: &Fit) -> Vec<SliceParams<F>> {
    let n = layout.num_params();
    match (layout.contiguous_runs(), layout.equal_runs()) {
        (Some(runs), Some(len)) if runs == n => fit_equal_runs(data, len, weights, fit),
        _ => {
            let all: Vec<F> = weights.iter().copied().cycle().take(data.len()).collect();
            let items: Vec<(Vec<F>, Vec<F>)> = layout.gather(data).into_iter().zip(layout.gather(&all)).collect();
            par::map(items, |(xs, hs)| {
                let mut p = [blank()];
                fit_runs(&xs, xs.len(), &hs, 0, fit, &mut p);
                p[0]
            })
        }
    }
}

/// The parameters of one slice with elements `xs`, as the quantizers fit them: with
/// `importance` (one finite, non-negative weight per element) the importance-weighted fit of
/// [`calibrate_weighted`], otherwise the plain fit (the spec's range estimate, then for
/// [`TableFit::LeastSquares`] its least-squares rounds, each kept only while the squared error
/// falls). Steps and offsets are values of the spec's parameter type; for
/// [`ParamDtype::Quantized`] they are the untabled values the tables are built from.
///
/// For algorithms that fit slices one at a time, such as GPTQ fitting each group when its
/// first column is reached.
///
/// # Errors
/// [`QuantError::Empty`] for no elements, [`QuantError::ShapeMismatch`] when `importance` is
/// not as long as `xs`, [`QuantError::NonFinite`] (the index of the first non-finite weight,
/// else of the first non-finite element), [`QuantError::NegativeCurvature`].
pub fn fit_slice<F: Float>(xs: &[F], importance: Option<&[F]>, spec: &UniformSpec) -> Result<SliceParams<F>> {
    Ok(fit_slices(xs, xs.len(), importance, spec)?[0])
}

/// [`fit_slice`] for the consecutive slices of `len` elements in `xs` (`xs.len()` a multiple
/// of `len`), all with the same `importance` (`len` weights) or none: one parameter set per
/// slice, each exactly what [`fit_slice`] gives for that slice alone, fitted sixteen at a
/// time in vector lanes.
///
/// For GPTQ fitting a column group of every row when its first column is reached.
///
/// # Errors
/// [`QuantError::Empty`] for no elements or `len = 0`, [`QuantError::ShapeMismatch`] when
/// `xs.len()` is not a multiple of `len` or `importance` is not `len` long,
/// [`QuantError::NonFinite`] (the index of the first non-finite weight, else of the first
/// non-finite element), [`QuantError::NegativeCurvature`].
pub fn fit_slices<F: Float>(xs: &[F], len: usize, importance: Option<&[F]>, spec: &UniformSpec) -> Result<Vec<SliceParams<F>>> {
    if xs.is_empty() || len == 0 {
        return Err(QuantError::Empty);
    }
    if !xs.len().is_multiple_of(len) {
        return Err(QuantError::ShapeMismatch { expected: vec![xs.len() / len + 1, len], got: vec![xs.len()] });
    }
    let one = [F::one()];
    let (hs, search) = match importance {
        Some(h) => {
            check_importance(&[len], h)?;
            (h, true)
        }
        None => (&one[..], false),
    };
    first_non_finite(xs)?;
    Ok(fit_equal_runs(xs, len, hs, &Fit::new(spec, search)))
}

/// Checks `importance` against a tensor of `shape`: one finite, non-negative weight per
/// position along the last axis.
fn check_importance<F: Float>(shape: &[usize], importance: &[F]) -> Result<usize> {
    let n = shape.last().copied().unwrap_or(1);
    if importance.len() != n {
        return Err(QuantError::ShapeMismatch { expected: vec![n], got: vec![importance.len()] });
    }
    if let Some(index) = importance.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    if let Some(index) = importance.iter().position(|&v| v < F::zero()) {
        return Err(QuantError::NegativeCurvature { index, value: importance[index].as_f64() });
    }
    Ok(n)
}

/// Estimates every slice's parameters of `x` for the least importance-weighted squared error
/// `Σ_j h_j (x_j − x̂_j)²`, with `importance[j]` the weight of every element at position `j`
/// of the last axis (for a weight matrix `out × in`, the diagonal of its inputs' `XᵀX`).
///
/// Per slice, the best grid on the weighted error among: the spec's own range estimate; the
/// ranges `[α·lo, α·hi]` of the min-max range and, when narrower, of the range of the
/// elements with a nonzero weight (`α = k/steps` for a [`RangeEstimator::Mse`] spec,
/// otherwise `α = 1 − k/40` for `k = 0..=`[`WEIGHTED_SEARCH_STEPS`]; searched
/// coarse to fine: `docs/numerics.md`); then, for the grid and
/// symmetric schemes, weighted least-squares refits of step and offset for the current codes
/// (the table fit's iterations, otherwise [`WEIGHTED_REFINE_ROUNDS`]), kept while the error
/// falls. No slice's weighted error is above that of the spec's own grid (before two-level
/// tables, which then refine their codes on the weighted error); a slice whose weights are
/// all zero keeps the spec's grid. The formulas are in `docs/numerics.md`.
///
/// # Errors
/// As [`calibrate`](crate::calibrate), plus [`QuantError::ShapeMismatch`] when `importance`
/// is not as long as the last axis (a 0-D tensor takes one weight),
/// [`QuantError::NonFinite`] (index into `importance`) and
/// [`QuantError::NegativeCurvature`] for a weight that is not finite or is negative.
pub fn calibrate_weighted<F: Float, S: Data<Elem = F>, D: Dimension>(
    x: &ArrayBase<S, D>,
    spec: &UniformSpec,
    importance: &[F],
) -> Result<QuantParams<F>> {
    let layout = layout_of(x.shape(), spec)?;
    check_importance(x.shape(), importance)?;
    let data = row_major(x);
    first_non_finite(&data)?;
    let slices = fit_all(&data, &layout, importance, &Fit::new(spec, true));
    let mut params = QuantParams::from_calibrated(spec, slices)?;
    if matches!(spec.param_dtype(), ParamDtype::Quantized { .. }) && spec.table_fit() == TableFit::Cover {
        let weights: Vec<F> = importance.iter().copied().cycle().take(data.len()).collect();
        match (layout.contiguous_runs(), layout.equal_runs()) {
            (Some(runs), Some(len)) if runs == layout.num_params() => {
                let run = |i: usize| i * len..(i + 1) * len;
                refine_tables(&mut params, |i| (&data[run(i)], Some(&weights[run(i)])))?;
            }
            _ => {
                let (xs, hs) = (layout.gather(&data), layout.gather(&weights));
                refine_tables(&mut params, |i| (&xs[i], Some(&hs[i])))?;
            }
        }
    }
    Ok(params)
}

/// Quantizes `x` with the importance-weighted grids of [`calibrate_weighted`]: the stored
/// layout (codes and parameters) is the plain quantizer's, so every reader of a
/// [`QuantizedTensor`] reads it.
///
/// ```
/// use ndarray::Array2;
/// use quant_core::{quantize, quantize_weighted, UniformSpec};
///
/// let w = Array2::from_shape_fn((8, 64), |(i, j)| ((i * 37 + j * 11) % 29) as f32 / 29.0 - 0.5);
/// // Input 0 is a hundred times as active as the others.
/// let mut h = vec![1.0f32; 64];
/// h[0] = 100.0;
/// let spec = UniformSpec::builder().bits(3).per_group(1, 32).check()?;
/// let weighted = quantize_weighted(&w, &spec, &h)?.dequantize();
/// let plain = quantize(&w, &spec)?.dequantize();
/// let cost = |q: &ndarray::ArrayD<f32>| -> f32 {
///     q.indexed_iter().map(|(ix, v)| h[ix[1]] * (v - w[[ix[0], ix[1]]]).powi(2)).sum()
/// };
/// assert!(cost(&weighted) <= cost(&plain));
/// # Ok::<(), quant_core::QuantError>(())
/// ```
///
/// # Errors
/// As [`calibrate_weighted`].
pub fn quantize_weighted<F: Float, S: Data<Elem = F>, D: Dimension>(
    x: &ArrayBase<S, D>,
    spec: &UniformSpec,
    importance: &[F],
) -> Result<QuantizedTensor<F>> {
    calibrate_weighted(x, spec, importance)?.quantize(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Granularity, ScaleMode};
    use proptest::prelude::*;

    fn bits(p: &[SliceParams<f32>]) -> Vec<(u32, u32, i32)> {
        p.iter().map(|p| (p.scale.to_bits(), p.offset.to_bits(), p.zero_point)).collect()
    }

    fn specs() -> impl Strategy<Value = UniformSpec> {
        let scheme = prop_oneof![
            Just(Scheme::AsymmetricGrid),
            Just(Scheme::AsymmetricExactZero),
            Just(Scheme::SymmetricNarrow),
            Just(Scheme::SymmetricFull),
        ];
        let dtype = prop_oneof![
            Just(ParamDtype::Native),
            Just(ParamDtype::F16),
            Just(ParamDtype::Bf16),
            Just(ParamDtype::Quantized { bits: 6, super_group: 8 })
        ];
        let range = prop_oneof![
            3 => Just(RangeEstimator::MinMax),
            1 => (1u16..30).prop_map(|steps| RangeEstimator::Mse { steps }),
            1 => Just(RangeEstimator::Percentile { lower: 5.0, upper: 95.0 }),
        ];
        let fit = prop_oneof![Just(TableFit::Cover), (1u8..4).prop_map(|iterations| TableFit::LeastSquares { iterations })];
        let mode = prop_oneof![Just(ScaleMode::Reciprocal), Just(ScaleMode::Divide)];
        (scheme, 2u8..=8, dtype, range, fit, mode).prop_filter_map("valid spec", |(scheme, bits, dtype, range, fit, mode)| {
            let fit = if matches!(dtype, ParamDtype::Quantized { .. }) { fit } else { TableFit::Cover };
            let b = UniformSpec::builder().bits(bits.max(scheme.min_bits())).scheme(scheme).param_dtype(dtype);
            b.range(range).table_fit(fit).scale_mode(mode).per_group(1, 8).check().ok()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Sixteen slices to the vector (and AVX-512 where the CPU has it) give, bit for bit,
        /// what each slice fitted alone gives, for every scheme, parameter type, range
        /// estimator, table fit and scale mode; weights with zeros (inactive inputs) and
        /// rows where every weight is zero included.
        #[test]
        fn lanes_one_by_one_and_vector_units_agree(
            rows in 1usize..40,
            len in 1usize..24,
            groups in 1usize..4,
            spec in specs(),
            search in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let cols = len * groups;
            let data: Vec<f32> = (0..rows * cols).map(|i| {
                let v = (crate::rng::unit(seed, i as u64) - 0.5) as f32;
                if i % 11 == 3 { v * 20.0 } else { v }
            }).collect();
            let weights: Vec<f32> = (0..cols).map(|j| {
                let u = crate::rng::unit(seed ^ 0x5eed, j as u64);
                if u < 0.25 || (seed % 5 == 0) { 0.0 } else { (u * 8.0).exp() as f32 }
            }).collect();
            let spec = spec.with_granularity(Granularity::PerGroup { axis: 1, size: len }).unwrap();
            let layout = Layout::new(&[rows, cols], spec.granularity()).unwrap();
            let fit = Fit::new(&spec, search);
            let all = fit_all(&data, &layout, &weights, &fit);
            // One by one, each from its own copy.
            let alone: Vec<SliceParams<f32>> = (0..rows * groups).map(|k| {
                let (r, g) = (k / groups, k % groups);
                let xs = &data[r * cols + g * len..r * cols + (g + 1) * len];
                let mut p = [blank()];
                fit_runs_portable(xs, len, &weights[g * len..(g + 1) * len], 0, &fit, &mut p);
                p[0]
            }).collect();
            prop_assert_eq!(bits(&all), bits(&alone));
            // The portable compilation of the whole batch.
            let mut plain = vec![blank(); rows * groups];
            fit_runs_portable(&data, len, &weights, 0, &fit, &mut plain);
            prop_assert_eq!(bits(&all), bits(&plain));
            // Strided slices (the transpose, grouped down its columns) are gathered: each
            // equals its gathered elements and weights fitted alone.
            let t: Vec<f32> = (0..rows * cols).map(|i| data[(i % rows) * cols + i / rows]).collect();
            let strided = Layout::new(&[cols, rows], Granularity::PerGroup { axis: 0, size: len }).unwrap();
            let wt: Vec<f32> = (0..rows).map(|r| weights[r % cols]).collect();
            let every: Vec<f32> = (0..t.len()).map(|e| wt[e % rows]).collect();
            let gathered = fit_all(&t, &strided, &wt, &fit);
            let alone: Vec<SliceParams<f32>> = strided.gather(&t).iter().zip(strided.gather(&every)).map(|(xs, hs)| {
                let mut p = [blank()];
                fit_runs_portable(xs, xs.len(), &hs, 0, &fit, &mut p);
                p[0]
            }).collect();
            prop_assert_eq!(bits(&gathered), bits(&alone));
        }
    }

    /// The lane-wise grids of the default spec family are, bit for bit, `for_spec`'s and
    /// `Grids::of`'s, on ordinary, zero-width, reversed, huge and tiny ranges.
    #[test]
    fn candidate_lanes_are_for_spec() {
        let specials = [0.0f32, -0.0, 1e-42, -1e-42, 1e-30, 0.37, -2.5, 40000.0, -40000.0, f32::MAX, -f32::MAX, f32::MAX / 3.0];
        for dtype in [ParamDtype::Native, ParamDtype::Quantized { bits: 6, super_group: 8 }, ParamDtype::F16] {
            for scheme in [Scheme::AsymmetricGrid, Scheme::SymmetricNarrow] {
                for width in [2u8, 4, 8] {
                    let spec = UniformSpec::builder().bits(width).scheme(scheme).param_dtype(dtype).per_group(1, 8).check().unwrap();
                    let fit = Fit::new(&spec, true);
                    for seed in 0..64u64 {
                        let pick = |i: u64| {
                            let u = crate::rng::unit(seed, i);
                            if u < 0.3 { specials[(u * 40.0) as usize % specials.len()] } else { ((u - 0.65) * 10.0) as f32 }
                        };
                        let lo: [f32; 16] = core::array::from_fn(|l| pick(2 * l as u64));
                        let hi: [f32; 16] = core::array::from_fn(|l| pick(2 * l as u64 + 1));
                        let (params, grids) = candidates(&lo, &hi, &fit);
                        let want: [SliceParams<f32>; 16] = core::array::from_fn(|l| SliceParams::for_spec(lo[l], hi[l], &spec));
                        let g = Grids::of(&want, fit.max_code);
                        assert_eq!(bits(&params), bits(&want), "{spec:?} seed {seed}");
                        for (a, b) in [(grids.s, g.s), (grids.inv, g.inv), (grids.m, g.m), (grids.lo, g.lo), (grids.hi, g.hi)] {
                            assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits), "{spec:?} seed {seed}");
                        }
                    }
                }
            }
        }
    }

    /// The coarse-to-fine search loses next to nothing against trying all 21 clipping factors:
    /// a plain reference (every factor on the min-max range, f64 errors, then the same
    /// least-squares rounds) on 400 random slices with skewed weights, 3 and 4 bits.
    #[test]
    fn coarse_to_fine_matches_the_exhaustive_search() {
        for width in [3u8, 4] {
            let spec = UniformSpec::builder().bits(width).per_group(1, 32).check().unwrap();
            let top = f64::from(spec.max_code());
            let cost = |x: &[f32], h: &[f32], s: f64, m: f64| -> f64 {
                x.iter()
                    .zip(h)
                    .map(|(&x, &h)| f64::from(h) * (((f64::from(x) - m) / s).round().clamp(0.0, top) * s + m - f64::from(x)).powi(2))
                    .sum()
            };
            let (mut ours, mut reference) = (0.0, 0.0);
            for k in 0..400u64 {
                let x: Vec<f32> =
                    (0..32).map(|i| ((crate::rng::unit(k, i) - 0.5) * 2.0) as f32 * if i % 9 == 0 { 3.0 } else { 1.0 }).collect();
                let h: Vec<f32> = (0..32).map(|i| (crate::rng::unit(k ^ 0xabc, i) * 6.0).exp() as f32).collect();
                let p = fit_slice(&x, Some(&h), &spec).unwrap();
                ours += cost(&x, &h, f64::from(p.scale), f64::from(p.offset));
                // Reference: all 21 factors, then least squares on the best's codes while it helps.
                let (lo, hi) = x.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(f64::from(v)), b.max(f64::from(v))));
                let mut best = (f64::MAX, 0.0, 0.0);
                for j in 0..=20 {
                    let a = 1.0 - f64::from(j) / 40.0;
                    let (l, u) = (if lo < 0.0 { lo * a } else { lo }, if hi > 0.0 { hi * a } else { hi });
                    let (s, m) = ((u - l) / top, l);
                    let e = cost(&x, &h, s, m);
                    if e < best.0 {
                        best = (e, s, m);
                    }
                }
                for _ in 0..WEIGHTED_REFINE_ROUNDS {
                    let (_, s, m) = best;
                    let mut sums = [0.0; 5];
                    for (&x, &h) in x.iter().zip(&h) {
                        let (x, h) = (f64::from(x), f64::from(h));
                        let t = ((x - m) / s).round().clamp(0.0, top);
                        for (acc, v) in sums.iter_mut().zip([h, h * t, h * t * t, h * x, h * t * x]) {
                            *acc += v;
                        }
                    }
                    let [sw, st, stt, sx, stx] = sums;
                    let s2 = (sw * stx - st * sx) / (sw * stt - st * st);
                    let m2 = (sx - s2 * st) / sw;
                    let e = if s2 > 0.0 { cost(&x, &h, s2, m2) } else { f64::MAX };
                    if e >= best.0 {
                        break;
                    }
                    best = (e, s2, m2);
                }
                reference += best.0;
            }
            let ratio = ours / reference;
            assert!(ratio < 1.005, "{width} bits: coarse-to-fine / exhaustive = {ratio}");
            assert!(ratio > 0.97, "{width} bits: the reference is not what it should be ({ratio})");
        }
    }

    /// The f64 ranking keeps the start unless a candidate is strictly better, so a slice is
    /// never above the spec's own grid on the weighted error (here: computed independently).
    #[test]
    fn never_above_the_start() {
        let spec = UniformSpec::builder().bits(3).per_group(1, 16).check().unwrap();
        let xs: Vec<f32> = (0..16 * 40).map(|i| ((crate::rng::unit(7, i as u64) - 0.5) * 4.0) as f32).collect();
        let hs: Vec<f32> = (0..16).map(|j| if j % 3 == 0 { 50.0 } else { 0.5 }).collect();
        let fitted = fit_slices(&xs, 16, Some(&hs), &spec).unwrap();
        let plain = fit_slices(&xs, 16, None, &spec).unwrap();
        let cost = |x: &[f32], p: &SliceParams<f32>| -> f64 {
            let top = f64::from(spec.max_code());
            x.iter()
                .zip(&hs)
                .map(|(&x, &h)| {
                    let (s, m) = (f64::from(p.scale), f64::from(p.offset));
                    let q = ((f64::from(x) - m) / s).round().clamp(0.0, top);
                    f64::from(h) * (q * s + m - f64::from(x)).powi(2)
                })
                .sum()
        };
        let mut better = 0;
        for (k, (f, p)) in fitted.iter().zip(&plain).enumerate() {
            let x = &xs[k * 16..(k + 1) * 16];
            assert!(cost(x, f) <= cost(x, p) * (1.0 + 1e-6), "slice {k}");
            better += usize::from(cost(x, f) < cost(x, p) * 0.999);
        }
        assert!(better > 20, "{better} of 40 slices improved");
    }
}
