//! Plans: the exact allocator against brute force, Q-BERT's ranking, llama.cpp's recipe,
//! budgets and plans that do not fit.

use quant_core::{GranularityRule, ParamDtype};
use quant_qbert::QbertError;
use quant_qbert::plan::{CandidatePattern, Metric, Plan, PlanEntry, TensorMenu};
use quant_qbert::sensitivity::{Candidate, CandidateSensitivity, LayerSensitivity, MatrixSensitivity, SensitivityReport};

fn cand(bits: u8, group: usize) -> Candidate {
    Candidate { bits, granularity: GranularityRule::Group { size: group }, param_dtype: ParamDtype::Native }
}

/// A report over `names` (each 8 × 16) with candidates 2, 3, 4, 6 bits at groups of 16 and
/// 2, 4 bits at groups of 4; the numbers come from a small deterministic generator.
fn report(names: &[&str], seed: u64) -> SensitivityReport {
    let cands = [cand(2, 16), cand(3, 16), cand(4, 16), cand(6, 16), cand(2, 4), cand(4, 4)];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64) / ((1u64 << 53) as f64)
    };
    let matrices = names
        .iter()
        .map(|name| {
            let scale = 0.1 + next() * 10.0;
            let candidates = cands
                .iter()
                .map(|&c| {
                    // f32 scale and offset per group: 64 bits per group.
                    let g = match c.granularity {
                        GranularityRule::Group { size } => size,
                        _ => unreachable!(),
                    };
                    let perturbation = 4f64.powi(-i32::from(c.bits)) * (1.0 + next());
                    CandidateSensitivity {
                        candidate: c,
                        bits_per_weight: f64::from(c.bits) + 64.0 / g as f64,
                        perturbation,
                        quadratic: scale * perturbation * (0.5 + next()),
                        measured: scale * perturbation * (0.5 + next()),
                    }
                })
                .collect();
            let eigenvalues = vec![scale, scale * 0.5, scale * 1.5];
            MatrixSensitivity {
                name: (*name).into(),
                shape: vec![8, 16],
                converged: vec![true; 3],
                mean: scale,
                std: scale * 0.4,
                omega: scale * 1.4,
                average_trace: scale * 0.01 * (0.5 + next()),
                average_trace_std_error: 0.0,
                eigenvalues,
                candidates,
            }
        })
        .collect();
    SensitivityReport {
        sentences: 4,
        tokens: 40,
        subsets: 3,
        seed,
        matrices,
        stages: vec![],
        rounding: "nearest".into(),
        embedding_rows: vec![],
        layers: vec![],
    }
}

const NAMES: [&str; 4] = [
    "encoder.layer.0.attention.self.value.weight",
    "encoder.layer.0.output.dense.weight",
    "encoder.layer.1.attention.self.query.weight",
    "encoder.layer.1.intermediate.dense.weight",
];

/// The metric's value of candidate `c` on tensor `m`, computed from the report directly.
fn score(r: &SensitivityReport, metric: Metric, m: usize, c: usize) -> f64 {
    let mat = &r.matrices[m];
    let cs = &mat.candidates[c];
    match metric {
        Metric::Quadratic => cs.quadratic,
        Metric::Measured => cs.measured,
        Metric::Trace => mat.average_trace.abs() * cs.perturbation,
        Metric::Omega => mat.omega * cs.perturbation,
        Metric::OmegaRank => unreachable!(),
    }
}

