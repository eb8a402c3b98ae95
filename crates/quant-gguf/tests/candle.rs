//! Against candle (`candle_core::quantized`): a file written here reads back in candle with the
//! same names, shapes, types and bytes, and candle's dequantization of every supported type
//! equals this crate's, bit for bit, on random data.

use candle_core::quantized::gguf_file;
use candle_core::{Device, quantized::GgmlDType};
use quant_gguf::{GgmlType, GgufWriter, Value, codec};

type R = Result<(), Box<dyn std::error::Error>>;

fn candle_type(t: GgmlType) -> GgmlDType {
    match t {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        other => panic!("no candle type for {other}"),
    }
}

/// Deterministic values of mixed scales (a uniform draw from a 64-bit LCG, scaled by 10^k).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let scale = 10f64.powi((i / 256 % 5) as i32 - 2);
            (u * scale) as f32
        })
        .collect()
}

#[test]
fn candle_reads_our_files_and_decodes_as_we_do() -> R {
    let (rows, cols) = (6u64, 512u64);
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", "bert")?;
    w.metadata("bert.block_count", 6u32)?;
    w.metadata("tokenizer.ggml.tokens", Value::strings(["[PAD]", "[UNK]", "hello"]))?;
    let mut payload = Vec::new();
    for (k, &ty) in codec::SUPPORTED.iter().enumerate() {
        let x = values((rows * cols) as usize, k as u64);
        payload.push((ty, codec::quantize(ty, &x)?));
        w.tensor(&format!("blk.{k}.{}", ty.name()), &[cols, rows], ty)?;
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes, |i, sink| Ok(std::io::Write::write_all(sink, &payload[i].1)?))?;

    let mut cursor = std::io::Cursor::new(&bytes);
    let content = gguf_file::Content::read(&mut cursor)?;
    assert_eq!(content.metadata.get("bert.block_count").map(|v| v.to_u32()).transpose()?, Some(6));
    assert_eq!(content.metadata.get("general.architecture").map(|v| v.to_string().cloned()).transpose()?, Some("bert".to_owned()));
    assert_eq!(content.tensor_infos.len(), codec::SUPPORTED.len());
    for (k, (ty, data)) in payload.iter().enumerate() {
        let name = format!("blk.{k}.{}", ty.name());
        let q = content.tensor(&mut cursor, &name, &Device::Cpu)?;
        assert_eq!(q.dtype(), candle_type(*ty), "{name}");
        assert_eq!(q.shape().dims(), &[rows as usize, cols as usize], "{name}");
        assert_eq!(q.data()?.as_ref(), &data[..], "{name}: bytes");
        let theirs: Vec<u32> = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect();
        let ours: Vec<u32> = codec::dequantize(*ty, data, (rows * cols) as usize)?.iter().map(|v| v.to_bits()).collect();
        assert_eq!(ours, theirs, "{name}: dequantized");
    }
    Ok(())
}

/// Signal-to-quantization-noise ratio in dB.
fn sqnr(x: &[f32], y: &[f32]) -> f64 {
    let s: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
    let n: f64 = x.iter().zip(y).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
    10.0 * (s / n).log10()
}

/// Gaussian-like weights (sum of uniforms) with a few outliers and rows of different scales.
fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let u = values(rows * cols * 4, seed);
    (0..rows * cols)
        .map(|i| {
            let g: f32 = u[4 * i..4 * i + 4].iter().map(|v| v / 10f32.powi((4 * i / 256 % 5) as i32 - 2)).sum();
            let row_scale = 1.0 + (i / cols) as f32 * 0.25;
            if i % 97 == 13 { g * row_scale * 8.0 } else { g * row_scale }
        })
        .collect()
}

#[test]
fn our_encoders_are_at_least_candles() -> R {
    let (rows, cols) = (16usize, 1024usize);
    for &ty in codec::SUPPORTED.iter().filter(|t| t.block_size() > 1) {
        let x = weights(rows, cols, 3);
        let ours = codec::dequantize(ty, &codec::quantize(ty, &x)?, x.len())?;
        let t = candle_core::Tensor::from_vec(x.clone(), (rows, cols), &Device::Cpu)?;
        let q = candle_core::quantized::QTensor::quantize(&t, candle_type(ty))?;
        let theirs = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let (a, b) = (sqnr(&x, &ours), sqnr(&x, &theirs));
        eprintln!("{ty}: ours {a:.2} dB, candle {b:.2} dB");
        assert!(a >= b - 1e-9, "{ty}: ours {a:.3} dB < candle's {b:.3} dB");
    }
    Ok(())
}
