//! The checkpoint reader on corrupted files: seeded mutations of a valid quantized checkpoint
//! (byte flips in the header and the data, truncations, lying lengths) never panic, and the
//! unmutated file rebuilds every tensor.

use quant_core::{GranularityRule, MethodKind, ParamDtype};
use quant_core::{RangeEstimator, Scheme};
use quant_safetensors::safetensors::Dtype;
use quant_safetensors::safetensors::tensor::TensorView;
use quant_safetensors::{QuantizeOptions, exercise_reader, quantize_checkpoint};

type BoxError = Box<dyn std::error::Error>;
type TestResult = Result<(), BoxError>;

/// Quantized checkpoints written under a directory of their own (`tag` keeps the tests, which
/// run in parallel in one process, apart).
/// Returns each file with the number of tensors its report says were quantized (a per-channel
/// table on the 1-D bias would be larger than the bias, which is then kept as it is).
fn quantized_files(tag: &str) -> Result<Vec<(Vec<u8>, usize)>, BoxError> {
    let w: Vec<u8> = (0..24 * 40).flat_map(|i| ((i as f32 * 0.37).sin() * 0.05).to_le_bytes()).collect();
    let b: Vec<u8> = (0..24).flat_map(|i| (i as f32 * 0.01).to_le_bytes()).collect();
    let ids: Vec<u8> = (0..6i32).flat_map(|i| i.to_le_bytes()).collect();
    let input = quant_safetensors::safetensors::serialize(
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
            granularity: GranularityRule::Group { size: 16 },
            tables: ParamDtype::Quantized { bits: 6, super_group: 4 },
            ..Default::default()
        },
        QuantizeOptions {
            bits: 3,
            scheme: Scheme::SymmetricNarrow,
            tables: ParamDtype::F16,
            range: RangeEstimator::Mse { steps: 20 },
            ..Default::default()
        },
        QuantizeOptions { bits: 8, scheme: Scheme::AsymmetricExactZero, granularity: GranularityRule::Tensor, ..Default::default() },
        QuantizeOptions { method: MethodKind::Ternary, ..Default::default() },
        QuantizeOptions { method: MethodKind::KMeans, bits: 2, tables: ParamDtype::F16, ..Default::default() },
    ];
    let mut files = Vec::new();
    for (k, o) in configs.iter().enumerate() {
        let path = dir.join(format!("{k}.safetensors"));
        let report = quantize_checkpoint(&input, &path, o, |_| true, |_| {})?;
        files.push((std::fs::read(&path)?, report.tensors.len()));
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(files)
}

