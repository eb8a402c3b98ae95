//! Mean time of 1,000 block products of each weight matrix of the digits MLP (64-128-128-10,
//! GELU, f64, full batch of 1,797 rows) from one prepared curvature: the criterion rows
//! `digits_mlp_f64_gelu/block_hvp/*` as one long run each, which moves less with other
//! tenants' load than criterion's short samples. Compare builds by alternating them:
//! `RAYON_NUM_THREADS=1 cargo run --release -p quant-benches --example mlp_block_timing`.

use ndarray::{Array1, s};
use quant::hessian::{Autodiff, Batch, Model, Product};
use quant::models::Activation;
use std::time::Instant;

fn main() -> Result<(), quant::hessian::HessianError> {
    const PRODUCTS: u32 = 1000;
    let (m, w) = quant_benches::digits_mlp::<f64>(Activation::Gelu);
    let v = Array1::from_shape_fn(m.dim(), |i| ((i * 7919) % 101) as f64 / 101.0 - 0.5);
    let curvature = m.curvature(w.view(), Batch::All)?;
    for block in m.weight_blocks() {
        let vb = v.slice(s![..block.len()]).to_owned();
        let mut out = Array1::zeros(block.len());
        let mut check = 0.0;
        let start = Instant::now();
        for _ in 0..PRODUCTS {
            curvature.block_product_into(Product::Hessian, block.block, vb.view(), out.view_mut())?;
            check += out.dot(&out);
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / f64::from(PRODUCTS);
        println!("{}: {ms:.3} ms per block product (sum of squared outputs {check:.6e})", m.blocks()[block.block].name());
    }
    Ok(())
}
