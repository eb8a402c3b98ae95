//! Arbitrary bytes -> ternary / k-means specs, shape, f32 bit patterns and a curvature
//! estimate; ternary, binary, stochastic, LAT and k-means quantization, centroid gradients and
//! table steps must never panic and never turn finite input into non-finite output.
//!
//! `cargo fuzz run codebook` (see docs/fuzzing.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > 4096 {
        return;
    }
    if let Err(v) = quant_core::fuzz::exercise_codebook(data) {
        panic!("invariant broken: {v}");
    }
});
