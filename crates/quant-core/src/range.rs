//! Range estimation for one slice: min-max, percentile and MSE-optimal clipping.

use crate::float::Float;
use crate::kernel::{Kernel, squared_error};
use crate::params::SliceParams;
use crate::spec::{RangeEstimator, UniformSpec};
use crate::stats::percentile;

/// Minimum and maximum of a run, or the local index of the first non-finite value.
///
/// Sixteen independent lanes keep the loop vectorisable (the `a < b ? a : b` form maps to
/// `minps`/`maxps`); `x · 0` is NaN exactly when `x` is NaN or infinite, so one extra
/// multiply-add per element detects bad input in the same pass.
pub(crate) fn min_max<F: Float>(xs: &[F]) -> Result<(F, F), usize> {
    const LANES: usize = 16;
    let first = match xs.first() {
        Some(&x) => x,
        None => return Ok((F::zero(), F::zero())),
    };
    let mut lo = [first; LANES];
    let mut hi = [first; LANES];
    let mut bad = [F::zero(); LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let x = c[l];
            lo[l] = if lo[l] < x { lo[l] } else { x };
            hi[l] = if hi[l] > x { hi[l] } else { x };
            bad[l] += x * F::zero();
        }
    }
    // Tree reduction of the lanes (vectorises; a linear fold would not).
    let mut step = LANES / 2;
    while step > 0 {
        for l in 0..step {
            lo[l] = if lo[l] < lo[l + step] { lo[l] } else { lo[l + step] };
            hi[l] = if hi[l] > hi[l + step] { hi[l] } else { hi[l + step] };
            bad[l] += bad[l + step];
        }
        step /= 2;
    }
    let (mut l0, mut h0, mut b0) = (lo[0], hi[0], bad[0]);
    for &x in chunks.remainder() {
        l0 = if l0 < x { l0 } else { x };
        h0 = if h0 > x { h0 } else { x };
        b0 += x * F::zero();
    }
    if b0 == F::zero() && first.is_finite() { Ok((l0, h0)) } else { Err(xs.iter().position(|x| !x.is_finite()).unwrap_or(0)) }
}

/// Estimates `[lo, hi]` for one slice's elements as `spec` says; `scratch` is reused for the
/// percentile copy. Returns the local index of the first non-finite value on bad input.
pub(crate) fn estimate<F: Float>(xs: &[F], spec: &UniformSpec, scratch: &mut Vec<F>) -> Result<(F, F), usize> {
    let (lo, hi) = min_max(xs)?;
    match spec.range() {
        RangeEstimator::MinMax => Ok((lo, hi)),
        RangeEstimator::Percentile { lower, upper } => {
            scratch.clear();
            scratch.extend_from_slice(xs);
            let l = percentile(scratch, lower).unwrap_or(lo);
            let h = percentile(scratch, upper).unwrap_or(hi);
            Ok((l, h))
        }
        RangeEstimator::Mse { steps } => Ok(mse_search(xs, spec, lo, hi, steps)),
    }
}

/// The candidate of `[α·lo, α·hi]`, `α = k/steps`, with the least squared error.
/// Ties go to the widest range (the search starts at `α = 1`).
fn mse_search<F: Float>(xs: &[F], spec: &UniformSpec, lo: F, hi: F, steps: u16) -> (F, F) {
    let mut best = (lo, hi);
    let mut best_err = f64::INFINITY;
    for k in (1..=steps).rev() {
        let alpha = F::cast(f64::from(k) / f64::from(steps));
        let l = if lo < F::zero() { lo * alpha } else { lo };
        let h = if hi > F::zero() { hi * alpha } else { hi };
        let p = SliceParams::from_range(l, h, spec.bits(), spec.scheme());
        let err = squared_error(&Kernel::new(&p, spec.max_code(), spec.scale_mode()), xs);
        if err < best_err {
            best_err = err;
            best = (l, h);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Scheme;

    #[test]
    fn min_max_finds_extremes_and_bad_values() {
        let xs: Vec<f32> = (0..37).map(|i| ((i * 7919) % 37) as f32 - 18.0).collect();
        assert_eq!(min_max(&xs), Ok((-18.0, 18.0)));
        let mut ys = xs.clone();
        ys[21] = f32::NAN;
        ys[30] = f32::INFINITY;
        assert_eq!(min_max(&ys), Err(21));
        ys[0] = f32::NEG_INFINITY;
        assert_eq!(min_max(&ys), Err(0));
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        // numpy.percentile(np.arange(11.), [0, 10, 25, 99.9, 100]) = 0, 1, 2.5, 9.99, 10
        let mut v: Vec<f64> = (0..11).rev().map(f64::from).collect();
        for (p, want) in [(0.0, 0.0), (10.0, 1.0), (25.0, 2.5), (99.9, 9.99), (100.0, 10.0)] {
            let got = percentile(&mut v, p).expect("non-empty");
            assert!((got - want).abs() < 1e-12, "p{p}: {got}");
        }
    }

    #[test]
    fn mse_search_clips_an_outlier() {
        // 1000 values in [-1, 1] and one at 10: at 4 bits min-max wastes the grid.
        let mut xs: Vec<f32> = (0..1000).map(|i| (i as f32 / 500.0) - 1.0).collect();
        xs.push(10.0);
        let spec =
            UniformSpec::builder().bits(4).scheme(Scheme::SymmetricNarrow).range(RangeEstimator::Mse { steps: 100 }).check().unwrap();
        let (lo, hi) = estimate(&xs, &spec, &mut Vec::new()).unwrap();
        assert!(hi < 10.0, "{lo} {hi}");
        let err = |l: f32, h: f32| {
            let p = SliceParams::from_range(l, h, 4, Scheme::SymmetricNarrow);
            squared_error(&Kernel::new(&p, spec.max_code(), spec.scale_mode()), &xs)
        };
        assert!(err(lo, hi) < err(-1.0, 10.0));
    }
}
