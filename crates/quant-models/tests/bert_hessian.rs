//! The BERT-family model's gradient and exact Hessian-vector products: against finite
//! differences in f64, and the Lanczos top eigenvalue of a block against its dense Hessian.
#![cfg(feature = "bert")]

mod common;

use std::path::Path;

use common::{dense, jacobi_eigen};
use ndarray::Array1;
use quant_core::rng;
use quant_hessian::{Autodiff, Batch, HessianOperator, Lanczos, Model, OperatorExt, Product};
use quant_models::bert::{Bert, BertConfig, BertTokenizer, HiddenAct, Pooling, PoolingMode, SelfDistillation, Sentence, TokenBatch};

fn data(dir: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bert").join(dir)
}

const SENTENCES: [&str; 5] =
    ["Hello world", "the cat sat on the mat.", "?!", "MiXeD CaSe 123", "the dog ran with the cat and it must be cut"];

/// The self-distillation loss of a golden tiny checkpoint (f64) on five sentences.
fn loss_of(dir: &str) -> SelfDistillation<f64> {
    let model = Bert::<f64>::load(&data(dir)).expect("loads");
    let tok = BertTokenizer::from_dir(&data(dir), 16).expect("tokenizer");
    SelfDistillation::new(model, tok.encode(&SENTENCES).expect("encodes")).expect("valid")
}

/// `W₀` moved by a seeded perturbation, so the gradient is not zero.
fn moved(m: &SelfDistillation<f64>, scale: f64, seed: u64) -> Array1<f64> {
    &m.weights() + &rng::normal::<f64>(m.dim(), seed, 1).mapv(|v| v * scale)
}

/// Coordinates to check: a few from every block (the word table's from rows the sentences use).
fn coordinates(m: &SelfDistillation<f64>) -> Vec<usize> {
    let used: Vec<usize> = m.sentences().sentences().iter().flat_map(|s| s.ids.iter().map(|&i| i as usize)).collect();
    let mut out = Vec::new();
    for (b, block) in m.blocks().iter().enumerate() {
        let r = block.range();
        if b == 0 {
            let d = m.model().config().hidden_size;
            out.extend([used[1] * d + 3, used[2] * d + 17, used[5] * d + 31].map(|i| r.start + i));
        } else {
            out.extend([r.start, r.start + r.len() / 2 + 1, r.end - 1]);
        }
    }
    out
}

#[test]
fn the_gradient_matches_central_differences() {
    for dir in ["plain", "prefixed", "cls", "max"] {
        let m = loss_of(dir);
        let w = moved(&m, 0.02, 3);
        let mut g = Array1::zeros(m.dim());
        let loss = m.loss_grad_into(w.view(), Batch::All, g.view_mut()).expect("gradient");
        assert!(loss > 0.0);
        let h = 1e-6;
        for i in coordinates(&m) {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[i] += h;
            wm[i] -= h;
            let mut scratch = Array1::zeros(m.dim());
            let lp = m.loss_grad_into(wp.view(), Batch::All, scratch.view_mut()).expect("loss");
            let lm = m.loss_grad_into(wm.view(), Batch::All, scratch.view_mut()).expect("loss");
            let fd = (lp - lm) / (2.0 * h);
            assert!((g[i] - fd).abs() <= 1e-6 * (g[i].abs() + fd.abs()) + 1e-9, "{dir} [{i}] {}: {} vs {fd}", block_name(&m, i), g[i]);
        }
    }
}

fn block_name(m: &SelfDistillation<f64>, i: usize) -> &str {
    m.blocks().iter().find(|b| b.range().contains(&i)).map_or("?", |b| b.name())
}

