//! BERT-family models in GGUF, llama.cpp's format, as llama.cpp's own converter
//! (`convert_hf_to_gguf.py`, class `BertModel`) writes them: its tensor names
//! ([`gguf_tensor_name`]), its `bert.*` hyper-parameter keys and pooling type, and its
//! WordPiece vocabulary ([`GgufModelInfo::metadata`]); and the way back
//! ([`hf_tensor_name`], [`Bert::set_from_gguf`]).

use std::path::Path;

use quant_gguf::{GgufFile, Value, ValueType, codec};
use serde::Deserialize;

use super::config::{BertConfig, Pooling, PoolingMode};
use super::error::{BertError, Result};
use super::model::Bert;

/// llama.cpp's name of a BERT-family tensor, as its converter writes it (the `bert.` prefix,
/// if any, dropped): `embeddings.word_embeddings.weight` → `token_embd.weight`,
/// `embeddings.token_type_embeddings` → `token_types`, `embeddings.position_embeddings` →
/// `position_embd`, `embeddings.LayerNorm` → `token_embd_norm`, and per layer `N` the six
/// matrices with their biases ([`llama_cpp_name`](super::llama_cpp_name)),
/// `attention.output.LayerNorm` → `blk.N.attn_output_norm` and `output.LayerNorm` →
/// `blk.N.layer_output_norm`. `None` for the tensors the converter leaves out (the pooler,
/// `position_ids`, the masked-LM head) and for names it does not know.
pub fn gguf_tensor_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix("bert.").unwrap_or(name);
    let (module, kind) = rest.rsplit_once('.')?;
    if !matches!(kind, "weight" | "bias") {
        return None;
    }
    if let Some(&(_, short)) = EMBEDDING_MODULES.iter().find(|(m, _)| *m == module) {
        // The embedding tables have no bias; their norm has.
        return (kind == "weight" || short == "token_embd_norm").then(|| format!("{short}.{kind}"));
    }
    layer_tensor_name(rest, &LAYER_MODULES)
}

/// The embeddings' modules in the checkpoint and llama.cpp's names for them.
const EMBEDDING_MODULES: [(&str, &str); 4] = [
    ("embeddings.word_embeddings", "token_embd"),
    ("embeddings.token_type_embeddings", "token_types"),
    ("embeddings.position_embeddings", "position_embd"),
    ("embeddings.LayerNorm", "token_embd_norm"),
];

/// Each encoder layer's modules in the checkpoint and llama.cpp's names for them: the six
/// weight matrices first, then the two norms.
pub(crate) const LAYER_MODULES: [(&str, &str); 8] = [
    ("attention.self.query", "attn_q"),
    ("attention.self.key", "attn_k"),
    ("attention.self.value", "attn_v"),
    ("attention.output.dense", "attn_output"),
    ("intermediate.dense", "ffn_up"),
    ("output.dense", "ffn_down"),
    ("attention.output.LayerNorm", "attn_output_norm"),
    ("output.LayerNorm", "layer_output_norm"),
];

