//! CPU features, detected in one place. Each token type's constructor returns a value only on
//! a CPU with every feature the kernels taking that token enable (memchr's style); a kernel
//! that needs a feature takes the token, so no safe path reaches it on the wrong CPU. The
//! unit test below reads this crate's sources and checks that every
//! `#[target_feature(enable = ...)]` function taking a token enables only features its
//! token's constructor checked.
#![allow(unsafe_code)]

/// Defines a CPU-feature token type: `Name::new()` is `Some` only when the CPU has every
/// listed feature; `Name::FEATURES` lists them. Used by the crates of the `quant` family for
/// their own tokens; not part of the public API.
#[doc(hidden)]
#[macro_export]
macro_rules! cpu_token {
    ($(#[$m:meta])* $vis:vis struct $name:ident = [$($feature:tt),+ $(,)?];) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name {
            _proof: (),
        }

        #[allow(dead_code)]
        impl $name {
            /// The features the constructor checks (x86-64 names).
            $vis const FEATURES: &'static [&'static str] = &[$($feature),+];

            /// The token, when this CPU has every feature in [`Self::FEATURES`].
            #[inline]
            $vis fn new() -> Option<Self> {
                #[cfg(target_arch = "x86_64")]
                {
                    if $(std::is_x86_feature_detected!($feature))&&+ {
                        return Some(Self { _proof: () });
                    }
                }
                None
            }
        }
    };
}

cpu_token! {
    /// AVX-512 F and BW: the f32 uniform quantize, dequantize and pack kernels.
    pub struct Avx512 = ["avx512f", "avx512bw"];
}

cpu_token! {
    /// AVX-512 F, BW and VNNI: the int8 GEMM kernel.
    pub(crate) struct Avx512Vnni = ["avx512f", "avx512bw", "avx512vnni"];
}

cpu_token! {
    /// AVX-512 F, DQ and VL: fixed-point requantization.
    pub(crate) struct Avx512Dq = ["avx512f", "avx512dq", "avx512vl"];
}

cpu_token! {
    /// AVX2: the int8 GEMM fallback kernel.
    pub(crate) struct Avx2 = ["avx2"];
}

cpu_token! {
    /// AVX: `vzeroupper` ([`clear_upper_vector_state`]).
    pub(crate) struct Avx = ["avx"];
}

/// Clears the upper halves of the vector registers (`vzeroupper`) on an x86-64 CPU with AVX;
/// does nothing elsewhere. Not part of the public API: for the crates of the family, after
/// calling a foreign kernel that may return with them dirty.
///
/// Compiled code clears them itself on leaving AVX code, but hand-written kernels need not
/// (faer's matrix-product micro-kernels do not). Until the state is cleared, every
/// legacy-SSE instruction (the baseline x86-64 build's floating-point code, `libm`'s `erff`
/// and `expf` among it) is slowed by merging into the dirty upper halves: a MiniLM forward
/// pass ran 1.4–1.5x slower after faer's `f32` products without this call
/// (docs/benchmarks.md).
#[doc(hidden)]
#[inline]
pub fn clear_upper_vector_state() {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx) = Avx::new() {
        // SAFETY: the token proves the CPU has AVX, the only feature `vzeroupper` enables.
        unsafe { vzeroupper(avx) }
    }
}

/// `vzeroupper`: no memory access, and no vector value is live across this call's boundary
/// (the calling convention keeps none in the upper halves), so nothing observable changes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn vzeroupper(_avx: Avx) {
    core::arch::x86_64::_mm256_zeroupper();
}

