//! Ternary, binary and k-means throughput on 1M heavy-tailed weights.
//!
//! `cargo bench -p quant-benches --bench codebook`. Figures: docs/benchmarks.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array1;
use quant_benches::heavy_tailed_weights;
use quant_core::{KMeansAlgorithm, KMeansInit, TernarySpec, binarize, kmeans_1d, ternarize};
use std::hint::black_box;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let n = 1 << 20;
    let w = heavy_tailed_weights(n, 1);
    let w32: Array1<f32> = w.iter().map(|&v| v as f32).collect();
    let mut g = c.benchmark_group("ternary_binary_1M");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes((n * 4) as u64));
    let spec = TernarySpec::default();
    g.bench_function("twn", |b| b.iter(|| ternarize(black_box(&w32), &spec)));
    g.bench_function("binary", |b| b.iter(|| binarize(black_box(&w32), &spec)));
    g.finish();

    let mut g = c.benchmark_group("kmeans_1M");
    g.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(n as u64));
    for k in [4usize, 16, 256] {
        g.bench_with_input(BenchmarkId::new("exact", k), &k, |b, &k| {
            b.iter(|| kmeans_1d(black_box(&w), k, KMeansInit::Linear, KMeansAlgorithm::Exact))
        });
        g.bench_with_input(BenchmarkId::new("lloyd", k), &k, |b, &k| {
            b.iter(|| kmeans_1d(black_box(&w), k, KMeansInit::Linear, KMeansAlgorithm::default()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
