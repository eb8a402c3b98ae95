//! Power iteration, Lanczos, Hutchinson, Hutch++ and SLQ against dense eigendecompositions.

mod common;

use common::{dense, jacobi_eigen, toy_data, with_spectrum};
use ndarray::{Array1, Array2, ArrayView1, ArrayViewMut1};
use quant_hessian::{
    Batch, FnOperator, HessianError, HessianOperator, HutchPlusPlus, Hutchinson, Lanczos, LinearOperator, Model, OperatorExt,
    PowerIteration, Slq,
};
use quant_models::{Activation, Mlp};

fn small_mlp() -> (Mlp<f64>, Array1<f64>) {
    let (x, y) = toy_data(60, 4, 3, 2);
    let m = Mlp::new(&x, &y, &[5], 3, Activation::Tanh).expect("valid");
    let w = m.init(1);
    (m, w)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

#[test]
fn power_iteration_and_lanczos_agree_with_the_dense_eigendecomposition() {
    let (m, w) = small_mlp();
    let ops: Vec<HessianOperator<'_, f64, Mlp<f64>>> = vec![
        HessianOperator::full(&m, w.view(), Batch::All).expect("valid"),
        HessianOperator::block(&m, w.view(), Batch::All, 0).expect("valid"),
        HessianOperator::block(&m, w.view(), Batch::All, 2).expect("valid"),
    ];
    for op in &ops {
        let (eigs, vecs) = jacobi_eigen(&dense(op));
        let n = eigs.len();
        // Power iteration finds the largest magnitudes.
        let mut by_mag: Vec<f64> = eigs.clone();
        by_mag.sort_by(|a, b| b.abs().total_cmp(&a.abs()));
        let p = PowerIteration::builder().k(2).tol(1e-10).max_iter(20_000).check().expect("valid");
        let pi = op.power_iteration(&p).expect("converges");
        for (j, &expected) in by_mag.iter().enumerate().take(2) {
            assert!(rel(pi.values[j], expected) < 1e-8, "power {j}: {} vs {expected}", pi.values[j]);
            assert!(pi.residuals[j] <= 1e-10 * pi.values[j].abs());
        }
        let top = vecs.column(n - 1);
        assert!((pi.vectors.column(0).dot(&top).abs() - 1.0).abs() < 1e-6);
        // Lanczos: top 3 algebraic and the smallest.
        let l = Lanczos::builder().k(3).tol(1e-12).check().expect("valid");
        let ex = op.lanczos(&l).expect("converges");
        for j in 0..3 {
            assert!(rel(ex.top.values[j], eigs[n - 1 - j]) < 1e-8, "lanczos {j}: {} vs {}", ex.top.values[j], eigs[n - 1 - j]);
        }
        assert!((ex.smallest.values[0] - eigs[0]).abs() < 1e-8 * eigs[n - 1].abs());
        let v = ex.top.vectors.column(0);
        let hv = op.apply(v).expect("valid");
        assert!((&hv - &(&v * ex.top.values[0])).iter().all(|r| r.abs() < 1e-9 * eigs[n - 1].abs()));
        assert_eq!(ex.top.hvps, ex.top.iterations[0]);
    }
}

/// The least `n` in `1..=hi` with `ok(n)`, for `ok` monotone in `n` (binary search).
fn least(hi: usize, ok: impl Fn(usize) -> bool) -> usize {
    assert!(ok(hi), "not reached within {hi}");
    let (mut lo, mut hi) = (1, hi);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if ok(mid) { hi = mid } else { lo = mid + 1 }
    }
    lo
}

/// HVPs each solver needs to reach a relative error below 1e-6 on the top eigenvalue. On a
/// positive semi-definite operator both Rayleigh–Ritz estimates approach λ₁ monotonically
/// from below, so a binary search over the iteration cap finds the least count.
fn hvps_to_accuracy<O: LinearOperator<f64>>(op: &O, exact: f64) -> (usize, usize) {
    let power = least(5000, |it| {
        let p = PowerIteration::builder().max_iter(it).tol(1e-14).check().expect("valid");
        let value = match op.power_iteration(&p) {
            Ok(e) => e.values[0],
            Err(HessianError::NoConvergence { partial }) => partial.values[0],
            Err(e) => panic!("{e}"),
        };
        rel(value, exact) < 1e-6
    });
    let lanczos = least(op.dim(), |steps| {
        let l = Lanczos::builder().max_iter(steps).tol(1e-15).smallest(false).check().expect("valid");
        let value = match op.lanczos(&l) {
            Ok(e) => e.top.values[0],
            Err(HessianError::NoConvergence { partial }) => partial.values[0],
            Err(e) => panic!("{e}"),
        };
        rel(value, exact) < 1e-6
    });
    (power, lanczos)
}

