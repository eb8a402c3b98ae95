//! [`TableFit::LeastSquares`]: every slice's step and offset
//! refitted to its data by least squares before the two-level tables are built.
//!
//! One round, for a slice with step `s` and offset `m`: the codes `q = round(clamp((x − m)/s))`
//! as the quantizer computes them, then the `(s, m)` minimising `Σ (x − (s·q + m))²` for those
//! codes, a straight-line fit of `x` on `q`:
//!
//! `s = (Σqx − Σq·Σx/n) / (Σq² − (Σq)²/n)`, `m = (Σx − s·Σq)/n`
//!
//! (symmetric schemes fit through the origin: `s = Σqx / Σq²`, `m = 0`). Neither half of a
//! round raises the slice's squared error, up to rounding: the fit is optimal for the codes,
//! and the clamped codes are the nearest grid points for the new grid (tested). A fit that is
//! not finite and positive, or that leaves the `±32752` range of the tables, keeps the
//! previous round's values. The tables are then built from the fitted values with every code
//! rounded to the nearest ([`crate::tables`]), in the same pass when slices are contiguous
//! runs of equal length ([`fused`]).
//!
//! Slices of equal length are fitted sixteen at a time, one per vector lane, from a
//! column-wise copy of their elements; every lane does exactly the scalar operations, in the
//! same order, of a slice fitted alone, so the results do not depend on how slices are
//! batched, on threads or on the CPU (on x86-64 with AVX-512 the same code is also compiled
//! for those vector units and chosen at run time).

use core::ops::Range;

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::layout::Layout;
use crate::pack::{PackedCodes, packed_len};
use crate::par;
use crate::params::{QuantParams, SliceParams};
use crate::spec::{RangeEstimator, Scheme, TableFit, UniformSpec};
use crate::tables::{TableParts, Tabler};
use crate::uniform::{byte_lengths, code_runs, first_non_finite, write_codes};

/// Slices fitted side by side, one per vector lane.
const LANES: usize = 16;
/// Slices per parallel work item (a multiple of [`LANES`]).
const ITEM: usize = 64 * LANES;

/// What every slice shares: the code range, whether the grid has an offset, the table
/// range and the number of rounds.
#[derive(Clone, Copy)]
struct Grid<F> {
    lo: F,
    hi: F,
    z: i32,
    affine: bool,
    limit: F,
    iterations: u8,
}

impl<F: Float> Grid<F> {
    fn for_spec(spec: &UniformSpec, iterations: u8) -> Self {
        let z = spec.scheme().signed_offset(spec.bits());
        Grid {
            lo: F::from_int(-z),
            hi: F::from_int(i32::from(spec.max_code()) - z),
            z,
            affine: spec.scheme() == Scheme::AsymmetricGrid,
            limit: F::cast(32752.0),
            iterations,
        }
    }
}

