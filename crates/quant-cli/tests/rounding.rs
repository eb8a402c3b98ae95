//! `quant quantize --rounding gptq` on the tiny golden checkpoint of quant-models.

use std::path::{Path, PathBuf};

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
    assert_eq!((r["rounding"].as_str(), r["objective_form"].as_str()), (Some("gptq"), Some("full")));
    let objectives = r["layer_objectives"].as_array().ok_or("objectives")?;
    assert_eq!(objectives.len(), 12, "the twelve encoder matrices");
    for ob in objectives {
        let (n, g) = (ob["nearest"].as_f64().ok_or("nearest")?, ob["rounded"].as_f64().ok_or("rounded")?);
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
    assert_eq!(r["layer_objectives"].as_array().map(Vec::len), Some(12));
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
    fails(&["quantize", s(&input), "--rounding", "gptq", "-o", s(&out)], "needs --calibration FILE or --statistics FILE");
    fails(&["quantize", s(&input), "--rounding", "weighted", "-o", s(&out)], "needs --calibration FILE or --statistics FILE");
    fails(&["quantize", s(&input), "--calibration", s(&cal), "-o", s(&out)], "--rounding weighted or gptq only");
    fails(&["quantize", s(&input), "--rounding", "best", "-o", s(&out)], "[possible values: nearest, weighted, gptq]");
    fails(&["quantize", s(&input), "--sequential", "-o", s(&out)], "--rounding gptq only");
    fails(&["quantize", s(&input), "--rounding", "gptq", "--group-fit", "best", "-o", s(&out)], "[possible values: weighted, plain]");
    fails(
        &["quantize", s(&input), "--rounding", "weighted", "--calibration", s(&cal), "--sequential", "-o", s(&out)],
        "--rounding gptq only",
    );
    fails(&["quantize", s(&input), "--rounding", "gptq", "--statistics", s(&cal), "--sequential", "-o", s(&out)], "needs --calibration");
    fails(
        &["quantize", s(&input), "--rounding", "gptq", "--statistics", s(&cal), "--calibration", s(&cal), "-o", s(&out)],
        "cannot be used with",
    );
    fails(&["quantize", s(&input), "--rounding", "weighted", "--statistics", s(&cal), "-o", s(&out)], "neither a statistics file");
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

/// `quant quantize` with the given extra flags into `out`; the JSON report.
fn quantize_json(input: &Path, out: &Path, extra: &[&str]) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mut args =
        vec!["quantize", s(input), "--bits", "3", "--granularity", "group:16", "--table-dtype", "f32", "-o", s(out), "--json", "--quiet"];
    args.extend_from_slice(extra);
    let o = quant(&args);
    if !o.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&o.stderr)).into());
    }
    Ok(serde_json::from_slice(&o.stdout)?)
}

#[test]
fn statistics_files_stand_in_for_calibration_text() -> TestResult {
    let d = scratch("statistics");
    let cal = d.join("cal.txt");
    std::fs::write(&cal, "the cat sat on the mat\na dog ran in the park\nhello world\nshe sells sea shells\n")?;
    let input = model().join("model.safetensors");
    let stats = d.join("stats.safetensors");
    let imatrix = d.join("stats.dat");
    for (path, format) in [(&stats, "safetensors"), (&imatrix, "imatrix")] {
        let o = quant(&["statistics", s(&model()), "--calibration", s(&cal), "--format", format, "-o", s(path), "--quiet"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The same statistics from a file or from the text: the same bytes.
    for rounding in ["gptq", "weighted"] {
        let (a, b) = (d.join(format!("{rounding}-text.safetensors")), d.join(format!("{rounding}-file.safetensors")));
        let ra = quantize_json(&input, &a, &["--rounding", rounding, "--calibration", s(&cal)])?;
        let rb = quantize_json(&input, &b, &["--rounding", rounding, "--statistics", s(&stats)])?;
        assert!(std::fs::read(&a)? == std::fs::read(&b)?, "{rounding}");
        assert_eq!(ra["layer_objectives"], rb["layer_objectives"]);
    }
    // Weighted from the imatrix: the diagonal objective, never above round-to-nearest's
    // (f32 parameters: the weighted fit starts from the plain grid and keeps only gains).
    let r = quantize_json(&input, &d.join("w.safetensors"), &["--rounding", "weighted", "--statistics", s(&imatrix)])?;
    assert_eq!((r["rounding"].as_str(), r["objective_form"].as_str()), (Some("weighted"), Some("diagonal")));
    let objectives = r["layer_objectives"].as_array().ok_or("objectives")?;
    assert_eq!(objectives.len(), 12);
    let mut lower = 0;
    for ob in objectives {
        let (n, w) = (ob["nearest"].as_f64().ok_or("nearest")?, ob["rounded"].as_f64().ok_or("rounded")?);
        assert!(w <= n * (1.0 + 1e-9), "{ob}");
        lower += usize::from(w < n);
    }
    assert!(lower >= 10, "the weighted fit lowers the diagonal objective of {lower} of 12 matrices");
    // GPTQ needs the full X^T X.
    let o = quant(&["quantize", s(&input), "--rounding", "gptq", "--statistics", s(&imatrix), "-o", s(&d.join("never.safetensors"))]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("only its diagonal"));
    Ok(())
}

#[test]
fn sequential_gptq_writes_a_different_deterministic_checkpoint() -> TestResult {
    let d = scratch("sequential");
    let cal = d.join("cal.txt");
    std::fs::write(&cal, "the cat sat on the mat\na dog ran in the park\nhello world\nshe sells sea shells\n")?;
    let input = model().join("model.safetensors");
    let (seq, again, par) = (d.join("seq.safetensors"), d.join("again.safetensors"), d.join("par.safetensors"));
    let r = quantize_json(&input, &seq, &["--rounding", "gptq", "--calibration", s(&cal), "--sequential"])?;
    quantize_json(&input, &again, &["--rounding", "gptq", "--calibration", s(&cal), "--sequential"])?;
    let rp = quantize_json(&input, &par, &["--rounding", "gptq", "--calibration", s(&cal)])?;
    assert!(std::fs::read(&seq)? == std::fs::read(&again)?, "deterministic");
    // GPTQ's group fit: weighted by default, the paper's plain fit on request.
    let plain = d.join("plain.safetensors");
    let rq = quantize_json(&input, &plain, &["--rounding", "gptq", "--calibration", s(&cal), "--group-fit", "plain"])?;
    assert!(std::fs::read(&plain)? != std::fs::read(&par)?, "the group fits differ");
    let total = |v: &serde_json::Value| -> f64 {
        v["layer_objectives"].as_array().into_iter().flatten().filter_map(|o| o["rounded"].as_f64()).sum()
    };
    assert!(total(&rp) < total(&rq), "weighted group fits lower the total objective: {} vs {}", total(&rp), total(&rq));
    assert!(std::fs::read(&seq)? != std::fs::read(&par)?, "the later layers see other statistics");
    let objectives = r["layer_objectives"].as_array().ok_or("objectives")?;
    assert_eq!(objectives.len(), 12);
    // Layer 0 sees the same inputs either way.
    let layer0 = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["layer_objectives"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["name"].as_str().is_some_and(|n| n.contains("layer.0.")))
            .cloned()
            .collect()
    };
    assert_eq!(layer0(&r), layer0(&rp));
    assert_eq!(layer0(&r).len(), 6);
    Ok(())
}
