//! Forward-mode dual numbers `a + b ε` with `ε² = 0`.

use core::cmp::Ordering;
use core::fmt;
use core::iter::Sum;
use core::num::FpCategory;
use core::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Rem, RemAssign, Sub, SubAssign};

use ndarray::{NdFloat, ScalarOperand};
use num_traits::{Float as NumFloat, FromPrimitive, Num, NumCast, One, ToPrimitive, Zero};
use quant_core::Float;

/// A dual number `value + tangent·ε` with `ε² = 0`: evaluating a function `f` at
/// `Dual::new(x, v)` gives `f(x) + (f'(x)·v) ε`.
///
/// Evaluating a gradient `g(w)` written generic over [`Real`](crate::Real) at
/// `w + v ε` therefore gives `g(w) + (H v) ε`, the Hessian-vector product (forward over
/// reverse). `Dual<F>` implements [`num_traits::Float`], [`ndarray::ScalarOperand`],
/// [`ndarray::NdFloat`] and [`quant_core::Float`], so generic code runs on it unchanged;
/// `Dual<Dual<F>>` gives third derivatives the same way.
///
/// The layout is `repr(C)`: the value, then the tangent, no padding; dual matrix products
/// read the two planes of an array of `Dual`s in place.
///
/// Conventions where calculus leaves a choice:
/// - comparisons (`==`, `<`, `max`, `min`, `clamp`) look at the value only, so a branch on
///   data takes the same path as the plain `F` evaluation;
/// - piecewise-constant functions (`floor`, `ceil`, `round`, `trunc`, `signum`) have tangent 0;
///   `abs` has tangent 0 at 0 (the subgradient of least norm);
/// - at points where the derivative is infinite or undefined (`sqrt` at 0, `ln` at 0) the
///   tangent is what IEEE arithmetic gives (`±inf` or NaN), exactly as the formula reads.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Dual<F> {
    /// The value (real part).
    pub value: F,
    /// The directional derivative (ε part).
    pub tangent: F,
}

impl<F: Float> Dual<F> {
    /// `value + tangent ε`.
    #[inline]
    pub fn new(value: F, tangent: F) -> Self {
        Self { value, tangent }
    }

    /// A constant: tangent 0.
    #[inline]
    pub fn constant(value: F) -> Self {
        Self { value, tangent: F::zero() }
    }

    /// The dual number of `f(value)` whose derivative at `value` is `df`.
    #[inline]
    fn chain(self, f: F, df: F) -> Self {
        Self { value: f, tangent: df * self.tangent }
    }
}

impl<F: fmt::Debug> fmt::Debug for Dual<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dual({:?} + {:?}ε)", self.value, self.tangent)
    }
}

macro_rules! impl_fmt {
    ($($trait:ident),*) => {$(
        impl<F: fmt::$trait> fmt::$trait for Dual<F> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::$trait::fmt(&self.value, f)?;
                f.write_str(" + ")?;
                fmt::$trait::fmt(&self.tangent, f)?;
                f.write_str("ε")
            }
        }
    )*};
}
impl_fmt!(Display, LowerExp, UpperExp);

impl<F: PartialEq> PartialEq for Dual<F> {
    /// Compares values only (see the type's conventions).
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<F: PartialOrd> PartialOrd for Dual<F> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.value.partial_cmp(&other.value)
    }
}

impl<F: Float> Neg for Dual<F> {
    type Output = Self;
    #[inline]
    fn neg(self) -> Self {
        Self::new(-self.value, -self.tangent)
    }
}

impl<F: Float> Add for Dual<F> {
    type Output = Self;
    #[inline]
    fn add(self, o: Self) -> Self {
        Self::new(self.value + o.value, self.tangent + o.tangent)
    }
}

impl<F: Float> Sub for Dual<F> {
    type Output = Self;
    #[inline]
    fn sub(self, o: Self) -> Self {
        Self::new(self.value - o.value, self.tangent - o.tangent)
    }
}

impl<F: Float> Mul for Dual<F> {
    type Output = Self;
    #[inline]
    fn mul(self, o: Self) -> Self {
        Self::new(self.value * o.value, self.tangent * o.value + self.value * o.tangent)
    }
}

impl<F: Float> Div for Dual<F> {
    type Output = Self;
    #[inline]
    fn div(self, o: Self) -> Self {
        let q = self.value / o.value;
        Self::new(q, (self.tangent - q * o.tangent) / o.value)
    }
}

impl<F: Float> Rem for Dual<F> {
    type Output = Self;
    /// `x % y = x − trunc(x / y)·y`, so the tangent is `dx − trunc(x / y)·dy`.
    #[inline]
    fn rem(self, o: Self) -> Self {
        let t = (self.value / o.value).trunc();
        Self::new(self.value % o.value, self.tangent - t * o.tangent)
    }
}

