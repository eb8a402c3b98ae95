//! `config.json` and the sentence-embedding configuration (`modules.json`,
//! `1_Pooling/config.json`) of a Hugging Face BERT-family model directory.

use std::path::Path;

use serde::Deserialize;

use super::error::{BertError, Result};

/// The activation of the feed-forward layers (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// `gelu`: `x Φ(x)` with the error function (BERT's own form).
    Gelu,
    /// `gelu_new` (also `gelu_pytorch_tanh`): `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
    GeluNew,
    /// `relu`.
    Relu,
}

/// The shape of a BERT-family encoder, from `config.json`.
///
/// | Field | Range |
/// |---|---|
/// | `hidden_size` | `≥ 1`, a multiple of `num_attention_heads` |
/// | `num_attention_heads`, `num_hidden_layers`, `intermediate_size` | `≥ 1` |
/// | `vocab_size`, `max_position_embeddings`, `type_vocab_size` | `≥ 1` |
/// | `layer_norm_eps` | finite, `> 0` (default 1e-12) |
/// | `hidden_act` | `gelu`, `gelu_new` / `gelu_pytorch_tanh`, `relu` (default `gelu`) |
///
/// `model_type`, when present, must be `bert`; `position_embedding_type`, when present,
/// `absolute`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BertConfig {
    /// Width of every token's vector.
    pub hidden_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Rows of the position-embedding table: the longest input.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    pub type_vocab_size: usize,
    /// The layer norms' ε.
    pub layer_norm_eps: f64,
    /// The feed-forward activation.
    pub hidden_act: HiddenAct,
}

/// `config.json` as written; checked into [`BertConfig`].
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    num_attention_heads: Option<usize>,
    num_hidden_layers: Option<usize>,
    intermediate_size: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    position_embedding_type: Option<String>,
}

impl BertConfig {
    /// BERT-base's shape (12 layers, 768 wide, 12 heads, FFN 3072, vocabulary 30522).
    pub fn base() -> Self {
        Self {
            hidden_size: 768,
            num_attention_heads: 12,
            num_hidden_layers: 12,
            intermediate_size: 3072,
            vocab_size: 30522,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: HiddenAct::Gelu,
        }
    }

    /// Reads and checks `config.json`.
    ///
    /// # Errors
    /// [`BertError::Io`], [`BertError::Config`] (not JSON, a field of the wrong type or a
    /// required field missing), [`BertError::Unsupported`] (another `model_type`, relative
    /// positions, another activation), [`BertError::InvalidConfig`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| BertError::Io { path: path.into(), source })?;
        Self::from_json(&text).map_err(|e| match e {
            BertError::Config { reason, .. } => BertError::Config { path: path.into(), reason },
            other => other,
        })
    }

    /// Parses and checks the text of a `config.json`.
    ///
    /// # Errors
    /// As [`from_file`](Self::from_file) (with an empty path in [`BertError::Config`]).
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| BertError::Config { path: "config.json".into(), reason: e.to_string() })?;
        if let Some(t) = &raw.model_type
            && t != "bert"
        {
            return Err(BertError::Unsupported { reason: format!("model_type '{t}' (this loader reads BERT-family models: 'bert')") });
        }
        if let Some(p) = &raw.position_embedding_type
            && p != "absolute"
        {
            return Err(BertError::Unsupported { reason: format!("position_embedding_type '{p}' (only 'absolute')") });
        }
        let need = |v: Option<usize>, field: &'static str| {
            v.ok_or_else(|| BertError::Config { path: "config.json".into(), reason: format!("missing field `{field}`") })
        };
        let hidden_act = match raw.hidden_act.as_deref().unwrap_or("gelu") {
            "gelu" => HiddenAct::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => HiddenAct::GeluNew,
            "relu" => HiddenAct::Relu,
            other => return Err(BertError::Unsupported { reason: format!("hidden_act '{other}' (gelu, gelu_new or relu)") }),
        };
        let cfg = Self {
            hidden_size: need(raw.hidden_size, "hidden_size")?,
            num_attention_heads: need(raw.num_attention_heads, "num_attention_heads")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
            type_vocab_size: raw.type_vocab_size.unwrap_or(2),
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-12),
            hidden_act,
        };
        cfg.check()
    }

    /// Checks the table's ranges and returns the configuration.
    ///
    /// # Errors
    /// [`BertError::InvalidConfig`].
    pub fn check(self) -> Result<Self> {
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (field, v) in sizes {
            if v == 0 {
                return Err(BertError::InvalidConfig { field, value: "0".into(), reason: "must be at least 1" });
            }
            // Every table is allocated from these: refuse sizes no real model has before
            // multiplying them.
            if v > 1 << 24 {
                return Err(BertError::InvalidConfig { field, value: v.to_string(), reason: "larger than 2^24" });
            }
        }
        let d = self.hidden_size;
        let per_layer = (4 * d).checked_mul(d).and_then(|a| (2 * d).checked_mul(self.intermediate_size).and_then(|b| a.checked_add(b)));
        let tables = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size).checked_mul(d);
        let total = per_layer.and_then(|l| l.checked_mul(self.num_hidden_layers)).and_then(|l| tables.and_then(|t| t.checked_add(l)));
        if total.is_none_or(|t| t > 1 << 36) {
            return Err(BertError::InvalidConfig {
                field: "hidden_size",
                value: d.to_string(),
                reason: "the model would hold more than 2^36 parameters",
            });
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(BertError::InvalidConfig {
                field: "hidden_size",
                value: self.hidden_size.to_string(),
                reason: "must be a multiple of num_attention_heads",
            });
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(BertError::InvalidConfig {
                field: "layer_norm_eps",
                value: self.layer_norm_eps.to_string(),
                reason: "must be finite and positive",
            });
        }
        Ok(self)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The mean over the sentence's tokens (padding excluded).
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// The component-wise maximum over the sentence's tokens.
    Max,
}

