//! The [`Real`] trait: the number type differentiable models are written over.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, CowArray, Ix2, ShapeBuilder};
use quant_core::Float;

use crate::dual::Dual;

/// A number type a gradient can be evaluated in: `f32`, `f64`, or a [`Dual`] over one of them.
///
/// Models implementing [`Differentiable`](crate::Differentiable) write their gradient once,
/// generic over `T: Real<Base = F>`; evaluating it with `T = F` gives the gradient and with
/// `T = Dual<F>` gives the gradient and a Hessian-vector product at once. Beyond
/// [`quant_core::Float`] the trait carries the base type (for constant data such as inputs)
/// and matrix products, so the products of a dual gradient run as a few `F` matrix products
/// on the fast `ndarray` path (reading the value and tangent planes in place) rather than
/// element by element.
pub trait Real: Float {
    /// The plain floating-point type underneath (`f32` or `f64`).
    type Base: Real<Base = Self::Base>;

    /// The type one level down: `Self` for `f32`/`f64`, `F` for `Dual<F>`.
    type Primal: Real<Base = Self::Base>;

    /// A constant (zero tangent for dual numbers).
    fn from_base(x: Self::Base) -> Self;

    /// The value with every tangent dropped.
    fn base(self) -> Self::Base;

    /// `out = a · b`, or `out += a · b` when `accumulate` (shapes agree; callers guarantee it).
    fn matmul_into(a: ArrayView2<'_, Self>, b: ArrayView2<'_, Self>, accumulate: bool, out: ArrayViewMut2<'_, Self>);

    /// `out = c · b` (or `+=`) for a constant matrix `c`.
    fn matmul_base_into(c: ArrayView2<'_, Self::Base>, b: ArrayView2<'_, Self>, accumulate: bool, out: ArrayViewMut2<'_, Self>);

    /// Applies a scalar function elementwise with its derivative: `z ← f(z)`, `d ← f'(z)`,
    /// where `f(x)` returns `(f(x), f'(x), f''(x))` evaluated on the primal type.
    ///
    /// For plain floats this is a map; for dual numbers the tangents follow the chain rule
    /// (`f(z)` gets tangent `f'(z)·ż` and `f'(z)` gets `f''(z)·ż`), so an activation and its
    /// derivative cost three primal evaluations rather than a chain of dual operations. `f`
    /// written generic over `Real` stays exact for nested duals. `d` must have `z`'s shape.
    fn map_with_derivative<G>(z: ArrayViewMut2<'_, Self>, d: ArrayViewMut2<'_, Self>, f: G)
    where
        G: Fn(Self::Primal) -> (Self::Primal, Self::Primal, Self::Primal);

    /// [`map_with_derivative`](Self::map_with_derivative) when the derivative is not wanted:
    /// `z ← f(z)`, with the tangents of dual numbers as there. For plain floats only the value
    /// is computed (the derivatives `f` returns are dropped where it inlines), so a forward
    /// pass without a backward one skips them. Not part of the public contract.
    #[doc(hidden)]
    fn map_value<G>(mut z: ArrayViewMut2<'_, Self>, f: G)
    where
        G: Fn(Self::Primal) -> (Self::Primal, Self::Primal, Self::Primal),
    {
        let mut d = Array2::zeros(z.raw_dim());
        Self::map_with_derivative(z.view_mut(), d.view_mut(), f);
    }

    /// `tanh`, for `f32` by a faster route within 3 ulp (see `tanh_f32`); `tanh` itself
    /// otherwise. Not part of the public contract.
    #[doc(hidden)]
    fn tanh_fast(self) -> Self {
        self.tanh()
    }

    /// `out = a · b` (or `+=`) for dual matrices over this type with a kernel of its own;
    /// `false` (nothing written) to use the plane products. Not part of the public contract.
    #[doc(hidden)]
    fn dual_matmul_into(
        a: ArrayView2<'_, Dual<Self>>,
        b: ArrayView2<'_, Dual<Self>>,
        accumulate: bool,
        out: ArrayViewMut2<'_, Dual<Self>>,
    ) -> bool {
        let _ = (a, b, accumulate, out);
        false
    }

    /// [`Real::dual_matmul_into`] for a constant left operand.
    #[doc(hidden)]
    fn dual_matmul_base_into(
        c: ArrayView2<'_, Self::Base>,
        b: ArrayView2<'_, Dual<Self>>,
        accumulate: bool,
        out: ArrayViewMut2<'_, Dual<Self>>,
    ) -> bool {
        let _ = (c, b, accumulate, out);
        false
    }

    /// The matrix product `a · b` in a new array.
    fn matmul(a: ArrayView2<'_, Self>, b: ArrayView2<'_, Self>) -> Array2<Self> {
        let mut out = Array2::zeros((a.nrows(), b.ncols()));
        Self::matmul_into(a, b, false, out.view_mut());
        out
    }

    /// The matrix product `c · b` of a constant matrix `c` and `b`, in a new array.
    fn matmul_base(c: ArrayView2<'_, Self::Base>, b: ArrayView2<'_, Self>) -> Array2<Self> {
        let mut out = Array2::zeros((c.nrows(), b.ncols()));
        Self::matmul_base_into(c, b, false, out.view_mut());
        out
    }
}

macro_rules! impl_real {
    ($($t:ty => $gemm:path),*) => {$(
        impl Real for $t {
            type Base = $t;
            type Primal = $t;
            fn map_with_derivative<G>(z: ArrayViewMut2<'_, $t>, d: ArrayViewMut2<'_, $t>, f: G)
            where
                G: Fn($t) -> ($t, $t, $t),
            {
                ndarray::Zip::from(z).and(d).for_each(|z, d| {
                    let (v, dv, _) = f(*z);
                    *z = v;
                    *d = dv;
                });
            }
            fn map_value<G>(mut z: ArrayViewMut2<'_, $t>, f: G)
            where
                G: Fn($t) -> ($t, $t, $t),
            {
                z.mapv_inplace(|x| f(x).0);
            }
            #[inline]
            fn from_base(x: $t) -> $t {
                x
            }
            #[inline]
            fn base(self) -> $t {
                self
            }
            fn matmul_into(a: ArrayView2<'_, $t>, b: ArrayView2<'_, $t>, accumulate: bool, out: ArrayViewMut2<'_, $t>) {
                $gemm(a, b, accumulate, out);
            }
            fn matmul_base_into(c: ArrayView2<'_, $t>, b: ArrayView2<'_, $t>, accumulate: bool, out: ArrayViewMut2<'_, $t>) {
                Self::matmul_into(c, b, accumulate, out);
            }
            fn dual_matmul_into(a: ArrayView2<'_, Dual<$t>>, b: ArrayView2<'_, Dual<$t>>, accumulate: bool, out: ArrayViewMut2<'_, Dual<$t>>) -> bool {
                <$t as DualKernel>::matmul(a, b, accumulate, out)
            }
            // Called per element from models in other crates: inline across the crate boundary.
            #[inline]
            fn tanh_fast(self) -> $t {
                <$t as DualKernel>::tanh(self)
            }
            fn dual_matmul_base_into(c: ArrayView2<'_, $t>, b: ArrayView2<'_, Dual<$t>>, accumulate: bool, out: ArrayViewMut2<'_, Dual<$t>>) -> bool {
                <$t as DualKernel>::matmul_constant(c, b, accumulate, out)
            }
        }
    )*};
}
impl_real!(f32 => crate::gemm::gemm_f32, f64 => crate::gemm::gemm_f64);

/// The base types with a dual product kernel (AVX-512, see `dualmm`) and their `tanh`.
trait DualKernel: Sized {
    fn tanh(self) -> Self;
    fn matmul(a: ArrayView2<'_, Dual<Self>>, b: ArrayView2<'_, Dual<Self>>, accumulate: bool, out: ArrayViewMut2<'_, Dual<Self>>) -> bool;
    fn matmul_constant(
        c: ArrayView2<'_, Self>,
        b: ArrayView2<'_, Dual<Self>>,
        accumulate: bool,
        out: ArrayViewMut2<'_, Dual<Self>>,
    ) -> bool;
}

impl DualKernel for f32 {
    #[inline]
    fn tanh(self) -> f32 {
        tanh_f32(self)
    }
    fn matmul(a: ArrayView2<'_, Dual<f32>>, b: ArrayView2<'_, Dual<f32>>, accumulate: bool, out: ArrayViewMut2<'_, Dual<f32>>) -> bool {
        crate::dualmm::matmul(a, b, accumulate, out)
    }
    fn matmul_constant(c: ArrayView2<'_, f32>, b: ArrayView2<'_, Dual<f32>>, accumulate: bool, out: ArrayViewMut2<'_, Dual<f32>>) -> bool {
        crate::dualmm::matmul_constant(c, b, accumulate, out)
    }
}

impl DualKernel for f64 {
    #[inline]
    fn tanh(self) -> f64 {
        self.tanh()
    }
    fn matmul(a: ArrayView2<'_, Dual<f64>>, b: ArrayView2<'_, Dual<f64>>, accumulate: bool, out: ArrayViewMut2<'_, Dual<f64>>) -> bool {
        crate::dualmm::matmul(a, b, accumulate, out)
    }
    fn matmul_constant(c: ArrayView2<'_, f64>, b: ArrayView2<'_, Dual<f64>>, accumulate: bool, out: ArrayViewMut2<'_, Dual<f64>>) -> bool {
        crate::dualmm::matmul_constant(c, b, accumulate, out)
    }
}

/// `tanh` in `f32` within 3 ulp (2.08 the worst measured over 1.2 million points), about 3x
/// faster than the C library's `tanhf` here (which the tanh MLP's gradient spent 40% of its
/// time in). Below `|z| = 0.5` the odd Taylor
/// polynomial through `z^15` (truncation below 1e-8 relative there); above it
/// `(1 − e)/(1 + e)` with `e = exp(−2|z|) ≤ e^−1`, free of cancellation; the sign of `z`
/// (zeros included) is kept, and NaN stays NaN.
#[inline]
pub(crate) fn tanh_f32(z: f32) -> f32 {
    let a = z.abs();
    if a < 0.5 {
        // tanh z = z − z³/3 + 2z⁵/15 − 17z⁷/315 + 62z⁹/2835 − 1382z¹¹/155925
        //          + 21844z¹³/6081075 − 929569z¹⁵/638512875 + …
        const C: [f32; 7] =
            [-1.0 / 3.0, 2.0 / 15.0, -17.0 / 315.0, 62.0 / 2835.0, -1382.0 / 155_925.0, 21_844.0 / 6_081_075.0, -929_569.0 / 638_512_875.0];
        let z2 = z * z;
        let p = C.iter().rev().fold(0.0f32, |acc, &c| acc * z2 + c);
        z + z * z2 * p
    } else {
        let e = (-2.0 * a).exp();
        ((1.0 - e) / (1.0 + e)).copysign(z)
    }
}

/// The strides of `a` in units of `F` when each element is two `F`s, if all are
/// non-negative and the array is not empty.
fn plane_strides(shape: (usize, usize), strides: &[isize]) -> Option<(usize, usize)> {
    if shape.0 == 0 || shape.1 == 0 || strides.iter().any(|&s| s < 0) {
        return None;
    }
    Some((2 * strides[0] as usize, 2 * strides[1] as usize))
}

/// The value and tangent planes of a dual matrix: strided views into its storage when the
/// layout allows (every stride non-negative), copies otherwise.
#[allow(unsafe_code)]
fn planes<'a, F: Real>(a: ArrayView2<'a, Dual<F>>) -> (CowArray<'a, F, Ix2>, CowArray<'a, F, Ix2>) {
    match plane_strides(a.dim(), a.strides()) {
        Some(st) => {
            let p = a.as_ptr().cast::<F>();
            // SAFETY: `Dual<F>` is `repr(C)` with exactly two fields of type `F`, so it has no
            // padding, its value sits at offset 0 and its tangent at offset `size_of::<F>()`.
            // Element (i, j) of `a` starts at `p + i·s0 + j·s1` (in `Dual` units, all
            // non-negative), i.e. `2·(i·s0 + j·s1)` in `F` units; the views below address
            // exactly the value (offset 0) and tangent (offset 1) of each element, all inside
            // `a`'s allocation (the array is non-empty, so `p.add(1)` is in bounds). Both
            // views are shared and borrow `a`'s data for `'a`, during which `a` is immutable.
            unsafe {
                let value = ArrayView2::from_shape_ptr(a.dim().strides(st), p);
                let tangent = ArrayView2::from_shape_ptr(a.dim().strides(st), p.add(1));
                (value.into(), tangent.into())
            }
        }
        None => (a.mapv(|d| d.value).into(), a.mapv(|d| d.tangent).into()),
    }
}

/// Runs `f` on mutable value and tangent planes of `out` (strided views in place when the
/// layout allows, else copies written back).
#[allow(unsafe_code)]
fn with_planes_mut<F: Real>(mut out: ArrayViewMut2<'_, Dual<F>>, f: impl FnOnce(ArrayViewMut2<'_, F>, ArrayViewMut2<'_, F>)) {
    match plane_strides(out.dim(), out.strides()) {
        Some(st) => {
            let dim = out.dim();
            let p = out.as_mut_ptr().cast::<F>();
            // SAFETY: as in `planes`, the two views address the value and tangent fields of
            // each element of `out`; the fields of distinct elements are distinct, and the
            // value and tangent of one element are disjoint, so the two mutable views never
            // alias each other. They live only for this call, while `out` is mutably
            // borrowed and not otherwise used.
            unsafe {
                let value = ArrayViewMut2::from_shape_ptr(dim.strides(st), p);
                let tangent = ArrayViewMut2::from_shape_ptr(dim.strides(st), p.add(1));
                f(value, tangent);
            }
        }
        None => {
            let (mut v, mut t) = (out.mapv(|d| d.value), out.mapv(|d| d.tangent));
            f(v.view_mut(), t.view_mut());
            ndarray::Zip::from(&mut out).and(&v).and(&t).for_each(|o, &v, &t| *o = Dual::new(v, t));
        }
    }
}

impl<F: Real> Real for Dual<F> {
    type Base = F::Base;
    type Primal = F;
    fn map_with_derivative<G>(z: ArrayViewMut2<'_, Self>, d: ArrayViewMut2<'_, Self>, f: G)
    where
        G: Fn(F) -> (F, F, F),
    {
        ndarray::Zip::from(z).and(d).for_each(|z, d| {
            let (v, dv, ddv) = f(z.value);
            *d = Dual::new(dv, ddv * z.tangent);
            *z = Dual::new(v, dv * z.tangent);
        });
    }
    #[inline]
    fn from_base(x: F::Base) -> Self {
        Dual::constant(F::from_base(x))
    }
    #[inline]
    fn base(self) -> F::Base {
        self.value.base()
    }
    /// `(A + Ȧε)(B + Ḃε) = AB + (ȦB + AḂ)ε`: three products of the planes.
    fn matmul_into(a: ArrayView2<'_, Self>, b: ArrayView2<'_, Self>, accumulate: bool, mut out: ArrayViewMut2<'_, Self>) {
        if F::dual_matmul_into(a, b, accumulate, out.view_mut()) {
            return;
        }
        let (av, at) = planes(a);
        let (bv, bt) = planes(b);
        with_planes_mut(out, |ov, mut ot| {
            F::matmul_into(av.view(), bv.view(), accumulate, ov);
            F::matmul_into(at.view(), bv.view(), accumulate, ot.view_mut());
            F::matmul_into(av.view(), bt.view(), true, ot);
        });
    }
    /// `C(B + Ḃε) = CB + CḂε`: two products.
    fn matmul_base_into(c: ArrayView2<'_, F::Base>, b: ArrayView2<'_, Self>, accumulate: bool, mut out: ArrayViewMut2<'_, Self>) {
        if F::dual_matmul_base_into(c, b, accumulate, out.view_mut()) {
            return;
        }
        let (bv, bt) = planes(b);
        with_planes_mut(out, |ov, ot| {
            F::matmul_base_into(c, bv.view(), accumulate, ov);
            F::matmul_base_into(c, bt.view(), accumulate, ot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, s};

    fn dual_matrix(r: usize, c: usize, seed: usize) -> Array2<Dual<f64>> {
        Array2::from_shape_fn((r, c), |(i, j)| {
            let k = (i * 31 + j * 17 + seed * 7) % 23;
            Dual::new(k as f64 / 7.0 - 1.5, ((k * 5) % 11) as f64 / 3.0 - 1.0)
        })
    }

    /// The plain element-by-element product in dual arithmetic.
    fn reference(a: ArrayView2<'_, Dual<f64>>, b: ArrayView2<'_, Dual<f64>>) -> Array2<Dual<f64>> {
        Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| (0..a.ncols()).map(|k| a[[i, k]] * b[[k, j]]).sum())
    }

    fn assert_same(x: &Array2<Dual<f64>>, y: &Array2<Dual<f64>>) {
        assert_eq!(x.dim(), y.dim());
        for (p, q) in x.iter().zip(y) {
            // Different summation order: a few ulps of values of order 10.
            assert!((p.value - q.value).abs() < 1e-12 && (p.tangent - q.tangent).abs() < 1e-12, "{p:?} vs {q:?}");
        }
    }

    #[test]
    fn plane_products_match_dual_arithmetic_for_every_layout() {
        let a = dual_matrix(7, 5, 1);
        let b = dual_matrix(5, 4, 2);
        let want = reference(a.view(), b.view());
        assert_same(&Real::matmul(a.view(), b.view()), &want);
        // Transposed and strided views; a reversed (negative-stride) view takes the copy path.
        let at = a.t().to_owned();
        assert_same(&Real::matmul(at.t(), b.view()), &want);
        let wide = dual_matrix(7, 10, 1);
        let sub = wide.slice(s![.., ..;2]);
        assert_same(&Real::matmul(sub, b.view()), &reference(sub, b.view()));
        let rev = a.slice(s![..;-1, ..]);
        assert_same(&Real::matmul(rev, b.view()), &reference(rev, b.view()));
        // Accumulation into an existing output, including a negative-stride output.
        let mut out = want.clone();
        Dual::<f64>::matmul_into(a.view(), b.view(), true, out.view_mut());
        assert_same(&out, &want.mapv(|d| d + d));
        let mut out3 = Array2::from_elem((7, 4), Dual::new(1.0, 1.0));
        Dual::<f64>::matmul_into(a.slice(s![..;-1, ..]), b.view(), false, out3.slice_mut(s![..;-1, ..]));
        assert_same(&out3, &want);
    }

    #[test]
    fn tanh_f32_is_within_three_ulp() {
        let ulp = |x: f32| {
            let b = x.abs().to_bits();
            f32::from_bits(b + 1) - f32::from_bits(b)
        };
        let mut worst = 0.0f64;
        for i in 0..=400_000u32 {
            // Dense over [−10, 10], plus tiny and subnormal magnitudes.
            for z in [(i as f32 / 20_000.0) - 10.0, f32::from_bits(i * 2000), -f32::from_bits(i * 2000 + 7)] {
                if !z.is_finite() {
                    continue;
                }
                let want = f64::from(z).tanh();
                let got = tanh_f32(z);
                let err = (f64::from(got) - want).abs() / f64::from(ulp(want as f32).max(f32::from_bits(1)));
                worst = worst.max(err);
                assert!(err <= 3.0, "tanh({z}) = {got}, want {want}: {err} ulp");
                assert_eq!(got.is_sign_negative(), z.is_sign_negative(), "sign at {z}");
            }
        }
        assert!(worst > 0.0);
        assert!(tanh_f32(f32::NAN).is_nan());
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
    }

    #[test]
    fn constant_left_products_match() {
        let c = Array2::from_shape_fn((6, 5), |(i, j)| (i as f64 - j as f64) / 3.0);
        let b = dual_matrix(5, 3, 4);
        let want = reference(c.mapv(Dual::constant).view(), b.view());
        assert_same(&Dual::<f64>::matmul_base(c.view(), b.view()), &want);
        assert_same(&Dual::<f64>::matmul_base(c.view(), b.t().to_owned().t()), &want);
    }

    #[test]
    fn nested_duals_multiply_correctly() {
        let a = Array2::from_shape_fn((3, 2), |(i, j)| Dual::new(Dual::new(i as f64 + 1.0, 0.5), Dual::new(j as f64, 1.0)));
        let b = Array2::from_shape_fn((2, 2), |(i, j)| Dual::new(Dual::new(j as f64 - 1.0, 1.0), Dual::new(0.25, i as f64)));
        let got = Real::matmul(a.view(), b.view());
        for i in 0..3 {
            for j in 0..2 {
                let want: Dual<Dual<f64>> = (0..2).map(|k| a[[i, k]] * b[[k, j]]).sum();
                let g = got[[i, j]];
                for (x, y) in [
                    (g.value.value, want.value.value),
                    (g.value.tangent, want.value.tangent),
                    (g.tangent.value, want.tangent.value),
                    (g.tangent.tangent, want.tangent.tangent),
                ] {
                    assert!((x - y).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn map_with_derivative_follows_the_chain_rule_at_every_depth() {
        // f = tanh, given with f' and f'' in generic arithmetic.
        fn f<T: Real>(x: T) -> (T, T, T) {
            let t = x.tanh();
            let d = T::one() - t * t;
            (t, d, T::cast(-2.0) * t * d)
        }
        type D2 = Dual<Dual<f64>>;
        let pts: Vec<D2> = [(0.3, 1.0, -0.5, 2.0), (-1.2, 0.25, 1.5, -1.0)]
            .iter()
            .map(|&(a, b, c, d)| Dual::new(Dual::new(a, b), Dual::new(c, d)))
            .collect();
        let mut z = Array2::from_shape_vec((1, 2), pts.clone()).expect("shape");
        let mut d = Array2::from_elem((1, 2), D2::default());
        D2::map_with_derivative(z.view_mut(), d.view_mut(), f);
        for (j, &x) in pts.iter().enumerate() {
            // Reference: the same functions in nested dual arithmetic.
            let (want_f, want_d, _) = f(x);
            for (got, want) in [(z[[0, j]], want_f), (d[[0, j]], want_d)] {
                for (g, w) in [
                    (got.value.value, want.value.value),
                    (got.value.tangent, want.value.tangent),
                    (got.tangent.value, want.tangent.value),
                    (got.tangent.tangent, want.tangent.tangent),
                ] {
                    assert!((g - w).abs() < 1e-14, "{g} vs {w}");
                }
            }
        }
    }
}
