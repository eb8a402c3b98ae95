//! Tokenization with Hugging Face's `tokenizers` crate, and the token batches the model reads.

use std::path::Path;

use super::error::{BertError, Result};

/// One sentence's tokens (special tokens included, no padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentence {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Token-type (segment) ids, as many as `ids`.
    pub type_ids: Vec<u32>,
}

/// Sentences ready for the model: packed (each at its own length), never padded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenBatch {
    sentences: Vec<Sentence>,
    truncated: usize,
}

impl TokenBatch {
    /// A batch of sentences (each `ids` and `type_ids` of one length).
    ///
    /// # Errors
    /// [`BertError::Tokenizer`] when a sentence's two id lists differ in length.
    pub fn new(sentences: Vec<Sentence>) -> Result<Self> {
        if let Some(i) = sentences.iter().position(|s| s.ids.len() != s.type_ids.len()) {
            return Err(BertError::Tokenizer {
                reason: format!("sentence {i}: {} ids but {} type ids", sentences[i].ids.len(), sentences[i].type_ids.len()),
            });
        }
        Ok(Self { sentences, truncated: 0 })
    }

    /// The sentences.
    pub fn sentences(&self) -> &[Sentence] {
        &self.sentences
    }

    /// The number of sentences.
    pub fn len(&self) -> usize {
        self.sentences.len()
    }

    /// Whether the batch has no sentences.
    pub fn is_empty(&self) -> bool {
        self.sentences.is_empty()
    }

    /// Real tokens over all sentences.
    pub fn tokens(&self) -> usize {
        self.sentences.iter().map(|s| s.ids.len()).sum()
    }

    /// How many sentences the tokenizer cut to the model's maximum length.
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    /// The batch as padded `sentences × longest` arrays (ids, type ids, attention mask with
    /// 1 for real tokens), padding with `pad_id`: the layout PyTorch models take.
    pub fn padded(&self, pad_id: u32) -> (ndarray::Array2<u32>, ndarray::Array2<u32>, ndarray::Array2<u32>) {
        let longest = self.sentences.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let n = self.sentences.len();
        let (mut ids, mut types, mut mask) =
            (ndarray::Array2::from_elem((n, longest), pad_id), ndarray::Array2::zeros((n, longest)), ndarray::Array2::zeros((n, longest)));
        for (i, s) in self.sentences.iter().enumerate() {
            for (t, (&id, &ty)) in s.ids.iter().zip(&s.type_ids).enumerate() {
                ids[[i, t]] = id;
                types[[i, t]] = ty;
                mask[[i, t]] = 1;
            }
        }
        (ids, types, mask)
    }
}

/// A tokenizer for a model directory: `tokenizer.json`, cut to the model's maximum length.
#[derive(Debug, Clone)]
pub struct BertTokenizer {
    inner: tokenizers::Tokenizer,
    max_len: usize,
}

impl BertTokenizer {
    /// Reads `dir/tokenizer.json` and truncates every sentence to `max_len` tokens (special
    /// tokens included; the model's `max_position_embeddings`). Padding in the file is
    /// turned off: the model packs sentences instead.
    ///
    /// A directory with only `vocab.txt` is refused with a [`BertError::Tokenizer`] that says
    /// how to make the missing file: a WordPiece tokenizer built from a bare vocabulary would
    /// have to guess the normaliser's settings (lower-casing, accent stripping), which
    /// `tokenizer.json` states.
    ///
    /// # Errors
    /// [`BertError::MissingTokenizer`], [`BertError::Tokenizer`].
    pub fn from_dir(dir: &Path, max_len: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            if dir.join("vocab.txt").exists() {
                return Err(BertError::Tokenizer {
                    reason: format!(
                        "{} has vocab.txt but no tokenizer.json; save one with transformers (AutoTokenizer.from_pretrained(dir).save_pretrained(dir)), which records the normaliser's settings",
                        dir.display()
                    ),
                });
            }
            return Err(BertError::MissingTokenizer { dir: dir.into() });
        }
        let mut inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| BertError::Tokenizer { reason: format!("{}: {e}", path.display()) })?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| BertError::Tokenizer { reason: e.to_string() })?;
        Ok(Self { inner, max_len })
    }

    /// The longest tokenization kept.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenizes `texts` (special tokens added), counting the sentences cut to
    /// [`max_len`](Self::max_len).
    ///
    /// # Errors
    /// [`BertError::Tokenizer`].
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<TokenBatch> {
        let mut sentences = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        for t in texts {
            let enc = self.inner.encode(t.as_ref(), true).map_err(|e| BertError::Tokenizer { reason: e.to_string() })?;
            if !enc.get_overflowing().is_empty() {
                truncated += 1;
            }
            sentences.push(Sentence { ids: enc.get_ids().to_vec(), type_ids: enc.get_type_ids().to_vec() });
        }
        Ok(TokenBatch { sentences, truncated })
    }
}
