//! Two-level (quantized) parameter tables, GGML k-quant style.

use half::f16;

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::pack::PackedCodes;
use crate::par;
use crate::params::{QuantParams, SliceParams};
use crate::spec::{ParamDtype, Scheme, TableFit, UniformSpec};

/// The stored form of [`ParamDtype::Quantized`] parameters.
///
/// Slice `i` belongs to super-group `g = i / super_group`. Its step is
/// `super_scales[g] · scale_codes[i]` and, for [`Scheme::AsymmetricGrid`], its offset is
/// `super_offsets[g] · offset_codes[i]` (the super-offset may be negative: offsets of weight
/// groups are usually below zero). Both products are exact in `f32`. The symmetric schemes
/// store no offsets.
///
/// Storage: 2 bytes per super-scale and super-offset, plus the codes packed at `bits` bits
/// each ([`storage_bytes`](Self::storage_bytes)).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTables {
    super_group: usize,
    super_scales: Vec<f16>,
    super_offsets: Vec<f16>,
    scale_codes: PackedCodes,
    offset_codes: Option<PackedCodes>,
}

impl QuantizedTables {
    /// Reassembles tables (for example read back from a file), checking that the parts fit.
    ///
    /// `offsets` is `Some((super_offsets, offset_codes))` for [`Scheme::AsymmetricGrid`] and
    /// `None` for the symmetric schemes.
    ///
    /// # Errors
    /// [`QuantError::InvalidTables`] when the counts disagree (one super-scale per
    /// `super_group` slices, one code per slice, equal code widths), a super-scale is not
    /// finite and positive, a super-offset is not finite, or a scale code is 0.
    pub fn from_parts(
        super_group: usize,
        super_scales: Vec<f16>,
        scale_codes: PackedCodes,
        offsets: Option<(Vec<f16>, PackedCodes)>,
    ) -> Result<Self> {
        let bad = |reason| Err(QuantError::InvalidTables { reason });
        let n = scale_codes.len();
        if super_group == 0 || n == 0 {
            return bad("tables need at least one slice and one slice per super-group");
        }
        if !(2..=8).contains(&scale_codes.bits()) {
            return bad("table codes must be 2 to 8 bits wide");
        }
        if super_scales.len() != n.div_ceil(super_group) {
            return bad("the number of super-scales does not match the slices");
        }
        if super_scales.iter().any(|d| !(d.is_finite() && d.to_f64() > 0.0)) {
            return bad("a super-scale is not finite and positive");
        }
        if scale_codes.unpack().contains(&0) {
            return bad("a scale code is 0 (a zero step)");
        }
        let (super_offsets, offset_codes) = match offsets {
            Some((so, oc)) => {
                if so.len() != super_scales.len() || oc.len() != n || oc.bits() != scale_codes.bits() {
                    return bad("the offset tables do not match the scale tables");
                }
                if so.iter().any(|m| !m.is_finite()) {
                    return bad("a super-offset is not finite");
                }
                (so, Some(oc))
            }
            None => (Vec::new(), None),
        };
        Ok(Self { super_group, super_scales, super_offsets, scale_codes, offset_codes })
    }

    /// Width of the table codes.
    pub fn bits(&self) -> u8 {
        self.scale_codes.bits()
    }
    /// Slices per super-group.
    pub fn super_group(&self) -> usize {
        self.super_group
    }
    /// One f16 scale per super-group for the step codes.
    pub fn super_scales(&self) -> &[f16] {
        &self.super_scales
    }
    /// One f16 scale per super-group for the offset codes (empty for symmetric schemes).
    pub fn super_offsets(&self) -> &[f16] {
        &self.super_offsets
    }
    /// The step code of every slice.
    pub fn scale_codes(&self) -> &PackedCodes {
        &self.scale_codes
    }
    /// The offset code of every slice ([`Scheme::AsymmetricGrid`] only).
    pub fn offset_codes(&self) -> Option<&PackedCodes> {
        self.offset_codes.as_ref()
    }
    /// Number of slices the tables describe.
    pub fn len(&self) -> usize {
        self.scale_codes.len()
    }
    /// Whether the tables describe no slices (never true for tables built by this crate).
    pub fn is_empty(&self) -> bool {
        self.scale_codes.is_empty()
    }