#[test]
fn valid_files_rebuild_every_tensor() -> TestResult {
    let files = quantized_files("valid")?;
    // Groups, per tensor and symmetric f16 steps fit the bias; ternary's f32 α and k-means'
    // table per element would not.
    assert_eq!(files.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [2, 2, 2, 1, 1]);
    for (f, n) in files {
        assert_eq!(exercise_reader(&f), n);
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
    for (f, _) in quantized_files("mutated")? {
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

/// `channel:AXIS` is checked per tensor, not against a 2-D stand-in: a 3-D tensor quantizes
/// along axis 2, and a tensor without that axis is kept unchanged with the reason.
#[test]
fn channel_axes_are_checked_per_tensor() -> TestResult {
    use quant_core::{Granularity, QuantError};
    use quant_safetensors::{PassReason, QuantizedCheckpoint};
    let w: Vec<u8> = (0..2 * 3 * 8).flat_map(|i| ((i as f32 * 0.91).cos() * 0.1).to_le_bytes()).collect();
    let b: Vec<u8> = (0..8).flat_map(|i| (i as f32 * 0.1).to_le_bytes()).collect();
    let conv = TensorView::new(Dtype::F32, vec![2, 3, 8], &w)?;
    let dir = std::env::temp_dir().join(format!("quant-ckpt-axis-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("q.safetensors");
    let options = QuantizeOptions { bits: 4, granularity: GranularityRule::Channel { axis: 2 }, ..Default::default() };
    options.check()?;
    let input = quant_safetensors::safetensors::serialize([("conv.weight", conv.clone())], None)?;
    let report = quantize_checkpoint(&input, &out, &options, |_| true, |_| {})?;
    assert_eq!(report.tensors[0].entry.granularity, Granularity::PerChannel { axis: 2 });
    let bytes = std::fs::read(&out)?;
    assert_eq!(QuantizedCheckpoint::parse(&bytes)?.dequantize("conv.weight")?.shape(), &[2, 3, 8]);
    let input =
        quant_safetensors::safetensors::serialize([("conv.weight", conv), ("conv.bias", TensorView::new(Dtype::F32, vec![8], &b)?)], None)?;
    let report = quantize_checkpoint(&input, &out, &options, |_| true, |_| {})?;
    assert_eq!(report.tensors.len(), 1);
    let kept = &report.passthrough[0];
    let expect = QuantError::InvalidAxis { axis: 2, ndim: 1 }.to_string();
    assert!(kept.name == "conv.bias" && matches!(&kept.reason, Some(PassReason::DoesNotFit { detail }) if *detail == expect), "{kept:?}");
    let bytes = std::fs::read(&out)?;
    let ckpt = QuantizedCheckpoint::parse(&bytes)?;
    assert_eq!(ckpt.raw("conv.bias")?.data(), &b[..]);
    // The other shapes a granularity does not fit: a scalar, a group longer than the last axis.
    assert!(matches!(options.pass_reason(&[]), Some(PassReason::DoesNotFit { .. })));
    let groups = QuantizeOptions { granularity: GranularityRule::Group { size: 16 }, ..options };
    assert!(matches!(groups.pass_reason(&[]), Some(PassReason::DoesNotFit { .. })));
    assert!(
        matches!(groups.pass_reason(&[4, 8]), Some(PassReason::DoesNotFit { detail }) if detail.contains("longer than the last axis (8)"))
    );
    assert_eq!(groups.pass_reason(&[4, 16]), None);
    assert_eq!(options.pass_reason(&[2, 3, 8]), None);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Reading the input tensor by tensor from a file gives the same output bytes as reading it
/// from memory, for quantize and for dequantize; a file that lies about its length is a
/// format error naming the tensor.
#[test]
fn file_and_memory_inputs_give_the_same_bytes() -> TestResult {
    use quant_safetensors::{CheckpointError, SafetensorsFile, dequantize_checkpoint, dequantize_file, quantize_file_by};
    let dir = std::env::temp_dir().join(format!("quant-ckpt-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let w: Vec<u8> = (0..48 * 64).flat_map(|i| ((i as f32 * 0.37).sin() * 0.05).to_le_bytes()).collect();
    let e: Vec<u8> = (0..16 * 64).flat_map(|i| quant_core::half::f16::from_f32((i as f32 * 0.11).cos()).to_le_bytes()).collect();
    let ids: Vec<u8> = (0..6i64).flat_map(|i| i.to_le_bytes()).collect();
    let input = quant_safetensors::safetensors::serialize(
        [
            ("a.weight", TensorView::new(Dtype::F32, vec![48, 64], &w)?),
            ("emb", TensorView::new(Dtype::F16, vec![16, 64], &e)?),
            ("ids", TensorView::new(Dtype::I64, vec![6], &ids)?),
        ],
        Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())])),
    )?;
    let path = dir.join("in.safetensors");
    std::fs::write(&path, &input)?;
    let options = QuantizeOptions::recommended(MethodKind::Uniform, 4);
    let (from_memory, from_file) = (dir.join("m.safetensors"), dir.join("f.safetensors"));
    let a = quantize_checkpoint(&input, &from_memory, &options, |_| true, |_| {})?;
    let src = SafetensorsFile::open(&path)?;
    let b = quantize_file_by(&src, &from_file, |_, _| Some(options), |_, x, m| m.quantize(&x), |_| {})?;
    assert_eq!(a, b);
    let q = std::fs::read(&from_memory)?;
    assert_eq!(q, std::fs::read(&from_file)?);
    let (back_m, back_f) = (dir.join("bm.safetensors"), dir.join("bf.safetensors"));
    assert_eq!(dequantize_checkpoint(&q, &back_m, |_| {})?, 2);
    assert_eq!(dequantize_file(&SafetensorsFile::open(&from_file)?, &back_f, |_| {})?, 2);
    let back = std::fs::read(&back_m)?;
    assert_eq!(back, std::fs::read(&back_f)?);
    let restored = quant_safetensors::safetensors::SafeTensors::deserialize(&back)?;
    assert_eq!(restored.tensor("ids")?.data(), &ids[..]);
    assert_eq!(restored.tensor("a.weight")?.shape(), &[48, 64]);
    // Truncated by three bytes: the last tensor in the file is named.
    std::fs::write(&path, &input[..input.len() - 3])?;
    let err = SafetensorsFile::open(&path).map(|_| ());
    assert!(matches!(&err, Err(CheckpointError::Format(m)) if m.contains("tensor '") && m.contains("past the file's")), "{err:?}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
