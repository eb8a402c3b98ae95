//! `quant quantize --rounding gptq` on the tiny golden checkpoint of quant-models.

use std::path::PathBuf;

mod common;
use common::{TestResult, quant, s};

fn model() -> PathBuf {
    common::tiny_model("plain")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("rounding", name)
}

#[test]
fn gptq_lowers_every_layer_objective_and_the_file_reads_back() -> TestResult {
    let d = scratch("gptq");
    let cal = d.join("cal.txt");
    std::fs::write(&cal, "the cat sat on the mat\na dog ran in the park\nhello world\nshe sells sea shells\nthe quick brown fox\n")?;
    let input = model().join("model.safetensors");
    let out = d.join("g.safetensors");
    let o = quant(&[
        "quantize",
        s(&input),
        "--rounding",
        "gptq",
        "--calibration",
        s(&cal),
        "--bits",
        "3",
        "--granularity",
        "group:16",
        "-o",
        s(&out),
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let objectives = r["gptq_objectives"].as_array().ok_or("objectives")?;
    assert_eq!(objectives.len(), 12, "the twelve encoder matrices");
    for ob in objectives {
        let (n, g) = (ob["nearest"].as_f64().ok_or("nearest")?, ob["gptq"].as_f64().ok_or("gptq")?);
        assert!(g < n, "{ob}");
    }
    // The file is a normal quantized checkpoint; dequantizing it works.
    let back = quant(&["inspect", s(&out), "--json"]);
    assert!(back.status.success(), "{}", String::from_utf8_lossy(&back.stderr));
    let deq = d.join("back.safetensors");
    assert!(quant(&["dequantize", s(&out), "-o", s(&deq), "--quiet"]).status.success());
    // The same command twice: the same bytes.
    let again = d.join("again.safetensors");
    let o = quant(&[
        "quantize",
        s(&input),
        "--rounding",
        "gptq",
        "--calibration",
        s(&cal),
        "--bits",
        "3",
        "--granularity",
        "group:16",
        "-o",
        s(&again),
        "--quiet",
    ]);
    assert!(o.status.success());
    assert!(std::fs::read(&out)? == std::fs::read(&again)?, "deterministic");
    // With a plan from the recipe too.
    let o = quant(&[
        "quantize",
        s(&input),
        "--rounding",
        "gptq",
        "--calibration",
        s(&cal),
        "--recipe",
        "q4_k_m",
        "--candidates",
        "4@group:16,6@group:16",
        "-o",
        s(&d.join("r.safetensors")),
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(r["gptq_objectives"].as_array().map(Vec::len), Some(12));
    Ok(())
}

#[test]
fn gptq_refusals() -> TestResult {
    let d = scratch("bad");
    let cal = d.join("cal.txt");
    std::fs::write(&cal, "hello world\n")?;
    let input = model().join("model.safetensors");
    let out = d.join("never.safetensors");
    let fails = |args: &[&str], needle: &str| {
        let o = quant(args);
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && e.contains(needle), "{args:?}: {e}");
        assert!(!out.exists());
    };
    fails(&["quantize", s(&input), "--rounding", "gptq", "-o", s(&out)], "needs --calibration");
    fails(&["quantize", s(&input), "--calibration", s(&cal), "-o", s(&out)], "--rounding gptq only");
    fails(&["quantize", s(&input), "--rounding", "best", "-o", s(&out)], "[possible values: nearest, gptq]");
    fails(
        &[
            "quantize",
            s(&input),
            "--rounding",
            "gptq",
            "--calibration",
            s(&cal),
            "--granularity",
            "channel:1",
            "--only",
            r"dense\.weight$",
            "--bits",
            "4",
            "-o",
            s(&out),
        ],
        "encoder.layer.0.attention.output.dense.weight",
    );
    fails(&["quantize", s(&input), "--rounding", "gptq", "--calibration", s(&cal), "--damp", "-1", "-o", s(&out)], "");
    // An input outside its model directory.
    let lone = d.join("model.safetensors");
    std::fs::copy(&input, &lone)?;
    fails(&["quantize", s(&lone), "--rounding", "gptq", "--calibration", s(&cal), "-o", s(&out)], "model directory");
    Ok(())
}