/// Fits `W` slices held column-wise (`rows[k][g]` is element `k` of slice `g`) from `start`
/// (or their min-max ranges) into `out`; each lane does exactly what a slice fitted alone
/// does. Says whether every slice's sum is finite (it is not for a non-finite element, or
/// an overflow).
#[inline(always)]
fn fit_lanes<F: Float, const W: usize>(
    rows: &[[F; W]],
    start: Option<&[SliceParams<F>]>,
    grid: Grid<F>,
    out: &mut [SliceParams<F>],
) -> bool {
    let (mut lo, mut hi, mut sx) = (rows[0], rows[0], [F::zero(); W]);
    for row in rows {
        for g in 0..W {
            lo[g] = if row[g] < lo[g] { row[g] } else { lo[g] };
            hi[g] = if row[g] > hi[g] { row[g] } else { hi[g] };
            sx[g] += row[g];
        }
    }
    let (mut s, mut m) = ([F::zero(); W], [F::zero(); W]);
    match start {
        Some(p) => {
            for g in 0..W {
                (s[g], m[g]) = (p[g].scale, p[g].offset);
                out[g] = p[g];
            }
        }
        None => {
            // Min-max starting grids (`SliceParams::for_spec`'s, computed in the lanes): the
            // range clipped to the tables' ±32752; the grid scheme spans it, the symmetric
            // ones reach its larger magnitude.
            let clip = |v: F| {
                if v < -grid.limit {
                    -grid.limit
                } else if v > grid.limit {
                    grid.limit
                } else {
                    v
                }
            };
            for g in 0..W {
                let (a, b) = (clip(lo[g]), clip(hi[g]));
                let step = if grid.affine {
                    (b - a) / (grid.hi - grid.lo)
                } else {
                    let amax = if a.abs() > b.abs() { a.abs() } else { b.abs() };
                    amax / grid.hi
                };
                s[g] = if step >= F::min_positive_value() { step } else { F::min_positive_value() };
                m[g] = if grid.affine { a } else { F::zero() };
                out[g] = SliceParams { scale: s[g], zero_point: grid.z, offset: m[g] };
            }
        }
    }
    let n = F::cast(rows.len() as f64);
    for _ in 0..grid.iterations {
        let mut inv = [F::zero(); W];
        for g in 0..W {
            inv[g] = F::one() / s[g];
        }
        // Two sets of sums (even and odd elements) so that the additions overlap.
        let code = |x: F, g: usize| {
            let y = (x - m[g]) * inv[g];
            let y = if y > grid.lo { y } else { grid.lo };
            let y = if y < grid.hi { y } else { grid.hi };
            y.round_ties_even_bounded()
        };
        let (mut sq0, mut sqq0, mut sqx0) = ([F::zero(); W], [F::zero(); W], [F::zero(); W]);
        let (mut sq1, mut sqq1, mut sqx1) = ([F::zero(); W], [F::zero(); W], [F::zero(); W]);
        let pairs = rows.chunks_exact(2);
        let odd = pairs.remainder();
        for pair in pairs {
            for g in 0..W {
                let (q0, q1) = (code(pair[0][g], g), code(pair[1][g], g));
                sq0[g] += q0;
                sqq0[g] += q0 * q0;
                sqx0[g] += q0 * pair[0][g];
                sq1[g] += q1;
                sqq1[g] += q1 * q1;
                sqx1[g] += q1 * pair[1][g];
            }
        }
        for row in odd {
            for g in 0..W {
                let q = code(row[g], g);
                sq0[g] += q;
                sqq0[g] += q * q;
                sqx0[g] += q * row[g];
            }
        }
        let (mut sq, mut sqq, mut sqx) = ([F::zero(); W], [F::zero(); W], [F::zero(); W]);
        for g in 0..W {
            sq[g] = sq0[g] + sq1[g];
            sqq[g] = sqq0[g] + sqq1[g];
            sqx[g] = sqx0[g] + sqx1[g];
        }
        for g in 0..W {
            let (s1, m1) = if grid.affine {
                let s1 = (sqx[g] - sq[g] * sx[g] / n) / (sqq[g] - sq[g] * sq[g] / n);
                (s1, (sx[g] - s1 * sq[g]) / n)
            } else {
                (sqx[g] / sqq[g], m[g])
            };
            // Written so that NaN fails and keeps the previous values.
            let top = m1 + s1 * (grid.hi - grid.lo);
            let inside = |v: F| v >= -grid.limit && v <= grid.limit;
            if s1 > F::zero() && s1.is_finite() && inside(m1) && inside(top) {
                (s[g], m[g]) = (s1, m1);
            }
        }
    }
    for g in 0..W {
        (out[g].scale, out[g].offset) = (s[g], m[g]);
    }
    sx.iter().all(|v| v.is_finite())
}

