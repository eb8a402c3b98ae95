//! Arbitrary bytes -> a small weight matrix (raw f32 bit patterns), a group count, a layout,
//! a method (uniform of any width, scheme, table precision and table fit, k-means, ternary) and a
//! gradient; `quantize_output_groups`, `quantize_groups` (every layout) and
//! `OutputGroupCodebook` must never panic, and finite weights must give finite dequantized
//! weights.
//!
//! `cargo fuzz run groups` (see docs/fuzzing.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ndarray::Array2;
use quant_core::{KMeansSpec, ParamDtype, Scheme, TableFit, TernarySpec, UniformSpec};
use quant_group::{GroupLayout, Method, OutputGroupCodebook, QkvOrder, quantize_groups, quantize_output_groups};

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 || data.len() > 4096 {
        return;
    }
    let (rows, cols) = (usize::from(data[0] % 9), usize::from(data[1] % 9));
    let groups = usize::from(data[2] % 10);
    let bits = data[3] % 10;
    let raw = &data[6..];
    let values: Vec<f32> = (0..rows * cols).map(|i| raw.get(4 * i..4 * i + 4).map_or(0.5, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
    let Ok(w) = Array2::from_shape_vec((rows, cols), values) else { return };
    let finite = w.iter().all(|v| v.is_finite());
    let scheme = [Scheme::AsymmetricGrid, Scheme::AsymmetricExactZero, Scheme::SymmetricNarrow, Scheme::SymmetricFull][usize::from(data[4] % 4)];
    let dtype = [
        ParamDtype::Native,
        ParamDtype::F16,
        ParamDtype::Bf16,
        ParamDtype::Quantized { bits: data[5] / 4 % 10, super_group: u32::from(data[5] / 40) },
    ][usize::from(data[5] % 4)];
    // Either table fit (least squares only with two-level tables; 0 iterations is refused).
    let fit = if data[1] & 64 != 0 { TableFit::LeastSquares { iterations: data[2] / 10 % 5 } } else { TableFit::Cover };
    let method = match data[4] / 64 {
        0 | 1 => UniformSpec::builder().bits(bits).scheme(scheme).param_dtype(dtype).table_fit(fit).check().ok().map(Method::Uniform),
        2 => KMeansSpec::builder().k(usize::from(bits)).check().ok().map(Method::KMeans),
        _ => TernarySpec::builder().check().ok().map(Method::Ternary),
    };
    if let Some(m) = method {
        if let Ok(q) = quantize_output_groups(w.view(), groups, &m) {
            assert!(!finite || q.weights.iter().all(|v| v.is_finite()), "non-finite output from finite input");
            assert_eq!(q.weights.dim(), w.dim());
        }
        // Every layout over the same matrix (read as out × in).
        let (a, b) = (usize::from(data[2] / 16), usize::from(data[3] / 16));
        let order = if data[1] & 128 != 0 { QkvOrder::Blocked } else { QkvOrder::Interleaved };
        for layout in [
            GroupLayout::OutputRows { groups },
            GroupLayout::InputBlocks { size: a },
            GroupLayout::Tiles { rows: a, cols: b },
            GroupLayout::FusedQkv { heads: a, head_dim: b, order, splits: usize::from(data[0] / 32) },
        ] {
            if let Ok(q) = quantize_groups(w.view(), &layout, &m) {
                assert!(!finite || q.weights.iter().all(|v| v.is_finite()), "non-finite output from finite input");
                assert_eq!(q.weights.dim(), w.dim());
            }
        }
    }
    if let Ok(spec) = KMeansSpec::builder().k(usize::from(bits.max(1))).check() {
        if let Ok(mut book) = OutputGroupCodebook::new(w.view(), groups, &spec) {
            let grad = w.mapv(|v| if v.is_finite() { v * 0.5 } else { 1.0 });
            if let Ok(g) = book.centroid_gradients(grad.view()) {
                let _ = book.apply_step(&g);
            }
            let _ = book.weights();
        }
    }
});
