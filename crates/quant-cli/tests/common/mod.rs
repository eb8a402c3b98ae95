//! Helpers shared by the command-line tests (each test file is its own crate and uses a
//! part of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A test's result.
pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Runs the `quant` binary.
pub(crate) fn quant(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quant")).args(args).output().expect("the binary runs")
}

/// A tiny golden BERT checkpoint of quant-models (`plain`, `prefixed`, `cls`, `max`).
pub(crate) fn tiny_model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../quant-models/tests/data/bert").join(name)
}

/// A fresh directory for one test: `quant-{suite}-{pid}-{name}` under the temporary directory.
pub(crate) fn scratch(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("quant-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A path as a command-line argument.
pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The little-endian f32 values of `bytes`.
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// The `embeddings` tensor of a file `quant embed` wrote: shape and values.
pub(crate) fn embeddings(path: &Path) -> Result<(Vec<usize>, Vec<f32>), Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let t = st.tensor("embeddings")?;
    Ok((t.shape().to_vec(), f32s(t.data())))
}
