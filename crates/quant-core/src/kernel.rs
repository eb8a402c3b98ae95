//! The per-slice scalar kernels: quantize, fake-quantize and dequantize one contiguous run.
//!
//! Every path that produces a dequantized value goes through [`Kernel::dequant`], so
//! `dequantize(quantize(x))` and `fake_quantize(x)` agree bit for bit by construction.

use crate::float::Float;
use crate::params::SliceParams;
use crate::rng;
use crate::spec::{Rounding, ScaleMode};

/// Scaled values are clamped to ±2^20 before rounding: far outside every code range (so the
/// clamp changes no code and no STE mask bit) and small enough for exact integer conversion.
const LIMIT: f64 = 1_048_576.0;

/// One slice's parameters prepared for the inner loops.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kernel<F> {
    s: F,
    inv: F,
    m: F,
    z: F,
    zi: i32,
    umax: F,
    divide: bool,
}

#[inline(always)]
fn fmax<F: Float>(a: F, b: F) -> F {
    if a > b { a } else { b }
}

#[inline(always)]
fn fmin<F: Float>(a: F, b: F) -> F {
    if a < b { a } else { b }
}

impl<F: Float> Kernel<F> {
    pub(crate) fn new(p: &SliceParams<F>, max_code: u8, mode: ScaleMode) -> Self {
        Self {
            s: p.scale,
            inv: F::one() / p.scale,
            m: p.offset,
            z: F::from_int(p.zero_point),
            zi: p.zero_point,
            umax: F::from_int(i32::from(max_code)),
            divide: matches!(mode, ScaleMode::Divide),
        }
    }

    /// `(x − m)/S` as the scale mode says, clamped to ±[`LIMIT`].
    #[inline(always)]
    fn scaled(&self, x: F, divide: bool) -> F {
        let d = x - self.m;
        let y = if divide { d / self.s } else { d * self.inv };
        let lim = F::cast(LIMIT);
        fmin(fmax(y, -lim), lim)
    }

    /// The dequantized value of code `u`: `S·(u − Z) + m`.
    #[inline(always)]
    pub(crate) fn dequant(&self, u: i32) -> F {
        F::from_int(u - self.zi) * self.s + self.m
    }

    /// The unclamped integer `round((x − m)/S) + Z` (as a float).
    #[inline(always)]
    fn unclamped<R: Fn(F, usize) -> F>(&self, x: F, j: usize, divide: bool, round: &R) -> F {
        round(self.scaled(x, divide), j) + self.z
    }

    #[inline(always)]
    fn clamp_code(&self, q: F) -> i32 {
        fmin(fmax(q, F::zero()), self.umax).to_i32_saturating()
    }

    /// The code of one value with half-even rounding (used by searches and checks).
    #[inline]
    pub(crate) fn code_half_even(&self, x: F) -> i32 {
        self.clamp_code(self.unclamped(x, 0, self.divide, &|y: F, _| y.round_ties_even_bounded()))
    }
}

/// Runs `body` with the rounding closure for `rounding`; `base` is the row-major index of
/// the run's first element (stochastic rounding draws element `base + j`'s number).
macro_rules! with_rounding {
    ($rounding:expr, $base:expr, |$round:ident| $body:expr) => {
        match $rounding {
            Rounding::HalfEven => {
                // `scaled` bounds |y| by 2^20.
                let $round = |y: F, _j: usize| y.round_ties_even_bounded();
                $body
            }
            Rounding::HalfAwayFromZero => {
                let $round = |y: F, _j: usize| y.round();
                $body
            }
            Rounding::Stochastic { seed } => {
                let base = $base;
                // floor(y + u), u uniform in [0, 1): up with probability frac(y). Done in f64 so
                // that u never rounds up to 1.
                let $round = move |y: F, j: usize| F::cast((y.as_f64() + rng::unit(seed, (base + j) as u64)).floor());
                $body
            }
        }
    };
}

