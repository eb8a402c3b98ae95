//! Forward mode through the encoder at a kept primal pass: the Jacobian-vector products of
//! the sentence embeddings with respect to one tensor, with no tangent below its layer.
//!
//! Several directions go through one pass: their tangents are stacked by rows (direction
//! `i`'s copy of primal row `r` at row `i·R + r`, `R` the batch's rows), so every product
//! with a weight matrix is one wide product, and each elementwise step reads the primal once.

use ndarray::{Array1, Array2, ArrayView2, Axis, s};
use quant_hessian::Real;

use super::config::PoolingMode;
use super::model::{Bert, Caches, LayerCache, LayerIdx, Params};
use super::tokenize::TokenBatch;
use crate::common::{add_tangent as add, layer_norm_tangent};

/// Tangents injected at one tensor or several: model block `parts[j].0` moves along columns
/// `parts[j].1..` (its length) of each row of `v`.
#[derive(Clone, Copy)]
struct Inject<'v, F> {
    parts: &'v [(usize, usize)],
    v: ArrayView2<'v, F>,
}

impl<'v, F: Real> Inject<'v, F> {
    /// The directions of model block `b` (of `len` entries), if it is injected.
    fn at(&self, b: usize, len: usize) -> Option<ArrayView2<'v, F>> {
        self.parts.iter().find(|p| p.0 == b).map(|&(_, off)| self.v.slice_move(s![.., off..off + len]))
    }

    /// Whether any injected block satisfies `pred`.
    fn any(&self, pred: impl Fn(usize) -> bool) -> bool {
        self.parts.iter().any(|p| pred(p.0))
    }
}

/// Multiplies each direction's rows of the stacked `t` by `primal` elementwise.
fn tile_mul<F: Real>(t: &mut Array2<F>, primal: &Array2<F>) {
    for mut chunk in t.exact_chunks_mut(primal.raw_dim()) {
        chunk *= primal;
    }
}

/// Adds `v.row(i)` to every row of direction `i`'s block of the stacked `t`.
fn add_rows<F: Real>(t: &mut Array2<F>, rows: usize, v: ArrayView2<'_, F>) {
    for (mut chunk, vi) in t.exact_chunks_mut((rows, v.ncols())).into_iter().zip(v.outer_iter()) {
        chunk += &vi;
    }
}

impl<F: Real<Base = F>> Bert<F> {
    /// The tangents of the sentence embeddings when the blocks of `parts` move along each row
    /// of `v` (`k × total length`; block `parts[j].0` takes the columns from `parts[j].1`),
    /// stacked (`(k · sentences) × hidden_size`), at the primal pass (`hidden`, `caches`) that
    /// `p` made on `batch`. Tangents start at the lowest block's layer; the layers below are
    /// skipped.
    pub(super) fn embed_tangents(
        &self,
        p: &Params<'_, F, F>,
        batch: &TokenBatch,
        hidden: &Array2<F>,
        caches: &Caches<F>,
        parts: &[(usize, usize)],
        v: ArrayView2<'_, F>,
    ) -> Array2<F> {
        let inj = Inject { parts, v };
        let (d, rows, k) = (self.config().hidden_size, batch.tokens(), v.nrows());
        let lay = &self.layout;
        let mut x: Option<Array2<F>> = None;
        for b in [lay.word, lay.position, lay.token_type] {
            let Some(vb) = inj.at(b, self.blocks()[b].len()) else { continue };
            let e = x.get_or_insert_with(|| Array2::zeros((k * rows, d)));
            for (i, vi) in vb.outer_iter().enumerate() {
                let mut r = i * rows;
                for s in batch.sentences() {
                    for (t, (&id, &tt)) in s.ids.iter().zip(&s.type_ids).enumerate() {
                        let row = if b == lay.word {
                            id as usize
                        } else if b == lay.position {
                            t
                        } else {
                            tt as usize
                        };
                        let mut er = e.row_mut(r);
                        er += &vi.slice(s![row * d..(row + 1) * d]);
                        r += 1;
                    }
                }
            }
        }
        if x.is_some() || inj.any(|b| b == lay.norm.0 || b == lay.norm.1) {
            let Some((xhat, inv)) = &caches.embedding else { unreachable!("the primal pass kept the embedding norm") };
            x = self.norm_tangent(p, x.as_ref(), xhat, inv, lay.norm, inj);
        }
        for (l, cache) in lay.layers.iter().zip(&caches.layers) {
            x = self.layer_tangent(p, l, cache, batch, x, inj);
        }
        let hdot = x.unwrap_or_else(|| Array2::zeros((k * rows, d)));
        let mut out = Array2::zeros((k * batch.len(), d));
        for (i, mut o) in out.exact_chunks_mut((batch.len(), d)).into_iter().enumerate() {
            o.assign(&self.pool_tangent(hidden, batch, hdot.slice(s![i * rows..(i + 1) * rows, ..])));
        }
        out
    }