/// `[bert.]encoder.layer.N.MODULE.KIND` → `blk.N.SHORT.KIND` for the `modules` given.
pub(crate) fn layer_tensor_name(name: &str, modules: &[(&str, &str)]) -> Option<String> {
    let rest = name.strip_prefix("bert.").unwrap_or(name);
    let (layer, tail) = rest.strip_prefix("encoder.layer.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    if !matches!(kind, "weight" | "bias") {
        return None;
    }
    let &(_, short) = modules.iter().find(|(m, _)| *m == module)?;
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// The Hugging Face name (without prefix) of a tensor llama.cpp names `gguf`: the inverse of
/// [`gguf_tensor_name`]; `None` for other names.
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    let (module, kind) = gguf.rsplit_once('.')?;
    let hf = match EMBEDDING_MODULES.iter().find(|(_, short)| *short == module) {
        Some((m, _)) => m.to_string(),
        None => {
            let (layer, short) = module.strip_prefix("blk.")?.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let (m, _) = LAYER_MODULES.iter().find(|(_, s)| *s == short)?;
            format!("encoder.layer.{layer}.{m}")
        }
    };
    let name = format!("{hf}.{kind}");
    // Only names that map back: `token_embd.bias` and the like are not BERT tensors.
    (gguf_tensor_name(&name).as_deref() == Some(gguf)).then_some(name)
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// llama.cpp's pooling types (`bert.pooling_type`).
const POOLING_MEAN: u32 = 1;
const POOLING_CLS: u32 = 2;

#[derive(Deserialize)]
struct RawTokenizer {
    model: RawModel,
    #[serde(default)]
    added_tokens: Vec<RawAdded>,
    #[serde(default)]
    normalizer: Option<serde_json::Value>,
    #[serde(default)]
    post_processor: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawModel {
    #[serde(rename = "type")]
    kind: Option<String>,
    vocab: std::collections::HashMap<String, u32>,
}

#[derive(Deserialize)]
struct RawAdded {
    id: u32,
    content: String,
    #[serde(default)]
    special: bool,
}

/// The special tokens of `tokenizer_config.json` (strings, or objects with `content`).
#[derive(Deserialize, Default)]
struct RawTokenizerConfig {
    bos_token: Option<serde_json::Value>,
    eos_token: Option<serde_json::Value>,
    unk_token: Option<serde_json::Value>,
    sep_token: Option<serde_json::Value>,
    pad_token: Option<serde_json::Value>,
    cls_token: Option<serde_json::Value>,
    mask_token: Option<serde_json::Value>,
    name_or_path: Option<String>,
}

fn token_text(v: &Option<serde_json::Value>) -> Option<String> {
    match v.as_ref()? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Whether the normaliser lower-cases (`None` when it does not say), as llama.cpp's
/// `SpecialVocab` reads it: `Lowercase`, `BertNormalizer.lowercase`, or inside a `Sequence`.
fn lowercase_of(n: &serde_json::Value) -> Option<bool> {
    match n.get("type")?.as_str()? {
        "Lowercase" => Some(true),
        "BertNormalizer" => n.get("lowercase")?.as_bool(),
        "Sequence" => n.get("normalizers")?.as_array()?.iter().filter_map(lowercase_of).next_back(),
        _ => None,
    }
}

/// What a model directory tells a GGUF file beyond the tensors: the configuration, the
/// pooling head and the WordPiece vocabulary with its special tokens.
#[derive(Debug, Clone)]
pub struct GgufModelInfo {
    /// `config.json`.
    pub config: BertConfig,
    /// The sentence-transformers head.
    pub pooling: Pooling,
    /// The model's name (`general.name`): the last part of `tokenizer_config.json`'s
    /// `name_or_path`, else the directory's name.
    pub name: String,
    /// The vocabulary in id order, in llama.cpp's spelling: a continuation loses its `##`,
    /// other tokens but the special ones gain U+2581.
    pub tokens: Vec<String>,
    /// llama.cpp's type of each token: 3 (control) for special tokens, 1 (normal) otherwise,
    /// 4 (user-defined) for ids the vocabulary skips (spelled `[PADn]`).
    pub token_types: Vec<i32>,
    /// Special token ids by llama.cpp's key (`bos_token_id`, `eos_token_id`,
    /// `unknown_token_id`, `seperator_token_id`, `padding_token_id`, `mask_token_id`), in the
    /// converter's order. As there, `bos` is the `[CLS]` token and `eos` the `[SEP]` token
    /// when `tokenizer_config.json` names no other.
    pub special: Vec<(&'static str, u32)>,
    /// Flags from the post-processor: whether a sentence gets the `bos` token first, the
    /// `eos` token last, and a separator between a pair (`tokenizer.ggml.add_*_token`).
    pub add_tokens: Vec<(&'static str, bool)>,
    /// Whether the normaliser lower-cases (`tokenizer.ggml.normalizer.lowercase`).
    pub lowercase: Option<bool>,
}

impl GgufModelInfo {
    /// Reads `config.json`, the pooling head, `tokenizer.json` and (if present)
    /// `tokenizer_config.json` of a model directory.
    ///
    /// # Errors
    /// As [`BertConfig::from_file`] and [`Pooling::from_dir`]; [`BertError::Io`] and
    /// [`BertError::Tokenizer`] for a missing, unreadable or non-WordPiece `tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?.check()?;
        let pooling = Pooling::from_dir(dir)?;
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| BertError::Io { path, source })
        };
        let text = read("tokenizer.json")?;
        let tok_config = if dir.join("tokenizer_config.json").is_file() { Some(read("tokenizer_config.json")?) } else { None };
        let name = std::fs::canonicalize(dir)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "bert".into());
        Self::from_parts(config, pooling, name, &text, tok_config.as_deref())
    }

    /// [`from_dir`](Self::from_dir) from the parts: `tokenizer` is the text of
    /// `tokenizer.json`, `tokenizer_config` that of `tokenizer_config.json`; `name` is used when
    /// the latter has no `name_or_path`.
    ///
    /// # Errors
    /// [`BertError::Tokenizer`] for malformed JSON, a model other than WordPiece, a token id
    /// outside `config.vocab_size`, or no `[CLS]` token.
    pub fn from_parts(config: BertConfig, pooling: Pooling, name: String, tokenizer: &str, tokenizer_config: Option<&str>) -> Result<Self> {
        let bad = |reason: String| BertError::Tokenizer { reason: format!("tokenizer.json: {reason}") };
        let raw: RawTokenizer = serde_json::from_str(tokenizer).map_err(|e| bad(e.to_string()))?;
        let tc: RawTokenizerConfig = match tokenizer_config {
            Some(t) => serde_json::from_str(t).map_err(|e| BertError::Tokenizer { reason: format!("tokenizer_config.json: {e}") })?,
            None => RawTokenizerConfig::default(),
        };
        if raw.model.kind.as_deref().is_some_and(|k| k != "WordPiece") {
            return Err(bad(format!("a {} model; GGUF's BERT vocabulary is WordPiece", raw.model.kind.unwrap_or_default())));
        }
        let n = config.vocab_size;
        let mut tokens: Vec<Option<String>> = vec![None; n];
        let mut special = vec![false; n];
        for (tok, &id) in &raw.model.vocab {
            let slot = tokens.get_mut(id as usize).ok_or_else(|| bad(format!("token id {id} is outside the vocabulary of {n}")))?;
            *slot = Some(tok.clone());
        }
        for a in &raw.added_tokens {
            let i = a.id as usize;
            let slot = tokens.get_mut(i).ok_or_else(|| bad(format!("added token id {} is outside the vocabulary of {n}", a.id)))?;
            *slot = Some(a.content.clone());
            special[i] = a.special;
        }
        let id_of = |text: &str| tokens.iter().position(|t| t.as_deref() == Some(text)).map(|i| i as u32);
        let cls = token_text(&tc.cls_token).unwrap_or_else(|| "[CLS]".into());
        let sep = token_text(&tc.sep_token).unwrap_or_else(|| "[SEP]".into());
        let bos = token_text(&tc.bos_token).unwrap_or_else(|| cls.clone());
        let eos = token_text(&tc.eos_token).unwrap_or_else(|| sep.clone());
        let mut ids = Vec::new();
        for (key, text) in [
            ("bos_token_id", Some(bos.clone())),
            ("eos_token_id", Some(eos.clone())),
            ("unknown_token_id", token_text(&tc.unk_token).or_else(|| Some("[UNK]".into()))),
            ("seperator_token_id", Some(sep.clone())),
            ("padding_token_id", token_text(&tc.pad_token).or_else(|| Some("[PAD]".into()))),
            ("mask_token_id", token_text(&tc.mask_token).or_else(|| Some("[MASK]".into()))),
        ] {
            if let Some(id) = text.as_deref().and_then(id_of) {
                ids.push((key, id));
            }
        }
        if id_of(&cls).is_none() {
            return Err(bad(format!("no {cls} token")));
        }
        let add_tokens = add_flags(raw.post_processor.as_ref(), [&bos, &cls, &sep, &eos]);
        let lowercase = raw.normalizer.as_ref().and_then(lowercase_of);
        let mut out_tokens = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        for (i, (t, &s)) in tokens.into_iter().zip(&special).enumerate() {
            match t {
                None => {
                    out_tokens.push(format!("[PAD{i}]"));
                    types.push(USER_DEFINED);
                }
                Some(t) if s => {
                    out_tokens.push(t);
                    types.push(CONTROL);
                }
                Some(t) => {
                    out_tokens.push(match t.strip_prefix("##") {
                        Some(rest) => rest.to_string(),
                        None => format!("\u{2581}{t}"),
                    });
                    types.push(NORMAL);
                }
            }
        }
        let name = tc.name_or_path.as_deref().and_then(|p| p.rsplit('/').next()).filter(|s| !s.is_empty()).map_or(name, str::to_string);
        Ok(Self { config, pooling, name, tokens: out_tokens, token_types: types, special: ids, add_tokens, lowercase })
    }

    /// The file's metadata, in the converter's order: `general.*`, the `bert.*`
    /// hyper-parameters, the pooling type, and the tokenizer. `file_type` is llama.cpp's
    /// `llama_ftype` of the file (0 all F32, 1 mostly F16, 15 mostly Q4_K_M, ...). The
    /// converter's model-card entries (`general.license`, datasets, tags) are not written.
    pub fn metadata(&self, file_type: u32) -> Vec<(String, Value)> {
        let c = &self.config;
        let u32v = |v: usize| Value::U32(u32::try_from(v).unwrap_or(u32::MAX));
        let mut m: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String("bert".into())),
            ("general.type".into(), Value::String("model".into())),
            ("general.name".into(), Value::String(self.name.clone())),
            ("bert.block_count".into(), u32v(c.num_hidden_layers)),
            ("bert.context_length".into(), u32v(c.max_position_embeddings)),
            ("bert.embedding_length".into(), u32v(c.hidden_size)),
            ("bert.feed_forward_length".into(), u32v(c.intermediate_size)),
            ("bert.attention.head_count".into(), u32v(c.num_attention_heads)),
            ("bert.attention.layer_norm_epsilon".into(), Value::F32(c.layer_norm_eps as f32)),
            ("general.file_type".into(), Value::U32(file_type)),
            ("bert.attention.causal".into(), Value::Bool(false)),
            (
                "bert.pooling_type".into(),
                Value::U32(match self.pooling.mode {
                    PoolingMode::Cls => POOLING_CLS,
                    _ => POOLING_MEAN,
                }),
            ),
            ("general.quantization_version".into(), Value::U32(2)),
            ("tokenizer.ggml.token_type_count".into(), u32v(c.type_vocab_size)),
            ("tokenizer.ggml.model".into(), Value::String("bert".into())),
            // The pre-tokenizer llama.cpp's converter names for BERT's uncased WordPiece
            // (found by hashing the tokenization of its check text).
            ("tokenizer.ggml.pre".into(), Value::String("jina-v2-en".into())),
            ("tokenizer.ggml.tokens".into(), Value::strings(self.tokens.iter().cloned())),
            ("tokenizer.ggml.token_type".into(), Value::Array(ValueType::I32, self.token_types.iter().map(|&t| Value::I32(t)).collect())),
        ];
        for (key, id) in &self.special {
            m.push((format!("tokenizer.ggml.{key}"), Value::U32(*id)));
        }
        for (key, on) in &self.add_tokens {
            m.push((format!("tokenizer.ggml.{key}"), Value::Bool(*on)));
        }
        if let Some(l) = self.lowercase {
            m.push(("tokenizer.ggml.normalizer.lowercase".into(), Value::Bool(l)));
        }
        m
    }
}

