//! The BERT-family loader, tokenizer and forward pass against torch / transformers
//! (tests/data/bert/make_golden.py made the checkpoints and golden.json).
#![cfg(feature = "bert")]

use std::path::{Path, PathBuf};

use ndarray::Array2;
use quant_models::bert::{
    Bert, BertConfig, BertError, BertTokenizer, HiddenAct, Pooling, PoolingMode, Sentence, SentenceEncoder, TokenBatch,
};

fn data(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bert").join(dir)
}

struct Golden {
    sentences: Vec<String>,
    ids: Vec<Vec<u32>>,
    type_ids: Vec<Vec<u32>>,
    truncated: usize,
    embeddings: Array2<f64>,
}

fn golden(dir: &str) -> Golden {
    let text = std::fs::read_to_string(data("golden.json")).expect("golden.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let g = &v[dir];
    let rows: Vec<Vec<f64>> = serde_json::from_value(g["embeddings"].clone()).expect("embeddings");
    let (n, d) = (rows.len(), rows[0].len());
    Golden {
        sentences: serde_json::from_value(v["sentences"].clone()).expect("sentences"),
        ids: serde_json::from_value(g["ids"].clone()).expect("ids"),
        type_ids: serde_json::from_value(g["type_ids"].clone()).expect("type ids"),
        truncated: serde_json::from_value(g["truncated"].clone()).expect("truncated"),
        embeddings: Array2::from_shape_vec((n, d), rows.concat()).expect("rectangular"),
    }
}

#[test]
fn tokens_match_the_python_tokenizer() -> Result<(), BertError> {
    for dir in ["plain", "prefixed", "cls", "max"] {
        let g = golden(dir);
        let tok = BertTokenizer::from_dir(&data(dir), 16)?;
        let batch = tok.encode(&g.sentences)?;
        let ids: Vec<Vec<u32>> = batch.sentences().iter().map(|s| s.ids.clone()).collect();
        let types: Vec<Vec<u32>> = batch.sentences().iter().map(|s| s.type_ids.clone()).collect();
        assert_eq!(ids, g.ids, "{dir}");
        assert_eq!(types, g.type_ids, "{dir}");
        assert_eq!(batch.truncated(), g.truncated, "{dir}");
        assert!(g.truncated >= 1, "the golden set has a sentence beyond 16 tokens");
    }
    Ok(())
}

#[test]
fn the_loader_reads_each_naming_scheme_dtype_and_head() -> Result<(), BertError> {
    let plain = Bert::<f32>::load(&data("plain"))?;
    assert_eq!(plain.prefix(), "");
    assert_eq!(plain.pooling(), Pooling { mode: PoolingMode::Mean, normalize: true });
    assert_eq!(plain.config().hidden_act, HiddenAct::Gelu);
    let prefixed = Bert::<f32>::load(&data("prefixed"))?;
    assert_eq!(prefixed.prefix(), "bert.");
    assert_eq!(prefixed.pooling(), Pooling { mode: PoolingMode::Mean, normalize: false });
    assert_eq!(prefixed.config().hidden_act, HiddenAct::GeluNew);
    assert!(prefixed.blocks()[0].name().starts_with("bert.embeddings."));
    let cls = Bert::<f32>::load(&data("cls"))?;
    assert_eq!(cls.pooling(), Pooling { mode: PoolingMode::Cls, normalize: false });
    assert_eq!(cls.config().hidden_act, HiddenAct::Relu);
    let max = Bert::<f32>::load(&data("max"))?;
    assert_eq!(max.pooling(), Pooling { mode: PoolingMode::Max, normalize: true });
    // 2 layers × 6 matrices, and the three embedding tables.
    assert_eq!(plain.weight_matrices().len(), 12);
    assert_eq!(plain.blocks()[plain.weight_matrices()[0]].name(), "encoder.layer.0.attention.self.query.weight");
    assert_eq!(plain.blocks()[plain.weight_matrices()[11]].name(), "encoder.layer.1.output.dense.weight");
    assert_eq!(plain.embedding_tables().len(), 3);
    Ok(())
}

/// Largest absolute difference.
fn max_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn embeddings_match_torch_in_f64_and_f32() -> Result<(), BertError> {
    for dir in ["plain", "prefixed", "cls", "max"] {
        let g = golden(dir);
        let tok = BertTokenizer::from_dir(&data(dir), 16)?;
        let batch = tok.encode(&g.sentences)?;
        let e64 = Bert::<f64>::load(&data(dir))?.embed(&batch)?;
        let d64 = max_diff(&e64, &g.embeddings);
        assert!(d64 < 1e-12, "{dir}: f64 differs from torch by {d64:e}");
        let e32 = Bert::<f32>::load(&data(dir))?.embed(&batch)?.mapv(f64::from);
        let d32 = max_diff(&e32, &g.embeddings);
        assert!(d32 < 1e-5, "{dir}: f32 differs from torch by {d32:e}");
    }
    Ok(())
}

#[test]
fn padding_and_batch_company_change_nothing() -> Result<(), BertError> {
    let enc = SentenceEncoder::load(&data("plain"))?;
    let g = golden("plain");
    let all = enc.embed(&g.sentences)?;
    for (i, s) in g.sentences.iter().enumerate() {
        let alone = enc.embed(&[s])?;
        assert_eq!(alone.row(0), all.row(i), "sentence {i} alone vs in the batch");
    }
    Ok(())
}

#[test]
fn bad_directories_and_inputs_are_typed_errors() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = std::env::temp_dir().join(format!("quant-bert-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    // No config.json.
    assert!(matches!(Bert::<f32>::load(&tmp), Err(BertError::Io { .. })));
    // Malformed config.json.
    std::fs::write(tmp.join("config.json"), "{ not json")?;
    assert!(matches!(Bert::<f32>::load(&tmp), Err(BertError::Config { .. })));
    // Another architecture.
    std::fs::write(tmp.join("config.json"), r#"{"model_type": "gpt2", "hidden_size": 32}"#)?;
    assert!(matches!(Bert::<f32>::load(&tmp), Err(BertError::Unsupported { .. })));
    // A config that disagrees with the tensors: the error names the tensor and both shapes.
    let cfg = std::fs::read_to_string(data("plain").join("config.json"))?.replace("\"intermediate_size\": 64", "\"intermediate_size\": 48");
    std::fs::write(tmp.join("config.json"), cfg)?;
    std::fs::copy(data("plain").join("model.safetensors"), tmp.join("model.safetensors"))?;
    match Bert::<f32>::load(&tmp) {
        Err(BertError::TensorShape { name, expected, got }) => {
            assert_eq!(name, "encoder.layer.0.intermediate.dense.weight");
            assert_eq!(expected, vec![48, 32]);
            assert_eq!(got, vec![64, 32]);
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    // hidden_size not a multiple of the heads.
    let cfg =
        std::fs::read_to_string(data("plain").join("config.json"))?.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5");
    std::fs::write(tmp.join("config.json"), cfg)?;
    assert!(matches!(Bert::<f32>::load(&tmp), Err(BertError::InvalidConfig { field: "hidden_size", .. })));
    // A truncated safetensors file.
    std::fs::copy(data("plain").join("config.json"), tmp.join("config.json"))?;
    let bytes = std::fs::read(data("plain").join("model.safetensors"))?;
    std::fs::write(tmp.join("model.safetensors"), &bytes[..bytes.len() / 2])?;
    assert!(matches!(Bert::<f32>::load(&tmp), Err(BertError::Safetensors { .. })));
    // Missing tokenizer; vocab.txt alone gets a clear refusal.
    assert!(matches!(BertTokenizer::from_dir(&tmp, 16), Err(BertError::MissingTokenizer { .. })));
    std::fs::write(tmp.join("vocab.txt"), "[PAD]\n[UNK]\n")?;
    match BertTokenizer::from_dir(&tmp, 16) {
        Err(BertError::Tokenizer { reason }) => assert!(reason.contains("tokenizer.json"), "{reason}"),
        other => panic!("expected a tokenizer error, got {other:?}"),
    }
    std::fs::write(tmp.join("tokenizer.json"), "{}")?;
    assert!(matches!(BertTokenizer::from_dir(&tmp, 16), Err(BertError::Tokenizer { .. })));
    std::fs::remove_dir_all(&tmp)?;

    // Inputs the model cannot take.
    let model = Bert::<f32>::load(&data("plain"))?;
    let bad_id = TokenBatch::new(vec![Sentence { ids: vec![2, 10_000, 3], type_ids: vec![0; 3] }])?;
    assert!(matches!(model.embed(&bad_id), Err(BertError::TokenOutOfRange { id: 10_000, .. })));
    let bad_type = TokenBatch::new(vec![Sentence { ids: vec![2, 3], type_ids: vec![0, 2] }])?;
    assert!(matches!(model.embed(&bad_type), Err(BertError::TokenOutOfRange { id: 2, .. })));
    let too_long = TokenBatch::new(vec![Sentence { ids: vec![5; 17], type_ids: vec![0; 17] }])?;
    assert!(matches!(model.embed(&too_long), Err(BertError::TokenOutOfRange { .. })));
    let empty = TokenBatch::new(vec![Sentence { ids: vec![], type_ids: vec![] }])?;
    assert!(matches!(model.embed(&empty), Err(BertError::EmptySentence { sentence: 0 })));
    assert!(TokenBatch::new(vec![Sentence { ids: vec![1, 2], type_ids: vec![0] }]).is_err());
    let short = ndarray::Array1::<f32>::zeros(3);
    let ok = TokenBatch::new(vec![Sentence { ids: vec![2, 3], type_ids: vec![0, 0] }])?;
    assert!(matches!(model.embed_with(short.view(), &ok), Err(BertError::ParameterCount { .. })));
    // No sentences: an empty result, not an error.
    assert_eq!(model.embed(&TokenBatch::default())?.dim(), (0, 32));
    Ok(())
}

#[test]
fn a_bert_base_shaped_model_loads_and_runs() -> Result<(), BertError> {
    let model = Bert::<f32>::random(BertConfig::base(), Pooling { mode: PoolingMode::Mean, normalize: true }, 7)?;
    // bert-base-uncased's 109,482,240 parameters less its pooler (768 × 768 + 768).
    assert_eq!(model.weights().len(), 109_482_240 - 768 * 768 - 768);
    assert_eq!(model.weight_matrices().len(), 72);
    let batch = TokenBatch::new(vec![
        Sentence { ids: vec![101, 2023, 2003, 1037, 3231, 102], type_ids: vec![0; 6] },
        Sentence { ids: vec![101, 7592, 102], type_ids: vec![0; 3] },
    ])?;
    let e = model.embed(&batch)?;
    assert_eq!(e.dim(), (2, 768));
    for row in e.outer_iter() {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    Ok(())
}

#[test]
fn the_loader_survives_truncated_and_mutated_files() -> Result<(), Box<dyn std::error::Error>> {
    use quant_models::bert::exercise_loader;
    let config = std::fs::read(data("plain").join("config.json"))?;
    let model = std::fs::read(data("plain").join("model.safetensors"))?;
    let mut input = (config.len() as u16).to_le_bytes().to_vec();
    input.extend(&config);
    input.extend(&model);
    assert_eq!(exercise_loader(&input), 2, "the intact input loads and embeds");
    // Truncations, and bytes flipped across the header and the data: never a panic.
    for cut in (0..input.len()).step_by(997) {
        let _ = exercise_loader(&input[..cut]);
    }
    let mut state = 1u64;
    for _ in 0..300 {
        let mut m = input.clone();
        for _ in 0..4 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let at = (state >> 33) as usize % m.len();
            m[at] = (state >> 17) as u8;
        }
        let _ = exercise_loader(&m);
    }
    // Configs with extreme sizes are refused before anything is allocated.
    let huge = br#"{"hidden_size": 16777216, "num_attention_heads": 1, "num_hidden_layers": 16777216, "intermediate_size": 16777216, "vocab_size": 16777216, "max_position_embeddings": 16777216}"#;
    let mut input = (huge.len() as u16).to_le_bytes().to_vec();
    input.extend(huge);
    assert_eq!(exercise_loader(&input), 0);
    Ok(())
}

#[test]
fn input_grams_match_transformers_hooks() -> Result<(), BertError> {
    // grams.json: XᵀX of every encoder linear layer's input, from forward hooks in
    // transformers (float64), each sentence alone (tests/data/bert/make_grams.py).
    let text = std::fs::read_to_string(data("grams.json")).expect("grams.json");
    let want: serde_json::Value = serde_json::from_str(&text).expect("json");
    let g = golden("plain");
    let sentences = g.ids.iter().zip(&g.type_ids).map(|(i, t)| Sentence { ids: i.clone(), type_ids: t.clone() }).collect();
    let batch = TokenBatch::new(sentences)?;
    let model = Bert::<f32>::load(&data("plain"))?;
    // Chunks of 3 sentences: the sums over chunks are the sums over the batch.
    let grams = model.input_grams(&batch, 3)?;
    assert_eq!(grams.tokens as u64, want["tokens"].as_u64().expect("tokens"));
    let matrices = want["matrices"].as_object().expect("matrices");
    assert_eq!(grams.names.len(), matrices.len());
    for (name, w) in matrices {
        let h = grams.get(name).unwrap_or_else(|| panic!("no gram for {name}"));
        let close = |a: f64, b: f64| (a - b).abs() <= 2e-5 * b.abs().max(1.0);
        let trace = w["trace"].as_f64().expect("trace");
        assert!(close(h.diag().sum(), trace), "{name}: trace {} vs {trace}", h.diag().sum());
        let sum = w["sum"].as_f64().expect("sum");
        assert!(close(h.sum(), sum), "{name}: sum {} vs {sum}", h.sum());
        let corner: Vec<Vec<f64>> = serde_json::from_value(w["corner"].clone()).expect("corner");
        for (i, row) in corner.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                assert!(close(h[[i, j]], v), "{name} [{i},{j}]: {} vs {v}", h[[i, j]]);
            }
        }
        // Symmetric by construction.
        assert_eq!(h, &h.t().to_owned());
    }
    // Another model's sums are refused.
    let mut other = grams.clone();
    other.names[0] = "encoder.layer.0.attention.self.nope.weight".into();
    let before = other.clone();
    assert!(matches!(model.accumulate_input_grams(&batch, &mut other), Err(BertError::TensorShape { .. })));
    assert_eq!(other, before, "a refused batch leaves the sums as they were");
    // The last matrix of another shape, or missing: refused before any sum changes.
    let mut other = grams.clone();
    let last = other.grams.len() - 1;
    other.grams[last] = ndarray::Array2::zeros((2, 2));
    let before = other.clone();
    assert!(matches!(model.accumulate_input_grams(&batch, &mut other), Err(BertError::TensorShape { .. })));
    assert_eq!(other, before);
    let mut other = grams.clone();
    other.names.pop();
    other.grams.pop();
    let before = other.clone();
    assert!(matches!(model.accumulate_input_grams(&batch, &mut other), Err(BertError::TensorShape { .. })));
    assert_eq!(other, before);
    // Accumulating the whole batch onto the sums of its chunks doubles every sum, to rounding.
    let mut twice = grams.clone();
    model.accumulate_input_grams(&batch, &mut twice)?;
    for (a, b) in twice.grams.iter().zip(&grams.grams) {
        assert!(a.iter().zip(b).all(|(x, y)| x.is_finite() && (x - 2.0 * y).abs() <= 1e-9 * y.abs().max(1.0)));
    }
    assert_eq!(twice.tokens, 2 * grams.tokens);
    // One layer's statistics: its six matrices, the same values as in the whole set.
    let layer = model.layer_input_grams(&batch, 3, 1..2)?;
    assert_eq!(layer.names.len(), 6);
    assert_eq!(layer.tokens, grams.tokens);
    for name in &layer.names {
        assert!(name.starts_with("encoder.layer.1."), "{name}");
        assert_eq!(layer.get(name), grams.get(name), "{name}");
    }
    assert!(model.layer_input_grams(&batch, 3, 40..50)?.names.is_empty());
    Ok(())
}
