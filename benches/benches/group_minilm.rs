//! Opt-in: group-wise quantization of the real all-MiniLM-L6-v2 weights (every 2-D tensor,
//! 22.6M weights) beside candle 0.11's GGML formats on the same data: quantize, dequantize and
//! matrix-vector time on one thread, SQNR and bits per weight. Prints a Markdown table.
//!
//! Needs the checkpoint: `QUANT_MINILM=/path/to/model.safetensors`, or the copy the opt-in
//! MiniLM test downloads into target/minilm
//! (`cargo test --release -p quant-cli --test minilm -- --ignored`). Without it, it says so
//! and exits.
//!
//! `cargo bench -p quant-benches --features candle --bench group_minilm`. Results: docs/benchmarks.md.

use std::time::Instant;

use candle_core::quantized::k_quants::{BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ8_0, GgmlType, matmul};
use ndarray::{Array1, Array2};
use quant_core::{ParamDtype, RangeEstimator, Scheme, TableFit, UniformSpec, quantize};
use safetensors::{Dtype, SafeTensors};

type Matrices = Vec<(String, Array2<f32>)>;
type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;
/// A candle format's measurement.
type CandleRun = fn(&Matrices) -> BenchResult<Tally>;

fn load() -> Result<Option<Matrices>, Box<dyn std::error::Error>> {
    let Some(path) = quant_benches::minilm_checkpoint() else { return Ok(None) };
    let bytes = std::fs::read(&path)?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut out = Vec::new();
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    for name in names {
        let v = st.tensor(name)?;
        if v.dtype() == Dtype::F32 && v.shape().len() == 2 {
            let vals: Vec<f32> = v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            out.push((name.to_string(), Array2::from_shape_vec((v.shape()[0], v.shape()[1]), vals)?));
        }
    }
    Ok(Some(out))
}

/// Signal and noise energy summed over every matrix.
#[derive(Default)]
struct Tally {
    signal: f64,
    noise: f64,
    bytes: usize,
    elements: usize,
    quantize: f64,
    dequantize: f64,
    matvec: f64,
}

impl Tally {
    fn add_error(&mut self, x: &[f32], y: &[f32]) {
        for (&a, &b) in x.iter().zip(y) {
            self.signal += f64::from(a) * f64::from(a);
            self.noise += (f64::from(a) - f64::from(b)).powi(2);
        }
    }
    fn row(&self, name: &str) -> String {
        format!(
            "| {name} | {:.4} | {:.2} | {:.0} | {:.0} | {} |",
            8.0 * self.bytes as f64 / self.elements as f64,
            10.0 * (self.signal / self.noise).log10(),
            self.quantize * 1e3,
            self.dequantize * 1e3,
            if self.matvec.is_nan() { "n/a (rows of 384 are not whole blocks)".to_string() } else { format!("{:.1}", self.matvec * 1e3) },
        )
    }
}

fn input(n: usize) -> Vec<f32> {
    (0..n).map(|j| ((j * 2654435761) % 1000) as f32 / 500.0 - 1.0).collect()
}

fn ours(ms: &Matrices, spec: &UniformSpec) -> Result<Tally, Box<dyn std::error::Error + Send + Sync>> {
    let mut t = Tally::default();
    for (_, w) in ms {
        let start = Instant::now();
        let q = quantize(w, spec)?;
        t.quantize += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let back = q.dequantize();
        t.dequantize += start.elapsed().as_secs_f64();
        let x = Array1::from(input(w.ncols()));
        let mut y = Array1::zeros(w.nrows());
        let start = Instant::now();
        quant_core::matvec(&q, x.view(), y.view_mut())?;
        t.matvec += start.elapsed().as_secs_f64();
        t.add_error(w.as_slice().unwrap_or(&[]), back.as_slice().unwrap_or(&[]));
        t.bytes += q.storage_bytes();
        t.elements += w.len();
    }
    Ok(t)
}

