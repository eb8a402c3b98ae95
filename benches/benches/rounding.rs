//! Rounding a MiniLM FFN-shaped matrix (1536 x 384, f32) at 4 bits in groups of 32: round to
//! nearest (the peers: min-max ranges, and the MSE range search), the importance-weighted fit, and
//! GPTQ with a correlated layer Hessian (plain group fits, and the CLI's importance-weighted ones).
//!
//! `cargo bench -p quant-benches --bench rounding`. Figures: docs/benchmarks.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;
use quant::ptq::{GptqHessian, GptqParams};
use quant_benches::gaussian_weights;
use quant_core::{ParamDtype, RangeEstimator, UniformSpec, quantize, quantize_weighted};
use std::hint::black_box;
use std::time::Duration;

const ROWS: usize = 1536;
const COLS: usize = 384;

fn bench(c: &mut Criterion) {
    let w: Array2<f32> = gaussian_weights(ROWS, COLS, 7);
    // Inputs with a few dominant features, as activations have: X = Z · diag(scale).
    let z: Array2<f32> = gaussian_weights(2048, COLS, 8);
    let x = Array2::from_shape_fn(z.dim(), |(i, j)| {
        f64::from(z[[i, j]]) * if j % 37 == 0 { 8.0 } else { 1.0 } + 0.3 * f64::from(z[[i, (j + 1) % COLS]])
    });
    let h = x.t().dot(&x);
    let importance: Vec<f32> = h.diag().iter().map(|&v| v as f32).collect();
    let prepared = GptqHessian::new(h.view(), &GptqParams::default()).unwrap_or_else(|e| panic!("hessian: {e}"));
    // The CLI's default: groups fitted by the importance-weighted fit as GPTQ reaches them.
    let importance_fit = GptqParams { importance_fit: true, ..GptqParams::default() };
    let weighted_groups = GptqHessian::new(h.view(), &importance_fit).unwrap_or_else(|e| panic!("hessian: {e}"));
    let mut group = c.benchmark_group("rounding 1536x384 4-bit group 32");
    group.throughput(Throughput::Elements((ROWS * COLS) as u64)).measurement_time(Duration::from_secs(3)).sample_size(10);
    for (label, dtype) in [("f32 params", ParamDtype::Native), ("q6 tables", ParamDtype::Quantized { bits: 6, super_group: 8 })] {
        let spec = UniformSpec::builder().bits(4).per_group(1, 32).param_dtype(dtype).check().unwrap_or_else(|e| panic!("spec: {e}"));
        group.bench_function(BenchmarkId::new("nearest", label), |b| b.iter(|| black_box(quantize(&w, &spec))));
        // Round to nearest with the MSE range search (the CLI's default at 3 bits and below).
        let mse = UniformSpec::builder().bits(4).per_group(1, 32).param_dtype(dtype).range(RangeEstimator::Mse { steps: 100 }).check();
        let mse = mse.unwrap_or_else(|e| panic!("spec: {e}"));
        group.bench_function(BenchmarkId::new("nearest, mse range", label), |b| b.iter(|| black_box(quantize(&w, &mse))));
        group.bench_function(BenchmarkId::new("weighted", label), |b| b.iter(|| black_box(quantize_weighted(&w, &spec, &importance))));
        group.bench_function(BenchmarkId::new("gptq", label), |b| b.iter(|| black_box(prepared.quantize(w.view(), &spec))));
        group.bench_function(BenchmarkId::new("gptq, weighted group fits", label), |b| {
            b.iter(|| black_box(weighted_groups.quantize(w.view(), &spec)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
