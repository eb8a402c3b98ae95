//! SQNR and bits per weight of uniform configurations on 4096 x 4096 N(0, 0.02²) weights,
//! beside candle's GGML block formats on the same matrix. Prints a Markdown table.
//!
//! `cargo bench -p quant-benches --features candle --bench uniform_quality`. Results: docs/benchmarks.md.

use candle_core::quantized::k_quants::{BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ8_0, GgmlType};
use quant_benches::{gaussian_weights, sqnr_db};
use quant_core::{Granularity, ParamDtype, RangeEstimator, Scheme, TableFit, UniformSpec, quantize};

fn candle<T: GgmlType>(x: &[f32]) -> (f64, f64) {
    let mut blocks = vec![T::zeros(); x.len() / T::BLCK_SIZE];
    T::from_float(x, &mut blocks);
    let mut y = vec![0f32; x.len()];
    T::to_float(&blocks, &mut y);
    let bpw = (std::mem::size_of::<T>() * 8) as f64 / T::BLCK_SIZE as f64;
    (bpw, sqnr_db(x, &y))
}

fn main() -> Result<(), quant_core::QuantError> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo bench -- --list` and `--no-run` probes
    }
    let n = 4096;
    let w = gaussian_weights(n, n, 42);
    let flat: Vec<f32> = w.iter().copied().collect();
    println!("| format | bits/weight | SQNR dB |\n|---|---|---|");
    for (name, (bpw, db)) in [
        ("candle q8_0", candle::<BlockQ8_0>(&flat)),
        ("candle q4_1", candle::<BlockQ4_1>(&flat)),
        ("candle q4_0", candle::<BlockQ4_0>(&flat)),
        ("candle q4_k", candle::<BlockQ4K>(&flat)),
        ("candle q3_k", candle::<BlockQ3K>(&flat)),
        ("candle q2_k", candle::<BlockQ2K>(&flat)),
    ] {
        println!("| {name} | {bpw:.4} | {db:.2} |");
    }
    let mut rows = Vec::new();
    for bits in [8u8, 4, 3, 2] {
        for scheme in [Scheme::SymmetricNarrow, Scheme::AsymmetricGrid] {
            for g in [
                Granularity::PerChannel { axis: 0 },
                Granularity::PerGroup { axis: 1, size: 32 },
                Granularity::PerGroup { axis: 1, size: 64 },
                Granularity::PerGroup { axis: 1, size: 128 },
            ] {
                for (range, dtype) in [RangeEstimator::MinMax, RangeEstimator::Mse { steps: 100 }]
                    .into_iter()
                    .flat_map(|r| [(r, ParamDtype::Native), (r, ParamDtype::F16)])
                {
                    if bits == 2 && scheme == Scheme::SymmetricNarrow {
                        continue; // 3 levels: not a useful 2-bit format
                    }
                    let spec = UniformSpec::builder().bits(bits).scheme(scheme).granularity(g).range(range).param_dtype(dtype).check()?;
                    let q = quantize(&w, &spec)?;
                    let back = q.dequantize();
                    let db = sqnr_db(&flat, back.as_slice().unwrap_or(&[]));
                    let gname = match g {
                        Granularity::PerGroup { size, .. } => format!("group {size}"),
                        _ => "per-channel".to_string(),
                    };
                    let rname = if range == RangeEstimator::MinMax { "min-max" } else { "mse" };
                    rows.push((
                        q.bits_per_weight(),
                        format!(
                            "| ours {bits}-bit {scheme:?} {gname} {rname} ({} tables) | {:.4} | {db:.2} |",
                            if dtype == ParamDtype::F16 { "f16" } else { "f32" },
                            q.bits_per_weight()
                        ),
                    ));
                }
            }
        }
    }
    // Two-level tables shaped like the k-quants: (bits, scheme, group, table bits, super-group).
    for (bits, scheme, size, tbits, sg) in [
        (4u8, Scheme::AsymmetricGrid, 32usize, 6u8, 8u32),
        (4, Scheme::AsymmetricGrid, 32, 8, 8),
        (4, Scheme::SymmetricFull, 32, 6, 8),
        (3, Scheme::AsymmetricGrid, 32, 6, 8),
        (3, Scheme::AsymmetricGrid, 32, 4, 16),
        (3, Scheme::SymmetricFull, 16, 6, 16),
        (2, Scheme::AsymmetricGrid, 16, 4, 16),
        (2, Scheme::AsymmetricGrid, 32, 4, 16),
    ] {
        let fits = [
            (RangeEstimator::MinMax, TableFit::Cover, "min-max"),
            (RangeEstimator::Mse { steps: 100 }, TableFit::Cover, "mse"),
            (RangeEstimator::MinMax, TableFit::LeastSquares { iterations: 3 }, "least squares x3"),
        ];
        for (range, fit, rname) in fits {
            let spec = UniformSpec::builder()
                .bits(bits)
                .scheme(scheme)
                .per_group(1, size)
                .range(range)
                .param_dtype(ParamDtype::Quantized { bits: tbits, super_group: sg })
                .table_fit(fit)
                .check()?;
            let q = quantize(&w, &spec)?;
            let back = q.dequantize();
            let db = sqnr_db(&flat, back.as_slice().unwrap_or(&[]));
            rows.push((
                q.bits_per_weight(),
                format!(
                    "| ours {bits}-bit {scheme:?} group {size} {rname} (q{tbits} tables, super-group {sg}) | {:.4} | {db:.2} |",
                    q.bits_per_weight()
                ),
            ));
        }
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, r) in rows {
        println!("{r}");
    }
    Ok(())
}
