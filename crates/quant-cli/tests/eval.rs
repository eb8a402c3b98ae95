//! `quant eval` on the tiny golden checkpoints of quant-models (no download).

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{TestResult, quant, s};

fn model() -> PathBuf {
    common::tiny_model("plain")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("eval", name)
}

const SENTENCES: &str =
    "the cat sat on the mat\na dog ran in the park\nhello world\nshe sells sea shells\nthe quick brown fox jumps over the lazy dog\n";

fn json(o: &Output) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Ok(serde_json::from_slice(&o.stdout)?)
}

/// Quantizes the tiny model's weight matrices at `bits` (groups of 32 along the input).
fn quantized(d: &Path, bits: &str) -> PathBuf {
    let q = d.join(format!("q{bits}.safetensors"));
    let input = model().join("model.safetensors");
    let o = quant(&[
        "quantize",
        s(&input),
        "-o",
        s(&q),
        "--only",
        "dense.weight$|query.weight$|key.weight$|value.weight$",
        "--bits",
        bits,
        "--granularity",
        "group:32",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    q
}

#[test]
fn identical_pairs_are_always_found_and_more_bits_stay_closer() -> TestResult {
    let d = scratch("basic");
    let text = d.join("s.txt");
    std::fs::write(&text, SENTENCES)?;
    // Each query is its own document: the own document is at cosine 1, ranked first.
    let pairs = d.join("p.tsv");
    let lines: Vec<String> = SENTENCES.lines().map(|l| format!("{l}\t{l}")).collect();
    std::fs::write(&pairs, lines.join("\n"))?;
    let r = json(&quant(&["eval", s(&model()), "--text", s(&text), "--pairs", s(&pairs), "--json", "--quiet"]))?;
    assert_eq!(r["sentences"], 5);
    assert!(r["cosine"].is_null(), "no weights, no cosine");
    assert_eq!(r["retrieval_f32"]["pairs"], 5);
    assert_eq!(r["retrieval_f32"]["recall_at_1"], 1.0);
    assert_eq!(r["retrieval_f32"]["mrr"], 1.0);
    assert!(r["retrieval_quantized"].is_null());

    let mut means = Vec::new();
    for bits in ["8", "2"] {
        let q = quantized(&d, bits);
        let r = json(&quant(&["eval", s(&model()), "--weights", s(&q), "--text", s(&text), "--pairs", s(&pairs), "--json", "--quiet"]))?;
        let c = &r["cosine"];
        assert_eq!(c["count"], 5);
        let (mean, p5, min) =
            (c["mean"].as_f64().unwrap_or(f64::NAN), c["p5"].as_f64().unwrap_or(f64::NAN), c["min"].as_f64().unwrap_or(f64::NAN));
        assert!(min <= p5 && p5 <= mean && mean <= 1.0, "{bits} bits: {c}");
        assert!(r["replaced_tensors"].as_u64().unwrap_or(0) >= 6, "{r}");
        assert_eq!(r["retrieval_quantized"]["recall_at_1"], 1.0, "identical texts embed identically under any weights");
        means.push(mean);
    }
    assert!(means[0] > 0.99, "8 bits: mean cosine {}", means[0]);
    assert!(means[1] < means[0], "2 bits ({}) should stay less close than 8 ({})", means[1], means[0]);
    // The human form prints the same figures (the 8-bit file again).
    let q = d.join("q8.safetensors");
    let o = quant(&["eval", s(&model()), "--weights", s(&q), "--text", s(&text), "--pairs", s(&pairs), "--quiet"]);
    let out = String::from_utf8(o.stdout)?;
    assert!(out.contains("cosine to f32 over 5 sentence(s): mean") && out.contains("retrieval, quantized: Recall@1 1.0000"), "{out}");
    Ok(())
}

#[test]
fn bad_inputs_are_reported_by_name() -> TestResult {
    let d = scratch("bad");
    let text = d.join("s.txt");
    std::fs::write(&text, SENTENCES)?;
    let err = |args: &[&str]| {
        let o = quant(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let bad = d.join("bad.tsv");
    std::fs::write(&bad, "a query\ta document\nno tab on this line\n")?;
    let e = err(&["eval", s(&model()), "--text", s(&text), "--pairs", s(&bad)]);
    assert!(e.contains("bad.tsv line 2") && e.contains("one tab"), "{e}");
    std::fs::write(&bad, "one\ttwo\tthree\n")?;
    assert!(err(&["eval", s(&model()), "--text", s(&text), "--pairs", s(&bad)]).contains("line 1"));
    std::fs::write(&bad, "\n\n")?;
    assert!(err(&["eval", s(&model()), "--text", s(&text), "--pairs", s(&bad)]).contains("no query / document pairs"));
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "\n \n")?;
    assert!(err(&["eval", s(&model()), "--text", s(&empty)]).contains("holds no sentences"));
    let e = err(&["eval", s(&model()), "--text", s(&d.join("missing.txt"))]);
    assert!(e.contains("missing.txt"), "{e}");
    // Weights that are not a quantized checkpoint of this model.
    let e = err(&["eval", s(&model()), "--text", s(&text), "--weights", s(&text)]);
    assert!(e.contains("s.txt"), "{e}");
    let e = err(&["eval", s(&model()), "--text", s(&text), "--weights", s(&model().join("model.safetensors"))]);
    assert!(e.contains("model.safetensors"), "{e}");
    Ok(())
}
