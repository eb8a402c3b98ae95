//! The exact allocator against brute force, the frontier's invariants, constraints, ties,
//! Q-BERT's ranking and the released CoLA eigenvalues.

use proptest::prelude::*;
use quant_mixed::{Budget, LayerOption, LayerSpec, MixedError, Problem, Resource, qbert_order, qbert_ranking};

/// Every assignment: the least sensitivity with total bytes ≤ budget (None if none fits).
/// `ties` lists groups that must share a width.
fn brute_force(layers: &[LayerSpec], ties: &[Vec<usize>], budget: u64) -> Option<f64> {
    let n = layers.len();
    let mut idx = vec![0usize; n];
    let mut best: Option<f64> = None;
    loop {
        let ok = layers.iter().zip(&idx).all(|(l, &j)| {
            let b = l.options[j].bits;
            l.fixed_bits.is_none_or(|f| b == f) && l.min_bits.is_none_or(|m| b >= m) && l.max_bits.is_none_or(|m| b <= m)
        }) && ties.iter().all(|g| g.iter().all(|&m| layers[m].options[idx[m]].bits == layers[g[0]].options[idx[g[0]]].bits));
        if ok {
            let bytes: u64 = layers.iter().zip(&idx).map(|(l, &j)| l.options[j].bytes).sum();
            let s: f64 = layers.iter().zip(&idx).map(|(l, &j)| l.options[j].sensitivity).sum();
            if bytes <= budget && best.is_none_or(|b| s < b) {
                best = Some(s);
            }
        }
        // Odometer.
        let mut k = 0;
        loop {
            if k == n {
                return best;
            }
            idx[k] += 1;
            if idx[k] < layers[k].options.len() {
                break;
            }
            idx[k] = 0;
            k += 1;
        }
    }
}

fn layer_strategy() -> impl Strategy<Value = LayerSpec> {
    (1u64..2000, prop::collection::vec((prop::sample::select(vec![2u8, 3, 4, 8]), 0.0f64..10.0), 1..=4)).prop_map(|(params, opts)| {
        let options = opts
            .into_iter()
            .map(|(bits, s)| LayerOption {
                bits,
                group_size: None,
                bytes: params * u64::from(bits) / 8 + 4,
                bops: 0,
                sensitivity: s / f64::from(bits),
            })
            .collect();
        LayerSpec::new("l", params, options)
    })
}

