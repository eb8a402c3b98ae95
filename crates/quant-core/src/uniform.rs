//! Uniform quantization drivers: calibrate, quantize, fake-quantize.

use std::borrow::Cow;
use std::ops::Range;

use ndarray::{Array, ArrayBase, Data, Dimension};

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::kernel::{self, Kernel};
use crate::layout::Layout;
use crate::pack::{PackedCodes, pack_into, packed_len};
use crate::par::{self, BATCH};
use crate::params::{QuantParams, SliceParams};
use crate::range::{estimate, min_max};
use crate::simd;
use crate::spec::{ParamDtype, RangeEstimator, Rounding, ScaleMode, TableFit, UniformSpec};
use crate::table_fit;
use crate::tables::refine_tables;
use crate::tensor::{FakeQuantized, QuantizedTensor};

/// The elements of `x` in row-major order, borrowed when `x` is already contiguous.
pub(crate) fn row_major<'a, F: Float, S: Data<Elem = F>, D: Dimension>(x: &'a ArrayBase<S, D>) -> Cow<'a, [F]> {
    match x.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

/// The layout of `x` under `spec`, refusing empty tensors.
pub(crate) fn layout_of(shape: &[usize], spec: &UniformSpec) -> Result<Layout> {
    layout_of_granularity(shape, spec.granularity())
}

/// The layout of a tensor of `shape` under a granularity, refusing empty tensors.
pub(crate) fn layout_of_granularity(shape: &[usize], granularity: crate::spec::Granularity) -> Result<Layout> {
    let layout = Layout::new(shape, granularity)?;
    if layout.len() == 0 {
        return Err(QuantError::Empty);
    }
    Ok(layout)
}

/// Element ranges of `BATCH` elements covering `0..len`.
fn element_batches(len: usize) -> Vec<Range<usize>> {
    (0..len.div_ceil(BATCH)).map(|k| k * BATCH..((k + 1) * BATCH).min(len)).collect()
}

/// Index of the first non-finite element, if any (checked in parallel batches).
pub(crate) fn first_non_finite<F: Float>(data: &[F]) -> Result<(F, F)> {
    let parts = par::map(element_batches(data.len()), |r| min_max(&data[r.clone()]).map_err(|j| r.start + j));
    let mut acc: Option<(F, F)> = None;
    for p in parts {
        let (l, h) = p.map_err(|index| QuantError::NonFinite { index })?;
        acc = Some(match acc {
            None => (l, h),
            Some((a, b)) => (if l < a { l } else { a }, if h > b { h } else { b }),
        });
    }
    acc.ok_or(QuantError::Empty)
}

/// Estimates every slice's range `[lo, hi]` as `spec` says.
pub(crate) fn slice_ranges<F: Float>(data: &[F], layout: &Layout, spec: &UniformSpec) -> Result<Vec<(F, F)>> {
    match layout.contiguous_runs() {
        Some(1) => {
            let range = if spec.range() == RangeEstimator::MinMax {
                first_non_finite(data)?
            } else {
                estimate(data, spec, &mut Vec::new()).map_err(|index| QuantError::NonFinite { index })?
            };
            Ok(vec![range])
        }
        Some(runs) => {
            let parts = par::map(run_batches(layout, runs), |(rs, _)| {
                let mut scratch = Vec::new();
                rs.map(|k| {
                    let r = layout.run(k);
                    estimate(&data[r.clone()], spec, &mut scratch).map_err(|j| r.start + j)
                })
                .collect::<core::result::Result<Vec<_>, usize>>()
            });
            collect_slices(parts)
        }
        None => {
            // Slices are strided: check once, then gather each slice's elements.
            first_non_finite(data)?;
            let mut gathered: Vec<Vec<F>> = vec![Vec::new(); layout.num_params()];
            layout.for_each_segment(0..data.len(), |p, r| gathered[p].extend_from_slice(&data[r]));
            let parts = par::map(gathered, |xs| estimate(&xs, spec, &mut Vec::new()));
            parts.into_iter().map(|p| p.map_err(|index| QuantError::NonFinite { index })).collect()
        }
    }
}