#[test]
fn at_the_loaded_weights_loss_and_gradient_vanish() {
    let m = loss_of("plain");
    // The gradient overwrites every entry of the buffer it is given.
    let mut g = Array1::from_elem(m.dim(), 7.0);
    let loss = m.loss_grad_into(m.weights(), Batch::All, g.view_mut()).expect("gradient");
    assert_eq!(loss, 0.0);
    assert!(g.iter().all(|v| v.abs() < 1e-12));
    // A batch of some sentences is the loss over those.
    let mut gi = Array1::zeros(m.dim());
    let w = moved(&m, 0.02, 4);
    let li = m.loss_grad_into(w.view(), Batch::Indices(&[1, 3]), gi.view_mut()).expect("gradient");
    let sub = SelfDistillation::new(
        m.model().clone(),
        TokenBatch::new(vec![m.sentences().sentences()[1].clone(), m.sentences().sentences()[3].clone()]).expect("valid"),
    )
    .expect("valid");
    let mut gs = Array1::zeros(m.dim());
    let ls = sub.loss_grad_into(w.view(), Batch::All, gs.view_mut()).expect("gradient");
    assert_eq!(li, ls);
    assert_eq!(gi, gs);
}

#[test]
fn exact_hvps_match_differences_of_the_gradient() {
    for dir in ["plain", "prefixed"] {
        let m = loss_of(dir);
        let w = moved(&m, 0.02, 5);
        let v = rng::normal::<f64>(m.dim(), 6, 2);
        let mut hv = Array1::zeros(m.dim());
        m.hvp_into(w.view(), v.view(), Batch::All, hv.view_mut()).expect("hvp");
        let h = 1e-5;
        let (mut gp, mut gm) = (Array1::zeros(m.dim()), Array1::zeros(m.dim()));
        m.loss_grad_into((&w + &(&v * h)).view(), Batch::All, gp.view_mut()).expect("gradient");
        m.loss_grad_into((&w - &(&v * h)).view(), Batch::All, gm.view_mut()).expect("gradient");
        let fd = (gp - gm) / (2.0 * h);
        let scale = fd.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        for i in coordinates(&m) {
            assert!((hv[i] - fd[i]).abs() <= 1e-6 * scale, "{dir} [{i}] {}: {} vs {}", block_name(&m, i), hv[i], fd[i]);
        }
    }
}

#[test]
fn lanczos_finds_a_blocks_top_eigenvalue_of_the_gauss_newton_hessian() {
    // A model small enough for a dense block Hessian: 8 wide, 2 heads, 2 layers.
    let cfg = BertConfig {
        hidden_size: 8,
        num_attention_heads: 2,
        num_hidden_layers: 2,
        intermediate_size: 16,
        vocab_size: 20,
        max_position_embeddings: 12,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: HiddenAct::Gelu,
    };
    for pooling in [Pooling { mode: PoolingMode::Mean, normalize: true }, Pooling { mode: PoolingMode::Max, normalize: false }] {
        let model = Bert::<f64>::random(cfg, pooling, 11).expect("valid");
        let sentences = (0..6)
            .map(|s| {
                let len = 3 + s;
                Sentence {
                    ids: (0..len).map(|t| ((s * 7 + t * 3) % 20) as u32).collect(),
                    type_ids: (0..len).map(|t| (t % 2) as u32).collect(),
                }
            })
            .collect();
        let m = SelfDistillation::new(model, TokenBatch::new(sentences).expect("valid")).expect("valid");
        let value = m.blocks().iter().position(|b| b.name() == "encoder.layer.1.attention.self.value.weight").expect("block");
        let op = HessianOperator::block(&m, m.weights(), Batch::All, value).expect("valid");
        let h = dense(&op);
        // Symmetric (exact HVPs of a smooth loss) and positive semi-definite at W₀.
        let asym = (&h - &h.t()).iter().fold(0.0f64, |a, b| a.max(b.abs()));
        let (eigs, _) = jacobi_eigen(&h);
        let top = eigs[eigs.len() - 1];
        assert!(asym <= 1e-10 * top, "asymmetry {asym} vs top {top}");
        assert!(eigs[0] >= -1e-10 * top, "smallest {} of a Gauss-Newton matrix", eigs[0]);
        let ex = op.lanczos(&Lanczos::builder().k(1).tol(1e-12).check().expect("valid")).expect("converges");
        assert!((ex.top.values[0] - top).abs() <= 1e-8 * top, "{pooling:?}: lanczos {} vs dense {top}", ex.top.values[0]);
    }
}

