//! Matrix-vector products straight from packed codes (inference without dequantizing; the
//! integer-only layers are in [`crate::integer`]).

use crate::error::{QuantError, Result};
use crate::{Float, Granularity, QuantizedTensor};
use ndarray::{ArrayView1, ArrayViewMut1};

/// `y = Ŵ x` for a quantized `rows × cols` matrix `Ŵ`, without materialising `Ŵ`: the codes
/// are unpacked once, and each run of codes sharing one step `S`, zero point `Z` and offset
/// `m` contributes `S·Σ u_j x_j + (m − S·Z)·Σ x_j`.
///
/// Every granularity is accepted; runs are whole rows (per tensor, per channel on axis 0),
/// row blocks (groups along axis 1, GGML's layout), or single elements otherwise.
///
/// # Errors
/// [`QuantError::MatvecShape`] unless the tensor is 2-D with `x.len() == cols` and
/// `y.len() == rows`.
pub fn matvec<F: Float>(q: &QuantizedTensor<F>, x: ArrayView1<'_, F>, mut y: ArrayViewMut1<'_, F>) -> Result<()> {
    let shape = q.shape();
    if shape.len() != 2 || x.len() != shape[1] || y.len() != shape[0] {
        return Err(QuantError::MatvecShape { matrix: shape.to_vec(), x: x.len(), y: y.len() });
    }
    let (rows, cols) = (shape[0], shape[1]);
    let codes = q.codes().unpack();
    let slices = q.params().slices();
    let x: Vec<F> = x.iter().copied().collect();
    // Which slice holds element (i, j), and how long the run of equal slices starting at
    // column j is within row i.
    let granularity = q.params().spec().granularity();
    let locate = |i: usize, j: usize| -> (usize, usize) {
        match granularity {
            Granularity::PerTensor => (0, cols - j),
            Granularity::PerChannel { axis: 0 } => (i, cols - j),
            Granularity::PerChannel { .. } => (j, 1),
            Granularity::PerGroup { axis: 0, size } => ((i / size) * cols + j, 1),
            Granularity::PerGroup { size, .. } => {
                let per_row = cols.div_ceil(size);
                (i * per_row + j / size, (size - j % size).min(cols - j))
            }
        }
    };
    for (i, yi) in y.iter_mut().enumerate() {
        let row = &codes[i * cols..(i + 1) * cols];
        let mut acc = F::zero();
        let mut j = 0;
        while j < cols {
            let (p, len) = locate(i, j);
            let Some(sp) = slices.get(p) else {
                return Err(QuantError::MatvecShape { matrix: shape.to_vec(), x: x.len(), y: rows });
            };
            let (mut dot, mut sum) = (F::zero(), F::zero());
            for (&u, &xv) in row[j..j + len].iter().zip(&x[j..j + len]) {
                dot += F::from_int(i32::from(u)) * xv;
                sum += xv;
            }
            acc += sp.scale * dot + (sp.offset - sp.scale * F::from_int(sp.zero_point)) * sum;
            j += len;
        }
        *yi = acc;
    }
    Ok(())
}
