//! `Dual<f64>` against closed-form derivatives of every function it implements, and
//! against central differences of the `f64` function as an independent second check.

use approx::assert_relative_eq;
use num_traits::{Float as NumFloat, FromPrimitive, Num, NumCast, ToPrimitive};
use quant_hessian::{Dual, Float};

type D = Dual<f64>;

fn var(x: f64) -> D {
    Dual::new(x, 1.0)
}

/// Checks `f` on duals against the closed-form derivative `df` and a central difference
/// of `f` on `f64` at each point.
fn check(name: &str, f: impl Fn(D) -> D, f64f: impl Fn(f64) -> f64, df: impl Fn(f64) -> f64, points: &[f64]) {
    let close = |a: f64, b: f64, rel: f64, abs: f64| (a - b).abs() <= abs.max(rel * a.abs().max(b.abs()));
    for &x in points {
        let y = f(var(x));
        assert!(close(y.value, f64f(x), 1e-15, 0.0), "{name}({x}): value {} vs {}", y.value, f64f(x));
        // Closed forms are evaluated with different rounding than the chain rule: a few ulps.
        assert!(close(y.tangent, df(x), 1e-13, 1e-15), "{name}'({x}): {} vs closed form {}", y.tangent, df(x));
        let h = 1e-5 * x.abs().max(1.0);
        let fd = (f64f(x + h) - f64f(x - h)) / (2.0 * h);
        // Central difference: O(h²) truncation, O(ε/h) rounding, ~1e-9 relative here.
        assert!(close(y.tangent, fd, 1e-6, 1e-8), "{name}'({x}): {} vs difference {fd}", y.tangent);
    }
}

