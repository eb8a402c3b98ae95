//! The exact 1-D k-means optimum: the dynamic programme over contiguous clusters of sorted
//! distinct values (the Ckmeans.1d.dp family), one layer per cluster count, and the dispatch
//! between it and the Lagrangian relaxation of [`crate::kmeans_penalty`].
//!
//! `D_c(i)`, the least cost of `c` clusters over the first `i` distinct values, is
//! `min_j D_{c−1}(j) + cost(j, i)`. Each layer keeps `B_c(i) = D_c(i) − S2(i)` instead, so a
//! candidate is one division away from its prefix sums:
//!
//! `B_c(i) = min_j B_{c−1}(j) − (S1(i) − S1(j))² / (S0(i) − S0(j))`
//!
//! with `S0`, `S1`, `S2` the prefix sums of count, value and squared value (`S2` cancels).
//!
//! The cost is Monge, so the leftmost argmin `opt_c(i)` is non-decreasing in `i` and never
//! below `opt_{c−1}(i)`. A layer is solved by divide and conquer on those two bounds, walked
//! level by level rather than by recursion:
//!
//! 1. rows at multiples of a power of two, coarsest first (each row's window lies between the
//!    argmins of its two already-solved neighbours and above the previous layer's argmin);
//! 2. below [`BLOCK`] rows the layer splits into blocks solved independently (in parallel
//!    with `rayon`), so the rows of one level carry no dependency between them and a block's
//!    data stays in cache.
//!
//! The windows are fixed by the data alone, so the result does not depend on the block size
//! or the thread count. Ties go to the leftmost candidate.
//!
//! Back-pointers are stored per block of [`BACK_BLOCK`] rows as offsets from the block's
//! least argmin, in one, two or four bytes: about `k·m` bytes in all.

use crate::par;

/// Rows per independently solved block of a layer (a power of two, at least 2).
const BLOCK: usize = 1 << 12;
/// Cluster counts solved layer by layer; above, the Lagrangian relaxation runs first (it
/// needs a handful of passes whatever `k` is, where the layers need `k − 1`).
const LAYERED_UP_TO: usize = 3;
/// Rows per block of stored back-pointers.
const BACK_BLOCK: usize = 128;

/// Prefix sums over sorted distinct values: `s0` counts, `s1` values and `s2` squared values
/// (`m + 1` entries each, starting at 0).
#[derive(Clone, Copy)]
pub(crate) struct Prefix<'a> {
    pub(crate) s0: &'a [f64],
    pub(crate) s1: &'a [f64],
    pub(crate) s2: &'a [f64],
}

impl Prefix<'_> {
    /// Sum of squared deviations from the mean of distinct values `j..i` (0 when empty).
    pub(crate) fn cost(&self, j: usize, i: usize) -> f64 {
        let w = self.s0[i] - self.s0[j];
        if w <= 0.0 {
            return 0.0;
        }
        let s = self.s1[i] - self.s1[j];
        (self.s2[i] - self.s2[j] - s * s / w).max(0.0)
    }
}

/// The ends (exclusive) of the `k` clusters of an optimal partition of the `m` distinct
/// values, `1 ≤ k < m`: by Lagrangian relaxation when `k > LAYERED_UP_TO` and a price gives
/// exactly `k` clusters, else layer by layer.
pub(crate) fn optimal_ends(p: Prefix<'_>, k: usize) -> Vec<usize> {
    if k > LAYERED_UP_TO
        && let Some(ends) = crate::kmeans::penalty::solve(p, k)
    {
        return ends;
    }
    layered(p, k, BLOCK).0
}

/// The layer-by-layer programme alone (tests of the Lagrangian relaxation compare with it).
#[cfg(test)]
pub(crate) fn layered_ends(p: Prefix<'_>, k: usize) -> Vec<usize> {
    layered(p, k, BLOCK).0
}

