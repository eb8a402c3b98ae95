//! Post-training methods: batch-norm folding, cross-layer equalization (pairs, grouped
//! columns, depthwise triples), high-bias absorption, ReLU expectations and bias correction.

use ndarray::{Array1, Array2, Axis, s};
use proptest::prelude::*;
use quant_core::{QuantError, Scheme, UniformSpec, fake_quantize};
use quant_ptq::{
    AdaRound, BatchNorm, EasyQuant, absorb_high_bias, correct_bias, correct_bias_empirical, equalize_pair, equalize_pair_grouped,
    equalize_triple, fold_batch_norm, normal_cdf, relu_expectation, relu6_expectation,
};

fn relu(a: Array2<f64>) -> Array2<f64> {
    a.mapv(|v| v.max(0.0))
}

/// `x W^T + b` for a batch `x` (`batch × in`).
fn linear(x: &Array2<f64>, w: &Array2<f64>, b: &Array1<f64>) -> Array2<f64> {
    x.dot(&w.t()) + b
}

fn mat(r: usize, c: usize, seed: u64, scale_rows: bool) -> Array2<f64> {
    Array2::from_shape_fn((r, c), |(i, j)| {
        let v = ((((i * 131 + j * 71) as u64 + seed * 7919) * 2654435761 % 10007) as f64 / 10007.0 - 0.5) * 2.0;
        // Very unequal row ranges, as DFQ's motivating depthwise layers have.
        if scale_rows { v * (1.0 + 20.0 * (i % 4) as f64) } else { v }
    })
}