    /// Bytes of storage: 2 per super-scale and super-offset plus the packed codes.
    pub fn storage_bytes(&self) -> usize {
        2 * (self.super_scales.len() + self.super_offsets.len())
            + self.scale_codes.as_bytes().len()
            + self.offset_codes.as_ref().map_or(0, |c| c.as_bytes().len())
    }

    /// The effective parameters of every slice under `spec`.
    pub(crate) fn slices<F: Float>(&self, spec: &UniformSpec) -> Vec<SliceParams<F>> {
        let zero_point = spec.scheme().signed_offset(spec.bits());
        let scales = self.scale_codes.unpack();
        let offsets = self.offset_codes.as_ref().map(PackedCodes::unpack);
        (0..scales.len())
            .map(|i| {
                let g = i / self.super_group;
                let scale = F::cast(self.super_scales[g].to_f64() * f64::from(scales[i]));
                let offset = match &offsets {
                    Some(o) => F::cast(self.super_offsets[g].to_f64() * f64::from(o[i])),
                    None => F::zero(),
                };
                SliceParams { scale, zero_point, offset }
            })
            .collect()
    }
}

/// The smallest f16 at or above `v` (`v` finite, `≥ 0`), at least the smallest positive f16.
fn f16_up(v: f64) -> f16 {
    let h = f16::from_f64(v);
    let h = if h.to_f64() < v { f16::from_bits(h.to_bits() + 1) } else { h };
    if h.to_f64() > 0.0 { h } else { f16::from_bits(1) }
}

/// [`f16_up`] through f32: the f32 nearest to `v` rounded to f16, then raised one step if
/// still below `v`. The same result (the rounding to f32 cannot skip an f16 value), with
/// hardware conversions.
fn f16_up32(v: f64) -> f16 {
    let h = f16::from_f32(v as f32);
    let h = if h.to_f64() < v { f16::from_bits(h.to_bits() + 1) } else { h };
    if h.to_f64() > 0.0 { h } else { f16::from_bits(1) }
}

/// Replaces the (native-precision) parameters of every slice by two-level table values that
/// still cover each slice's range ([`TableFit::Cover`]) or are nearest to them
/// ([`TableFit::LeastSquares`]), and returns the tables. `spec` has a quantized dtype and
/// `slices` is non-empty.
pub(crate) fn quantize_tables<F: Float>(slices: &mut [SliceParams<F>], spec: &UniformSpec) -> Result<QuantizedTables> {
    let tabler = Tabler::new(spec)?;
    let n = slices.len();
    let mut parts = TableParts::with_capacity(n, tabler.group);
    for chunk in slices.chunks_mut(tabler.group) {
        tabler.group_codes(chunk, &mut parts);
    }
    parts.finish(&tabler)
}

/// The two-level table codes of one super-group at a time ([`quantize_tables`]' rule, shared
/// with the fused least-squares pass so that both give the same tables).
pub(crate) struct Tabler {
    bits: u8,
    pub(crate) group: usize,
    top: f64,
    levels: f64,
    grid: bool,
    nearest: bool,
}

/// Table codes and super-scales collected super-group by super-group.
pub(crate) struct TableParts {
    scale_codes: Vec<u8>,
    offset_codes: Vec<u8>,
    super_scales: Vec<f16>,
    super_offsets: Vec<f16>,
}

impl TableParts {
    pub(crate) fn with_capacity(slices: usize, group: usize) -> Self {
        let groups = slices.div_ceil(group);
        Self {
            scale_codes: Vec::with_capacity(slices),
            offset_codes: Vec::with_capacity(slices),
            super_scales: Vec::with_capacity(groups),
            super_offsets: Vec::with_capacity(groups),
        }
    }

