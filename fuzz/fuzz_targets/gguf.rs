//! Arbitrary bytes -> a GGUF file: `Header::parse` must never panic, and a file that parses
//! must decode (every tensor with a codec) and write back to a file that parses to the same
//! metadata, tensors and data (`quant_gguf::fuzz::exercise`).
//!
//! `cargo fuzz run gguf` (see docs/fuzzing.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    quant_gguf::fuzz::exercise(data);
});