#[test]
fn exact_allocation_equals_brute_force() {
    for seed in 0..20 {
        let r = report(&NAMES, seed);
        let menu = TensorMenu::from_report(&r, &[]).unwrap();
        let k = r.matrices[0].candidates.len();
        for metric in [Metric::Quadratic, Metric::Measured, Metric::Trace, Metric::Omega] {
            for target in [5.9, 6.0, 6.3, 6.5, 7.0, 7.25, 8.0, 9.0, 12.0, 20.0] {
                // Brute force over all 6^4 assignments: bytes = bpw · 128 / 8 per tensor.
                let mut best: Option<f64> = None;
                for code in 0..k.pow(4) {
                    let picks: Vec<usize> = (0..4).map(|t| code / k.pow(t) % k).collect();
                    let bytes: f64 = picks.iter().enumerate().map(|(t, &c)| r.matrices[t].candidates[c].bits_per_weight * 16.0).sum();
                    if bytes > target * 4.0 * 128.0 / 8.0 + 1e-9 {
                        continue;
                    }
                    let s: f64 = picks.iter().enumerate().map(|(t, &c)| score(&r, metric, t, c)).sum();
                    best = Some(best.map_or(s, |b: f64| b.min(s)));
                }
                match (best, menu.allocate(metric, target)) {
                    (Some(b), Ok(plan)) => {
                        let got: f64 = plan
                            .tensors
                            .iter()
                            .enumerate()
                            .map(|(t, e)| {
                                let c = r.matrices[t].candidates.iter().position(|x| x.candidate == e.candidate).unwrap();
                                score(&r, metric, t, c)
                            })
                            .sum();
                        assert!((got - b).abs() <= 1e-12 * b.abs().max(1e-300), "seed {seed} {metric} {target}: {got} vs {b}");
                        assert!(plan.bits_per_weight <= target + 1e-12);
                        assert_eq!(plan.method, metric.name());
                    }
                    (None, Err(QbertError::BudgetTooSmall { least, .. })) => assert!((least - 2.0 - 4.0).abs() < 1e-12),
                    (b, p) => panic!("seed {seed} {metric} {target}: brute force {b:?}, allocator {p:?}"),
                }
            }
        }
    }
}

#[test]
fn allocation_is_optimal_for_the_metric_asked() {
    // The quadratic plan's quadratic total is never above the trace plan's, at equal budgets.
    for seed in 0..10 {
        let menu = TensorMenu::from_report(&report(&NAMES, seed), &[]).unwrap();
        for target in [6.5, 7.0, 8.0] {
            let q = menu.allocate(Metric::Quadratic, target).unwrap();
            let t = menu.allocate(Metric::Trace, target).unwrap();
            assert!(q.predicted_quadratic.unwrap() <= t.predicted_quadratic.unwrap() + 1e-15);
        }
    }
}

#[test]
fn omega_rank_gives_the_most_sensitive_the_wider_step() {
    let r = report(&NAMES, 3);
    let menu = TensorMenu::from_report(&r, &["2@group:16".parse().unwrap(), "3@group:16".parse().unwrap(), "4@group:16".parse().unwrap()])
        .unwrap();
    // Ladder 2, 3, 4 bits at groups of 16 (6, 7, 8 bits per weight); 7.5 puts two tensors at 8.
    let plan = menu.allocate(Metric::OmegaRank, 7.5).unwrap();
    let mut by_omega: Vec<usize> = (0..4).collect();
    by_omega.sort_by(|&a, &b| r.matrices[b].omega.total_cmp(&r.matrices[a].omega));
    let bits: Vec<u8> = plan.tensors.iter().map(|e| e.candidate.bits).collect();
    for (rank, &t) in by_omega.iter().enumerate() {
        assert_eq!(bits[t], if rank < 2 { 4 } else { 3 }, "{bits:?} {by_omega:?}");
    }
    assert_eq!(plan.bits_per_weight, 7.5);
    // A random order is a permutation check away.
    assert!(menu.ranked(&[0, 1, 2], 7.5, "x".into()).is_err());
    assert!(menu.ranked(&[0, 1, 2, 2], 7.5, "x".into()).is_err());
    let p = menu.ranked(&[3, 2, 1, 0], 7.5, "random".into()).unwrap();
    assert_eq!(p.tensors.iter().map(|e| e.candidate.bits).collect::<Vec<_>>(), [3, 3, 4, 4]);
}

