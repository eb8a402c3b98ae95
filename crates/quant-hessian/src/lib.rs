//! # quant-hessian
//!
//! The second-order engine of the `quant` family: the curvature Q-BERT and HAWQ rank layers
//! by. A model plugs in through a small trait ([`Autodiff`]: named parameter blocks, loss
//! and gradient on a chosen batch, Hessian-vector products); its Hessian on a batch, or one
//! block of it, becomes a [`LinearOperator`]; and every operator gets the solvers of
//! [`OperatorExt`]: power iteration, Lanczos, Hutchinson and Hutch++ traces and stochastic
//! Lanczos quadrature. [`qbert_statistics`] runs Q-BERT's per-block, per-subset top
//! eigenvalues and `Ω = |mean| + std`.
//!
//! Hessian-vector products are exact for models whose gradient is written generic over
//! [`Real`] ([`Differentiable`]): the gradient evaluated in [`Dual`] numbers at `w + v ε` has
//! tangent `H v` (forward over reverse). Models that only have a gradient get a central
//! finite difference ([`finite_difference_hvp`]).
//!
//! Reference models (a quadratic, an MLP, a small BERT-style encoder) live in the
//! `quant-models` crate.
//!
//! ## Quick start
//! ```
//! use ndarray::{array, ArrayView1, ArrayViewMut1};
//! use quant_hessian::{FnOperator, Lanczos, OperatorExt, PowerIteration};
//!
//! // Any symmetric operator: here a small matrix (in practice a model's Hessian,
//! // `HessianOperator::full(&model, w, batch)?`).
//! let a = array![[4.0, 1.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, -2.0]];
//! let h = FnOperator::new(3, |x: ArrayView1<'_, f64>, mut out: ArrayViewMut1<'_, f64>| {
//!     out.assign(&a.dot(&x));
//!     Ok(())
//! });
//!
//! let top = h.power_iteration(&PowerIteration::builder().tol(1e-10).max_iter(1000).check()?)?;
//! assert!((top.values[0] - (3.5 + 5f64.sqrt() / 2.0)).abs() < 1e-8);
//!
//! let ends = h.lanczos(&Lanczos::default())?;
//! assert!(ends.is_indefinite()); // the smallest eigenvalue is −2: a saddle
//! # Ok::<(), quant_hessian::HessianError>(())
//! ```
//!
//! ## Features
//! - `rayon` (default): [`qbert_statistics`] runs (block, subset) pairs in parallel, with
//!   results identical to the sequential run.

mod curvature;
mod dual;
mod dualmm;
mod eigen;
mod error;
mod ext;
mod gemm;
mod lanczos;
mod linalg;
mod model;
mod operator;
mod power;
mod qbert;
mod real;
mod trace;

pub use curvature::{BlockCurvature, BlockOperator, PaddedCurvature, Product, check_block_product, check_curvature_inputs};
pub use dual::Dual;
pub use eigen::Eigenpairs;
pub use error::{HessianError, Result};
pub use ext::OperatorExt;
pub use gemm::gram_into;
pub use lanczos::{Extremes, Lanczos, LanczosBuilder};
pub use model::{Autodiff, Batch, Block, Differentiable, HvpKind, MatrixBlock, Model, finite_difference_hvp, release_hvp_buffers};
pub use operator::{FnOperator, HessianOperator, LinearOperator};
pub use power::{PowerIteration, PowerIterationBuilder};
pub use qbert::{BlockStats, QbertParams, TopEigen, qbert_statistics, qbert_statistics_for, qbert_statistics_with_progress, split_subsets};
pub use quant_core::Float;
pub use real::Real;
pub use trace::{HutchPlusPlus, Hutchinson, HutchinsonBuilder, Slq, SpectralDensity, TraceEstimate};