/// The sentence-embedding head: a pooling mode, then L2 normalisation or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    /// How tokens are pooled.
    pub mode: PoolingMode,
    /// Whether the pooled vector is divided by its L2 norm.
    pub normalize: bool,
}

impl Default for Pooling {
    /// Mean pooling without normalisation: what sentence-transformers builds for a plain
    /// Hugging Face model directory.
    fn default() -> Self {
        Self { mode: PoolingMode::Mean, normalize: false }
    }
}

#[derive(Deserialize)]
struct RawModule {
    #[serde(default)]
    path: String,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct RawPooling {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

impl Pooling {
    /// The sentence-transformers head of a model directory: `modules.json` lists the modules;
    /// a `…Pooling` module's `config.json` gives the mode, a `…Normalize` module turns
    /// normalisation on.
    ///
    /// Defaults: no `modules.json` gives [`Pooling::default`] (mean, not normalised); a
    /// pooling module without a config, or one with no mode set, pools by the mean.
    ///
    /// # Errors
    /// [`BertError::Io`] for unreadable files, [`BertError::Config`] for malformed ones,
    /// [`BertError::Unsupported`] for several modes at once or `mean_sqrt_len`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let modules_path = dir.join("modules.json");
        if !modules_path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&modules_path).map_err(|source| BertError::Io { path: modules_path.clone(), source })?;
        let modules: Vec<RawModule> =
            serde_json::from_str(&text).map_err(|e| BertError::Config { path: modules_path.clone(), reason: e.to_string() })?;
        let mut pooling = Self { mode: PoolingMode::Mean, normalize: false };
        for m in &modules {
            if m.kind.ends_with("Normalize") {
                pooling.normalize = true;
            } else if m.kind.ends_with("Pooling") {
                let path = dir.join(&m.path).join("config.json");
                if path.exists() {
                    let text = std::fs::read_to_string(&path).map_err(|source| BertError::Io { path: path.clone(), source })?;
                    let raw: RawPooling =
                        serde_json::from_str(&text).map_err(|e| BertError::Config { path: path.clone(), reason: e.to_string() })?;
                    pooling.mode = Self::mode_of(&raw)?;
                }
            }
        }
        Ok(pooling)
    }

    /// The pooling mode of a sentence-transformers `1_Pooling/config.json`'s text (a config
    /// with no mode set pools by the mean).
    ///
    /// # Errors
    /// [`BertError::Config`] for malformed JSON, [`BertError::Unsupported`] for several modes
    /// or `mean_sqrt_len`.
    pub fn mode_from_json(text: &str) -> Result<PoolingMode> {
        let raw: RawPooling =
            serde_json::from_str(text).map_err(|e| BertError::Config { path: "1_Pooling/config.json".into(), reason: e.to_string() })?;
        Self::mode_of(&raw)
    }

    fn mode_of(raw: &RawPooling) -> Result<PoolingMode> {
        if raw.pooling_mode_mean_sqrt_len_tokens {
            return Err(BertError::Unsupported { reason: "pooling_mode_mean_sqrt_len_tokens".into() });
        }
        match (raw.pooling_mode_cls_token, raw.pooling_mode_mean_tokens, raw.pooling_mode_max_tokens) {
            (true, false, false) => Ok(PoolingMode::Cls),
            (false, false, true) => Ok(PoolingMode::Max),
            (false, _, false) => Ok(PoolingMode::Mean),
            _ => Err(BertError::Unsupported { reason: "more than one pooling mode (concatenated poolings)".into() }),
        }
    }
}
