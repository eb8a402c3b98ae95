//! Pieces the reference models share.

use ndarray::{Array1, Array2, ArrayView1, ArrayViewMut2, Axis, CowArray, Ix2, s};

use quant_hessian::Block;
use quant_hessian::Real;

/// Softmax cross-entropy averaged over rows: returns the loss and turns `logits` into its
/// gradient `(softmax − onehot(label)) / rows`.
pub(crate) fn softmax_cross_entropy<T: Real>(mut logits: ArrayViewMut2<'_, T>, labels: &[usize]) -> T {
    let inv = T::cast(1.0 / labels.len() as f64);
    let mut loss = T::zero();
    for (mut row, &y) in logits.outer_iter_mut().zip(labels) {
        let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        let zy = row[y];
        row.mapv_inplace(|z| (z - m).exp());
        let sum: T = row.sum();
        loss += sum.ln() + m - zy;
        row.mapv_inplace(|e| e / sum * inv);
        row[y] -= inv;
    }
    loss * inv
}

/// Block `b` of `w` as a `rows × cols` matrix (a view when `w` is contiguous, else a copy).
pub(crate) fn matrix<'w, T: Real>(w: ArrayView1<'w, T>, b: &Block, rows: usize, cols: usize) -> CowArray<'w, T, Ix2> {
    let flat = w.slice_move(s![b.range()]);
    match flat.into_shape_with_order((rows, cols)) {
        Ok(v) => v.into(),
        // A strided parameter view: copy this block.
        Err(_) => Array2::from_shape_vec((rows, cols), flat.to_vec())
            .unwrap_or_else(|_| unreachable!("the block holds rows × cols values"))
            .into(),
    }
}

/// Which rows of the data set a batch uses, with their labels.
pub(crate) fn rows_and_labels(batch: quant_hessian::Batch<'_>, labels: &[usize]) -> (Option<Vec<usize>>, Vec<usize>) {
    match batch {
        quant_hessian::Batch::All => (None, labels.to_vec()),
        quant_hessian::Batch::Indices(idx) => (Some(idx.to_vec()), idx.iter().map(|&i| labels[i]).collect()),
    }
}

/// The fraction of rows whose largest score (first on ties) is the label.
pub(crate) fn accuracy_of<F: Real>(logits: ndarray::ArrayView2<'_, F>, labels: &[usize]) -> f64 {
    let hits = logits
        .outer_iter()
        .zip(labels)
        .filter(|&(row, &y)| row.iter().enumerate().fold((0, F::neg_infinity()), |b, (j, &v)| if v > b.1 { (j, v) } else { b }).0 == y)
        .count();
    hits as f64 / labels.len().max(1) as f64
}

/// The first non-finite value, as the engine's typed error.
pub(crate) fn check_finite<'a, F: quant_core::Float>(values: impl IntoIterator<Item = &'a F>) -> quant_hessian::Result<()> {
    match values.into_iter().position(|v| !v.is_finite()) {
        Some(index) => Err(quant_hessian::HessianError::NonFinite { index }),
        None => Ok(()),
    }
}

/// Checks a vector length.
pub(crate) fn check_len(expected: usize, got: usize) -> quant_hessian::Result<()> {
    if expected == got { Ok(()) } else { Err(quant_hessian::HessianError::ShapeMismatch { expected: vec![expected], got: vec![got] }) }
}

/// Layer norm over rows with ε `eps`: `(y, x̂, 1/σ)`.
pub(crate) fn layer_norm<T: Real>(
    x: &Array2<T>,
    gain: ArrayView1<'_, T>,
    bias: ArrayView1<'_, T>,
    eps: f64,
) -> (Array2<T>, Array2<T>, Vec<T>) {
    let d = T::cast(x.ncols() as f64);
    let eps = T::cast(eps);
    let mut xhat = x.clone();
    let mut inv = Vec::with_capacity(x.nrows());
    for mut row in xhat.outer_iter_mut() {
        let mean = row.sum() / d;
        let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / d;
        let r = (var + eps).sqrt().recip();
        row.mapv_inplace(|v| (v - mean) * r);
        inv.push(r);
    }
    let mut y = &xhat * &gain;
    y += &bias;
    (y, xhat, inv)
}