#[test]
fn elementary_functions_match_closed_forms() {
    let pos = [0.3, 1.0, 2.5, 7.0];
    let unit = [-0.7, -0.2, 0.1, 0.6];
    let any = [-3.0, -0.4, 0.2, 1.7];
    check("exp", |x| x.exp(), f64::exp, f64::exp, &any);
    check("exp2", |x| x.exp2(), f64::exp2, |x| x.exp2() * 2f64.ln(), &any);
    check("exp_m1", |x| x.exp_m1(), f64::exp_m1, f64::exp, &any);
    check("ln", |x| x.ln(), f64::ln, |x| 1.0 / x, &pos);
    check("ln_1p", |x| x.ln_1p(), f64::ln_1p, |x| 1.0 / (1.0 + x), &pos);
    check("log2", |x| x.log2(), f64::log2, |x| 1.0 / (x * 2f64.ln()), &pos);
    check("log10", |x| x.log10(), f64::log10, |x| 1.0 / (x * 10f64.ln()), &pos);
    check("log3", |x| x.log(Dual::constant(3.0)), |x| x.log(3.0), |x| 1.0 / (x * 3f64.ln()), &pos);
    check("sqrt", |x| x.sqrt(), f64::sqrt, |x| 0.5 / x.sqrt(), &pos);
    check("cbrt", |x| x.cbrt(), f64::cbrt, |x| 1.0 / (3.0 * x.cbrt().powi(2)), &any);
    check("recip", |x| x.recip(), f64::recip, |x| -1.0 / (x * x), &any);
    check("powi3", |x| x.powi(3), |x| x.powi(3), |x| 3.0 * x * x, &any);
    check("powi-2", |x| x.powi(-2), |x| x.powi(-2), |x| -2.0 * x.powi(-3), &any);
    check("powi0", |x| x.powi(0), |x| x.powi(0), |_| 0.0, &any);
    check("powf_const", |x| x.powf(Dual::constant(2.5)), |x| x.powf(2.5), |x| 2.5 * x.powf(1.5), &pos);
    check("powf_exp", |x| Dual::constant(2.5).powf(x), |x| 2.5f64.powf(x), |x| 2.5f64.powf(x) * 2.5f64.ln(), &any);
    check("x_pow_x", |x| x.powf(x), |x| x.powf(x), |x| x.powf(x) * (x.ln() + 1.0), &pos);
    check("sin", |x| x.sin(), f64::sin, f64::cos, &any);
    check("cos", |x| x.cos(), f64::cos, |x| -x.sin(), &any);
    check("tan", |x| x.tan(), f64::tan, |x| 1.0 / x.cos().powi(2), &unit);
    check("asin", |x| x.asin(), f64::asin, |x| 1.0 / (1.0 - x * x).sqrt(), &unit);
    check("acos", |x| x.acos(), f64::acos, |x| -1.0 / (1.0 - x * x).sqrt(), &unit);
    check("atan", |x| x.atan(), f64::atan, |x| 1.0 / (1.0 + x * x), &any);
    check("sinh", |x| x.sinh(), f64::sinh, f64::cosh, &any);
    check("cosh", |x| x.cosh(), f64::cosh, f64::sinh, &any);
    check("tanh", |x| x.tanh(), f64::tanh, |x| 1.0 / x.cosh().powi(2), &any);
    check("asinh", |x| x.asinh(), f64::asinh, |x| 1.0 / (x * x + 1.0).sqrt(), &any);
    check("acosh", |x| x.acosh(), f64::acosh, |x| 1.0 / (x * x - 1.0).sqrt(), &[1.5, 2.0, 7.0]);
    check("atanh", |x| x.atanh(), f64::atanh, |x| 1.0 / (1.0 - x * x), &unit);
    check("abs", |x| x.abs(), f64::abs, f64::signum, &any);
    check("fract", |x| x.fract(), f64::fract, |_| 1.0, &[0.3, 1.7, -2.4]);
    check("to_degrees", |x| x.to_degrees(), f64::to_degrees, |_| 180.0 / std::f64::consts::PI, &any);
    check("to_radians", |x| x.to_radians(), f64::to_radians, |_| std::f64::consts::PI / 180.0, &any);
    check("mul_add", |x| x.mul_add(x, Dual::constant(2.0)), |x| x * x + 2.0, |x| 2.0 * x, &any);
    check("hypot", |x| x.hypot(Dual::constant(2.0)), |x| x.hypot(2.0), |x| x / x.hypot(2.0), &any);
    check("atan2_y", |x| x.atan2(Dual::constant(1.5)), |x| x.atan2(1.5), |x| 1.5 / (x * x + 2.25), &any);
    check("atan2_x", |x| Dual::constant(1.5).atan2(x), |x| 1.5f64.atan2(x), |x| -1.5 / (x * x + 2.25), &any);
    check("sin_cos", |x| x.sin_cos().0 * x.sin_cos().1, |x| x.sin() * x.cos(), |x| (2.0 * x).cos(), &any);
    check("rem", |x| x % Dual::constant(0.75), |x| x % 0.75, |_| 1.0, &[0.3, 1.7, -2.2]);
    check("rem_divisor", |x| Dual::constant(5.3) % x, |x| 5.3 % x, |x| -(5.3 / x).trunc(), &[1.1, 2.5, -1.6]);
    check("max", |x| x.max(Dual::constant(0.0)), |x| x.max(0.0), |x| if x > 0.0 { 1.0 } else { 0.0 }, &any);
    check("min", |x| x.min(Dual::constant(0.0)), |x| x.min(0.0), |x| if x < 0.0 { 1.0 } else { 0.0 }, &any);
    #[allow(deprecated)]
    check("abs_sub", |x| x.abs_sub(Dual::constant(0.5)), |x| (x - 0.5).max(0.0), |x| if x > 0.5 { 1.0 } else { 0.0 }, &any);
    check("copysign", |x| x.copysign(Dual::constant(-1.0)), |x| x.copysign(-1.0), |x| -x.signum(), &any);
}