#[test]
fn a_loss_over_some_tensors_is_the_full_loss_restricted_to_them() {
    let full = loss_of("plain");
    let model = full.model().clone();
    let vars = model.weight_matrices();
    let part = SelfDistillation::with_variables(model.clone(), full.sentences().clone(), &vars).expect("valid");
    assert_eq!(part.blocks().len(), vars.len());
    assert_eq!(part.dim(), vars.iter().map(|&b| model.blocks()[b].len()).sum::<usize>());
    // A point that moves only the variables, in both parameterisations.
    let wp = moved(&part, 0.02, 7);
    let mut wf = full.weights().to_owned();
    for (pb, &b) in part.blocks().iter().zip(&vars) {
        assert_eq!(pb.name(), model.blocks()[b].name());
        wf.slice_mut(ndarray::s![model.blocks()[b].range()]).assign(&wp.slice(ndarray::s![pb.range()]));
    }
    let (mut gp, mut gf) = (Array1::zeros(part.dim()), Array1::zeros(full.dim()));
    let lp = part.loss_grad_into(wp.view(), Batch::All, gp.view_mut()).expect("gradient");
    let lf = full.loss_grad_into(wf.view(), Batch::All, gf.view_mut()).expect("gradient");
    assert_eq!(lp, lf);
    let vp = rng::normal::<f64>(part.dim(), 8, 3);
    let mut vf = Array1::zeros(full.dim());
    let (mut hp, mut hf) = (Array1::zeros(part.dim()), Array1::zeros(full.dim()));
    for (pb, &b) in part.blocks().iter().zip(&vars) {
        vf.slice_mut(ndarray::s![model.blocks()[b].range()]).assign(&vp.slice(ndarray::s![pb.range()]));
    }
    part.hvp_into(wp.view(), vp.view(), Batch::All, hp.view_mut()).expect("hvp");
    full.hvp_into(wf.view(), vf.view(), Batch::All, hf.view_mut()).expect("hvp");
    for (pb, &b) in part.blocks().iter().zip(&vars) {
        let r = model.blocks()[b].range();
        for (i, j) in pb.range().zip(r) {
            assert!((gp[i] - gf[j]).abs() <= 1e-12 * gf[j].abs().max(1e-6), "gradient {}", pb.name());
            assert!((hp[i] - hf[j]).abs() <= 1e-12 * hf[j].abs().max(1e-6), "hvp {}", pb.name());
        }
    }
    // Bad selections are refused.
    assert!(SelfDistillation::with_variables(model.clone(), full.sentences().clone(), &[]).is_err());
    assert!(SelfDistillation::with_variables(model, full.sentences().clone(), &[10_000]).is_err());
}

/// `H v` on a batch by the whole-model exact product, restricted to block `b`.
fn full_block_hvp(m: &SelfDistillation<f64>, w: ndarray::ArrayView1<'_, f64>, batch: Batch<'_>, b: usize, v: &Array1<f64>) -> Array1<f64> {
    let r = m.blocks()[b].range();
    let mut padded = Array1::zeros(m.dim());
    padded.slice_mut(ndarray::s![r.clone()]).assign(v);
    let mut hv = Array1::zeros(m.dim());
    m.hvp_into(w, padded.view(), batch, hv.view_mut()).expect("hvp");
    hv.slice(ndarray::s![r]).to_owned()
}

