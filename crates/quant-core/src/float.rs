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
}

impl Float for f32 {
    const BYTES: usize = 4;

    #[inline]
    fn cast(x: f64) -> Self {
        x as f32
    }

    #[inline]
    fn from_int(i: i32) -> Self {
        i as f32
    }

    #[inline]
    fn as_f64(self) -> f64 {
        f64::from(self)
    }

    #[inline]
    fn round_ties_even(self) -> Self {
        // Adding and subtracting 2^23 (with the sign of x) rounds to an integer in the default
        // ties-to-even mode for |x| < 2^23; larger magnitudes are integers already. Unlike
        // `f32::round_ties_even` this needs no SSE4.1 and vectorises on baseline x86-64.
        // (The sign of a zero result is not preserved; no caller depends on it.)
        const TWO_23: f32 = 8_388_608.0;
        if self.abs() < TWO_23 {
            let m = TWO_23.copysign(self);
            (self + m) - m
        } else {
            self
        }
    }

    #[inline]
    fn to_i32_saturating(self) -> i32 {
        self as i32
    }

    #[inline]
    fn round_ties_even_bounded(self) -> Self {
        // 1.5 · 2^23: for |x| <= 2^22 the sum lies in [2^23, 2^24), where the spacing is 1.
        const MAGIC: f32 = 12_582_912.0;
        (self + MAGIC) - MAGIC
    }

    #[inline]
    fn half_even_code(y: Self, lo: Self, hi: Self, z: Self) -> u8 {
        let y = if y > lo { y } else { lo };
        let y = if y < hi { y } else { hi };
        // y + 1.5·2^23 rounds y to an integer (ties to even) in [2^23, 2^24); adding
        // z − 2^22 exactly gives 2^23 + code, whose low byte is the code.
        ((y + 12_582_912.0) + (z - 4_194_304.0)).to_bits() as u8
    }

    #[inline]
    fn small_int_to_u8(self) -> u8 {
        // For an integer 0 <= v < 2^23, the bits of v + 2^23 are 0x4B00_0000 | v.
        (self + 8_388_608.0).to_bits() as u8
    }
}

impl Float for f64 {
    const BYTES: usize = 8;

    #[inline]
    fn cast(x: f64) -> Self {
        x
    }

    #[inline]
    fn from_int(i: i32) -> Self {
        f64::from(i)
    }

    #[inline]
    fn as_f64(self) -> f64 {
        self
    }

    #[inline]
    fn round_ties_even(self) -> Self {
        // The f64 analogue of the f32 version, exact for |x| < 2^52.
        const TWO_52: f64 = 4_503_599_627_370_496.0;
        if self.abs() < TWO_52 {
            let m = TWO_52.copysign(self);
            (self + m) - m
        } else {
            self
        }
    }

    #[inline]
    fn to_i32_saturating(self) -> i32 {
        self as i32
    }

    #[inline]
    fn round_ties_even_bounded(self) -> Self {
        // 1.5 · 2^52: for |x| <= 2^51 the sum lies in [2^52, 2^53), where the spacing is 1.
        const MAGIC: f64 = 6_755_399_441_055_744.0;
        (self + MAGIC) - MAGIC
    }

    #[inline]
    fn half_even_code(y: Self, lo: Self, hi: Self, z: Self) -> u8 {
        let y = if y > lo { y } else { lo };
        let y = if y < hi { y } else { hi };
        // As for f32 with 1.5·2^52 and 2^51.
        ((y + 6_755_399_441_055_744.0) + (z - 2_251_799_813_685_248.0)).to_bits() as u8
    }

    #[inline]
    fn small_int_to_u8(self) -> u8 {
        // For an integer 0 <= v < 2^52, the bits of v + 2^52 are 0x4330_0000_0000_0000 | v.
        (self + 4_503_599_627_370_496.0).to_bits() as u8
    }
}
