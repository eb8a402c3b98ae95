//! BERT-family models in GGUF: llama.cpp's tensor names both ways, the metadata its converter
//! writes for a model directory, and loading decoded tensors into a model.

use std::path::PathBuf;

use quant_gguf::{GgmlType, GgufFile, GgufWriter, Value, codec};
use quant_models::bert::{Bert, BertError, GgufModelInfo, gguf_tensor_name, hf_tensor_name};

type R = Result<(), Box<dyn std::error::Error>>;

fn tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bert").join(name)
}

#[test]
fn names_follow_llama_cpps_converter_and_map_back() {
    for (hf, llama) in [
        ("embeddings.word_embeddings.weight", "token_embd.weight"),
        ("bert.embeddings.token_type_embeddings.weight", "token_types.weight"),
        ("embeddings.position_embeddings.weight", "position_embd.weight"),
        ("embeddings.LayerNorm.weight", "token_embd_norm.weight"),
        ("embeddings.LayerNorm.bias", "token_embd_norm.bias"),
        ("encoder.layer.0.attention.self.query.weight", "blk.0.attn_q.weight"),
        ("encoder.layer.3.attention.self.key.bias", "blk.3.attn_k.bias"),
        ("encoder.layer.11.attention.self.value.weight", "blk.11.attn_v.weight"),
        ("encoder.layer.2.attention.output.dense.bias", "blk.2.attn_output.bias"),
        ("encoder.layer.2.attention.output.LayerNorm.weight", "blk.2.attn_output_norm.weight"),
        ("encoder.layer.5.intermediate.dense.weight", "blk.5.ffn_up.weight"),
        ("encoder.layer.5.output.dense.weight", "blk.5.ffn_down.weight"),
        ("encoder.layer.5.output.LayerNorm.bias", "blk.5.layer_output_norm.bias"),
    ] {
        assert_eq!(gguf_tensor_name(hf).as_deref(), Some(llama), "{hf}");
        assert_eq!(hf_tensor_name(llama).as_deref(), Some(hf.strip_prefix("bert.").unwrap_or(hf)), "{llama}");
    }
    // What the converter leaves out, and names that are not BERT's.
    for hf in [
        "pooler.dense.weight",
        "embeddings.position_ids",
        "cls.predictions.bias",
        "encoder.layer.x.output.dense.weight",
        "embeddings.word_embeddings.bias",
    ] {
        assert_eq!(gguf_tensor_name(hf), None, "{hf}");
    }
    for g in ["output.weight", "blk.0.attn_qkv.weight", "token_embd.bias", "blk.a.attn_q.weight", "blk.0.attn_q"] {
        assert_eq!(hf_tensor_name(g), None, "{g}");
    }
}

#[test]
fn every_tensor_of_a_model_has_a_name_that_maps_back() -> R {
    let model = Bert::<f32>::load(&tiny("prefixed"))?;
    for b in model.blocks() {
        let bare = b.name().strip_prefix(model.prefix()).unwrap_or(b.name());
        let g = gguf_tensor_name(b.name()).ok_or(format!("no name for {}", b.name()))?;
        assert_eq!(hf_tensor_name(&g).as_deref(), Some(bare));
    }
    Ok(())
}

const TOKENIZER: &str = r###"{
  "normalizer": {"type": "BertNormalizer", "lowercase": true},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
             {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}]},
  "added_tokens": [{"id": 0, "content": "[PAD]", "special": true}, {"id": 1, "content": "[UNK]", "special": true},
                   {"id": 2, "content": "[CLS]", "special": true}, {"id": 3, "content": "[SEP]", "special": true},
                   {"id": 4, "content": "[MASK]", "special": true}],
  "model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "cat": 5, "##s": 6, "sat": 8}}
}"###;

