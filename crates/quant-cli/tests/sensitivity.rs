//! `quant sensitivity` on the tiny golden checkpoint of quant-models (no download).

use std::path::PathBuf;

mod common;
use common::{TestResult, quant, s};

fn model() -> PathBuf {
    common::tiny_model("plain")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("sens", name)
}

#[test]
fn writes_the_report_and_refuses_too_few_sentences() -> TestResult {
    let d = scratch("basic");
    let text = d.join("cal.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat\na dog ran in the park\nhello world\nshe sells sea shells\nthe quick brown fox\nover the lazy dog\n",
    )?;
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
        "3",
        "--bits",
        "8,3",
        "--granularity",
        "group:16",
        "-o",
        s(&out),
        "--quiet",
    ];
    let o = quant(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    assert_eq!(r["sentences"], 6);
    assert_eq!(r["calibration_sentences"], 6);
    let matrices = r["matrices"].as_array().ok_or("matrices")?;
    assert_eq!(matrices.len(), 12);
    for m in matrices {
        assert_eq!(m["eigenvalues"].as_array().map(Vec::len), Some(2));
        let c = m["candidates"].as_array().ok_or("candidates")?;
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["candidate"]["bits"], 8);
        assert!(c[1]["quadratic"].as_f64() > c[0]["quadratic"].as_f64(), "{m}");
    }
    assert_eq!(r["stages"].as_array().map(Vec::len), Some(3));
    // The embedding rows the six sentences reach, counted here from the tokenizer: distinct
    // token ids, the longest sentence's positions, one segment.
    let lines = [
        "the cat sat on the mat",
        "a dog ran in the park",
        "hello world",
        "she sells sea shells",
        "the quick brown fox",
        "over the lazy dog",
    ];
    let batch = quant::models::bert::BertTokenizer::from_dir(&dir, 512)?.encode(&lines)?;
    let mut ids: Vec<u32> = batch.sentences().iter().flat_map(|x| x.ids.iter().copied()).collect();
    ids.sort_unstable();
    ids.dedup();
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    let positions = config["max_position_embeddings"].as_u64().ok_or("max_position_embeddings")? as usize;
    // Sentences longer than the model's positions are truncated to them.
    let longest = batch.sentences().iter().map(|x| x.ids.len()).max().ok_or("sentences")?.min(positions);
    let rows = r["embedding_rows"].as_array().ok_or("embedding_rows")?;
    let used: Vec<(&str, u64)> = rows.iter().map(|e| (e["name"].as_str().unwrap_or(""), e["used"].as_u64().unwrap_or(0))).collect();
    assert_eq!(
        used,
        [
            ("embeddings.word_embeddings.weight", ids.len() as u64),
            ("embeddings.position_embeddings.weight", longest as u64),
            ("embeddings.token_type_embeddings.weight", 1)
        ]
    );
    // Same seed, same numbers.
    let again = d.join("again.json");
    let mut args2 = args.to_vec();
    let at = args2.iter().position(|a| *a == s(&out)).ok_or("the -o argument")?;
    args2[at] = s(&again);
    assert!(quant(&args2).status.success());
    let r2: serde_json::Value = serde_json::from_slice(&std::fs::read(&again)?)?;
    assert_eq!(r["matrices"], r2["matrices"]);
    // Without --quiet each stage is said on stderr as it ends, in the report's order, with
    // its work and time; --quiet said nothing.
    let quiet = d.join("quiet.json");
    args2[at] = s(&quiet);
    let o = quant(&args2);
    assert!(o.status.success() && o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    let loud = d.join("loud.json");
    args2[at] = s(&loud);
    args2.retain(|a| *a != "--quiet");
    let o = quant(&args2);
    assert!(o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    let said: Vec<&str> = e.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(said.len(), 3, "{e}");
    let stages = r["stages"].as_array().ok_or("stages")?;
    for (line, stage) in said.iter().zip(stages) {
        let name = stage["name"].as_str().ok_or("name")?;
        assert!(line.starts_with(&format!("  {name}: ")) && line.ends_with(" s"), "{line}");
    }
    assert!(said[0].contains(&format!("{} block product(s)", stages[0]["block_products"])), "{}", said[0]);
    assert!(said[2].contains(&format!("{} loss evaluation(s)", stages[2]["loss_evaluations"])), "{}", said[2]);
    // More sentences than the file has: an error naming the counts, and no output written.
    let none = d.join("none.json");
    let o = quant(&["sensitivity", s(&model()), "--calibration", s(&text), "--subsets", "4", "--per-subset", "2", "-o", s(&none)]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("8 calibration sentences are needed") && e.contains("has 6"), "{e}");
    assert!(!none.exists());
    // A bad width is the core's error.
    let o = quant(&[
        "sensitivity",
        s(&model()),
        "--calibration",
        s(&text),
        "--subsets",
        "2",
        "--per-subset",
        "3",
        "--bits",
        "9",
        "-o",
        s(&none),
    ]);
    assert!(!o.status.success() && !none.exists());
    Ok(())
}

#[test]
fn gptq_rounding_scores_the_codes_gptq_writes() -> TestResult {
    let d = scratch("gptq");
    let text = d.join("cal.txt");
    std::fs::write(&text, "the cat sat on the mat\na dog ran in the park\nhello world\nshe sells sea shells\n")?;
    let dir = model();
    let run = |rounding: &str, out: &PathBuf| {
        quant(&[
            "sensitivity",
            s(&dir),
            "--calibration",
            s(&text),
            "--subsets",
            "2",
            "--per-subset",
            "2",
            "--bits",
            "3",
            "--granularity",
            "group:16",
            "--rounding",
            rounding,
            "-o",
            s(out),
            "--quiet",
        ])
    };
    let (near, gptq) = (d.join("near.json"), d.join("gptq.json"));
    assert!(run("nearest", &near).status.success());
    let o = run("gptq", &gptq);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(&near)?)?;
    let b: serde_json::Value = serde_json::from_slice(&std::fs::read(&gptq)?)?;
    assert_eq!((a["rounding"].as_str(), b["rounding"].as_str()), (Some("nearest"), Some("gptq")));
    let pert = |v: &serde_json::Value, m: usize| v["matrices"][m]["candidates"][0]["perturbation"].as_f64();
    assert!((0..12).all(|m| pert(&a, m) != pert(&b, m)), "GPTQ changes every matrix's perturbation");
    // Quantizing by nearest with a GPTQ report says so.
    let input = dir.join("model.safetensors");
    let o = quant(&[
        "quantize",
        s(&input),
        "--sensitivity",
        s(&gptq),
        "--target-bpw",
        "7",
        "-o",
        s(&d.join("q.safetensors")),
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert!(
        r["plan"]["notes"].as_array().ok_or("notes")?.iter().any(|n| n.as_str().is_some_and(|n| n.contains("scored gptq rounding"))),
        "{r}"
    );
    Ok(())
}
