//! Uniform quantize + pack and dequantize on a 4096 x 4096 f32 matrix, beside candle's GGML
//! block formats (Q8_0, Q4_0, Q4_K) on the same data.
//!
//! `cargo bench -p quant-benches --features candle --bench uniform`. Figures: docs/benchmarks.md.

use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ4K, BlockQ8_0, GgmlType};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;
use quant_benches::gaussian_weights;
use quant_core::{ParamDtype, Scheme, TableFit, UniformSpec, quantize};
use std::hint::black_box;
use std::time::Duration;

const N: usize = 4096;

fn ours() -> Vec<(&'static str, UniformSpec)> {
    let spec = |bits, scheme, g: Option<usize>, dtype| {
        let b = UniformSpec::builder().bits(bits).scheme(scheme).param_dtype(dtype);
        let b = match g {
            Some(size) => b.per_group(1, size),
            None => b.per_channel(0),
        };
        b.check().unwrap_or_else(|e| panic!("bench spec: {e}"))
    };
    let native = ParamDtype::Native;
    vec![
        ("q8 per-channel", spec(8, Scheme::SymmetricNarrow, None, native)),
        ("q4 group 32", spec(4, Scheme::SymmetricNarrow, Some(32), native)),
        // q4_0's layout: 4-bit symmetric codes and an f16 step per 32 weights (4.5 bits/weight).
        ("q4 group 32 f16", spec(4, Scheme::SymmetricNarrow, Some(32), ParamDtype::F16)),
        ("q4 group 128", spec(4, Scheme::AsymmetricGrid, Some(128), native)),
        // The quality modes: at least q4_k's SQNR at its 4.5 bits per weight.
        ("q4 group 32 q6 tables", spec(4, Scheme::AsymmetricGrid, Some(32), ParamDtype::Quantized { bits: 6, super_group: 8 })),
        ("q4 group 32 q6 tables least squares", {
            let q6 = ParamDtype::Quantized { bits: 6, super_group: 8 };
            let b = UniformSpec::builder().bits(4).scheme(Scheme::AsymmetricGrid).per_group(1, 32).param_dtype(q6);
            b.table_fit(TableFit::LeastSquares { iterations: 3 }).check().unwrap_or_else(|e| panic!("bench spec: {e}"))
        }),
    ]
}

/// A sum in 16 independent lanes (so it vectorises and is bound by memory, not by the add).
fn sum16(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for c in xs.chunks_exact(16) {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum()
}

fn candle_quantize<T: GgmlType>(x: &[f32]) -> Vec<T> {
    let mut blocks = vec![T::zeros(); x.len() / T::BLCK_SIZE];
    T::from_float(x, &mut blocks);
    blocks
}

fn bench(c: &mut Criterion) {
    let w: Array2<f32> = gaussian_weights(N, N, 42);
    let flat = w.as_slice().unwrap_or_else(|| unreachable!("fresh arrays are contiguous"));
    let bytes = (N * N * 4) as u64;
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap_or_else(|e| panic!("pool: {e}"));
    let all = rayon::ThreadPoolBuilder::new().build().unwrap_or_else(|e| panic!("pool: {e}"));
    let threads = all.current_num_threads();

    let mut g = c.benchmark_group("quantize_pack_4096x4096");
    g.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(bytes));
    for (name, spec) in ours() {
        g.bench_with_input(BenchmarkId::new(name, "1 thread"), &spec, |b, s| {
            b.iter(|| one.install(|| quantize(black_box(&w), s)));
        });
        g.bench_with_input(BenchmarkId::new(name, format!("{threads} threads")), &spec, |b, s| {
            b.iter(|| all.install(|| quantize(black_box(&w), s)));
        });
    }
    // The memory system's own speed in the same run: one read pass (a 16-lane sum), the
    // floor of any one-core quantize of this matrix.
    g.bench_function("memory read (f32 sum)", |b| b.iter(|| sum16(black_box(flat))));
    g.bench_function("candle q8_0", |b| b.iter(|| candle_quantize::<BlockQ8_0>(black_box(flat))));
    g.bench_function("candle q4_0", |b| b.iter(|| candle_quantize::<BlockQ4_0>(black_box(flat))));
    g.bench_function("candle q4_k", |b| b.iter(|| candle_quantize::<BlockQ4K>(black_box(flat))));
    g.finish();

    let mut g = c.benchmark_group("dequantize_4096x4096");
    g.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(bytes));
    let mut out = Array2::<f32>::zeros((N, N));
    for (name, spec) in ours() {
        let q = quantize(&w, &spec).unwrap_or_else(|e| panic!("{e}"));
        g.bench_function(BenchmarkId::new(name, "1 thread"), |b| {
            b.iter(|| one.install(|| q.dequantize_into(out.view_mut())));
        });
        g.bench_function(BenchmarkId::new(name, format!("{threads} threads")), |b| {
            b.iter(|| all.install(|| q.dequantize_into(out.view_mut())));
        });
    }
    // One write pass over the output, the floor of any one-core dequantize into it.
    g.bench_function("memory write (fill)", |b| b.iter(|| out.fill(black_box(1.0))));
    let mut ys = vec![0f32; N * N];
    let q8 = candle_quantize::<BlockQ8_0>(flat);
    g.bench_function("candle q8_0", |b| b.iter(|| BlockQ8_0::to_float(black_box(&q8), &mut ys)));
    let q4 = candle_quantize::<BlockQ4_0>(flat);
    g.bench_function("candle q4_0", |b| b.iter(|| BlockQ4_0::to_float(black_box(&q4), &mut ys)));
    let q4k = candle_quantize::<BlockQ4K>(flat);
    g.bench_function("candle q4_k", |b| b.iter(|| BlockQ4K::to_float(black_box(&q4k), &mut ys)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
