//! `quant quantize --format gguf`, and GGUF input to `inspect`, `dequantize` and `embed`, on
//! tiny BERT checkpoints (no download).

use std::path::{Path, PathBuf};

use quant::gguf::{GgmlType, GgufFile, Value, codec};
use quant::models::bert::{Bert, BertConfig, HiddenAct, Pooling, hf_tensor_name};
use safetensors::SafeTensors;

mod common;
use common::{TestResult, embeddings, f32s, quant, s};

fn scratch(name: &str) -> PathBuf {
    common::scratch("gguf", name)
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A model directory like the tiny `plain` one but 256 wide (so the k-quants fit its rows),
/// with seeded random weights.
fn wide_model(dir: &Path, layers: usize) -> TestResult {
    let plain = common::tiny_model("plain");
    for f in ["tokenizer.json", "modules.json"] {
        std::fs::copy(plain.join(f), dir.join(f))?;
    }
    std::fs::create_dir_all(dir.join("1_Pooling"))?;
    std::fs::copy(plain.join("1_Pooling/config.json"), dir.join("1_Pooling/config.json"))?;
    let config = BertConfig {
        hidden_size: 256,
        num_attention_heads: 4,
        num_hidden_layers: layers,
        intermediate_size: 512,
        vocab_size: 104,
        max_position_embeddings: 16,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: HiddenAct::Gelu,
    };
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"model_type": "bert", "hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": {layers},
                "intermediate_size": 512, "vocab_size": 104, "max_position_embeddings": 16, "type_vocab_size": 2,
                "layer_norm_eps": 1e-12, "hidden_act": "gelu"}}"#
        ),
    )?;
    let model = Bert::<f32>::random(config, Pooling::default(), 7)?;
    let w = model.weights();
    let mut data = Vec::new();
    for b in model.blocks() {
        let bytes: Vec<u8> = w.slice(quant::ndarray::s![b.range()]).iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((b.name().to_string(), model.tensor_shape(b.name()).ok_or("shape")?, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, shape, bytes)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))?;
    Ok(())
}

