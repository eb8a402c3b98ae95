//! Group layouts over a weight matrix stored `out × in` (PyTorch's `Linear.weight`, `y = W x`):
//! which elements share a range or a table.

use ndarray::{Array1, Array2, ArrayView2};
use quant_core::{Float, Granularity, Method};

use crate::error::{GroupError, Result};
use crate::rows::GroupQuantized;

/// How the rows of a fused QKV projection are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QkvOrder {
    /// All of Q's rows, then K's, then V's, each head's `head_dim` rows consecutive
    /// (PyTorch's `nn.MultiheadAttention.in_proj_weight`, GPT-2's `c_attn`).
    Blocked,
    /// Head by head: head 0's Q, K and V rows, then head 1's, ... (Megatron-LM's fused layout).
    Interleaved,
}

/// Which elements of an `out × in` matrix form a group.
///
/// | layout | groups | ragged |
/// |---|---|---|
/// | [`OutputRows`](Self::OutputRows) | `groups` runs of consecutive rows (Q-BERT: one per head, or finer) | refused: `groups` must divide `out` |
/// | [`InputBlocks`](Self::InputBlocks) | runs of `size` along each row (GGML's blocks) | allowed: the last block of a row is shorter |
/// | [`Tiles`](Self::Tiles) | `rows × cols` tiles, row-major tile order | allowed: edge tiles are smaller |
/// | [`FusedQkv`](Self::FusedQkv) | one group per (projection, head, split): `3 · heads · splits` | refused: `out` must be `3 · heads · head_dim` and `splits` must divide `head_dim` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GroupLayout {
    /// `groups` groups of `out / groups` consecutive rows.
    OutputRows {
        /// Number of groups.
        groups: usize,
    },
    /// Contiguous blocks of `size` elements along each row.
    InputBlocks {
        /// Elements per block.
        size: usize,
    },
    /// 2-D tiles of `rows × cols`.
    Tiles {
        /// Tile height.
        rows: usize,
        /// Tile width.
        cols: usize,
    },
    /// A fused `[Q; K; V]` projection of `3 · heads · head_dim` rows: each head of each of Q,
    /// K and V is its own group, optionally split into `splits` groups of consecutive rows
    /// (Q-BERT's finer groups).
    FusedQkv {
        /// Attention heads.
        heads: usize,
        /// Rows per head.
        head_dim: usize,
        /// Row order.
        order: QkvOrder,
        /// Groups per head (1 = one group per head).
        splits: usize,
    },
}

impl GroupLayout {
    /// The group of every element of an `out × in` matrix (row-major) and the number of groups.
    ///
    /// # Errors
    /// [`GroupError::InvalidLayout`] when the layout does not fit the shape (see the table).
    pub fn group_ids(&self, out: usize, inp: usize) -> Result<(Vec<usize>, usize)> {
        let bad = |reason: &'static str| Err(GroupError::InvalidLayout { layout: *self, shape: (out, inp), reason });
        if out == 0 || inp == 0 {
            return bad("the matrix is empty");
        }
        let by_row = |row_group: &dyn Fn(usize) -> usize, count: usize| {
            let ids = (0..out).flat_map(|r| std::iter::repeat_n(row_group(r), inp)).collect();
            (ids, count)
        };
        Ok(match *self {
            GroupLayout::OutputRows { groups } => {
                if groups == 0 || !out.is_multiple_of(groups) {
                    return bad("the group count must divide the number of rows");
                }
                let per = out / groups;
                by_row(&|r| r / per, groups)
            }
            GroupLayout::InputBlocks { size } => {
                if size == 0 {
                    return bad("the block size must be at least 1");
                }
                let per_row = inp.div_ceil(size);
                ((0..out * inp).map(|e| (e / inp) * per_row + (e % inp) / size).collect(), out * per_row)
            }
            GroupLayout::Tiles { rows, cols } => {
                if rows == 0 || cols == 0 {
                    return bad("tiles must be at least 1 × 1");
                }
                let across = inp.div_ceil(cols);
                ((0..out * inp).map(|e| (e / inp / rows) * across + (e % inp) / cols).collect(), out.div_ceil(rows) * across)
            }
            GroupLayout::FusedQkv { heads, head_dim, order, splits } => {
                if heads == 0 || head_dim == 0 || splits == 0 || head_dim % splits != 0 {
                    return bad("heads and head_dim must be positive and splits must divide head_dim");
                }
                if heads.checked_mul(head_dim).and_then(|v| v.checked_mul(3)) != Some(out) {
                    return bad("a fused QKV matrix has 3 · heads · head_dim rows");
                }
                let per_split = head_dim / splits;
                // Group numbering: projection (Q, K, V), then head, then split, whatever the row order.
                let group_of_row = |r: usize| {
                    let (proj, head, within) = match order {
                        QkvOrder::Blocked => (r / (heads * head_dim), (r / head_dim) % heads, r % head_dim),
                        QkvOrder::Interleaved => ((r / head_dim) % 3, r / (3 * head_dim), r % head_dim),
                    };
                    (proj * heads + head) * splits + within / per_split
                };
                by_row(&group_of_row, 3 * heads * splits)
            }
        })
    }
}

/// Quantizes an `out × in` weight matrix group by group under `layout`, each group on its own
/// by `method` (uniform with its own range, k-means with its own table, ternary with its own
/// alpha; the method's granularity is replaced by one set per group).
///
/// This is the plain path for any layout: groups are gathered and quantized one after
/// another. For the regular layouts the fused kernels of `quant-core` are the fast
/// equivalents: [`InputBlocks`](GroupLayout::InputBlocks) is
/// `Granularity::PerGroup { axis: 1, size }` and [`OutputRows`](GroupLayout::OutputRows) is
/// per-channel quantization of the matrix reshaped to `groups` rows (same values; their codes
/// are packed as one stream, so they store up to one byte less per group).
///
/// Storage counts every group's packed codes (each group packed on its own, so
/// `⌈n_g · bits / 8⌉` bytes) and its table.
///
/// # Errors
/// [`GroupError::InvalidLayout`] when the layout does not fit; the quantizer's errors
/// (non-finite weights, for one).
pub fn quantize_groups<F: Float>(w: ArrayView2<'_, F>, layout: &GroupLayout, method: &Method) -> Result<GroupQuantized<F>> {
    let (out, inp) = w.dim();
    let (ids, count) = layout.group_ids(out, inp)?;
    // Each group's elements, in row-major order.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (e, &g) in ids.iter().enumerate() {
        members[g].push(e);
    }
    let flat: Vec<F> = w.iter().copied().collect();
    let mut result = vec![F::zero(); flat.len()];
    let mut bytes = 0usize;
    for m in &members {
        let xs = Array1::from_iter(m.iter().map(|&e| flat[e]));
        let (back, b) = quantize_one(&xs, method)?;
        bytes += b;
        for (&e, v) in m.iter().zip(back) {
            result[e] = v;
        }
    }
    let got = vec![result.len()];
    let weights =
        Array2::from_shape_vec((out, inp), result).map_err(|_| quant_core::QuantError::ShapeMismatch { expected: vec![out, inp], got })?;
    Ok(GroupQuantized { bits_per_weight: 8.0 * bytes as f64 / (out * inp) as f64, weights, bytes })
}

/// Quantizes one group (per tensor) and returns its dequantized values and storage.
fn quantize_one<F: Float>(xs: &Array1<F>, method: &Method) -> Result<(Vec<F>, usize)> {
    let q = method.with_granularity(Granularity::PerTensor)?.quantize(xs)?;
    Ok((q.dequantize().iter().copied().collect(), q.storage_bytes()))
}
