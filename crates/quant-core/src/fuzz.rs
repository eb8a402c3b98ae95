//! The bodies of the fuzz targets (`fuzz/`), also run by the ordinary test suite: each decodes
//! specifications, shapes and values from arbitrary bytes and runs public entry points on
//! them. They must never panic; they return a [`Violation`] only when finite input produced
//! non-finite output (typed errors are expected outcomes). Not part of the stable API.

use ndarray::{ArrayD, IxDyn};

use crate::check::{Check, Violation};
use crate::error::QuantError;
use crate::float::Float;
use crate::kmeans::{GradientReduction, KMeansAlgorithm, KMeansInit, KMeansSpec, centroid_gradients, kmeans_quantize};
use crate::lut::{LutTensor, TableDtype};
use crate::observer::RangeObserver;
use crate::pack::PackedCodes;
use crate::spec::{Granularity, RangeEstimator, Rounding, ScaleMode, Scheme, UniformSpec};
use crate::ste::lsq_gradients;
use crate::ternary::{TernarySpec, binarize, clip_mask, ternarize, ternarize_lat, ternarize_stochastic};
use crate::uniform::{calibrate, fake_quantize, quantize};

/// Bytes read in order, with zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

fn finite_outputs<'a, F: Float + 'a>(values: impl IntoIterator<Item = &'a F>) -> Check {
    match values.into_iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Violation::NonFiniteOutput { index }),
        None => Ok(()),
    }
}

/// Decodes a spec, a shape and tensor values (raw `f32` bit patterns: NaN, infinities and
/// subnormals included) from arbitrary bytes and runs every public entry point of the uniform
/// quantizer on them, in `f32` and `f64`. For fuzzing: it must never panic; it returns a
/// [`Violation`] only when finite input produced non-finite output. Typed errors are expected
/// outcomes, not violations.
pub fn exercise(bytes: &[u8]) -> Check {
    let mut b = Bytes(bytes);
    let bits = b.u8() % 10;
    let scheme =
        [Scheme::AsymmetricGrid, Scheme::AsymmetricExactZero, Scheme::SymmetricNarrow, Scheme::SymmetricFull][usize::from(b.u8() % 4)];
    // Group sizes 0..=8, and (from the top four byte values) the sizes the fast kernels
    // special-case.
    let (kind, axis) = (b.u8() % 3, usize::from(b.u8() % 5));
    let size = match b.u8() {
        252 => 16,
        253 => 32,
        254 => 64,
        255 => 128,
        s => usize::from(s % 9),
    };
    let granularity = match kind {
        0 => Granularity::PerTensor,
        1 => Granularity::PerChannel { axis },
        _ => Granularity::PerGroup { axis, size },
    };
    let range = match b.u8() % 3 {
        0 => RangeEstimator::MinMax,
        1 => RangeEstimator::Percentile { lower: f64::from(f32::from_bits(b.u32())), upper: f64::from(f32::from_bits(b.u32())) },
        _ => RangeEstimator::Mse { steps: u16::from(b.u8() % 40) },
    };
    let rounding = match b.u8() % 3 {
        0 => Rounding::HalfEven,
        1 => Rounding::HalfAwayFromZero,
        _ => Rounding::Stochastic { seed: b.u64() },
    };
    let mode = if b.u8() % 2 == 0 { ScaleMode::Reciprocal } else { ScaleMode::Divide };
    // Dimensions 0..=6, or (from byte values 224 up) 16 to 512: long enough for sixteen
    // groups of up to 128 in one row, which the fast kernels take in one block.
    let shape: Vec<usize> = (0..b.u8() % 4)
        .map(|_| match b.u8() {
            d @ 224.. => 16 * usize::from(d - 223),
            d => usize::from(d % 7),
        })
        .collect();
    let n: usize = shape.iter().product();
    if n > 1 << 13 {
        return Ok(());
    }
    // Raw bit patterns while the bytes last (at most 4 per value), then those values again,
    // negated on every other pass, so that long tensors are not all zeros.
    let mut values: Vec<f32> = (0..n.min(b.0.len() / 4)).map(|_| f32::from_bits(b.u32())).collect();
    let read = values.len();
    for i in read..n {
        let v = match read {
            0 => 0.0,
            _ if (i / read) % 2 == 1 => -values[i % read],
            _ => values[i % read],
        };
        values.push(v);
    }
    let x = match ArrayD::from_shape_vec(IxDyn(&shape), values) {
        Ok(x) => x,
        Err(_) => return Ok(()),
    };
    // Packed codes from the remaining bytes, with an arbitrary declared length and width.
    let (len, width) = (usize::from(b.u8()), b.u8() % 10);
    if let Ok(p) = PackedCodes::from_bytes(b.0.to_vec(), len, width) {
        let _ = (p.unpack(), p.get(len / 2));
    }
    let _ = PackedCodes::pack(b.0, width);
    let Ok(spec) =
        UniformSpec::builder().bits(bits).scheme(scheme).granularity(granularity).range(range).rounding(rounding).scale_mode(mode).check()
    else {
        return Ok(());
    };
    exercise_spec(&x, &spec)?;
    exercise_spec(&x.mapv(f64::from), &spec)
}