fn close(a: f64, b: f64) -> bool {
    // Sums of up to 12 terms in different orders: a few ulps.
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn dp_equals_brute_force(layers in prop::collection::vec(layer_strategy(), 1..=12), frac in 0.0f64..1.2) {
        let max: u64 = layers.iter().map(|l| l.options.iter().map(|o| o.bytes).max().unwrap_or(0)).sum();
        let budget = (max as f64 * frac) as u64;
        let p = Problem::new(layers.clone()).expect("valid");
        match (p.solve(Budget::Bytes(budget)), brute_force(&layers, &[], budget)) {
            (Ok(a), Some(b)) => {
                prop_assert!(close(a.sensitivity, b), "dp {} vs brute {}", a.sensitivity, b);
                prop_assert!(a.bytes <= budget);
                let recomputed: f64 = a.layers.iter().map(|l| l.sensitivity).sum();
                prop_assert!(close(recomputed, a.sensitivity));
            }
            (Err(MixedError::Infeasible { budget: b, minimum }), None) => {
                prop_assert_eq!(b, budget);
                prop_assert!(minimum > budget);
            }
            (a, b) => prop_assert!(false, "dp {:?} vs brute {:?}", a, b),
        }
    }

    #[test]
    fn larger_budgets_never_do_worse(layers in prop::collection::vec(layer_strategy(), 1..=10), a in 0u64..5000, d in 0u64..5000) {
        let p = Problem::new(layers).expect("valid");
        let small = p.solve(Budget::Bytes(a));
        let large = p.solve(Budget::Bytes(a + d));
        if let Ok(s) = small {
            let l = large.expect("a larger budget stays feasible");
            prop_assert!(l.sensitivity <= s.sensitivity);
        }
    }

    #[test]
    fn frontier_is_non_dominated_and_holds_every_budget_optimum(layers in prop::collection::vec(layer_strategy(), 1..=8), budgets in prop::collection::vec(0u64..6000, 1..6)) {
        let p = Problem::new(layers.clone()).expect("valid");
        let f = p.frontier(Resource::Bytes).expect("frontier");
        let pts = f.points();
        for w in pts.windows(2) {
            prop_assert!(w[0].0 < w[1].0 && w[0].1 > w[1].1, "dominated or unordered: {:?}", w);
        }
        for (i, &(cost, s)) in pts.iter().enumerate() {
            let a = f.allocation(i).expect("on the frontier");
            prop_assert_eq!(a.bytes, cost);
            prop_assert!(close(a.sensitivity, s));
        }
        for b in budgets {
            match (p.solve(Budget::Bytes(b)), f.best_within(b)) {
                (Ok(a), Some(i)) => {
                    prop_assert_eq!(pts[i].0, a.bytes);
                    prop_assert!(close(pts[i].1, a.sensitivity));
                }
                (Err(MixedError::Infeasible { .. }), None) => {}
                (a, i) => prop_assert!(false, "solve {:?} vs frontier {:?}", a, i),
            }
        }
    }

    #[test]
    fn ties_and_width_limits_match_brute_force(layers in prop::collection::vec(layer_strategy(), 3..=9), frac in 0.2f64..1.2, min in prop::sample::select(vec![2u8, 3])) {
        // Tie layers 0 and 2 when they share a width; give layer 1 a minimum width.
        let mut layers = layers;
        let shared = layers[0].options.iter().any(|o| layers[2].options.iter().any(|q| q.bits == o.bits));
        if layers[1].options.iter().any(|o| o.bits >= min) {
            layers[1] = layers[1].clone().min(min);
        }
        let ties: Vec<Vec<usize>> = if shared { vec![vec![0, 2]] } else { vec![] };
        let mut p = Problem::new(layers.clone()).expect("valid");
        for t in &ties {
            p = p.tie(t).expect("shared width");
        }
        let max: u64 = layers.iter().map(|l| l.options.iter().map(|o| o.bytes).max().unwrap_or(0)).sum();
        let budget = (max as f64 * frac) as u64;
        match (p.solve(Budget::Bytes(budget)), brute_force(&layers, &ties, budget)) {
            (Ok(a), Some(b)) => {
                prop_assert!(close(a.sensitivity, b), "dp {} vs brute {}", a.sensitivity, b);
                if shared {
                    prop_assert_eq!(a.layers[0].bits, a.layers[2].bits);
                }
                prop_assert!(a.layers[1].bits >= layers[1].min_bits.unwrap_or(0));
            }
            (Err(MixedError::Infeasible { .. }), None) => {}
            (a, b) => prop_assert!(false, "dp {:?} vs brute {:?}", a, b),
        }
    }
}

fn option(bits: u8, bytes: u64, bops: u64, sensitivity: f64) -> LayerOption {
    LayerOption { bits, group_size: None, bytes, bops, sensitivity }
}

#[test]
fn fixed_widths_keep_embeddings_at_8_bits_and_the_classifier_in_f32() -> Result<(), MixedError> {
    let quantizable = |name: &str, s: f64| {
        LayerSpec::new(
            name,
            1000,
            vec![option(2, 250, 0, 4.0 * s), option(4, 500, 0, s), option(8, 1000, 0, 0.01 * s), option(32, 4000, 0, 0.0)],
        )
    };
    let layers = vec![
        quantizable("embeddings", 1.0).fixed(8),
        quantizable("layer0", 3.0).max(8),
        quantizable("layer1", 0.5).max(8),
        quantizable("classifier", 1.0).fixed(32),
    ];
    let plan = Problem::new(layers)?.solve(Budget::Bytes(1000 + 500 + 250 + 4000))?;
    let bits: Vec<u8> = plan.layers.iter().map(|l| l.bits).collect();
    // The budget leaves 750 bytes for the two free layers: 4 bits to the sensitive one.
    assert_eq!(bits, [8, 4, 2, 32]);
    assert_eq!(plan.bytes, 5750);
    assert_eq!(plan.original_bytes, 16_000);
    assert!((plan.compression_ratio - 16_000.0 / 5750.0).abs() < 1e-12);
    Ok(())
}

