//! The Q-BERT pipeline and its stages on the digits encoder: one training epoch, one exact
//! HVP on a 64-sample subset, the sensitivity + allocation + quantization of
//! `QbertPipeline::quantize` (3 subsets of 32), and the whole study on the reduced
//! configuration of the integration test.

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::Array1;
use quant::hessian::{Autodiff, Batch, Model};
use quant::models::{Encoder, EncoderConfig};
use quant::pipeline::{Grouping, PipelineParams, QbertPipeline, Strategy};
use quant::train::{TrainParams, train};

fn setup(cfg: EncoderConfig) -> (Encoder<f64>, Array1<f64>, Vec<usize>, Vec<usize>) {
    let d = quant::data::digits().unwrap_or_else(|e| panic!("{e}"));
    let x = d.images.mapv(|p| f64::from(p) / 16.0);
    let labels: Vec<usize> = d.labels.iter().map(|&l| usize::from(l)).collect();
    let (tr, te) = quant::data::split(labels.len(), 0.2, 7).unwrap_or_else(|e| panic!("{e}"));
    let m = Encoder::new(&x, &labels, cfg).unwrap_or_else(|e| panic!("{e}"));
    let mut w = m.init(1);
    train(&m, &mut w, &tr, &TrainParams { epochs: 3, batch_size: 32, lr: 2e-3, seed: 1 }, |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    (m, w, tr, te)
}

fn bench(c: &mut Criterion) {
    let full = EncoderConfig { tokens: 8, features: 8, d_model: 32, heads: 4, d_ff: 64, layers: 2, classes: 10 };
    let (m, w, tr, te) = setup(full);
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.bench_function("train_one_epoch", |b| {
        b.iter(|| {
            let mut w1 = w.clone();
            train(&m, &mut w1, &tr, &TrainParams { epochs: 1, batch_size: 32, lr: 2e-3, seed: 1 }, |_, _| {})
        })
    });
    let v = Array1::from_shape_fn(m.dim(), |i| ((i * 7919) % 101) as f64 / 101.0 - 0.5);
    let mut out = Array1::zeros(m.dim());
    g.bench_function("exact_hvp_64_samples", |b| b.iter(|| m.hvp_into(w.view(), v.view(), Batch::Indices(&tr[..64]), out.view_mut())));
    let quick = QbertPipeline::new(PipelineParams { subsets: 3, subset_size: Some(32), ..PipelineParams::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    g.bench_function("statistics_and_quantize", |b| {
        b.iter(|| quick.quantize(&m, w.view(), &tr, &Strategy::Ranking { low: 2, high: 4, share: 0.5 }, Grouping::PerHead))
    });
    let small = EncoderConfig { d_model: 16, heads: 2, d_ff: 32, layers: 1, ..full };
    let (ms, ws, trs, tes) = setup(small);
    let study = QbertPipeline::new(PipelineParams {
        subset_size: Some(32),
        direct_bits: vec![3, 2],
        mixed: vec![(2, 4)],
        ..PipelineParams::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    g.bench_function("whole_study_reduced", |b| b.iter(|| study.run(&ms, ws.view(), &trs, &tes, |_| {})));
    let _ = te;
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