#[test]
fn lanczos_needs_at_most_half_the_hvps_of_power_iteration() {
    for ratio in [0.9, 0.98] {
        let n = 150;
        let eigs: Vec<f64> = (0..n).map(|i| if i == 0 { 1.0 } else { ratio * (1.0 - 0.9 * (i - 1) as f64 / n as f64) }).collect();
        let a = with_spectrum(&eigs, 3);
        let (p, l) = hvps_to_accuracy(&a, 1.0);
        assert!(2 * l <= p, "ratio {ratio}: Lanczos {l} HVPs, power {p}");
    }
    // The digits MLP case is in the facade's tests (it needs the embedded data).
}

#[test]
fn the_residual_rule_does_not_stop_early() {
    // λ2/λ1 = 0.98: the eigenvalue changes slowly long before the vector has converged.
    let n = 200;
    let eigs: Vec<f64> = (0..n).map(|i| if i == 0 { 1.0 } else { 0.98 * (1.0 - i as f64 / n as f64) }).collect();
    let a = with_spectrum(&eigs, 5);
    let tol = 1e-3;
    let pi = a.power_iteration(&PowerIteration::builder().tol(tol).max_iter(10_000).check().expect("valid")).expect("converges");
    assert!(rel(pi.values[0], 1.0) <= tol, "error {}", rel(pi.values[0], 1.0));
    assert!(pi.residuals[0] <= tol * pi.values[0]);
    // The relative-change rule alone (PyHessian) stops within a few iterations here.
    let mut v = Array1::from_shape_fn(n, |i| common::hash_unit(i as u64 + 1));
    v /= v.dot(&v).sqrt();
    let mut prev = f64::NAN;
    let mut stopped = None;
    for it in 1..10_000 {
        let hv = a.dot(&v);
        let lambda = v.dot(&hv);
        if (lambda - prev).abs() <= tol * lambda.abs() {
            stopped = Some((it, lambda));
            break;
        }
        prev = lambda;
        v = &hv / hv.dot(&hv).sqrt();
    }
    let (it, lambda) = stopped.expect("stops");
    assert!(it < pi.iterations[0] && rel(lambda, 1.0) > tol, "relative-change rule: {it} iterations, error {}", rel(lambda, 1.0));
}

#[test]
fn power_iteration_reports_no_convergence_with_the_partial_result() {
    let a = with_spectrum(&[1.0, 0.999, 0.5, 0.2], 1);
    let p = PowerIteration::builder().k(2).max_iter(5).tol(1e-12).check().expect("valid");
    match a.power_iteration(&p) {
        Err(HessianError::NoConvergence { partial }) => {
            assert_eq!(partial.values.len(), 1);
            assert_eq!(partial.hvps, 5);
            assert_eq!(partial.vectors.dim(), (4, 1));
            assert!(!partial.converged);
        }
        other => panic!("expected NoConvergence, got {other:?}"),
    }
}

#[test]
fn repeated_and_negative_eigenvalues() {
    // Power iteration with deflation finds both copies of a repeated eigenvalue; the
    // dominant one is negative here.
    let a = with_spectrum(&[-3.0, 2.0, 2.0, 0.5, 0.1], 4);
    let p = PowerIteration::builder().k(3).tol(1e-10).max_iter(5000).check().expect("valid");
    let pi = a.power_iteration(&p).expect("converges");
    assert!((pi.values[0] + 3.0).abs() < 1e-9);
    assert!((pi.values[1] - 2.0).abs() < 1e-9 && (pi.values[2] - 2.0).abs() < 1e-9);
    let gram = pi.vectors.t().dot(&pi.vectors);
    assert!((&gram - &Array2::<f64>::eye(3)).iter().all(|x| x.abs() < 1e-9));
    let ex = a.lanczos(&Lanczos::builder().k(1).tol(1e-12).check().expect("valid")).expect("converges");
    assert!((ex.top.values[0] - 2.0).abs() < 1e-10);
    assert!((ex.smallest.values[0] + 3.0).abs() < 1e-10);
    assert!(ex.is_indefinite());
}

