//! AVX-512 versions of the f32 uniform hot loops, chosen at run time.
//!
//! Each function here computes exactly what its portable counterpart computes, in the same
//! order of operations (the tests compare them bit for bit):
//!
//! | here | portable |
//! |---|---|
//! | [`fused_runs`] | per run: `range::min_max`, `SliceParams::for_spec` (f32 or f16 steps), `kernel::quantize_run` with half-even rounding, and 4-bit packing when asked |
//! | [`fused_equal`] | [`fused_runs`] on contiguous runs of one length; 16 runs of 16, 32, 64 or 128 values at a time go through one unrolled kernel that reduces their sixteen ranges together and packs 64 nibbles per store |
//! | `min_max_runs` (tests only) | `range::min_max` per run (same 16 lanes, same tree reduction, so even the sign of a zero bound agrees) |
//! | [`dequantize_runs`] | `kernel::dequantize_run` per run, from bytes or packed nibbles |
//! | [`dequantize_equal_runs`] | [`dequantize_runs`] on contiguous runs of one length (a multiple of 16); for packed nibbles each run's sixteen possible values computed once, then one permute per sixteen codes; optionally through non-temporal stores |
//! | [`pack4`] / [`unpack4`] | `pack::pack_into` / `pack::unpack_from` at 4 bits |
//!
//! Every entry point takes an [`Avx512`] token, which only a CPU with AVX-512 F and BW
//! gives out; on other CPUs and architectures the portable code runs.
//! The only `unsafe` is the token-checked call into `#[target_feature]` functions and the
//! unaligned (or masked) loads and stores, each on a range the surrounding code has
//! bounds-checked; the prefetch hints may point past the end but never dereference.
//!
//! The files, by job: `mod.rs` (this page: the run-time dispatch macro for multiversioned
//! portable code, and the kernels' shared types), `dispatch.rs` (the safe, token-taking entry
//! points), `x86/quantize.rs` (the fused range + parameters + codes pass), `x86/dequantize.rs`,
//! `x86/pack.rs` (4-bit nibbles), `x86/transpose.rs` (runs laid out column-wise for the table
//! fits) and `tests.rs` (each kernel against its portable counterpart, bit for bit).
#![allow(unsafe_code)]
// Kernel entry points take the CPU token, the data, its runs and its layout as plain
// arguments: bundling them would only move the list into a struct built at each call.
#![allow(clippy::too_many_arguments)]

use crate::spec::Scheme;

/// Defines a function whose body is compiled twice, for the baseline target and for AVX-512
/// (F and BW), and picks the second at run time on CPUs that have it: the same Rust, so the
/// same results (Rust never fuses or reorders float operations), with the wider vector units
/// where the compiler vectorises. The body must be safe code. Exported for the crates of the
/// `quant` family (their elementwise loops); not part of the public API.
#[doc(hidden)]
#[macro_export]
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$($g:ident: $b:path),*>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn plain<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            if let Some(t) = $crate::cpu::Avx512::new() {
                #[target_feature(enable = "avx512f,avx512bw")]
                #[allow(clippy::too_many_arguments)]
                fn wide<$($g: $b),*>(_t: $crate::cpu::Avx512, $($arg: $ty),*) $(-> $ret)? {
                    plain($($arg),*)
                }
                // SAFETY: `t` proves the CPU has AVX-512F and BW, the features `wide`
                // enables; `wide` is safe code.
                #[allow(unsafe_code)]
                return unsafe { wide(t, $($arg),*) };
            }
            plain($($arg),*)
        }
    };
}

pub(crate) use crate::cpu::Avx512;

/// How [`fused_runs`] derives each run's parameters from its range: `SliceParams::for_spec`
/// for the scheme and width, with the step and offset kept in f32 (`ParamDtype::Native`) or
/// rounded to f16 (`ParamDtype::F16`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    pub(crate) scheme: Scheme,
    pub(crate) bits: u8,
    pub(crate) divide: bool,
    pub(crate) f16: bool,
}

/// How [`fused_runs`] lays out the codes it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codes {
    /// One byte per code.
    Bytes,
    /// Two 4-bit codes per byte, the first in the low nibble (the packed 4-bit layout);
    /// every run must start on an even element and have an even length.
    Nibbles,
}

#[cfg(target_arch = "x86_64")]
mod x86;

mod dispatch;
#[cfg(test)]
pub(crate) use dispatch::min_max_runs;
pub(crate) use dispatch::{dequantize_equal_runs, dequantize_runs, fused_equal, fused_runs, pack4, transpose16, unpack4};

#[cfg(test)]
mod tests;
