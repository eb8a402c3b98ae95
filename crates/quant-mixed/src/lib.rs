//! # quant-mixed
//!
//! Mixed-precision bit allocation for the `quant` family. It will hold the sensitivity
//! metrics (Q-BERT's Omega, top eigenvalue, average Hessian trace, HAWQ-V2's
//! trace × perturbation) and the allocators (Q-BERT ranking, the exact budget-constrained
//! multiple-choice knapsack of HAWQ-V3, the Pareto frontier of size against sensitivity).
//!
//! Eigenvalues and traces come in as plain numbers; it depends on `quant-group` and
//! `quant-core` only. Nothing is implemented yet.

#[doc(no_inline)]
pub use quant_core::UniformSpec;
