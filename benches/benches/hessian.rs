//! Gradient, exact HVP (forward over reverse) and finite-difference HVP on the digits MLP
//! (64-128-128-10, full batch of 1797): f32 with ReLU, tanh and GELU, and f64 with GELU.
//! Run on one thread (`RAYON_NUM_THREADS=1`; the products are single-threaded anyway).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array1;
use quant::hessian::{Autodiff, Batch, Model, Product, Real, finite_difference_hvp};
use quant::models::Activation;
use quant_benches::digits_mlp;

fn bench<F: Real<Base = F>>(c: &mut Criterion, name: &str, activation: Activation) {
    let (m, w) = digits_mlp::<F>(activation);
    let v = Array1::from_shape_fn(m.dim(), |i| F::cast(((i * 7919) % 101) as f64 / 101.0 - 0.5));
    let mut out = Array1::zeros(m.dim());
    let mut g = c.benchmark_group(format!("digits_mlp_{name}"));
    g.throughput(Throughput::Elements(m.samples() as u64));
    g.bench_function("gradient", |b| b.iter(|| m.loss_grad_into(w.view(), Batch::All, out.view_mut())));
    g.bench_function("hvp_exact", |b| b.iter(|| m.hvp_into(w.view(), v.view(), Batch::All, out.view_mut())));
    g.bench_function("hvp_finite_difference", |b| b.iter(|| finite_difference_hvp(&m, w.view(), v.view(), Batch::All, out.view_mut())));
    // Block products from a prepared curvature (forward and reverse passes kept): each layer's
    // weight matrix, and the preparation itself.
    g.bench_function("curvature_prepare", |b| b.iter(|| m.curvature(w.view(), Batch::All).map(|c| c.blocks().len())));
    let curvature = m.curvature(w.view(), Batch::All).unwrap_or_else(|e| panic!("{e}"));
    for block in m.weight_blocks() {
        let len = block.len();
        let vb = v.slice(ndarray::s![..len]).to_owned();
        let mut ob = Array1::zeros(len);
        g.bench_function(format!("block_hvp/{}", m.blocks()[block.block].name()), |b| {
            b.iter(|| curvature.block_product_into(Product::Hessian, block.block, vb.view(), ob.view_mut()))
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench::<f32>(c, "f32_relu", Activation::Relu);
    bench::<f32>(c, "f32_tanh", Activation::Tanh);
    bench::<f32>(c, "f32_gelu", Activation::Gelu);
    bench::<f64>(c, "f64_gelu", Activation::Gelu);
}

criterion_group!(name = group; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(group);
