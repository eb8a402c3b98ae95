//! The Q-BERT pipeline on a reduced configuration of the digits encoder, asserting the
//! findings the method exists for.

use quant_models::{Encoder, EncoderConfig};
use quant_qbert::pipeline::{Grouping, PipelineParams, QbertPipeline, QbertReport, StudyRow};
use quant_qbert::train::{TrainParams, train};

/// Inputs, labels, training and test indices.
type Data = (ndarray::Array2<f64>, Vec<usize>, Vec<usize>, Vec<usize>);
/// A model, its parameters, training and test indices.
type Trained = (Encoder<f64>, ndarray::Array1<f64>, Vec<usize>, Vec<usize>);

/// Digits pixels scaled to [0, 1], labels, and a seeded train/test split.
fn digits(seed: u64) -> Result<Data, quant_qbert::QbertError> {
    let d = quant_qbert::data::digits()?;
    let x = d.images.mapv(|p| f64::from(p) / 16.0);
    let labels: Vec<usize> = d.labels.iter().map(|&l| usize::from(l)).collect();
    let (train_set, test_set) = quant_qbert::data::split(labels.len(), 0.2, seed)?;
    Ok((x, labels, train_set, test_set))
}

/// The reduced encoder (16 wide, 2 heads, 1 layer), trained for 15 epochs.
fn trained_encoder() -> Result<Trained, quant_qbert::QbertError> {
    let (x, labels, train_set, test_set) = digits(7)?;
    let cfg = EncoderConfig { tokens: 8, features: 8, d_model: 16, heads: 2, d_ff: 32, layers: 1, classes: 10 };
    let model = Encoder::new(&x, &labels, cfg)?;
    let mut w = model.init(1);
    train(&model, &mut w, &train_set, &TrainParams { epochs: 15, batch_size: 32, lr: 3e-3, seed: 1 }, |_, _| {})?;
    Ok((model, w, train_set, test_set))
}

fn run() -> Result<QbertReport, quant_qbert::QbertError> {
    let (model, w, train_set, test_set) = trained_encoder()?;
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
fn the_findings_of_q_bert_hold_on_digits() -> Result<(), quant_qbert::QbertError> {
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

#[test]
fn quantize_for_deployment_under_a_budget_and_on_the_mlp() -> Result<(), quant_qbert::QbertError> {
    use quant_core::MethodKind;
    use quant_hessian::{Batch, Model};
    use quant_models::{Activation, Mlp};
    use quant_qbert::pipeline::{Budget, Strategy};
    let (x, labels, train_set, test_set) = digits(3)?;
    let model = Mlp::new(&x, &labels, &[32, 32], 10, Activation::Tanh)?;
    let mut w = model.init(2);
    train(&model, &mut w, &train_set, &TrainParams { epochs: 10, batch_size: 32, lr: 3e-3, seed: 2 }, |_, _| {})?;
    let f32_acc = model.accuracy(w.view(), Batch::Indices(&test_set))?;
    let pipeline = QbertPipeline::new(PipelineParams { subset_size: Some(32), embedding_bits: None, ..PipelineParams::default() })?;
    // The exact optimum over {2, 3, 4, 8} bits within a compression ratio of 4 against f32.
    // Ratio 6 (2,310 bytes) is infeasible: the f32 classifier and biases take 1,576 bytes and
    // the two hidden matrices need 800 even at 2 bits.
    let infeasible = pipeline.quantize(
        &model,
        w.view(),
        &train_set,
        &Strategy::Budget { choices: vec![2, 3, 4, 8], budget: Budget::CompressionRatio(6.0) },
        Grouping::PerTensor,
    );
    assert!(matches!(infeasible, Err(quant_qbert::QbertError::Mixed(quant_mixed::MixedError::Infeasible { .. }))));
    let q = pipeline.quantize(
        &model,
        w.view(),
        &train_set,
        &Strategy::Budget { choices: vec![2, 3, 4, 8], budget: Budget::CompressionRatio(4.0) },
        Grouping::PerTensor,
    )?;
    assert!(q.compression >= 4.0, "compression {}", q.compression);
    assert_eq!(
        q.bytes,
        q.layers.iter().map(|l| l.bytes).sum::<u64>() + 4 * (model.dim() as u64 - q.layers.iter().map(|l| l.params as u64).sum::<u64>())
    );
    let acc = model.accuracy(q.weights.view(), Batch::Indices(&test_set))?;
    assert!(acc > f32_acc - 0.05, "budget optimum {acc} vs f32 {f32_acc}");
    // Ranking and k-means: widths follow Omega.
    let pk = QbertPipeline::new(PipelineParams {
        subset_size: Some(32),
        embedding_bits: None,
        method: MethodKind::KMeans,
        ..PipelineParams::default()
    })?;
    let r = pk.quantize(&model, w.view(), &train_set, &Strategy::Ranking { low: 2, high: 4, share: 0.5 }, Grouping::PerTensor)?;
    let free: Vec<_> = r.layers.iter().filter(|l| l.mixed_bits.is_some()).collect();
    assert_eq!(free.len(), 2);
    let (hi, lo) = if free[0].mixed_bits == Some(4) { (free[0], free[1]) } else { (free[1], free[0]) };
    assert!(hi.omega >= lo.omega);
    assert!(r.layers.last().is_some_and(|l| l.mixed_bits.is_none() && l.sqnr_db.is_none()));
    assert!(matches!(
        pipeline.quantize(&model, w.view(), &train_set, &Strategy::Uniform(9), Grouping::PerTensor),
        Err(quant_qbert::QbertError::InvalidParameter { .. })
    ));
    Ok(())
}

#[test]
fn bad_parameters_are_refused() {
    for params in [
        PipelineParams { subsets: 0, ..PipelineParams::default() },
        PipelineParams { direct_bits: vec![9], ..PipelineParams::default() },
        PipelineParams { share: 1.5, ..PipelineParams::default() },
        PipelineParams { ema_momentum: 1.0, ..PipelineParams::default() },
        PipelineParams { power_tol: f64::NAN, ..PipelineParams::default() },
        PipelineParams { groupings: vec![Grouping::Finer(0)], ..PipelineParams::default() },
        PipelineParams { finetune: Some(TrainParams { lr: -1.0, ..TrainParams::default() }), ..PipelineParams::default() },
    ] {
        assert!(matches!(QbertPipeline::new(params), Err(quant_qbert::QbertError::InvalidParameter { .. })));
    }
}

#[test]
fn codebook_fine_tuning_recovers_accuracy_at_2_bits() -> Result<(), quant_qbert::QbertError> {
    use quant_core::MethodKind;
    let (model, w, train_set, test_set) = trained_encoder()?;
    let params = PipelineParams {
        subsets: 2,
        subset_size: Some(16),
        direct_bits: vec![2],
        groupings: vec![Grouping::PerHead],
        mixed: vec![],
        method: MethodKind::KMeans,
        finetune: Some(TrainParams { epochs: 3, batch_size: 64, lr: 1e-3, seed: 0 }),
        ..PipelineParams::default()
    };
    let r = QbertPipeline::new(params)?.run(&model, w.view(), &train_set, &test_set, |_| {})?;
    let row = find(&r, "direct", "2", "2");
    let tuned = row.finetuned.expect("fine-tuned");
    println!("k-means 2-bit: {:.4} -> {:.4}", row.accuracy_act, tuned);
    assert!(tuned > row.accuracy_act, "centroid fine-tuning {tuned} vs {}", row.accuracy_act);
    Ok(())
}