fn info(tokenizer: &str) -> Result<GgufModelInfo, BertError> {
    let mut config = quant_models::bert::BertConfig::base();
    config.vocab_size = 9;
    GgufModelInfo::from_parts(config, Default::default(), "dir".into(), tokenizer, Some(r#"{"name_or_path": "org/tiny-bert"}"#))
}

#[test]
fn the_vocabulary_is_spelled_and_typed_as_llama_cpp_reads_it() -> R {
    let i = info(TOKENIZER)?;
    assert_eq!(i.name, "tiny-bert");
    assert_eq!(i.tokens, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "\u{2581}cat", "s", "[PAD7]", "\u{2581}sat"]);
    assert_eq!(i.token_types, [3, 3, 3, 3, 3, 1, 1, 4, 1]);
    assert_eq!(
        i.special,
        [
            ("bos_token_id", 2),
            ("eos_token_id", 3),
            ("unknown_token_id", 1),
            ("seperator_token_id", 3),
            ("padding_token_id", 0),
            ("mask_token_id", 4)
        ]
    );
    // BERT's template: [CLS] A [SEP] (B [SEP]): bos and eos added, no separator of its own.
    assert_eq!(i.add_tokens, [("add_bos_token", true), ("add_eos_token", true), ("add_sep_token", false)]);
    assert_eq!(i.lowercase, Some(true));
    let m = i.metadata(7);
    let get = |k: &str| m.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("general.architecture"), Some(Value::String("bert".into())));
    assert_eq!(get("general.file_type"), Some(Value::U32(7)));
    assert_eq!(get("bert.embedding_length"), Some(Value::U32(768)));
    assert_eq!(get("bert.attention.causal"), Some(Value::Bool(false)));
    assert_eq!(get("tokenizer.ggml.model"), Some(Value::String("bert".into())));
    assert_eq!(get("tokenizer.ggml.normalizer.lowercase"), Some(Value::Bool(true)));
    // Keys are unique: a writer takes them all.
    let mut w = GgufWriter::new();
    for (k, v) in m {
        w.metadata(&k, v)?;
    }
    Ok(())
}

#[test]
fn malformed_tokenizers_are_refused() {
    assert!(matches!(info("{"), Err(BertError::Tokenizer { .. })));
    assert!(matches!(info(r#"{"model": {"type": "BPE", "vocab": {"[CLS]": 0}}}"#), Err(BertError::Tokenizer { .. })));
    assert!(matches!(info(r#"{"model": {"type": "WordPiece", "vocab": {"[CLS]": 0, "x": 99}}}"#), Err(BertError::Tokenizer { .. })));
    assert!(matches!(info(r#"{"model": {"type": "WordPiece", "vocab": {"a": 0}}}"#), Err(BertError::Tokenizer { .. })));
}

#[test]
fn a_model_takes_the_decoded_tensors_of_a_gguf() -> R {
    let dir = tiny("plain");
    let mut model = Bert::<f32>::load(&dir)?;
    let before = model.weights().to_vec();
    // A GGUF with two of the model's tensors (one q8_0, one f32) and one foreign tensor.
    let shape = model.tensor_shape("encoder.layer.0.attention.self.query.weight").ok_or("shape")?;
    let q: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| ((i * 7919) % 113) as f32 / 113.0 - 0.5).collect();
    let bias: Vec<f32> = (0..shape[0]).map(|i| i as f32).collect();
    let mut w = GgufWriter::new();
    w.tensor("blk.0.attn_q.weight", &[shape[1] as u64, shape[0] as u64], GgmlType::Q8_0)?;
    w.tensor("blk.0.attn_q.bias", &[shape[0] as u64], GgmlType::F32)?;
    w.tensor("output.weight", &[4], GgmlType::F32)?;
    let path = std::env::temp_dir().join(format!("quant-models-gguf-{}.gguf", std::process::id()));
    let data = [codec::quantize(GgmlType::Q8_0, &q)?, codec::quantize(GgmlType::F32, &bias)?, vec![0u8; 16]];
    w.write_file(&path, |i, sink| {
        use std::io::Write;
        sink.write_all(&data[i])?;
        Ok(())
    })?;
    let file = GgufFile::open(&path)?;
    assert_eq!(model.set_from_gguf(&file)?, 2);
    let after = model.weights().to_vec();
    let b = model.blocks().iter().find(|b| b.name() == "encoder.layer.0.attention.self.query.weight").ok_or("block")?;
    assert_eq!(&after[b.range()], codec::dequantize(GgmlType::Q8_0, &data[0], q.len())?.as_slice());
    let c = model.blocks().iter().find(|b| b.name() == "encoder.layer.0.attention.self.query.bias").ok_or("block")?;
    assert_eq!(&after[c.range()], bias.as_slice());
    let changed = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    assert!(changed <= q.len() + bias.len());
    // A tensor of the wrong size is refused.
    let mut w = GgufWriter::new();
    w.tensor("blk.0.attn_q.bias", &[3], GgmlType::F32)?;
    w.write_file(&path, |_, sink| {
        use std::io::Write;
        sink.write_all(&[0u8; 12])?;
        Ok(())
    })?;
    let file = GgufFile::open(&path)?;
    assert!(matches!(model.set_from_gguf(&file), Err(BertError::TensorShape { .. })));
    std::fs::remove_file(&path)?;
    Ok(())
}