/// Estimates every slice's parameters; two-level tables are built and then refined on the
/// data ([`TableFit::Cover`]), or built from least-squares fits ([`TableFit::LeastSquares`]).
fn calibrate_params<F: Float>(data: &[F], layout: &Layout, spec: &UniformSpec) -> Result<QuantParams<F>> {
    if let TableFit::LeastSquares { iterations } = spec.table_fit() {
        // Min-max ranges are taken inside the fit, from the same copy of the data.
        let start: Option<Vec<SliceParams<F>>> = match spec.range() {
            RangeEstimator::MinMax => None,
            _ => Some(slice_ranges(data, layout, spec)?.into_iter().map(|(lo, hi)| SliceParams::for_spec(lo, hi, spec)).collect()),
        };
        let slices = table_fit::least_squares(data, layout, spec, iterations, start.as_deref())?;
        return QuantParams::from_calibrated(spec, slices);
    }
    let ranges = slice_ranges(data, layout, spec)?;
    let slices = ranges.into_iter().map(|(lo, hi)| SliceParams::for_spec(lo, hi, spec)).collect();
    let mut params = QuantParams::from_calibrated(spec, slices)?;
    if params.tables.is_some() {
        match layout.contiguous_runs() {
            Some(runs) if runs == params.slices.len() => refine_tables(&mut params, |i| (&data[layout.run(i)], None))?,
            _ => {
                let gathered = layout.gather(data);
                refine_tables(&mut params, |i| (&gathered[i], None))?;
            }
        }
    }
    Ok(params)
}

fn collect_slices<T>(parts: Vec<core::result::Result<Vec<T>, usize>>) -> Result<Vec<T>> {
    let mut slices = Vec::new();
    for p in parts {
        slices.extend(p.map_err(|index| QuantError::NonFinite { index })?);
    }
    Ok(slices)
}

/// Groups consecutive runs into work items of at least `BATCH` elements that end on a
/// multiple of 8 elements (so each item owns whole bytes of the packed codes).
fn run_batches(layout: &Layout, runs: usize) -> Vec<(Range<usize>, Range<usize>)> {
    match layout.equal_runs() {
        Some(len) if len > 0 => equal_run_batches(len, runs),
        _ => run_batches_by_walking(layout, runs),
    }
}

/// [`run_batches`] for `runs` runs of `len` elements each, found by arithmetic: each item
/// ends at the first run boundary at least `BATCH` elements on that is a multiple of 8.
fn equal_run_batches(len: usize, runs: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let mut out = Vec::new();
    let mut r0 = 0;
    while r0 < runs {
        let mut k = r0 + BATCH.div_ceil(len) - 1;
        // (k + 1)·len is a multiple of 8 within 8 steps.
        while k < runs && !((k + 1) * len).is_multiple_of(8) {
            k += 1;
        }
        if k >= runs {
            out.push((r0..runs, r0 * len..runs * len));
            break;
        }
        out.push((r0..k + 1, r0 * len..(k + 1) * len));
        r0 = k + 1;
    }
    out
}

/// [`run_batches`] by visiting every run.
fn run_batches_by_walking(layout: &Layout, runs: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let mut out = Vec::new();
    let (mut r0, mut e0) = (0, 0);
    for (k, run) in layout.runs_from(0).take(runs).enumerate() {
        let e = run.end;
        if e - e0 >= BATCH && e.is_multiple_of(8) {
            out.push((r0..k + 1, e0..e));
            (r0, e0) = (k + 1, e);
        }
    }
    if r0 < runs {
        out.push((r0..runs, e0..layout.len()));
    }
    out
}

