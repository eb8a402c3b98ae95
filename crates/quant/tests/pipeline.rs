//! The Q-BERT pipeline on a reduced configuration of the digits encoder, asserting the
//! findings the method exists for.

use quant::hessian::models::{Encoder, EncoderConfig};
use quant::pipeline::{Grouping, PipelineParams, QbertPipeline, QbertReport, StudyRow};
use quant::train::{TrainParams, train};

fn run() -> Result<QbertReport, quant::Error> {
    let d = quant::data::digits()?;
    let x = d.images.mapv(|p| f64::from(p) / 16.0);
    let labels: Vec<usize> = d.labels.iter().map(|&l| usize::from(l)).collect();
    let (train_set, test_set) = quant::data::split(labels.len(), 0.2, 7);
    let cfg = EncoderConfig { tokens: 8, features: 8, d_model: 16, heads: 2, d_ff: 32, layers: 1, classes: 10 };
    let model = Encoder::new(&x, &labels, cfg)?;
    let mut w = model.init(1);
    train(&model, &mut w, &train_set, &TrainParams { epochs: 15, batch_size: 32, lr: 3e-3, seed: 1 }, |_, _| {})?;
    let params = PipelineParams {
        subset_size: Some(32),
        direct_bits: vec![3, 2],
        groupings: vec![Grouping::PerTensor, Grouping::PerHead, Grouping::Finer(4)],
        mixed: vec![(2, 4)],
        random_draws: 5,
        finetune: Some(TrainParams { epochs: 3, batch_size: 64, lr: 1e-3, seed: 0 }),
        ..PipelineParams::default()
    };
    QbertPipeline::new(params)?.run(&model, w.view(), &train_set, &test_set, |_| {})
}

fn find<'a>(r: &'a QbertReport, method: &str, bits: &str, groups: &str) -> &'a StudyRow {
    r.rows
        .iter()
        .find(|row| row.method.starts_with(method) && row.bits == bits && row.groups.starts_with(groups))
        .unwrap_or_else(|| panic!("no row {method} {bits} {groups}"))
}

#[test]
fn the_findings_of_q_bert_hold_on_digits() -> Result<(), quant::Error> {
    let r = run()?;
    println!("{r}");
    let f32_acc = r.rows[0].accuracy;
    assert!(f32_acc > 0.9, "the encoder trains: {f32_acc}");
    // Mixed precision by Omega is at least as accurate as random assignment at the same size.
    let omega = find(&r, "mixed by Omega", "2/4", "2");
    let random = find(&r, "mixed at random", "2/4", "2");
    assert!(omega.bytes.abs_diff(random.bytes) <= omega.bytes / 50, "same size: {} vs {}", omega.bytes, random.bytes);
    assert!(omega.accuracy >= random.accuracy, "Omega {} vs random {}", omega.accuracy, random.accuracy);
    // Group-wise beats per-tensor at 2 and 3 bits (the finest grouping).
    for bits in ["2", "3"] {
        let tensor = find(&r, "direct", bits, "1");
        let groups = find(&r, "direct", bits, "8");
        assert!(groups.accuracy > tensor.accuracy, "{bits} bits: groups {} vs tensor {}", groups.accuracy, tensor.accuracy);
    }
    // Fine-tuning recovers accuracy at 2 bits.
    let two = find(&r, "direct", "2", "2");
    let tuned = two.finetuned.expect("fine-tuned");
    assert!(tuned > two.accuracy_act + 0.05, "fine-tuned {tuned} vs {}", two.accuracy_act);
    // The report is complete: every quantized layer has 10 eigenvalues and an Omega.
    assert!(r.layers.iter().all(|l| l.eigenvalues.len() == 10 && l.omega > 0.0));
    assert!(r.eigenvalue_svg().starts_with("<svg") && r.accuracy_svg().contains("<circle"));
    Ok(())
}