#[test]
fn bit_operation_budgets() -> Result<(), MixedError> {
    let l = |s: f64| LayerSpec::new("l", 10, vec![option(4, 5, 400, s), option(8, 10, 800, s / 16.0)]);
    let p = Problem::new(vec![l(1.0), l(2.0), l(4.0)])?;
    let plan = p.solve(Budget::Bops(2000))?;
    assert_eq!(plan.layers.iter().map(|l| l.bits).collect::<Vec<_>>(), [4, 8, 8]);
    assert_eq!(plan.bops, 2000);
    let f = p.frontier(Resource::Bops)?;
    assert_eq!(f.resource(), Resource::Bops);
    assert_eq!(f.points().first().map(|p| p.0), Some(1200));
    Ok(())
}

#[test]
fn infeasible_and_invalid_inputs_give_typed_errors() {
    let l = LayerSpec::new("a", 8, vec![option(2, 2, 0, 1.0), option(4, 4, 0, 0.5)]);
    let p = Problem::new(vec![l.clone(), l.clone()]).expect("valid");
    assert_eq!(p.solve(Budget::Bytes(3)).err(), Some(MixedError::Infeasible { budget: 3, minimum: 4 }));
    assert!(matches!(p.solve(Budget::CompressionRatio(0.5)), Err(MixedError::InvalidValue { .. })));
    assert!(matches!(p.solve(Budget::CompressionRatio(f64::NAN)), Err(MixedError::InvalidValue { .. })));
    assert_eq!(Problem::new(vec![]).err(), Some(MixedError::Empty { what: "layers" }));
    assert!(matches!(Problem::new(vec![l.clone().fixed(8)]), Err(MixedError::NoOptions { layer: 0, .. })));
    let nan = LayerSpec::new("n", 8, vec![option(2, 2, 0, f64::NAN)]);
    assert!(matches!(Problem::new(vec![nan]), Err(MixedError::NonFinite { .. })));
    let neg = LayerSpec::new("n", 8, vec![option(2, 2, 0, -1.0)]);
    assert!(matches!(Problem::new(vec![neg]), Err(MixedError::InvalidValue { .. })));
    assert!(matches!(p.clone().tie(&[0, 5]), Err(MixedError::InvalidTie { layer: 5, layers: 2 })));
    assert!(matches!(p.clone().tie(&[0, 1]).and_then(|p| p.tie(&[1])), Err(MixedError::InvalidTie { layer: 1, .. })));
    let other = LayerSpec::new("b", 8, vec![option(8, 8, 0, 0.0)]);
    assert!(matches!(Problem::new(vec![l, other]).expect("valid").tie(&[0, 1]), Err(MixedError::NoOptions { .. })));
}

#[test]
fn compression_ratio_budget() -> Result<(), MixedError> {
    let l = |s: f64| LayerSpec::new("l", 1000, vec![option(2, 250, 0, s), option(4, 500, 0, s / 4.0), option(8, 1000, 0, s / 64.0)]);
    let p = Problem::new(vec![l(1.0), l(5.0), l(0.2)])?;
    let plan = p.solve(Budget::CompressionRatio(8.0))?;
    assert!(plan.compression_ratio >= 8.0);
    assert!(plan.bytes <= 1500);
    Ok(())
}

#[test]
fn qbert_cola_eigenvalues_give_the_papers_order() -> Result<(), MixedError> {
    // Q-BERT's released per-block top eigenvalues on CoLA, blocks 0..11.
    let cola = [6.67, 9.38, 14.55, 18.26, 18.81, 21.75, 16.43, 15.37, 25.82, 1.71, 0.80, 1.01];
    assert_eq!(qbert_order(&cola)?, [8, 5, 4, 3, 6, 7, 2, 1, 0, 9, 11, 10]);
    // 2/3-bit mixed precision with half the blocks at 3 bits.
    let bits = qbert_ranking(&cola, 0.5, 2, 3)?;
    assert_eq!(bits, [2, 2, 2, 3, 3, 3, 3, 3, 3, 2, 2, 2]);
    assert_eq!(qbert_ranking(&cola, 0.0, 2, 4)?, [2; 12]);
    assert_eq!(qbert_ranking(&cola, 1.0, 2, 4)?, [4; 12]);
    assert!(matches!(qbert_ranking(&cola, 1.5, 2, 4), Err(MixedError::InvalidValue { .. })));
    assert!(matches!(qbert_order(&[1.0, f64::NAN]), Err(MixedError::NonFinite { index: 1, .. })));
    // Equal values keep layer order.
    assert_eq!(qbert_order(&[1.0, 2.0, 1.0, 2.0])?, [1, 3, 0, 2]);
    Ok(())
}

