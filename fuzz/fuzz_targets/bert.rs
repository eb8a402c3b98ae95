//! Arbitrary bytes through the BERT-family loader (config.json, model.safetensors, the
//! pooling config, the text-file splitter, the statistics and imatrix readers) and a forward
//! pass: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    quant::models::bert::exercise_loader(data);
});
