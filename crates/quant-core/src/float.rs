//! The crate-level [`Float`] trait.

use core::fmt::{Debug, Display};
use core::iter::Sum;

use ndarray::NdFloat;
use num_traits::FromPrimitive;

/// The floating-point element type of every tensor in the `quant` crates.
///
/// It bundles the `num-traits` and `ndarray` bounds the algorithms need and adds the few
/// conversions the quantization kernels use. It is implemented for `f32` and `f64`; other
/// crates of the family implement it for number types of their own (for example the dual
/// numbers of `quant-hessian`), which is why it is not sealed.
///
/// The provided methods have portable default implementations; `f32` and `f64` override them
/// with branch-free versions that vectorise.
pub trait Float: NdFloat + FromPrimitive + Default + Sum + Debug + Display + Send + Sync + 'static {
    /// Size in bytes of one stored value of this type (used for storage accounting).
    const BYTES: usize;

    /// Converts an `f64` to the nearest value of this type (lossy for `f32`).
    fn cast(x: f64) -> Self;

    /// Converts a small integer exactly (every `i32` of magnitude below 2^24 is exact in `f32`).
    fn from_int(i: i32) -> Self;

    /// This value as an `f64` (for reports and statistics).
    fn as_f64(self) -> f64;

    /// Rounds to the nearest integer, ties to even (IEEE 754 `roundTiesToEven`).
    #[inline]
    fn round_ties_even(self) -> Self {
        let r = self.round(); // ties away from zero
        if (self - self.trunc()).abs() == Self::cast(0.5) && (r * Self::cast(0.5)).fract() != Self::zero() {
            // A tie that `round` sent to the odd neighbour: step back towards zero.
            r - self.signum()
        } else {
            r
        }
    }

    /// [`round_ties_even`](Float::round_ties_even) for `|self| ≤ 2^20` (callers guarantee the
    /// bound); `f32`/`f64` skip the magnitude test.
    #[inline]
    fn round_ties_even_bounded(self) -> Self {
        self.round_ties_even()
    }

    /// Truncates towards zero to an `i32`, saturating at the `i32` limits (NaN gives 0).
    #[inline]
    fn to_i32_saturating(self) -> i32 {
        self.as_f64() as i32
    }

    /// The stored code `round_ties_even(clamp(y, lo, hi)) + z` for the quantization kernels,
    /// where `z` is an integer in `0..=255`, `lo = −z` and `hi = umax − z` (so the code lands
    /// in `0..=umax ≤ 255` without a second clamp). Equal to rounding, adding `z` and clamping
    /// to `0..=umax`, because the clamp bounds are integers.
    #[inline]
    fn half_even_code(y: Self, lo: Self, hi: Self, z: Self) -> u8 {
        let y = if y > lo { y } else { lo };
        let y = if y < hi { y } else { hi };
        (y.round_ties_even() + z).small_int_to_u8()
    }

    /// Converts a value that is already an integer in `0..=255` to `u8` (other values give an
    /// unspecified code, never a panic). `f32`/`f64` use a bit trick that vectorises where
    /// the saturating `as` conversion does not.
    #[inline]
    fn small_int_to_u8(self) -> u8 {
        self.to_i32_saturating() as u8
    }

    /// `xs` as `f32` when this type is `f32` (selects the crate's AVX-512 kernels); not part
    /// of the public contract.
    #[doc(hidden)]
    #[inline]
    fn as_f32_slice(xs: &[Self]) -> Option<&[f32]> {
        let _ = xs;
        None
    }

    /// The mutable counterpart of [`Float::as_f32_slice`].
    #[doc(hidden)]
    #[inline]
    fn as_f32_slice_mut(xs: &mut [Self]) -> Option<&mut [f32]> {
        let _ = xs;
        None
    }
}

/// `Float` for the IEEE binary types, whose bit layout the fast kernels rely on.
///
/// `$two_p` is 2^p (p = mantissa bits: 23 for f32, 52 for f64): adding and subtracting it
/// with the sign of `x` rounds `x` to an integer in the default ties-to-even mode for
/// |x| < 2^p; values above are integers already. Unlike `round_ties_even` this needs no
/// SSE4.1 and vectorises on baseline x86-64. (The sign of a zero result is not preserved.)
macro_rules! impl_ieee_float {
    ($t:ty, $bytes:expr, $two_p:expr, $as_f32:expr) => {
        impl Float for $t {
            const BYTES: usize = $bytes;

            #[inline]
            fn cast(x: f64) -> Self {
                x as $t
            }

            #[inline]
            fn from_int(i: i32) -> Self {
                i as $t
            }

            #[inline]
            fn as_f64(self) -> f64 {
                self as f64
            }

            #[inline]
            fn round_ties_even(self) -> Self {
                const TWO_P: $t = $two_p;
                if self.abs() < TWO_P {
                    let m = TWO_P.copysign(self);
                    (self + m) - m
                } else {
                    self
                }
            }

            #[inline]
            fn round_ties_even_bounded(self) -> Self {
                // 1.5·2^p: for |x| <= 2^(p−1) the sum lies in [2^p, 2^(p+1)), spacing 1.
                const MAGIC: $t = 1.5 * $two_p;
                (self + MAGIC) - MAGIC
            }

            #[inline]
            fn to_i32_saturating(self) -> i32 {
                self as i32
            }

            #[inline]
            fn half_even_code(y: Self, lo: Self, hi: Self, z: Self) -> u8 {
                let y = if y > lo { y } else { lo };
                let y = if y < hi { y } else { hi };
                // y + 1.5·2^p rounds y to an integer (ties to even) in [2^p, 2^(p+1)); adding
                // z − 2^(p−1) exactly gives 2^p + code, whose low byte is the code.
                ((y + 1.5 * $two_p) + (z - 0.5 * $two_p)).to_bits() as u8
            }

            #[inline]
            fn small_int_to_u8(self) -> u8 {
                // For an integer 0 <= v < 2^p, the bits of v + 2^p end in the bits of v.
                (self + $two_p).to_bits() as u8
            }

            #[inline]
            fn as_f32_slice(xs: &[Self]) -> Option<&[f32]> {
                $as_f32(xs)
            }

            #[inline]
            fn as_f32_slice_mut(xs: &mut [Self]) -> Option<&mut [f32]> {
                $as_f32(xs)
            }
        }
    };
}

impl_ieee_float!(f32, 4, 8_388_608.0, Some);
impl_ieee_float!(f64, 8, 4_503_599_627_370_496.0, |_| None);