/// [`fit_runs`] compiled for the baseline target only (the tests compare the two).
#[inline(always)]
fn fit_runs_portable<F: Float>(
    data: &[F],
    len: usize,
    start: Option<&[SliceParams<F>]>,
    grid: Grid<F>,
    out: &mut [SliceParams<F>],
) -> core::result::Result<(), usize> {
    let mut cols: Vec<[F; LANES]> = vec![[F::zero(); LANES]; len];
    let mut bad = None;
    let mut k = 0;
    // Detected once, outside the loop: the check is an opaque call that would otherwise make
    // the loop reload what it keeps in registers.
    let token = crate::simd::Avx512::new();
    while k < out.len() {
        let w = if out.len() - k >= LANES { LANES } else { 1 };
        let xs = &data[k * len..(k + w) * len];
        let start = start.map(|s| &s[k..]);
        let finite = if w == LANES {
            match (token, F::as_f32_slice(xs), F::as_f32_slice_mut(cols.as_flattened_mut())) {
                (Some(t), Some(src), Some(dst)) => crate::simd::transpose16(t, src, len, dst),
                _ => {
                    for (k, row) in cols.iter_mut().enumerate() {
                        for (g, v) in row.iter_mut().enumerate() {
                            *v = xs[g * len + k];
                        }
                    }
                }
            }
            fit_lanes(&cols, start, grid, &mut out[k..k + w])
        } else {
            let rows: Vec<[F; 1]> = xs.iter().map(|&x| [x]).collect();
            fit_lanes(&rows, start, grid, &mut out[k..k + w])
        };
        if !finite && bad.is_none() {
            bad = Some(k);
        }
        k += w;
    }
    bad.map_or(Ok(()), Err)
}

multiversion! {
    /// Fits the consecutive slices of `len` elements in `data` (one per slot of `out`):
    /// sixteen at a time from a column-wise copy, the rest one by one. `Err(k)` for the first
    /// slice whose sum is not finite (all are fitted).
    fn fit_runs<F: Float>(data: &[F], len: usize, start: Option<&[SliceParams<F>]>, grid: Grid<F>, out: &mut [SliceParams<F>]) -> core::result::Result<(), usize> {
        fit_runs_portable(data, len, start, grid, out)
    }
}

/// [`fit_runs`] over one work item whose first element is element `base` of the tensor:
/// `Err(index)` of the first non-finite element. A slice whose sum overflowed over finite
/// values is no error (its fit keeps its start), so the scan runs from that slice to the end
/// of the item.
fn fit_item<F: Float>(
    xs: &[F],
    len: usize,
    start: Option<&[SliceParams<F>]>,
    grid: Grid<F>,
    out: &mut [SliceParams<F>],
    base: usize,
) -> core::result::Result<(), usize> {
    match fit_runs(xs, len, start, grid, out) {
        Err(k) => match xs[k * len..].iter().position(|x| !x.is_finite()) {
            Some(j) => Err(base + k * len + j),
            None => Ok(()),
        },
        Ok(()) => Ok(()),
    }
}

/// The parameters a work item's slots hold before it fills them.
fn blank<F: Float>() -> SliceParams<F> {
    SliceParams { scale: F::one(), zero_point: 0, offset: F::zero() }
}

/// The fitted (untabled) parameters of every slice of `data` under `layout`: from the
/// spec's range estimates (`start`, one per slice) or, when `start` is `None`, from each
/// slice's min-max range, which is then computed here.
///
/// # Errors
/// [`QuantError::NonFinite`] for the first non-finite element (row-major).
pub(crate) fn least_squares<F: Float>(
    data: &[F],
    layout: &Layout,
    spec: &UniformSpec,
    iterations: u8,
    start: Option<&[SliceParams<F>]>,
) -> Result<Vec<SliceParams<F>>> {
    let grid = Grid::for_spec(spec, iterations);
    let n = layout.num_params();
    match (layout.contiguous_runs(), layout.equal_runs()) {
        (Some(runs), Some(len)) if runs == n && len > 0 => {
            let mut out = vec![blank(); n];
            let items: Vec<(usize, &mut [SliceParams<F>])> = out.chunks_mut(ITEM).enumerate().map(|(i, o)| (i * ITEM, o)).collect();
            let parts = par::map(items, |(first, out)| {
                let xs = &data[first * len..(first + out.len()) * len];
                fit_item(xs, len, start.map(|s| &s[first..]), grid, out, first * len)
            });
            for p in parts {
                p.map_err(|index| QuantError::NonFinite { index })?;
            }
            Ok(out)
        }
        _ => {
            // Strided slices: check the whole tensor first, so the error names the first
            // non-finite element in row-major order.
            first_non_finite(data)?;
            let items: Vec<(usize, Vec<F>)> = layout.gather(data).into_iter().enumerate().collect();
            Ok(par::map(items, |(i, xs)| {
                let start = start.map(|s| s[i]);
                let mut p = [start.unwrap_or_else(blank)];
                if !xs.is_empty() {
                    let rows: Vec<[F; 1]> = xs.iter().map(|&x| [x]).collect();
                    fit_lanes(&rows, start.as_ref().map(core::slice::from_ref), grid, &mut p);
                }
                p[0]
            }))
        }
    }
}

