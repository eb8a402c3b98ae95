//! The BERT-family model on all-MiniLM-L6-v2's shape, one thread: forward (sentence
//! embeddings), the gradient of the self-distillation loss and its exact Hessian-vector
//! product (dual numbers), over every tensor and over the 36 encoder weight matrices, for the
//! first 8 and 32 sentences of data/wordnet/calibration.txt; then embedding 4,000 sentences
//! with every core.
//!
//! With the real checkpoint (`QUANT_MINILM=/path/to/model.safetensors`, or the copy in
//! target/minilm that `cargo test --release -p quant-cli --test minilm -- --ignored`
//! downloads) the real model and tokenizer run; without it, a seeded random model of the same
//! shape on token ids of the same lengths (the same arithmetic).
//!
//! `RAYON_NUM_THREADS=1 cargo bench -p quant-benches --bench bert`; the torch peer is
//! `python3 scripts/bert_timing.py`. Results: docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::Array1;
use quant::hessian::{Autodiff, Batch, Model, Product};
use quant::models::bert::{Bert, BertConfig, BertTokenizer, Pooling, PoolingMode, SelfDistillation, Sentence, TokenBatch};

fn model_dir() -> Option<PathBuf> {
    quant_benches::minilm_checkpoint().and_then(|file| file.parent().map(Path::to_path_buf))
}

fn sentences() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/wordnet");
    let mut out: Vec<String> =
        std::fs::read_to_string(root.join("calibration.txt")).unwrap_or_default().lines().map(String::from).collect();
    for line in std::fs::read_to_string(root.join("pairs.tsv")).unwrap_or_default().lines() {
        out.extend(line.split('\t').map(String::from));
    }
    out
}

/// The model and a function from texts to token batches.
/// Texts to token batches (the tokenizer, or synthetic ids of realistic lengths).
type Encode = Box<dyn Fn(&[String]) -> TokenBatch + Send + Sync>;

fn setup() -> (Bert<f32>, Encode, &'static str) {
    if let Some(dir) = model_dir()
        && let (Ok(model), Ok(tok)) = (Bert::<f32>::load(&dir), BertTokenizer::from_dir(&dir, 512))
    {
        return (model, Box::new(move |t: &[String]| tok.encode(t).unwrap_or_default()), "all-MiniLM-L6-v2");
    }
    let cfg = BertConfig { hidden_size: 384, num_attention_heads: 12, num_hidden_layers: 6, intermediate_size: 1536, ..BertConfig::base() };
    let model = Bert::<f32>::random(cfg, Pooling { mode: PoolingMode::Mean, normalize: true }, 1).unwrap_or_else(|e| panic!("{e}"));
    // Lengths of the real tokenization: about 1.3 tokens per word plus [CLS] and [SEP].
    let fake = |t: &[String]| {
        let s = t
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let len = 2 + (text.split_whitespace().count() * 13).div_ceil(10);
                Sentence { ids: (0..len).map(|j| ((i * 7919 + j * 104_729) % 30_000 + 100) as u32).collect(), type_ids: vec![0; len] }
            })
            .collect();
        TokenBatch::new(s).unwrap_or_default()
    };
    (model, Box::new(fake), "random, MiniLM-shaped")
}

