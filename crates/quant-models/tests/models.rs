//! Reference models: gradients against finite differences, exact HVPs against finite
//! differences and closed forms, batches, errors.

mod common;

use approx::assert_relative_eq;
use common::{fd_hessian, mlps, toy_data};
use ndarray::{Array1, Array2, ArrayView1, ArrayViewMut1, array};
use quant_hessian::{
    Autodiff, Batch, Block, HessianError, HessianOperator, HvpKind, LinearOperator, MatrixBlock, Model, finite_difference_hvp,
};
use quant_models::{Activation, Mlp, Quadratic};

fn grad<M: Autodiff<f64>>(m: &M, w: &Array1<f64>, batch: Batch<'_>) -> (f64, Array1<f64>) {
    let mut g = Array1::zeros(m.dim());
    let loss = m.loss_grad_into(w.view(), batch, g.view_mut()).expect("gradient");
    (loss, g)
}

fn hvp<M: Autodiff<f64>>(m: &M, w: &Array1<f64>, v: &Array1<f64>, batch: Batch<'_>) -> Array1<f64> {
    let mut out = Array1::zeros(m.dim());
    m.hvp_into(w.view(), v.view(), batch, out.view_mut()).expect("hvp");
    out
}

#[test]
fn gradients_match_finite_differences_of_the_loss() {
    for (name, m) in mlps() {
        let w = m.init(3);
        let (_, g) = grad(&m, &w, Batch::All);
        for j in (0..m.dim()).step_by(7) {
            let h = 1e-6;
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[j] += h;
            wm[j] -= h;
            let fd = (grad(&m, &wp, Batch::All).0 - grad(&m, &wm, Batch::All).0) / (2.0 * h);
            // O(h²) truncation and O(ε/h) ≈ 1e-10 rounding on a loss of order 1.
            assert!((fd - g[j]).abs() < 1e-8, "{name}: parameter {j}: {fd} vs {}", g[j]);
        }
    }
}

#[test]
fn exact_hvp_matches_the_finite_difference_hessian() {
    for (name, m) in mlps() {
        let w = m.init(5);
        let h = fd_hessian(&m, &w, Batch::All);
        let v = Array1::from_shape_fn(m.dim(), |i| common::hash_unit(i as u64 + 77));
        let exact = hvp(&m, &w, &v, Batch::All);
        let fd = h.dot(&v);
        let scale = fd.iter().fold(0f64, |a, x| a.max(x.abs()));
        // Step 1e-5 central differences of the gradient: O(1e-10) truncation, O(1e-11) rounding
        // per column, summed over dim columns.
        let err = (&exact - &fd).iter().fold(0f64, |a, x| a.max(x.abs()));
        assert!(err < 1e-7 * scale.max(1.0), "{name}: {err} (scale {scale})");
        assert_eq!(m.hvp_kind(), HvpKind::Exact);
    }
}

#[test]
fn exact_hessian_is_symmetric() {
    for (name, m) in mlps() {
        let w = m.init(8);
        let op = HessianOperator::full(&m, w.view(), Batch::All).expect("valid");
        let h = common::dense(&op);
        let asym = (&h - &h.t()).iter().fold(0f64, |a, x| a.max(x.abs()));
        // Forward over reverse computes each column independently: rounding only.
        assert!(asym < 1e-13 * h.iter().fold(1f64, |a, x| a.max(x.abs())), "{name}: {asym}");
    }
}

/// A gradient-only model written outside the crate: the finite-difference default applies.
struct GradientOnly(Mlp<f64>);

impl Model for GradientOnly {
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn blocks(&self) -> &[Block] {
        self.0.blocks()
    }
    fn samples(&self) -> usize {
        self.0.samples()
    }
}

impl Autodiff<f64> for GradientOnly {
    fn loss_grad_into(&self, w: ArrayView1<'_, f64>, batch: Batch<'_>, grad: ArrayViewMut1<'_, f64>) -> quant_hessian::Result<f64> {
        self.0.loss_grad_into(w, batch, grad)
    }
}