#[test]
fn block_products_at_the_loaded_weights_equal_the_whole_model_product_for_every_block() {
    // At W₀ the block product runs forward mode from the block's layer and a reverse pass
    // that stops at the block (the Gauss-Newton form, exact there); the reference is the
    // dual-number product of the whole model.
    let subset = [4usize, 0, 2];
    for dir in ["plain", "prefixed", "cls", "max"] {
        let m = loss_of(dir);
        for batch in [Batch::All, Batch::Indices(&subset)] {
            let curvature = m.curvature(m.weights(), batch).expect("prepares");
            let cases: Vec<(usize, Array1<f64>, Array1<f64>)> = (0..m.blocks().len())
                .map(|b| {
                    let v = rng::normal::<f64>(m.blocks()[b].len(), 40 + b as u64, 1);
                    let reference = full_block_hvp(&m, m.weights(), batch, b, &v);
                    (b, v, reference)
                })
                .collect();
            let largest = cases.iter().flat_map(|c| c.2.iter()).fold(0.0f64, |a, x| a.max(x.abs()));
            for (b, v, reference) in &cases {
                let block = &m.blocks()[*b];
                let scale = reference.iter().fold(0.0f64, |a, x| a.max(x.abs()));
                // The key bias adds the same score to every key of a query: softmax cancels it.
                let flat = block.name().contains("token_type") || block.name().contains("key.bias");
                assert!(scale > 0.0 || flat, "{dir} {}: a zero reference", block.name());
                for product in [Product::Hessian, Product::GaussNewton] {
                    let mut out = Array1::from_elem(block.len(), f64::NAN);
                    curvature.block_product_into(product, *b, v.view(), out.view_mut()).expect("product");
                    assert!(out.iter().all(|x| x.is_finite()), "{dir} {}: entries not written", block.name());
                    let err = (&out - reference).iter().fold(0.0f64, |a, x| a.max(x.abs()));
                    // Relative to the block's own scale, and to the largest product for the
                    // blocks whose curvature is zero (rounding of O(1e-16) of the products).
                    assert!(
                        err <= 1e-10 * scale + 1e-14 * largest,
                        "{dir} {batch:?} {} {product:?}: error {err:e} of {scale:e}",
                        block.name()
                    );
                }
            }
        }
    }
}

#[test]
fn away_from_the_loaded_weights_the_gauss_newton_product_is_two_over_n_jt_j() {
    // G = (2/n) Jᵀ J: uᵀ G v = (2/n) ⟨J u, J v⟩ with J from central differences of the
    // embeddings (independent of the forward-mode and reverse code), and the Hessian product
    // there is the exact whole-model one (which differs from G by the residual terms).
    for dir in ["plain", "cls", "max"] {
        let m = loss_of(dir);
        let w = moved(&m, 0.02, 9);
        let curvature = m.curvature(w.view(), Batch::All).expect("prepares");
        let n = m.sentences().len() as f64;
        let mut full = m.model().weights().to_owned();
        full.assign(&w); // every tensor is a variable here
        for name in [
            "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.1.output.dense.weight",
            "encoder.layer.0.attention.output.LayerNorm.weight",
            "embeddings.position_embeddings.weight",
        ] {
            let b = m.blocks().iter().position(|x| x.name().ends_with(name)).expect("block");
            let r = m.blocks()[b].range();
            let (u, v) = (rng::normal::<f64>(r.len(), 70, 1), rng::normal::<f64>(r.len(), 71, 1));
            let jvp = |d: &Array1<f64>| {
                let h = 1e-5;
                let (mut wp, mut wm) = (full.clone(), full.clone());
                wp.slice_mut(ndarray::s![r.clone()]).scaled_add(h, d);
                wm.slice_mut(ndarray::s![r.clone()]).scaled_add(-h, d);
                let (ep, em) = (
                    m.model().embed_with(wp.view(), m.sentences()).expect("embeds"),
                    m.model().embed_with(wm.view(), m.sentences()).expect("embeds"),
                );
                (ep - em) / (2.0 * h)
            };
            let expected = 2.0 / n * (&jvp(&u) * &jvp(&v)).sum();
            let mut gv = Array1::zeros(r.len());
            curvature.block_product_into(Product::GaussNewton, b, v.view(), gv.view_mut()).expect("product");
            let got = u.dot(&gv);
            assert!((got - expected).abs() <= 1e-6 * expected.abs(), "{dir} {name}: uᵀGv {got} vs (2/n)⟨Ju, Jv⟩ {expected}");
            let mut hv = Array1::zeros(r.len());
            curvature.block_product_into(Product::Hessian, b, v.view(), hv.view_mut()).expect("product");
            let reference = full_block_hvp(&m, w.view(), Batch::All, b, &v);
            assert_eq!(hv, reference, "{dir} {name}: the Hessian product away from W₀");
        }
    }
}

