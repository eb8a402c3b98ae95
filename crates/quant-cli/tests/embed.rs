//! `quant embed` on the tiny golden checkpoints of quant-models (no download).

use std::path::PathBuf;

mod common;
use common::{TestResult, embeddings, quant, s};

fn model(name: &str) -> PathBuf {
    common::tiny_model(name)
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("embed", name)
}

#[test]
fn embeds_a_text_file_and_counts_what_it_skipped() -> TestResult {
    let d = scratch("counts");
    let text = d.join("s.txt");
    let long = (0..40).map(|i| format!("the{i}")).collect::<Vec<_>>().join(" ");
    std::fs::write(&text, format!("Hello world\n\n   \nthe cat sat on the mat\r\n{long}\n"))?;
    let out = d.join("e.safetensors");
    let o = quant(&["embed", s(&model("plain")), "--text", s(&text), "-o", s(&out), "--json", "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(report["sentences"], 3);
    assert_eq!(report["dimension"], 32);
    assert_eq!(report["skipped_empty_lines"], 2);
    assert_eq!(report["truncated"], 1);
    assert_eq!(report["max_tokens"], 16);
    let (shape, v) = embeddings(&out)?;
    assert_eq!(shape, vec![3, 32]);
    // The model's head normalises.
    for row in v.chunks(32) {
        let n: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "{n}");
    }
    // The same sentences through the library, one by one: the same bits.
    let enc = quant::models::bert::SentenceEncoder::load(&model("plain"))?;
    let lib = enc.embed(&["Hello world", "the cat sat on the mat", long.as_str()])?;
    assert_eq!(lib.iter().copied().collect::<Vec<f32>>(), v);
    std::fs::remove_dir_all(&d)?;
    Ok(())
}

#[test]
fn quantized_weights_change_the_embeddings_a_little() -> TestResult {
    let d = scratch("weights");
    let text = d.join("s.txt");
    std::fs::write(&text, "Hello world\nthe cat sat on the mat\nthe dog ran\n")?;
    let q = d.join("q.safetensors");
    let o = quant(&["quantize", s(&model("plain").join("model.safetensors")), "-o", s(&q), "--bits", "8", "--skip", "LayerNorm|bias"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (f, fq) = (d.join("f.safetensors"), d.join("fq.safetensors"));
    let o = quant(&["embed", s(&model("plain")), "--text", s(&text), "-o", s(&f), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = quant(&["embed", s(&model("plain")), "--text", s(&text), "-o", s(&fq), "--weights", s(&q), "--json", "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    // 3 embedding tables and 2 layers × 6 matrices.
    assert_eq!(report["replaced_tensors"], 15);
    let ((_, a), (_, b)) = (embeddings(&f)?, embeddings(&fq)?);
    assert_ne!(a, b, "the quantized weights were used");
    for (x, y) in a.chunks(32).zip(b.chunks(32)) {
        let cos: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        assert!(cos > 0.99, "8-bit weights keep the embedding: cosine {cos}");
    }
    // A checkpoint that is not quantized is refused.
    let o =
        quant(&["embed", s(&model("plain")), "--text", s(&text), "-o", s(&fq), "--weights", s(&model("plain").join("model.safetensors"))]);
    assert!(!o.status.success());
    std::fs::remove_dir_all(&d)?;
    Ok(())
}

#[test]
fn bad_text_and_model_directories_are_one_line_errors() -> TestResult {
    let d = scratch("bad");
    let text = d.join("s.txt");
    std::fs::write(&text, b"fine\nalso fine\nbroken \xff\n")?;
    let out = d.join("e.safetensors");
    let o = quant(&["embed", s(&model("plain")), "--text", s(&text), "-o", s(&out)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 3") && err.contains("UTF-8"), "{err}");
    assert!(!out.exists());
    std::fs::write(&text, "fine\n")?;
    let o = quant(&["embed", s(&d), "--text", s(&text), "-o", s(&out)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("config.json"), "{err}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&d)?;
    Ok(())
}