    /// Appends another part's super-groups (which follow this part's).
    pub(crate) fn append(&mut self, mut other: TableParts) {
        self.scale_codes.append(&mut other.scale_codes);
        self.offset_codes.append(&mut other.offset_codes);
        self.super_scales.append(&mut other.super_scales);
        self.super_offsets.append(&mut other.super_offsets);
    }

    pub(crate) fn finish(self, t: &Tabler) -> Result<QuantizedTables> {
        let scale_codes = PackedCodes::pack(&self.scale_codes, t.bits)?;
        let (super_offsets, offset_codes) =
            if t.grid { (self.super_offsets, Some(PackedCodes::pack(&self.offset_codes, t.bits)?)) } else { (Vec::new(), None) };
        // Built here: one super-scale (and super-offset) per super-group, one code per slice,
        // no zero scale code; `from_parts` would check exactly that.
        debug_assert!(self.scale_codes.iter().all(|&a| a > 0) && self.super_scales.len() == self.scale_codes.len().div_ceil(t.group));
        Ok(QuantizedTables { super_group: t.group, super_scales: self.super_scales, super_offsets, scale_codes, offset_codes })
    }
}

impl Tabler {
    pub(crate) fn new(spec: &UniformSpec) -> Result<Self> {
        let ParamDtype::Quantized { bits, super_group } = spec.param_dtype() else {
            return Err(QuantError::InvalidTables { reason: "the spec's parameters are not quantized" });
        };
        Ok(Self {
            bits,
            group: super_group as usize,
            top: f64::from((1u16 << bits) - 1),
            levels: f64::from(spec.max_code()) - f64::from(spec.scheme().signed_offset(spec.bits())),
            grid: spec.scheme() == Scheme::AsymmetricGrid,
            // Least-squares fits are rounded to the nearest codes; otherwise the grids keep
            // covering their slices' ranges.
            nearest: matches!(spec.table_fit(), TableFit::LeastSquares { .. }),
        })
    }

    /// [`group_codes`](Self::group_codes) for least-squares fits: every code rounded to the
    /// nearest (half up), with the codes written in place.
    #[inline(always)]
    fn nearest_codes<F: Float>(&self, chunk: &mut [SliceParams<F>], out: &mut TableParts) {
        let top = self.top;
        let nearest_code = |v: f64| (v.clamp(0.0, top) + 0.5) as u32;
        let n = chunk.len();
        let at = out.scale_codes.len();
        out.scale_codes.resize(at + n, 0);
        if self.grid {
            out.offset_codes.resize(at + n, 0);
            let (mut mmin, mut mmax) = (f64::INFINITY, f64::NEG_INFINITY);
            for p in chunk.iter() {
                let l = p.offset.as_f64();
                mmin = if l < mmin { l } else { mmin };
                mmax = if l > mmax { l } else { mmax };
            }
            // Through f32 (hardware conversions): rounding up stays exact, and the nearest
            // rounding of a positive super-offset is this mode's own rule.
            let dm16 = if mmin < 0.0 { -f16_up32(-mmin / top) } else { f16::from_f32((mmax / top) as f32) };
            let dm = dm16.to_f64();
            let dm = if dm.is_finite() { dm } else { 0.0 };
            let inv_dm = if dm == 0.0 { 0.0 } else { 1.0 / dm };
            let codes = &mut out.offset_codes[at..at + n];
            for (p, c) in chunk.iter_mut().zip(codes.iter_mut()) {
                let exact = p.offset.as_f64() * inv_dm;
                let b = nearest_code(exact);
                let m = dm * f64::from(b);
                if (exact - f64::from(b)).abs() > 0.5 {
                    // The code was clamped (offsets of both signs in one super-group): the
                    // offset falls to 0, at or below the slice's own, so the step grows until
                    // the grid still reaches the slice's maximum, as the cover fit does.
                    let (l, s) = (p.offset.as_f64(), p.scale.as_f64());
                    let need = (l + s * self.levels - m) / self.levels;
                    if need > s {
                        p.scale = F::cast(need);
                    }
                }
                *c = b as u8;
                p.offset = F::cast(m);
            }
            // `dm` is an f16 value (or 0), so this is exact.
            out.super_offsets.push(f16::from_f32(dm as f32));
        }
        let mut smax = 0.0f64;
        for p in chunk.iter() {
            let v = p.scale.as_f64();
            smax = if v > smax { v } else { smax };
        }
        let d16 = f16_up32(smax / top);
        let d = d16.to_f64();
        let inv_d = 1.0 / d;
        let codes = &mut out.scale_codes[at..at + n];
        for (p, c) in chunk.iter_mut().zip(codes.iter_mut()) {
            let a = nearest_code(p.scale.as_f64() * inv_d).max(1);
            *c = a as u8;
            p.scale = F::cast(d * f64::from(a));
        }
        out.super_scales.push(d16);
    }

