//! Quick start: quantize real digits-trained weights and the digits data at 8/4/3/2 bits.
//!
//! Trains a softmax-regression classifier on the embedded UCI digits (every fifth image held
//! out for testing), then quantizes its weight matrix per tensor and per output channel and
//! the raw data matrix per tensor and per pixel column, printing size, error and accuracy.
//!
//! Run with `cargo run --release --example quickstart`.

use quant::ndarray::{Array1, Array2, ArrayView2, Axis};
use quant::prelude::*;

/// Mean accuracy of `argmax(x W^T + b)` against the labels.
fn accuracy(x: ArrayView2<f32>, labels: &[u8], w: ArrayView2<f32>, b: &Array1<f32>) -> f64 {
    let logits = x.dot(&w.t()) + b;
    let hits = logits
        .rows()
        .into_iter()
        .zip(labels)
        .filter(|(row, l)| {
            let best = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &v)| if v > m.1 { (i, v) } else { m });
            best.0 == usize::from(**l)
        })
        .count();
    hits as f64 / labels.len() as f64
}

/// Full-batch gradient descent on the softmax cross-entropy (deterministic: no randomness).
fn train(x: ArrayView2<f32>, labels: &[u8], epochs: usize, lr: f32) -> (Array2<f32>, Array1<f32>) {
    let (n, d) = x.dim();
    let mut w = Array2::<f32>::zeros((10, d));
    let mut b = Array1::<f32>::zeros(10);
    for _ in 0..epochs {
        let mut p = x.dot(&w.t()) + &b;
        for mut row in p.rows_mut() {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            row.mapv_inplace(|v| (v - m).exp());
            let z = row.sum();
            row /= z;
        }
        for (mut row, &l) in p.rows_mut().into_iter().zip(labels) {
            row[usize::from(l)] -= 1.0;
        }
        let scale = lr / n as f32;
        w.scaled_add(-scale, &p.t().dot(&x));
        b.scaled_add(-scale, &p.sum_axis(Axis(0)));
    }
    (w, b)
}

/// Signal-to-quantization-noise ratio in dB.
fn sqnr_db(x: ArrayView2<f32>, y: ArrayView2<f32>) -> f64 {
    let signal: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
    let noise: f64 = x.iter().zip(y.iter()).map(|(&a, &b)| f64::from(a - b).powi(2)).sum();
    10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10()
}

fn main() -> Result<(), quant::Error> {
    let digits = quant::data::digits()?;
    let x = digits.images.mapv(|v| v / 16.0);
    let (mut train_idx, mut test_idx) = (Vec::new(), Vec::new());
    for i in 0..x.nrows() {
        if i % 5 == 4 { test_idx.push(i) } else { train_idx.push(i) }
    }
    let pick = |idx: &[usize]| (x.select(Axis(0), idx), idx.iter().map(|&i| digits.labels[i]).collect::<Vec<u8>>());
    let (x_train, y_train) = pick(&train_idx);
    let (x_test, y_test) = pick(&test_idx);

    println!("Training softmax regression on {} UCI digits ({} held out)...", x_train.nrows(), x_test.nrows());
    let (w, b) = train(x_train.view(), &y_train, 300, 2.0);
    let base = accuracy(x_test.view(), &y_test, w.view(), &b);
    println!("float32 test accuracy: {:.1}%\n", 100.0 * base);

    println!("Classifier weights (10 x 64), asymmetric Q-BERT grid, min-max ranges:");
    println!(
        "{:<12} {:>4} {:>7} {:>9} {:>8} {:>9} {:>10} {:>9}",
        "granularity", "bits", "bytes", "bits/wt", "ratio", "SQNR dB", "max |err|", "accuracy"
    );
    let f32_bytes = w.len() * 4;
    for bits in [8u8, 4, 3, 2] {
        for (name, g) in [("per-tensor", Granularity::PerTensor), ("per-channel", Granularity::PerChannel { axis: 0 })] {
            let spec = UniformSpec::builder().bits(bits).scheme(Scheme::AsymmetricGrid).granularity(g).check()?;
            let q = quantize(&w, &spec)?;
            let w_hat = q.dequantize().into_dimensionality().map_err(|_| QuantError::Empty)?;
            let err = (&w_hat - &w).iter().fold(0f32, |m, e| m.max(e.abs()));
            println!(
                "{:<12} {:>4} {:>7} {:>9.2} {:>7.1}x {:>9.2} {:>10.4} {:>8.1}%",
                name,
                bits,
                q.storage_bytes(),
                q.bits_per_weight(),
                f32_bytes as f64 / q.storage_bytes() as f64,
                sqnr_db(w.view(), w_hat.view()),
                err,
                100.0 * accuracy(x_test.view(), &y_test, w_hat.view(), &b)
            );
        }
    }

    println!("\nThe digits data matrix itself (1797 x 64 pixel values 0..16):");
    println!("{:<12} {:>4} {:>7} {:>9} {:>9} {:>10}", "granularity", "bits", "bytes", "bits/val", "SQNR dB", "max |err|");
    let data = &digits.images;
    for bits in [8u8, 4, 3, 2] {
        for (name, g) in [("per-tensor", Granularity::PerTensor), ("per-pixel", Granularity::PerChannel { axis: 1 })] {
            let spec = UniformSpec::builder().bits(bits).granularity(g).check()?;
            let q = quantize(data, &spec)?;
            let back = q.dequantize().into_dimensionality().map_err(|_| QuantError::Empty)?;
            let err = (&back - data).iter().fold(0f32, |m, e| m.max(e.abs()));
            println!(
                "{:<12} {:>4} {:>7} {:>9.2} {:>9.2} {:>10.3}",
                name,
                bits,
                q.storage_bytes(),
                q.bits_per_weight(),
                sqnr_db(data.view(), back.view()),
                err
            );
        }
    }
    Ok(())
}

use quant::quantizers::QuantError;
