//! `quant embed`: sentence embeddings of a text file with a BERT-family model directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use quant::checkpoint::QuantizedCheckpoint;
use quant::models::bert::{Bert, BertError, BertTokenizer, PROGRESS_EVERY, SentenceEncoder, TextLines};
use serde::Serialize;

/// What `--json` prints.
#[derive(Serialize)]
struct EmbedReport {
    sentences: usize,
    dimension: usize,
    tokens: usize,
    skipped_empty_lines: usize,
    truncated: usize,
    max_tokens: usize,
    weights: Option<String>,
    replaced_tensors: usize,
    seconds: f64,
    output: String,
}

pub(crate) fn bert_error(e: BertError) -> String {
    e.to_string()
}

/// Replaces the model's tensors with the dequantized ones of a quantized checkpoint written
/// by `quant quantize`; returns how many were replaced.
pub(crate) fn apply_weights(model: &mut Bert<f32>, bytes: &[u8], path: &Path) -> Result<usize, String> {
    let ckpt = QuantizedCheckpoint::parse(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut replaced = 0;
    for name in ckpt.entries().keys() {
        let values = ckpt.dequantize(name).map_err(|e| format!("{}: {e}", path.display()))?;
        let flat: Vec<f32> = values.iter().copied().collect();
        if model.set_tensor(name, &flat).map_err(bert_error)? {
            replaced += 1;
        }
    }
    if replaced == 0 {
        return Err(format!("{} holds no quantized tensor of this model (names differ?)", path.display()));
    }
    Ok(replaced)
}

pub(crate) struct EmbedArgs {
    pub(crate) model_dir: PathBuf,
    pub(crate) text: PathBuf,
    pub(crate) output: PathBuf,
    pub(crate) weights: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

pub(crate) fn run(a: EmbedArgs, open: impl Fn(&Path) -> Result<Vec<u8>, String>) -> Result<(), String> {
    let start = Instant::now();
    let dir = crate::model_dir(&a.model_dir);
    let lines = TextLines::read(&a.text).map_err(bert_error)?;
    let mut model = Bert::<f32>::load(&dir).map_err(bert_error)?;
    let replaced = match &a.weights {
        Some(w) => {
            if crate::gguf::is_gguf(w) {
                crate::gguf::apply_gguf(&mut model, w)?
            } else {
                apply_weights(&mut model, &open(w)?, w)?
            }
        }
        None => 0,
    };
    let max_tokens = model.config().max_position_embeddings;
    let tokenizer = BertTokenizer::from_dir(&dir, max_tokens).map_err(bert_error)?;
    let encoder = SentenceEncoder::new(model, tokenizer);
    if !a.quiet {
        eprintln!(
            "embedding {} sentence(s) from {} ({} empty line(s) skipped)",
            lines.sentences.len(),
            a.text.display(),
            lines.skipped_empty
        );
    }
    let total = lines.sentences.len();
    let out = encoder
        .embed_with_progress(&lines.sentences, |done| {
            if !a.quiet && total > PROGRESS_EVERY {
                eprintln!("embedded {done}/{total} sentences ({:.1} s)", start.elapsed().as_secs_f64());
            }
        })
        .map_err(bert_error)?;
    let (n, d) = out.embeddings.dim();
    let bytes: Vec<u8> = out.embeddings.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = quant::checkpoint::safetensors::tensor::TensorView::new(quant::checkpoint::safetensors::Dtype::F32, vec![n, d], &bytes)
        .map_err(|e| e.to_string())?;
    quant::checkpoint::write_file(vec![("embeddings", view)], &Default::default(), &a.output)
        .map_err(|e| format!("cannot write {}: {e}", a.output.display()))?;
    crate::keep_permissions(&a.text, &a.output)?;
    let report = EmbedReport {
        sentences: n,
        dimension: d,
        tokens: out.tokens,
        skipped_empty_lines: lines.skipped_empty,
        truncated: out.truncated,
        max_tokens,
        weights: a.weights.as_ref().map(|p| p.display().to_string()),
        replaced_tensors: replaced,
        seconds: start.elapsed().as_secs_f64(),
        output: a.output.display().to_string(),
    };
    if !a.quiet && out.truncated > 0 {
        eprintln!("{} sentence(s) were longer than {max_tokens} tokens and were truncated", out.truncated);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else if !a.quiet {
        eprintln!("wrote {n} x {d} embeddings ({} tokens) to {} in {:.2} s", out.tokens, a.output.display(), report.seconds);
    }
    Ok(())
}