/// The checks the unit test of every crate with tokens runs over its own sources: each
/// function with `#[target_feature(enable = "...")]` either takes a token parameter whose
/// `FEATURES` include every enabled feature, or is a private helper enabling no feature
/// beyond some token's (it can only be called from a function that has them). Returns one
/// line per violation.
#[doc(hidden)]
pub fn target_feature_violations(sources: &[(&str, &str)], tokens: &[(&str, &[&str])]) -> Vec<String> {
    let mut bad = Vec::new();
    for (file, text) in sources {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.trim().strip_prefix("#[target_feature(enable = \"") else { continue };
            let enabled: Vec<&str> = rest.split('"').next().unwrap_or("").split(',').map(str::trim).collect();
            // The signature: from the next line starting a function to its body.
            let Some(start) = (i + 1..lines.len()).find(|&j| lines[j].contains("fn ")) else {
                bad.push(format!("{file}:{}: no function after the attribute", i + 1));
                continue;
            };
            let end = (start..lines.len()).find(|&j| lines[j].contains('{')).unwrap_or(lines.len() - 1);
            let signature = lines[start..=end].join(" ");
            let token = tokens.iter().find(|(name, _)| takes(&signature, name));
            match token {
                Some((name, features)) => {
                    for f in &enabled {
                        if !features.contains(f) {
                            bad.push(format!("{file}:{}: enables {f}, which {name}::new() does not check", i + 1));
                        }
                    }
                }
                None => {
                    let public = signature.trim_start().starts_with("pub");
                    let covered = tokens.iter().any(|(_, features)| enabled.iter().all(|f| features.contains(f)));
                    if public || !covered {
                        bad.push(format!("{file}:{}: a target_feature function without a token parameter", i + 1));
                    }
                }
            }
        }
    }
    bad
}

/// Whether a signature has a parameter of type `name` (or `crate::cpu::name`, or
/// `$crate::cpu::name` as [`multiversion!`](crate::multiversion) names it), matched as a whole
/// word.
fn takes(signature: &str, name: &str) -> bool {
    [format!(": {name}"), format!(": crate::cpu::{name}"), format!(": $crate::cpu::{name}")].iter().any(|pat| {
        signature
            .match_indices(pat.as_str())
            .any(|(at, _)| signature[at + pat.len()..].chars().next().is_none_or(|c| !(c.is_alphanumeric() || c == '_')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: &[(&str, &[&str])] = &[
        ("Avx512", Avx512::FEATURES),
        ("Avx512Vnni", Avx512Vnni::FEATURES),
        ("Avx512Dq", Avx512Dq::FEATURES),
        ("Avx2", Avx2::FEATURES),
        ("Avx", Avx::FEATURES),
    ];

    #[test]
    fn every_kernel_enables_only_what_its_token_checked() {
        let sources = [
            ("simd/mod.rs", include_str!("simd/mod.rs")),
            ("simd/dispatch.rs", include_str!("simd/dispatch.rs")),
            ("simd/x86/mod.rs", include_str!("simd/x86/mod.rs")),
            ("simd/x86/quantize.rs", include_str!("simd/x86/quantize.rs")),
            ("simd/x86/dequantize.rs", include_str!("simd/x86/dequantize.rs")),
            ("simd/x86/pack.rs", include_str!("simd/x86/pack.rs")),
            ("simd/x86/transpose.rs", include_str!("simd/x86/transpose.rs")),
            ("integer/gemm.rs", include_str!("integer/gemm.rs")),
            ("cpu.rs", include_str!("cpu.rs")),
        ];
        let bad = target_feature_violations(&sources, TOKENS);
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn the_check_catches_a_kernel_enabling_more_than_its_token() {
        // The shape of the old requantize bug: the dispatch checked F and DQ, the kernel
        // enabled VL as well.
        let src = "#[target_feature(enable = \"avx512f,avx512dq,avx512vl\")]\nfn k(_t: Narrow, x: &[i32]) {\n}\n#[target_feature(enable = \"avx2\")]\npub fn open(x: &[i32]) {\n}\n";
        let bad = target_feature_violations(&[("x.rs", src)], &[("Narrow", &["avx512f", "avx512dq"])]);
        assert_eq!(bad.len(), 2, "{bad:#?}");
        assert!(bad[0].contains("avx512vl"));
        assert!(bad[1].contains("without a token"));
    }

    #[test]
    fn tokens_agree_with_detection() {
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(Avx2::new().is_some(), std::is_x86_feature_detected!("avx2"));
            assert_eq!(Avx::new().is_some(), std::is_x86_feature_detected!("avx"));
            assert_eq!(
                Avx512Dq::new().is_some(),
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
            );
        }
    }
}
