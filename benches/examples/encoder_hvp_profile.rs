//! Exact HVPs of the digits encoder on 64 samples in a loop, for a profiler.

use ndarray::Array1;
use quant::hessian::{Autodiff, Batch, Model};
use quant::models::{Encoder, EncoderConfig};

fn main() -> Result<(), quant::Error> {
    let d = quant::data::digits()?;
    let x = d.images.mapv(|p| f64::from(p) / 16.0);
    let labels: Vec<usize> = d.labels.iter().map(|&l| usize::from(l)).collect();
    let cfg = EncoderConfig { tokens: 8, features: 8, d_model: 32, heads: 4, d_ff: 64, layers: 2, classes: 10 };
    let m = Encoder::new(&x, &labels, cfg)?;
    let w = m.init(1);
    let v = Array1::from_shape_fn(m.dim(), |i| ((i * 7919) % 101) as f64 / 101.0 - 0.5);
    let mut out = Array1::zeros(m.dim());
    let idx: Vec<usize> = (0..64).collect();
    for _ in 0..300 {
        m.hvp_into(w.view(), v.view(), Batch::Indices(&idx), out.view_mut())?;
    }
    println!("{}", out[0]);
    Ok(())
}
