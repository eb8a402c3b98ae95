//! GPTQ (Frantar et al., 2022): rounding of a linear layer's weights that compensates each
//! column's error on the columns not yet quantized, weighted by the layer Hessian
//! `H = 2 XᵀX` of its calibration inputs `X`.
//!
//! For `W` (`out × in`) and `H` (`in × in`), columns are quantized left to right (or by
//! descending `H_ii` with [`GptqParams::act_order`]); after column `j` the error
//! `e = (w_j − q_j) / U_jj` is spread over the later columns through the upper Cholesky
//! factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`), which is the optimal update of the remaining weights
//! for the quadratic objective `tr((W − Q) H (W − Q)ᵀ)`. Updates are applied lazily, a block
//! of columns at a time, with one matrix product per block.

use ndarray::{Array2, ArrayView2, Axis, s};
use quant_core::{
    Granularity, MethodKind, PackedCodes, QuantError, QuantParams, QuantizedTables, QuantizedTensor, Result, Rounding, SliceParams,
    UniformSpec,
};
use quant_hessian::Real;

/// GPTQ's settings (a record; checked by [`gptq`]).
///
/// | Name | Default | Purpose | Range |
/// |---|---|---|---|
/// | `damp` | 0.01 | added to the diagonal of `H` as a fraction of its mean diagonal | finite, `≥ 0` |
/// | `block_size` | 128 | columns per lazy batch (rounded to whole groups) | `≥ 1` |
/// | `act_order` | false | columns by descending `H_ii`, groups fitted up front on `W` (static) | |
/// | `importance_fit` | false | groups fitted on the fly by the importance-weighted fit with weights `H_jj` | |
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqParams {
    /// Dampening, as a fraction of the mean diagonal of `H`. With fewer calibration tokens
    /// than inputs `XᵀX` is singular and the dampening is what makes it positive definite;
    /// with `damp = 0` such an `H` is refused ([`QuantError::NotPositiveDefinite`]). Inputs
    /// never active (a zero diagonal) are handled apart, whatever the dampening.
    pub damp: f64,
    /// Columns per lazy batch.
    pub block_size: usize,
    /// Quantize the columns of largest `H_ii` first; every group's parameters are then
    /// fitted on the original weights before any update ("static groups"), so the stored
    /// layout is that of the plain quantizer.
    pub act_order: bool,
    /// Fit each group reached on the fly by the importance-weighted fit
    /// ([`quant_core::fit_slice`] with the group's `H_jj` as weights) instead of the plain
    /// quantizer's fit: the grid is chosen for the inputs that weigh most in the objective.
    /// (Static groups, per tensor and per channel keep the plain quantizer's parameters.)
    pub importance_fit: bool,
}

impl Default for GptqParams {
    fn default() -> Self {
        Self { damp: 0.01, block_size: 128, act_order: false, importance_fit: false }
    }
}

impl GptqParams {
    /// Checks the ranges above.
    ///
    /// # Errors
    /// [`QuantError::InvalidSetting`].
    pub fn check(self) -> Result<Self> {
        if !(self.damp.is_finite() && self.damp >= 0.0) {
            return Err(QuantError::InvalidSetting { name: "damp", value: self.damp });
        }
        if self.block_size == 0 {
            return Err(QuantError::InvalidSetting { name: "block_size", value: 0.0 });
        }
        Ok(self)
    }
}

/// The result of [`gptq`].
#[derive(Debug, Clone, PartialEq)]
pub struct Gptq {
    /// The quantized weights, in the plain quantizer's layout (codes and per-slice parameters).
    pub quantized: QuantizedTensor<f32>,
    /// `tr((W − Q) H (W − Q)ᵀ)` with the `H` given (before dampening).
    pub objective: f64,
}