fn candle<T: GgmlType>(ms: &Matrices) -> Result<Tally, Box<dyn std::error::Error>> {
    let mut t = Tally::default();
    for (_, w) in ms {
        let x = w.as_slice().unwrap_or(&[]);
        let mut blocks = vec![T::zeros(); x.len() / T::BLCK_SIZE];
        let start = Instant::now();
        T::from_float(x, &mut blocks);
        t.quantize += start.elapsed().as_secs_f64();
        let mut y = vec![0f32; x.len()];
        let start = Instant::now();
        T::to_float(&blocks, &mut y);
        t.dequantize += start.elapsed().as_secs_f64();
        // candle's product needs rows made of whole blocks: MiniLM's 384 columns are not
        // whole 256-element k-quant blocks.
        if w.ncols() % T::BLCK_SIZE == 0 {
            let v = input(w.ncols());
            let mut out = vec![0f32; w.nrows()];
            let start = Instant::now();
            matmul::<T>((1, w.ncols(), w.nrows()), &v, &blocks, &mut out)?;
            t.matvec += start.elapsed().as_secs_f64();
        } else {
            t.matvec = f64::NAN;
        }
        t.add_error(x, &y);
        t.bytes += std::mem::size_of_val(blocks.as_slice());
        t.elements += x.len();
    }
    Ok(t)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo bench -- --list` and `--no-run` probes
    }
    let Some(ms) = load()? else {
        println!("all-MiniLM-L6-v2 not found: set QUANT_MINILM or run the opt-in MiniLM test first (see this file's header)");
        return Ok(());
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let n: usize = ms.iter().map(|(_, w)| w.len()).sum();
    println!("{} matrices, {n} weights; times in ms for all of them on one thread (candle's matmul uses its own threads)\n", ms.len());
    println!("| format | bits/weight | SQNR dB | quantize ms | dequantize ms | matvec ms |\n|---|---|---|---|---|---|");
    let candle_rows: [(&str, CandleRun); 6] = [
        ("candle q8_0", candle::<BlockQ8_0>),
        ("candle q4_1", candle::<BlockQ4_1>),
        ("candle q4_0", candle::<BlockQ4_0>),
        ("candle q4_k", candle::<BlockQ4K>),
        ("candle q3_k", candle::<BlockQ3K>),
        ("candle q2_k", candle::<BlockQ2K>),
    ];
    for (name, f) in candle_rows {
        println!("{}", f(&ms)?.row(name));
    }
    let spec = |bits: u8, scheme, size, range, dtype| {
        UniformSpec::builder().bits(bits).scheme(scheme).per_group(1, size).range(range).param_dtype(dtype).check()
    };
    let q = |bits, sg| ParamDtype::Quantized { bits, super_group: sg };
    let ls = |bits: u8, size, dtype| {
        let b = UniformSpec::builder().bits(bits).scheme(Scheme::AsymmetricGrid).per_group(1, size).param_dtype(dtype);
        b.table_fit(TableFit::LeastSquares { iterations: 3 }).check()
    };
    let (mm, mse) = (RangeEstimator::MinMax, RangeEstimator::Mse { steps: 100 });
    let configs = [
        ("ours 8-bit symmetric, groups of 32, f16", spec(8, Scheme::SymmetricNarrow, 32, mm, ParamDtype::F16)?),
        ("ours 8-bit grid, groups of 128, f16", spec(8, Scheme::AsymmetricGrid, 128, mm, ParamDtype::F16)?),
        ("ours 4-bit grid, groups of 32, f16", spec(4, Scheme::AsymmetricGrid, 32, mm, ParamDtype::F16)?),
        ("ours 4-bit grid, groups of 64, f16", spec(4, Scheme::AsymmetricGrid, 64, mm, ParamDtype::F16)?),
        ("ours 4-bit grid, groups of 32, q6 tables", spec(4, Scheme::AsymmetricGrid, 32, mm, q(6, 8))?),
        ("ours 4-bit grid, groups of 32, q6 tables, least squares", ls(4, 32, q(6, 8))?),
        ("ours 4-bit grid, groups of 128, f16", spec(4, Scheme::AsymmetricGrid, 128, mm, ParamDtype::F16)?),
        ("ours 3-bit grid, groups of 32, q6 tables", spec(3, Scheme::AsymmetricGrid, 32, mm, q(6, 8))?),
        ("ours 3-bit grid, groups of 32, q4 tables", spec(3, Scheme::AsymmetricGrid, 32, mm, q(4, 16))?),
        ("ours 3-bit grid, groups of 32, MSE, q4 tables", spec(3, Scheme::AsymmetricGrid, 32, mse, q(4, 16))?),
        ("ours 3-bit grid, groups of 32, q6 tables, super-group 16", spec(3, Scheme::AsymmetricGrid, 32, mm, q(6, 16))?),
        ("ours 3-bit grid, groups of 32, MSE, q6 tables, super-group 16", spec(3, Scheme::AsymmetricGrid, 32, mse, q(6, 16))?),
        ("ours 2-bit grid, groups of 16, q4 tables", spec(2, Scheme::AsymmetricGrid, 16, mm, q(4, 16))?),
        ("ours 2-bit grid, groups of 16, MSE, q4 tables", spec(2, Scheme::AsymmetricGrid, 16, mse, q(4, 16))?),
        ("ours 2-bit grid, groups of 16, q4 tables, least squares", ls(2, 16, q(4, 16))?),
    ];
    for (name, s) in configs {
        let t = one.install(|| ours(&ms, &s)).map_err(|e| e.to_string())?;
        println!("{}", t.row(name));
    }
    Ok(())
}