#[test]
fn allocations_serialize_to_json_and_back() -> Result<(), Box<dyn std::error::Error>> {
    let l = LayerSpec::new("encoder.0.attn", 1000, vec![option(2, 250, 0, 1.0), option(4, 500, 0, 0.1)]);
    let plan = Problem::new(vec![l.clone()])?.solve(Budget::Bytes(600))?;
    let json = serde_json::to_string(&plan)?;
    assert!(json.contains("\"name\":\"encoder.0.attn\"") && json.contains("\"bits\":4") && json.contains("\"compression_ratio\":8.0"));
    let back: quant_mixed::Allocation = serde_json::from_str(&json)?;
    assert_eq!(back, plan);
    let spec_json = serde_json::to_string(&l)?;
    assert_eq!(serde_json::from_str::<LayerSpec>(&spec_json)?, l);
    Ok(())
}

#[test]
fn dp_equals_brute_force_at_twelve_layers_by_four_choices() -> Result<(), MixedError> {
    // The largest instance of the bound, deterministic: 4^12 ≈ 16.8M assignments.
    let layers: Vec<LayerSpec> = (0..12u64)
        .map(|i| {
            let params = 100 + 37 * i * i % 500;
            let options = [2u8, 3, 4, 8]
                .iter()
                .map(|&b| option(b, params * u64::from(b) / 8 + 2, 0, ((i * 7 + u64::from(b) * 3) % 11) as f64 / f64::from(b).powi(2)))
                .collect();
            LayerSpec::new(format!("l{i}"), params, options)
        })
        .collect();
    let p = Problem::new(layers.clone())?;
    let max: u64 = layers.iter().map(|l| l.options[3].bytes).sum();
    let budgets: Vec<u64> = [0.3, 0.55, 0.8].iter().map(|f| (max as f64 * f) as u64).collect();
    // One odometer pass with running totals (fast enough in a debug build).
    let mut best = vec![f64::INFINITY; budgets.len()];
    let mut idx = [0usize; 12];
    let mut bytes: u64 = layers.iter().map(|l| l.options[0].bytes).sum();
    loop {
        let s: f64 = layers.iter().zip(&idx).map(|(l, &j)| l.options[j].sensitivity).sum();
        for (b, best) in budgets.iter().zip(best.iter_mut()) {
            if bytes <= *b && s < *best {
                *best = s;
            }
        }
        let mut k = 0;
        while k < 12 && idx[k] == 3 {
            bytes = bytes - layers[k].options[3].bytes + layers[k].options[0].bytes;
            idx[k] = 0;
            k += 1;
        }
        if k == 12 {
            break;
        }
        bytes = bytes - layers[k].options[idx[k]].bytes + layers[k].options[idx[k] + 1].bytes;
        idx[k] += 1;
    }
    for (b, bf) in budgets.iter().zip(&best) {
        let dp = p.solve(Budget::Bytes(*b))?;
        assert!(close(dp.sensitivity, *bf), "{} vs {bf}", dp.sensitivity);
    }
    Ok(())
}

#[test]
fn frontier_allocations_with_rounding_ties() -> Result<(), MixedError> {
    // Found by `cargo fuzz run allocation`: two assignments whose sensitivities are equal up to
    // one ulp, summed in different orders by the frontier pass and the reconstruction. The
    // reconstruction may return the cheaper one; it is never more expensive or worse.
    let l = |opts: &[(u8, u64, f64)]| LayerSpec::new("l", 100, opts.iter().map(|&(b, c, s)| option(b, c, 0, s)).collect());
    let layers = vec![
        l(&[(4, 174, 24.857142857142858)]),
        l(&[(9, 215, 24.142857142857142), (1, 174, 31.857142857142858), (3, 223, 0.14285714285714285), (0, 223, 31.857142857142858)]),
        l(&[(1, 3, 0.14285714285714285), (4, 223, 31.857142857142858), (3, 174, 24.857142857142858), (4, 1, 24.142857142857142)]),
    ];
    let p = Problem::new(layers)?;
    let f = p.frontier(Resource::Bytes)?;
    for (i, &(cost, s)) in f.points().iter().enumerate() {
        let a = f.allocation(i)?;
        assert!(a.bytes <= cost);
        assert!((a.sensitivity - s).abs() <= 1e-12 * s.max(1.0), "{} vs {s}", a.sensitivity);
    }
    Ok(())
}