/// Quantizes `xs` (a run sharing one slice) into `codes`. (Always inlined, so that callers
/// compiled for wider vector units vectorise it for them.)
#[inline(always)]
pub(crate) fn quantize_run<F: Float>(k: &Kernel<F>, rounding: Rounding, base: usize, xs: &[F], codes: &mut [u8]) {
    if rounding == Rounding::HalfEven {
        // The default mode's fast path: clamp in the scaled domain, then one fused
        // round-offset-convert step (see `Float::half_even_code`). Same codes as below.
        let (lo, hi) = (-k.z, k.umax - k.z);
        if k.divide {
            for (&x, c) in xs.iter().zip(codes.iter_mut()) {
                *c = F::half_even_code((x - k.m) / k.s, lo, hi, k.z);
            }
        } else {
            for (&x, c) in xs.iter().zip(codes.iter_mut()) {
                *c = F::half_even_code((x - k.m) * k.inv, lo, hi, k.z);
            }
        }
        return;
    }
    #[inline(always)]
    fn go<F: Float, R: Fn(F, usize) -> F>(k: &Kernel<F>, xs: &[F], codes: &mut [u8], divide: bool, round: R) {
        for (j, (&x, c)) in xs.iter().zip(codes.iter_mut()).enumerate() {
            let q = k.unclamped(x, j, divide, &round);
            *c = fmin(fmax(q, F::zero()), k.umax).small_int_to_u8();
        }
    }
    with_rounding!(rounding, base, |round| if k.divide { go(k, xs, codes, true, round) } else { go(k, xs, codes, false, round) })
}

/// Fake-quantizes `xs` into `out`, and writes the STE mask (unclamped code inside
/// `0..=umax`) when `mask` is given.
pub(crate) fn fake_quantize_run<F: Float>(k: &Kernel<F>, rounding: Rounding, base: usize, xs: &[F], out: &mut [F], mask: &mut [bool]) {
    with_rounding!(rounding, base, |round| {
        for (j, ((&x, o), m)) in xs.iter().zip(out.iter_mut()).zip(mask.iter_mut()).enumerate() {
            let q = k.unclamped(x, j, k.divide, &round);
            *m = q >= F::zero() && q <= k.umax;
            *o = k.dequant(k.clamp_code(q));
        }
    })
}

/// The unclamped integer values `round((x − m)/S) + Z` of a run (for LSQ gradients).
pub(crate) fn unclamped_run<F: Float>(k: &Kernel<F>, rounding: Rounding, base: usize, xs: &[F], out: &mut [F]) {
    with_rounding!(rounding, base, |round| {
        for (j, (&x, o)) in xs.iter().zip(out.iter_mut()).enumerate() {
            *o = k.unclamped(x, j, k.divide, &round);
        }
    })
}

/// Dequantizes a run of codes.
pub(crate) fn dequantize_run<F: Float>(k: &Kernel<F>, codes: &[u8], out: &mut [F]) {
    for (&c, o) in codes.iter().zip(out.iter_mut()) {
        *o = k.dequant(i32::from(c));
    }
}

/// `Σ (fake_quant(x) − x)²` over a run with half-even rounding, accumulated in f64.
pub(crate) fn squared_error<F: Float>(k: &Kernel<F>, xs: &[F]) -> f64 {
    xs.iter()
        .map(|&x| {
            let e = (k.dequant(k.code_half_even(x)) - x).as_f64();
            e * e
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ties_even_matches_std() {
        let cases = [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 3.7, -3.7, 1_048_575.5, -1_048_574.5, 8_388_607.5, 1e9, -1e9, 0.0];
        for x in cases {
            assert_eq!(Float::round_ties_even(x), f32::round_ties_even(x), "{x}");
            assert_eq!(Float::round_ties_even(f64::from(x)), f64::round_ties_even(f64::from(x)), "{x}");
            if x.abs() <= 1_048_576.0 {
                assert_eq!(x.round_ties_even_bounded(), f32::round_ties_even(x), "{x}");
                assert_eq!(f64::from(x).round_ties_even_bounded(), f64::round_ties_even(f64::from(x)), "{x}");
            }
        }
        for v in 0..=255u8 {
            assert_eq!(f32::from(v).small_int_to_u8(), v);
            assert_eq!(f64::from(v).small_int_to_u8(), v);
        }
    }
}
