//! Exact budget-constrained bit allocation for 100, 1,000 and 10,000 layers x 4 choices
//! ({2, 3, 4, 8} bits, group-wise scales), with a byte budget of an average of 4 bits.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quant_mixed::{Budget, LayerOption, LayerSpec, Problem, Resource};

/// Transformer-like layers: BERT-base shapes repeated (Q, K, V, O at 768x768, FFN in and out
/// at 768x3072), 4 options each with one f32 scale per group of 128, seeded sensitivities
/// that fall with the width.
fn layers(n: usize) -> Vec<LayerSpec> {
    let shapes = [768u64 * 768, 768 * 768, 768 * 768, 768 * 768, 768 * 3072, 3072 * 768];
    (0..n)
        .map(|i| {
            let params = shapes[i % shapes.len()];
            let curvature = 1.0 + ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64 * 20.0;
            let options = [2u8, 3, 4, 8]
                .iter()
                .map(|&b| LayerOption {
                    bits: b,
                    group_size: Some(128),
                    bytes: params * u64::from(b) / 8 + params / 128 * 4,
                    bops: 0,
                    sensitivity: curvature * params as f64 * 4f64.powi(-i32::from(b)),
                })
                .collect();
            LayerSpec::new(format!("layer{i}"), params, options)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocation");
    g.sample_size(10).measurement_time(std::time::Duration::from_secs(5));
    for n in [100usize, 1000, 10_000] {
        let problem = Problem::new(layers(n)).unwrap_or_else(|e| panic!("{e}"));
        let budget: u64 = problem.layers().iter().map(|l| l.params * 4 / 8 + l.params / 128 * 4).sum();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("solve", n), &n, |b, _| b.iter(|| problem.solve(Budget::Bytes(budget))));
        if n <= 1000 {
            g.bench_with_input(BenchmarkId::new("frontier", n), &n, |b, _| b.iter(|| problem.frontier(Resource::Bytes).map(|f| f.len())));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
