//! Sensitivity of the tiny golden BERT checkpoint (quant-models' test data) on a few sentences.

use std::path::Path;

use quant_core::GranularityRule;
use quant_models::bert::{Bert, BertTokenizer, TokenBatch};
use quant_qbert::QbertError;
use quant_qbert::sensitivity::{
    Candidate, CandidateRounding, Progress, SensitivityParams, bert_sensitivity, bert_sensitivity_with_progress,
};

fn setup() -> (Bert<f32>, TokenBatch) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../quant-models/tests/data/bert/plain");
    let model = Bert::<f32>::load(&dir).expect("loads");
    let tok = BertTokenizer::from_dir(&dir, 16).expect("tokenizer");
    let text = [
        "the cat sat on the mat",
        "a dog ran in the park",
        "hello world",
        "she sells sea shells",
        "the quick brown fox jumps",
        "over the lazy dog",
    ];
    (model, tok.encode(&text).expect("encodes"))
}

fn params(seed: u64) -> SensitivityParams {
    SensitivityParams {
        subsets: 2,
        per_subset: 3,
        seed,
        lanczos_tol: 1e-4,
        trace_budget: 6,
        candidates: Candidate::grid(&[8, 2], &[GranularityRule::Group { size: 16 }]),
        rounding: CandidateRounding::Nearest,
        layer_blocks: false,
    }
}

#[test]
fn the_second_order_form_predicts_small_perturbations_and_bounds_by_the_top_eigenvalue() {
    let (model, batch) = setup();
    let matrices = model.weight_matrices();
    let report = bert_sensitivity(&model, &batch, &matrices, &params(3)).expect("runs");
    assert_eq!((report.sentences, report.subsets, report.matrices.len()), (6, 2, 12));
    assert_eq!(report.stages.len(), 3);
    assert!(report.stages.iter().all(|s| s.block_products + s.quadratic_forms + s.loss_evaluations > 0 && s.seconds >= 0.0));
    // Per matrix and subset: the 2 candidates' forms and Hutch++'s 4 (budget 6: a sketch of
    // 2 products, then 2 + 2 forms).
    assert_eq!(report.stages[1].quadratic_forms, 2 * 12 * (2 + 4));
    assert_eq!(report.stages[1].block_products, 2 * 12 * 2);
    assert_eq!(report.stages[2].loss_evaluations, 12 * 2);
    for m in &report.matrices {
        assert_eq!(m.eigenvalues.len(), 2);
        assert!(m.converged.iter().all(|&c| c), "{}", m.name);
        // At the loaded weights the Hessian is Gauss-Newton: positive semi-definite.
        assert!(m.eigenvalues.iter().all(|&l| l >= 0.0), "{}: {:?}", m.name, m.eigenvalues);
        assert!((m.omega - (m.mean.abs() + m.std)).abs() <= 1e-12 * m.omega.max(1e-30));
        assert!(m.average_trace > 0.0 && m.average_trace.is_finite(), "{}", m.name);
        let (q8, q2) = (&m.candidates[0], &m.candidates[1]);
        // 8 bits, groups of 16 with f32 scale and offset: 8 + 64/16 bits per weight.
        assert!((q8.bits_per_weight - 12.0).abs() < 1e-9 && (q2.bits_per_weight - 6.0).abs() < 1e-9, "{}", m.name);
        assert!(q2.perturbation > q8.perturbation && q2.quadratic > q8.quadratic && q2.measured > q8.measured, "{}", m.name);
        // For 8-bit rounding the loss is its second-order form to within a few percent.
        assert!(
            (q8.measured - q8.quadratic).abs() <= 0.05 * q8.quadratic,
            "{}: measured {} vs ½dᵀHd {}",
            m.name,
            q8.measured,
            q8.quadratic
        );
        // The Rayleigh quotient of the Hessian on all sentences (the mean of the subsets')
        // is at most the mean of the subsets' top eigenvalues.
        for c in &m.candidates {
            let rayleigh = 2.0 * c.quadratic / c.perturbation;
            assert!(rayleigh <= m.mean * (1.0 + 1e-3), "{}: dᵀHd/‖d‖² {rayleigh} above the mean top eigenvalue {}", m.name, m.mean);
        }
    }
}

