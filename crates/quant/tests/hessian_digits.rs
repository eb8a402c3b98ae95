//! The Hessian engine on the embedded digits data: Lanczos against power iteration (HVPs
//! counted, not time), and the exact HVP against finite differences, on a digits MLP.

use quant::hessian::{Batch, FnOperator, HessianError, HessianOperator, Lanczos, LinearOperator, OperatorExt, PowerIteration};
use quant::models::{Activation, Mlp};
use quant::ndarray::{Array1, ArrayView1, ArrayViewMut1};
use std::cell::RefCell;

/// A 64-16-10 GELU MLP on the first `n` digits (pixels scaled to [0, 1]), seeded init. Small
/// enough for debug-mode tests; the benches use 64-128-128-10 on all 1797.
fn digits_mlp(n: usize) -> Result<(Mlp<f64>, Array1<f64>), quant::Error> {
    let d = quant::data::digits()?;
    let x = d.images.slice(quant::ndarray::s![..n, ..]).mapv(|p| f64::from(p) / 16.0);
    let labels: Vec<usize> = d.labels[..n].iter().map(|&l| usize::from(l)).collect();
    let m = Mlp::new(&x, &labels, &[16], 10, Activation::Gelu).map_err(quant::Error::from)?;
    let w = m.init(1);
    Ok((m, w))
}

#[test]
fn lanczos_needs_at_most_half_the_hvps_of_power_iteration_on_digits() -> Result<(), quant::Error> {
    let (m, w) = digits_mlp(400)?;
    let h = HessianOperator::full(&m, w.view(), Batch::All)?;
    // Reference: Lanczos run to a tight tolerance.
    let exact = h.lanczos(&Lanczos::builder().tol(1e-12).smallest(false).check()?)?.top.values[0];
    // Power iteration's eigenvalue estimate after each HVP, seen through a recording wrapper:
    // the Rayleigh quotient xᵀHx / xᵀx of every vector it applies H to.
    let estimates = RefCell::new(Vec::new());
    let recorder = FnOperator::new(h.dim(), |x: ArrayView1<'_, f64>, mut out: ArrayViewMut1<'_, f64>| {
        h.apply_into(x, out.view_mut())?;
        estimates.borrow_mut().push(x.dot(&out) / x.dot(&x));
        Ok(())
    });
    match recorder.power_iteration(&PowerIteration::builder().tol(1e-12).max_iter(3000).check()?) {
        Ok(_) | Err(HessianError::NoConvergence { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let rel = |l: f64| (l - exact).abs() / exact.abs();
    let power = estimates.borrow().iter().position(|&l| rel(l) < 1e-6).map(|i| i + 1).expect("power iteration reaches 1e-6");
    // Lanczos: the least step count whose top Ritz value is within 1e-6.
    let lanczos = (1..=power)
        .find(|&steps| {
            let p = Lanczos::builder().max_iter(steps).tol(1e-15).smallest(false).check().expect("valid");
            let top = match h.lanczos(&p) {
                Ok(e) => e.top.values[0],
                Err(HessianError::NoConvergence { partial }) => partial.values[0],
                Err(e) => panic!("{e}"),
            };
            rel(top) < 1e-6
        })
        .expect("Lanczos reaches 1e-6 within power iteration's count");
    assert!(2 * lanczos <= power, "Lanczos {lanczos} HVPs vs power iteration {power}");
    Ok(())
}

#[test]
fn exact_hvp_matches_finite_differences_on_digits() -> Result<(), quant::Error> {
    use quant::hessian::{Autodiff, Model, finite_difference_hvp};
    let (m, w) = digits_mlp(200)?;
    let v = Array1::from_shape_fn(m.dim(), |i| ((i * 7919) % 101) as f64 / 101.0 - 0.5);
    let mut exact = Array1::zeros(m.dim());
    m.hvp_into(w.view(), v.view(), Batch::All, exact.view_mut())?;
    let mut fd = Array1::zeros(m.dim());
    finite_difference_hvp(&m, w.view(), v.view(), Batch::All, fd.view_mut())?;
    let scale = exact.iter().fold(0f64, |a, x| a.max(x.abs()));
    let err = (&exact - &fd).iter().fold(0f64, |a, x| a.max(x.abs()));
    // The documented accuracy: about ε^(2/3) ≈ 4e-11 relative, times the curvature's variation.
    assert!(err < 1e-7 * scale, "max error {err} vs scale {scale}");
    Ok(())
}
