//! # quant-core
//!
//! The quantizers of the `quant` family and the types everything else stands on: uniform
//! affine and symmetric quantization per tensor, per channel or per group, densely
//! bit-packed storage for every width from 1 to 8 bits, fake quantization with the
//! straight-through estimator, LSQ gradients, and range calibration (min-max, percentile,
//! MSE-optimal clipping, running min-max and EMA observers), two-level (k-quant style)
//! parameter tables, and integer-only linear layers with fixed-point
//! requantization ([`integer`]).
//!
//! The numeric contract (scale direction, rounding, ranges and what each option matches in
//! PyTorch, NVIDIA's toolkit and the Q-BERT code) is in `docs/numerics.md` of the repository.
//!
//! ## Quick start
//! ```
//! use ndarray::Array2;
//! use quant_core::{quantize, Scheme, UniformSpec};
//!
//! let w = Array2::from_shape_fn((64, 128), |(i, j)| ((i * 131 + j * 71) % 97) as f32 / 97.0 - 0.5);
//! // 4-bit symmetric, one scale per group of 32 along each row.
//! let spec = UniformSpec::builder().bits(4).scheme(Scheme::SymmetricNarrow).per_group(1, 32).check()?;
//! let q = quantize(&w, &spec)?;
//! let w_hat = q.dequantize();
//! println!("{:.2} bits/weight, max error {:.4}", q.bits_per_weight(),
//!     (&w_hat - &w.into_dyn()).iter().fold(0f32, |m, e| m.max(e.abs())));
//! # Ok::<(), quant_core::QuantError>(())
//! ```
//!
//! ## Features
//! - `rayon` (default): quantize slices and batches in parallel. Work is split the same way
//!   with and without it, so results are bit-identical.
//! - `proptest`: the `strategies` module of proptest strategies for tensors and specs.
//!   The invariant checks in [`check`] are always available.
//! - `serde`: serialize and deserialize the specification types; the named enums travel as
//!   their command-line spellings (see [`GranularityRule`] and the `FromStr` impls).
//!
//! ## One vocabulary
//! [`Method`] names any quantizer with its settings (uniform, k-means, ternary, binary) and
//! [`Method::quantize`] returns one [`Quantized`] type for all of them; [`MethodParams`] is
//! the flat form a command line or a configuration names. The specification enums parse from
//! and print as the command line's spellings (`"symmetric".parse::<Scheme>()`).

#[doc(hidden)]
pub mod cpu;
mod error;
mod float;
pub mod integer;
mod kernel;
mod kmeans;
mod layout;
mod lut;
mod matvec;
mod method;
mod names;
mod observer;
pub mod optim;
mod pack;
mod par;
mod params;
mod range;
pub mod rng;
#[macro_use]
mod simd;
#[cfg(feature = "serde")]
mod serde_specs;
mod spec;
mod stats;
mod ste;
mod table_fit;
mod tables;
mod tensor;
mod ternary;
mod uniform;
mod weighted;

pub mod check;
#[doc(hidden)]
pub mod fuzz;
#[cfg(feature = "proptest")]
pub mod strategies;

pub use cpu::{clear_upper_vector_state, target_feature_violations};
pub use error::{QuantError, Result};
pub use float::Float;
pub use kmeans::{
    Clustering, GradientReduction, KMeansAlgorithm, KMeansInfo, KMeansInit, KMeansSpec, KMeansSpecBuilder, centroid_gradients, kmeans_1d,
    kmeans_quantize,
};
pub use lut::{LutKind, LutTensor, TableDtype};
pub use matvec::matvec;
pub use method::{Method, MethodKind, MethodParams, Quantized};
pub use names::{DEFAULT_SUPER_GROUP, GranularityRule};
pub use observer::RangeObserver;
pub use pack::{PackedCodes, packed_len};
pub use params::{QuantParams, SliceParams};
pub use spec::{Granularity, ParamDtype, RangeEstimator, Rounding, ScaleMode, Scheme, TableFit, UniformSpec, UniformSpecBuilder};
pub use stats::{ErrorStats, percentile};
pub use ste::{LsqGradients, lsq_gradients, ste_backward};
pub use tables::QuantizedTables;
pub use tensor::{FakeQuantized, QuantizedTensor};
pub use ternary::{LatInfo, TernarySpec, TernarySpecBuilder, binarize, clip_mask, ternarize, ternarize_lat, ternarize_stochastic};
pub use uniform::{calibrate, fake_quantize, quantize};
pub use weighted::{WEIGHTED_REFINE_ROUNDS, WEIGHTED_SEARCH_STEPS, calibrate_weighted, fit_slice, fit_slices, quantize_weighted};

/// Re-export of `half`, whose `f16` stores two-level table scales.
pub use half;
/// Re-export of `ndarray`, whose views and arrays appear in every signature.
pub use ndarray;
