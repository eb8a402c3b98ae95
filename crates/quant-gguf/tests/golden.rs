//! Against llama.cpp's own Python package (`gguf`): a file its writer made is read back with the
//! same metadata and tensors; the codecs give its quantizers' bytes and its dequantized values,
//! bit for bit; and this crate's writer gives the same file, byte for byte.
//! `tests/data/make_golden.py` made the file.

use quant_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Header, Value, ValueType, codec};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/golden.gguf");

type R = Result<(), Box<dyn std::error::Error>>;

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn expected_metadata() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::from("bert")),
        ("test.u8", Value::U8(200)),
        ("test.i8", Value::I8(-100)),
        ("test.u16", Value::U16(60000)),
        ("test.i16", Value::I16(-30000)),
        ("test.u32", Value::U32(4_000_000_000)),
        ("test.i32", Value::I32(-2_000_000_000)),
        ("test.f32", Value::F32(0.1)),
        ("test.bool", Value::Bool(true)),
        ("test.string", Value::from("héllo, gguf")),
        ("test.u64", Value::U64((1 << 63) + 5)),
        ("test.i64", Value::I64(-(1 << 62))),
        ("test.f64", Value::F64(1.0 / 3.0)),
        ("test.strings", Value::strings(["[CLS]", "a", "", "##ing"])),
        ("test.i32s", Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2), Value::I32(3)])),
        ("test.f32s", Value::Array(ValueType::F32, vec![Value::F32(0.5), Value::F32(-1.25)])),
    ]
}

#[test]
fn reads_the_reference_writers_file() -> R {
    let file = GgufFile::open(GOLDEN)?;
    let h = file.header();
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, 32);
    let keys: Vec<(&str, &Value)> = h.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let expected = expected_metadata();
    assert_eq!(keys, expected.iter().map(|(k, v)| (*k, v)).collect::<Vec<_>>());
    // Input, bytes and decoded values of each type ggml's Python package encodes; bytes and
    // decoded values of each k-quant.
    let encoded = codec::SUPPORTED.iter().filter(|t| t.block_size() < 256).count();
    assert_eq!(h.tensors.len(), 3 * encoded + 2 * (codec::SUPPORTED.len() - encoded));
    for t in &h.tensors {
        let row = if t.ggml_type.block_size() == 256 || t.name.ends_with("_k") { 256 } else { 32 };
        assert_eq!(t.dims, vec![row, 8], "{}", t.name);
        assert_eq!(t.shape(), vec![8, row as usize]);
    }
    Ok(())
}

#[test]
fn codecs_equal_the_reference_bit_for_bit() -> R {
    let file = GgufFile::open(GOLDEN)?;
    for &ty in codec::SUPPORTED {
        // The package names its types in upper case; the script lower-cases them.
        let name = ty.name().to_lowercase();
        let (info, bytes) = file.tensor_data(&name).ok_or("bytes")?;
        let (_, decoded) = file.tensor_data(&format!("decoded.{name}")).ok_or("decoded")?;
        assert_eq!(info.ggml_type, ty);
        // The k-quants' encoders are this crate's own (compared with candle's in
        // tests/candle.rs); the others are ggml's reference quantizers.
        if let Some((_, input)) = file.tensor_data(&format!("input.{name}")) {
            assert_eq!(codec::quantize(ty, &f32s(input))?, bytes, "{ty}: encoder");
        } else {
            assert_eq!(ty.block_size(), 256, "{ty}: no input");
        }
        let n = info.elements() as usize;
        let back: Vec<u32> = codec::dequantize(ty, bytes, n)?.iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = f32s(decoded).iter().map(|v| v.to_bits()).collect();
        assert_eq!(back, want, "{ty}: decoder");
    }
    Ok(())
}

#[test]
fn the_writer_gives_the_reference_writers_bytes() -> R {
    let golden = std::fs::read(GOLDEN)?;
    let file = GgufFile::open(GOLDEN)?;
    let mut w = GgufWriter::new();
    for (k, v) in expected_metadata() {
        w.metadata(k, v)?;
    }
    for t in &file.header().tensors {
        w.tensor(&t.name, &t.dims, t.ggml_type)?;
    }
    let mut out = Vec::new();
    let tensors = &file.header().tensors;
    w.write_to(&mut out, |i, sink| Ok(std::io::Write::write_all(sink, file.data(&tensors[i]))?))?;
    assert_eq!(out.len(), golden.len());
    assert!(out == golden, "first difference at byte {:?}", out.iter().zip(&golden).position(|(a, b)| a != b));
    Ok(())
}

#[test]
fn every_truncation_is_an_error() -> R {
    let golden = std::fs::read(GOLDEN)?;
    let header = Header::parse(&golden, Some(golden.len() as u64))?;
    // Every cut inside the header fails to parse; every cut inside the data fails the extents.
    for cut in 0..golden.len() {
        let part = &golden[..cut];
        let r = Header::parse(part, Some(cut as u64));
        assert!(r.is_err(), "cut at {cut} parsed");
        if (cut as u64) < header.data_offset.saturating_sub(32) {
            assert!(!matches!(r, Err(GgufError::Tensor { .. })), "cut at {cut}: {r:?}");
        }
    }
    Ok(())
}

