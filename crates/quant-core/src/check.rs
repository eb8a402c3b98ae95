//! Invariant checks for uniform quantization, for property tests of your own configurations.
//!
//! Each function quantizes the tensor with the spec and returns `Ok(())` or the first
//! [`Violation`] found. Use them with any property-testing tool; the `proptest` feature adds
//! ready-made strategies in the `strategies` module.
//!
//! ```
//! use ndarray::array;
//! use quant_core::{check, UniformSpec, Scheme};
//!
//! let x = array![[0.5f32, -1.25, 2.0], [0.0, 0.75, -0.125]];
//! let spec = UniformSpec::builder().bits(3).scheme(Scheme::SymmetricNarrow).per_channel(0).check()?;
//! check::all(&x, &spec).map_err(|v| format!("{v}"))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use ndarray::{ArrayBase, Axis, Data, Dimension};

use crate::error::QuantError;
use crate::float::Float;
use crate::pack::PackedCodes;
use crate::spec::{Granularity, Rounding, UniformSpec};
use crate::uniform::{calibrate, fake_quantize, layout_of, quantize, row_major};

/// A broken invariant, with the row-major index and values involved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// Quantization itself failed.
    #[error("quantization failed: {0}")]
    Quant(#[from] QuantError),
    /// `|x − x̂|` exceeds half a step (a whole step with stochastic rounding) inside the range.
    #[error("element {index}: |{x} - {x_hat}| exceeds {bound}")]
    ErrorBound {
        /// Row-major index.
        index: usize,
        /// Input value.
        x: f64,
        /// Dequantized value.
        x_hat: f64,
        /// The allowed error.
        bound: f64,
    },
    /// A stored code above the scheme's largest code.
    #[error("element {index}: code {code} above {max}")]
    CodeOutOfRange {
        /// Row-major index.
        index: usize,
        /// The code.
        code: u8,
        /// The largest allowed code.
        max: u8,
    },
    /// Fake-quantizing a fake-quantized tensor changed it.
    #[error("element {index}: fake-quant not idempotent ({once} then {twice})")]
    NotIdempotent {
        /// Row-major index.
        index: usize,
        /// After one pass.
        once: f64,
        /// After two passes.
        twice: f64,
    },
    /// `dequantize(quantize(x))` and `fake_quantize(x)` differ in some bit.
    #[error("element {index}: dequantized {dequantized} differs from fake-quantized {fake}")]
    DequantizeMismatch {
        /// Row-major index.
        index: usize,
        /// From the packed path.
        dequantized: f64,
        /// From fake quantization.
        fake: f64,
    },
    /// Within one slice, a larger value got a smaller code.
    #[error("elements {lower} and {higher}: codes not monotone in the values")]
    NotMonotone {
        /// Index of the smaller value (with the larger code).
        lower: usize,
        /// Index of the larger value.
        higher: usize,
    },
    /// Packing then unpacking changed a code.
    #[error("code {index} changed in a pack/unpack round trip")]
    PackRoundTrip {
        /// Index of the code.
        index: usize,
    },
    /// A dequantized, fake-quantized or gradient value is NaN or infinite for finite input.
    #[error("element {index}: non-finite output for finite input")]
    NonFiniteOutput {
        /// Row-major index.
        index: usize,
    },
    /// Per-channel quantization differs from per-tensor quantization of that channel's slice.
    #[error("channel {channel} differs from per-tensor quantization of its slice")]
    PerChannelMismatch {
        /// The channel.
        channel: usize,
    },
}

/// `Ok` or the first violation.
pub type Check = core::result::Result<(), Violation>;

fn deterministic(spec: &UniformSpec) -> bool {
    !matches!(spec.rounding(), Rounding::Stochastic { .. })
}

/// Inside the representable range, `|x − x̂| ≤ S/2` (`S` with stochastic rounding), up to
/// float rounding of the arithmetic: `4ε·(|x| + |m| + S·umax)`, from one rounding each in
/// `x − m`, `1/S`, the product, and the two operations of the dequantization.
pub fn error_bound<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &UniformSpec) -> Check {
    let q = quantize(x, spec)?;
    let layout = layout_of(x.shape(), spec)?;
    let data = row_major(x);
    let codes = q.codes().unpack();
    let eps = F::epsilon().as_f64();
    let umax = f64::from(spec.max_code());
    let half = if deterministic(spec) { 0.5 } else { 1.0 };
    let mut out = Ok(());
    layout.for_each_segment(0..data.len(), |p, r| {
        if out.is_err() {
            return;
        }
        let sp = q.params().slices()[p];
        let (s, m, z) = (sp.scale.as_f64(), sp.offset.as_f64(), f64::from(sp.zero_point));
        let (lo, hi) = (s * (0.0 - z) + m, s * (umax - z) + m);
        for i in r {
            let xv = data[i].as_f64();
            if xv < lo || xv > hi {
                continue;
            }
            let x_hat = (F::from_int(i32::from(codes[i]) - sp.zero_point) * sp.scale + sp.offset).as_f64();
            let bound = half * s + 4.0 * eps * (xv.abs() + m.abs() + s * umax);
            if (xv - x_hat).abs() > bound {
                out = Err(Violation::ErrorBound { index: i, x: xv, x_hat, bound });
                return;
            }
        }
    });
    out
}

