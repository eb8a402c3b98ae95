//! `quant quantize` with a quantization per tensor (a sensitivity report and a budget, the
//! q4_k_m recipe, a plan file) on the tiny golden checkpoint of quant-models.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;
use common::{TestResult, quant, s};

fn model() -> PathBuf {
    common::tiny_model("plain")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("plan", name)
}

/// A sensitivity report of the tiny model: 2, 4 and 8 bits at groups of 16 (6, 8 and 12
/// bits per weight with f32 scales and offsets), with `extra` arguments; and the command's
/// output (its table on stdout).
fn sensitivity_with(d: &Path, extra: &[&str]) -> Result<(PathBuf, Output), Box<dyn std::error::Error>> {
    let text = d.join("cal.txt");
    std::fs::write(&text, "the cat sat on the mat\na dog ran in the park\nhello world\nshe sells sea shells\n")?;
    let out = d.join("sens.json");
    let dir = model();
    let args = [
        "sensitivity",
        s(&dir),
        "--calibration",
        s(&text),
        "--subsets",
        "2",
        "--per-subset",
        "2",
        "--bits",
        "2,4,8",
        "--granularity",
        "group:16",
        "-o",
        s(&out),
    ];
    let o = quant(&[&args[..], extra].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Ok((out, o))
}

fn sensitivity(d: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    Ok(sensitivity_with(d, &["--quiet"])?.0)
}

/// `quant quantize` of the tiny model by the report `sens` at `target` bits per weight by
/// `metric`, into `out` (replaced), with the JSON report on stdout.
fn allocate(sens: &Path, metric: &str, target: &str, out: &Path) -> Output {
    let input = model().join("model.safetensors");
    let args = ["quantize", s(&input), "--sensitivity", s(sens), "--target-bpw", target, "--metric", metric, "-o", s(out)];
    quant(&[&args[..], &["--force", "--json", "--quiet"]].concat())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn allocates_under_the_budget_and_the_plan_reproduces_the_file() -> TestResult {
    let d = scratch("alloc");
    let sens = sensitivity(&d)?;
    let input = model().join("model.safetensors");
    let (out, plan) = (d.join("q.safetensors"), d.join("plan.json"));
    let o = quant(&[
        "quantize",
        s(&input),
        "--sensitivity",
        s(&sens),
        "--target-bpw",
        "7.5",
        "--save-plan",
        s(&plan),
        "-o",
        s(&out),
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout)?;
    let p = &r["plan"];
    assert_eq!(p["method"], "quadratic");
    let bpw = p["bits_per_weight"].as_f64().ok_or("bpw")?;
    assert!(bpw <= 7.5 && bpw > 6.0, "{bpw}");
    let tensors = p["tensors"].as_array().ok_or("tensors")?;
    // 12 encoder matrices allocated, the three embedding tables fixed at 8 bits per row.
    assert_eq!(tensors.iter().filter(|t| t["allocated"] == true).count(), 12);
    let fixed: Vec<&Value> = tensors.iter().filter(|t| t["allocated"] == false).collect();
    assert_eq!(fixed.len(), 3);
    assert!(fixed.iter().all(|t| t["bits"] == 8 && t["granularity"] == "channel:0"));
    let widths: std::collections::BTreeSet<i64> =
        tensors.iter().filter(|t| t["allocated"] == true).filter_map(|t| t["bits"].as_i64()).collect();
    assert!(widths.len() >= 2, "a budget between two widths mixes them: {widths:?}");
    // The file holds each tensor at its plan's width; the pooler (not in the plan) is copied.
    let report: Value = serde_json::from_slice(&quant(&["inspect", s(&out), "--json"]).stdout)?;
    for t in tensors {
        let e = report["tensors"].as_array().ok_or("report")?.iter().find(|e| e["name"] == t["name"]).ok_or("tensor in the file")?;
        assert_eq!(e["bits"], t["bits"], "{}", t["name"]);
    }
    assert!(report["passthrough"].as_array().ok_or("passthrough")?.iter().any(|p| p["name"] == "pooler.dense.weight"));
    // Applying the saved plan writes the same bytes.
    let again = d.join("again.safetensors");
    let o = quant(&["quantize", s(&input), "--plan", s(&plan), "-o", s(&again), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&out)? == std::fs::read(&again)?, "the plan file reproduces the bytes");
    // Every metric stays within the budget; omega-rank mixes two ladder steps.
    for metric in ["omega-rank", "omega", "trace", "measured"] {
        let o = allocate(&sens, metric, "7", &again);
        assert!(o.status.success(), "{metric}: {}", stderr(&o));
        let r: Value = serde_json::from_slice(&o.stdout)?;
        assert!(r["plan"]["bits_per_weight"].as_f64() <= Some(7.0), "{metric}");
        assert_eq!(r["plan"]["method"], metric);
    }
    // --candidates restricts the menu.
    let o = quant(&[
        "quantize",
        s(&input),
        "--sensitivity",
        s(&sens),
        "--target-bpw",
        "20",
        "--candidates",
        "2,4",
        "-o",
        s(&again),
        "--force",
        "--json",
        "--quiet",
    ]);
    let r: Value = serde_json::from_slice(&o.stdout)?;
    assert!(r["plan"]["tensors"].as_array().ok_or("tensors")?.iter().filter(|t| t["allocated"] == true).all(|t| t["bits"] == 4));
    Ok(())
}

#[test]
fn recipe_q4_k_m_without_a_report() -> TestResult {
    let d = scratch("recipe");
    let input = model().join("model.safetensors");
    let out = d.join("r.safetensors");
    let o =
        quant(&["quantize", s(&input), "--recipe", "q4_k_m", "--candidates", "4@group:16,6@group:16", "-o", s(&out), "--json", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout)?;
    // Two layers: llama.cpp's rule picks layer 1 (i >= 7n/8 = 1) for value and FFN-down.
    for t in r["plan"]["tensors"].as_array().ok_or("tensors")?.iter().filter(|t| t["allocated"] == true) {
        let name = t["name"].as_str().ok_or("name")?;
        let wide =
            name.starts_with("encoder.layer.1.") && (name.ends_with("self.value.weight") || name == "encoder.layer.1.output.dense.weight");
        assert_eq!(t["bits"], if wide { 6 } else { 4 }, "{name}");
    }
    // Without a granularity the candidates are ambiguous without a report.
    let o = quant(&["quantize", s(&input), "--recipe", "q4_k_m", "--candidates", "4,6", "-o", s(&d.join("x")), "--quiet"]);
    assert!(!o.status.success() && stderr(&o).contains("BITS@GRANULARITY"), "{}", stderr(&o));
    Ok(())
}

#[test]
fn bad_budgets_reports_and_plans_are_refused_without_output() -> TestResult {
    let d = scratch("bad");
    let sens = sensitivity(&d)?;
    let input = model().join("model.safetensors");
    let out = d.join("never.safetensors");
    let fails = |args: &[&str], needle: &str| {
        let o = quant(args);
        let e = stderr(&o);
        assert!(!o.status.success() && e.contains(needle), "{args:?}: {e}");
        assert!(!out.exists(), "{args:?} wrote an output");
    };
    // A budget below the cheapest candidate: the least achievable is named.
    fails(&["quantize", s(&input), "--sensitivity", s(&sens), "--target-bpw", "5", "-o", s(&out)], "least achievable is 6.0000");
    fails(&["quantize", s(&input), "--sensitivity", s(&sens), "--target-bpw", "0", "-o", s(&out)], "target bits per weight");
    fails(&["quantize", s(&input), "--sensitivity", s(&sens), "-o", s(&out)], "needs --target-bpw");
    fails(&["quantize", s(&input), "--target-bpw", "4", "-o", s(&out)], "needs --sensitivity");
    fails(&["quantize", s(&input), "--sensitivity", s(&sens), "--target-bpw", "8", "--candidates", "3", "-o", s(&out)], "matches '3'");
    fails(&["quantize", s(&input), "--sensitivity", s(&sens), "--target-bpw", "8", "--metric", "hessian", "-o", s(&out)], "omega-rank");
    fails(
        &["quantize", s(&input), "--sensitivity", s(&sens), "--target-bpw", "8", "--include-embeddings", "-o", s(&out)],
        "--include-embeddings",
    );
    fails(&["quantize", s(&input), "--plan", s(&sens), "--bits", "4", "-o", s(&out)], "cannot be used with");
    // A report of another model: the tensor whose shape disagrees is named.
    let mut r: Value = serde_json::from_slice(&std::fs::read(&sens)?)?;
    r["matrices"][3]["shape"] = serde_json::json!([64, 64]);
    let other = d.join("other.json");
    std::fs::write(&other, serde_json::to_vec(&r)?)?;
    fails(
        &["quantize", s(&input), "--sensitivity", s(&other), "--target-bpw", "8", "-o", s(&out)],
        "encoder.layer.0.attention.output.dense.weight",
    );
    r["matrices"][3]["name"] = "encoder.layer.9.x.weight".into();
    std::fs::write(&other, serde_json::to_vec(&r)?)?;
    fails(&["quantize", s(&input), "--sensitivity", s(&other), "--target-bpw", "8", "-o", s(&out)], "encoder.layer.9.x.weight");
    // Plans naming unknown tensors, impossible choices, shapes of another model; not a plan.
    let plan = d.join("plan.json");
    let write_plan = |t: &str| std::fs::write(&plan, format!(r#"{{"tensors": [{t}]}}"#));
    write_plan(r#"{"name": "nope.weight", "bits": 4, "granularity": "group:16", "param_dtype": "f32"}"#)?;
    fails(&["quantize", s(&input), "--plan", s(&plan), "-o", s(&out)], "'nope.weight'");
    write_plan(r#"{"name": "pooler.dense.weight", "bits": 9, "granularity": "group:16", "param_dtype": "f32"}"#)?;
    fails(&["quantize", s(&input), "--plan", s(&plan), "-o", s(&out)], "'pooler.dense.weight' cannot take");
    write_plan(r#"{"name": "pooler.dense.weight", "shape": [16, 16], "bits": 4, "granularity": "group:16", "param_dtype": "f32"}"#)?;
    fails(&["quantize", s(&input), "--plan", s(&plan), "-o", s(&out)], "shape");
    std::fs::write(&plan, "{\"tensors\": 3}")?;
    fails(&["quantize", s(&input), "--plan", s(&plan), "-o", s(&out)], "is not a plan");
    // A hand-written plan of one tensor works, the rest is copied.
    write_plan(r#"{"name": "pooler.dense.weight", "bits": 3, "granularity": "group:8", "param_dtype": "f16"}"#)?;
    let ok = d.join("ok.safetensors");
    let o = quant(&["quantize", s(&input), "--plan", s(&plan), "-o", s(&ok), "--json", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(r["tensors"].as_array().map(Vec::len), Some(1));
    assert_eq!(r["plan"]["bits_per_weight"], 3.0 + 32.0 / 8.0);
    Ok(())
}

#[test]
fn a_stale_partial_file_is_reported_and_replaced() -> TestResult {
    let d = scratch("partial");
    let input = model().join("model.safetensors");
    let out = d.join("q.safetensors");
    let partial = d.join("q.safetensors.partial");
    std::fs::write(&partial, b"left by a killed run")?;
    let o = quant(&["quantize", s(&input), "--bits", "4", "--granularity", "group:16", "-o", s(&out), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("did not finish"), "{}", stderr(&o));
    assert!(out.exists() && !partial.exists());
    Ok(())
}

#[test]
fn layer_blocks_report_each_layers_omega_and_omega_rank_uses_them() -> TestResult {
    let d = scratch("layers");
    let (sens, o) = sensitivity_with(&d, &["--layer-blocks"])?;
    assert!(String::from_utf8_lossy(&o.stdout).contains("layer (Q-BERT's grouping)"));
    let r: Value = serde_json::from_slice(&std::fs::read(&sens)?)?;
    let layers = r["layers"].as_array().ok_or("layers")?;
    assert_eq!(layers.len(), 2);
    for (l, layer) in layers.iter().enumerate() {
        assert!(layer["name"].as_str().ok_or("name")?.ends_with(&format!("layer.{l}")));
        assert_eq!(layer["tensors"].as_array().ok_or("tensors")?.len(), 6);
        assert_eq!(layer["eigenvalues"].as_array().ok_or("eigenvalues")?.len(), 2);
    }
    assert!(r["stages"].as_array().ok_or("stages")?.iter().any(|s| s["name"] == "top eigenvalues per layer (Lanczos)"));
    // Q-BERT's ranking by layer: at 7 bits per weight (halfway between the ladder's 6 and 8)
    // the more sensitive layer's six matrices take 4 bits and the other's 2.
    let o = allocate(&sens, "omega-rank", "7", &d.join("q.safetensors"));
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: Value = serde_json::from_slice(&o.stdout)?;
    let omegas: Vec<f64> = layers.iter().filter_map(|l| l["omega"].as_f64()).collect();
    let wide = if omegas[0] > omegas[1] { 0 } else { 1 };
    for t in plan["plan"]["tensors"].as_array().ok_or("tensors")?.iter().filter(|t| t["allocated"] == true) {
        let name = t["name"].as_str().ok_or("name")?;
        let layer = layers.iter().position(|l| l["tensors"].as_array().is_some_and(|m| m.iter().any(|m| m == name))).ok_or("a layer")?;
        assert_eq!(t["bits"], if layer == wide { 4 } else { 2 }, "{name}");
    }
    Ok(())
}