#[test]
fn piecewise_constant_functions_have_zero_tangent() {
    for x in [-2.5, -0.4, 0.0, 1.5, 2.5] {
        for y in [var(x).floor(), var(x).ceil(), var(x).round(), var(x).trunc(), var(x).signum()] {
            assert_eq!(y.tangent, 0.0);
        }
        assert_eq!(var(x).floor().value, x.floor());
        assert_eq!(var(x).round().value, x.round());
    }
    // abs at 0: the least-norm subgradient.
    assert_eq!(var(0.0).abs().tangent, 0.0);
}

#[test]
fn arithmetic_follows_the_product_and_quotient_rules() {
    let (a, b) = (Dual::new(1.5, 2.0), Dual::new(-0.5, 3.0));
    let s = a + b;
    assert_eq!((s.value, s.tangent), (1.0, 5.0));
    let d = a - b;
    assert_eq!((d.value, d.tangent), (2.0, -1.0));
    let p = a * b;
    assert_eq!((p.value, p.tangent), (-0.75, 2.0 * -0.5 + 1.5 * 3.0));
    let q = a / b;
    assert_relative_eq!(q.value, -3.0);
    assert_relative_eq!(q.tangent, (2.0 * -0.5 - 1.5 * 3.0) / 0.25);
    let n = -a;
    assert_eq!((n.value, n.tangent), (-1.5, -2.0));
    let mut c = a;
    c += b;
    c -= b;
    c *= b;
    c /= b;
    assert_relative_eq!(c.value, a.value);
    assert_relative_eq!(c.tangent, a.tangent);
    let total: D = [a, b, a].into_iter().sum();
    assert_eq!((total.value, total.tangent), (2.5, 7.0));
}

#[test]
fn nested_duals_give_second_derivatives() {
    // f(x) = x³ sin x: f'' = 6x sin x + 6x² cos x − x³ sin x.
    let x0 = 0.8;
    let x = Dual::new(Dual::new(x0, 1.0), Dual::new(1.0, 0.0));
    let y = x.powi(3) * x.sin();
    let f2 = 6.0 * x0 * x0.sin() + 6.0 * x0 * x0 * x0.cos() - x0.powi(3) * x0.sin();
    assert_relative_eq!(y.tangent.tangent, f2, max_relative = 1e-14);
    assert_relative_eq!(y.value.tangent, y.tangent.value, max_relative = 1e-15);
}

#[test]
fn conversions_comparisons_and_formatting() {
    let a: D = FromPrimitive::from_f64(2.5).expect("finite");
    assert_eq!((a.value, a.tangent), (2.5, 0.0));
    let b: D = NumCast::from(3u8).expect("small");
    assert_eq!(b.value, 3.0);
    assert_eq!(Dual::new(2.7, 1.0).to_i64(), Some(2));
    assert_eq!(<D as Num>::from_str_radix("1.5", 10).ok().map(|d| d.value), Some(1.5));
    assert!(Dual::new(1.0, 5.0) == Dual::new(1.0, -5.0), "equality looks at values");
    assert!(Dual::new(1.0, 5.0) < Dual::new(2.0, -5.0));
    assert!(<D as NumFloat>::nan().is_nan() && <D as NumFloat>::infinity().is_infinite());
    assert_eq!(<D as Float>::BYTES, 16);
    assert_eq!(<D as Float>::cast(0.25).value, 0.25);
    assert_eq!(format!("{}", Dual::new(1.5, -2.0)), "1.5 + -2ε");
    assert_eq!(format!("{:e}", Dual::new(1.5, 2.0)), "1.5e0 + 2e0ε");
    assert_eq!(Dual::new(1.5, 2.0).integer_decode(), 1.5f64.integer_decode());
    // ndarray scalar operands.
    let v = ndarray::Array1::from_vec(vec![Dual::new(1.0, 1.0), Dual::new(2.0, 0.0)]);
    let w = &v * Dual::new(3.0, 1.0);
    assert_eq!((w[0].value, w[0].tangent), (3.0, 4.0));
    assert_eq!((w[1].value, w[1].tangent), (6.0, 2.0));
}
