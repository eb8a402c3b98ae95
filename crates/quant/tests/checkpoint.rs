//! The checkpoint reader on corrupted files: seeded mutations of a valid quantized checkpoint
//! (byte flips in the header and the data, truncations, lying lengths) never panic, and the
//! unmutated file rebuilds every tensor.

#![cfg(feature = "safetensors")]

use quant::checkpoint::{Granularity, QuantizeOptions, TableFormat, exercise_reader, quantize_checkpoint};
use quant::core::{RangeEstimator, Scheme};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Quantized checkpoints written under a directory of their own (`tag` keeps the tests, which
/// run in parallel in one process, apart).
fn quantized_files(tag: &str) -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let w: Vec<u8> = (0..24 * 40).flat_map(|i| ((i as f32 * 0.37).sin() * 0.05).to_le_bytes()).collect();
    let b: Vec<u8> = (0..24).flat_map(|i| (i as f32 * 0.01).to_le_bytes()).collect();
    let ids: Vec<u8> = (0..6i32).flat_map(|i| i.to_le_bytes()).collect();
    let input = safetensors::serialize(
        [
            ("a.weight", TensorView::new(Dtype::F32, vec![24, 40], &w)?),
            ("a.bias", TensorView::new(Dtype::F32, vec![24], &b)?),
            ("ids", TensorView::new(Dtype::I32, vec![6], &ids)?),
        ],
        None,
    )?;
    let dir = std::env::temp_dir().join(format!("quant-ckpt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let configs = [
        QuantizeOptions {
            bits: 4,
            granularity: Granularity::Group { size: 16 },
            tables: TableFormat::Quantized { bits: 6, super_group: 4 },
            ..Default::default()
        },
        QuantizeOptions {
            bits: 3,
            scheme: Scheme::SymmetricNarrow,
            tables: TableFormat::F16,
            range: RangeEstimator::Mse { steps: 20 },
            ..Default::default()
        },
        QuantizeOptions { bits: 8, scheme: Scheme::AsymmetricExactZero, granularity: Granularity::Tensor, ..Default::default() },
        QuantizeOptions { method: quant::checkpoint::Method::Ternary, ..Default::default() },
        QuantizeOptions { method: quant::checkpoint::Method::Kmeans, bits: 2, tables: TableFormat::F16, ..Default::default() },
    ];
    let mut files = Vec::new();
    for (k, o) in configs.iter().enumerate() {
        let path = dir.join(format!("{k}.safetensors"));
        quantize_checkpoint(&input, &path, o, |_| true, |_| {})?;
        files.push(std::fs::read(&path)?);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(files)
}

#[test]
fn valid_files_rebuild_every_tensor() -> TestResult {
    for f in quantized_files("valid")? {
        assert_eq!(exercise_reader(&f), 2);
    }
    Ok(())
}

#[test]
fn mutated_files_never_panic() -> TestResult {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for f in quantized_files("mutated")? {
        let header = u64::from_le_bytes(f[..8].try_into()?) as usize + 8;
        for round in 0..400 {
            let mut m = f.clone();
            match round % 4 {
                // Flip bytes in the JSON header (digits, quotes, names).
                0 => {
                    for _ in 0..1 + next() % 3 {
                        let i = 8 + (next() as usize) % (header - 8);
                        m[i] = (next() % 256) as u8;
                    }
                }
                // Flip bytes in the tensor data (codes and tables).
                1 => {
                    for _ in 0..1 + next() % 8 {
                        let i = header + (next() as usize) % (m.len() - header);
                        m[i] ^= 1 << (next() % 8);
                    }
                }
                2 => m.truncate((next() as usize) % m.len()),
                _ => {
                    let n = (next() % (header as u64 * 2)).to_le_bytes();
                    m[..8].copy_from_slice(&n);
                }
            }
            exercise_reader(&m);
        }
    }
    Ok(())
}
