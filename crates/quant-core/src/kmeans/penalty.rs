//! The exact 1-D k-means optimum by Lagrangian relaxation: a price `λ` per cluster turns
//! "the best partition into `k` clusters" into "the best partition, clusters costing `λ`
//! each", which needs no layer per cluster count.
//!
//! For a price `λ`, `E(i) = min_j E(j) + cost(j, i) + λ` over the first `i` distinct values is
//! solved in one left-to-right pass. The cost is Monge, so once a later candidate start `j`
//! beats an earlier one at some row it beats it at every later row: the candidates alive form
//! a queue, each owning an interval of rows, and a new candidate finds where its interval
//! begins by a galloping binary search against the queue's last (the O(m log m) method for
//! concave least-weight-subsequence recurrences, after Hirschberg & Larmore). The pass costs
//! O(m log m) and linear memory.
//!
//! Any partition optimal for a price with exactly `k` clusters is an optimal `k`-partition:
//! against every other `k`-partition it pays the same `λ·k` and no more cost. The least cost
//! `D(k)` is convex in `k` (Monge again), so such a price exists whenever `D` is strictly
//! convex at `k`; it is found by interpolating `log λ` against `log` of the cluster count
//! (the count falls roughly like `λ^{-1/3}`), falling back to the price where the two
//! bracketing solutions cost the same. When `D` is linear around `k` (ties between cluster
//! counts, as with exactly symmetric data) no price gives `k` clusters and [`solve`] says so;
//! the caller then runs the layer-by-layer programme.
//!
//! Ties between candidates go to the earlier start everywhere, so a price gives one
//! partition on every machine.

use crate::kmeans::dp::Prefix;

/// Prices tried before giving up on a cluster count.
const MAX_PRICES: usize = 60;

/// One priced solution: its cluster count, its cost (sum of squared deviations) and the
/// end of each cluster.
struct Priced {
    price: f64,
    count: usize,
    cost: f64,
    ends: Vec<usize>,
}

/// Reusable buffers of the priced pass.
struct Pass {
    /// `E(i) − S2(i)`.
    value: Vec<f64>,
    count: Vec<u32>,
    from: Vec<u32>,
    /// Live candidates and the first row each owns.
    queue: Vec<(u32, u32)>,
}

impl Pass {
    fn new(m: usize) -> Self {
        Self { value: vec![0.0; m + 1], count: vec![0; m + 1], from: vec![0; m + 1], queue: Vec::with_capacity(m + 1) }
    }

    /// The least-cost partition at `price` per cluster (ties to earlier starts).
    fn run(&mut self, p: Prefix<'_>, price: f64) -> Priced {
        let m = p.s0.len() - 1;
        let (s0, s1) = (p.s0, p.s1);
        // Candidate `j` seen from row `r`: E(j) + cost(j, r) − S2(r), less the price.
        let at = |value: &[f64], j: usize, r: usize| {
            let d = s1[r] - s1[j];
            value[j] - d * d / (s0[r] - s0[j])
        };
        self.queue.clear();
        self.queue.push((0, 1));
        self.value[0] = 0.0;
        self.count[0] = 0;
        let mut head = 0;
        for i in 1..=m {
            while head + 1 < self.queue.len() && self.queue[head + 1].1 as usize <= i {
                head += 1;
            }
            let j = self.queue[head].0 as usize;
            self.value[i] = at(&self.value, j, i) + price;
            self.count[i] = self.count[j] + 1;
            self.from[i] = j as u32;
            if i == m {
                break;
            }
            // Candidate i takes over the rows from the first where it is strictly better
            // than the last live candidate; candidates it beats on all their rows go. (The
            // head owns row i, so its start is at most i and it is never popped.)
            let (mut b, mut start) = self.queue[self.queue.len() - 1];
            while start as usize > i && at(&self.value, i, start as usize) < at(&self.value, b as usize, start as usize) {
                self.queue.pop();
                (b, start) = self.queue[self.queue.len() - 1];
            }
            let b = b as usize;
            let lo = (start as usize).max(i + 1);
            let better = |r: usize| at(&self.value, i, r) < at(&self.value, b, r);
            if better(lo) {
                self.queue.push((i as u32, lo as u32));
                continue;
            }
            if !better(m) {
                continue;
            }
            // `bad` is not better, `good` is: gallop up from `lo`, then bisect.
            let (mut bad, mut good, mut step) = (lo, m, 1);
            while bad + step < good {
                if better(bad + step) {
                    good = bad + step;
                    break;
                }
                bad += step;
                step *= 2;
            }
            while good - bad > 1 {
                let mid = bad + (good - bad) / 2;
                if better(mid) {
                    good = mid;
                } else {
                    bad = mid;
                }
            }
            self.queue.push((i as u32, good as u32));
        }
        let count = self.count[m] as usize;
        let mut ends = vec![0; count];
        let mut i = m;
        for e in ends.iter_mut().rev() {
            *e = i;
            i = self.from[i] as usize;
        }
        let mut start = 0;
        let cost = ends
            .iter()
            .map(|&e| {
                let c = p.cost(start, e);
                start = e;
                c
            })
            .sum();
        Priced { price, count, cost, ends }
    }
}

