//! Time and inertia of 1-D k-means on heavy-tailed weights (N(0, 0.02²) with 1% from
//! N(0, 0.2²)): our exact optimum and our Lloyd (linear init, up to 300 iterations) beside a
//! plain O(n·k) Lloyd reference and the `ckmeans` crate. Prints a Markdown table.
//!
//! `cargo bench -p quant-benches --bench codebook_report` (add `-- --large` for 16M weights).

use quant_benches::heavy_tailed_weights;
use quant_core::{KMeansAlgorithm, KMeansInit, kmeans_1d};
use std::time::Instant;

/// Textbook Lloyd: every iteration assigns each point to its nearest centroid by scanning all
/// k centroids, then recomputes the means; linear initialisation over [min, max] of the
/// non-zero values, like ours.
fn plain_lloyd(v: &[f64], k: usize, max_iter: usize) -> (f64, usize) {
    let nz: Vec<f64> = v.iter().copied().filter(|&x| x != 0.0).collect();
    let lo = nz.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = nz.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut c: Vec<f64> = (0..k).map(|j| if k == 1 { (lo + hi) / 2.0 } else { lo + (hi - lo) * j as f64 / (k - 1) as f64 }).collect();
    let mut labels = vec![usize::MAX; v.len()];
    let mut it = 0;
    while it < max_iter {
        it += 1;
        let mut changed = false;
        let (mut sum, mut cnt) = (vec![0.0; k], vec![0usize; k]);
        for (x, l) in v.iter().zip(labels.iter_mut()) {
            let best = (0..k).min_by(|&a, &b| (x - c[a]).abs().total_cmp(&(x - c[b]).abs())).unwrap_or(0);
            changed |= *l != best;
            *l = best;
            sum[best] += x;
            cnt[best] += 1;
        }
        if !changed {
            break;
        }
        for j in 0..k {
            if cnt[j] > 0 {
                c[j] = sum[j] / cnt[j] as f64;
            }
        }
    }
    let inertia = v.iter().zip(&labels).map(|(x, &l)| (x - c[l]).powi(2)).sum();
    (inertia, it)
}

fn ckmeans_inertia(v: &[f64], k: u8) -> Option<f64> {
    let clusters = ckmeans::ckmeans(v, k).ok()?;
    Some(
        clusters
            .iter()
            .map(|c| {
                let m = c.iter().sum::<f64>() / c.len() as f64;
                c.iter().map(|x| (x - m).powi(2)).sum::<f64>()
            })
            .sum(),
    )
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

fn main() -> Result<(), quant_core::QuantError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let sizes: &[usize] = if args.iter().any(|a| a == "--large") { &[1_000_000, 16_000_000] } else { &[1_000_000] };
    println!("| n | k | method | time s | iterations | inertia |\n|---|---|---|---|---|---|");
    for &n in sizes {
        let v = heavy_tailed_weights(n, 1);
        for k in [4usize, 16, 256] {
            let (e, t) = timed(|| kmeans_1d(&v, k, KMeansInit::Linear, KMeansAlgorithm::Exact));
            println!("| {n} | {k} | ours exact | {t:.3} | - | {:.6e} |", e?.inertia);
            let (l, t) = timed(|| kmeans_1d(&v, k, KMeansInit::Linear, KMeansAlgorithm::default()));
            let l = l?;
            println!("| {n} | {k} | ours Lloyd (linear init) | {t:.3} | {} | {:.6e} |", l.iterations, l.inertia);
            // The plain reference costs n·k per iteration; cap it so the report stays short.
            let cap = if n * k > 20_000_000 { 10 } else { 300 };
            let ((pi, pit), t) = timed(|| plain_lloyd(&v, k, cap));
            println!("| {n} | {k} | plain O(nk) Lloyd (cap {cap}) | {t:.3} | {pit} | {pi:.6e} |");
            if n <= 1_000_000 && k <= 16 {
                let (ci, t) = timed(|| ckmeans_inertia(&v, k as u8));
                match ci {
                    Some(ci) => println!("| {n} | {k} | ckmeans crate | {t:.3} | - | {ci:.6e} |"),
                    None => println!("| {n} | {k} | ckmeans crate | failed | - | - |"),
                }
            }
        }
    }
    Ok(())
}