/// The layer objective `tr((W − Q) H (W − Q)ᵀ)`: the increase of `‖W X − Q X‖²` summed over
/// calibration inputs when `H = XᵀX` (twice that for `H = 2XᵀX`).
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when `Q` is not `W`'s shape or `H` is not `in × in`;
/// [`QuantError::NonFinite`].
pub fn layer_objective(w: ArrayView2<'_, f32>, q: ArrayView2<'_, f32>, h: ArrayView2<'_, f64>) -> Result<f64> {
    if q.dim() != w.dim() {
        return Err(QuantError::ShapeMismatch { expected: w.shape().to_vec(), got: q.shape().to_vec() });
    }
    check_h(w, h)?;
    let d: Array2<f64> = Array2::from_shape_fn(w.dim(), |(i, j)| f64::from(w[[i, j]]) - f64::from(q[[i, j]]));
    let mut dh = Array2::<f64>::zeros(d.dim());
    f64::matmul_into(d.view(), h, false, dh.view_mut());
    Ok((&dh * &d).sum())
}

fn check_h(w: ArrayView2<'_, f32>, h: ArrayView2<'_, f64>) -> Result<()> {
    let n = w.ncols();
    if h.dim() != (n, n) {
        return Err(QuantError::ShapeMismatch { expected: vec![n, n], got: h.shape().to_vec() });
    }
    if let Some(index) = w.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    if let Some(index) = h.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    Ok(())
}

/// Columns per parameter group along the input axis, and whether the granularity is one GPTQ
/// handles: per tensor, per output channel (axis 0) or groups along the input (axis 1).
fn group_columns(spec: &UniformSpec, n: usize) -> Result<(usize, bool)> {
    let unsupported = |setting: String| QuantError::UnsupportedSetting { method: MethodKind::Uniform, setting };
    if spec.rounding() != Rounding::HalfEven {
        return Err(unsupported("stochastic or half-away rounding with GPTQ".into()));
    }
    match spec.granularity() {
        Granularity::PerTensor => Ok((n.max(1), false)),
        Granularity::PerChannel { axis: 0 } => Ok((n.max(1), false)),
        Granularity::PerGroup { axis: 1, size } => Ok((size, true)),
        g => Err(unsupported(format!("granularity {g:?} with GPTQ (tensor, channel:0 or groups along the input)"))),
    }
}

/// The dequantized value of `x` under `p` (half-even rounding, clamped to the code range).
fn round_to_grid(p: &SliceParams<f32>, max_code: i32, x: f64) -> f64 {
    let (s, m, z) = (f64::from(p.scale), f64::from(p.offset), f64::from(p.zero_point));
    let u = ((x - m) / s).round_ties_even() + z;
    let u = u.clamp(0.0, f64::from(max_code));
    s * (u - z) + m
}

/// Two-level tables whose super-scales (and super-offsets) were fixed on the original
/// weights; every slice fitted later is snapped to its nearest table codes.
struct FixedTables {
    tables: QuantizedTables,
    scale_codes: Vec<u8>,
    offset_codes: Vec<u8>,
}

impl FixedTables {
    fn new(tables: QuantizedTables) -> Self {
        let scale_codes = tables.scale_codes().unpack();
        let offset_codes = tables.offset_codes().map_or_else(Vec::new, |c| c.unpack());
        Self { tables, scale_codes, offset_codes }
    }

    /// Replaces slice `i`'s codes by those nearest to `p` and returns the slice's values.
    fn snap(&mut self, i: usize, p: SliceParams<f32>) -> SliceParams<f32> {
        let g = i / self.tables.super_group();
        let top = f64::from((1u16 << self.tables.bits()) - 1);
        let d = self.tables.super_scales()[g].to_f64();
        let a = (f64::from(p.scale) / d).round().clamp(1.0, top);
        self.scale_codes[i] = a as u8;
        let mut offset = 0.0;
        if let Some(dm) = self.tables.super_offsets().get(g).map(|v| v.to_f64()) {
            let b = if dm == 0.0 { 0.0 } else { (f64::from(p.offset) / dm).round().clamp(0.0, top) };
            self.offset_codes[i] = b as u8;
            offset = dm * b;
        }
        // The products the tables' own reader forms (`QuantizedTables::slices`).
        SliceParams { scale: (d * a) as f32, zero_point: p.zero_point, offset: offset as f32 }
    }