/// The ends of an optimal partition into exactly `k` clusters (`2 ≤ k < m`), or `None` when
/// no price gives `k` clusters within [`MAX_PRICES`] tries.
pub(crate) fn solve(p: Prefix<'_>, k: usize) -> Option<Vec<usize>> {
    let m = p.s0.len() - 1;
    if k < 2 || k >= m {
        return None;
    }
    let total = p.cost(0, m);
    if !(total.is_finite() && total > 0.0) {
        return None;
    }
    let mut pass = Pass::new(m);
    // High-resolution theory: D(k) ≈ D(1)/k², so the marginal gain near k is ≈ 2·D(1)/k³.
    let mut price = 2.0 * total / (k as f64).powi(3);
    // `many`: the dearest price known to give more than k clusters; `few`: the cheapest
    // known to give fewer.
    let (mut many, mut few): (Option<Priced>, Option<Priced>) = (None, None);
    // Whether `price` is the equal-cost price of the current bracket, and whether the
    // previous price came from interpolation.
    let (mut at_hull, mut interpolated) = (false, false);
    for _ in 0..MAX_PRICES {
        if !(price.is_finite() && price > 0.0) {
            return None;
        }
        let s = pass.run(p, price);
        if s.count == k {
            return Some(s.ends);
        }
        // At the price where the bracketing solutions cost the same, nothing strictly
        // between them was cheaper: D is linear across k.
        if at_hull && [&many, &few].iter().any(|b| b.as_ref().is_some_and(|b| b.count == s.count)) {
            return None;
        }
        if s.count > k {
            many = Some(s);
        } else {
            few = Some(s);
        }
        let kf = k as f64;
        (price, at_hull, interpolated) = match (&many, &few) {
            (Some(a), Some(b)) => {
                // Interpolate log price against log count, every other step; the hull price
                // in between keeps the bracket shrinking where the power law is poor.
                let t = (kf.ln() - (a.count as f64).ln()) / ((b.count as f64).ln() - (a.count as f64).ln());
                let interp = (a.price.ln() + t * (b.price.ln() - a.price.ln())).exp();
                if !interpolated && interp > a.price && interp < b.price {
                    (interp, false, true)
                } else {
                    ((b.cost - a.cost) / (a.count - b.count) as f64, true, false)
                }
            }
            // One side only: the count falls roughly like price^(-1/3).
            (Some(a), None) => (a.price * (a.count as f64 / kf).powi(3), false, false),
            (None, Some(b)) => (b.price * (b.count as f64 / kf).powi(3), false, false),
            (None, None) => return None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::kmeans::dp::support::{checked_cost, prefix, reference_cost};

    /// Ascending distinct values with a heavy-tailed spread, some repeated.
    fn data() -> impl Strategy<Value = Vec<(f64, u32)>> {
        crate::kmeans::dp::support::ascending(3000, 3..160, |x| x.powi(3) / 1e9)
    }

    proptest! {
        #[test]
        fn a_price_with_k_clusters_gives_the_optimum(v in data(), k in 2usize..24) {
            prop_assume!(v.len() > k);
            let s = prefix(&v);
            let p = s.view();
            if let Some(ends) = solve(p, k) {
                let (got, want) = (checked_cost(p, k, &ends), reference_cost(p, k));
                prop_assert!((got - want).abs() <= 1e-9 * (1.0 + want), "got {got}, optimum {want}");
            }
        }
    }

    #[test]
    fn smooth_data_is_solved_by_prices() {
        // 3000 values spread like a Gaussian (inverse-CDF-free: a cubic stretch of a grid),
        // where D(k) is strictly convex: every k must come from a price.
        let v: Vec<(f64, u32)> = (0..3000)
            .map(|i| ((f64::from(i) - 1499.5) / 1500.0).powi(3) + f64::from(i) * 1e-4)
            .map(|x| (x, 1 + (x.to_bits() % 3) as u32))
            .collect();
        let s = prefix(&v);
        let p = s.view();
        for k in [4, 5, 16, 64, 255] {
            let Some(ends) = solve(p, k) else { panic!("no price gave {k} clusters") };
            let want = checked_cost(p, k, &crate::kmeans::dp::layered_ends(p, k));
            let got = checked_cost(p, k, &ends);
            assert!((got - want).abs() <= 1e-9 * (1.0 + want), "k = {k}: got {got}, optimum {want}");
        }
    }

    #[test]
    fn equal_merges_leave_no_price_and_the_layers_take_over() {
        // Four identical, well separated pairs: D(2), D(3), D(4) lie on a line, so no price
        // gives exactly 3 clusters; the dispatcher must still return an optimum.
        let v: Vec<(f64, u32)> = [0.0, 1.0, 100.0, 101.0, 200.0, 201.0, 300.0, 301.0].iter().map(|&x| (x, 1)).collect();
        let s = prefix(&v);
        let p = s.view();
        assert_eq!(solve(p, 3), None);
        let ends = crate::kmeans::dp::optimal_ends(p, 3);
        let (got, want) = (checked_cost(p, 3, &ends), reference_cost(p, 3));
        assert!((got - want).abs() <= 1e-9 * want, "got {got}, optimum {want}");
    }
}
