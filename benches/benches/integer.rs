//! An int8 linear layer (int8 × int8 → int32, fixed-point requantization) against f32
//! `ndarray::dot` on the same shapes: a BERT-base projection (768 → 768) over a batch of 64
//! token vectors, and one MiniLM-sized layer (384 → 1536).
//!
//! `cargo bench -p quant-benches --bench integer`. Figures: docs/benchmarks.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;
use quant_benches::gaussian_weights;
use quant_core::integer::{ActivationQuant, QuantizedLinear, Requantization};
use std::hint::black_box;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap_or_else(|e| panic!("pool: {e}"));
    let mut g = c.benchmark_group("linear");
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for (batch, inp, out) in [(64usize, 768usize, 768usize), (64, 384, 1536)] {
        let w = gaussian_weights(out, inp, 7);
        let x = gaussian_weights(batch, inp, 8).mapv(|v| v * 50.0);
        let input = ActivationQuant::from_range(-3.0, 3.0).unwrap_or_else(|e| panic!("{e}"));
        let output = ActivationQuant::from_range(-2.0, 2.0).unwrap_or_else(|e| panic!("{e}"));
        let layer =
            QuantizedLinear::new(w.view(), None, input, output, Requantization::FixedPoint, false).unwrap_or_else(|e| panic!("{e}"));
        let xq: Array2<i8> = x.mapv(|v| input.quantize(v));
        let wt = w.t().to_owned();
        let shape = format!("{batch}x{inp}x{out}");
        g.throughput(Throughput::Elements((batch * inp * out) as u64));
        g.bench_function(BenchmarkId::new("ours int8 forward", &shape), |b| {
            b.iter(|| one.install(|| layer.forward(black_box(xq.view()))));
        });
        g.bench_function(BenchmarkId::new("ndarray f32 dot", &shape), |b| b.iter(|| black_box(&x).dot(black_box(&wt))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