/// [`quantize`](crate::quantize) for [`TableFit::LeastSquares`]
/// with min-max ranges over slices that are contiguous runs of equal length, in one pass per
/// work item: fit, tables and codes while the item is in cache. `None` for other settings
/// (the caller calibrates, then codes). Gives exactly what calibrating with the same spec and
/// then quantizing gives.
///
/// # Errors
/// [`QuantError::NonFinite`] for the first non-finite element.
pub(crate) fn fused<F: Float>(data: &[F], layout: &Layout, spec: &UniformSpec) -> Result<Option<(QuantParams<F>, PackedCodes)>> {
    let TableFit::LeastSquares { iterations } = spec.table_fit() else { return Ok(None) };
    let n = layout.num_params();
    let len = match (layout.contiguous_runs(), layout.equal_runs()) {
        (Some(runs), Some(len)) if runs == n && len > 0 && spec.range() == RangeEstimator::MinMax => len,
        _ => return Ok(None),
    };
    let tabler = Tabler::new(spec)?;
    let grid = Grid::for_spec(spec, iterations);
    // Items of whole super-groups whose codes fill whole bytes.
    let unit = lcm(tabler.group, 8);
    let per_item = (ITEM / unit).max(1) * unit;
    let bits = spec.bits();
    let items: Vec<Range<usize>> = (0..n).step_by(per_item).map(|k| k..(k + per_item).min(n)).collect();
    let elems: Vec<Range<usize>> = items.iter().map(|r| r.start * len..r.end * len).collect();
    let mut bytes = vec![0u8; packed_len(data.len(), bits)];
    let outs = par::split_lengths(&mut bytes, byte_lengths(&elems, bits));
    // Each item writes its slices' parameters into its own part of one buffer.
    let mut slices = vec![blank(); n];
    let params_out = par::split_lengths(&mut slices, items.iter().map(|r| r.len()));
    let work: Vec<_> = items.into_iter().zip(outs.into_iter().zip(params_out)).collect();
    let parts = par::map(work, |(rs, (out, slices))| {
        let xs = &data[rs.start * len..rs.end * len];
        fit_item(xs, len, None, grid, slices, rs.start * len)?;
        let tables = tables_for(&tabler, slices);
        let base = rs.start * len;
        write_codes(bits, xs.len(), out, |codes| code_runs(data, layout, spec, slices, rs, base, codes));
        Ok(tables)
    });
    let mut tables = TableParts::with_capacity(n, tabler.group);
    for p in parts {
        tables.append(p.map_err(|index| QuantError::NonFinite { index })?);
    }
    let params = QuantParams { spec: *spec, slices, tables: Some(tables.finish(&tabler)?) };
    Ok(Some((params, PackedCodes::from_parts_unchecked(bytes, data.len(), bits))))
}