    fn finish(self, spec: &UniformSpec) -> Result<QuantParams<f32>> {
        let t = self.tables;
        let bits = t.bits();
        let offsets = match t.offset_codes() {
            Some(_) => Some((t.super_offsets().to_vec(), PackedCodes::pack(&self.offset_codes, bits)?)),
            None => None,
        };
        let tables =
            QuantizedTables::from_parts(t.super_group(), t.super_scales().to_vec(), PackedCodes::pack(&self.scale_codes, bits)?, offsets)?;
        QuantParams::from_tables(spec, tables)
    }
}

/// Quantizes `w` (`out × in`) with `spec` by GPTQ under the layer Hessian `h` (`in × in`,
/// symmetric positive semi-definite, for example `2 XᵀX` of the layer's calibration inputs).
///
/// Inputs whose `H_ii` is 0 (never active) have their weights set to 0 before quantizing.
/// Each group's parameters are fixed when its first column is reached, on the weights as
/// updated so far (with `act_order`, on the original weights), by the plain quantizer's fit
/// for the spec: its range estimator (min-max, percentile, MSE) and table fit
/// ([`quant_core::fit_slice`]). Per tensor and per output channel the parameters are the plain
/// quantizer's on the original weights. Two-level tables ([`quant_core::ParamDtype::Quantized`])
/// take their super-scales from the plain quantizer's tables of the original weights; each
/// group fitted on the fly then takes the nearest table codes under them, so the stored
/// layout is the plain quantizer's.
/// To quantize one matrix several ways (candidate widths, groups), prepare the Hessian once
/// with [`GptqHessian::new`] and call [`GptqHessian::quantize`] for each.
///
/// # Errors
/// [`QuantError::ShapeMismatch`], [`QuantError::NonFinite`], [`QuantError::Empty`];
/// [`QuantError::UnsupportedSetting`] for rounding other than half-even, or a granularity other than per tensor, per output channel
/// or groups along the input; [`QuantError::NotPositiveDefinite`] when `H` is singular even
/// after dampening; [`QuantError::NegativeCurvature`] for a negative `H_jj` with
/// [`GptqParams::importance_fit`]; the settings' errors.
pub fn gptq(w: ArrayView2<'_, f32>, h: ArrayView2<'_, f64>, spec: &UniformSpec, params: &GptqParams) -> Result<Gptq> {
    check_h(w, h)?;
    let quantized = GptqHessian::new(h, params)?.quantize(w, spec)?;
    let deq = quantized.dequantize();
    let deq = deq.view().into_dimensionality::<ndarray::Ix2>().map_err(|_| QuantError::Empty)?;
    let objective = layer_objective(w, deq, h)?;
    Ok(Gptq { quantized, objective })
}

/// A layer Hessian prepared for GPTQ: dead inputs found, dampened, the column order chosen
/// and the upper Cholesky factor of its inverse computed, once for any number of
/// [`quantize`](Self::quantize) calls on matrices with that input.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqHessian {
    params: GptqParams,
    /// Inputs with `H_ii = 0`.
    dead: Vec<usize>,
    /// Processing order of the columns.
    perm: Vec<usize>,
    /// Upper Cholesky factor of the (dampened, permuted) `H⁻¹`.
    u: Array2<f64>,
    /// `H_jj` as given (before dampening), in the original column order.
    diag: Vec<f64>,
}