    /// One encoder layer's output tangent from its input tangent `x` and the injection.
    fn layer_tangent(
        &self,
        p: &Params<'_, F, F>,
        l: &LayerIdx,
        c: &LayerCache<F>,
        batch: &TokenBatch,
        x: Option<Array2<F>>,
        inj: Inject<'_, F>,
    ) -> Option<Array2<F>> {
        if x.is_none() && !inj.any(|b| l.holds(b)) {
            return None;
        }
        let q = self.linear_tangent(p, &c.input, x.as_ref(), l.q, inj);
        let k = self.linear_tangent(p, &c.input, x.as_ref(), l.k, inj);
        let v = self.linear_tangent(p, &c.input, x.as_ref(), l.v, inj);
        let ctx = self.attention_tangent(c, q.as_ref(), k.as_ref(), v.as_ref(), batch);
        let r1 = add(self.linear_tangent(p, &c.context, ctx.as_ref(), l.out, inj), x.as_ref());
        let n1 = self.norm_tangent(p, r1.as_ref(), &c.xhat1, &c.inv1, l.norm1, inj);
        let h = self.linear_tangent(p, &c.n1, n1.as_ref(), l.ffn_in, inj).map(|mut z| {
            tile_mul(&mut z, &c.dhidden);
            z
        });
        let r2 = add(self.linear_tangent(p, &c.hidden, h.as_ref(), l.ffn_out, inj), n1.as_ref());
        self.norm_tangent(p, r2.as_ref(), &c.xhat2, &c.inv2, l.norm2, inj)
    }

    /// The tangents of `x Wᵀ + b` at primal input `x` with stacked input tangents `dx`.
    fn linear_tangent(
        &self,
        p: &Params<'_, F, F>,
        x: &Array2<F>,
        dx: Option<&Array2<F>>,
        (wb, bb): (usize, usize),
        inj: Inject<'_, F>,
    ) -> Option<Array2<F>> {
        let out = self.blocks()[bb].len();
        let inp = self.blocks()[wb].len() / out;
        let (rows, k) = (x.nrows(), inj.v.nrows());
        let mut y = dx.map(|dx| F::matmul(dx.view(), self.matrix(p, wb, out, inp).t()));
        if let Some(vw) = inj.at(wb, out * inp) {
            let y = y.get_or_insert_with(|| Array2::zeros((k * rows, out)));
            for (i, vi) in vw.outer_iter().enumerate() {
                let vm = vi.into_shape_with_order((out, inp)).unwrap_or_else(|_| unreachable!("the block is out × in"));
                F::matmul_into(x.view(), vm.t(), true, y.slice_mut(s![i * rows..(i + 1) * rows, ..]));
            }
        }
        if let Some(vb) = inj.at(bb, out) {
            add_rows(y.get_or_insert_with(|| Array2::zeros((k * rows, out))), rows, vb);
        }
        y
    }

    /// The tangents of `g ⊙ x̂ + b` (layer norm, kept `x̂` and `1/σ`) with stacked input
    /// tangents `dx`: `g ⊙ (dx − mean(dx) − x̂ mean(x̂ ⊙ dx)) / σ`, plus the injected gain or bias.
    fn norm_tangent(
        &self,
        p: &Params<'_, F, F>,
        dx: Option<&Array2<F>>,
        xhat: &Array2<F>,
        inv: &[F],
        (gb, bb): (usize, usize),
        inj: Inject<'_, F>,
    ) -> Option<Array2<F>> {
        let (rows, k) = (xhat.nrows(), inj.v.nrows());
        let mut y = dx.map(|dx| {
            let mut t = layer_norm_tangent(dx, xhat, inv).0;
            t *= &self.vector(p, gb);
            t
        });
        let width = xhat.ncols();
        if let Some(vg) = inj.at(gb, width) {
            let y = y.get_or_insert_with(|| Array2::zeros((k * rows, width)));
            for (mut chunk, vi) in y.exact_chunks_mut(xhat.raw_dim()).into_iter().zip(vg.outer_iter()) {
                chunk += &(xhat * &vi);
            }
        }
        if let Some(vb) = inj.at(bb, width) {
            add_rows(y.get_or_insert_with(|| Array2::zeros((k * rows, width))), rows, vb);
        }
        y
    }

