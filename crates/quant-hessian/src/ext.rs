//! [`OperatorExt`]: every solver, for every [`LinearOperator`].

use quant_core::Float;

use crate::eigen::Eigenpairs;
use crate::error::Result;
use crate::lanczos::{Extremes, Lanczos};
use crate::operator::LinearOperator;
use crate::power::PowerIteration;
use crate::trace::{HutchPlusPlus, Hutchinson, Slq, SpectralDensity, TraceEstimate};

/// The eigen and trace solvers, provided for every symmetric [`LinearOperator`] by a
/// blanket impl. Each counts its operator applications (`hvps`) in its result.
pub trait OperatorExt<F: Float>: LinearOperator<F> {
    /// The `k` eigenpairs of largest magnitude by power iteration with deflation, in the
    /// order found (non-increasing magnitude).
    ///
    /// # Errors
    /// [`HessianError::Empty`](crate::HessianError::Empty),
    /// [`HessianError::InvalidEigenCount`](crate::HessianError::InvalidEigenCount) for
    /// `k > dim`, [`HessianError::NoConvergence`](crate::HessianError::NoConvergence) with
    /// the pairs so far when a pair misses the stopping rule within `max_iter`, and the
    /// operator's errors.
    fn power_iteration(&self, params: &PowerIteration) -> Result<Eigenpairs<F>> {
        crate::power::power_iteration(self, params)
    }

    /// The `k` largest (algebraic) eigenpairs and the smallest one by Lanczos with full
    /// re-orthogonalisation.
    ///
    /// # Errors
    /// As [`power_iteration`](OperatorExt::power_iteration); the partial result of
    /// `NoConvergence` lists the top pairs, then the smallest.
    fn lanczos(&self, params: &Lanczos) -> Result<Extremes<F>> {
        crate::lanczos::lanczos(self, params)
    }

    /// Hutchinson's trace estimate with its standard error.
    ///
    /// # Errors
    /// [`HessianError::Empty`](crate::HessianError::Empty) and the operator's errors.
    fn hutchinson(&self, params: &Hutchinson) -> Result<TraceEstimate> {
        crate::trace::hutchinson(self, params)
    }

    /// The Hutch++ trace estimate.
    ///
    /// # Errors
    /// As [`hutchinson`](OperatorExt::hutchinson).
    fn hutch_plus_plus(&self, params: &HutchPlusPlus) -> Result<TraceEstimate> {
        crate::trace::hutch_pp(self, params)
    }

    /// The spectral density by stochastic Lanczos quadrature.
    ///
    /// # Errors
    /// As [`hutchinson`](OperatorExt::hutchinson).
    fn spectral_density(&self, params: &Slq) -> Result<SpectralDensity> {
        crate::trace::slq(self, params)
    }
}

impl<F: Float, T: LinearOperator<F> + ?Sized> OperatorExt<F> for T {}