/// The layer-by-layer programme with the given block size, also returning the last layer's
/// values `B_k` (tests compare block sizes through them).
fn layered(p: Prefix<'_>, k: usize, block: usize) -> (Vec<usize>, Vec<f64>) {
    let m = p.s0.len() - 1;
    let mut ends = vec![m; k];
    if k <= 1 || m <= k {
        // Callers give `k < m`; anything else gets one value per cluster.
        for (c, e) in ends.iter_mut().enumerate().take(k.saturating_sub(1)) {
            *e = (c + 1).min(m);
        }
        return (ends, Vec::new());
    }
    // Layer 1: B_1(j) = −S1(j)²/S0(j) (j ≥ 1); every argmin is 0.
    let mut prev: Vec<f64> = (0..=m).map(|j| if j == 0 { 0.0 } else { -(p.s1[j] * p.s1[j]) / p.s0[j] }).collect();
    let mut cur = vec![0.0; m + 1];
    let mut lower = vec![0u32; m + 1];
    let mut opt = vec![0u32; m + 1];
    let mut back: Vec<LayerBack> = Vec::with_capacity(k - 1);
    for c in 2..=k {
        let layer = Layer { p, a: &prev, lower: &lower, c, block };
        layer.solve(m, &mut opt, &mut cur);
        back.push(LayerBack::compress(&opt[c..=m], c));
        core::mem::swap(&mut prev, &mut cur);
        core::mem::swap(&mut lower, &mut opt);
    }
    let mut i = m;
    for c in (2..=k).rev() {
        i = back[c - 2].get(i);
        ends[c - 2] = i;
    }
    (ends, prev)
}

/// One layer's inputs: the previous layer's values `a` and argmins `lower`, rows `c..=m`.
struct Layer<'a> {
    p: Prefix<'a>,
    a: &'a [f64],
    lower: &'a [u32],
    c: usize,
    block: usize,
}

impl Layer<'_> {
    /// Fills `opt[c..=m]` and `best[c..=m]`.
    fn solve(&self, m: usize, opt: &mut [u32], best: &mut [f64]) {
        let c = self.c;
        let len = m - c;
        // Row c has the single candidate c − 1; row m may take any.
        (opt[c], best[c]) = row(self.p, self.a, c, c - 1, c - 1);
        if len == 0 {
            return;
        }
        (opt[m], best[m]) = row(self.p, self.a, m, c - 1, m - 1);
        let (opt, best) = (&mut opt[c..=m], &mut best[c..=m]);
        let mut top = 1usize;
        while top * 2 < len {
            top *= 2;
        }
        let size = self.block;
        if len <= size {
            self.levels(Block { p0: 0, p1: len, right: opt[len], opt, best }, top, 1);
            return;
        }
        // Rows at multiples of the block size first, then each block on its own.
        let right = opt[len];
        self.levels(Block { p0: 0, p1: len, right, opt: &mut opt[..len], best: &mut best[..len] }, top, size);
        let bounds: Vec<u32> = (0..=(len + 1).div_ceil(size)).map(|q| opt[(q * size).min(len)]).collect();
        let items: Vec<(usize, &mut [u32], &mut [f64])> =
            opt.chunks_mut(size).zip(best.chunks_mut(size)).enumerate().map(|(q, (o, b))| (q, o, b)).collect();
        par::map(items, |(q, opt, best)| {
            let p0 = q * size;
            let p1 = (p0 + size).min(len);
            self.levels(Block { p0, p1, right: bounds[q + 1], opt, best }, size / 2, 1);
        });
    }

    /// Solves the rows at positions `p0 + odd·t` inside the block, for `t` from `t_hi` down
    /// to `t_lo` (powers of two).
    fn levels(&self, block: Block<'_>, t_hi: usize, t_lo: usize) {
        let Block { p0, p1, right, opt, best } = block;
        let c = self.c;
        let mut t = t_hi;
        while t >= t_lo.max(1) {
            let mut p = p0 + t;
            while p < p1 {
                let i = c + p;
                // Position p0 is solved (and stored at index 0); p1 may lie past the block.
                let left = opt[p - t - p0] as usize;
                let right = (if p + t >= p1 { right } else { opt[p + t - p0] }) as usize;
                let hi = right.min(i - 1);
                let lo = left.max(self.lower[i] as usize).min(hi);
                (opt[p - p0], best[p - p0]) = row(self.p, self.a, i, lo, hi);
                p += 2 * t;
            }
            t /= 2;
        }
    }
}