/// Layer-norm backward: `dx`, and accumulates `dgain`, `dbias`.
pub(crate) fn layer_norm_back<T: Real>(
    dy: &Array2<T>,
    xhat: &Array2<T>,
    inv: &[T],
    gain: ArrayView1<'_, T>,
) -> (Array2<T>, Array1<T>, Array1<T>) {
    let d = T::cast(dy.ncols() as f64);
    let dgain = (dy * xhat).sum_axis(Axis(0));
    let dbias = dy.sum_axis(Axis(0));
    let mut dx = dy * &gain;
    for ((mut row, xr), &r) in dx.outer_iter_mut().zip(xhat.outer_iter()).zip(inv) {
        let m1 = row.sum() / d;
        let m2 = row.iter().zip(xr).map(|(&a, &b)| a * b).sum::<T>() / d;
        row.zip_mut_with(&xr, |g, &xh| *g = (*g - m1 - xh * m2) * r);
    }
    (dx, dgain, dbias)
}

/// `a + b` for tangents where `None` is zero.
pub(crate) fn add_tangent<F: Real>(a: Option<Array2<F>>, b: Option<&Array2<F>>) -> Option<Array2<F>> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a += b;
            Some(a)
        }
        (a, None) => a,
        (None, Some(b)) => Some(b.clone()),
    }
}

/// Block indices of one transformer encoder layer: `(weight, bias)` of each linear map and
/// `(gain, bias)` of each norm.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerPairs {
    pub(crate) q: (usize, usize),
    pub(crate) k: (usize, usize),
    pub(crate) v: (usize, usize),
    pub(crate) out: (usize, usize),
    pub(crate) norm1: (usize, usize),
    pub(crate) ffn_in: (usize, usize),
    pub(crate) ffn_out: (usize, usize),
    pub(crate) norm2: (usize, usize),
}

impl LayerPairs {
    /// Every pair, in parameter order.
    pub(crate) fn all(&self) -> [(usize, usize); 8] {
        [self.q, self.k, self.v, self.out, self.norm1, self.ffn_in, self.ffn_out, self.norm2]
    }

    /// Whether block `b` belongs to the layer.
    pub(crate) fn holds(&self, b: usize) -> bool {
        self.all().iter().any(|&(x, y)| x == b || y == b)
    }
}

/// The tangent of a layer norm's normalised rows `x̂ = (x − mean x) / σ` from input tangents
/// `dx`: `x̂̇ = (dx − mean dx − x̂ mean(x̂ ⊙ dx)) / σ`, and per row `σ⁻¹̇ / σ⁻¹ = −mean(x̂ ⊙ dx) / σ`.
/// `dx` may stack several directions by rows (row `i·R + r` uses primal row `r`, `R` the rows
/// of `xhat`).
pub(crate) fn layer_norm_tangent<F: Real>(dx: &Array2<F>, xhat: &Array2<F>, inv: &[F]) -> (Array2<F>, Vec<F>) {
    let n = F::cast(dx.ncols() as f64);
    let mut t = dx.clone();
    let mut rel = Vec::with_capacity(dx.nrows());
    for mut chunk in t.exact_chunks_mut(xhat.raw_dim()) {
        for ((mut row, xr), &r) in chunk.outer_iter_mut().zip(xhat.outer_iter()).zip(inv) {
            let m1 = row.sum() / n;
            let m2 = row.iter().zip(xr).map(|(&a, &b)| a * b).sum::<F>() / n;
            row.zip_mut_with(&xr, |g, &xh| *g = (*g - m1 - xh * m2) * r);
            rel.push(-r * m2);
        }
    }
    (t, rel)
}