#[test]
fn writes_llama_cpp_bert_names_keys_and_vocabulary() -> TestResult {
    let d = scratch("names");
    let out = d.join("m.gguf");
    ok(&quant(&["quantize", s(&common::tiny_model("plain")), "-o", s(&out), "--type", "q8_0", "--quiet"]));
    let f = GgufFile::open(&out)?;
    let h = f.header();
    let u = |k: &str| h.get(k).and_then(Value::as_u64);
    assert_eq!(h.get("general.architecture").and_then(Value::as_str), Some("bert"));
    assert_eq!(u("bert.block_count"), Some(2));
    assert_eq!(u("bert.embedding_length"), Some(32));
    assert_eq!(u("bert.feed_forward_length"), Some(64));
    assert_eq!(u("bert.attention.head_count"), Some(4));
    assert_eq!(u("bert.context_length"), Some(16));
    assert_eq!(u("bert.pooling_type"), Some(1));
    assert_eq!(u("general.file_type"), Some(7));
    assert_eq!(h.get("tokenizer.ggml.model").and_then(Value::as_str), Some("bert"));
    match h.get("tokenizer.ggml.tokens") {
        Some(Value::Array(_, items)) => {
            assert_eq!(items.len(), 104);
            // WordPiece continuations lose "##"; word starts gain U+2581.
            let words: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            assert!(words.iter().all(|w| !w.starts_with("##")));
            assert!(words.iter().any(|w| w.starts_with('\u{2581}')));
        }
        other => panic!("tokens: {other:?}"),
    }
    // Every tensor under llama.cpp's name; matrices q8_0, everything 1-D f32, position and
    // token-type tables f32 as llama.cpp's quantizer leaves them.
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    for n in [
        "token_embd.weight",
        "position_embd.weight",
        "token_types.weight",
        "token_embd_norm.bias",
        "blk.1.ffn_down.weight",
        "blk.0.layer_output_norm.weight",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    for t in &h.tensors {
        let want = if t.dims.len() == 1 || t.name == "position_embd.weight" || t.name == "token_types.weight" {
            GgmlType::F32
        } else {
            GgmlType::Q8_0
        };
        assert_eq!(t.ggml_type, want, "{}", t.name);
        assert!(hf_tensor_name(&t.name).is_some(), "{}", t.name);
    }
    std::fs::remove_dir_all(&d)?;
    Ok(())
}

#[test]
fn embeddings_of_the_gguf_equal_those_of_its_dequantized_safetensors() -> TestResult {
    let d = scratch("embed");
    let plain = common::tiny_model("plain");
    let g = d.join("m.gguf");
    ok(&quant(&["quantize", s(&plain), "-o", s(&g), "--type", "q4_0", "--quiet"]));
    // dequantize: every tensor, f32, under the checkpoint's names, equal to the decoder's values.
    let deq_dir = d.join("deq");
    std::fs::create_dir_all(deq_dir.join("1_Pooling"))?;
    for f in ["config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"] {
        std::fs::copy(plain.join(f), deq_dir.join(f))?;
    }
    ok(&quant(&["dequantize", s(&g), "-o", s(&deq_dir.join("model.safetensors")), "--quiet"]));
    let bytes = std::fs::read(deq_dir.join("model.safetensors"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let f = GgufFile::open(&g)?;
    for t in &f.header().tensors {
        let name = hf_tensor_name(&t.name).ok_or("name")?;
        let view = st.tensor(&name)?;
        assert_eq!(view.shape(), t.shape().as_slice(), "{name}");
        assert_eq!(f32s(view.data()), codec::dequantize(t.ggml_type, f.data(t), t.elements() as usize)?, "{name}");
    }
    // embed with --weights model.gguf and with the dequantized directory: the same bits.
    let text = d.join("s.txt");
    std::fs::write(&text, "Hello world\nthe cat sat on the mat\nthe dog ran\n")?;
    let (a, b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    ok(&quant(&["embed", s(&plain), "--text", s(&text), "--weights", s(&g), "-o", s(&a), "--quiet"]));
    ok(&quant(&["embed", s(&deq_dir), "--text", s(&text), "-o", s(&b), "--quiet"]));
    let (ea, eb) = (embeddings(&a)?.1, embeddings(&b)?.1);
    assert_eq!(ea, eb);
    // and the quantized weights did change them.
    let c = d.join("c.safetensors");
    ok(&quant(&["embed", s(&plain), "--text", s(&text), "-o", s(&c), "--quiet"]));
    assert_ne!(embeddings(&c)?.1, ea);
    // inspect lists the tensors with their types.
    let o = quant(&["inspect", s(&g), "--json"]);
    ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(r["format"], "gguf");
    assert_eq!(r["tensors"].as_array().map(Vec::len), Some(f.header().tensors.len()));
    std::fs::remove_dir_all(&d)?;
    Ok(())
}

#[test]
fn q4_k_m_recipe_follows_llama_cpp_and_k_quants_decode_well() -> TestResult {
    let d = scratch("recipe");
    wide_model(&d, 8)?;
    let g = d.join("m.gguf");
    let o = quant(&["quantize", s(&d), "-o", s(&g), "--recipe", "q4_k_m", "--json", "--quiet"]);
    ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(r["file_type"], 15);
    let f = GgufFile::open(&g)?;
    let ty = |n: &str| f.header().tensor(n).map(|t| t.ggml_type);
    // Eight layers: use_more_bits is true for layers 0, 3, 6, 7 (first and last eighth, every
    // third between).
    for layer in 0..8 {
        let wide = [0, 3, 6, 7].contains(&layer);
        let want = if wide { GgmlType::Q6_K } else { GgmlType::Q4_K };
        assert_eq!(ty(&format!("blk.{layer}.attn_v.weight")), Some(want), "layer {layer}");
        assert_eq!(ty(&format!("blk.{layer}.ffn_down.weight")), Some(want), "layer {layer}");
        assert_eq!(ty(&format!("blk.{layer}.attn_q.weight")), Some(GgmlType::Q4_K), "layer {layer}");
        assert_eq!(ty(&format!("blk.{layer}.ffn_up.weight")), Some(GgmlType::Q4_K), "layer {layer}");
    }
    // Tied to the (absent) output matrix, as llama.cpp's quantizer sees BERT: q6_K.
    assert_eq!(ty("token_embd.weight"), Some(GgmlType::Q6_K));
    assert_eq!(r["fallbacks"], 0);
    // Every quantized matrix keeps its signal: Gaussian weights at 4 bits are near 20 dB.
    for t in r["tensors"].as_array().ok_or("tensors")? {
        if let Some(db) = t["sqnr_db"].as_f64() {
            assert!(db > 18.0, "{t}");
        }
    }
    std::fs::remove_dir_all(&d)?;
    Ok(())
}

#[test]
fn narrow_rows_fall_back_as_llama_cpp_does_and_say_so() -> TestResult {
    let d = scratch("fallback");
    let g = d.join("m.gguf");
    let o = quant(&["quantize", s(&common::tiny_model("plain")), "-o", s(&g), "--type", "q4_k", "--json", "--quiet"]);
    ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let tensors = r["tensors"].as_array().ok_or("tensors")?;
    let up = tensors.iter().find(|t| t["gguf_name"] == "blk.0.ffn_up.weight").ok_or("ffn_up")?;
    assert_eq!(up["requested"], "q4_K");
    assert_eq!(up["type"], "q5_0");
    assert!(up["fallback"].as_str().is_some_and(|f| f.contains("32")), "{up}");
    assert_eq!(r["fallbacks"].as_u64(), Some(tensors.iter().filter(|t| !t["fallback"].is_null()).count() as u64));
    std::fs::remove_dir_all(&d)?;
    Ok(())
}

#[test]
fn bad_requests_are_refused_with_the_reason() -> TestResult {
    let d = scratch("refuse");
    let plain = common::tiny_model("plain");
    let g = d.join("m.gguf");
    let err = |args: &[&str]| {
        let o = quant(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(err(&["quantize", s(&plain), "-o", s(&g)]).contains("--type"));
    assert!(err(&["quantize", s(&plain), "-o", s(&g), "--type", "q9_9"]).contains("unknown GGML type"));
    assert!(err(&["quantize", s(&plain), "-o", s(&g), "--type", "iq2_xxs"]).contains("no encoder"));
    assert!(err(&["quantize", s(&plain), "-o", s(&g), "--type", "q4_0", "--bits", "4"]).contains("--bits"));
    assert!(!g.exists());
    // A GGUF that is not one: a typed error, not a panic.
    std::fs::write(&g, b"GGUF\x03\x00\x00\x00garbage")?;
    let e = err(&["inspect", s(&g)]);
    assert!(e.starts_with("error:"), "{e}");
    std::fs::remove_dir_all(&d)?;
    Ok(())
}

#[test]
fn the_allocator_spends_the_budget_where_the_trace_says() -> TestResult {
    let d = scratch("allocate");
    wide_model(&d, 2)?;
    let text = d.join("cal.txt");
    std::fs::write(&text, "the cat sat on the mat\nhello world\nthe dog ran far\na cat and a dog\nworld of cats\nthe mat\n")?;
    let sens = d.join("sens.json");
    ok(&quant(&[
        "sensitivity",
        s(&d),
        "--calibration",
        s(&text),
        "--subsets",
        "2",
        "--per-subset",
        "3",
        "--bits",
        "4",
        "--granularity",
        "group:32",
        "-o",
        s(&sens),
    ]));
    let g = d.join("m.gguf");
    let o = quant(&["quantize", s(&d), "-o", s(&g), "--sensitivity", s(&sens), "--target-bpw", "5", "--json", "--quiet"]);
    ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let a = &r["allocation"];
    assert_eq!(a["metric"], "trace");
    let bpw = a["bits_per_weight"].as_f64().ok_or("bpw")?;
    assert!(bpw <= 5.0 + 1e-9, "{bpw}");
    let chosen = a["tensors"].as_array().ok_or("tensors")?;
    assert_eq!(chosen.len(), 12);
    // The file holds the chosen types; the word embeddings are q8_0, outside the budget.
    let f = GgufFile::open(&g)?;
    for t in chosen {
        let name = quant::models::bert::gguf_tensor_name(t["name"].as_str().ok_or("name")?).ok_or("gguf name")?;
        assert_eq!(f.header().tensor(&name).map(|i| i.ggml_type.to_string()), t["type"].as_str().map(str::to_string), "{name}");
    }
    assert_eq!(f.header().tensor("token_embd.weight").map(|t| t.ggml_type), Some(GgmlType::Q8_0));
    // No single type that fits the budget predicts less: the allocation is at most the best
    // uniform assignment (every matrix's trace times its measured perturbation).
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&sens)?)?;
    let model = Bert::<f32>::load(&d)?;
    let total = a["predicted"].as_f64().ok_or("predicted")?;
    for ty in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q4_0, GgmlType::Q4_1] {
        let (mut pred, mut bits, mut n) = (0.0, 0.0, 0.0);
        for m in report["matrices"].as_array().ok_or("matrices")? {
            let name = m["name"].as_str().ok_or("name")?;
            let b = model.blocks().iter().find(|b| b.name() == name).ok_or("block")?;
            let x = &model.weights().to_vec()[b.range()];
            let y = codec::dequantize(ty, &codec::quantize(ty, x)?, x.len())?;
            let d2: f64 = x.iter().zip(&y).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
            pred += m["average_trace"].as_f64().ok_or("trace")?.abs() * d2;
            bits += 8.0 * ty.bytes_for(256, x.len() as u64).ok_or("bytes")? as f64;
            n += x.len() as f64;
        }
        if bits / n <= 5.0 {
            assert!(total <= pred * (1.0 + 1e-9), "{ty}: uniform {pred} < allocated {total}");
        }
    }
    // The word embeddings' type can be chosen (outside the budget).
    let o = quant(&[
        "quantize",
        s(&d),
        "-o",
        s(&g),
        "--force",
        "--sensitivity",
        s(&sens),
        "--target-bpw",
        "5",
        "--embedding-type",
        "q4_0",
        "--quiet",
    ]);
    ok(&o);
    assert_eq!(GgufFile::open(&g)?.header().tensor("token_embd.weight").map(|t| t.ggml_type), Some(GgmlType::Q4_0));
    // quadratic has no meaning for GGML types here: refused with the reason.
    let o = quant(&["quantize", s(&d), "-o", s(&g), "--force", "--sensitivity", s(&sens), "--target-bpw", "5", "--metric", "quadratic"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("trace"));
    std::fs::remove_dir_all(&d)?;
    Ok(())
}
