//! Proptest strategies for tensors and uniform specs (feature `proptest`).
//!
//! ```
//! use proptest::prelude::*;
//! use quant_core::{check, strategies};
//!
//! proptest!(|((x, spec) in strategies::tensor_and_spec::<f32>(3, 9, 100.0))| {
//!     prop_assert!(check::all(&x, &spec).is_ok());
//! });
//! ```

use ::proptest::prelude::*;
use ndarray::{ArrayD, IxDyn};

use crate::float::Float;
use crate::spec::{Granularity, RangeEstimator, Rounding, ScaleMode, Scheme, UniformSpec};

/// Finite tensors of 1 to `max_ndim` dimensions, each axis 1 to `max_axis_len` long, with
/// values in `[-magnitude, magnitude]`. A third of them hold multiples of 1/8 (duplicates and
/// exact ties), a tenth are constant (the zero-range case).
pub fn tensor<F: Float>(max_ndim: usize, max_axis_len: usize, magnitude: f64) -> impl Strategy<Value = ArrayD<F>> {
    let max_ndim = max_ndim.max(1);
    let max_axis_len = max_axis_len.max(1);
    let magnitude = if magnitude.is_finite() && magnitude > 0.0 { magnitude } else { 1.0 };
    prop::collection::vec(1..=max_axis_len, 1..=max_ndim).prop_flat_map(move |shape| {
        let n: usize = shape.iter().product();
        let eighths = (magnitude * 8.0).min(1e6) as i64;
        let values = prop_oneof![
            6 => prop::collection::vec(-magnitude..=magnitude, n),
            3 => prop::collection::vec((-eighths..=eighths).prop_map(|k| k as f64 / 8.0), n),
            1 => (-magnitude..=magnitude).prop_map(move |v| vec![v; n]),
        ];
        values.prop_map(move |v| {
            let data: Vec<F> = v.into_iter().map(F::cast).collect();
            // The length equals the shape's product by construction.
            ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[1])))
        })
    })
}

/// Valid uniform specs for tensors of `ndim` dimensions: every scheme, width, granularity
/// (axes below `ndim`), range estimator, rounding and scale mode.
pub fn spec(ndim: usize) -> impl Strategy<Value = UniformSpec> {
    let ndim = ndim.max(1);
    let scheme = prop_oneof![
        Just(Scheme::AsymmetricGrid),
        Just(Scheme::AsymmetricExactZero),
        Just(Scheme::SymmetricNarrow),
        Just(Scheme::SymmetricFull),
    ];
    let granularity = prop_oneof![
        Just(Granularity::PerTensor),
        (0..ndim).prop_map(|axis| Granularity::PerChannel { axis }),
        (0..ndim, 1usize..6).prop_map(|(axis, size)| Granularity::PerGroup { axis, size }),
    ];
    let range = prop_oneof![
        3 => Just(RangeEstimator::MinMax),
        1 => (0.0f64..10.0, 90.0f64..=100.0).prop_map(|(lower, upper)| RangeEstimator::Percentile { lower, upper }),
        1 => (1u16..20).prop_map(|steps| RangeEstimator::Mse { steps }),
    ];
    let rounding = prop_oneof![
        3 => Just(Rounding::HalfEven),
        1 => Just(Rounding::HalfAwayFromZero),
        1 => any::<u64>().prop_map(|seed| Rounding::Stochastic { seed }),
    ];
    let mode = prop_oneof![Just(ScaleMode::Reciprocal), Just(ScaleMode::Divide)];
    (scheme, granularity, range, rounding, mode, 0u8..8).prop_filter_map("valid spec", |(scheme, g, range, rounding, mode, b)| {
        let bits = scheme.min_bits() + b % (9 - scheme.min_bits());
        UniformSpec::builder().bits(bits).scheme(scheme).granularity(g).range(range).rounding(rounding).scale_mode(mode).check().ok()
    })
}

/// A tensor from [`tensor`] with a spec from [`spec`] that fits its dimensions.
pub fn tensor_and_spec<F: Float>(max_ndim: usize, max_axis_len: usize, magnitude: f64) -> impl Strategy<Value = (ArrayD<F>, UniformSpec)> {
    tensor::<F>(max_ndim, max_axis_len, magnitude).prop_flat_map(|x| {
        let nd = x.ndim();
        (Just(x), spec(nd))
    })
}
