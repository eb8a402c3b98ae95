//! Arbitrary bytes -> spec, shape, f32 bit patterns (NaN, infinities, subnormals) and packed
//! codes; every public entry point of the uniform quantizer must return `Ok` or a typed error,
//! never panic, and never turn finite input into non-finite output.
//!
//! `cargo fuzz run uniform` (see docs/fuzzing.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Inputs are capped so each run stays fast; the shape is at most 6x6x6 anyway.
    if data.len() > 4096 {
        return;
    }
    if let Err(v) = quant_core::fuzz::exercise(data) {
        panic!("invariant broken: {v}");
    }
});
