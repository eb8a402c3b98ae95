//! Prepared block products ([`Autodiff::curvature`]) of the reference models: the Hessian
//! block against the whole-model exact product restricted to the block, and the Gauss-Newton
//! block against a dense `Jᵀ (∇²ℓ) J` built from finite-difference Jacobians.

mod common;

use common::{mlps, toy_data};
use ndarray::{Array1, Array2, s};
use quant_core::rng;
use quant_hessian::{Autodiff, Batch, BlockOperator, HessianError, LinearOperator, Model, Product};
use quant_models::{Activation, Mlp};

/// The whole-model exact `H v` restricted to block `b` (`v` on the block).
fn restricted<M: Autodiff<f64>>(m: &M, w: &Array1<f64>, batch: Batch<'_>, b: usize, v: &Array1<f64>) -> Array1<f64> {
    let r = m.blocks()[b].range();
    let mut padded = Array1::zeros(m.dim());
    padded.slice_mut(s![r.clone()]).assign(v);
    let mut out = Array1::zeros(m.dim());
    m.hvp_into(w.view(), padded.view(), batch, out.view_mut()).expect("hvp");
    out.slice(s![r]).to_owned()
}

fn max_abs(a: &Array1<f64>) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

#[test]
fn mlp_block_hessian_products_equal_the_restricted_whole_model_product() {
    let subset = [3usize, 3, 17, 0, 39];
    // Products run in chunks of 128 rows: 300 rows make two whole chunks and a partial one.
    let (x, y) = toy_data(300, 5, 3, 2);
    let many = Mlp::new(&x, &y, &[7, 5], 3, Activation::Gelu).expect("valid");
    for (name, m) in mlps().into_iter().chain([("gelu, 300 rows", many)]) {
        let w = m.init(5);
        for batch in [Batch::All, Batch::Indices(&subset)] {
            let curvature = m.curvature(w.view(), batch).expect("prepares");
            for (b, block) in m.blocks().iter().enumerate() {
                let v = rng::normal::<f64>(block.len(), 11, b as u64);
                let reference = restricted(&m, &w, batch, b, &v);
                let mut out = Array1::from_elem(block.len(), f64::NAN);
                curvature.block_product_into(Product::Hessian, b, v.view(), out.view_mut()).expect("product");
                assert!(out.iter().all(|x| x.is_finite()), "{name} {}: entries not written", block.name());
                let err = max_abs(&(&out - &reference));
                assert!(err <= 1e-12 * max_abs(&reference), "{name} {batch:?} {}: error {err:e}", block.name());
                // ReLU has no second derivative (and softmax regression no activation): there
                // the Gauss-Newton matrix is the Hessian.
                if name == "relu" || name == "softmax" {
                    curvature.block_product_into(Product::GaussNewton, b, v.view(), out.view_mut()).expect("product");
                    let err = max_abs(&(&out - &reference));
                    assert!(err <= 1e-12 * max_abs(&reference), "{name} {batch:?} {}: GN error {err:e}", block.name());
                }
            }
        }
    }
}

/// The dense generalised Gauss-Newton block `(1/n) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i + λ I`,
/// with each `J_i` (logits of row `i` by the block's parameters) from central differences.
fn dense_gauss_newton(m: &Mlp<f64>, w: &Array1<f64>, x: &Array2<f64>, b: usize, l2: f64) -> Array2<f64> {
    let r = m.blocks()[b].range();
    let (n, k, p) = (x.nrows(), *m.widths().last().expect("widths"), r.len());
    let h = 1e-6;
    // jac[[i * k + c, j]] = ∂ logit_ic / ∂ w_j.
    let mut jac = Array2::<f64>::zeros((n * k, p));
    for j in 0..p {
        let (mut wp, mut wm) = (w.clone(), w.clone());
        wp[r.start + j] += h;
        wm[r.start + j] -= h;
        let d = (m.logits(wp.view(), x.view()).expect("logits") - m.logits(wm.view(), x.view()).expect("logits")) / (2.0 * h);
        for i in 0..n {
            for c in 0..k {
                jac[[i * k + c, j]] = d[[i, c]];
            }
        }
    }
    let logits = m.logits(w.view(), x.view()).expect("logits");
    let mut g = Array2::<f64>::zeros((p, p));
    for i in 0..n {
        let row = logits.row(i);
        let mx = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let e = row.mapv(|v| (v - mx).exp());
        let prob = &e / e.sum();
        let hl = Array2::from_diag(&prob) - outer(&prob, &prob);
        let ji = jac.slice(s![i * k..(i + 1) * k, ..]);
        g += &ji.t().dot(&hl).dot(&ji);
    }
    g /= n as f64;
    g + Array2::<f64>::eye(p) * l2
}

fn outer(a: &Array1<f64>, b: &Array1<f64>) -> Array2<f64> {
    Array2::from_shape_fn((a.len(), b.len()), |(i, j)| a[i] * b[j])
}