/// `add_bos_token`, `add_eos_token`, `add_sep_token` from the post-processor, as llama.cpp's
/// `SpecialVocab` reads the common forms: `RobertaProcessing` adds all three; a
/// `TemplateProcessing` whose single template starts with the `bos` (or `cls`) token and
/// ends with the `eos` token adds those two, and a separator only when its pair template has
/// one between the sequences and the single template none at the end.
fn add_flags(post: Option<&serde_json::Value>, [bos, cls, sep, eos]: [&str; 4]) -> Vec<(&'static str, bool)> {
    let Some(post) = post else { return Vec::new() };
    let list: Vec<&serde_json::Value> = match post.get("processors").and_then(|p| p.as_array()) {
        Some(a) => a.iter().collect(),
        None => vec![post],
    };
    let special = |e: &serde_json::Value| e.get("SpecialToken").and_then(|t| t.get("id")).and_then(|v| v.as_str()).map(str::to_string);
    let mut flags: Vec<(&'static str, bool)> = Vec::new();
    let mut set = |k: &'static str, v: bool| match flags.iter_mut().find(|(key, _)| *key == k) {
        Some(f) => f.1 = v,
        None => flags.push((k, v)),
    };
    for p in list {
        match p.get("type").and_then(|t| t.as_str()) {
            Some("RobertaProcessing") => {
                set("add_bos_token", true);
                set("add_eos_token", true);
                set("add_sep_token", true);
            }
            Some("TemplateProcessing") => {
                let single = p.get("single").and_then(|s| s.as_array()).cloned().unwrap_or_default();
                let pair = p.get("pair").and_then(|s| s.as_array()).cloned().unwrap_or_default();
                let (mut first, mut last) = (None, None);
                if single.len() > 1 {
                    first = single.first().and_then(special);
                    if let Some(f) = &first {
                        set("add_bos_token", f == bos || f == cls);
                    }
                    last = single.last().and_then(special);
                    if let Some(l) = &last {
                        set("add_eos_token", l == eos);
                    }
                }
                if !pair.is_empty() {
                    let start = usize::from(first.is_some() && pair.first().and_then(special) == first);
                    let stop = pair.len() - usize::from(last.is_some() && pair.last().and_then(special) == last);
                    let middle = pair.get(start..stop.max(start)).unwrap_or(&[]);
                    let seq = |e: Option<&serde_json::Value>| {
                        e.and_then(|e| e.get("Sequence")).and_then(|s| s.get("id")).and_then(|v| v.as_str()).map(str::to_string)
                    };
                    if seq(middle.first()).as_deref() == Some("A") && seq(middle.last()).as_deref() == Some("B") && middle.len() > 2 {
                        let between = &middle[1..middle.len() - 1];
                        let is_sep = |e: &serde_json::Value| special(e).is_some_and(|s| s == sep || s == eos);
                        let mut add_sep = between.first().is_some_and(|e| is_sep(e) && last.is_none());
                        if between.len() == 2 && between.get(1).is_some_and(is_sep) {
                            add_sep = true;
                        }
                        set("add_sep_token", add_sep);
                    }
                }
            }
            Some("ByteLevel") => {}
            _ => {}
        }
    }
    flags
}

