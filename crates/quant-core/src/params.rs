//! Quantization parameters: per-slice step, zero point and offset.

use crate::float::Float;
use crate::spec::{ParamDtype, Scheme, UniformSpec};
use crate::tables::{QuantizedTables, quantize_tables};

/// The parameters of one slice: `x̂ = scale · (u − zero_point) + offset` for stored code `u`.
///
/// `zero_point` lives in the stored (unsigned) code domain. For the symmetric schemes it is
/// the fixed [`Scheme::signed_offset`] (`u − zero_point` is the signed integer); for
/// [`Scheme::AsymmetricExactZero`] it is PyTorch's zero point; for [`Scheme::AsymmetricGrid`]
/// it is 0 and `offset` holds Q-BERT's `q0`. `offset` is 0 for every other scheme.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SliceParams<F> {
    /// The step size `S` (always positive and finite).
    pub scale: F,
    /// The integer zero point `Z` in the stored code domain.
    pub zero_point: i32,
    /// The real offset `m` (Q-BERT's `q0`).
    pub offset: F,
}

/// `v` clipped to `[−limit, limit]` (`v` itself when not a number).
#[inline(always)]
pub(crate) fn clip<F: Float>(v: F, limit: F) -> F {
    if v < -limit {
        -limit
    } else if v > limit {
        limit
    } else {
        v
    }
}

/// The step of the grid scheme for the (clipped) range `[lo, hi]` with `levels` steps:
/// `(hi − lo)/levels` (without overflow for ranges wider than `F::MAX`), at least the least
/// positive value.
#[inline(always)]
pub(crate) fn grid_step<F: Float>(lo: F, hi: F, levels: F) -> F {
    let d = hi - lo;
    let s = if d.is_finite() { d / levels } else { hi / levels - lo / levels };
    if s >= F::min_positive_value() { s } else { F::min_positive_value() }
}

/// How far [`SliceParams::for_spec`] clips a range for parameters stored as `dtype` (a
/// quarter of the stored type's largest value), `None` when only `from_range`'s `±F::MAX/4`
/// applies.
#[inline(always)]
pub(crate) fn stored_limit<F: Float>(dtype: ParamDtype) -> Option<F> {
    match dtype {
        ParamDtype::Native => None,
        ParamDtype::F16 | ParamDtype::Quantized { .. } => Some(F::cast(32752.0)),
        ParamDtype::Bf16 => Some(F::cast(f64::from(half::bf16::MAX) / 4.0)),
    }
}

impl<F: Float> SliceParams<F> {
    /// Derives a slice's parameters from its real range `[lo, hi]` (finite, `lo ≤ hi`).
    ///
    /// A zero-width range (an all-equal or all-zero slice) gives a finite step: `F::EPSILON`
    /// for the PyTorch-convention schemes (as PyTorch does), the smallest positive normal
    /// number otherwise; every element of such a slice then reconstructs exactly.
    ///
    /// The range is first clipped to `±F::MAX/4`, so that no dequantized value overflows;
    /// only values beyond that (absurd for weights) are affected.
    #[inline(always)]
    pub fn from_range(lo: F, hi: F, bits: u8, scheme: Scheme) -> Self {
        // No dequantized value (nor S·umax on the way) may overflow: ranges reaching past
        // ±F::MAX/4 are clipped there.
        let limit = F::max_value() / F::cast(4.0);
        let (lo, hi) = (clip(lo, limit), clip(hi, limit));
        let levels_i = (1i32 << bits) - 1;
        let levels = F::from_int(levels_i);
        let tiny = F::min_positive_value();
        let floor = |s: F, min: F| if s >= min { s } else { min };
        // (hi − lo)/levels, without overflow for ranges wider than F::MAX.
        let span = |lo: F, hi: F| {
            let d = hi - lo;
            if d.is_finite() { d / levels } else { hi / levels - lo / levels }
        };
        let amax = || {
            let (a, b) = (lo.abs(), hi.abs());
            if a > b { a } else { b }
        };
        match scheme {
            Scheme::AsymmetricGrid => Self { scale: grid_step(lo, hi, levels), zero_point: 0, offset: lo },
            Scheme::AsymmetricExactZero => {
                let lo = if lo < F::zero() { lo } else { F::zero() };
                let hi = if hi > F::zero() { hi } else { F::zero() };
                let scale = floor(span(lo, hi), F::epsilon());
                let z = (-(lo / scale)).round_ties_even().to_i32_saturating().clamp(0, levels_i);
                Self { scale, zero_point: z, offset: F::zero() }
            }
            Scheme::SymmetricNarrow => {
                let half = (1i32 << (bits - 1)) - 1;
                Self { scale: floor(amax() / F::from_int(half), tiny), zero_point: scheme.signed_offset(bits), offset: F::zero() }
            }
            Scheme::SymmetricFull => {
                let denom = levels / F::cast(2.0);
                Self { scale: floor(amax() / denom, F::epsilon()), zero_point: scheme.signed_offset(bits), offset: F::zero() }
            }
        }
    }
}

