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
//!    half);
//! 3. for [`Scheme::AsymmetricGrid`] and the symmetric schemes, rounds of weighted least
//!    squares: for the current codes `t`, the step `s` and offset `m` minimising
//!    `Σ h (x − s·t − m)²` (symmetric: `m = 0`), kept only while the weighted error falls
//!    (as many rounds as a [`TableFit::LeastSquares`] spec says, otherwise
//!    [`WEIGHTED_REFINE_ROUNDS`]). [`Scheme::AsymmetricExactZero`]'s integer zero point has no
//!    least-squares form, so it stops after step 2.
//!
//! Every candidate passes through [`SliceParams::for_spec`], so steps and offsets are the
//! values of the spec's parameter type. Two-level tables ([`ParamDtype::Quantized`]) are then
//! built from the fitted slices; with [`TableFit::Cover`] their codes are refined on the
//! weighted error. Since the start is the unweighted estimate and nothing is accepted that
//! raises the weighted error, a slice's weighted error is never above that of the spec's
//! own grid (before two-level tables, which round the fitted values).
//!
//! A slice whose weights are all zero (inputs never active) keeps the spec's own grid.

use ndarray::{ArrayBase, Data, Dimension};

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::par;
use crate::params::{QuantParams, SliceParams};
use crate::range::{estimate, min_max};
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

/// Lanes of the sums below (independent partial sums, so the loops vectorise; summed in a
/// fixed order, so results do not depend on the CPU).
const LANES: usize = 8;

/// The signed codes `t = round((x − m)/S)` of `p`'s grid, clamped to its range: what the
/// kernels compute (half-even ties, the spec's scale mode; the clamp to integer bounds before
/// rounding equals the clamp after it).
pub(crate) struct Signed<F> {
    s: F,
    inv: F,
    m: F,
    lo: F,
    hi: F,
    divide: bool,
}

impl<F: Float> Signed<F> {
    /// A grid with step `s`, offset `m` and signed codes `lo..=hi` (integers), reciprocal
    /// multiply (the default scale mode).
    pub(crate) fn multiply(s: F, m: F, lo: F, hi: F) -> Self {
        Self { s, inv: F::one() / s, m, lo, hi, divide: false }
    }

    fn new(p: &SliceParams<F>, spec: &UniformSpec) -> Self {
        Self {
            s: p.scale,
            inv: F::one() / p.scale,
            m: p.offset,
            lo: F::from_int(-p.zero_point),
            hi: F::from_int(i32::from(spec.max_code()) - p.zero_point),
            divide: spec.scale_mode() == crate::spec::ScaleMode::Divide,
        }
    }

    #[inline(always)]
    fn code(&self, x: F) -> F {
        if self.divide { self.code_in::<true>(x) } else { self.code_in::<false>(x) }
    }

    /// [`code`](Self::code) for one scale mode.
    #[inline(always)]
    fn code_in<const DIVIDE: bool>(&self, x: F) -> F {
        let y = if DIVIDE { (x - self.m) / self.s } else { (x - self.m) * self.inv };
        let y = if y > self.lo { y } else { self.lo };
        let y = if y < self.hi { y } else { self.hi };
        y.round_ties_even_bounded()
    }
}

/// `Σ h (x − x̂)²` on the grid of `g` (ranked in lanes of the element type, summed in f64).
#[inline(always)]
pub(crate) fn weighted_sse<F: Float>(xs: &[F], hs: &[F], g: &Signed<F>) -> f64 {
    if g.divide { sse_in_mode::<F, true>(xs, hs, g) } else { sse_in_mode::<F, false>(xs, hs, g) }
}

/// One term `h (x − x̂)²` of [`weighted_sse`] (a function, not a closure: closures do not
/// inherit the target features of the function that calls them).
#[inline(always)]
fn sse_term<F: Float, const DIVIDE: bool>(x: F, h: F, g: &Signed<F>) -> F {
    let e = g.code_in::<DIVIDE>(x) * g.s + g.m - x;
    h * (e * e)
}