/// Positions `p0..p1` of a layer (position `p` is row `c + p`): `opt`/`best` hold positions
/// `p0..` (position `p0` already solved) and `right` is the argmin at `p1`.
struct Block<'a> {
    p0: usize,
    p1: usize,
    right: u32,
    opt: &'a mut [u32],
    best: &'a mut [f64],
}

/// The leftmost `j` in `lo..=hi` minimising `a[j] − (S1(i) − S1(j))² / (S0(i) − S0(j))`, and
/// that value.
#[inline]
fn row(p: Prefix<'_>, a: &[f64], i: usize, lo: usize, hi: usize) -> (u32, f64) {
    let (si, wi) = (p.s1[i], p.s0[i]);
    let (mut bv, mut bj) = (f64::INFINITY, lo);
    let candidates = a[lo..=hi].iter().zip(&p.s0[lo..=hi]).zip(&p.s1[lo..=hi]);
    for (j, ((&aj, &w), &s)) in (lo..).zip(candidates) {
        let d = si - s;
        let v = aj - d * d / (wi - w);
        if v < bv {
            bv = v;
            bj = j;
        }
    }
    (bj as u32, bv)
}

/// One layer's back-pointers (argmins of rows `first..`), compressed per [`BACK_BLOCK`] rows.
struct LayerBack {
    first: usize,
    /// Per block: the least argmin, the byte offset of its data and the width in bytes.
    heads: Vec<(u32, u32, u8)>,
    data: Vec<u8>,
}

impl LayerBack {
    fn compress(opt: &[u32], first: usize) -> Self {
        let mut heads = Vec::with_capacity(opt.len().div_ceil(BACK_BLOCK));
        let mut data = Vec::with_capacity(opt.len() + opt.len() / 4);
        for chunk in opt.chunks(BACK_BLOCK) {
            let lo = chunk.iter().copied().min().unwrap_or(0);
            let span = chunk.iter().copied().max().unwrap_or(0) - lo;
            let width: u8 = if span <= u32::from(u8::MAX) {
                1
            } else if span <= u32::from(u16::MAX) {
                2
            } else {
                4
            };
            heads.push((lo, data.len() as u32, width));
            match width {
                1 => data.extend(chunk.iter().map(|&o| (o - lo) as u8)),
                2 => data.extend(chunk.iter().flat_map(|&o| ((o - lo) as u16).to_le_bytes())),
                _ => data.extend(chunk.iter().flat_map(|&o| (o - lo).to_le_bytes())),
            }
        }
        Self { first, heads, data }
    }

    fn get(&self, row: usize) -> usize {
        let r = row - self.first;
        let (lo, offset, width) = self.heads[r / BACK_BLOCK];
        let at = offset as usize + (r % BACK_BLOCK) * usize::from(width);
        let mut bytes = [0u8; 4];
        bytes[..usize::from(width)].copy_from_slice(&self.data[at..at + usize::from(width)]);
        (lo + u32::from_le_bytes(bytes)) as usize
    }
}

/// Test helpers shared with [`crate::kmeans_penalty`]'s tests.
#[cfg(test)]
pub(crate) mod support {
    use super::Prefix;
    use proptest::prelude::*;

    /// Ascending distinct values `f(x)` for integers `x` in `−range..range` (`f` increasing),
    /// each with a multiplicity of 1 to 3.
    pub(crate) fn ascending(range: i32, len: core::ops::Range<usize>, f: fn(f64) -> f64) -> impl Strategy<Value = Vec<(f64, u32)>> {
        prop::collection::vec((-range..range, 1u32..4), len).prop_map(move |mut v| {
            v.sort_by_key(|&(x, _)| x);
            v.dedup_by_key(|&mut (x, _)| x);
            v.into_iter().map(|(x, n)| (f(f64::from(x)), n)).collect()
        })
    }

    /// Prefix sums of ascending distinct values with multiplicities.
    pub(crate) struct Sums(Vec<f64>, Vec<f64>, Vec<f64>);