#[test]
fn finite_difference_hvp_reaches_the_accuracy_its_step_predicts() {
    for (name, m) in mlps() {
        let w = m.init(11);
        let v = Array1::from_shape_fn(m.dim(), |i| common::hash_unit(i as u64 + 5));
        let exact = hvp(&m, &w, &v, Batch::All);
        let fd_model = GradientOnly(m);
        assert_eq!(fd_model.hvp_kind(), HvpKind::FiniteDifference);
        let fd = hvp(&fd_model, &w, &v, Batch::All);
        let rel = (&fd - &exact).iter().fold(0f64, |a, x| a.max(x.abs())) / exact.iter().fold(0f64, |a, x| a.max(x.abs()));
        // Predicted: about ε^(2/3) ≈ 4e-11 times curvature ratios of order 10-100; a ReLU kink
        // crossed by the ± step would show as O(1) error, which these points avoid.
        assert!(rel < 1e-7, "{name}: relative error {rel}");
        if name != "relu" {
            assert!(rel > 1e-14, "{name}: a finite difference cannot be exact ({rel})");
        }
    }
}

#[test]
fn finite_difference_hvp_of_a_zero_direction_is_zero() {
    let (_, m) = mlps().remove(1);
    let w = m.init(1);
    let mut out = Array1::from_elem(m.dim(), 7.0);
    finite_difference_hvp(&m, w.view(), Array1::zeros(m.dim()).view(), Batch::All, out.view_mut()).expect("valid");
    assert!(out.iter().all(|&x| x == 0.0));
    let bad = Array1::from_elem(m.dim(), f64::NAN);
    assert!(matches!(
        finite_difference_hvp(&m, w.view(), bad.view(), Batch::All, out.view_mut()),
        Err(HessianError::NonFinite { index: 0 })
    ));
}

#[test]
fn quadratic_hessian_is_its_matrix_exactly() {
    let a = array![[2.0, -1.0, 0.5], [-1.0, 3.0, 0.25], [0.5, 0.25, -1.0]];
    let q = Quadratic::new(&a, &array![1.0, 0.0, -2.0]).expect("valid").with_blocks(&[("x", 2), ("y", 1)]).expect("valid");
    let w = array![0.3, -0.7, 1.1];
    let (loss, g) = grad(&q, &w, Batch::All);
    assert_relative_eq!(g, a.dot(&w) - array![1.0, 0.0, -2.0], epsilon = 1e-15);
    assert_relative_eq!(loss, 0.5 * w.dot(&a.dot(&w)) - (0.3 - 2.2), epsilon = 1e-15);
    let v = array![1.0, 2.0, -3.0];
    assert_eq!(hvp(&q, &w, &v, Batch::All), a.dot(&v));
    // Block (x): H_00 = a[0..2, 0..2].
    let op = HessianOperator::block(&q, w.view(), Batch::All, 0).expect("valid");
    assert_eq!(op.dim(), 2);
    assert_eq!(op.apply(array![1.0, 2.0].view()).expect("valid"), array![0.0, 5.0]);
}

#[test]
fn batches_average_over_their_samples() {
    let (_, m) = mlps().remove(2);
    let w = m.init(2);
    let all: Vec<usize> = (0..m.samples()).collect();
    let (l_all, g_all) = grad(&m, &w, Batch::All);
    let (l_idx, g_idx) = grad(&m, &w, Batch::Indices(&all));
    assert_relative_eq!(l_all, l_idx, max_relative = 1e-14);
    assert_relative_eq!(g_all, g_idx, max_relative = 1e-12, epsilon = 1e-15);
    // Two halves average to the whole (the L2 term is in both halves).
    let (a, b) = all.split_at(20);
    let (la, ga) = grad(&m, &w, Batch::Indices(a));
    let (lb, gb) = grad(&m, &w, Batch::Indices(b));
    assert_relative_eq!(0.5 * (la + lb), l_all, max_relative = 1e-13);
    assert_relative_eq!((ga + gb) * 0.5, g_all, max_relative = 1e-11, epsilon = 1e-14);
}

