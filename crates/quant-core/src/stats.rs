//! Error statistics of a reconstruction: the family's one squared-error and SQNR helper.

use crate::float::Float;

/// How far a reconstruction `y` is from `x`, accumulated in f64.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ErrorStats {
    /// `Σ x²`.
    pub signal: f64,
    /// `Σ (x − y)²`.
    pub squared_error: f64,
    /// `max |x − y|`.
    pub max_abs: f64,
    /// Pairs compared.
    pub count: usize,
}

impl ErrorStats {
    /// The statistics of `y` against `x`, pair by pair (the shorter sequence decides the count).
    ///
    /// ```
    /// use quant_core::ErrorStats;
    /// let s = ErrorStats::of([1.0f32, 2.0], [1.0f32, 1.5]);
    /// assert_eq!((s.signal, s.squared_error, s.max_abs, s.count), (5.0, 0.25, 0.5, 2));
    /// assert!((s.sqnr_db().unwrap_or(0.0) - 10.0 * 20f64.log10()).abs() < 1e-12);
    /// ```
    pub fn of<F: Float>(x: impl IntoIterator<Item = F>, y: impl IntoIterator<Item = F>) -> Self {
        let mut s = Self::default();
        for (a, b) in x.into_iter().zip(y) {
            let (a, b) = (a.as_f64(), b.as_f64());
            let e = a - b;
            s.signal += a * a;
            s.squared_error += e * e;
            s.max_abs = s.max_abs.max(e.abs());
            s.count += 1;
        }
        s
    }

    /// `10·log10(Σx² / Σ(x − y)²)` in dB; `None` when the reconstruction is exact (or the
    /// ratio is not finite).
    pub fn sqnr_db(&self) -> Option<f64> {
        if self.squared_error > 0.0 { Some(10.0 * (self.signal / self.squared_error).log10()).filter(|v| v.is_finite()) } else { None }
    }

    /// The SQNR in dB with the error floored at `f64::MIN_POSITIVE`, so an exact
    /// reconstruction gives a large finite value (about 3,000 dB) instead of `None`: for tables
    /// and plots that need a number in every row.
    pub fn sqnr_db_floored(&self) -> f64 {
        10.0 * (self.signal / self.squared_error.max(f64::MIN_POSITIVE)).log10()
    }
}

/// The `p`-th percentile (`0..=100`) of `buf`, linearly interpolated between order
/// statistics like NumPy's default (position `p/100 · (n − 1)` in the sorted values).
/// Reorders `buf`. `None` for an empty buffer or a `p` outside `0..=100`; NaNs compare as
/// equal to everything, so check finiteness first where it matters.
///
/// ```
/// // numpy.percentile(range(11), 25) = 2.5
/// let mut v: Vec<f64> = (0..11).map(f64::from).collect();
/// assert_eq!(quant_core::percentile(&mut v, 25.0), Some(2.5));
/// assert_eq!(quant_core::percentile::<f64>(&mut [], 5.0), None);
/// ```
pub fn percentile<F: Float>(buf: &mut [F], p: f64) -> Option<F> {
    let n = buf.len();
    if n == 0 || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let pos = p / 100.0 * (n - 1) as f64;
    let k = (pos.floor() as usize).min(n - 1);
    let frac = F::cast(pos - k as f64);
    let (_, &mut below, right) = buf.select_nth_unstable_by(k, |a, b| a.partial_cmp(b).unwrap_or(core::cmp::Ordering::Equal));
    if frac == F::zero() || right.is_empty() {
        return Some(below);
    }
    let above = right.iter().copied().fold(right[0], |a, b| if b < a { b } else { a });
    Some(below + frac * (above - below))
}
