//! How codes are chosen on a real (tiny) BERT checkpoint: importance-weighted fits and GPTQ in
//! sequential mode.

use std::path::Path;
use std::sync::Arc;

use ndarray::{Array2, s};
use quant_core::{Method, Quantized, UniformSpec};
use quant_models::bert::{Bert, BertTokenizer, TokenBatch};
use quant_ptq::GptqParams;
use quant_qbert::sensitivity::{CandidateRounding, gptq_sequential};

fn setup() -> (Bert<f32>, TokenBatch) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../quant-models/tests/data/bert/plain");
    let model = Bert::<f32>::load(&dir).expect("loads");
    let tok = BertTokenizer::from_dir(&dir, 16).expect("tokenizer");
    let text = ["the cat sat on the mat", "a dog ran in the park", "hello world", "she sells sea shells", "over the lazy dog"];
    (model, tok.encode(&text).expect("encodes"))
}

fn matrix(model: &Bert<f32>, name: &str) -> Array2<f32> {
    let shape = model.tensor_shape(name).expect("shape");
    let block = model.blocks().iter().find(|b| b.name() == name).expect("block");
    model.weights().slice(s![block.range()]).to_owned().into_shape_with_order((shape[0], shape[1])).expect("matrix")
}

fn spec() -> Method {
    Method::Uniform(UniformSpec::builder().bits(3).per_group(1, 8).check().expect("spec"))
}

#[test]
fn weighted_rounding_uses_each_matrixs_importance() {
    let (model, batch) = setup();
    let grams = model.input_grams(&batch, 4).expect("grams");
    let importance = grams.importance();
    let rounding = CandidateRounding::Weighted { importance: Arc::new(importance.clone()) };
    assert_eq!(rounding.name(), "weighted");
    let Method::Uniform(us) = spec() else { unreachable!() };
    for name in &grams.names[..6] {
        let w = matrix(&model, name);
        let h: Vec<f32> = importance.get(name).expect("importance").iter().map(|&v| v as f32).collect();
        let got = rounding.quantize(name, w.view(), &spec()).expect("quantize");
        assert_eq!(got, Quantized::Uniform(quant_core::quantize_weighted(&w, &us, &h).expect("weighted")), "{name}");
    }
    // A matrix without statistics is rounded to nearest.
    let w = matrix(&model, &grams.names[0]);
    let got = rounding.quantize("no.such.matrix", w.view(), &spec()).expect("quantize");
    assert_eq!(got, spec().quantize(&w).expect("nearest"));
}

#[test]
fn sequential_gptq_takes_each_layers_statistics_after_the_earlier_layers_are_quantized() {
    let (model, batch) = setup();
    let params = GptqParams::default();
    let parallel = model.input_grams(&batch, 4).expect("grams");
    let names = parallel.names.clone();
    assert!(names.len() >= 12, "the test model has at least two layers");
    // Skip one matrix of layer 1 to check that `None` leaves a matrix alone.
    let skipped = names[7].clone();
    let seq = gptq_sequential(&model, &batch, 4, &params, |name, _| (name != skipped).then(spec)).expect("sequential");
    assert!(!seq.quantized.contains_key(&skipped));
    assert_eq!(seq.quantized.len(), names.len() - 1);

    // Layer 0 sees the original inputs: the same as GPTQ with the model's own statistics.
    let gptq = CandidateRounding::Gptq { grams: Arc::new(parallel.clone()), params };
    for name in &names[..6] {
        let want = gptq.quantize(name, matrix(&model, name).view(), &spec()).expect("gptq");
        assert_eq!(seq.quantized[name], want, "{name}");
        assert_eq!(seq.grams.get(name), parallel.get(name), "{name}");
    }

    // Layer 1's statistics are those of the model whose layer 0 is quantized, and differ from
    // the original model's.
    let mut quantized0 = model.clone();
    for name in &names[..6] {
        let deq = seq.quantized[name].dequantize();
        quantized0.set_tensor(name, deq.as_slice().expect("contiguous")).expect("set");
    }
    let after0 = quantized0.input_grams(&batch, 4).expect("grams");
    let name = &names[6];
    assert_eq!(seq.grams.get(name), after0.get(name));
    assert_ne!(after0.get(name), parallel.get(name));
    let want = CandidateRounding::Gptq { grams: Arc::new(after0.clone()), params }
        .quantize(name, matrix(&model, name).view(), &spec())
        .expect("gptq");
    assert_eq!(seq.quantized[name], want);
}