fn max_abs(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn folding_a_batch_norm_keeps_the_function() -> Result<(), QuantError> {
    let (w, x) = (mat(6, 5, 1, false), mat(9, 5, 2, false));
    let b = Array1::from_shape_fn(6, |i| i as f64 * 0.1 - 0.2);
    let (gamma, beta) = (Array1::from_shape_fn(6, |i| 0.5 + i as f64 * 0.3), Array1::from_shape_fn(6, |i| 0.1 * i as f64 - 0.3));
    let (mean, var) = (Array1::from_shape_fn(6, |i| 0.05 * i as f64), Array1::from_shape_fn(6, |i| 0.2 + 0.1 * i as f64));
    let eps = 1e-5;
    let y = linear(&x, &w, &b);
    let bn_out = (&y - &mean) / (&var + eps).mapv(f64::sqrt) * &gamma + &beta;
    let (mut wf, mut bf) = (w.clone(), b.clone());
    let bn = BatchNorm { gamma: gamma.view(), beta: beta.view(), mean: mean.view(), var: var.view(), eps };
    fold_batch_norm(wf.view_mut(), bf.view_mut(), &bn)?;
    assert!(max_abs(&linear(&x, &wf, &bf), &bn_out) < 1e-12);
    // A negative variance is refused.
    let neg = Array1::from_elem(6, -1.0);
    let bad = BatchNorm { var: neg.view(), ..bn };
    assert!(fold_batch_norm(wf.view_mut(), bf.view_mut(), &bad).is_err());
    Ok(())
}

proptest! {
    #[test]
    fn equalization_keeps_the_function_and_equalizes_the_ranges(n in 1usize..8, inp in 1usize..6, out in 1usize..6, seed in 0u64..500) {
        let (mut w1, mut w2) = (mat(n, inp, seed, true), mat(out, n, seed + 1, false));
        let mut b1 = Array1::from_shape_fn(n, |i| 0.3 * i as f64 - 0.5);
        let b2 = Array1::from_shape_fn(out, |i| 0.1 * i as f64);
        let x = mat(7, inp, seed + 2, false);
        let before = linear(&relu(linear(&x, &w1, &b1)), &w2, &b2);
        let r1: Vec<f64> = w1.rows().into_iter().map(|r| r.iter().fold(0.0f64, |m, v| m.max(v.abs()))).collect();
        let r2: Vec<f64> = w2.columns().into_iter().map(|c| c.iter().fold(0.0f64, |m, v| m.max(v.abs()))).collect();
        equalize_pair(w1.view_mut(), b1.view_mut(), w2.view_mut()).expect("shapes chain");
        let after = linear(&relu(linear(&x, &w1, &b1)), &w2, &b2);
        prop_assert!(max_abs(&before, &after) < 1e-12);
        for i in 0..n {
            let a = w1.row(i).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let b = w2.column(i).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            if r1[i] > 0.0 && r2[i] > 0.0 {
                prop_assert!((a - b).abs() <= 1e-12 * a.max(1.0), "{a} vs {b}");
                prop_assert!((a - (r1[i] * r2[i]).sqrt()).abs() <= 1e-12 * a.max(1.0));
            }
        }
    }
}

#[test]
fn equalization_shrinks_the_spread_of_channel_ranges() -> Result<(), QuantError> {
    let (mut w1, mut w2) = (mat(8, 6, 3, true), mat(5, 8, 4, false));
    let spread = |w: &Array2<f64>| {
        let r: Vec<f64> = w.rows().into_iter().map(|r| r.iter().fold(0.0f64, |m, v| m.max(v.abs()))).collect();
        r.iter().cloned().fold(0.0, f64::max) / r.iter().cloned().fold(f64::INFINITY, f64::min)
    };
    let before = spread(&w1);
    let mut b1 = Array1::zeros(8);
    equalize_pair(w1.view_mut(), b1.view_mut(), w2.view_mut())?;
    assert!(spread(&w1) < before / 4.0, "{} -> {}", before, spread(&w1));
    // Per-tensor 4-bit quantization of the first layer loses less after equalization.
    let spec = UniformSpec::builder().bits(4).scheme(Scheme::SymmetricNarrow).check()?;
    let rel_err = |w: &Array2<f64>| -> Result<f64, QuantError> {
        let q = fake_quantize(w, &spec)?.values;
        Ok((&q - w).mapv(|v| v * v).sum() / w.mapv(|v| v * v).sum())
    };
    let original = mat(8, 6, 3, true);
    assert!(rel_err(&w1)? < rel_err(&original)?);
    Ok(())
}

#[test]
fn grouped_columns_equalize_convolutions() -> Result<(), QuantError> {
    // W2 has 3 columns per channel of W1 (a 1x3 kernel): scaling whole groups keeps the function
    // when each channel's activation feeds its group.
    let (mut w1, mut w2) = (mat(4, 5, 5, true), mat(6, 12, 6, false));
    let mut b1 = Array1::from_shape_fn(4, |i| 0.2 * i as f64);
    let x = mat(3, 5, 7, false);
    let expand = |h: &Array2<f64>| Array2::from_shape_fn((h.nrows(), 12), |(r, c)| h[[r, c / 3]] * (1.0 + (c % 3) as f64));
    let before = expand(&relu(linear(&x, &w1, &b1))).dot(&w2.t());
    equalize_pair_grouped(w1.view_mut(), b1.view_mut(), w2.view_mut(), 4)?;
    let after = expand(&relu(linear(&x, &w1, &b1))).dot(&w2.t());
    assert!(max_abs(&before, &after) < 1e-12);
    assert!(equalize_pair_grouped(w1.view_mut(), b1.view_mut(), w2.view_mut(), 5).is_err());
    Ok(())
}

#[test]
fn depthwise_triples_equalize_with_cube_roots() -> Result<(), QuantError> {
    // h1 = ReLU(W1 x + b1) per position; depthwise 1-D convolution per channel with kernel D[i,:]
    // (valid, length 3) plus bd; ReLU; then W3 per position.
    let (c, t, k) = (4, 6, 3);
    let (mut w1, mut d, mut w3) = (mat(c, 5, 8, true), mat(c, k, 9, true), mat(3, c, 10, false));
    let (mut b1, mut bd) = (Array1::from_shape_fn(c, |i| 0.1 * i as f64), Array1::from_shape_fn(c, |i| -0.05 * i as f64));
    let x = mat(t, 5, 11, false); // t positions × 5 inputs
    let run = |w1: &Array2<f64>, b1: &Array1<f64>, d: &Array2<f64>, bd: &Array1<f64>, w3: &Array2<f64>| {
        let h1 = relu(linear(&x, w1, b1)); // t × c
        let h2 = Array2::from_shape_fn((t - k + 1, c), |(p, i)| ((0..k).map(|j| d[[i, j]] * h1[[p + j, i]]).sum::<f64>() + bd[i]).max(0.0));
        h2.dot(&w3.t())
    };
    let before = run(&w1, &b1, &d, &bd, &w3);
    equalize_triple(w1.view_mut(), b1.view_mut(), d.view_mut(), bd.view_mut(), w3.view_mut())?;
    assert!(max_abs(&before, &run(&w1, &b1, &d, &bd, &w3)) < 1e-12);
    for i in 0..c {
        let r1 = w1.row(i).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let r2 = d.row(i).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let r3 = w3.column(i).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!((r1 - r2).abs() < 1e-12 && (r2 - r3).abs() < 1e-12, "{r1} {r2} {r3}");
    }
    Ok(())
}

#[test]
fn high_bias_absorption_is_exact_above_the_threshold() -> Result<(), QuantError> {
    let (w1, w2) = (mat(5, 4, 12, false), mat(3, 5, 13, false));
    let mut b1 = Array1::from_shape_fn(5, |i| 3.0 + i as f64); // large positive biases
    let mut b2 = Array1::zeros(3);
    let (beta, gamma) = (b1.clone(), Array1::from_elem(5, 0.2));
    // Inputs small enough that every pre-activation stays above beta − 3·gamma.
    let x = mat(6, 4, 14, false).mapv(|v| v * 0.05);
    let before = linear(&relu(linear(&x, &w1, &b1)), &w2, &b2);
    let c = absorb_high_bias(b1.view_mut(), w2.view(), b2.view_mut(), beta.view(), gamma.view())?;
    assert!(c.iter().zip(&beta).all(|(c, b)| (c - (b - 0.6)).abs() < 1e-12));
    let after = linear(&relu(linear(&x, &w1, &b1)), &w2, &b2);
    assert!(max_abs(&before, &after) < 1e-12);
    Ok(())
}

#[test]
fn normal_and_relu_expectation_goldens() {
    assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
    assert!((normal_cdf(1.96) - 0.975_002_104_851_779_5).abs() < 1e-7);
    assert!((normal_cdf(-1.0) - 0.158_655_253_931_457_05).abs() < 1e-7);
    // E[ReLU(N(0,1))] = φ(0); E[ReLU(N(1,1))] = Φ(1) + φ(1).
    assert!((relu_expectation(0.0, 1.0) - 0.398_942_280_401_432_7).abs() < 1e-7);
    assert!((relu_expectation(1.0, 1.0) - 1.083_315_470_587_686_4).abs() < 1e-7);
    // Far below zero: −2·(1 − Φ(4)) + 0.5·φ(4) = 3.5726e-6.
    assert!((relu_expectation(-2.0, 0.5) - 3.572_629e-6).abs() < 1e-9);
    assert_eq!(relu_expectation(-1.0, 0.0), 0.0);
    // ReLU6 of N(3, 1) is symmetric about 3.
    assert!((relu6_expectation(3.0, 1.0) - 3.0).abs() < 1e-7);
}

#[test]
fn relu_expectation_matches_sampling() {
    // Box–Muller with a fixed xorshift: 200k draws; the mean is within 4 standard errors.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut unif = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for (beta, gamma) in [(0.3, 1.2), (-0.5, 0.7), (2.0, 0.5)] {
        let n = 200_000;
        let draws: Vec<f64> = (0..n)
            .map(|_| {
                let (u, v) = (unif().max(1e-300), unif());
                beta + gamma * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
            })
            .map(|x| x.max(0.0))
            .collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let sd = (draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!((mean - relu_expectation(beta, gamma)).abs() < 4.0 * sd / (n as f64).sqrt(), "{beta} {gamma}: {mean}");
    }
}

#[test]
fn bias_correction_removes_the_mean_output_error() -> Result<(), QuantError> {
    let (w, x) = (mat(6, 8, 15, false), mat(40, 8, 16, false).mapv(|v| v.max(0.0) + 0.2));
    let spec = UniformSpec::builder().bits(3).scheme(Scheme::SymmetricNarrow).check()?;
    let wq = fake_quantize(&w, &spec)?.values;
    let b = Array1::from_shape_fn(6, |i| 0.1 * i as f64);
    let mean_err = |bq: &Array1<f64>| (linear(&x, &wq, bq) - linear(&x, &w, &b)).mean_axis(Axis(0)).expect("rows");
    assert!(mean_err(&b).iter().any(|e| e.abs() > 1e-3), "quantization should bias the output");
    // Analytical, with the exact input mean: zero mean error.
    let mut ba = b.clone();
    correct_bias(w.view(), wq.view(), ba.view_mut(), x.mean_axis(Axis(0)).expect("rows").view())?;
    assert!(mean_err(&ba).iter().all(|e| e.abs() < 1e-12));
    // Empirical, from the two layers' outputs: the same.
    let mut be = b.clone();
    correct_bias_empirical(be.view_mut(), linear(&x, &w, &b).view(), linear(&x, &wq, &b).view())?;
    assert!(mean_err(&be).iter().all(|e| e.abs() < 1e-12));
    assert!(correct_bias_empirical(be.view_mut(), linear(&x, &w, &b).view(), linear(&x, &wq, &b).slice(s![..3, ..]).view()).is_err());
    Ok(())
}

#[test]
fn adaround_beats_round_to_nearest_on_every_layer() -> Result<(), QuantError> {
    // Layers of a small network, each with its own calibration inputs (correlated, as real
    // activations are), at 4 and 3 bits.
    for (seed, (out, inp), bits) in [(20u64, (8usize, 16usize), 4u8), (21, (12, 10), 4), (22, (6, 24), 3), (23, (16, 16), 3)] {
        let w = mat(out, inp, seed, false).mapv(|v| v * 0.1);
        let base = mat(64, 4, seed + 100, false);
        let mix = mat(4, inp, seed + 200, false);
        let x = base.dot(&mix) + mat(64, inp, seed + 300, false).mapv(|v| v * 0.1);
        let r = AdaRound { bits, iterations: 2000, lr: 1e-2, ..AdaRound::default() }.round(w.view(), x.view())?;
        assert!(r.reconstruction < r.nearest, "seed {seed}: {} >= nearest {}", r.reconstruction, r.nearest);
        // Codes are valid and are one of the two neighbours of W/S.
        let qmax = (1 << (bits - 1)) - 1;
        for ((o, k), &c) in r.codes.indexed_iter() {
            let t = w[[o, k]] / r.scales[o];
            assert!(c.abs() <= qmax && (f64::from(c) - t.floor()).abs() <= 1.0 + 1e-9, "{c} for {t}");
        }
    }
    Ok(())
}

#[test]
fn adaround_settings_are_checked() {
    let (w, x) = (mat(2, 3, 1, false), mat(4, 3, 2, false));
    for bad in [
        AdaRound { bits: 1, ..AdaRound::default() },
        AdaRound { iterations: 0, ..AdaRound::default() },
        AdaRound { lr: f64::NAN, ..AdaRound::default() },
        AdaRound { warm_start: 1.0, ..AdaRound::default() },
        AdaRound { lambda: -1.0, ..AdaRound::default() },
    ] {
        assert!(bad.round(w.view(), x.view()).is_err(), "{bad:?}");
    }
    // Learning rates and regularisers are settings, not tolerances.
    for (bad, name) in [
        (AdaRound { lr: f64::NAN, ..AdaRound::default() }, "lr"),
        (AdaRound { warm_start: 1.0, ..AdaRound::default() }, "warm_start"),
        (AdaRound { lambda: -1.0, ..AdaRound::default() }, "lambda"),
    ] {
        assert!(matches!(bad.round(w.view(), x.view()), Err(QuantError::InvalidSetting { name: n, .. }) if n == name), "{bad:?}");
    }
    assert!(AdaRound::default().round(w.view(), mat(4, 2, 2, false).view()).is_err());
}

#[test]
fn easyquant_never_loses_cosine_and_gains_on_heavy_tails() -> Result<(), QuantError> {
    for (seed, bits) in [(30u64, 4u8), (31, 4), (32, 6), (33, 8)] {
        // Weights and inputs with a few large outliers, where max-abs scales waste levels.
        let w = mat(10, 24, seed, false).mapv(|v| v * 0.1)
            + Array2::from_shape_fn((10, 24), |(o, k)| if (o * 24 + k) % 37 == 0 { 0.8 } else { 0.0 });
        let x = mat(48, 24, seed + 1, false) + Array2::from_shape_fn((48, 24), |(r, k)| if (r * 24 + k) % 53 == 0 { 6.0 } else { 0.0 });
        let e = EasyQuant { weight_bits: bits, activation_bits: bits, candidates: 40, ..EasyQuant::default() };
        let r = e.search(w.view(), x.view())?;
        assert!(r.cosine >= r.initial_cosine, "{} < {}", r.cosine, r.initial_cosine);
        if bits == 4 {
            assert!(r.cosine > r.initial_cosine, "seed {seed}: no gain at 4 bits ({})", r.cosine);
        }
        assert!(r.weight_scales.iter().all(|&s| s > 0.0) && r.activation_scale > 0.0);
    }
    let (w, x) = (mat(2, 3, 1, false), mat(4, 3, 2, false));
    for bad in [
        EasyQuant { weight_bits: 1, ..EasyQuant::default() },
        EasyQuant { candidates: 0, ..EasyQuant::default() },
        EasyQuant { rounds: 0, ..EasyQuant::default() },
        EasyQuant { range: (1.5, 2.0), ..EasyQuant::default() },
    ] {
        assert!(bad.search(w.view(), x.view()).is_err(), "{bad:?}");
    }
    Ok(())
}

#[test]
fn adaround_with_mini_batches_is_seeded_and_still_beats_nearest() -> Result<(), QuantError> {
    let w = mat(8, 16, 40, false).mapv(|v| v * 0.1);
    let x = mat(256, 4, 41, false).dot(&mat(4, 16, 42, false)) + mat(256, 16, 43, false).mapv(|v| v * 0.1);
    let p = AdaRound { bits: 3, iterations: 1500, lr: 1e-2, batch_size: 32, seed: 7, ..AdaRound::default() };
    let (a, b) = (p.round(w.view(), x.view())?, p.round(w.view(), x.view())?);
    assert_eq!(a, b, "same seed, same result");
    assert!(a.reconstruction < a.nearest, "{} vs {}", a.reconstruction, a.nearest);
    let c = AdaRound { seed: 8, ..p }.round(w.view(), x.view())?;
    assert!(c.reconstruction < c.nearest);
    Ok(())
}