/// [`weighted_sse`] for one scale mode: sixteen lanes in the element type (so the loop fills
/// the vector units), summed in f64 at the end. Used to rank candidates; the search's result
/// is checked against the start in f64 ([`exact_weighted_sse`]).
#[inline(always)]
fn sse_in_mode<F: Float, const DIVIDE: bool>(xs: &[F], hs: &[F], g: &Signed<F>) -> f64 {
    const W: usize = 2 * LANES;
    let mut acc = [F::zero(); W];
    let n = xs.len().min(hs.len());
    let full = n / W * W;
    let (xa, ha) = (&xs[..full], &hs[..full]);
    for k in (0..full).step_by(W) {
        let (a, b) = (&xa[k..k + W], &ha[k..k + W]);
        for l in 0..W {
            acc[l] += sse_term::<F, DIVIDE>(a[l], b[l], g);
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
        sum += sse_term::<F, DIVIDE>(xs[k], hs[k], g).as_f64();
    }
    sum
}

/// `Σ h (x − x̂)²` with every term and the sum in f64, in element order.
fn exact_weighted_sse<F: Float>(xs: &[F], hs: &[F], g: &Signed<F>) -> f64 {
    xs.iter()
        .zip(hs)
        .map(|(&x, &h)| {
            let e = (g.code(x) * g.s + g.m - x).as_f64();
            h.as_f64() * e * e
        })
        .sum()
}

/// `[Σh, Σht, Σht², Σhx, Σhtx]` for the codes `t` of the grid of `g`, in f64.
#[inline(always)]
fn weighted_moments<F: Float>(xs: &[F], hs: &[F], g: &Signed<F>) -> [f64; 5] {
    let mut out = [0f64; 5];
    for (&x, &h) in xs.iter().zip(hs) {
        let (t, h, x) = (g.code(x).as_f64(), h.as_f64(), x.as_f64());
        out[0] += h;
        out[1] += h * t;
        out[2] += h * t * t;
        out[3] += h * x;
        out[4] += h * t * x;
    }
    out
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

/// One round of weighted least squares for the codes of `p`: the refitted `(s, m)`, or `None`
/// when the fit is degenerate (one code, or a non-positive or non-finite step).
#[inline(always)]
fn least_squares_step<F: Float>(p: &SliceParams<F>, spec: &UniformSpec, xs: &[F], hs: &[F]) -> Option<(f64, f64)> {
    let [sw, st, stt, sx, stx] = weighted_moments(xs, hs, &Signed::new(p, spec));
    let (s, m) = if spec.scheme() == Scheme::AsymmetricGrid {
        let den = sw * stt - st * st;
        let s = (sw * stx - st * sx) / den;
        (s, (sx - s * st) / sw)
    } else {
        (stx / stt, 0.0)
    };
    (s > 0.0 && s.is_finite() && m.is_finite()).then_some((s, m))
}

multiversion! {
    /// The grid of one slice: importance-weighted with `search` (see the module documentation),
    /// otherwise the spec's range estimate followed, for [`TableFit::LeastSquares`], by its
    /// least-squares rounds (with `hs` all ones). `Err(j)` for the local index of a non-finite
    /// element.
    fn fit_one<F: Float>(xs: &[F], hs: &[F], spec: &UniformSpec, search: bool) -> core::result::Result<SliceParams<F>, usize> {
        let (lo, hi) = estimate(xs, spec, &mut Vec::new())?;
        let start = SliceParams::for_spec(lo, hi, spec);
        if hs.iter().all(|&h| h == F::zero()) {
            return Ok(start);
        }
        let mut best = (weighted_sse(xs, hs, &Signed::new(&start, spec)), start);
        // The search shrinks the min-max range (the start may already be clipped), and that of
        // the elements with a nonzero weight when it is narrower (the others cost nothing).
        let (lo, hi) = min_max(xs)?;
        let active = xs
            .iter()
            .zip(hs)
            .filter(|(_, h)| **h > F::zero())
            .fold((hi, lo), |(a, b), (&x, _)| (if x < a { x } else { a }, if x > b { x } else { b }));
        let (count, alpha_of): (u16, fn(u16, u16) -> f64) = match spec.range() {
            RangeEstimator::Mse { steps } => (steps, |k, steps| f64::from(steps - k) / f64::from(steps)),
            _ => (WEIGHTED_SEARCH_STEPS + 1, |k, _| 1.0 - f64::from(k) / 40.0),
        };
        let bases = match (search, active == (lo, hi)) {
            (false, _) => [None, None],
            (true, true) => [Some((lo, hi)), None],
            (true, false) => [Some((lo, hi)), Some(active)],
        };
        for (lo, hi) in bases.into_iter().flatten() {
            for k in 0..count {
                let alpha = alpha_of(k, count);
                let a = F::cast(alpha);
                let l = if lo < F::zero() { lo * a } else { lo };
                let h = if hi > F::zero() { hi * a } else { hi };
                let p = SliceParams::for_spec(l, h, spec);
                let e = weighted_sse(xs, hs, &Signed::new(&p, spec));
                if e < best.0 {
                    best = (e, p);
                }
            }
        }
        if spec.scheme() != Scheme::AsymmetricExactZero {
            let rounds = match spec.table_fit() {
                TableFit::LeastSquares { iterations } => iterations,
                TableFit::Cover if search => WEIGHTED_REFINE_ROUNDS,
                TableFit::Cover => 0,
            };
            for _ in 0..rounds {
                let Some((s, m)) = least_squares_step(&best.1, spec, xs, hs) else { break };
                let (l, h) = range_of::<F>(s, m, spec);
                if !(l.is_finite() && h.is_finite()) {
                    break;
                }
                let p = SliceParams::for_spec(l, h, spec);
                let e = weighted_sse(xs, hs, &Signed::new(&p, spec));
                if e < best.0 {
                    best = (e, p);
                } else {
                    break;
                }
            }
        }
        // The ranking above sums in the element type; keep the start unless the choice is no
        // worse in f64.
        let worse = best.1 != start
            && exact_weighted_sse(xs, hs, &Signed::new(&best.1, spec)) > exact_weighted_sse(xs, hs, &Signed::new(&start, spec));
        Ok(if worse { start } else { best.1 })
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
    if xs.is_empty() {
        return Err(QuantError::Empty);
    }
    let ones;
    let (hs, search) = match importance {
        Some(h) => {
            check_importance(&[xs.len()], h)?;
            (h, true)
        }
        None => {
            ones = vec![F::one(); xs.len()];
            (&ones[..], false)
        }
    };
    fit_one(xs, hs, spec, search).map_err(|index| QuantError::NonFinite { index })
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
/// otherwise `α = 1 − k/40` for `k = 0..=`[`WEIGHTED_SEARCH_STEPS`]); then, for the grid and
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
    let n = check_importance(x.shape(), importance)?;
    let data = row_major(x);
    first_non_finite(&data)?;
    let weights: Vec<F> = (0..data.len()).map(|e| importance[e % n]).collect();
    let xs = layout.gather(&data);
    let hs = layout.gather(&weights);
    let fitted = par::map(xs.iter().zip(&hs).collect(), |(x, h)| fit_one(x, h, spec, true));
    // Elements are finite (checked above), so no slice fails.
    let slices = fitted.into_iter().collect::<core::result::Result<Vec<_>, usize>>().map_err(|index| QuantError::NonFinite { index })?;
    let mut params = QuantParams::from_calibrated(spec, slices)?;
    if matches!(spec.param_dtype(), ParamDtype::Quantized { .. }) && spec.table_fit() == TableFit::Cover {
        refine_tables(&mut params, |i| (&xs[i], Some(&hs[i])))?;
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