#[test]
fn layer_omegas_rank_a_layers_matrices_together() {
    // Q-BERT's grouping: with per-layer Ω in the report, each matrix ranks by its layer's Ω,
    // whatever its own.
    let mut r = report(&NAMES, 3);
    let layer = |name: &str, tensors: &[usize], omega: f64| LayerSensitivity {
        name: name.into(),
        tensors: tensors.iter().map(|&t| NAMES[t].to_string()).collect(),
        params: 256,
        eigenvalues: vec![omega; 3],
        converged: vec![true; 3],
        mean: omega,
        std: 0.0,
        omega,
    };
    // Tensors 0 and 3 share the most sensitive layer; 1 and 2 the other.
    r.layers = vec![layer("layer.0", &[1, 2], 1.0), layer("layer.1", &[0, 3], 50.0)];
    let pats = ["2@group:16".parse().unwrap(), "3@group:16".parse().unwrap(), "4@group:16".parse().unwrap()];
    let plan = TensorMenu::from_report(&r, &pats).unwrap().allocate(Metric::OmegaRank, 7.5).unwrap();
    assert_eq!(plan.tensors.iter().map(|e| e.candidate.bits).collect::<Vec<_>>(), [4, 3, 3, 4]);
    // Without the layers the matrices' own Ω decide (another order for this report).
    r.layers.clear();
    let own = TensorMenu::from_report(&r, &pats).unwrap().allocate(Metric::OmegaRank, 7.5).unwrap();
    assert_ne!(own.tensors.iter().map(|e| e.candidate.bits).collect::<Vec<_>>(), [4, 3, 3, 4]);
    // A non-finite layer Ω is refused, naming a member.
    r.layers = vec![layer("layer.0", &[1, 2], f64::NAN)];
    assert!(matches!(TensorMenu::from_report(&r, &pats), Err(QbertError::Plan { tensor, .. }) if tensor == NAMES[1]));
}

#[test]
fn ladder_keeps_the_cheapest_candidate_of_each_width() {
    let menu = TensorMenu::from_report(&report(&NAMES, 1), &[]).unwrap();
    let ladder: Vec<Candidate> = menu.ladder().iter().map(|&c| menu.candidates()[c]).collect();
    // 2@16 (6), 3@16 (7), 4@16 (8), 6@16 (10); 2@4 (18) and 4@4 (20) are dominated.
    assert_eq!(ladder, [cand(2, 16), cand(3, 16), cand(4, 16), cand(6, 16)]);
}

#[test]
fn recipe_q4_k_m_widens_value_and_ffn_down_of_the_chosen_layers() {
    // Six layers as MiniLM: the rule picks layers 2 and 5.
    let tensors: Vec<(String, Vec<usize>)> = (0..6)
        .flat_map(|l| {
            ["attention.self.query", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense"]
                .map(|m| (format!("encoder.layer.{l}.{m}.weight"), vec![8usize, 16]))
        })
        .collect();
    let cands = [cand(2, 16), cand(3, 16), cand(4, 16), cand(6, 16)];
    let menu = TensorMenu::from_shapes(&tensors, &cands).unwrap();
    let plan = menu.recipe_q4_k_m(None).unwrap();
    for e in &plan.tensors {
        let layer = e.name.contains("layer.2.") || e.name.contains("layer.5.");
        let role = e.name.ends_with("self.value.weight") || (e.name.ends_with("output.dense.weight") && !e.name.contains("attention"));
        let wide = layer && role;
        assert_eq!(e.candidate.bits, if wide { 6 } else { 4 }, "{}", e.name);
        assert!(e.quadratic.is_none());
    }
    assert_eq!(plan.tensors.iter().filter(|e| e.candidate.bits == 6).count(), 4);
    // With a budget, the widest base that fits: 4 bits (8 bpw) with four tensors at 10 is 8.27.
    let p = menu.recipe_q4_k_m(Some(8.3)).unwrap();
    assert_eq!(p.tensors.iter().filter(|e| e.candidate.bits == 6).count(), 4);
    let p = menu.recipe_q4_k_m(Some(8.2)).unwrap();
    assert_eq!(p.tensors.iter().filter(|e| e.candidate.bits == 4).count(), 4);
    assert!(matches!(menu.recipe_q4_k_m(Some(6.0)), Err(QbertError::BudgetTooSmall { .. })));
    assert!(matches!(menu.allocate(Metric::Quadratic, 4.0), Err(QbertError::Unscored { .. })));
}

#[test]
fn budgets_and_patterns_that_do_not_fit() {
    let r = report(&NAMES, 0);
    let menu = TensorMenu::from_report(&r, &[]).unwrap();
    match menu.allocate(Metric::Quadratic, 5.0) {
        Err(QbertError::BudgetTooSmall { target, least }) => assert_eq!((target, least), (5.0, 6.0)),
        other => panic!("{other:?}"),
    }
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(menu.allocate(Metric::Quadratic, t), Err(QbertError::InvalidParameter { .. })));
    }
    assert!(matches!(TensorMenu::from_report(&r, &["5".parse().unwrap()]), Err(QbertError::UnknownCandidate { .. })));
    let mut bad = r.clone();
    bad.matrices[2].candidates[1].quadratic = f64::NAN;
    match TensorMenu::from_report(&bad, &[]) {
        Err(QbertError::Plan { tensor, .. }) => assert_eq!(tensor, NAMES[2]),
        other => panic!("{other:?}"),
    }
    let mut bad = r.clone();
    bad.matrices[1].candidates.pop();
    assert!(matches!(TensorMenu::from_report(&bad, &[]), Err(QbertError::Plan { .. })));
    let mut none = r.clone();
    none.matrices.iter_mut().for_each(|m| m.candidates.clear());
    assert!(matches!(TensorMenu::from_report(&none, &[]), Err(QbertError::Empty { .. })));
    let empty = SensitivityReport { matrices: vec![], ..r };
    assert!(matches!(TensorMenu::from_report(&empty, &[]), Err(QbertError::Empty { .. })));
    assert!("quadratic".parse::<Metric>().is_ok() && "hessian".parse::<Metric>().is_err());
    assert!("4@group:16@f16".parse::<CandidatePattern>().is_ok());
}