/// Every stored code lies in `0..=max_code`.
pub fn codes_in_range<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &UniformSpec) -> Check {
    let q = quantize(x, spec)?;
    let max = spec.max_code();
    match q.codes().unpack().into_iter().enumerate().find(|&(_, c)| c > max) {
        Some((index, code)) => Err(Violation::CodeOutOfRange { index, code, max }),
        None => Ok(()),
    }
}

/// With fixed parameters, fake-quantizing twice equals fake-quantizing once, bit for bit
/// (deterministic rounding only; stochastic specs pass trivially).
pub fn fake_quant_idempotent<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &UniformSpec) -> Check {
    if !deterministic(spec) {
        return Ok(());
    }
    let p = calibrate(x, spec)?;
    let once = p.fake_quantize(x)?.values;
    let twice = p.fake_quantize(&once)?.values;
    match once.iter().zip(twice.iter()).position(|(a, b)| a.differs(*b)) {
        Some(index) => Err(Violation::NotIdempotent {
            index,
            once: once.iter().nth(index).map_or(f64::NAN, |v| v.as_f64()),
            twice: twice.iter().nth(index).map_or(f64::NAN, |v| v.as_f64()),
        }),
        None => Ok(()),
    }
}

/// `quantize(x).dequantize()` equals `fake_quantize(x).values` bit for bit.
pub fn dequantize_matches_fake_quant<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &UniformSpec) -> Check {
    let a = quantize(x, spec)?.dequantize();
    let b = fake_quantize(x, spec)?.values;
    match a.iter().zip(b.iter()).position(|(u, v)| u.differs(*v)) {
        Some(index) => Err(Violation::DequantizeMismatch {
            index,
            dequantized: a.iter().nth(index).map_or(f64::NAN, |v| v.as_f64()),
            fake: b.iter().nth(index).map_or(f64::NAN, |v| v.as_f64()),
        }),
        None => Ok(()),
    }
}

/// Within each slice, `x_a ≤ x_b` implies `code_a ≤ code_b` (deterministic rounding only).
pub fn monotone<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &UniformSpec) -> Check {
    if !deterministic(spec) {
        return Ok(());
    }
    let q = quantize(x, spec)?;
    let layout = layout_of(x.shape(), spec)?;
    let data = row_major(x);
    let codes = q.codes().unpack();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); layout.num_params()];
    layout.for_each_segment(0..data.len(), |p, r| members[p].extend(r));
    for mut idx in members {
        idx.sort_by(|&a, &b| data[a].partial_cmp(&data[b]).unwrap_or(core::cmp::Ordering::Equal));
        for w in idx.windows(2) {
            if codes[w[0]] > codes[w[1]] && data[w[0]] < data[w[1]] {
                return Err(Violation::NotMonotone { lower: w[1], higher: w[0] });
            }
        }
    }
    Ok(())
}

/// Packing `codes` at `bits` and unpacking gives them back (codes are masked to `bits`).
pub fn pack_round_trip(codes: &[u8], bits: u8) -> Check {
    let masked: Vec<u8> = codes.iter().map(|&c| if bits >= 8 { c } else { c & ((1u8 << bits) - 1) }).collect();
    let p = PackedCodes::pack(&masked, bits)?;
    let back = p.unpack();
    match masked.iter().zip(&back).position(|(a, b)| a != b) {
        Some(index) => Err(Violation::PackRoundTrip { index }),
        None if back.len() != masked.len() => Err(Violation::PackRoundTrip { index: back.len().min(masked.len()) }),
        None => match masked.iter().enumerate().find(|&(i, &c)| p.get(i) != Some(c)) {
            Some((index, _)) => Err(Violation::PackRoundTrip { index }),
            None => Ok(()),
        },
    }
}

/// For a per-channel spec, each channel's dequantized slice equals per-tensor quantization
/// of that slice alone, bit for bit (other granularities pass trivially).
pub fn per_channel_matches_slices<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &UniformSpec) -> Check {
    let Granularity::PerChannel { axis } = spec.granularity() else { return Ok(()) };
    if !deterministic(spec) {
        return Ok(());
    }
    let whole = quantize(x, spec)?.dequantize();
    let per_tensor = spec.with_granularity(Granularity::PerTensor)?;
    let x = x.view().into_dyn();
    for (channel, (xs, ws)) in x.axis_iter(Axis(axis)).zip(whole.axis_iter(Axis(axis))).enumerate() {
        let alone = quantize(&xs, &per_tensor)?.dequantize();
        if alone.iter().zip(ws.iter()).any(|(a, b)| a.differs(*b)) {
            return Err(Violation::PerChannelMismatch { channel });
        }
    }
    Ok(())
}

/// Runs every check above that applies to `spec`.
pub fn all<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &UniformSpec) -> Check {
    error_bound(x, spec)?;
    codes_in_range(x, spec)?;
    fake_quant_idempotent(x, spec)?;
    dequantize_matches_fake_quant(x, spec)?;
    monotone(x, spec)?;
    per_channel_matches_slices(x, spec)?;
    let q = quantize(x, spec)?;
    pack_round_trip(&q.codes().unpack(), spec.bits())
}

/// Whether two floats differ in value or in the sign of zero (the bits, for finite values).
pub(crate) trait BitsDiffer {
    fn differs(self, other: Self) -> bool;
}

impl<F: Float> BitsDiffer for F {
    fn differs(self, other: Self) -> bool {
        // Equal values with equal sign of zero are the same bits for f32/f64 (no NaN here:
        // inputs are validated finite and outputs are finite).
        !(self == other && self.is_sign_negative() == other.is_sign_negative())
    }
}