#[test]
fn several_directions_in_one_pass_equal_one_at_a_time() {
    // Stacked tangents (one forward-mode pass for k directions) against k single products,
    // and the forward-mode-only quadratic forms (2/n)‖J v‖² against vᵀ(G v).
    let m = loss_of("plain");
    let subset = [1usize, 3];
    for (w, batch) in [(m.weights().to_owned(), Batch::All), (moved(&m, 0.02, 4), Batch::Indices(&subset))] {
        let curvature = m.curvature(w.view(), batch).expect("prepares");
        for name in [
            "embeddings.word_embeddings.weight",
            "encoder.layer.0.attention.self.key.weight",
            "encoder.layer.1.intermediate.dense.bias",
            "encoder.layer.1.output.LayerNorm.weight",
        ] {
            let b = m.blocks().iter().position(|x| x.name().ends_with(name)).expect("block");
            let len = m.blocks()[b].len();
            let v = ndarray::Array2::from_shape_fn((3, len), |(i, j)| rng::normal::<f64>(len, 90 + i as u64, 0)[j]);
            let mut many = ndarray::Array2::zeros((3, len));
            curvature.block_products_into(Product::GaussNewton, b, v.view(), many.view_mut()).expect("products");
            let mut forms = Array1::zeros(3);
            curvature.block_quadratic_forms_into(Product::GaussNewton, b, v.view(), forms.view_mut()).expect("forms");
            for i in 0..3 {
                let mut one = Array1::zeros(len);
                curvature.block_product_into(Product::GaussNewton, b, v.row(i), one.view_mut()).expect("product");
                let scale = one.iter().fold(0.0f64, |a, x| a.max(x.abs()));
                let err = (&many.row(i) - &one).iter().fold(0.0f64, |a, x| a.max(x.abs()));
                assert!(err <= 1e-13 * scale, "{name} {batch:?} direction {i}: error {err:e} of {scale:e}");
                let expected = v.row(i).dot(&one);
                assert!((forms[i] - expected).abs() <= 1e-10 * expected.abs(), "{name} {batch:?}: form {} vs {expected}", forms[i]);
            }
        }
        // Shapes are checked.
        let mut out = Array1::zeros(2);
        assert!(
            curvature
                .block_quadratic_forms_into(
                    Product::GaussNewton,
                    0,
                    ndarray::Array2::zeros((3, m.blocks()[0].len())).view(),
                    out.view_mut()
                )
                .is_err()
        );
    }
}

#[test]
fn the_loss_with_one_block_changed_runs_from_its_layer_and_equals_the_full_loss() {
    let full = loss_of("plain");
    let model = full.model().clone();
    let mut vars = model.weight_matrices();
    vars.push(model.embedding_tables()[1]);
    let per_tensor = SelfDistillation::with_variables(model, full.sentences().clone(), &vars).expect("valid");
    // Q-BERT's grouping too: a block of several tensors, each at its offset in the block.
    let grouped = per_tensor.clone().grouped_by_layer();
    assert!(grouped.blocks().len() < per_tensor.blocks().len());
    let subset = [4usize, 1];
    for (m, batch) in [&per_tensor, &grouped].into_iter().flat_map(|m| [(m, Batch::All), (m, Batch::Indices(&subset))]) {
        let inputs = m.layer_inputs(batch).expect("inputs");
        for (b, block) in m.blocks().iter().enumerate() {
            let values = &m.weights().slice(ndarray::s![block.range()]) + &rng::normal::<f64>(block.len(), 60, b as u64).mapv(|x| 0.05 * x);
            let mut w = m.weights().to_owned();
            w.slice_mut(ndarray::s![block.range()]).assign(&values);
            let expected = m.loss(w.view(), batch).expect("loss");
            assert!(expected > 0.0);
            assert_eq!(m.loss_with_block(&inputs, b, values.view()).expect("loss"), expected, "{batch:?} {}", block.name());
        }
        assert!(m.loss_with_block(&inputs, 999, ndarray::Array1::zeros(3).view()).is_err());
        assert!(m.loss_with_block(&inputs, 0, ndarray::Array1::zeros(3).view()).is_err());
    }
}