#[test]
fn mlp_gauss_newton_blocks_match_the_dense_fisher_where_they_differ_from_the_hessian() {
    let (x, y) = toy_data(12, 3, 3, 4);
    for (act, l2) in [(Activation::Tanh, 0.0), (Activation::Gelu, 1e-2)] {
        let m = Mlp::new(&x, &y, &[4], 3, act).expect("valid").with_l2(l2).expect("valid");
        let w = m.init(2);
        let curvature = m.curvature(w.view(), Batch::All).expect("prepares");
        for b in 0..m.blocks().len() {
            let reference = dense_gauss_newton(&m, &w, &x, b, l2);
            let op = BlockOperator::new(&*curvature, Product::GaussNewton, b).expect("offered");
            let mut got = Array2::<f64>::zeros(reference.raw_dim());
            for j in 0..op.dim() {
                let mut e = Array1::zeros(op.dim());
                e[j] = 1.0;
                got.column_mut(j).assign(&op.apply(e.view()).expect("product"));
            }
            let scale = reference.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = (&got - &reference).iter().fold(0.0f64, |a, v| a.max(v.abs()));
            assert!(err <= 1e-7 * scale, "{act:?} block {b}: error {err:e} of {scale:e}");
            // Positive semi-definite and symmetric, while the Hessian block differs from it.
            let asym = (&got - &got.t()).iter().fold(0.0f64, |a, v| a.max(v.abs()));
            assert!(asym <= 1e-12 * scale, "{act:?} block {b}: asymmetry {asym:e}");
            let hop = BlockOperator::new(&*curvature, Product::Hessian, b).expect("offered");
            let mut diff = 0.0f64;
            for j in 0..op.dim() {
                let mut e = Array1::zeros(op.dim());
                e[j] = 1.0;
                diff = diff.max(max_abs(&(hop.apply(e.view()).expect("product") - got.column(j))));
            }
            // The output layer's blocks see no activation curvature: there they agree.
            let last = b + 2 >= m.blocks().len();
            assert!(last || diff > 1e-6 * scale, "{act:?} block {b}: the Hessian equals the Gauss-Newton block ({diff:e})");
            assert!(!last || diff <= 1e-12 * scale, "{act:?} block {b}: output-layer blocks differ by {diff:e}");
        }
    }
}

#[test]
fn bad_block_products_are_typed_errors() {
    let (_, m) = mlps().swap_remove(1);
    let w = m.init(1);
    let curvature = m.curvature(w.view(), Batch::All).expect("prepares");
    let mut out = Array1::zeros(3);
    assert!(matches!(
        curvature.block_product_into(Product::Hessian, 99, Array1::zeros(3).view(), out.view_mut()),
        Err(HessianError::InvalidBlock { index: 99, .. })
    ));
    assert!(matches!(
        curvature.block_product_into(Product::Hessian, 0, Array1::zeros(3).view(), out.view_mut()),
        Err(HessianError::ShapeMismatch { .. })
    ));
    assert!(matches!(m.curvature(w.slice(s![1..]), Batch::All), Err(HessianError::ShapeMismatch { .. })));
    assert!(matches!(m.curvature(w.view(), Batch::Indices(&[40])), Err(HessianError::SampleOutOfRange { .. })));
    let mut bad = w.clone();
    bad[0] = f64::NAN;
    assert!(matches!(m.curvature(bad.view(), Batch::All), Err(HessianError::NonFinite { .. })));
}

fn encoders() -> Vec<(&'static str, quant_models::Encoder<f64>)> {
    use quant_models::EncoderConfig;
    let cfg = EncoderConfig { tokens: 3, features: 2, d_model: 4, heads: 2, d_ff: 6, layers: 2, classes: 3 };
    let (x, y) = toy_data(9, 6, 3, 7);
    let one = EncoderConfig { layers: 1, heads: 1, ..cfg };
    vec![
        ("two layers", quant_models::Encoder::new(&x, &y, cfg).expect("valid")),
        ("one layer, one head", quant_models::Encoder::new(&x, &y, one).expect("valid")),
    ]
}

#[test]
fn encoder_block_hessian_products_equal_the_restricted_whole_model_product() {
    let subset = [1usize, 4, 4, 8];
    for (name, m) in encoders() {
        // Away from initialisation's symmetries: a seeded perturbation of every parameter.
        let w = m.init(3) + rng::normal::<f64>(m.dim(), 5, 0).mapv(|v| 0.3 * v);
        for batch in [Batch::All, Batch::Indices(&subset)] {
            let curvature = m.curvature(w.view(), batch).expect("prepares");
            let cases: Vec<(usize, Array1<f64>, Array1<f64>)> = (0..m.blocks().len())
                .map(|b| {
                    let v = rng::normal::<f64>(m.blocks()[b].len(), 13, b as u64);
                    let reference = restricted(&m, &w, batch, b, &v);
                    (b, v, reference)
                })
                .collect();
            let largest = cases.iter().map(|c| max_abs(&c.2)).fold(0.0, f64::max);
            for (b, v, reference) in &cases {
                let block = &m.blocks()[*b];
                let scale = max_abs(reference);
                // The key bias shifts all of a query's scores alike: its curvature is zero.
                assert!(scale > 1e-6 * largest || block.name().contains("k.bias"), "{name} {}: a zero reference", block.name());
                let mut out = Array1::from_elem(block.len(), f64::NAN);
                curvature.block_product_into(Product::Hessian, *b, v.view(), out.view_mut()).expect("product");
                let err = max_abs(&(&out - reference));
                assert!(err <= 1e-11 * scale + 1e-14 * largest, "{name} {batch:?} {}: error {err:e} of {scale:e}", block.name());
            }
            assert!(!curvature.supports(Product::GaussNewton));
        }
    }
}