/// Byte lengths of the packed codes owned by each element range.
pub(crate) fn byte_lengths(ranges: &[Range<usize>], bits: u8) -> impl Iterator<Item = usize> + '_ {
    ranges.iter().map(move |r| packed_len(r.end, bits) - packed_len(r.start, bits))
}

/// Runs `fill` on a buffer of `len` one-byte codes and packs them into `out`. 8-bit codes are
/// their own packing, so they are written straight into `out`.
pub(crate) fn write_codes<T>(bits: u8, len: usize, out: &mut [u8], fill: impl FnOnce(&mut [u8]) -> T) -> T {
    if bits == 8 {
        return fill(out);
    }
    let mut buf = vec![0u8; len];
    let result = fill(&mut buf);
    if bits == 4
        && let Some(t) = simd::Avx512::new()
    {
        simd::pack4(t, &buf, out)
    } else {
        pack_into(&buf, bits, out)
    }
    result
}

/// Quantizes with known parameters: codes per element batch, packed in place.
fn apply_codes<F: Float>(data: &[F], layout: &Layout, params: &QuantParams<F>) -> PackedCodes {
    let spec = params.spec();
    let bits = spec.bits();
    let kernels: Vec<Kernel<F>> = params.slices().iter().map(|p| Kernel::new(p, spec.max_code(), spec.scale_mode())).collect();
    let batches = element_batches(data.len());
    let mut bytes = vec![0u8; packed_len(data.len(), bits)];
    let outs = par::split_lengths(&mut bytes, byte_lengths(&batches, bits));
    par::map(batches.into_iter().zip(outs).collect(), |(r, out)| {
        let start = r.start;
        write_codes(bits, r.len(), out, |codes| {
            layout.for_each_segment(r, |p, seg| {
                let local = seg.start - start..seg.end - start;
                kernel::quantize_run(&kernels[p], spec.rounding(), seg.start, &data[seg], &mut codes[local]);
            });
        });
    });
    PackedCodes::from_parts_unchecked(bytes, data.len(), bits)
}

/// Quantizes with known parameters when every slice is one contiguous run: each work item's
/// runs are coded with their own kernel, with no per-segment layout arithmetic.
fn apply_codes_runs<F: Float>(data: &[F], layout: &Layout, params: &QuantParams<F>, runs: usize) -> PackedCodes {
    let spec = params.spec();
    let bits = spec.bits();
    let batches = run_batches(layout, runs);
    let elems: Vec<Range<usize>> = batches.iter().map(|(_, e)| e.clone()).collect();
    let mut bytes = vec![0u8; packed_len(data.len(), bits)];
    let outs = par::split_lengths(&mut bytes, byte_lengths(&elems, bits));
    par::map(batches.into_iter().zip(outs).collect(), |((rs, es), out)| {
        write_codes(bits, es.len(), out, |codes| code_runs(data, layout, spec, &params.slices()[rs.start..rs.end], rs, es.start, codes));
    });
    PackedCodes::from_parts_unchecked(bytes, data.len(), bits)
}

multiversion! {
    /// The codes of runs `rs` (the first at element `base` of `codes`) with the parameters of
    /// run `k` at `slices[k − rs.start]`.
    pub(crate) fn code_runs<F: Float>(data: &[F], layout: &Layout, spec: &UniformSpec, slices: &[SliceParams<F>], rs: Range<usize>, base: usize, codes: &mut [u8]) {
        for (k, p) in rs.zip(slices) {
            let r = layout.run(k);
            let kern = Kernel::new(p, spec.max_code(), spec.scale_mode());
            kernel::quantize_run(&kern, spec.rounding(), r.start, &data[r.clone()], &mut codes[r.start - base..r.end - base]);
        }
    }
}

