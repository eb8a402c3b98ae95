//! The BERT-style encoder: gradients against finite differences, exact HVPs, layout, hooks.

mod common;

use common::toy_data;
use ndarray::Array1;
use quant_hessian::{Autodiff, Batch, HessianError, HvpKind, Model, finite_difference_hvp};
use quant_models::{Encoder, EncoderConfig};

fn small() -> (Encoder<f64>, Array1<f64>) {
    let cfg = EncoderConfig { tokens: 3, features: 4, d_model: 6, heads: 2, d_ff: 5, layers: 2, classes: 3 };
    let (x, y) = toy_data(7, 12, 3, 5);
    let m = Encoder::new(&x, &y, cfg).expect("valid");
    let w = m.init(3);
    (m, w)
}

fn loss_grad(m: &Encoder<f64>, w: &Array1<f64>, batch: Batch<'_>) -> (f64, Array1<f64>) {
    let mut g = Array1::zeros(m.dim());
    let l = m.loss_grad_into(w.view(), batch, g.view_mut()).expect("gradient");
    (l, g)
}

#[test]
fn gradient_matches_finite_differences_of_the_loss() {
    let (m, w) = small();
    for batch in [Batch::All, Batch::Indices(&[4, 1, 1, 6])] {
        let (_, g) = loss_grad(&m, &w, batch);
        let mut worst = 0f64;
        for j in 0..m.dim() {
            let h = 1e-6;
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[j] += h;
            wm[j] -= h;
            let fd = (loss_grad(&m, &wp, batch).0 - loss_grad(&m, &wm, batch).0) / (2.0 * h);
            worst = worst.max((fd - g[j]).abs());
            // Central differences of a loss of order 1: O(h²) + O(ε/h) ≈ 1e-10.
            assert!(
                (fd - g[j]).abs() < 1e-8,
                "{}: {fd} vs {}",
                m.blocks().iter().find(|b| b.range().contains(&j)).map_or("?", |b| b.name()),
                g[j]
            );
        }
        assert!(worst > 0.0);
    }
}

#[test]
fn exact_hvp_matches_finite_differences() {
    let (m, w) = small();
    assert_eq!(m.hvp_kind(), HvpKind::Exact);
    for seed in 0..3u64 {
        let v = Array1::from_shape_fn(m.dim(), |i| common::hash_unit(i as u64 * 31 + seed));
        let mut exact = Array1::zeros(m.dim());
        m.hvp_into(w.view(), v.view(), Batch::All, exact.view_mut()).expect("hvp");
        let mut fd = Array1::zeros(m.dim());
        finite_difference_hvp(&m, w.view(), v.view(), Batch::All, fd.view_mut()).expect("hvp");
        let scale = exact.iter().fold(0f64, |a, x| a.max(x.abs()));
        let err = (&exact - &fd).iter().fold(0f64, |a, x| a.max(x.abs()));
        // The finite difference's own accuracy, about ε^(2/3) relative times curvature ratios.
        assert!(err < 1e-7 * scale, "error {err}, scale {scale}");
    }
}

#[test]
fn blocks_are_named_like_bert() {
    let (m, _) = small();
    let names: Vec<&str> = m.blocks().iter().map(|b| b.name()).collect();
    for expected in [
        "embedding.weight",
        "embedding.position",
        "encoder.0.attention.q.weight",
        "encoder.0.attention.k.bias",
        "encoder.1.attention.v.weight",
        "encoder.1.attention.out.weight",
        "encoder.0.attention.norm.gain",
        "encoder.1.ffn.in.weight",
        "encoder.1.ffn.out.bias",
        "encoder.1.ffn.norm.bias",
        "classifier.weight",
        "classifier.bias",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    // Blocks tile the parameter vector.
    let mut end = 0;
    for b in m.blocks() {
        assert_eq!(b.range().start, end);
        end = b.range().end;
    }
    assert_eq!(end, m.dim());
    // Weight blocks: embedding, 6 per layer, classifier.
    let wb = m.weight_blocks();
    assert_eq!(wb.len(), 1 + 6 * 2 + 1);
    for quant_hessian::MatrixBlock { block: b, fan_in: fi, fan_out: fo } in wb {
        assert_eq!(m.blocks()[b].len(), fi * fo);
    }
}

#[test]
fn hooks_see_every_linear_input_and_can_change_the_result() {
    let (m, w) = small();
    let (x, _) = toy_data(7, 12, 3, 5);
    let mut sites = Vec::new();
    let plain = m.logits(w.view(), x.view()).expect("valid");
    let same = m.logits_with(w.view(), x.view(), |s, _| sites.push(s)).expect("valid");
    assert_eq!(plain, same);
    // Embedding, 4 per layer, classifier.
    assert_eq!(sites, (0..=9).collect::<Vec<_>>());
    let zeroed = m
        .logits_with(w.view(), x.view(), |s, mut a| {
            if s == 9 {
                a.fill(0.0)
            }
        })
        .expect("valid");
    // With the classifier input zeroed, every row's scores are the classifier bias (zero at init).
    assert!(zeroed.iter().all(|&v| v == 0.0));
    let acc = m.accuracy(w.view(), Batch::All).expect("valid");
    assert!((0.0..=1.0).contains(&acc));
}

#[test]
fn bad_configurations_give_typed_errors() {
    let (x, y) = toy_data(5, 12, 3, 1);
    let cfg = EncoderConfig { tokens: 3, features: 4, d_model: 6, heads: 4, d_ff: 5, layers: 1, classes: 3 };
    assert!(matches!(Encoder::new(&x, &y, cfg), Err(HessianError::ShapeMismatch { .. })));
    let cfg = EncoderConfig { heads: 2, ..cfg };
    assert!(matches!(Encoder::new(&x, &y, EncoderConfig { layers: 0, ..cfg }), Err(HessianError::InvalidWidth { .. })));
    assert!(matches!(Encoder::new(&x, &y, EncoderConfig { tokens: 4, ..cfg }), Err(HessianError::ShapeMismatch { .. })));
    assert!(matches!(Encoder::new(&x, &y, EncoderConfig { classes: 2, ..cfg }), Err(HessianError::InvalidLabel { .. })));
    assert!(Encoder::new(&x, &y, cfg).is_ok());
}
