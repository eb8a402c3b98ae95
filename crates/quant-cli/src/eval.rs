//! `quant eval`: how far a quantized checkpoint's sentence embeddings move from the f32
//! model's, and how well queries still find their documents.

use std::path::{Path, PathBuf};
use std::time::Instant;

use quant::models::bert::{Bert, BertTokenizer, SentenceEncoder, TextLines};
use quant::models::retrieval::{CosineSummary, Pairs, Retrieval, RetrievalError, retrieval, row_cosines};
use serde::Serialize;

use crate::embed::{apply_weights, bert_error};

pub(crate) struct EvalArgs {
    pub(crate) model_dir: PathBuf,
    pub(crate) weights: Option<PathBuf>,
    pub(crate) text: PathBuf,
    pub(crate) pairs: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

/// What `--json` prints.
#[derive(Serialize)]
struct EvalReport {
    model: String,
    weights: Option<String>,
    replaced_tensors: usize,
    sentences: usize,
    /// Cosine between each sentence's quantized and f32 embedding (absent without weights).
    cosine: Option<CosineSummary>,
    retrieval_f32: Option<Retrieval>,
    retrieval_quantized: Option<Retrieval>,
    seconds: f64,
}

/// Query / document pairs from a TSV file (see [`Pairs::parse`]).
fn read_pairs(path: &Path) -> Result<(Vec<String>, Vec<String>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| format!("{} is not UTF-8 text: {e}", path.display()))?;
    match Pairs::parse(&text) {
        Ok(p) => Ok((p.queries, p.documents)),
        Err(RetrievalError::Empty) => Err(format!("{} holds no query / document pairs", path.display())),
        Err(e) => Err(format!("{} {e}", path.display())),
    }
}

pub(crate) fn run(a: EvalArgs, open: impl Fn(&Path) -> Result<Vec<u8>, String>) -> Result<(), String> {
    let start = Instant::now();
    let dir = crate::model_dir(&a.model_dir);
    let lines = TextLines::read(&a.text).map_err(bert_error)?;
    if lines.sentences.is_empty() {
        return Err(format!("{} holds no sentences", a.text.display()));
    }
    let pairs = a.pairs.as_deref().map(read_pairs).transpose()?;
    let reference = Bert::<f32>::load(&dir).map_err(bert_error)?;
    let tokenizer = BertTokenizer::from_dir(&dir, reference.config().max_position_embeddings).map_err(bert_error)?;
    let (quantized, replaced) = match &a.weights {
        Some(w) => {
            let mut model = reference.clone();
            let n =
                if crate::gguf::is_gguf(w) { crate::gguf::apply_gguf(&mut model, w)? } else { apply_weights(&mut model, &open(w)?, w)? };
            (Some(SentenceEncoder::new(model, tokenizer.clone())), n)
        }
        None => (None, 0),
    };
    let reference = SentenceEncoder::new(reference, tokenizer);
    let say = |what: &str| {
        if !a.quiet {
            eprintln!("[{:6.1} s] {what}", start.elapsed().as_secs_f64());
        }
    };
    say(&format!("embedding {} sentence(s) of {}", lines.sentences.len(), a.text.display()));
    let e32 = reference.embed(&lines.sentences).map_err(bert_error)?;
    let cosine = match &quantized {
        Some(q) => {
            let eq = q.embed(&lines.sentences).map_err(bert_error)?;
            let c = row_cosines(e32.view(), eq.view()).map_err(|e| e.to_string())?;
            Some(CosineSummary::of(&c).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let (mut retrieval_f32, mut retrieval_quantized) = (None, None);
    if let Some((queries, docs)) = &pairs {
        say(&format!("retrieval over {} pair(s)", queries.len()));
        let run = |enc: &SentenceEncoder| -> Result<Retrieval, String> {
            let (q, d) = (enc.embed(queries).map_err(bert_error)?, enc.embed(docs).map_err(bert_error)?);
            retrieval(q.view(), d.view()).map_err(|e| e.to_string())
        };
        retrieval_f32 = Some(run(&reference)?);
        retrieval_quantized = quantized.as_ref().map(run).transpose()?;
    }
    let report = EvalReport {
        model: dir.display().to_string(),
        weights: a.weights.as_ref().map(|p| p.display().to_string()),
        replaced_tensors: replaced,
        sentences: lines.sentences.len(),
        cosine,
        retrieval_f32,
        retrieval_quantized,
        seconds: start.elapsed().as_secs_f64(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
        return Ok(());
    }
    if let Some(c) = &report.cosine {
        println!(
            "cosine to f32 over {} sentence(s): mean {:.4}, 5th percentile {:.4}, min {:.4} ({} tensor(s) replaced)",
            c.count, c.mean, c.p5, c.min, report.replaced_tensors
        );
    }
    for (name, r) in [("f32", &report.retrieval_f32), ("quantized", &report.retrieval_quantized)] {
        if let Some(r) = r {
            println!("retrieval, {name}: Recall@1 {:.4}, MRR {:.4} over {} pair(s)", r.recall_at_1, r.mrr, r.pairs);
        }
    }
    Ok(())
}
