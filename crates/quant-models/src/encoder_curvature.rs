//! The [`Encoder`]'s prepared curvature: exact block Hessian products by Pearlmutter's
//! R-operator over a kept forward and backward pass, from the block's layer only.
//!
//! Per product: a forward-mode pass carries the tangent from the block upward (nothing below
//! it), the logits' tangent goes through the cross-entropy's Hessian, and a second-order
//! reverse pass (the tangent of the backward pass) comes down to the block and reads off its
//! rows of `H v`. Primal values of both passes come from the preparation.

use ndarray::{Array1, Array2, ArrayView1, ArrayViewMut1, Axis};
use quant_hessian::{Batch, Block, BlockCurvature, HessianError, Product, Real, Result};

use crate::common::{add_tangent as add, layer_norm_back, layer_norm_tangent as norm_tangent, matrix, softmax_cross_entropy};
use crate::encoder::{Encoder, LayerCache, LayerGrads, dot, flat};
use crate::mlp::Activation;

/// An [`Encoder`] prepared at `w` on a batch.
pub(crate) struct EncoderCurvature<'a, F> {
    enc: &'a Encoder<F>,
    w: ArrayView1<'a, F>,
    /// The batch's tokens as rows (`(n · tokens) × features`).
    tokens: Array2<F>,
    caches: Vec<LayerCache<F>>,
    /// Per layer `σ''` of the FFN's pre-activation.
    bend: Vec<Array2<F>>,
    /// Per layer, bottom first, the backward pass's gradients.
    grads: Vec<LayerGrads<F>>,
    pooled: Array2<F>,
    /// Softmax probabilities of the logits.
    probs: Array2<F>,
    /// `1 / n`.
    inv: F,
}

/// Where a block sits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    Embedding,
    Layer(usize),
    Classifier,
}

/// A tangent injected at block `block` along `v`.
#[derive(Clone, Copy)]
struct Inject<'v, F> {
    block: usize,
    v: ArrayView1<'v, F>,
}

/// One layer's tangents (`None` is zero).
#[derive(Default)]
struct LayerTangents<F> {
    q: Option<Array2<F>>,
    k: Option<Array2<F>>,
    v: Option<Array2<F>>,
    /// Attention probabilities' tangent, laid out as the cache's.
    p: Option<Vec<F>>,
    /// The first norm's input.
    r1: Option<Array2<F>>,
    /// The FFN's pre-activation.
    z: Option<Array2<F>>,
    /// The second norm's input.
    r2: Option<Array2<F>>,
}

impl<'a, F: Real<Base = F>> EncoderCurvature<'a, F> {
    pub(crate) fn new(enc: &'a Encoder<F>, w: ArrayView1<'a, F>, batch: Batch<'a>) -> Result<Self> {
        quant_hessian::check_curvature_inputs(enc, w, batch)?;
        let c = enc.cfg;
        let (x, labels) = enc.inputs(batch);
        let (mut g, caches, pooled) = enc.forward::<F>(w, x.view(), &mut |_, _| {});
        let logits = g.clone();
        let loss = softmax_cross_entropy(g.view_mut(), &labels);
        if !loss.is_finite() {
            return Err(HessianError::NonFinite { index: 0 });
        }
        let mut scratch = Array1::zeros(enc.blocks.last().map_or(0, |b| b.range().end));
        let mut grads = Vec::with_capacity(c.layers);
        enc.backward(w, x.view(), &caches, &pooled, &g, &mut scratch.view_mut(), Some(&mut grads));
        grads.reverse();
        let mut bend = Vec::with_capacity(c.layers);
        for (lb, cache) in enc.layer_blocks.iter().zip(&caches) {
            let mut z = F::matmul(cache.n1.view(), matrix(w, &enc.blocks[lb.ffn_in.0], c.d_model, c.d_ff).view());
            z += &enc.vector(w, lb.ffn_in.1);
            bend.push(z.mapv(|v| Activation::Gelu.eval(v).2));
        }
        let mut probs = logits;
        for mut row in probs.outer_iter_mut() {
            let m = row.iter().fold(F::neg_infinity(), |a, &b| a.max(b));
            row.mapv_inplace(|v| (v - m).exp());
            let sum = row.sum();
            row.mapv_inplace(|v| v / sum);
        }
        let tokens = x
            .to_shape((x.nrows() * c.tokens, c.features))
            .map(|v| v.to_owned())
            .unwrap_or_else(|_| unreachable!("rows hold tokens × features"));
        let inv = F::cast(1.0 / labels.len() as f64);
        Ok(Self { enc, w, tokens, caches, bend, grads, pooled, probs, inv })
    }

