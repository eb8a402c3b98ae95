//! Runs exact HVPs on the digits MLP in a loop, for a profiler:
//! `cargo build --release -p quant-benches --example hvp_profile && perf record target/release/examples/hvp_profile`.

use ndarray::Array1;
use quant::hessian::{Autodiff, Batch, Model};
use quant::models::Activation;

fn main() -> Result<(), quant::hessian::HessianError> {
    let (m, w) = quant_benches::digits_mlp::<f32>(Activation::Gelu);
    let v = Array1::from_shape_fn(m.dim(), |i| ((i * 7919) % 101) as f32 / 101.0 - 0.5);
    let mut out = Array1::zeros(m.dim());
    for _ in 0..200 {
        m.hvp_into(w.view(), v.view(), Batch::All, out.view_mut())?;
    }
    println!("{}", out[0]);
    Ok(())
}