#[test]
fn layer_blocks_bound_and_are_bounded_by_their_matrices() {
    // Q-BERT's grouping. The layer's Gauss-Newton block is PSD, so its top eigenvalue is at
    // least each member's (interlacing) and at most their sum (‖[X₁ … X₆]‖² ≤ Σ ‖X_i‖²),
    // subset by subset.
    let (model, batch) = setup();
    let matrices = model.weight_matrices();
    let report = bert_sensitivity(&model, &batch, &matrices, &SensitivityParams { layer_blocks: true, ..params(3) }).expect("runs");
    let layers = model.config().num_hidden_layers;
    assert_eq!(report.layers.len(), layers);
    assert_eq!(report.stages.len(), 4);
    assert_eq!(report.stages[1].name, "top eigenvalues per layer (Lanczos)");
    assert!(report.stages[1].block_products > 0);
    for (l, layer) in report.layers.iter().enumerate() {
        assert!(layer.name.ends_with(&format!("layer.{l}")), "{}", layer.name);
        let members: Vec<_> = report.matrices.iter().filter(|m| layer.tensors.contains(&m.name)).collect();
        assert_eq!(members.len(), 6, "{}", layer.name);
        assert_eq!(layer.params, members.iter().map(|m| m.shape.iter().product::<usize>()).sum::<usize>());
        assert!(layer.converged.iter().all(|&c| c));
        assert!((layer.omega - (layer.mean.abs() + layer.std)).abs() <= 1e-12 * layer.omega);
        for s in 0..2 {
            let top = layer.eigenvalues[s];
            let most = members.iter().map(|m| m.eigenvalues[s]).fold(0.0f64, f64::max);
            let sum: f64 = members.iter().map(|m| m.eigenvalues[s]).sum();
            assert!(top >= most * (1.0 - 1e-3) && top <= sum * (1.0 + 1e-3), "{} subset {s}: {top} not in [{most}, {sum}]", layer.name);
            assert!(top > most * 1.01, "{} subset {s}: the layer block should couple its matrices ({top} vs {most})", layer.name);
        }
    }
    // Without the option there are none, and the other numbers do not change.
    let plain = bert_sensitivity(&model, &batch, &matrices, &params(3)).expect("runs");
    assert!(plain.layers.is_empty());
    assert_eq!(plain.matrices, report.matrices);
}

#[test]
fn runs_are_seeded_and_bad_requests_are_refused() {
    let (model, batch) = setup();
    let some = &model.weight_matrices()[..2];
    let a = bert_sensitivity(&model, &batch, some, &params(1)).expect("runs");
    let b = bert_sensitivity(&model, &batch, some, &params(1)).expect("runs");
    let c = bert_sensitivity(&model, &batch, some, &params(2)).expect("runs");
    assert_eq!(a.matrices, b.matrices);
    assert_ne!(a.matrices[0].eigenvalues, c.matrices[0].eigenvalues);
    let too_many = SensitivityParams { subsets: 3, per_subset: 3, ..params(0) };
    assert!(matches!(bert_sensitivity(&model, &batch, some, &too_many), Err(QbertError::TooFewSentences { needed: 9, available: 6, .. })));
    assert!(matches!(
        bert_sensitivity(&model, &batch, some, &SensitivityParams { candidates: vec![], ..params(0) }),
        Err(QbertError::Empty { .. })
    ));
    assert!(matches!(
        bert_sensitivity(&model, &batch, some, &SensitivityParams { subsets: 0, ..params(0) }),
        Err(QbertError::InvalidParameter { .. })
    ));
    assert!(bert_sensitivity(&model, &batch, some, &SensitivityParams { lanczos_tol: f64::NAN, ..params(0) }).is_err());
    // A granularity that does not fit the matrices is the core's typed error.
    let bad = SensitivityParams { candidates: Candidate::grid(&[4], &[GranularityRule::Channel { axis: 5 }]), ..params(0) };
    assert!(matches!(bert_sensitivity(&model, &batch, some, &bad), Err(QbertError::Core(_))));
}

#[test]
fn progress_reports_each_subset_and_each_stage_as_the_report_lists_it() {
    let (model, batch) = setup();
    let some = &model.weight_matrices()[..3];
    let with_layers = SensitivityParams { layer_blocks: true, ..params(1) };
    // Each event as (stage name, subsets done or None for the stage's end).
    let mut events: Vec<(String, Option<(usize, usize)>)> = Vec::new();
    let mut stages = Vec::new();
    let report = bert_sensitivity_with_progress(&model, &batch, some, &with_layers, |p| match p {
        Progress::Subset { stage, done, of } => events.push((stage.to_string(), Some((done, of)))),
        Progress::Stage(s) => {
            events.push((s.name.clone(), None));
            stages.push(s.clone());
        }
        _ => unreachable!("no other events"),
    })
    .expect("runs");
    assert_eq!(stages, report.stages);
    // The two subsets of each subset-wise stage, in order, then the stage's end.
    let names: Vec<&str> = report.stages.iter().map(|s| s.name.as_str()).collect();
    let mut want = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if i < 3 {
            want.push((name.to_string(), Some((1, 2))));
            want.push((name.to_string(), Some((2, 2))));
        }
        want.push((name.to_string(), None));
    }
    assert_eq!(names[3], "measured losses");
    assert_eq!(events, want);
    // The same numbers as without a callback.
    let plain = bert_sensitivity(&model, &batch, some, &with_layers).expect("runs");
    assert_eq!(plain.matrices, report.matrices);
    assert_eq!(plain.layers, report.layers);
    // A run refused before its first stage reports nothing.
    let mut none = 0;
    let too_many = SensitivityParams { subsets: 3, per_subset: 3, ..params(0) };
    assert!(bert_sensitivity_with_progress(&model, &batch, some, &too_many, |_| none += 1).is_err());
    assert_eq!(none, 0);
}