#[test]
fn hostile_headers_are_typed_errors() -> R {
    let golden = std::fs::read(GOLDEN)?;
    let mut bad = golden.clone();
    bad[0] = b'X';
    assert!(matches!(Header::parse(&bad, None), Err(GgufError::Magic(_))));
    let mut bad = golden.clone();
    bad[4] = 9;
    assert!(matches!(Header::parse(&bad, None), Err(GgufError::Version(9))));
    // A metadata count of 2^64 − 1 must not allocate: it runs out of bytes.
    let mut bad = golden.clone();
    bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(Header::parse(&bad, None), Err(GgufError::Truncated { .. } | GgufError::DuplicateKey(_))));
    // A string length past the end.
    let mut bad = golden.clone();
    bad[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(Header::parse(&bad, None), Err(GgufError::Truncated { .. })));
    // Every single-byte change parses or fails with a typed error (no panic).
    for at in 0..(Header::parse(&golden, None)?.data_offset as usize) {
        for v in [0u8, 1, 0x7f, 0xff] {
            let mut b = golden.clone();
            b[at] = v;
            let _ = Header::parse(&b, Some(b.len() as u64));
        }
    }
    Ok(())
}

#[test]
fn writer_rejects_what_readers_would() -> R {
    let mut w = GgufWriter::new();
    w.metadata("a", 1u32)?;
    assert!(matches!(w.metadata("a", 2u32), Err(GgufError::DuplicateKey(_))));
    assert!(matches!(w.metadata("bad", Value::Array(ValueType::U8, vec![Value::U32(1)])), Err(GgufError::Malformed { .. })));
    assert!(matches!(w.metadata("general.alignment", 24u32), Err(GgufError::Malformed { .. })));
    w.tensor("t", &[256, 2], GgmlType::Q4_K)?;
    assert!(matches!(w.tensor("t", &[32], GgmlType::F32), Err(GgufError::DuplicateTensor(_))));
    assert!(matches!(w.tensor("u", &[384, 2], GgmlType::Q4_K), Err(GgufError::Tensor { .. })));
    assert!(matches!(w.tensor("v", &[], GgmlType::F32), Err(GgufError::Tensor { .. })));
    assert!(matches!(w.tensor("w", &[1, 1, 1, 1, 1], GgmlType::F32), Err(GgufError::Tensor { .. })));
    assert!(matches!(w.tensor("x", &[u64::MAX, 2], GgmlType::F32), Err(GgufError::Tensor { .. })));
    // A tensor that writes the wrong number of bytes.
    let mut out = Vec::new();
    let r = w.write_to(&mut out, |_, sink| Ok(std::io::Write::write_all(sink, &[0u8; 10])?));
    assert!(matches!(r, Err(GgufError::Tensor { .. })), "{r:?}");
    Ok(())
}

#[test]
fn a_failed_write_leaves_no_file() -> R {
    let dir = std::env::temp_dir().join(format!("quant-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("m.gguf");
    std::fs::write(&path, b"keep")?;
    let mut w = GgufWriter::new();
    w.tensor("t", &[32], GgmlType::F32)?;
    let r = w.write_file(&path, |_, _| Err(GgufError::NoCodec("test")));
    assert!(r.is_err());
    assert_eq!(std::fs::read(&path)?, b"keep");
    assert!(!dir.join("m.gguf.partial").exists());
    w.write_file(&path, |_, sink| Ok(std::io::Write::write_all(sink, &[0u8; 128])?))?;
    let back = GgufFile::open(&path)?;
    assert_eq!(back.header().tensors[0].dims, vec![32]);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The fuzz target's body on the golden file and on copies with single bytes changed in the
/// header (metadata values, counts, lengths, dimensions, types, offsets).
#[test]
fn the_fuzz_body_holds_on_mutated_files() -> R {
    let golden = std::fs::read(GOLDEN)?;
    quant_gguf::fuzz::exercise(&golden);
    let end = Header::parse(&golden, None)?.data_offset as usize;
    for at in (0..end).step_by(3) {
        for v in [0u8, 2, 0x80, 0xff] {
            let mut b = golden.clone();
            b[at] = v;
            quant_gguf::fuzz::exercise(&b);
        }
    }
    Ok(())
}

#[test]
fn values_print_short() {
    use quant_gguf::{Value, ValueType};
    assert_eq!(Value::U32(6).to_string(), "6");
    assert_eq!(Value::I32(-3).to_string(), "-3");
    assert_eq!(Value::Bool(false).to_string(), "false");
    assert_eq!(Value::String("bert".into()).to_string(), "\"bert\"");
    assert_eq!(Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(3)]).to_string(), "[2 x I32]");
}