#[test]
fn bad_inputs_give_typed_errors() {
    let (x, y) = toy_data(10, 3, 2, 4);
    assert!(matches!(Mlp::new(&x, &y[..9], &[], 2, Activation::Relu), Err(HessianError::ShapeMismatch { .. })));
    assert!(matches!(Mlp::new(&x, &y, &[0], 2, Activation::Relu), Err(HessianError::InvalidWidth { layer: 1 })));
    assert!(matches!(Mlp::new(&x, &y, &[], 1, Activation::Relu), Err(HessianError::InvalidLabel { .. })));
    assert!(matches!(Mlp::new(&Array2::<f64>::zeros((0, 3)), &[], &[], 2, Activation::Relu), Err(HessianError::Empty)));
    let mut xn = x.clone();
    xn[[2, 1]] = f64::NAN;
    assert!(matches!(Mlp::new(&xn, &y, &[], 2, Activation::Relu), Err(HessianError::NonFinite { index: 7 })));
    let m = Mlp::new(&x, &y, &[4], 2, Activation::Tanh).expect("valid");
    assert!(matches!(m.clone().with_l2(f64::NAN), Err(HessianError::InvalidValue { .. })));
    let w = m.init(0);
    let mut g = Array1::zeros(m.dim());
    assert!(matches!(m.loss_grad_into(w.view(), Batch::Indices(&[]), g.view_mut()), Err(HessianError::Empty)));
    assert!(matches!(
        m.loss_grad_into(w.view(), Batch::Indices(&[10]), g.view_mut()),
        Err(HessianError::SampleOutOfRange { index: 10, samples: 10 })
    ));
    assert!(matches!(m.loss_grad_into(w.slice(ndarray::s![1..]), Batch::All, g.view_mut()), Err(HessianError::ShapeMismatch { .. })));
    assert!(matches!(HessianOperator::block(&m, w.view(), Batch::All, 4), Err(HessianError::InvalidBlock { index: 4, count: 4 })));
    let mut wn = w.clone();
    wn[3] = f64::INFINITY;
    assert!(matches!(HessianOperator::full(&m, wn.view(), Batch::All), Err(HessianError::NonFinite { index: 3 })));
    let a = array![[1.0, 2.0], [2.5, 1.0]];
    assert!(matches!(Quadratic::new(&a, &array![0.0, 0.0]), Err(HessianError::NotSymmetric { row: 1, col: 0 })));
    assert!(matches!(Quadratic::new(&a, &array![0.0]), Err(HessianError::ShapeMismatch { .. })));
}

#[test]
fn mlp_layout_and_accuracy() {
    let (_, m) = mlps().remove(1);
    assert_eq!(m.widths(), &[5, 6, 4, 3]);
    let names: Vec<&str> = m.blocks().iter().map(|b| b.name()).collect();
    assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]);
    assert_eq!(m.dim(), 5 * 6 + 6 + 6 * 4 + 4 + 4 * 3 + 3);
    let w = m.init(1);
    let acc = m.accuracy(w.view(), Batch::All).expect("valid");
    assert!((0.0..=1.0).contains(&acc));
    // The hooked evaluation path equals the differentiable forward pass.
    let (x, _) = toy_data(40, 5, 3, 1);
    let mut sites = Vec::new();
    let hooked = m.logits_with(w.view(), x.view(), |s, _| sites.push(s)).expect("valid");
    let plain = m.logits(w.view(), x.view()).expect("valid");
    assert!((&hooked - &plain).iter().all(|d| d.abs() < 1e-12));
    assert_eq!(sites, [0, 1, 2]);
    assert_eq!(m.weight_blocks(), [MatrixBlock::new(0, 5, 6), MatrixBlock::new(2, 6, 4), MatrixBlock::new(4, 4, 3)]);
    // Same seed, same bits.
    assert_eq!(m.init(1), w);
    assert_ne!(m.init(2), w);
}

#[test]
fn f32_models_work_and_agree_with_f64() {
    let (x, y) = toy_data(30, 4, 3, 9);
    let m64 = Mlp::new(&x, &y, &[5], 3, Activation::Gelu).expect("valid");
    let m32 = Mlp::new(&x.mapv(|v| v as f32), &y, &[5], 3, Activation::Gelu).expect("valid");
    let w64 = m64.init(4);
    let w32 = w64.mapv(|v| v as f32);
    let v64 = Array1::from_shape_fn(m64.dim(), |i| common::hash_unit(i as u64));
    let mut h32 = Array1::zeros(m32.dim());
    m32.hvp_into(w32.view(), v64.mapv(|v| v as f32).view(), Batch::All, h32.view_mut()).expect("valid");
    let h64 = hvp(&m64, &w64, &v64, Batch::All);
    let scale = h64.iter().fold(0f64, |a, x| a.max(x.abs()));
    // f32 rounding through a few layers: ~1e-6 relative to the largest entry.
    for (a, b) in h32.iter().zip(&h64) {
        assert!((f64::from(*a) - b).abs() < 1e-5 * scale, "{a} vs {b}");
    }
}
