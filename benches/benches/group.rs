//! The matrix-vector product straight from packed codes (4096 x 4096, N(0, 0.02²) weights,
//! 4-bit, groups of 32 along rows, f16 steps: q4_0's layout and size) against
//! dequantize-then-multiply and the f32 product, one thread.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array1;
use quant_benches::gaussian_weights;
use quant_core::{ParamDtype, Scheme, UniformSpec, quantize};

fn bench(c: &mut Criterion) {
    let n = 4096;
    let w = gaussian_weights(n, n, 7);
    let x = Array1::from_shape_fn(n, |j| ((j * 7919) % 101) as f32 / 101.0 - 0.5);
    let spec = UniformSpec::builder()
        .bits(4)
        .scheme(Scheme::SymmetricNarrow)
        .per_group(1, 32)
        .param_dtype(ParamDtype::F16)
        .check()
        .unwrap_or_else(|e| panic!("{e}"));
    let q = quantize(&w, &spec).unwrap_or_else(|e| panic!("{e}"));
    let mut y = Array1::zeros(n);
    let mut g = c.benchmark_group("matvec_4096");
    g.throughput(Throughput::Elements((n * n) as u64));
    g.sample_size(20);
    g.bench_function("packed_4bit_g32", |b| b.iter(|| quant_core::matvec(&q, x.view(), y.view_mut())));
    g.bench_function("dequantize_then_dot", |b| b.iter(|| q.dequantize().into_dimensionality::<ndarray::Ix2>().map(|d| d.dot(&x))));
    g.bench_function("f32_dot", |b| b.iter(|| w.dot(&x)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
