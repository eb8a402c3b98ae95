//! The fast paths against a plain scalar reference implementation kept here.
//!
//! The reference follows NUMERICS.md literally: slices by multi-index, ranges by full sort or
//! brute force, one element at a time with `std`'s rounding. Codes, parameters and
//! dequantized values must agree exactly.

use ndarray::{ArrayD, Dimension, IxDyn};
use proptest::prelude::*;
use quant_core::{Float, Granularity, RangeEstimator, Rounding, ScaleMode, Scheme, SliceParams, UniformSpec, quantize, strategies};

/// The slice of the element at multi-index `idx`.
fn slice_of(shape: &[usize], idx: &[usize], g: Granularity) -> usize {
    match g {
        Granularity::PerTensor => 0,
        Granularity::PerChannel { axis } => idx[axis],
        Granularity::PerGroup { axis, size } => {
            let mut p = 0;
            for d in 0..shape.len() {
                let (i, n) = if d == axis { (idx[d] / size, shape[d].div_ceil(size)) } else { (idx[d], shape[d]) };
                p = p * n + i;
            }
            p
        }
    }
}

trait Std: Float {
    fn std_round_even(self) -> Self;
}
impl Std for f32 {
    fn std_round_even(self) -> Self {
        self.round_ties_even()
    }
}
impl Std for f64 {
    fn std_round_even(self) -> Self {
        self.round_ties_even()
    }
}

fn splitmix_unit(seed: u64, index: u64) -> f64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn ref_params<F: Float>(lo: F, hi: F, spec: &UniformSpec) -> SliceParams<F> {
    let b = spec.bits();
    let levels = F::from_int((1 << b) - 1);
    let two = F::cast(2.0);
    let (scale, zp, off) = match spec.scheme() {
        Scheme::AsymmetricGrid => ((hi - lo) / levels, 0, lo),
        Scheme::AsymmetricExactZero => {
            let (lo, hi) = (lo.min(F::zero()), hi.max(F::zero()));
            let s = ((hi - lo) / levels).max(F::epsilon());
            let z = (-(lo / s)).to_f64().map_or(0, |v| v.round_ties_even() as i32).clamp(0, (1 << b) - 1);
            return SliceParams { scale: s, zero_point: z, offset: F::zero() };
        }
        Scheme::SymmetricNarrow => (lo.abs().max(hi.abs()) / F::from_int((1 << (b - 1)) - 1), (1 << (b - 1)) - 1, F::zero()),
        Scheme::SymmetricFull => {
            let s = (lo.abs().max(hi.abs()) / (levels / two)).max(F::epsilon());
            return SliceParams { scale: s, zero_point: 1 << (b - 1), offset: F::zero() };
        }
        _ => unreachable!(),
    };
    SliceParams { scale: if scale >= F::min_positive_value() { scale } else { F::min_positive_value() }, zero_point: zp, offset: off }
}

fn ref_code<F: Std>(x: F, p: &SliceParams<F>, spec: &UniformSpec, index: usize, rounding: Rounding) -> u8 {
    let y = match spec.scale_mode() {
        ScaleMode::Divide => (x - p.offset) / p.scale,
        _ => (x - p.offset) * (F::one() / p.scale),
    };
    let r = match rounding {
        Rounding::HalfEven => y.std_round_even(),
        Rounding::HalfAwayFromZero => y.round(),
        Rounding::Stochastic { seed } => F::cast((y.as_f64() + splitmix_unit(seed, index as u64)).floor()),
        _ => unreachable!(),
    };
    let q = r + F::from_int(p.zero_point);
    q.max(F::zero()).min(F::from_int(i32::from(spec.max_code()))).as_f64() as u8
}

fn ref_dequant<F: Float>(u: u8, p: &SliceParams<F>) -> F {
    F::from_int(i32::from(u) - p.zero_point) * p.scale + p.offset
}

fn ref_percentile<F: Float>(sorted: &[F], pct: f64) -> F {
    let pos = pct / 100.0 * (sorted.len() - 1) as f64;
    let k = pos.floor() as usize;
    let frac = F::cast(pos - k as f64);
    if frac == F::zero() || k + 1 >= sorted.len() { sorted[k] } else { sorted[k] + frac * (sorted[k + 1] - sorted[k]) }
}

fn ref_range<F: Std>(vals: &[F], spec: &UniformSpec) -> (F, F) {
    let lo = vals.iter().copied().fold(vals[0], F::min);
    let hi = vals.iter().copied().fold(vals[0], F::max);
    match spec.range() {
        RangeEstimator::MinMax => (lo, hi),
        RangeEstimator::Percentile { lower, upper } => {
            let mut s = vals.to_vec();
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (ref_percentile(&s, lower), ref_percentile(&s, upper))
        }
        RangeEstimator::Mse { steps } => {
            let mut best = (lo, hi);
            let mut best_err = f64::INFINITY;
            for k in (1..=steps).rev() {
                let a = F::cast(f64::from(k) / f64::from(steps));
                let (l, h) = (if lo < F::zero() { lo * a } else { lo }, if hi > F::zero() { hi * a } else { hi });
                let p = ref_params(l, h, spec);
                let err: f64 =
                    vals.iter().map(|&x| (ref_dequant(ref_code(x, &p, spec, 0, Rounding::HalfEven), &p) - x).as_f64().powi(2)).sum();
                if err < best_err {
                    best_err = err;
                    best = (l, h);
                }
            }
            best
        }
        _ => unreachable!(),
    }
}