#[test]
fn solvers_reject_bad_requests() {
    let a = with_spectrum(&[1.0, 2.0], 1);
    assert!(matches!(
        a.power_iteration(&PowerIteration::builder().k(3).check().expect("valid")),
        Err(HessianError::InvalidEigenCount { k: 3, dim: 2 })
    ));
    assert!(matches!(PowerIteration::builder().tol(f64::NAN).check(), Err(HessianError::InvalidTolerance { .. })));
    assert!(matches!(PowerIteration::builder().k(0).check(), Err(HessianError::TooFew { what: "k", .. })));
    assert!(matches!(Lanczos::builder().max_iter(0).check(), Err(HessianError::TooFew { .. })));
    assert!(matches!(Hutchinson::builder().min_samples(1).check(), Err(HessianError::TooFew { .. })));
    assert!(matches!(HutchPlusPlus::new(2, 0), Err(HessianError::TooFew { .. })));
    assert!(matches!(Slq::new(0, 10, 0), Err(HessianError::TooFew { .. })));
    let empty = Array2::<f64>::zeros((0, 0));
    assert!(matches!(empty.hutchinson(&Hutchinson::default()), Err(HessianError::Empty)));
    let rect = Array2::<f64>::zeros((2, 3));
    assert!(matches!(rect.power_iteration(&PowerIteration::default()), Err(HessianError::ShapeMismatch { .. })));
    // An operator that returns NaN is caught.
    let nan = FnOperator::new(3, |_x: ArrayView1<'_, f64>, mut out: ArrayViewMut1<'_, f64>| {
        out.fill(f64::NAN);
        Ok(())
    });
    assert!(matches!(nan.lanczos(&Lanczos::default()), Err(HessianError::NonFinite { .. })));
}

#[test]
fn closures_are_operators() {
    let diag = [5.0, 1.0, -0.5, 0.25];
    let op = FnOperator::new(4, |x: ArrayView1<'_, f64>, mut out: ArrayViewMut1<'_, f64>| {
        for i in 0..4 {
            out[i] = diag[i] * x[i];
        }
        Ok(())
    });
    let pi = op.power_iteration(&PowerIteration::builder().tol(1e-12).max_iter(1000).check().expect("valid")).expect("converges");
    assert!((pi.values[0] - 5.0).abs() < 1e-10);
    let tr = op.hutch_plus_plus(&HutchPlusPlus::new(30, 0).expect("valid")).expect("valid");
    // Budget 30 → a sketch of 10 sign vectors, which span R^4: the trace is exact.
    assert!((tr.trace - 5.75).abs() < 1e-12);
}

#[test]
fn trace_estimates_agree_with_the_exact_trace_within_their_standard_errors() {
    // Softmax regression with L2: a positive-definite Hessian whose trace is far from 0
    // (at an indefinite point the trace can be near 0 and no relative tolerance is met).
    let (x, y) = toy_data(60, 4, 3, 2);
    let m = Mlp::softmax_regression(&x, &y, 3).expect("valid").with_l2(0.1).expect("valid");
    let w = m.init(1);
    let op = HessianOperator::full(&m, w.view(), Batch::All).expect("valid");
    let h = dense(&op);
    let exact = h.diag().sum();
    let hut = op.hutchinson(&Hutchinson::builder().tol(1e-2).max_samples(2000).seed(7).check().expect("valid")).expect("valid");
    assert!(hut.converged);
    assert!(hut.std_error <= 1e-2 * hut.trace.abs());
    // A 4-sigma band: fails with probability ~6e-5 for a correct estimator.
    assert!((hut.trace - exact).abs() <= 4.0 * hut.std_error, "{} ± {} vs {exact}", hut.trace, hut.std_error);
    assert_eq!(hut.hvps, hut.samples);
    assert!((hut.per_parameter() - exact / m.dim() as f64).abs() <= 4.0 * hut.std_error / m.dim() as f64);
    // Budget 30: a 10-column sketch of a 15-dimensional Hessian (so the stochastic part is not empty).
    let hpp = op.hutch_plus_plus(&HutchPlusPlus::new(30, 3).expect("valid")).expect("valid");
    // The sketch's 10 applications, then 10 + 10 quadratic forms (the trace of the
    // sketch's range and the deflated probes).
    assert_eq!((hpp.hvps, hpp.quadratic_forms), (10, 20));
    assert!((hpp.trace - exact).abs() <= 4.0 * hpp.std_error, "{} ± {} vs {exact}", hpp.trace, hpp.std_error);
}