fn exercise_spec<F: Float>(x: &ArrayD<F>, spec: &UniformSpec) -> Check {
    let finite = x.iter().all(|v| v.is_finite());
    if let Ok(q) = quantize(x, spec) {
        let dq = q.dequantize();
        finite_outputs(dq.iter())?;
        let _ = (q.int_repr(), q.storage_bytes(), q.bits_per_weight());
        let mut out = ArrayD::zeros(IxDyn(q.shape()));
        let _ = q.dequantize_into(out.view_mut());
    }
    if let Ok(f) = fake_quantize(x, spec) {
        finite_outputs(f.values.iter())?;
    }
    if let Ok(p) = calibrate(x, spec) {
        let _ = p.quantize(x);
        if let Ok(g) = lsq_gradients(x, &x.mapv(|_| F::one()), &p, true) {
            finite_outputs(g.input.iter().chain(&g.scale).chain(&g.zero_point))?;
        }
    }
    let mut obs = RangeObserver::min_max(spec.granularity());
    let _ = obs.observe(x);
    let _ = obs.observe(&x.mapv(|v| v * F::cast(0.5)));
    let _ = obs.params(spec);
    if finite && !x.is_empty() && quantize(x, spec).is_err() && !matches!(spec.granularity(), Granularity::PerTensor) {
        // A finite, non-empty tensor may only fail on its axis.
        return match quantize(x, spec) {
            Err(QuantError::InvalidAxis { .. }) | Ok(_) => Ok(()),
            Err(e) => Err(Violation::Quant(e)),
        };
    }
    Ok(())
}

/// The codebook quantizers' counterpart of [`exercise`]: decodes a ternary and a k-means spec
/// (valid or not), a shape and raw `f32` values from arbitrary bytes and runs ternary, binary,
/// stochastic, LAT and k-means quantization, centroid gradients and a table step. Never
/// panics; returns a [`Violation`] only when finite input produced non-finite output.
pub fn exercise_codebook(bytes: &[u8]) -> Check {
    let mut b = Bytes(bytes);
    let (kind, axis, size) = (b.u8() % 3, usize::from(b.u8() % 4), usize::from(b.u8() % 6));
    let granularity = match kind {
        0 => Granularity::PerTensor,
        1 => Granularity::PerChannel { axis },
        _ => Granularity::PerGroup { axis, size },
    };
    let threshold = f64::from(f32::from_bits(b.u32()));
    let clip = f64::from(f32::from_bits(b.u32()));
    let k = usize::from(b.u8()) + usize::from(b.u8() % 2) * 256; // 0..=511: invalid ones included
    let init = match b.u8() % 3 {
        0 => KMeansInit::Linear,
        1 => KMeansInit::Density,
        _ => KMeansInit::PlusPlus { seed: b.u64() },
    };
    let algorithm = if b.u8() % 2 == 0 {
        KMeansAlgorithm::Exact
    } else {
        KMeansAlgorithm::Lloyd { max_iter: usize::from(b.u8() % 20), tol: f64::from(f32::from_bits(b.u32())) }
    };
    let table = if b.u8() % 2 == 0 { TableDtype::F32 } else { TableDtype::F16 };
    let shape: Vec<usize> = (0..b.u8() % 3 + 1).map(|_| usize::from(b.u8() % 6)).collect();
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| f32::from_bits(b.u32())).collect();
    let d: Vec<f32> = (0..n).map(|_| f32::from_bits(b.u32())).collect();
    let (Ok(x), Ok(d)) = (ArrayD::from_shape_vec(IxDyn(&shape), values), ArrayD::from_shape_vec(IxDyn(&shape), d)) else {
        return Ok(());
    };
    let finite = x.iter().all(|v| v.is_finite());
    let spec = TernarySpec::builder().granularity(granularity).threshold(threshold).clip(clip).check();
    for spec in [spec, TernarySpec::builder().granularity(granularity).check()].into_iter().flatten() {
        let _ = clip_mask(&x, &spec);
        for t in [ternarize(&x, &spec), binarize(&x, &spec), ternarize_stochastic(&x, &spec, 7)].into_iter().flatten() {
            lut_outputs(&t, finite)?;
        }
        if let Ok((t, _)) = ternarize_lat(&x, &d, &spec, 10) {
            lut_outputs(&t, finite)?;
        }
    }
    let spec = KMeansSpec::builder().k(k).granularity(granularity).init(init).algorithm(algorithm).table(table).check();
    if let Ok(spec) = spec
        && let Ok((mut t, _)) = kmeans_quantize(&x, &spec)
    {
        lut_outputs(&t, finite)?;
        if let Ok(g) = centroid_gradients(&t, &d, GradientReduction::Mean) {
            let _ = t.apply_table_step(&g, 0.1);
            lut_outputs(&t, finite)?;
        }
    }
    Ok(())
}

fn lut_outputs(t: &LutTensor<f32>, finite: bool) -> Check {
    let dq = t.dequantize();
    let _ = (t.storage_bytes(), t.bits_per_weight(), t.codes().unpack());
    if finite { finite_outputs(dq.iter()) } else { Ok(()) }
}