multiversion! {
    /// The tables of whole super-groups of `slices` (their parameters replaced by the table
    /// values).
    fn tables_for<F: Float>(tabler: &Tabler, slices: &mut [SliceParams<F>]) -> TableParts {
        let mut tables = TableParts::with_capacity(slices.len(), tabler.group);
        for chunk in slices.chunks_mut(tabler.group) {
            tabler.group_codes(chunk, &mut tables);
        }
        tables
    }
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Granularity, ParamDtype};
    use crate::{QuantParams, calibrate, quantize};
    use ndarray::{Array2, ArrayD, IxDyn};
    use proptest::prelude::*;

    fn spec(bits: u8, scheme: Scheme, granularity: Granularity, table_bits: u8, super_group: u32, iterations: u8) -> UniformSpec {
        UniformSpec::builder()
            .bits(bits)
            .scheme(scheme)
            .granularity(granularity)
            .param_dtype(ParamDtype::Quantized { bits: table_bits, super_group })
            .table_fit(TableFit::LeastSquares { iterations })
            .check()
            .unwrap_or_else(|e| panic!("valid spec: {e}"))
    }

    /// A super-group whose groups' minimums differ in sign (a LayerNorm weight of
    /// all-MiniLM-L6-v2: most groups near 0.6, a few with one weight at -1.5e-9): the offset
    /// codes of the positive groups clamp at 0, and the step must grow so the grid still
    /// reaches their maximum. At 8 bits this lost the tensor (5.8 dB) before the step was
    /// raised; the cover fit keeps 40 dB and more, and so must least squares now.
    #[test]
    fn clamped_offsets_still_cover_their_groups() {
        let groups = 12;
        let x = Array2::from_shape_fn((1, 32 * groups), |(_, i)| {
            let (g, k) = (i / 32, i % 32);
            if g % 3 == 0 && k == 0 { -1.5e-9f32 } else { 0.6 + 0.006 * ((k * 7 + g * 3) % 32) as f32 }
        });
        for bits in [4u8, 6, 8] {
            let mut sqnr = Vec::new();
            for fit in [TableFit::Cover, TableFit::LeastSquares { iterations: 3 }] {
                let spec = UniformSpec::builder()
                    .bits(bits)
                    .granularity(Granularity::PerGroup { axis: 1, size: 32 })
                    .param_dtype(ParamDtype::Quantized { bits: 6, super_group: 8 })
                    .table_fit(fit)
                    .check()
                    .unwrap_or_else(|e| panic!("valid spec: {e}"));
                let back = quantize(&x, &spec).unwrap_or_else(|e| panic!("{e}")).dequantize();
                let (sig, err) = x
                    .iter()
                    .zip(back.iter())
                    .fold((0.0f64, 0.0f64), |(s, e), (&a, &b)| (s + f64::from(a).powi(2), e + f64::from(a - b).powi(2)));
                sqnr.push(10.0 * (sig / err).log10());
            }
            let floor = 6.02 * f64::from(bits) - 12.0;
            assert!(sqnr[1] > floor && sqnr[1] > sqnr[0] - 6.0, "{bits} bits: cover {:.1} dB, least squares {:.1} dB", sqnr[0], sqnr[1]);
        }
    }

    /// A slice's squared error with continuous parameters (the quantizer's codes).
    fn sse(xs: &[f64], p: &SliceParams<f64>, spec: &UniformSpec) -> f64 {
        let z = spec.scheme().signed_offset(spec.bits());
        let (lo, hi) = (f64::from(-z), f64::from(i32::from(spec.max_code()) - z));
        xs.iter()
            .map(|&x| {
                let q = ((x - p.offset) / p.scale).clamp(lo, hi).round_ties_even();
                (x - (q * p.scale + p.offset)).powi(2)
            })
            .sum()
    }

    fn schemes() -> impl Strategy<Value = Scheme> {
        prop_oneof![Just(Scheme::AsymmetricGrid), Just(Scheme::SymmetricNarrow), Just(Scheme::SymmetricFull)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn fused_quantize_equals_calibrate_then_quantize(
            rows in 1usize..9, groups in 1usize..40, len in 1usize..40, bits in 2u8..=8, scheme in schemes(),
            table_bits in 2u8..=8, super_group in 1u32..20, iterations in 1u8..5, seed in any::<u64>(), f64s in any::<bool>(),
        ) {
            let cols = groups * len;
            let x = Array2::from_shape_fn((rows, cols), |(r, c)| {
                let u = crate::rng::unit(seed, (r * cols + c) as u64);
                (u - 0.4) * (1.0 + (c % 7) as f64) * 0.03
            });
            let s = spec(bits, scheme, Granularity::PerGroup { axis: 1, size: len }, table_bits, super_group, iterations);
            if f64s {
                let q = quantize(&x, &s).unwrap();
                let p: QuantParams<f64> = calibrate(&x, &s).unwrap();
                prop_assert_eq!(q.params(), &p);
                let again = p.quantize(&x).unwrap();
                prop_assert_eq!(q.codes(), again.codes());
            } else {
                let x = x.mapv(|v| v as f32);
                let q = quantize(&x, &s).unwrap();
                let p: QuantParams<f32> = calibrate(&x, &s).unwrap();
                prop_assert_eq!(q.params(), &p);
                let again = p.quantize(&x).unwrap();
                prop_assert_eq!(q.codes(), again.codes());
            }
        }

        #[test]
        fn fitting_never_raises_a_slice_error(
            groups in 1usize..40, len in 2usize..64, bits in 2u8..=6, scheme in schemes(), iterations in 1u8..6, seed in any::<u64>(),
        ) {
            let data: Vec<f64> = (0..groups * len).map(|i| {
                let u = crate::rng::unit(seed, i as u64);
                // A heavy tail now and then.
                if i % 11 == 3 { (u - 0.5) * 0.4 } else { (u - 0.45) * 0.04 }
            }).collect();
            let s = spec(bits, scheme, Granularity::PerGroup { axis: 0, size: len }, 8, 4, iterations);
            let layout = Layout::new(&[data.len()], s.granularity()).unwrap();
            // The min-max start, as the fit computes it: zero rounds.
            let zero = Grid::<f64>::for_spec(&s, 0);
            let mut begin = vec![SliceParams { scale: 1.0, zero_point: 0, offset: 0.0 }; groups];
            fit_runs(&data, len, None, zero, &mut begin).unwrap();
            let fitted = least_squares(&data, &layout, &s, iterations, None).unwrap();
            for (g, (b, f)) in begin.iter().zip(&fitted).enumerate() {
                let xs = &data[g * len..(g + 1) * len];
                let (e0, e1) = (sse(xs, b, &s), sse(xs, f, &s));
                // Up to rounding: each reconstruction may be off by a few ulps of the values.
                let ulps = xs.iter().map(|x| (8.0 * f64::EPSILON * x.abs()).powi(2)).sum::<f64>();
                prop_assert!(e1 <= e0 * (1.0 + 1e-9) + ulps, "slice {}: {} rounds raised the error {} -> {}", g, iterations, e0, e1);
            }
        }

        #[test]
        fn lanes_strides_and_vector_units_agree(groups in 1usize..50, len in 1usize..40, scheme in schemes(), iterations in 1u8..4, seed in any::<u64>()) {
            let data: Vec<f32> = (0..groups * len).map(|i| ((crate::rng::unit(seed, i as u64) - 0.5) * 0.1) as f32).collect();
            let s = spec(4, scheme, Granularity::PerGroup { axis: 0, size: len }, 6, 8, iterations);
            let layout = Layout::new(&[data.len()], s.granularity()).unwrap();
            // Contiguous runs: sixteen slices to the vector, the rest one by one (and AVX-512
            // where the CPU has it).
            let fused = least_squares(&data, &layout, &s, iterations, None).unwrap();
            // The same slices as columns of a matrix: gathered, one by one.
            let t = ArrayD::from_shape_fn(IxDyn(&[len, groups]), |ix| data[ix[1] * len + ix[0]]);
            let t = t.as_standard_layout().to_owned();
            let sc = s.with_granularity(Granularity::PerChannel { axis: 1 }).unwrap();
            let strided = Layout::new(t.shape(), sc.granularity()).unwrap();
            let one = least_squares(t.as_slice().unwrap(), &strided, &sc, iterations, None).unwrap();
            let bits = |p: &[SliceParams<f32>]| p.iter().map(|p| (p.scale.to_bits(), p.offset.to_bits(), p.zero_point)).collect::<Vec<_>>();
            prop_assert_eq!(bits(&fused), bits(&one));
            // The portable compilation alone.
            let grid = Grid::<f32>::for_spec(&s, iterations);
            let mut plain = vec![SliceParams { scale: 1.0, zero_point: 0, offset: 0.0 }; groups];
            fit_runs_portable(&data, len, None, grid, &mut plain).unwrap();
            prop_assert_eq!(bits(&fused), bits(&plain));
        }
    }

    #[test]
    fn fitting_lowers_the_error_of_gaussian_groups() {
        // 4-bit groups of 32 of a Gaussian (Box-Muller on the crate's seeded uniforms): three
        // rounds take the min-max grids' error down by about 13% (0.6 dB); require 5%.
        let n = 32 * 512;
        let data: Vec<f64> = (0..n)
            .map(|i| {
                let (u, v) = (crate::rng::unit(7, 2 * i as u64), crate::rng::unit(7, 2 * i as u64 + 1));
                0.02 * (-2.0 * (1.0 - u).ln()).sqrt() * (core::f64::consts::TAU * v).cos()
            })
            .collect();
        let s = spec(4, Scheme::AsymmetricGrid, Granularity::PerGroup { axis: 0, size: 32 }, 8, 4, 3);
        let layout = Layout::new(&[n], s.granularity()).unwrap();
        let mut begin = vec![SliceParams { scale: 1.0, zero_point: 0, offset: 0.0 }; n / 32];
        fit_runs(&data, 32, None, Grid::<f64>::for_spec(&s, 0), &mut begin).unwrap();
        let fitted = least_squares(&data, &layout, &s, 3, None).unwrap();
        let total = |p: &[SliceParams<f64>]| p.iter().enumerate().map(|(g, p)| sse(&data[g * 32..(g + 1) * 32], p, &s)).sum::<f64>();
        let (e0, e1) = (total(&begin), total(&fitted));
        assert!(e1 < 0.95 * e0, "min-max {e0}, fitted {e1}");
    }

    #[test]
    fn settings_and_bad_input_give_typed_errors() {
        let bad = UniformSpec::builder()
            .bits(4)
            .table_fit(TableFit::LeastSquares { iterations: 0 })
            .param_dtype(ParamDtype::Quantized { bits: 6, super_group: 8 })
            .check();
        assert!(matches!(bad, Err(QuantError::InvalidTables { .. })));
        let native = UniformSpec::builder().bits(4).table_fit(TableFit::LeastSquares { iterations: 3 }).check();
        assert!(matches!(native, Err(QuantError::InvalidTables { .. })));
        let s = spec(4, Scheme::AsymmetricGrid, Granularity::PerGroup { axis: 1, size: 8 }, 6, 8, 3);
        for at in [0usize, 37, 255] {
            let mut x = Array2::from_shape_fn((4, 64), |(r, c)| (r * 64 + c) as f32 * 1e-3);
            x[(at / 64, at % 64)] = f32::NAN;
            assert_eq!(quantize(&x, &s).err(), Some(QuantError::NonFinite { index: at }));
            // Strided slices (groups along the first axis) go the gathering way.
            let sg = s.with_granularity(Granularity::PerGroup { axis: 0, size: 2 }).unwrap();
            assert_eq!(quantize(&x, &sg).err(), Some(QuantError::NonFinite { index: at }));
        }
        // Huge but finite values: sums overflow, no error, finite tables.
        let x = Array2::from_shape_fn((2, 32), |(r, c)| if (r + c) % 2 == 0 { 3.0e38f32 } else { -3.0e38 });
        let q = quantize(&x, &s).unwrap();
        assert!(q.dequantize().iter().all(|v| v.is_finite()));
    }
}