    /// The tangent of the attention context from the projections' tangents:
    /// `Ṡ = (Q̇Kᵀ + QK̇ᵀ)·scale`, `Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ))`, `Ċ = ṖV + PV̇`.
    fn attention_tangent(
        &self,
        c: &LayerCache<F>,
        dq: Option<&Array2<F>>,
        dk: Option<&Array2<F>>,
        dv: Option<&Array2<F>>,
        batch: &TokenBatch,
    ) -> Option<Array2<F>> {
        if dq.is_none() && dk.is_none() && dv.is_none() {
            return None;
        }
        let cfg = self.config();
        let (heads, dh) = (cfg.num_attention_heads, cfg.head_dim());
        let scale = F::cast(1.0 / (dh as f64).sqrt());
        let rows = c.q.nrows();
        let stacked = [dq, dk, dv].into_iter().flatten().map(Array2::nrows).next().unwrap_or(rows);
        let mut out = Array2::<F>::zeros((stacked, c.q.ncols()));
        for i in 0..stacked / rows {
            let mut probs = c.probs.iter();
            let mut start = 0;
            for s in batch.sentences() {
                let len = s.ids.len();
                for h in 0..heads {
                    let Some(pr) = probs.next() else { unreachable!("one probability matrix per sentence and head") };
                    let cols = s![start..start + len, h * dh..(h + 1) * dh];
                    let mine = s![i * rows + start..i * rows + start + len, h * dh..(h + 1) * dh];
                    let mut o = out.slice_mut(mine);
                    if dq.is_some() || dk.is_some() {
                        let mut ds = Array2::<F>::zeros((len, len));
                        if let Some(dq) = dq {
                            F::matmul_into(dq.slice(mine), c.k.slice(cols).t(), true, ds.view_mut());
                        }
                        if let Some(dk) = dk {
                            F::matmul_into(c.q.slice(cols), dk.slice(mine).t(), true, ds.view_mut());
                        }
                        for (mut row, prow) in ds.outer_iter_mut().zip(pr.outer_iter()) {
                            let inner = row.iter().zip(prow).fold(F::zero(), |acc, (&a, &b)| acc + a * b);
                            row.zip_mut_with(&prow, |g, &pj| *g = pj * (*g - inner) * scale);
                        }
                        F::matmul_into(ds.view(), c.v.slice(cols), true, o.view_mut());
                    }
                    if let Some(dv) = dv {
                        F::matmul_into(pr.view(), dv.slice(mine), true, o.view_mut());
                    }
                }
                start += len;
            }
        }
        Some(out)
    }

    /// The tangent of the pooled (and normalised) sentence embeddings from the last layer's
    /// token tangents `dh`.
    fn pool_tangent(&self, hidden: &Array2<F>, batch: &TokenBatch, dh: ArrayView2<'_, F>) -> Array2<F> {
        let mut out = Array2::<F>::zeros((batch.len(), self.config().hidden_size));
        let mut start = 0;
        for (i, s) in batch.sentences().iter().enumerate() {
            let len = s.ids.len();
            let rows = hidden.slice(s![start..start + len, ..]);
            let drows = dh.slice(s![start..start + len, ..]);
            let mut t: Array1<F> = match self.pooling().mode {
                PoolingMode::Mean => drows.sum_axis(Axis(0)) / F::cast(len as f64),
                PoolingMode::Cls => drows.row(0).to_owned(),
                PoolingMode::Max => Array1::from_shape_fn(rows.ncols(), |j| {
                    // The first row holding the column's maximum, as the forward fold keeps it.
                    let col = rows.column(j);
                    let arg = col.iter().enumerate().fold(0, |best, (r, &v)| if v > col[best] { r } else { best });
                    drows[[arg, j]]
                }),
            };
            if self.pooling().normalize {
                // y = o / max(‖o‖, 1e-12): ẏ = (ȯ − y ⟨y, ȯ⟩) / ‖o‖ above the floor, ȯ / 1e-12 below.
                let o = self.pool_one(rows);
                let norm = o.iter().map(|&v| v * v).sum::<F>().sqrt();
                if norm > F::cast(1e-12) {
                    let y = o.mapv(|v| v / norm);
                    let inner = y.iter().zip(&t).fold(F::zero(), |a, (&p, &q)| a + p * q);
                    t.zip_mut_with(&y, |ti, &yi| *ti = (*ti - yi * inner) / norm);
                } else {
                    t.mapv_inplace(|v| v / F::cast(1e-12));
                }
            }
            out.row_mut(i).assign(&t);
            start += len;
        }
        out
    }
}