#[test]
fn hutch_plus_plus_has_lower_variance_at_equal_budget() {
    // A decaying spectrum, as Hessians have.
    let n = 120;
    let eigs: Vec<f64> = (0..n).map(|i| 100.0 * 0.8f64.powi(i)).collect();
    let a = with_spectrum(&eigs, 9);
    let exact: f64 = eigs.iter().sum();
    let budget = 30;
    let mse = |f: &dyn Fn(u64) -> f64| (0..40).map(|s| (f(s) - exact).powi(2)).sum::<f64>() / 40.0;
    let hut = mse(&|s| {
        let p = Hutchinson::builder().min_samples(budget).max_samples(budget).seed(s).check().expect("valid");
        a.hutchinson(&p).expect("valid").trace
    });
    let hpp = mse(&|s| a.hutch_plus_plus(&HutchPlusPlus::new(budget, s).expect("valid")).expect("valid").trace);
    // Theory: Hutchinson's variance is 2‖A‖_F²/30 ≈ 1850; Hutch++ with a 10-column sketch
    // leaves roughly the tail past the top 10 eigenvalues, 2‖A − A_10‖_F²/10 ≈ 64 if the sketch
    // caught them exactly, more since it does not. Measured (40 seeds): about 1150 vs 200.
    assert!(hpp * 4.0 < hut, "Hutch++ MSE {hpp} vs Hutchinson {hut}");
}

#[test]
fn slq_quadrature_is_exact_for_low_degree_moments() {
    let eigs: Vec<f64> = (0..40).map(|i| (i as f64 - 10.0) / 7.0).collect();
    let a = with_spectrum(&eigs, 2);
    let steps = 6;
    let sd = a.spectral_density(&Slq::new(1, steps, 5).expect("valid")).expect("valid");
    assert_eq!(sd.hvps, steps);
    assert!((sd.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // An m-step Gauss rule is exact for vᵀ A^p v / vᵀv up to degree 2m − 1. A 40-step run from
    // the same probe (same seed) spans the whole space, so its rule is exact for every degree:
    // the two must agree on moments 0..2m.
    let moments: Vec<f64> = (0..2 * steps).map(|p| sd.integrate(|x| x.powi(p as i32))).collect();
    let exact = a.spectral_density(&Slq::new(1, 40, 5).expect("valid")).expect("valid");
    for (p, mq) in moments.iter().enumerate() {
        let me = exact.integrate(|x| x.powi(p as i32));
        assert!((mq - me).abs() < 1e-9 * me.abs().max(1.0), "moment {p}: {mq} vs {me}");
    }
    // With many probes the mean eigenvalue (Tr/n) is close to exact.
    let many = a.spectral_density(&Slq::new(200, 10, 1).expect("valid")).expect("valid");
    let mean = many.integrate(|x| x);
    let exact_mean = eigs.iter().sum::<f64>() / 40.0;
    assert!((mean - exact_mean).abs() < 0.05, "{mean} vs {exact_mean}");
    let grid: Vec<f64> = (0..200).map(|i| -3.0 + i as f64 * 0.05).collect();
    let dens = many.smoothed(&grid, 0.2);
    let mass: f64 = dens.iter().sum::<f64>() * 0.05;
    assert!((mass - 1.0).abs() < 0.02, "smoothed density integrates to {mass}");
}

#[test]
fn same_seed_same_bits() {
    let (m, w) = small_mlp();
    let op = HessianOperator::full(&m, w.view(), Batch::All).expect("valid");
    let p = PowerIteration::builder().seed(3).check().expect("valid");
    assert_eq!(op.power_iteration(&p).expect("ok"), op.power_iteration(&p).expect("ok"));
    let h = Hutchinson::builder().seed(3).check().expect("valid");
    assert_eq!(op.hutchinson(&h).expect("ok"), op.hutchinson(&h).expect("ok"));
    let other = op.hutchinson(&Hutchinson::builder().seed(4).check().expect("valid")).expect("ok");
    assert_ne!(op.hutchinson(&h).expect("ok").trace, other.trace);
}