impl Bert<f32> {
    /// Replaces every tensor of the model that `file` holds under llama.cpp's name
    /// ([`gguf_tensor_name`]) with its decoded values; returns how many were replaced.
    ///
    /// # Errors
    /// [`BertError::Unsupported`] for a tensor of a GGML type without a decoder or of
    /// another shape than the model's; [`BertError::NonFinite`].
    pub fn set_from_gguf(&mut self, file: &GgufFile) -> Result<usize> {
        let mut replaced = 0;
        let blocks: Vec<(String, usize)> = self.blocks().iter().map(|b| (b.name().to_string(), b.len())).collect();
        for (full, len) in blocks {
            let name = full.strip_prefix(self.prefix()).unwrap_or(&full);
            let Some(gname) = gguf_tensor_name(name) else { continue };
            let Some((info, bytes)) = file.tensor_data(&gname) else { continue };
            if info.elements() != len as u64 {
                return Err(BertError::TensorShape { name: full, expected: vec![len], got: info.shape() });
            }
            let values = codec::dequantize(info.ggml_type, bytes, len)
                .map_err(|e| BertError::Unsupported { reason: format!("GGUF tensor '{gname}': {e}") })?;
            self.set_tensor(&full, &values)?;
            replaced += 1;
        }
        Ok(replaced)
    }
}