impl<F: Float> SliceParams<F> {
    /// These parameters in `f32` (exact when `F` is `f32`, the only case the AVX-512 kernels
    /// take).
    pub(crate) fn to_f32(self) -> SliceParams<f32> {
        SliceParams { scale: self.scale.as_f64() as f32, zero_point: self.zero_point, offset: self.offset.as_f64() as f32 }
    }

    /// [`from_range`](Self::from_range) with the spec's width and scheme, then the step and
    /// offset rounded to the spec's [`ParamDtype`] (the values a reader of the stored tensor
    /// sees, so codes are computed against them). For [`ParamDtype::Quantized`] the range is
    /// only clipped to `±32752`: two-level tables are built from all slices together by
    /// [`QuantParams::from_ranges`] and the quantizers.
    #[inline(always)]
    pub fn for_spec(lo: F, hi: F, spec: &UniformSpec) -> Self {
        let dtype = spec.param_dtype();
        // Keep steps and offsets finite in the stored type (a quarter of its largest value,
        // as `from_range` does for F).
        let (lo, hi) = match stored_limit(dtype) {
            Some(l) => (clip(lo, l), clip(hi, l)),
            None => (lo, hi),
        };
        let p = Self::from_range(lo, hi, spec.bits(), spec.scheme());
        // Quantized tables are set afterwards, from all slices together. (A plain function, not
        // a closure, so that it inlines into the vectorised callers.)
        #[inline(always)]
        fn round<F: Float>(v: F, dtype: ParamDtype) -> F {
            match dtype {
                ParamDtype::Native | ParamDtype::Quantized { .. } => v,
                ParamDtype::F16 => F::cast(half::f16::from_f64(v.as_f64()).to_f64()),
                ParamDtype::Bf16 => F::cast(half::bf16::from_f64(v.as_f64()).to_f64()),
            }
        }
        let smallest = match dtype {
            ParamDtype::Native | ParamDtype::Quantized { .. } => F::min_positive_value(),
            ParamDtype::F16 => F::cast(half::f16::from_bits(1).to_f64()),
            ParamDtype::Bf16 => F::cast(half::bf16::from_bits(1).to_f64()),
        };
        let scale = round(p.scale, dtype);
        // A step that rounds to 0 would divide by zero: use the type's smallest step.
        let scale = if scale > F::zero() { scale } else { smallest.max(F::min_positive_value()) };
        Self { scale, zero_point: p.zero_point, offset: round(p.offset, dtype) }
    }
}

/// The parameters of every slice of a tensor under one [`UniformSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct QuantParams<F> {
    pub(crate) spec: UniformSpec,
    pub(crate) slices: Vec<SliceParams<F>>,
    pub(crate) tables: Option<QuantizedTables>,
}