    impl Sums {
        pub(crate) fn view(&self) -> Prefix<'_> {
            Prefix { s0: &self.0, s1: &self.1, s2: &self.2 }
        }
    }

    pub(crate) fn prefix(values_counts: &[(f64, u32)]) -> Sums {
        let (mut s0, mut s1, mut s2) = (vec![0.0], vec![0.0], vec![0.0]);
        for &(v, n) in values_counts {
            let n = f64::from(n);
            s0.push(s0[s0.len() - 1] + n);
            s1.push(s1[s1.len() - 1] + n * v);
            s2.push(s2[s2.len() - 1] + n * v * v);
        }
        Sums(s0, s1, s2)
    }

    /// The plain O(k·m²) programme's least cost of `k` clusters.
    pub(crate) fn reference_cost(p: Prefix<'_>, k: usize) -> f64 {
        let m = p.s0.len() - 1;
        let mut d: Vec<f64> = (0..=m).map(|i| if i == 0 { f64::INFINITY } else { p.cost(0, i) }).collect();
        for c in 2..=k {
            let mut next = vec![f64::INFINITY; m + 1];
            for (i, slot) in next.iter_mut().enumerate().skip(c) {
                *slot = (c - 1..i).map(|j| d[j] + p.cost(j, i)).fold(f64::INFINITY, f64::min);
            }
            d = next;
        }
        d[m]
    }

    /// The cost of the partition with these cluster ends, after checking that they are `k`
    /// ascending ends finishing at `m`.
    pub(crate) fn checked_cost(p: Prefix<'_>, k: usize, ends: &[usize]) -> f64 {
        let m = p.s0.len() - 1;
        assert_eq!(ends.len(), k);
        assert!(ends[0] > 0 && ends[k - 1] == m && ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");
        let mut start = 0;
        ends.iter()
            .map(|&e| {
                let c = p.cost(start, e);
                start = e;
                c
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use support::{checked_cost, prefix, reference_cost};

    /// Distinct ascending values on a grid of eighths (near-ties), some repeated.
    fn data() -> impl Strategy<Value = Vec<(f64, u32)>> {
        support::ascending(40, 2..120, |x| x / 8.0)
    }

    proptest! {
        #[test]
        fn optimum_matches_the_plain_programme(v in data(), k in 2usize..9, block_log in 1u32..5) {
            prop_assume!(v.len() > k);
            let s = prefix(&v);
            let p = s.view();
            let (ends, _) = layered(p, k, 1 << block_log);
            let (got, want) = (checked_cost(p, k, &ends), reference_cost(p, k));
            prop_assert!((got - want).abs() <= 1e-9 * (1.0 + want), "got {got}, optimum {want}");
        }

        #[test]
        fn block_size_does_not_change_a_bit(v in data(), k in 2usize..9, block_log in 1u32..5) {
            prop_assume!(v.len() > k);
            let s = prefix(&v);
            let p = s.view();
            let (ends, vals) = layered(p, k, BLOCK);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let (e2, v2) = layered(p, k, 1 << block_log);
            prop_assert_eq!(&ends, &e2);
            prop_assert_eq!(bits(&vals), bits(&v2));
        }

        #[test]
        fn back_pointers_round_trip(steps in prop::collection::vec(prop_oneof![0u32..3, 0u32..300, 0u32..70_000], 1..700), first in 0usize..5) {
            let mut o = 0u32;
            let opt: Vec<u32> = steps.iter().map(|&d| { o += d; o }).collect();
            let back = LayerBack::compress(&opt, first);
            for (r, &want) in opt.iter().enumerate() {
                prop_assert_eq!(back.get(first + r), want as usize);
            }
        }
    }

    #[test]
    fn degenerate_sizes_give_valid_ends() {
        let s = prefix(&[(0.0, 1), (1.0, 2), (5.0, 1)]);
        let p = s.view();
        assert_eq!(optimal_ends(p, 1), vec![3]);
        assert_eq!(optimal_ends(p, 2), vec![2, 3]);
        assert_eq!(optimal_ends(p, 3), vec![1, 2, 3]);
    }

    #[test]
    fn overflowing_values_do_not_panic() {
        let s = prefix(&[(-1e300, 1), (0.0, 1), (1e300, 1), (1.5e300, 1)]);
        let p = s.view();
        for k in 2..4 {
            for ends in [layered(p, k, 2).0, optimal_ends(p, k)] {
                assert!(ends.len() == k && ends[k - 1] == 4 && ends.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