impl GptqHessian {
    /// Prepares `h` (`in × in`).
    ///
    /// # Errors
    /// [`QuantError::ShapeMismatch`] for a matrix that is not square, [`QuantError::Empty`],
    /// [`QuantError::NonFinite`], [`QuantError::NotPositiveDefinite`], the settings' errors.
    pub fn new(h: ArrayView2<'_, f64>, params: &GptqParams) -> Result<Self> {
        let params = params.check()?;
        let n = h.nrows();
        if h.ncols() != n {
            return Err(QuantError::ShapeMismatch { expected: vec![n, n], got: h.shape().to_vec() });
        }
        if n == 0 {
            return Err(QuantError::Empty);
        }
        if let Some(index) = h.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite { index });
        }
        let mut hm = h.to_owned();
        let diag = hm.diag().to_vec();
        let dead: Vec<usize> = (0..n).filter(|&i| hm[[i, i]] == 0.0).collect();
        for &i in &dead {
            hm[[i, i]] = 1.0;
        }
        let mean_diag = hm.diag().sum() / n as f64;
        for i in 0..n {
            hm[[i, i]] += params.damp * mean_diag;
        }
        let mut perm: Vec<usize> = (0..n).collect();
        if params.act_order {
            perm.sort_by(|&a, &b| hm[[b, b]].total_cmp(&hm[[a, a]]).then(a.cmp(&b)));
            hm = hm.select(Axis(0), &perm).select(Axis(1), &perm);
        }
        let u = upper_cholesky_of_inverse(&hm)?;
        Ok(Self { params, dead, perm, u, diag })
    }

    /// Quantizes `w` (`out × in`, `in` the prepared Hessian's size) with `spec` by GPTQ (see
    /// [`gptq`]).
    ///
    /// # Errors
    /// As [`gptq`].
    pub fn quantize(&self, w: ArrayView2<'_, f32>, spec: &UniformSpec) -> Result<QuantizedTensor<f32>> {
        let (rows, n) = w.dim();
        if rows == 0 || n == 0 {
            return Err(QuantError::Empty);
        }
        if n != self.perm.len() {
            return Err(QuantError::ShapeMismatch { expected: vec![rows, self.perm.len()], got: w.shape().to_vec() });
        }
        if let Some(index) = w.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite { index });
        }
        let params = self.params;
        let (gs, grouped) = group_columns(spec, n)?;
        let groups = n.div_ceil(gs);
        let max_code = i32::from(spec.max_code());
        let (perm, u) = (&self.perm, &self.u);
        let mut wm: Array2<f64> = w.mapv(f64::from);
        for &i in &self.dead {
            wm.column_mut(i).fill(0.0);
        }

        // The slice of element (r, c): per tensor 0, per channel r, per group r·groups + c/gs.
        let slice_of = |r: usize, c: usize| match spec.granularity() {
            Granularity::PerTensor => 0,
            Granularity::PerChannel { .. } => r,
            _ => r * groups + c / gs,
        };
        let n_slices = match spec.granularity() {
            Granularity::PerTensor => 1,
            Granularity::PerChannel { .. } => rows,
            _ => rows * groups,
        };
        let mut slices: Vec<Option<SliceParams<f32>>> = vec![None; n_slices];
        // Per tensor and per channel the parameters see all columns at once, before any update;
        // so do static groups: the plain quantizer's parameters of the (dead-zeroed) weights.
        // Two-level tables fix their super-scales there too; groups fitted later take the
        // nearest codes under them.
        let needs_start = !grouped || params.act_order || matches!(spec.param_dtype(), quant_core::ParamDtype::Quantized { .. });
        let mut tables = None;
        if needs_start {
            let start = quant_core::calibrate(&wm.mapv(|v| v as f32), spec)?;
            if !grouped || params.act_order {
                for (slot, p) in slices.iter_mut().zip(start.slices()) {
                    *slot = Some(*p);
                }
            }
            tables = start.tables().cloned().map(FixedTables::new);
        }

        // Processing order.
        if params.act_order {
            wm = wm.select(Axis(1), perm);
        }

        // Lazy batches hold whole groups when groups are fitted on the fly.
        let block = if grouped && !params.act_order {
            if gs >= params.block_size { gs } else { params.block_size / gs * gs }
        } else {
            params.block_size
        };
        let mut q = Array2::<f64>::zeros((rows, n));
        let mut i1 = 0;
        while i1 < n {
            let i2 = (i1 + block).min(n);
            let count = i2 - i1;
            let mut w1 = wm.slice(s![.., i1..i2]).to_owned();
            let mut err = Array2::<f64>::zeros((rows, count));
            for i in 0..count {
                let col = i1 + i;
                if grouped && !params.act_order && col % gs == 0 {
                    let len = gs.min(n - col);
                    // Every row's group at once, fitted sixteen rows to the vector.
                    let xs: Vec<f32> = w1.slice(s![.., i..i + len]).iter().map(|&v| v as f32).collect();
                    let hs: Option<Vec<f32>> = params.importance_fit.then(|| {
                        // Grouped without act order: column `col` is input `col`. Scaled to a
                        // largest weight of 1 (the fit does not depend on the scale, and f32
                        // sums of large `H_jj` stay finite).
                        let top = self.diag[col..col + len].iter().fold(0.0f64, |a, &v| a.max(v));
                        let top = if top > 0.0 { top } else { 1.0 };
                        self.diag[col..col + len].iter().map(|&v| (v / top) as f32).collect()
                    });
                    let fitted = quant_core::fit_slices(&xs, len, hs.as_deref(), spec)?;
                    for (r, p) in fitted.into_iter().enumerate() {
                        let k = r * groups + col / gs;
                        slices[k] = Some(match tables.as_mut() {
                            Some(t) => t.snap(k, p),
                            None => p,
                        });
                    }
                }
                let d = u[[col, col]];
                let orig = perm[col];
                for r in 0..rows {
                    let p = slices[slice_of(r, orig)].ok_or(QuantError::Empty)?;
                    let x = w1[[r, i]];
                    let v = round_to_grid(&p, max_code, x);
                    q[[r, col]] = v;
                    err[[r, i]] = (x - v) / d;
                }
                let urow = u.slice(s![col, col + 1..i2]);
                for r in 0..rows {
                    let e = err[[r, i]];
                    if e != 0.0 {
                        w1.slice_mut(s![r, i + 1..]).scaled_add(-e, &urow);
                    }
                }
            }
            if i2 < n {
                // The later columns: W[.., i2..] −= E · U[i1..i2, i2..].
                err.mapv_inplace(|e| -e);
                f64::matmul_into(err.view(), u.slice(s![i1..i2, i2..]), true, wm.slice_mut(s![.., i2..]));
            }
            i1 = i2;
        }

        // Back to the original column order.
        let mut out = Array2::<f32>::zeros((rows, n));
        for (col, &orig) in perm.iter().enumerate() {
            out.column_mut(orig).assign(&q.column(col).mapv(|v| v as f32));
        }
        let params = match tables {
            Some(t) => t.finish(spec)?,
            None => QuantParams::from_slices(spec, slices.into_iter().collect::<Option<_>>().ok_or(QuantError::Empty)?)?,
        };
        // The values lie on their slices' grids, so the plain quantizer with these parameters
        // gives back exactly GPTQ's codes.
        params.quantize(&out)
    }
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`), from two factorisations.
fn upper_cholesky_of_inverse(h: &Array2<f64>) -> Result<Array2<f64>> {
    let n = h.nrows();
    use faer::linalg::solvers::DenseSolveCore;
    let not_pd = |what| QuantError::NotPositiveDefinite { what };
    let hf = faer::Mat::<f64>::from_fn(n, n, |i, j| h[[i, j]]);
    let llt = hf.llt(faer::Side::Lower).map_err(|_| not_pd("layer Hessian"))?;
    let inv = llt.inverse();
    let llt2 = inv.llt(faer::Side::Lower).map_err(|_| not_pd("inverse of the layer Hessian"))?;
    let l = llt2.L();
    // faer's kernels may leave the upper vector halves dirty, slowing the legacy-SSE code
    // after them (see quant_core::clear_upper_vector_state).
    quant_core::clear_upper_vector_state();
    // U = Lᵀ.
    Ok(Array2::from_shape_fn((n, n), |(i, j)| if j >= i { l[(j, i)] } else { 0.0 }))
}