    /// Replaces the parameters of one super-group's slices (at most `group`) by their table
    /// values and appends the codes and super-scales to `out`.
    #[inline(always)]
    pub(crate) fn group_codes<F: Float>(&self, chunk: &mut [SliceParams<F>], out: &mut TableParts) {
        if self.nearest {
            self.nearest_codes(chunk, out);
            return;
        }
        let top = self.top;
        let mut need = [0.0f64; 32];
        let mut spill = Vec::new();
        let need: &mut [f64] = if chunk.len() <= need.len() {
            &mut need[..chunk.len()]
        } else {
            spill.resize(chunk.len(), 0.0);
            &mut spill
        };
        for (v, p) in need.iter_mut().zip(chunk.iter()) {
            *v = p.scale.as_f64();
        }
        // Offsets first, rounded down so each grid still starts at or below its slice's
        // minimum.
        if self.grid {
            let (mmin, mmax) =
                chunk.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.offset.as_f64()), b.max(p.offset.as_f64())));
            let dm = if mmin < 0.0 { -f16_up(-mmin / top).to_f64() } else { f16::from_f64(mmax / top).to_f64() };
            let dm = if dm.is_finite() { dm } else { 0.0 };
            for (j, p) in chunk.iter_mut().enumerate() {
                let l = p.offset.as_f64();
                let b = if dm == 0.0 {
                    0.0
                } else if dm < 0.0 {
                    (l / dm).ceil().clamp(0.0, top)
                } else {
                    (l / dm).floor().clamp(0.0, top)
                };
                let m = dm * b;
                // The step that reaches the slice's maximum from the lowered offset.
                let hi = l + need[j] * self.levels;
                need[j] = ((hi - m) / self.levels).max(need[j]);
                out.offset_codes.push(b as u8);
                p.offset = F::cast(m);
            }
            out.super_offsets.push(f16::from_f64(dm));
        }
        // Steps rounded up, so each grid still reaches its slice's maximum.
        let smax = need.iter().fold(0.0f64, |a, &v| a.max(v));
        let d16 = f16_up(smax / top);
        let d = d16.to_f64();
        for (p, &s) in chunk.iter_mut().zip(need.iter()) {
            let mut a = (s / d).ceil().clamp(1.0, top);
            if d * a < s && a < top {
                a += 1.0;
            }
            out.scale_codes.push(a as u8);
            p.scale = F::cast(d * a);
        }
        out.super_scales.push(d16);
    }
}

/// The squared error of a slice quantized with step `s` and offset `m` (signed codes clamped
/// to `lo..=hi`, nearest rounding with ties to even, reciprocal multiply: what the kernels
/// compute in the default modes).
#[inline]
fn slice_sse<F: Float>(xs: &[F], s: F, m: F, lo: F, hi: F) -> F {
    let inv = F::one() / s;
    let err = |x: F| {
        let y = (x - m) * inv;
        let y = if y > lo { y } else { lo };
        let y = if y < hi { y } else { hi };
        let e = x - (y.round_ties_even_bounded() * s + m);
        e * e
    };
    // Eight independent partial sums, so the loop vectorises (a single running sum is one
    // long dependency chain); summed in a fixed order, so the result is deterministic.
    let mut acc = [F::zero(); 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += err(x);
        }
    }
    let mut sse = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for &x in tail {
        sse += err(x);
    }
    sse
}