/// One fused pass per work item: estimate each run's range, derive its parameters and
/// quantize it while it is in cache, then pack the item's codes.
fn fused_quantize<F: Float>(data: &[F], layout: &Layout, spec: &UniformSpec, runs: usize) -> Result<(Vec<SliceParams<F>>, PackedCodes)> {
    let bits = spec.bits();
    let batches = run_batches(layout, runs);
    let elems: Vec<Range<usize>> = batches.iter().map(|(_, e)| e.clone()).collect();
    let mut bytes = vec![0u8; packed_len(data.len(), bits)];
    let outs = par::split_lengths(&mut bytes, byte_lengths(&elems, bits));
    // Each item writes its runs' parameters into its own part of one buffer.
    let mut slices = vec![SliceParams { scale: F::one(), zero_point: 0, offset: F::zero() }; runs];
    let params = par::split_lengths(&mut slices, batches.iter().map(|(rs, _)| rs.len()));
    // The AVX-512 pass covers f32 with min-max ranges, half-even rounding and f32 or f16
    // steps; everything else (bf16 steps included) takes the portable loop below.
    let fast = simd::Avx512::new().filter(|_| {
        spec.rounding() == Rounding::HalfEven
            && spec.range() == RangeEstimator::MinMax
            && matches!(spec.param_dtype(), ParamDtype::Native | ParamDtype::F16)
    });
    let items: Vec<_> = batches.into_iter().zip(outs.into_iter().zip(params)).collect();
    let parts = par::map(items, |((rs, es), (out, params))| {
        if let (Some(t), Some(xs)) = (fast, F::as_f32_slice(data)) {
            // A non-finite value sends the item down the portable path, which reports it.
            if fused_item_simd(t, xs, layout, rs.start, es.clone(), spec, out, params) {
                return Ok(());
            }
        }
        let mut scratch = Vec::new();
        // First every run's range (one streaming pass over the item), then the codes while
        // the item is still in cache.
        for (r, p) in layout.runs_from(rs.start).zip(params.iter_mut()) {
            let (lo, hi) = estimate(&data[r.clone()], spec, &mut scratch).map_err(|j| r.start + j)?;
            *p = SliceParams::for_spec(lo, hi, spec);
        }
        write_codes(bits, es.len(), out, |codes| {
            for (r, p) in layout.runs_from(rs.start).zip(params.iter()) {
                let kern = Kernel::new(p, spec.max_code(), spec.scale_mode());
                kernel::quantize_run(&kern, spec.rounding(), r.start, &data[r.clone()], &mut codes[r.start - es.start..r.end - es.start]);
            }
        });
        Ok(())
    });
    for p in parts {
        p.map_err(|index| QuantError::NonFinite { index })?;
    }
    Ok((slices, PackedCodes::from_parts_unchecked(bytes, data.len(), bits)))
}

/// [`fused_quantize`]'s work item with the AVX-512 kernels (f32, min-max ranges, half-even
/// rounding, f32 or f16 steps): the runs from `first` on, covering elements `es`, get the same parameters (in
/// `params`) and codes as on the portable path. `false` when the item holds a non-finite
/// value; the caller then redoes the item on the portable path, which reports it.
#[allow(clippy::too_many_arguments)]
fn fused_item_simd<F: Float>(
    t: simd::Avx512,
    xs: &[f32],
    layout: &Layout,
    first: usize,
    es: Range<usize>,
    spec: &UniformSpec,
    out: &mut [u8],
    params: &mut [SliceParams<F>],
) -> bool {
    let n = params.len();
    let divide = spec.scale_mode() == ScaleMode::Divide;
    let grid = simd::Grid { scheme: spec.scheme(), bits: spec.bits(), divide, f16: spec.param_dtype() == ParamDtype::F16 };
    let mut slots = params.iter_mut();
    let push = |p: SliceParams<f32>| {
        if let Some(slot) = slots.next() {
            *slot = SliceParams { scale: F::cast(p.scale.into()), zero_point: p.zero_point, offset: F::cast(p.offset.into()) };
        }
    };
    match layout.equal_runs() {
        // Runs of an even length start on even elements (items start on multiples of 8), so
        // 4-bit codes can be packed as they are made.
        Some(len) => {
            // The item's elements start where its first run does.
            debug_assert_eq!(es.start, first * len);
            let runs = first..first + n;
            if spec.bits() == 4 && len.is_multiple_of(2) {
                simd::fused_equal(t, xs, runs, len, &grid, simd::Codes::Nibbles, out, push)
            } else {
                write_codes(spec.bits(), es.len(), out, |codes| simd::fused_equal(t, xs, runs, len, &grid, simd::Codes::Bytes, codes, push))
            }
        }
        None => {
            let runs = layout.runs_from(first).take(n);
            write_codes(spec.bits(), es.len(), out, |codes| simd::fused_runs(t, xs, runs, &grid, simd::Codes::Bytes, codes, es.start, push))
        }
    }
}