fn entry(name: &str, shape: Vec<usize>, c: Candidate) -> PlanEntry {
    PlanEntry { name: name.into(), shape, candidate: c, bits_per_weight: 0.0, bytes: 0, allocated: true, quadratic: None, measured: None }
}

#[test]
fn plans_are_checked_against_the_checkpoint() {
    let shape_of = |n: &str| (n.starts_with("a") || n.starts_with("b")).then(|| vec![8, 16]);
    let plan = |entries| Plan {
        method: "edited".into(),
        target_bits_per_weight: None,
        bits_per_weight: 0.0,
        bytes: 0,
        params: 0,
        predicted_quadratic: None,
        predicted_measured: None,
        tensors: entries,
        notes: vec![],
    };
    let ok = plan(vec![entry("a", vec![], cand(4, 16)), entry("b", vec![8, 16], cand(2, 16))]).check(shape_of).unwrap();
    // 4 + 4 and 2 + 4 bits per weight over 128 weights each.
    assert_eq!((ok.bytes, ok.params, ok.bits_per_weight), (224, 256, 7.0));
    assert_eq!(ok.tensors[0].shape, [8, 16]);
    let err = |p: Plan| match p.check(shape_of) {
        Err(QbertError::Plan { tensor, reason }) => (tensor, reason),
        other => panic!("{other:?}"),
    };
    assert_eq!(err(plan(vec![entry("c", vec![], cand(4, 16))])).0, "c");
    assert!(err(plan(vec![entry("a", vec![16, 8], cand(4, 16))])).1.contains("shape"));
    assert!(err(plan(vec![entry("a", vec![], cand(4, 16)), entry("a", vec![], cand(2, 16))])).1.contains("twice"));
    assert!(err(plan(vec![entry("b", vec![], cand(9, 16))])).1.contains("cannot take"));
    // A fixed tensor stays outside the totals.
    let fixed = ok.with_fixed("emb", &[4, 16], cand(8, 16)).unwrap();
    assert_eq!((fixed.bytes, fixed.params), (224, 256));
    assert_eq!(fixed.tensors[2].bits_per_weight, 12.0);
}

#[cfg(feature = "serde")]
#[test]
fn plans_round_trip_and_an_edited_plan_needs_only_names_and_choices() {
    let menu = TensorMenu::from_report(&report(&NAMES, 4), &[]).unwrap();
    let plan = menu.allocate(Metric::Measured, 7.0).unwrap();
    let text = serde_json::to_string(&plan).unwrap();
    let back: Plan = serde_json::from_str(&text).unwrap();
    assert_eq!(back, plan);
    let edited: Plan =
        serde_json::from_str(r#"{"tensors": [{"name": "a", "bits": 3, "granularity": "group:16", "param_dtype": "f16"}]}"#).unwrap();
    assert_eq!(edited.tensors[0].candidate, Candidate { param_dtype: ParamDtype::F16, ..cand(3, 16) });
    assert!(edited.tensors[0].allocated);
    assert!(
        serde_json::from_str::<Plan>(r#"{"tensors": [{"name": "a", "bits": 3, "granularity": "group:0", "param_dtype": "f16"}]}"#).is_err()
    );
}
