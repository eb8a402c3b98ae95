//! Input statistics on disk: the safetensors statistics file and llama.cpp's imatrix format.
#![cfg(feature = "bert")]

use std::path::PathBuf;

use ndarray::array;
use quant_models::bert::{Bert, BertError, Importance, InputGrams, Sentence, TokenBatch, llama_cpp_name};

fn data(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bert").join(dir)
}

fn grams() -> Result<InputGrams, BertError> {
    let model = Bert::<f32>::load(&data("plain"))?;
    let batch = TokenBatch::new(vec![
        Sentence { ids: vec![2, 7, 9, 11, 3], type_ids: vec![0; 5] },
        Sentence { ids: vec![2, 5, 3], type_ids: vec![0; 3] },
    ])?;
    model.input_grams(&batch, 8)
}

fn is_statistics_error<T: std::fmt::Debug>(r: Result<T, BertError>) -> bool {
    matches!(r, Err(BertError::Statistics { .. }))
}

#[test]
fn the_statistics_file_round_trips_with_the_same_bytes() -> Result<(), BertError> {
    let g = grams()?;
    let bytes = g.to_safetensors()?;
    assert_eq!(bytes, g.to_safetensors()?, "the same statistics give the same bytes");
    let back = InputGrams::from_safetensors(&bytes)?;
    assert_eq!(back.tokens, g.tokens);
    assert_eq!(back.names.len(), g.names.len());
    for name in &g.names {
        assert_eq!(back.get(name), g.get(name), "{name}");
    }
    Ok(())
}

