//! The Q-BERT pipeline on the embedded UCI digits data.
//!
//! Each 8x8 image is a sequence of 8 tokens (its rows) of 8 pixels. A small BERT-style
//! encoder is trained (seeded, Adam), then the pipeline measures each weight matrix's Hessian
//! sensitivity (top eigenvalue over 10 data subsets, Omega = |mean| + std) and reproduces
//! Q-BERT's study in miniature: direct quantization at 8/4/3/2 bits with one range per
//! matrix, per head and finer; mixed 2/3 and 2/4 bits chosen by Omega, at random and by the
//! exact budget optimum; with and without quantization-aware fine-tuning.
//!
//! `cargo run --release --example qbert`

use std::time::Instant;

use quant::hessian::Batch;
use quant::models::{Encoder, EncoderConfig};
use quant::pipeline::{PipelineParams, QbertPipeline};
use quant::train::{TrainParams, train};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let digits = quant::data::digits()?;
    let x = digits.images.mapv(|p| f64::from(p) / 16.0);
    let labels: Vec<usize> = digits.labels.iter().map(|&l| usize::from(l)).collect();
    let (train_set, test_set) = quant::data::split(labels.len(), 0.2, 7)?;
    let cfg = EncoderConfig { tokens: 8, features: 8, d_model: 32, heads: 4, d_ff: 64, layers: 2, classes: 10 };
    let model = Encoder::new(&x, &labels, cfg)?;
    let mut w = model.init(1);
    println!("digits: {} train / {} test images as 8 tokens of 8 pixels", train_set.len(), test_set.len());
    println!("encoder: {} layers, d_model {}, {} heads, d_ff {}: {} parameters", cfg.layers, cfg.d_model, cfg.heads, cfg.d_ff, w.len());

    let params = TrainParams { epochs: 30, batch_size: 32, lr: 2e-3, seed: 1 };
    train(&model, &mut w, &train_set, &params, |epoch, loss| {
        if epoch % 5 == 4 || epoch == 0 {
            println!("  epoch {:>2}: loss {loss:.4}", epoch + 1);
        }
    })?;
    println!(
        "trained in {:.1} s: test accuracy {:.2}%",
        start.elapsed().as_secs_f64(),
        100.0 * model.accuracy(w.view(), Batch::Indices(&test_set))?
    );

    let pipeline = QbertPipeline::new(PipelineParams::default())?;
    let report =
        pipeline.run(&model, w.view(), &train_set, &test_set, |stage| println!("  [{:>5.1} s] {stage}", start.elapsed().as_secs_f64()))?;
    println!("\n{report}\n");

    let dir = std::path::Path::new("target").join("qbert");
    std::fs::create_dir_all(&dir)?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    let eig = dir.join("eigenvalues.svg");
    std::fs::write(&eig, report.eigenvalue_svg())?;
    let acc = dir.join("accuracy_vs_size.svg");
    std::fs::write(&acc, report.accuracy_svg())?;
    println!("wrote {}, {} and {}", json.display(), eig.display(), acc.display());
    println!("total {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