#[test]
fn layer_blocks_equal_the_whole_model_product_restricted_to_the_layer() {
    // Q-BERT's grouping: one block per encoder layer (all its variables), the embeddings'
    // variables their own blocks. Each product injects tangents at every tensor of the layer
    // and runs the reverse pass through the whole layer.
    let subset = [3usize, 1, 4];
    for dir in ["plain", "cls"] {
        let full = loss_of(dir);
        let model = full.model().clone();
        let all: Vec<usize> = (0..model.blocks().len()).collect();
        let matrices = model.weight_matrices();
        for vars in [all, matrices] {
            let m = SelfDistillation::with_variables(model.clone(), full.sentences().clone(), &vars).expect("valid").grouped_by_layer();
            let layers = model.config().num_hidden_layers;
            let groups: Vec<usize> = (0..m.blocks().len()).filter(|&b| m.block_tensors(b).len() > 1).collect();
            assert_eq!(groups.len(), layers, "{dir}: one block per layer");
            for (l, &g) in groups.iter().enumerate() {
                assert!(m.blocks()[g].name().ends_with(&format!("layer.{l}")), "{}", m.blocks()[g].name());
            }
            let covered: usize = (0..m.blocks().len()).map(|b| m.blocks()[b].len()).sum();
            assert_eq!(covered, m.dim(), "the groups cover the variables");
            for batch in [Batch::All, Batch::Indices(&subset)] {
                let curvature = m.curvature(m.weights(), batch).expect("prepares");
                for b in 0..m.blocks().len() {
                    let block = &m.blocks()[b];
                    let v = rng::normal::<f64>(block.len(), 70 + b as u64, 1);
                    let reference = full_block_hvp(&m, m.weights(), batch, b, &v);
                    let scale = reference.iter().fold(0.0f64, |a, x| a.max(x.abs()));
                    let mut out = Array1::from_elem(block.len(), f64::NAN);
                    curvature.block_product_into(Product::Hessian, b, v.view(), out.view_mut()).expect("product");
                    // (`max` would skip a NaN left where no gradient was written.)
                    assert!(out.iter().all(|x| x.is_finite()), "{dir} {}: entries not written", block.name());
                    let err = (&out - &reference).iter().fold(0.0f64, |a, x| a.max(x.abs()));
                    let flat = block.name().contains("token_type");
                    assert!(scale > 0.0 || flat, "{dir} {}: a zero reference", block.name());
                    assert!(err <= 1e-10 * scale + 1e-16, "{dir} {batch:?} {}: error {err:e} of {scale:e}", block.name());
                    // The quadratic form by forward mode alone agrees with vᵀ(Hv).
                    let mut q = Array1::zeros(1);
                    curvature
                        .block_quadratic_forms_into(Product::Hessian, b, v.view().insert_axis(ndarray::Axis(0)), q.view_mut())
                        .expect("form");
                    let vhv = v.dot(&reference);
                    assert!((q[0] - vhv).abs() <= 1e-9 * vhv.abs().max(1e-300), "{dir} {}: form {} vs {vhv}", block.name(), q[0]);
                }
            }
        }
    }
}