fn reference<F: Std>(x: &ArrayD<F>, spec: &UniformSpec) -> (Vec<SliceParams<F>>, Vec<u8>) {
    let shape = x.shape().to_vec();
    let ids: Vec<usize> =
        x.indexed_iter().map(|(idx, _)| slice_of(&shape, idx.as_array_view().as_slice().unwrap(), spec.granularity())).collect();
    let n = ids.iter().max().map_or(0, |m| m + 1);
    let vals: Vec<F> = x.iter().copied().collect();
    let mut members: Vec<Vec<F>> = vec![Vec::new(); n];
    for (&p, &v) in ids.iter().zip(&vals) {
        members[p].push(v);
    }
    let params: Vec<SliceParams<F>> = members
        .iter()
        .map(|m| {
            let (lo, hi) = ref_range(m, spec);
            ref_params(lo, hi, spec)
        })
        .collect();
    let codes = vals.iter().zip(&ids).enumerate().map(|(i, (&v, &p))| ref_code(v, &params[p], spec, i, spec.rounding())).collect();
    (params, codes)
}

fn agree<F: Std>(x: &ArrayD<F>, spec: &UniformSpec) -> Result<(), TestCaseError> {
    let q = quantize(x, spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (params, codes) = reference(x, spec);
    prop_assert_eq!(q.params().slices(), &params[..]);
    prop_assert_eq!(q.codes().unpack(), codes.clone());
    let dq = q.dequantize();
    for ((ix, &d), &c) in dq.indexed_iter().zip(&codes) {
        let p = params[slice_of(x.shape(), ix.as_array_view().as_slice().unwrap(), spec.granularity())];
        prop_assert_eq!(d.as_f64().to_bits(), ref_dequant(c, &p).as_f64().to_bits());
    }
    Ok(())
}

macro_rules! reference_tests {
    ($name:ident, $t:ty) => {
        mod $name {
            use super::*;
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(400))]
                #[test]
                fn fast_path_equals_reference((x, spec) in strategies::tensor_and_spec::<$t>(3, 9, 50.0)) {
                    agree(&x, &spec)?;
                }

                #[test]
                fn non_contiguous_views_equal_contiguous((x, spec) in strategies::tensor_and_spec::<$t>(3, 7, 10.0)) {
                    // A transposed (non-standard-layout) view quantizes like its contiguous copy.
                    let t = x.t();
                    let owned = t.to_owned();
                    let a = quantize(&t, &spec);
                    let b = quantize(&owned, &spec);
                    prop_assert_eq!(a, b);
                }
            }
        }
    };
}
reference_tests!(f32_reference, f32);
reference_tests!(f64_reference, f64);

/// Large tensors cross the batch boundaries of the parallel path (2^15 elements).
#[test]
fn large_tensors_cross_batch_boundaries() {
    let specs = [
        UniformSpec::builder().bits(3).per_channel(0).check().unwrap(),
        UniformSpec::builder().bits(5).per_group(1, 100).check().unwrap(),
        UniformSpec::builder().bits(7).per_group(0, 3).check().unwrap(),
        UniformSpec::builder().bits(4).scheme(Scheme::SymmetricFull).rounding(Rounding::Stochastic { seed: 7 }).check().unwrap(),
        UniformSpec::builder().bits(6).per_channel(1).check().unwrap(),
    ];
    let x = ArrayD::from_shape_fn(IxDyn(&[301, 333]), |ix| (((ix[0] * 7919 + ix[1] * 104_729) % 10_007) as f32 / 5000.0 - 1.0).powi(3));
    for spec in specs {
        agree(&x, &spec).unwrap();
    }
}

/// Tensors large enough for the 16-group kernels and for dequantize's non-temporal stores
/// (at least 2^22 values; nibbles and bytes), written into an output that starts off a
/// 64-byte line too.
#[test]
fn streamed_dequantize_of_large_tensors_equals_the_reference() {
    let specs = [
        UniformSpec::builder().bits(4).scheme(Scheme::SymmetricNarrow).per_group(1, 32).check().unwrap(),
        UniformSpec::builder().bits(4).per_group(1, 128).check().unwrap(),
        UniformSpec::builder().bits(8).scheme(Scheme::SymmetricNarrow).per_channel(0).check().unwrap(),
    ];
    let (rows, cols) = (1025, 4096);
    let x = ArrayD::from_shape_fn(IxDyn(&[rows, cols]), |ix| (((ix[0] * 7919 + ix[1] * 104_729) % 10_007) as f32 / 5000.0 - 1.0).powi(3));
    for spec in specs {
        agree(&x, &spec).unwrap();
        let q = quantize(&x, &spec).unwrap();
        let whole = q.dequantize();
        for skip in [1, 3] {
            let mut buf = vec![f32::NAN; rows * cols + skip];
            let view = ndarray::ArrayViewMut::from_shape(IxDyn(&[rows, cols]), &mut buf[skip..]).unwrap();
            q.dequantize_into(view).unwrap();
            assert!(buf[..skip].iter().all(|v| v.is_nan()));
            assert!(buf[skip..].iter().zip(whole.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "skip {skip}");
        }
    }
}
