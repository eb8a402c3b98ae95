//! # quant-hessian
//!
//! The second-order engine of the `quant` family (Q-BERT, HAWQ). It will hold:
//! a small pluggable `Autodiff` trait (named parameter blocks, loss, gradient and
//! Hessian-vector product on a chosen block and data subset), exact HVPs by forward-over-reverse
//! dual numbers, finite-difference HVPs for gradient-only models, block operators, power
//! iteration, Lanczos, Hutchinson and Hutch++ trace estimators, spectral density, and the
//! per-subset Q-BERT statistics (`Omega = |mean| + std`).
//!
//! It depends on `quant-core` for its [`Float`] trait only. Nothing is implemented yet; this
//! crate currently re-exports that trait so the workspace's dependency graph is in place.

pub use quant_core::Float;