macro_rules! impl_assign {
    ($($trait:ident $method:ident $op:tt),*) => {$(
        impl<F: Float> $trait for Dual<F> {
            #[inline]
            fn $method(&mut self, o: Self) {
                *self = *self $op o;
            }
        }
    )*};
}
impl_assign!(AddAssign add_assign +, SubAssign sub_assign -, MulAssign mul_assign *, DivAssign div_assign /, RemAssign rem_assign %);

impl<F: Float> Sum for Dual<F> {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::zero(), |a, b| a + b)
    }
}

impl<F: Float> Zero for Dual<F> {
    fn zero() -> Self {
        Self::constant(F::zero())
    }
    fn is_zero(&self) -> bool {
        self.value.is_zero()
    }
}

impl<F: Float> One for Dual<F> {
    fn one() -> Self {
        Self::constant(F::one())
    }
}

impl<F: Float> Num for Dual<F> {
    type FromStrRadixErr = F::FromStrRadixErr;
    fn from_str_radix(s: &str, radix: u32) -> Result<Self, Self::FromStrRadixErr> {
        F::from_str_radix(s, radix).map(Self::constant)
    }
}

impl<F: Float> ToPrimitive for Dual<F> {
    fn to_i64(&self) -> Option<i64> {
        self.value.to_i64()
    }
    fn to_u64(&self) -> Option<u64> {
        self.value.to_u64()
    }
    fn to_f64(&self) -> Option<f64> {
        self.value.to_f64()
    }
    fn to_f32(&self) -> Option<f32> {
        self.value.to_f32()
    }
}

impl<F: Float> NumCast for Dual<F> {
    fn from<T: ToPrimitive>(n: T) -> Option<Self> {
        <F as NumCast>::from(n).map(Self::constant)
    }
}

impl<F: Float> FromPrimitive for Dual<F> {
    fn from_i64(n: i64) -> Option<Self> {
        F::from_i64(n).map(Self::constant)
    }
    fn from_u64(n: u64) -> Option<Self> {
        F::from_u64(n).map(Self::constant)
    }
    fn from_f64(n: f64) -> Option<Self> {
        F::from_f64(n).map(Self::constant)
    }
    fn from_f32(n: f32) -> Option<Self> {
        F::from_f32(n).map(Self::constant)
    }
}

impl<F: Float> ScalarOperand for Dual<F> {}
impl<F: Float> NdFloat for Dual<F> {}

impl<F: Float> Float for Dual<F> {
    const BYTES: usize = 2 * F::BYTES;
    fn cast(x: f64) -> Self {
        Self::constant(F::cast(x))
    }
    fn from_int(i: i32) -> Self {
        Self::constant(F::from_int(i))
    }
    fn as_f64(self) -> f64 {
        self.value.as_f64()
    }
}

/// Functions of the value alone with tangent 0.
macro_rules! flat {
    ($($name:ident),*) => {$(
        #[inline]
        fn $name(self) -> Self {
            Self::constant(self.value.$name())
        }
    )*};
}

/// Classifications and constants of `F`.
macro_rules! delegate_bool {
    ($($name:ident),*) => {$(
        #[inline]
        fn $name(self) -> bool {
            self.value.$name()
        }
    )*};
}
macro_rules! delegate_const {
    ($($name:ident),*) => {$(
        #[inline]
        fn $name() -> Self {
            Self::constant(F::$name())
        }
    )*};
}

impl<F: Float> NumFloat for Dual<F> {
    delegate_const!(nan, infinity, neg_infinity, neg_zero, min_value, min_positive_value, max_value, epsilon);
    delegate_bool!(is_nan, is_infinite, is_finite, is_normal, is_sign_positive, is_sign_negative);
    flat!(floor, ceil, round, trunc, signum);