#[test]
fn malformed_statistics_files_are_typed_errors() -> Result<(), BertError> {
    let g = grams()?;
    let bytes = g.to_safetensors()?;
    assert!(is_statistics_error(InputGrams::from_safetensors(&bytes[..bytes.len() / 2])));
    assert!(is_statistics_error(InputGrams::from_safetensors(b"not a file")));
    // No token count: a checkpoint, not statistics.
    let ckpt = std::fs::read(data("plain").join("model.safetensors")).expect("checkpoint");
    assert!(is_statistics_error(InputGrams::from_safetensors(&ckpt)));
    // A matrix that is not square, a non-finite value.
    let bad = InputGrams { names: vec!["a".into()], grams: vec![array![[1.0, 2.0]]], tokens: 3 };
    assert!(is_statistics_error(bad.to_safetensors()));
    let nan = InputGrams { names: vec!["a".into()], grams: vec![array![[f64::NAN]]], tokens: 3 };
    assert!(is_statistics_error(InputGrams::from_safetensors(&nan.to_safetensors()?)));
    // Every truncation and single-byte change of a valid file: an error or a value, no panic.
    for cut in (0..bytes.len()).step_by(5) {
        assert!(InputGrams::from_safetensors(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    for i in (0..bytes.len()).step_by(7) {
        let mut m = bytes.clone();
        m[i] ^= 0xa5;
        let _ = InputGrams::from_safetensors(&m);
    }
    let twice = InputGrams { names: vec!["a".into(), "a".into()], grams: vec![array![[1.0]], array![[2.0]]], tokens: 3 };
    assert!(is_statistics_error(twice.to_safetensors()));
    Ok(())
}

#[test]
fn llama_cpp_names_follow_its_bert_converter() {
    for (hf, llama) in [
        ("encoder.layer.0.attention.self.query.weight", "blk.0.attn_q.weight"),
        ("bert.encoder.layer.11.attention.self.key.weight", "blk.11.attn_k.weight"),
        ("encoder.layer.3.attention.self.value.bias", "blk.3.attn_v.bias"),
        ("encoder.layer.5.attention.output.dense.weight", "blk.5.attn_output.weight"),
        ("encoder.layer.2.intermediate.dense.weight", "blk.2.ffn_up.weight"),
        ("encoder.layer.2.output.dense.weight", "blk.2.ffn_down.weight"),
    ] {
        assert_eq!(llama_cpp_name(hf).as_deref(), Some(llama), "{hf}");
    }
    for other in ["embeddings.word_embeddings.weight", "encoder.layer.x.output.dense.weight", "encoder.layer.1.output.LayerNorm.weight"] {
        assert_eq!(llama_cpp_name(other), None, "{other}");
    }
}

#[test]
fn the_imatrix_layout_is_llama_cpps() -> Result<(), BertError> {
    // Written by hand from llama.cpp's save_imatrix_legacy: entry count, then per entry the
    // name's length and bytes, ncall, value count and f32 values; then the chunk count and the
    // dataset name. Entries in name order, under llama.cpp's names.
    let imp = Importance {
        names: vec!["encoder.layer.0.output.dense.weight".into(), "encoder.layer.0.attention.self.query.weight".into()],
        values: vec![vec![0.5, 2.0], vec![1.0, 0.25, 4.0]],
        tokens: 10,
    };
    let bytes = imp.to_imatrix("wn.txt")?;
    let mut want: Vec<u8> = Vec::new();
    let i = |v: i32| v.to_le_bytes();
    want.extend(i(2));
    for (name, vals) in [("blk.0.attn_q.weight", &[1.0f32, 0.25, 4.0][..]), ("blk.0.ffn_down.weight", &[0.5, 2.0][..])] {
        want.extend(i(name.len() as i32));
        want.extend(name.as_bytes());
        want.extend(i(1));
        want.extend(i(vals.len() as i32));
        for v in vals {
            want.extend(v.to_le_bytes());
        }
    }
    want.extend(i(1));
    want.extend(i(6));
    want.extend(b"wn.txt");
    assert_eq!(bytes, want);
    // Read back: found under the checkpoint's names too.
    let back = Importance::from_imatrix(&bytes)?;
    assert_eq!(back.get("encoder.layer.0.attention.self.query.weight"), Some(&[1.0, 0.25, 4.0][..]));
    assert_eq!(back.get("blk.0.ffn_down.weight"), Some(&[0.5, 2.0][..]));
    assert_eq!(back.get("encoder.layer.1.output.dense.weight"), None);
    Ok(())
}

#[test]
fn imatrix_values_are_divided_by_ncall_and_bad_files_refused() -> Result<(), BertError> {
    let entry = |ncall: i32, vals: &[f32]| {
        let mut b: Vec<u8> = Vec::new();
        b.extend(1i32.to_le_bytes());
        b.extend(1i32.to_le_bytes());
        b.extend(b"x");
        b.extend(ncall.to_le_bytes());
        b.extend((vals.len() as i32).to_le_bytes());
        for v in vals {
            b.extend(v.to_le_bytes());
        }
        b
    };
    // No trailer (older files): accepted; values are means times ncall.
    let imp = Importance::from_imatrix(&entry(4, &[8.0, 2.0]))?;
    assert_eq!(imp.get("x"), Some(&[2.0, 0.5][..]));
    let ok = entry(1, &[1.0]);
    for cut in 0..ok.len() {
        assert!(is_statistics_error(Importance::from_imatrix(&ok[..cut])), "cut at {cut}");
    }
    assert!(is_statistics_error(Importance::from_imatrix(&entry(0, &[1.0]))));
    assert!(is_statistics_error(Importance::from_imatrix(&entry(1, &[-1.0]))));
    assert!(is_statistics_error(Importance::from_imatrix(&entry(1, &[f32::NAN]))));
    assert!(is_statistics_error(Importance::from_imatrix(&0i32.to_le_bytes())));
    let mut huge = 1i32.to_le_bytes().to_vec();
    huge.extend(i32::MAX.to_le_bytes());
    assert!(is_statistics_error(Importance::from_imatrix(&huge)));
    Ok(())
}

#[test]
fn importance_is_the_mean_square_of_each_input() -> Result<(), BertError> {
    let g = grams()?;
    let imp = g.importance();
    for name in &g.names {
        let h = g.get(name).expect("gram");
        let v = imp.get(name).expect("importance");
        for (j, &x) in v.iter().enumerate() {
            assert_eq!(x, h[[j, j]] / g.tokens as f64);
        }
    }
    // Through the imatrix file and back, to f32 precision.
    let back = Importance::from_imatrix(&imp.to_imatrix("t")?)?;
    for name in &g.names {
        let (a, b) = (imp.get(name).expect("a"), back.get(name).expect("b"));
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs()), "{name}");
    }
    Ok(())
}