/// Estimates the parameters of every slice of `x` without quantizing it.
///
/// # Errors
/// [`QuantError::Empty`], [`QuantError::InvalidAxis`], [`QuantError::NonFinite`] (first
/// offending row-major index).
pub fn calibrate<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &UniformSpec) -> Result<QuantParams<F>> {
    let layout = layout_of(x.shape(), spec)?;
    let data = row_major(x);
    calibrate_params(&data, &layout, spec)
}

/// Quantizes `x` as `spec` says: estimates each slice's range, quantizes and bit-packs.
///
/// Works on any-dimensional views of `f32` or `f64`, contiguous or not (non-contiguous input
/// is copied to row-major order first).
///
/// ```
/// use quant_core::{quantize, Scheme, UniformSpec};
/// use ndarray::array;
///
/// let w = array![[0.1f32, -0.4, 0.25], [1.5, -0.75, 0.0]];
/// let spec = UniformSpec::builder().bits(4).scheme(Scheme::SymmetricNarrow).per_channel(0).check()?;
/// let q = quantize(&w, &spec)?;
/// assert_eq!(q.params().len(), 2); // one scale per output row
/// let back = q.dequantize();
/// assert!((back[[1, 0]] - 1.5).abs() < 1e-6);
/// # Ok::<(), quant_core::QuantError>(())
/// ```
///
/// # Errors
/// [`QuantError::Empty`] for a tensor with no elements, [`QuantError::InvalidAxis`] for an
/// axis the tensor lacks, [`QuantError::NonFinite`] for NaN or infinite input (with the first
/// offending row-major index).
pub fn quantize<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &UniformSpec) -> Result<QuantizedTensor<F>> {
    let layout = layout_of(x.shape(), spec)?;
    let data = row_major(x);
    // Two-level tables need every slice's range before any code is computed.
    let fused = !matches!(spec.param_dtype(), ParamDtype::Quantized { .. });
    let (params, codes) = match layout.contiguous_runs() {
        Some(runs) if runs > 1 && fused => {
            let (slices, codes) = fused_quantize(&data, &layout, spec, runs)?;
            (QuantParams { spec: *spec, slices, tables: None }, codes)
        }
        Some(runs) if runs > 1 => match table_fit::fused(&data, &layout, spec)? {
            Some(done) => done,
            None => {
                let params = calibrate_params(&data, &layout, spec)?;
                let codes = apply_codes_runs(&data, &layout, &params, runs);
                (params, codes)
            }
        },
        _ => {
            let params = calibrate_params(&data, &layout, spec)?;
            let codes = apply_codes(&data, &layout, &params);
            (params, codes)
        }
    };
    Ok(QuantizedTensor::from_valid_parts(x.shape().to_vec(), params, codes))
}

/// Fake-quantizes `x` (quantize, then dequantize) and returns the STE mask with it.
///
/// Equal bit for bit to `quantize(x, spec)?.dequantize()`.
///
/// # Errors
/// As [`quantize`].
pub fn fake_quantize<F: Float, S: Data<Elem = F>, D: Dimension>(x: &ArrayBase<S, D>, spec: &UniformSpec) -> Result<FakeQuantized<F, D>> {
    calibrate(x, spec)?.fake_quantize(x)
}