    fn classify(self) -> FpCategory {
        self.value.classify()
    }
    fn fract(self) -> Self {
        Self::new(self.value.fract(), self.tangent)
    }
    fn abs(self) -> Self {
        let s = if self.value > F::zero() {
            F::one()
        } else if self.value < F::zero() {
            -F::one()
        } else {
            F::zero()
        };
        self.chain(self.value.abs(), s)
    }
    fn mul_add(self, a: Self, b: Self) -> Self {
        self * a + b
    }
    fn recip(self) -> Self {
        let r = self.value.recip();
        self.chain(r, -r * r)
    }
    fn powi(self, n: i32) -> Self {
        let d = if n == 0 { F::zero() } else { F::from_int(n) * self.value.powi(n - 1) };
        self.chain(self.value.powi(n), d)
    }
    /// `x^y = exp(y ln x)`: the tangent is `y x^(y−1) dx + x^y ln(x) dy`; each term is
    /// evaluated only when its tangent is non-zero, so a constant exponent works at `x ≤ 0`.
    fn powf(self, y: Self) -> Self {
        let p = self.value.powf(y.value);
        let mut t = F::zero();
        if self.tangent != F::zero() {
            t += y.value * self.value.powf(y.value - F::one()) * self.tangent;
        }
        if y.tangent != F::zero() {
            t += p * self.value.ln() * y.tangent;
        }
        Self::new(p, t)
    }
    fn sqrt(self) -> Self {
        let r = self.value.sqrt();
        self.chain(r, (r + r).recip())
    }
    fn exp(self) -> Self {
        let e = self.value.exp();
        self.chain(e, e)
    }
    fn exp2(self) -> Self {
        let e = self.value.exp2();
        self.chain(e, e * F::cast(core::f64::consts::LN_2))
    }
    fn exp_m1(self) -> Self {
        self.chain(self.value.exp_m1(), self.value.exp())
    }
    fn ln(self) -> Self {
        self.chain(self.value.ln(), self.value.recip())
    }
    fn ln_1p(self) -> Self {
        self.chain(self.value.ln_1p(), (F::one() + self.value).recip())
    }
    fn log(self, base: Self) -> Self {
        self.ln() / base.ln()
    }
    fn log2(self) -> Self {
        self.chain(self.value.log2(), (self.value * F::cast(core::f64::consts::LN_2)).recip())
    }
    fn log10(self) -> Self {
        self.chain(self.value.log10(), (self.value * F::cast(core::f64::consts::LN_10)).recip())
    }
    fn max(self, o: Self) -> Self {
        if o.value > self.value || self.value.is_nan() { o } else { self }
    }
    fn min(self, o: Self) -> Self {
        if o.value < self.value || self.value.is_nan() { o } else { self }
    }
    #[allow(deprecated)]
    fn abs_sub(self, o: Self) -> Self {
        if self.value > o.value { self - o } else { Self::zero() }
    }
    fn cbrt(self) -> Self {
        let c = self.value.cbrt();
        self.chain(c, (F::cast(3.0) * c * c).recip())
    }
    fn hypot(self, o: Self) -> Self {
        let h = self.value.hypot(o.value);
        Self::new(h, (self.value * self.tangent + o.value * o.tangent) / h)
    }
    fn sin(self) -> Self {
        self.chain(self.value.sin(), self.value.cos())
    }
    fn cos(self) -> Self {
        self.chain(self.value.cos(), -self.value.sin())
    }
    fn tan(self) -> Self {
        let t = self.value.tan();
        self.chain(t, F::one() + t * t)
    }
    fn asin(self) -> Self {
        self.chain(self.value.asin(), (F::one() - self.value * self.value).sqrt().recip())
    }
    fn acos(self) -> Self {
        self.chain(self.value.acos(), -(F::one() - self.value * self.value).sqrt().recip())
    }
    fn atan(self) -> Self {
        self.chain(self.value.atan(), (F::one() + self.value * self.value).recip())
    }
    /// `atan2(y = self, x = o)`: tangent `(x dy − y dx) / (x² + y²)`.
    fn atan2(self, o: Self) -> Self {
        let r2 = self.value * self.value + o.value * o.value;
        Self::new(self.value.atan2(o.value), (o.value * self.tangent - self.value * o.tangent) / r2)
    }
    fn sin_cos(self) -> (Self, Self) {
        (self.sin(), self.cos())
    }
    fn sinh(self) -> Self {
        self.chain(self.value.sinh(), self.value.cosh())
    }
    fn cosh(self) -> Self {
        self.chain(self.value.cosh(), self.value.sinh())
    }
    fn tanh(self) -> Self {
        let t = self.value.tanh();
        self.chain(t, F::one() - t * t)
    }
    fn asinh(self) -> Self {
        self.chain(self.value.asinh(), (self.value * self.value + F::one()).sqrt().recip())
    }
    fn acosh(self) -> Self {
        self.chain(self.value.acosh(), (self.value * self.value - F::one()).sqrt().recip())
    }
    fn atanh(self) -> Self {
        self.chain(self.value.atanh(), (F::one() - self.value * self.value).recip())
    }
    fn integer_decode(self) -> (u64, i16, i8) {
        self.value.integer_decode()
    }
    fn to_degrees(self) -> Self {
        self.chain(self.value.to_degrees(), F::cast(180.0 / core::f64::consts::PI))
    }
    fn to_radians(self) -> Self {
        self.chain(self.value.to_radians(), F::cast(core::f64::consts::PI / 180.0))
    }
    fn copysign(self, sign: Self) -> Self {
        if self.value.is_sign_negative() == sign.value.is_sign_negative() { self } else { -self }
    }
}