    fn site(&self, block: usize) -> Site {
        let e = self.enc;
        if [e.embedding.0, e.embedding.1, e.embedding.2].contains(&block) {
            Site::Embedding
        } else if block == e.classifier.0 || block == e.classifier.1 {
            Site::Classifier
        } else {
            Site::Layer(e.layer_blocks.iter().position(|lb| lb.holds(block)).unwrap_or(0))
        }
    }

    /// The weight of `(wb, _)` as `fan_in × fan_out`.
    fn weight(&self, wb: usize, fi: usize, fo: usize) -> ndarray::CowArray<'a, F, ndarray::Ix2> {
        matrix(self.w, &self.enc.blocks[wb], fi, fo)
    }

    /// The tangent of `x W + b` at primal input `x` with input tangent `dx`.
    fn linear(
        &self,
        x: &Array2<F>,
        dx: Option<&Array2<F>>,
        (wb, bb): (usize, usize),
        fi: usize,
        fo: usize,
        inj: Inject<'_, F>,
    ) -> Option<Array2<F>> {
        let mut y = dx.map(|dx| F::matmul(dx.view(), self.weight(wb, fi, fo).view()));
        if inj.block == wb {
            let vm = inj.v.into_shape_with_order((fi, fo)).unwrap_or_else(|_| unreachable!("the block is fan_in × fan_out"));
            y = add(y, Some(&F::matmul(x.view(), vm)));
        }
        if inj.block == bb {
            let y = y.get_or_insert_with(|| Array2::zeros((x.nrows(), fo)));
            *y += &inj.v;
        }
        y
    }

    /// The tangent of `g ⊙ x̂ + b` from the input tangent `dx` and an injected gain or bias.
    fn norm(&self, dx: Option<&Array2<F>>, xhat: &Array2<F>, inv: &[F], (gb, bb): (usize, usize), inj: Inject<'_, F>) -> Option<Array2<F>> {
        let mut y = dx.map(|dx| norm_tangent(dx, xhat, inv).0 * self.enc.vector(self.w, gb));
        if inj.block == gb {
            y = add(y, Some(&(xhat * &inj.v)));
        }
        if inj.block == bb {
            let y = y.get_or_insert_with(|| Array2::zeros(xhat.raw_dim()));
            *y += &inj.v;
        }
        y
    }

    /// Forward mode from the block: the tangents of every layer at or above it, and of the
    /// logits.
    fn tangents(&self, inj: Inject<'_, F>) -> (Vec<LayerTangents<F>>, Array2<F>) {
        let enc = self.enc;
        let c = enc.cfg;
        let (n, tt, d, heads) = (self.pooled.nrows(), c.tokens, c.d_model, c.heads);
        let dh = d / heads;
        let scale = F::cast(1.0 / (dh as f64).sqrt());
        // The embedding's output tangent.
        let mut e: Option<Array2<F>> = None;
        if inj.block == enc.embedding.0 {
            let vm = inj.v.into_shape_with_order((c.features, d)).unwrap_or_else(|_| unreachable!("features × d_model"));
            e = Some(F::matmul(self.tokens.view(), vm));
        } else if inj.block == enc.embedding.1 {
            let mut t = Array2::zeros((n * tt, d));
            t += &inj.v;
            e = Some(t);
        } else if inj.block == enc.embedding.2 {
            let pos = inj.v.into_shape_with_order((tt, d)).unwrap_or_else(|_| unreachable!("tokens × d_model"));
            let mut t = Array2::zeros((n * tt, d));
            for mut sample in t.exact_chunks_mut((tt, d)) {
                sample += &pos;
            }
            e = Some(t);
        }
        let mut out = Vec::with_capacity(c.layers);
        for (lb, cache) in enc.layer_blocks.iter().zip(&self.caches) {
            let mut t = LayerTangents::default();
            if e.is_none() && !lb.holds(inj.block) {
                out.push(t);
                continue;
            }
            t.q = self.linear(&cache.input, e.as_ref(), lb.q, d, d, inj);
            t.k = self.linear(&cache.input, e.as_ref(), lb.k, d, d, inj);
            t.v = self.linear(&cache.input, e.as_ref(), lb.v, d, d, inj);
            let mut ctx = None;
            if t.q.is_some() || t.k.is_some() || t.v.is_some() {
                let zero = Array2::zeros((n * tt, d));
                let (qd, kd, vd) =
                    (flat(t.q.as_ref().unwrap_or(&zero)), flat(t.k.as_ref().unwrap_or(&zero)), flat(t.v.as_ref().unwrap_or(&zero)));
                let (qs, ks, vs) = (flat(&cache.q), flat(&cache.k), flat(&cache.v));
                let mut pd = vec![F::zero(); cache.probs.len()];
                let mut cd = vec![F::zero(); n * tt * d];
                let mut row = vec![F::zero(); tt];
                for b in 0..n {
                    for h in 0..heads {
                        let base = (b * heads + h) * tt * tt;
                        let at = |t: usize| (b * tt + t) * d + h * dh;
                        for i in 0..tt {
                            let p = &cache.probs[base + i * tt..base + (i + 1) * tt];
                            for (j, r) in row.iter_mut().enumerate() {
                                *r = (dot(&qd[at(i)..at(i) + dh], &ks[at(j)..at(j) + dh])
                                    + dot(&qs[at(i)..at(i) + dh], &kd[at(j)..at(j) + dh]))
                                    * scale;
                            }
                            let inner = dot(p, &row);
                            let ci = at(i);
                            for j in 0..tt {
                                let pdot = p[j] * (row[j] - inner);
                                pd[base + i * tt + j] = pdot;
                                for ((cv, &vv), &vdv) in cd[ci..ci + dh].iter_mut().zip(&vs[at(j)..at(j) + dh]).zip(&vd[at(j)..at(j) + dh])
                                {
                                    *cv += pdot * vv + p[j] * vdv;
                                }
                            }
                        }
                    }
                }
                t.p = Some(pd);
                ctx = Some(Array2::from_shape_vec((n * tt, d), cd).unwrap_or_else(|_| unreachable!("n · tokens rows of d_model")));
            }
            t.r1 = add(self.linear(&cache.context, ctx.as_ref(), lb.out, d, d, inj), e.as_ref());
            let n1 = self.norm(t.r1.as_ref(), &cache.xhat1, &cache.inv_std1, lb.norm1, inj);
            t.z = self.linear(&cache.n1, n1.as_ref(), lb.ffn_in, d, c.d_ff, inj);
            let a = t.z.as_ref().map(|z| z * &cache.dhidden);
            t.r2 = add(self.linear(&cache.hidden, a.as_ref(), lb.ffn_out, c.d_ff, d, inj), n1.as_ref());
            e = self.norm(t.r2.as_ref(), &cache.xhat2, &cache.inv_std2, lb.norm2, inj);
            out.push(t);
        }
        // Mean pooling, then the classifier.
        let pooled = e.map(|e| {
            let inv_t = F::cast(1.0 / tt as f64);
            let mut p = Array2::zeros((n, d));
            for (mut row, sample) in p.outer_iter_mut().zip(e.exact_chunks((tt, d))) {
                row.assign(&(sample.sum_axis(Axis(0)) * inv_t));
            }
            p
        });
        let logits =
            self.linear(&self.pooled, pooled.as_ref(), enc.classifier, d, c.classes, inj).unwrap_or_else(|| Array2::zeros((n, c.classes)));
        (out, logits)
    }

    /// The tangent of a layer norm's backward pass `dx = r (a − m1 − x̂ m2)`, `a = dy ⊙ g`:
    /// from the tangent `rdy` of `dy` and the tangent `dx_in` of the norm's input.
    /// `primal` is the backward pass's own output for `dy` (kept by the preparation).
    #[allow(clippy::too_many_arguments)]
    fn norm_back(
        &self,
        rdy: &Array2<F>,
        dy: &Array2<F>,
        primal: &Array2<F>,
        xhat: &Array2<F>,
        inv: &[F],
        gb: usize,
        dx_in: Option<&Array2<F>>,
    ) -> Array2<F> {
        let gain = self.enc.vector(self.w, gb);
        let mut out = layer_norm_back(rdy, xhat, inv, gain).0;
        if let Some(dx_in) = dx_in {
            let (xhat_dot, rel) = norm_tangent(dx_in, xhat, inv);
            let n = F::cast(dy.ncols() as f64);
            for (i, mut row) in out.outer_iter_mut().enumerate() {
                let (a, xh, xd, pr, r) = (dy.row(i), xhat.row(i), xhat_dot.row(i), primal.row(i), inv[i]);
                // ṙ (a − m1 − x̂ m2) = (ṙ/r) dx, and −r (x̂̇ m2 + x̂ mean(x̂̇ ⊙ a)) with a = dy ⊙ g.
                let m2 = a.iter().zip(&gain).zip(xh).map(|((&a, &g), &x)| a * g * x).sum::<F>() / n;
                let m3 = a.iter().zip(&gain).zip(xd).map(|((&a, &g), &x)| a * g * x).sum::<F>() / n;
                for j in 0..row.len() {
                    row[j] += rel[i] * pr[j] - r * (xd[j] * m2 + xh[j] * m3);
                }
            }
        }
        out
    }

    /// `H_bb v` into `out`.
    fn product(&self, block: usize, v: ArrayView1<'_, F>, mut out: ArrayViewMut1<'_, F>) {
        let enc = self.enc;
        let c = enc.cfg;
        let (n, tt, d, heads) = (self.pooled.nrows(), c.tokens, c.d_model, c.heads);
        let dh = d / heads;
        let scale = F::cast(1.0 / (dh as f64).sqrt());
        let v = v.as_standard_layout();
        let inj = Inject { block, v: v.view() };
        let site = self.site(block);
        let (tangents, logits) = self.tangents(inj);
        // The cross-entropy's Hessian of the logits: (diag p − p pᵀ) / n per row.
        let mut rg = logits;
        for (mut row, p) in rg.outer_iter_mut().zip(self.probs.outer_iter()) {
            let inner = row.iter().zip(p).fold(F::zero(), |a, (&t, &pi)| a + t * pi);
            row.zip_mut_with(&p, |t, &pi| *t = pi * (*t - inner) * self.inv);
        }
        let mut put = |values: &mut dyn Iterator<Item = F>| out.iter_mut().zip(values).for_each(|(o, x)| *o = x);
        let linear_grad = |x: &Array2<F>, rdy: &Array2<F>, (wb, _): (usize, usize), put: &mut dyn FnMut(&mut dyn Iterator<Item = F>)| {
            if block == wb {
                put(&mut F::matmul(x.t(), rdy.view()).iter().copied());
            } else {
                put(&mut rdy.sum_axis(Axis(0)).into_iter());
            }
        };
        // A norm's gain gets Σ rdy ⊙ x̂, its bias Σ rdy.
        let norm_grad = |rdy: &Array2<F>, xhat: &Array2<F>, (gb, _): (usize, usize), put: &mut dyn FnMut(&mut dyn Iterator<Item = F>)| {
            put(&mut (if block == gb { (rdy * xhat).sum_axis(Axis(0)) } else { rdy.sum_axis(Axis(0)) }).into_iter());
        };
        if site == Site::Classifier {
            linear_grad(&self.pooled, &rg, enc.classifier, &mut put);
            return;
        }
        let rdpooled = F::matmul(rg.view(), self.weight(enc.classifier.0, d, c.classes).t());
        let inv_t = F::cast(1.0 / tt as f64);
        let mut rde = Array2::zeros((n * tt, d));
        for (mut sample, dp) in rde.exact_chunks_mut((tt, d)).into_iter().zip(rdpooled.outer_iter()) {
            for mut row in sample.outer_iter_mut() {
                row.assign(&(&dp * inv_t));
            }
        }
        for (l, ((lb, cache), (t, g))) in enc.layer_blocks.iter().zip(&self.caches).zip(tangents.iter().zip(&self.grads)).enumerate().rev()
        {
            let here = site == Site::Layer(l);
            let is = |pair: (usize, usize)| here && (pair.0 == block || pair.1 == block);
            // N2 = LN(N1 + FFN(N1)).
            if is(lb.norm2) {
                norm_grad(&rde, &cache.xhat2, lb.norm2, &mut put);
                return;
            }
            let rdr2 = self.norm_back(&rde, &g.dn2, &g.dr2, &cache.xhat2, &cache.inv_std2, lb.norm2.0, t.r2.as_ref());
            if is(lb.ffn_out) {
                linear_grad(&cache.hidden, &rdr2, lb.ffn_out, &mut put);
                return;
            }
            let mut rdz = F::matmul(rdr2.view(), self.weight(lb.ffn_out.0, c.d_ff, d).t());
            rdz *= &cache.dhidden;
            if let Some(z) = &t.z {
                rdz += &(&(&g.da * &self.bend[l]) * z);
            }
            if is(lb.ffn_in) {
                linear_grad(&cache.n1, &rdz, lb.ffn_in, &mut put);
                return;
            }
            let mut rdn1 = F::matmul(rdz.view(), self.weight(lb.ffn_in.0, d, c.d_ff).t());
            rdn1 += &rdr2;
            // N1 = LN(E + Attention(E)).
            if is(lb.norm1) {
                norm_grad(&rdn1, &cache.xhat1, lb.norm1, &mut put);
                return;
            }
            let rdr1 = self.norm_back(&rdn1, &g.dn1, &g.dr1, &cache.xhat1, &cache.inv_std1, lb.norm1.0, t.r1.as_ref());
            if is(lb.out) {
                linear_grad(&cache.context, &rdr1, lb.out, &mut put);
                return;
            }
            let rdctx = F::matmul(rdr1.view(), self.weight(lb.out.0, d, d).t());
            // Attention, second order: see the module documentation of the terms.
            let zero = Array2::zeros((n * tt, d));
            let (qs, ks, vs, dcs, rdcs) = (flat(&cache.q), flat(&cache.k), flat(&cache.v), flat(&g.dctx), flat(&rdctx));
            let (qd, kd, vd) =
                (flat(t.q.as_ref().unwrap_or(&zero)), flat(t.k.as_ref().unwrap_or(&zero)), flat(t.v.as_ref().unwrap_or(&zero)));
            let nop = vec![F::zero(); cache.probs.len()];
            let pd = t.p.as_ref().unwrap_or(&nop);
            let (mut rq, mut rk, mut rv) = (vec![F::zero(); n * tt * d], vec![F::zero(); n * tt * d], vec![F::zero(); n * tt * d]);
            let (mut dp, mut rdp) = (vec![F::zero(); tt], vec![F::zero(); tt]);
            for b in 0..n {
                for h in 0..heads {
                    let base = (b * heads + h) * tt * tt;
                    let at = |t: usize| (b * tt + t) * d + h * dh;
                    for i in 0..tt {
                        let p = &cache.probs[base + i * tt..base + (i + 1) * tt];
                        let pdi = &pd[base + i * tt..base + (i + 1) * tt];
                        let (dci, rdci) = (&dcs[at(i)..at(i) + dh], &rdcs[at(i)..at(i) + dh]);
                        for j in 0..tt {
                            let vj = &vs[at(j)..at(j) + dh];
                            dp[j] = dot(dci, vj);
                            rdp[j] = dot(rdci, vj) + dot(dci, &vd[at(j)..at(j) + dh]);
                            // Ṙ(dV)_j += Ṗ_ij dC_i + P_ij Ṙ(dC)_i.
                            for ((g, &a), &ra) in rv[at(j)..at(j) + dh].iter_mut().zip(dci).zip(rdci) {
                                *g += pdi[j] * a + p[j] * ra;
                            }
                        }
                        let rs = dot(p, &dp);
                        let rrs = dot(pdi, &dp) + dot(p, &rdp);
                        for j in 0..tt {
                            let ds = p[j] * (dp[j] - rs) * scale;
                            let rds = (pdi[j] * (dp[j] - rs) + p[j] * (rdp[j] - rrs)) * scale;
                            for c in 0..dh {
                                rq[at(i) + c] += rds * ks[at(j) + c] + ds * kd[at(j) + c];
                                rk[at(j) + c] += rds * qs[at(i) + c] + ds * qd[at(i) + c];
                            }
                        }
                    }
                }
            }
            let shape = |v: Vec<F>| Array2::from_shape_vec((n * tt, d), v).unwrap_or_else(|_| unreachable!("n · tokens rows of d_model"));
            let (rq, rk, rv) = (shape(rq), shape(rk), shape(rv));
            for (pair, r) in [(lb.q, &rq), (lb.k, &rk), (lb.v, &rv)] {
                if is(pair) {
                    linear_grad(&cache.input, r, pair, &mut put);
                    return;
                }
            }
            let mut rinput = F::matmul(rq.view(), self.weight(lb.q.0, d, d).t());
            rinput += &F::matmul(rk.view(), self.weight(lb.k.0, d, d).t());
            rinput += &F::matmul(rv.view(), self.weight(lb.v.0, d, d).t());
            rinput += &rdr1;
            rde = rinput;
        }
        // E = tokens W_e + b_e + P.
        if block == enc.embedding.0 {
            put(&mut F::matmul(self.tokens.t(), rde.view()).iter().copied());
        } else if block == enc.embedding.1 {
            put(&mut rde.sum_axis(Axis(0)).into_iter());
        } else {
            let mut dpos = Array2::<F>::zeros((tt, d));
            for sample in rde.exact_chunks((tt, d)) {
                dpos += &sample;
            }
            put(&mut dpos.iter().copied());
        }
    }
}

impl<F: Real<Base = F>> BlockCurvature<F> for EncoderCurvature<'_, F> {
    fn blocks(&self) -> &[Block] {
        &self.enc.blocks
    }

    fn block_product_into(&self, product: Product, block: usize, v: ArrayView1<'_, F>, out: ArrayViewMut1<'_, F>) -> Result<()> {
        quant_hessian::check_block_product(&self.enc.blocks, block, v.len(), out.len())?;
        if product != Product::Hessian {
            return Err(HessianError::Unsupported { what: "a Gauss-Newton product" });
        }
        self.product(block, v, out);
        Ok(())
    }
}
