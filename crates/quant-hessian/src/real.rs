//! The [`Real`] trait: the number type differentiable models are written over.

use ndarray::{Array2, ArrayView2, Zip};
use quant_core::Float;

use crate::dual::Dual;

/// A number type a gradient can be evaluated in: `f32`, `f64`, or a [`Dual`] over one of them.
///
/// Models implementing [`Differentiable`](crate::Differentiable) write their gradient once,
/// generic over `T: Real<Base = F>`; evaluating it with `T = F` gives the gradient and with
/// `T = Dual<F>` gives the gradient and a Hessian-vector product at once. Beyond
/// [`quant_core::Float`] the trait carries the base type (for constant data such as inputs)
/// and matrix products, so the products of a dual gradient run as a few `F` matrix products
/// on the fast `ndarray` path rather than element by element.
pub trait Real: Float {
    /// The plain floating-point type underneath (`f32` or `f64`).
    type Base: Real<Base = Self::Base>;

    /// A constant (zero tangent for dual numbers).
    fn from_base(x: Self::Base) -> Self;

    /// The value with every tangent dropped.
    fn base(self) -> Self::Base;

    /// The matrix product `a · b` (inner dimensions must agree; callers guarantee it).
    fn matmul(a: ArrayView2<'_, Self>, b: ArrayView2<'_, Self>) -> Array2<Self>;

    /// The matrix product `c · b` of a constant matrix `c` and `b`.
    fn matmul_base(c: ArrayView2<'_, Self::Base>, b: ArrayView2<'_, Self>) -> Array2<Self>;
}

macro_rules! impl_real {
    ($($t:ty),*) => {$(
        impl Real for $t {
            type Base = $t;
            #[inline]
            fn from_base(x: $t) -> $t {
                x
            }
            #[inline]
            fn base(self) -> $t {
                self
            }
            fn matmul(a: ArrayView2<'_, $t>, b: ArrayView2<'_, $t>) -> Array2<$t> {
                a.dot(&b)
            }
            fn matmul_base(c: ArrayView2<'_, $t>, b: ArrayView2<'_, $t>) -> Array2<$t> {
                c.dot(&b)
            }
        }
    )*};
}
impl_real!(f32, f64);

/// Splits a dual matrix into its value and tangent planes.
fn planes<F: Real>(a: ArrayView2<'_, Dual<F>>) -> (Array2<F>, Array2<F>) {
    (a.mapv(|d| d.value), a.mapv(|d| d.tangent))
}

fn join<F: Real>(value: Array2<F>, tangent: Array2<F>) -> Array2<Dual<F>> {
    let mut out = Array2::from_elem(value.raw_dim(), Dual::constant(F::zero()));
    Zip::from(&mut out).and(&value).and(&tangent).for_each(|o, &v, &t| *o = Dual::new(v, t));
    out
}

impl<F: Real> Real for Dual<F> {
    type Base = F::Base;
    #[inline]
    fn from_base(x: F::Base) -> Self {
        Dual::constant(F::from_base(x))
    }
    #[inline]
    fn base(self) -> F::Base {
        self.value.base()
    }
    /// `(A + Ȧε)(B + Ḃε) = AB + (ȦB + AḂ)ε`: three products of the planes.
    fn matmul(a: ArrayView2<'_, Self>, b: ArrayView2<'_, Self>) -> Array2<Self> {
        let (av, at) = planes(a);
        let (bv, bt) = planes(b);
        let value = F::matmul(av.view(), bv.view());
        let mut tangent = F::matmul(at.view(), bv.view());
        tangent += &F::matmul(av.view(), bt.view());
        join(value, tangent)
    }
    /// `C(B + Ḃε) = CB + CḂε`: two products.
    fn matmul_base(c: ArrayView2<'_, F::Base>, b: ArrayView2<'_, Self>) -> Array2<Self> {
        let (bv, bt) = planes(b);
        join(F::matmul_base(c, bv.view()), F::matmul_base(c, bt.view()))
    }
}