fn benches(c: &mut Criterion) {
    let (model, encode, what) = setup();
    let texts = sentences();
    if texts.len() < 4000 {
        eprintln!("data/wordnet is missing; nothing to run");
        return;
    }
    for n in [8, 32] {
        let batch = encode(&texts[..n]);
        eprintln!(
            "{what}: {n} sentences, {} tokens (longest {})",
            batch.tokens(),
            batch.sentences().iter().map(|s| s.ids.len()).max().unwrap_or(0)
        );
        let loss = SelfDistillation::new(model.clone(), batch.clone()).unwrap_or_else(|e| panic!("{e}"));
        let w = loss.weights().to_owned();
        let v = quant::quantizers::rng::normal::<f32>(w.len(), 1, 0);
        let mut g = Array1::zeros(w.len());
        let mut group = c.benchmark_group(format!("minilm_{n}"));
        group.sample_size(10);
        group.bench_function("forward", |b| b.iter(|| model.embed(&batch)));
        group.bench_function("gradient", |b| b.iter(|| loss.loss_grad_into(w.view(), Batch::All, g.view_mut())));
        group.bench_function("hvp_exact", |b| b.iter(|| loss.hvp_into(w.view(), v.view(), Batch::All, g.view_mut())));
        // Over the 36 encoder weight matrices only (the rest held at the loaded weights), as
        // the torch peer differentiates.
        let mats =
            SelfDistillation::with_variables(model.clone(), batch.clone(), &model.weight_matrices()).unwrap_or_else(|e| panic!("{e}"));
        let wm = mats.weights().to_owned();
        let vm = quant::quantizers::rng::normal::<f32>(wm.len(), 1, 0);
        let mut gm = Array1::zeros(wm.len());
        group.bench_function("gradient_matrices", |b| b.iter(|| mats.loss_grad_into(wm.view(), Batch::All, gm.view_mut())));
        group.bench_function("hvp_exact_matrices", |b| b.iter(|| mats.hvp_into(wm.view(), vm.view(), Batch::All, gm.view_mut())));
        // One block's product from a prepared curvature (the forward pass kept): the value
        // matrix of layers 0, 3 and 5, and the FFN output of layer 3; the preparation itself.
        group.bench_function("curvature_prepare", |b| b.iter(|| mats.curvature(wm.view(), Batch::All).map(|c| c.blocks().len())));
        let curvature = mats.curvature(wm.view(), Batch::All).unwrap_or_else(|e| panic!("{e}"));
        for (layer, part) in [(0, "attention.self.value"), (3, "attention.self.value"), (3, "output.dense"), (5, "attention.self.value")] {
            let name = format!("encoder.layer.{layer}.{part}.weight");
            let Some(b) = mats.blocks().iter().position(|x| x.name().ends_with(&name)) else { continue };
            let len = mats.blocks()[b].len();
            let vb = quant::quantizers::rng::normal::<f32>(len, 2, b as u64);
            let mut ob = Array1::zeros(len);
            let short = format!("block_hvp/l{layer}.{}", part.rsplit('.').next().unwrap_or(part));
            group.bench_function(short, |bn| bn.iter(|| curvature.block_product_into(Product::Hessian, b, vb.view(), ob.view_mut())));
        }
        // Eight directions for layer 3's value matrix: one at a time, stacked in one
        // forward-mode pass (then a reverse pass each), and their quadratic forms by forward
        // mode alone.
        if let Some(b) = mats.blocks().iter().position(|x| x.name().ends_with("encoder.layer.3.attention.self.value.weight")) {
            let len = mats.blocks()[b].len();
            let vs = ndarray::Array2::from_shape_fn((8, len), |(i, j)| ((i * 7919 + j * 104_729) % 2003) as f32 / 1001.5 - 1.0);
            let mut out = ndarray::Array2::zeros((8, len));
            let mut forms = Array1::zeros(8);
            group.bench_function("block_hvp_x8/one_at_a_time", |bn| {
                bn.iter(|| {
                    for (v, o) in vs.outer_iter().zip(out.outer_iter_mut()) {
                        let _ = curvature.block_product_into(Product::Hessian, b, v, o);
                    }
                })
            });
            group.bench_function("block_hvp_x8/stacked", |bn| {
                bn.iter(|| curvature.block_products_into(Product::Hessian, b, vs.view(), out.view_mut()))
            });
            group.bench_function("block_quadratic_x8/forward_mode", |bn| {
                bn.iter(|| curvature.block_quadratic_forms_into(Product::Hessian, b, vs.view(), forms.view_mut()))
            });
        }
        group.finish();
    }
    // Throughput: 4,000 sentences with every core (tokenizing included for the real model);
    // left out when a filter is given that does not name it.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-') && a != "--bench").collect();
    let named = |what: &str| filters.is_empty() || filters.iter().any(|f| what.contains(f.as_str()));
    if named("minilm_qbert") {
        qbert_statistics(&model, &encode, &texts, what);
    }
    if !named("minilm_throughput") {
        return;
    }
    let many = &texts[..4000];
    let start = Instant::now();
    let mut tokens = 0;
    let chunks: Vec<&[String]> = many.chunks(64).collect();
    {
        use rayon::prelude::*;
        let counts: Vec<usize> = chunks
            .par_iter()
            .map(|c| {
                let b = encode(c);
                let _ = model.embed(&b);
                b.tokens()
            })
            .collect();
        tokens += counts.iter().sum::<usize>();
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{what}: embedded 4000 sentences ({tokens} tokens) in {secs:.2} s with {} threads", rayon::current_num_threads());
}

/// Q-BERT's statistics on the 36 weight matrices: 10 subsets of 32 calibration sentences,
/// the top eigenvalue of each block by Lanczos to 1e-3 relative residual, every core; one
/// run, timed (the figure of issue 22).
fn qbert_statistics(model: &Bert<f32>, encode: &Encode, texts: &[String], what: &str) {
    use quant::hessian::{Lanczos, QbertParams, TopEigen};
    let batch = encode(&texts[..320]);
    let loss = SelfDistillation::with_variables(model.clone(), batch, &model.weight_matrices()).unwrap_or_else(|e| panic!("{e}"));
    let lanczos = Lanczos::builder().tol(1e-3).smallest(false).check().unwrap_or_else(|e| panic!("{e}"));
    let params = QbertParams { subsets: 10, seed: 0, solver: TopEigen::Lanczos(lanczos), product: Product::Hessian, warm_start: false };
    let start = Instant::now();
    let stats = quant::hessian::qbert_statistics(&loss, loss.weights(), &params).unwrap_or_else(|e| panic!("{e}"));
    let secs = start.elapsed().as_secs_f64();
    let hvps: usize = stats.iter().map(|s| s.hvps).sum();
    let converged = stats.iter().flat_map(|s| &s.converged).filter(|&&c| c).count();
    eprintln!(
        "{what}: Q-BERT statistics, 36 matrices x 10 subsets of 32 sentences: {secs:.1} s with {} threads, {hvps} block products, {converged}/360 converged",
        rayon::current_num_threads()
    );
    for s in &stats {
        eprintln!("  {:<55} omega {:>10.4e}  mean {:>10.4e}  std {:>10.4e}  products {}", s.name, s.omega, s.mean, s.std, s.hvps);
    }
}

criterion_group!(group, benches);
criterion_main!(group);
