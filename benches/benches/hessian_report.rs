//! Not a timing bench: Hessian-vector products power iteration and Lanczos need to reach a
//! relative error of 1e-6 on the top eigenvalue of the digits MLP (64-128-128-10, all 1797
//! samples, f64), for ReLU, tanh and GELU (times per HVP are in the `hessian` bench).
//!
//! `cargo bench -p quant-benches --bench hessian_report`

use std::cell::RefCell;

use ndarray::{ArrayView1, ArrayViewMut1};
use quant::hessian::{Batch, FnOperator, HessianError, HessianOperator, Lanczos, LinearOperator, OperatorExt, PowerIteration};
use quant::models::Activation;
use quant_benches::digits_mlp;

fn lanczos_top<O: LinearOperator<f64>>(op: &O, steps: usize, tol: f64) -> Result<f64, HessianError> {
    let p = Lanczos::builder().max_iter(steps).tol(tol).smallest(false).check()?;
    match op.lanczos(&p) {
        Ok(e) => Ok(e.top.values[0]),
        Err(HessianError::NoConvergence { partial }) => Ok(partial.values[0]),
        Err(e) => Err(e),
    }
}

fn main() -> Result<(), HessianError> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    println!("| activation | top eigenvalue | power HVPs to 1e-6 | Lanczos HVPs to 1e-6 | ratio |");
    println!("|---|---|---|---|---|");
    for (name, act) in [("relu", Activation::Relu), ("tanh", Activation::Tanh), ("gelu", Activation::Gelu)] {
        let (m, w) = digits_mlp::<f64>(act);
        let h = HessianOperator::full(&m, w.view(), Batch::All)?;
        let exact = lanczos_top(&h, 300, 1e-13)?;
        let estimates = RefCell::new(Vec::new());
        let recorder = FnOperator::new(h.dim(), |x: ArrayView1<'_, f64>, mut out: ArrayViewMut1<'_, f64>| {
            h.apply_into(x, out.view_mut())?;
            estimates.borrow_mut().push(x.dot(&out) / x.dot(&x));
            Ok(())
        });
        match recorder.power_iteration(&PowerIteration::builder().tol(1e-9).max_iter(2000).check()?) {
            Ok(_) | Err(HessianError::NoConvergence { .. }) => {}
            Err(e) => return Err(e),
        }
        let rel = |l: f64| (l - exact).abs() / exact.abs();
        let hvps = estimates.borrow().len();
        let power = estimates.borrow().iter().position(|&l| rel(l) < 1e-6).map(|i| i + 1);
        // Lanczos Ritz values increase monotonically with the steps: binary search.
        let (mut lo, mut hi) = (1, 300);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if rel(lanczos_top(&h, mid, 1e-15)?) < 1e-6 { hi = mid } else { lo = mid + 1 }
        }
        match power {
            Some(p) => println!("| {name} | {exact:.6} | {p} | {lo} | {:.1}x |", p as f64 / lo as f64),
            None => println!("| {name} | {exact:.6} | > {hvps} | {lo} | - |"),
        }
    }
    Ok(())
}
