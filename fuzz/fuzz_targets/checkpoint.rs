//! Arbitrary bytes through the quantized-checkpoint reader (header parser, metadata, parts,
//! rebuild, dequantize): never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    quant::checkpoint::exercise_reader(data);
});