impl<F: Float> QuantParams<F> {
    /// Checks that these parameters fit a tensor of `shape` and returns its layout.
    pub(crate) fn layout_for(&self, shape: &[usize]) -> Result<Layout> {
        let layout = layout_of(shape, &self.spec)?;
        if layout.num_params() != self.slices.len() {
            return Err(QuantError::ParamCountMismatch { expected: layout.num_params(), got: self.slices.len() });
        }
        Ok(layout)
    }

    pub(crate) fn kernels(&self) -> Vec<Kernel<F>> {
        self.slices.iter().map(|p| Kernel::new(p, self.spec.max_code(), self.spec.scale_mode())).collect()
    }

    /// Quantizes `x` with these (fixed) parameters.
    ///
    /// # Errors
    /// [`QuantError::ParamCountMismatch`] when `x` has a different number of slices under the
    /// granularity, [`QuantError::NonFinite`], [`QuantError::Empty`], [`QuantError::InvalidAxis`].
    pub fn quantize<S: Data<Elem = F>, D: Dimension>(&self, x: &ArrayBase<S, D>) -> Result<QuantizedTensor<F>> {
        let layout = self.layout_for(x.shape())?;
        let data = row_major(x);
        first_non_finite(&data)?;
        let codes = apply_codes(&data, &layout, self);
        Ok(QuantizedTensor::from_valid_parts(x.shape().to_vec(), self.clone(), codes))
    }

    /// Fake-quantizes `x` with these parameters; also returns the STE mask.
    ///
    /// # Errors
    /// As [`QuantParams::quantize`].
    pub fn fake_quantize<S: Data<Elem = F>, D: Dimension>(&self, x: &ArrayBase<S, D>) -> Result<FakeQuantized<F, D>> {
        let layout = self.layout_for(x.shape())?;
        let data = row_major(x);
        first_non_finite(&data)?;
        let kernels = self.kernels();
        let rounding = self.spec.rounding();
        let mut values = vec![F::zero(); data.len()];
        let mut mask = vec![false; data.len()];
        let batches = element_batches(data.len());
        let lens: Vec<usize> = batches.iter().map(|r| r.len()).collect();
        let vs = par::split_lengths(&mut values, lens.iter().copied());
        let ms = par::split_lengths(&mut mask, lens.iter().copied());
        par::map(batches.into_iter().zip(vs.into_iter().zip(ms)).collect(), |(r, (v, m))| {
            let start = r.start;
            layout.for_each_segment(r, |p, seg| {
                let local = seg.start - start..seg.end - start;
                kernel::fake_quantize_run(&kernels[p], rounding, seg.start, &data[seg], &mut v[local.clone()], &mut m[local]);
            });
        });
        let dim = x.raw_dim();
        // The shapes agree by construction; the error arm is unreachable but typed.
        let shape_err = || QuantError::ShapeMismatch { expected: x.shape().to_vec(), got: vec![data.len()] };
        Ok(FakeQuantized {
            values: Array::from_shape_vec(dim.clone(), values).map_err(|_| shape_err())?,
            mask: Array::from_shape_vec(dim, mask).map_err(|_| shape_err())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Granularity;

    #[test]
    fn equal_run_batches_match_the_walk() {
        for len in [1, 2, 3, 5, 7, 8, 24, 32, 100, 128, 4095, 4096, 40_000, 70_001] {
            for rows in [1, 2, 3, 17, 300] {
                let n = len * 12;
                let layout = Layout::new(&[rows, n], Granularity::PerGroup { axis: 1, size: len }).unwrap_or_else(|e| panic!("{e}"));
                let runs = rows * 12;
                assert_eq!(layout.equal_runs(), Some(len));
                assert_eq!(equal_run_batches(len, runs), run_batches_by_walking(&layout, runs), "len {len} rows {rows}");
            }
        }
    }
}