impl<F: Float> QuantParams<F> {
    /// Parameters from caller-supplied ranges `[lo, hi]`, one per slice (for example from a
    /// [`RangeObserver`](crate::RangeObserver) or another calibration tool).
    ///
    /// # Errors
    /// [`QuantError::NonFinite`](crate::QuantError::NonFinite) when a bound is NaN or infinite
    /// (index = slice index); [`QuantError::Empty`](crate::QuantError::Empty) for no ranges.
    /// A range with `lo > hi` is taken as `[hi, lo]`.
    pub fn from_ranges(spec: &UniformSpec, ranges: &[(F, F)]) -> crate::Result<Self> {
        if ranges.is_empty() {
            return Err(crate::QuantError::Empty);
        }
        let slices = ranges
            .iter()
            .enumerate()
            .map(|(index, &(a, b))| {
                if !(a.is_finite() && b.is_finite()) {
                    return Err(crate::QuantError::NonFinite { index });
                }
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                Ok(SliceParams::for_spec(lo, hi, spec))
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Self::from_calibrated(spec, slices)
    }

    /// Parameters from slices made by [`SliceParams::for_spec`]: for a quantized dtype the
    /// two-level tables are built here, from all slices together.
    pub(crate) fn from_calibrated(spec: &UniformSpec, mut slices: Vec<SliceParams<F>>) -> crate::Result<Self> {
        let tables = match spec.param_dtype() {
            ParamDtype::Quantized { .. } => Some(quantize_tables(&mut slices, spec)?),
            _ => None,
        };
        Ok(Self { spec: *spec, slices, tables })
    }

    /// Reassembles parameters from stored slice values (for example read back from a file).
    ///
    /// # Errors
    /// [`QuantError::Empty`](crate::QuantError::Empty) for no slices;
    /// [`QuantError::InvalidParams`](crate::QuantError::InvalidParams) for a step that is not
    /// finite and positive, a non-finite offset, a zero point outside the scheme's (a
    /// symmetric scheme's is fixed, the grid scheme's is 0) or values the spec's
    /// [`ParamDtype`] cannot hold; [`QuantError::InvalidTables`](crate::QuantError::InvalidTables)
    /// for a [`ParamDtype::Quantized`] spec (use [`from_tables`](Self::from_tables)).
    pub fn from_slices(spec: &UniformSpec, slices: Vec<SliceParams<F>>) -> crate::Result<Self> {
        use crate::QuantError::{Empty, InvalidParams, InvalidTables};
        if slices.is_empty() {
            return Err(Empty);
        }
        let dtype = spec.param_dtype();
        let representable = |v: F| match dtype {
            ParamDtype::Native => true,
            ParamDtype::F16 => half::f16::from_f64(v.as_f64()).to_f64() == v.as_f64(),
            ParamDtype::Bf16 => half::bf16::from_f64(v.as_f64()).to_f64() == v.as_f64(),
            _ => false,
        };
        if matches!(dtype, ParamDtype::Quantized { .. }) {
            return Err(InvalidTables { reason: "quantized parameters are rebuilt from their tables (from_tables)" });
        }
        let scheme = spec.scheme();
        for (index, p) in slices.iter().enumerate() {
            let bad = |reason| Err(InvalidParams { index, reason });
            if !(p.scale.is_finite() && p.scale > F::zero()) {
                return bad("the step is not finite and positive");
            }
            if !p.offset.is_finite() {
                return bad("the offset is not finite");
            }
            let zp_ok = match scheme {
                Scheme::AsymmetricExactZero => (0..=i32::from(spec.max_code())).contains(&p.zero_point),
                _ => p.zero_point == scheme.signed_offset(spec.bits()),
            };
            if !zp_ok {
                return bad("the zero point does not fit the scheme");
            }
            if scheme != Scheme::AsymmetricGrid && p.offset != F::zero() {
                return bad("only the grid scheme has an offset");
            }
            if !(representable(p.scale) && representable(p.offset)) {
                return bad("a value is not representable in the spec's parameter dtype");
            }
        }
        Ok(Self { spec: *spec, slices, tables: None })
    }

    /// Reassembles [`ParamDtype::Quantized`] parameters from their stored tables.
    ///
    /// # Errors
    /// [`QuantError::InvalidTables`](crate::QuantError::InvalidTables) when the spec's dtype
    /// is not quantized, or its table width, super-group size or scheme (offsets present
    /// exactly for the grid scheme) disagree with the tables.
    pub fn from_tables(spec: &UniformSpec, tables: QuantizedTables) -> crate::Result<Self> {
        let ParamDtype::Quantized { bits, super_group } = spec.param_dtype() else {
            return Err(crate::QuantError::InvalidTables { reason: "the spec's parameters are not quantized" });
        };
        let grid = spec.scheme() == Scheme::AsymmetricGrid;
        if tables.bits() != bits || tables.super_group() != super_group as usize || tables.offset_codes().is_some() != grid {
            return Err(crate::QuantError::InvalidTables { reason: "the tables do not match the spec" });
        }
        Ok(Self { spec: *spec, slices: tables.slices(spec), tables: Some(tables) })
    }

    /// The two-level tables, for [`ParamDtype::Quantized`] parameters.
    pub fn tables(&self) -> Option<&QuantizedTables> {
        self.tables.as_ref()
    }

    /// The spec these parameters were made for.
    pub fn spec(&self) -> &UniformSpec {
        &self.spec
    }
    /// The per-slice parameters, in slice order (see [`Granularity`](crate::Granularity)).
    pub fn slices(&self) -> &[SliceParams<F>] {
        &self.slices
    }
    /// Number of slices.
    pub fn len(&self) -> usize {
        self.slices.len()
    }
    /// Whether there are no slices (never true for parameters built by this crate).
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// Bytes needed to store the parameters: per slice the step, plus one byte of zero point
    /// for [`Scheme::AsymmetricExactZero`] or an offset for [`Scheme::AsymmetricGrid`];
    /// symmetric schemes store the step only. Steps and offsets take `F::BYTES` each, or 2
    /// with [`ParamDtype::F16`] / [`ParamDtype::Bf16`]. [`ParamDtype::Quantized`] parameters
    /// take [`QuantizedTables::storage_bytes`].
    pub fn storage_bytes(&self) -> usize {
        // Every constructor builds the tables of a quantized dtype.
        if let Some(t) = &self.tables {
            return t.storage_bytes();
        }
        let v = self.spec.param_dtype().bytes(F::BYTES);
        let per_slice = match self.spec.scheme() {
            Scheme::AsymmetricGrid => 2 * v,
            Scheme::AsymmetricExactZero => v + 1,
            Scheme::SymmetricNarrow | Scheme::SymmetricFull => v,
        };
        per_slice * self.slices.len()
    }
}
