//! Running range observers for activations: min-max and exponential moving average.

use ndarray::{ArrayBase, Data, Dimension};

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::params::QuantParams;
use crate::spec::{Granularity, UniformSpec};
use crate::uniform::{layout_of, row_major, slice_ranges};

/// Tracks the range of a stream of tensors (activations) across batches.
///
/// - [`RangeObserver::min_max`]: the running minimum and maximum.
/// - [`RangeObserver::ema`]: `r ← μ·r + (1 − μ)·r_batch` for both ends, the first batch
///   initialising `r` (Q-BERT uses `μ = 0.99`).
///
/// Any [`Granularity`] works; every observed tensor must have the same number of slices
/// (the batch axis may change length when it is not the channel axis).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeObserver<F> {
    momentum: Option<f64>,
    granularity: Granularity,
    ranges: Vec<(F, F)>,
    batches: u64,
}

impl<F: Float> RangeObserver<F> {
    /// A running min-max observer.
    pub fn min_max(granularity: Granularity) -> Self {
        Self { momentum: None, granularity, ranges: Vec::new(), batches: 0 }
    }

    /// An EMA observer with the given momentum.
    ///
    /// # Errors
    /// [`QuantError::InvalidMomentum`] unless `0 ≤ momentum < 1`.
    pub fn ema(momentum: f64, granularity: Granularity) -> Result<Self> {
        if !(0.0..1.0).contains(&momentum) {
            return Err(QuantError::InvalidMomentum { momentum });
        }
        Ok(Self { momentum: Some(momentum), granularity, ranges: Vec::new(), batches: 0 })
    }

    /// Folds one batch into the running ranges.
    ///
    /// # Errors
    /// [`QuantError::Empty`], [`QuantError::InvalidAxis`], [`QuantError::NonFinite`], and
    /// [`QuantError::ParamCountMismatch`] when the batch has another number of slices than
    /// the earlier ones. On error the observer is unchanged.
    pub fn observe<S: Data<Elem = F>, D: Dimension>(&mut self, x: &ArrayBase<S, D>) -> Result<()> {
        let spec = UniformSpec::default().with_granularity(self.granularity)?;
        let layout = layout_of(x.shape(), &spec)?;
        let batch = slice_ranges(&row_major(x), &layout, &spec)?;
        if self.batches > 0 && batch.len() != self.ranges.len() {
            return Err(QuantError::ParamCountMismatch { expected: self.ranges.len(), got: batch.len() });
        }
        if self.batches == 0 {
            self.ranges = batch;
        } else {
            for (r, (lo, hi)) in self.ranges.iter_mut().zip(batch) {
                *r = match self.momentum {
                    None => (if lo < r.0 { lo } else { r.0 }, if hi > r.1 { hi } else { r.1 }),
                    Some(m) => {
                        let (m, k) = (F::cast(m), F::cast(1.0 - m));
                        (m * r.0 + k * lo, m * r.1 + k * hi)
                    }
                };
            }
        }
        self.batches += 1;
        Ok(())
    }

    /// The current range of every slice.
    pub fn ranges(&self) -> &[(F, F)] {
        &self.ranges
    }

    /// Number of batches observed.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Forgets everything observed.
    pub fn reset(&mut self) {
        self.ranges.clear();
        self.batches = 0;
    }

    /// Quantization parameters from the current ranges, with the bits, scheme, rounding and
    /// scale mode of `spec` and this observer's granularity (the spec's range estimator is
    /// not used).
    ///
    /// # Errors
    /// [`QuantError::NothingObserved`] before the first batch.
    pub fn params(&self, spec: &UniformSpec) -> Result<QuantParams<F>> {
        if self.batches == 0 {
            return Err(QuantError::NothingObserved);
        }
        QuantParams::from_ranges(&spec.with_granularity(self.granularity)?, &self.ranges)
    }
}