/// Refines the table codes on the data, with the super-scales fixed: for each slice, the
/// step code in `a−2 ..= a+1` and (grid scheme) the offset code in `b−1 ..= b+1` around the
/// covering choice `(a, b)`, least squared error wins, ties keep the covering choice (so no
/// slice's error grows). `slice(i)` gives slice `i`'s elements and, for importance-weighted
/// fits, their weights (the error is then `Σ h (x − x̂)²`).
pub(crate) fn refine_tables<'a, F: Float + 'a>(
    params: &mut QuantParams<F>,
    slice: impl Fn(usize) -> (&'a [F], Option<&'a [F]>) + Sync,
) -> Result<()> {
    let Some(tables) = params.tables.take() else { return Ok(()) };
    let spec = params.spec;
    let top = (1u16 << tables.bits()) - 1;
    let z = spec.scheme().signed_offset(spec.bits());
    let (lo, hi) = (F::from_int(-z), F::from_int(i32::from(spec.max_code()) - z));
    let a_codes = tables.scale_codes.unpack();
    let b_codes = tables.offset_codes.as_ref().map(PackedCodes::unpack);
    let group = tables.super_group;
    let n = a_codes.len();
    let window = |c: u16, below: u16, above: u16, min: u16| c.saturating_sub(below).max(min)..=(c + above).min(top);
    // Work items of whole super-groups, about 4096 slices each.
    let per_item = group * 4096usize.div_ceil(group);
    let items: Vec<usize> = (0..n.div_ceil(per_item)).collect();
    let chosen = par::map(items, |item| {
        let range = item * per_item..((item + 1) * per_item).min(n);
        range
            .map(|i| {
                let g = i / group;
                let d = tables.super_scales[g].to_f64();
                let dm = tables.super_offsets.get(g).map_or(0.0, |v| v.to_f64());
                let (xs, hs) = slice(i);
                let a0 = u16::from(a_codes[i]);
                let b0 = b_codes.as_ref().map_or(0, |b| u16::from(b[i]));
                let eval = |a: u16, b: u16| {
                    let (s, m) = (F::cast(d * f64::from(a)), F::cast(dm * f64::from(b)));
                    match hs {
                        Some(hs) => crate::weighted::weighted_sse(xs, hs, &crate::weighted::Signed::multiply(s, m, lo, hi)),
                        None => slice_sse(xs, s, m, lo, hi).as_f64(),
                    }
                };
                let mut best = (eval(a0, b0), a0, b0);
                let b_window = if b_codes.is_some() { window(b0, 1, 1, 0) } else { 0..=0 };
                for b in b_window {
                    for a in window(a0, 2, 1, 1) {
                        if (a, b) != (a0, b0) {
                            let e = eval(a, b);
                            if e < best.0 {
                                best = (e, a, b);
                            }
                        }
                    }
                }
                (best.1 as u8, best.2 as u8)
            })
            .collect::<Vec<_>>()
    });
    let (mut a_new, mut b_new) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (a, b) in chosen.into_iter().flatten() {
        a_new.push(a);
        b_new.push(b);
    }
    let bits = tables.bits();
    let offsets = match b_codes {
        Some(_) => Some((tables.super_offsets, PackedCodes::pack(&b_new, bits)?)),
        None => None,
    };
    let tables = QuantizedTables::from_parts(group, tables.super_scales, PackedCodes::pack(&a_new, bits)?, offsets)?;
    params.slices = tables.slices(&spec);
    params.tables = Some(tables);
    Ok(())
}
