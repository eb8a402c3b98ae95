//! # quant-mixed
//!
//! Mixed-precision bit allocation for the `quant` family: sensitivity metrics (Q-BERT's
//! `Ω = |mean λ| + std λ`, the top eigenvalue, the average trace, HAWQ-V2's
//! `Tr(H)/n · ‖Q(W) − W‖²` scored with the real quantizers of `quant-core`) and allocators
//! (Q-BERT's ranking, the exact budget-constrained optimum of HAWQ-V3's integer programme as a
//! multiple-choice knapsack, and the Pareto frontier of size against sensitivity).
//!
//! Eigenvalues and traces come in as plain numbers (from `quant-hessian` or anywhere else);
//! this crate depends on `quant-core` only.
//!
//! ## Quick start
//! ```
//! use ndarray::Array2;
//! use quant_core::{Method, Scheme, UniformSpec};
//! use quant_mixed::{score_layer, Budget, Candidate, Curvature, Problem};
//!
//! let candidates: Vec<Candidate> = [2u8, 4, 8]
//!     .iter()
//!     .map(|&b| UniformSpec::builder().bits(b).scheme(Scheme::SymmetricNarrow).per_channel(0).check().map(|s| Candidate::from(Method::from(s))))
//!     .collect::<Result<_, _>>()?;
//! let w1 = Array2::from_shape_fn((64, 64), |(i, j)| ((i * 7 + j * 3) % 17) as f32 / 17.0 - 0.5);
//! let w2 = w1.mapv(|x| x * 0.1);
//! let layers = vec![
//!     score_layer("attn", &w1, Curvature::AverageTrace(2.0), &candidates, 0, 8)?,
//!     score_layer("ffn", &w2, Curvature::AverageTrace(0.1), &candidates, 0, 8)?,
//! ];
//! let plan = Problem::new(layers)?.solve(Budget::CompressionRatio(6.0))?;
//! assert!(plan.compression_ratio >= 6.0);
//! for l in &plan.layers {
//!     println!("{}: {} bits, {} bytes", l.name, l.bits, l.bytes);
//! }
//! # Ok::<(), quant_mixed::MixedError>(())
//! ```
//!
//! ## Features
//! - `serde`: `Serialize` / `Deserialize` for allocations, layer specs, budgets and
//!   sensitivities.

mod allocate;
mod error;
mod ranking;
mod sensitivity;

pub use allocate::{Allocation, Budget, Frontier, LayerAllocation, LayerOption, LayerSpec, Problem, Resource};
pub use error::{MixedError, Result};
pub use ranking::{qbert_order, qbert_ranking};
pub use sensitivity::{Candidate, Curvature, Omega, Perturbation, omega, score_layer};
