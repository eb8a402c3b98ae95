"""Coefficients of `erf_f32` in crates/quant-models/src/bert/model.rs (the f32 GELU's erf).

erf(t) = t * P(t^2) for |t| < 1 (P of degree 6), and 1 - exp(-t^2) * G(t) for 1 <= |t| < 3.92
(G of degree 8 in t - 2.5, fitted to erfc(t) * exp(t^2)); both by least squares with Lawson's
reweighting towards the smallest largest absolute error of erf (erfc for G). Then checks the
f32 evaluation (numpy's float32 arithmetic, the same operations in the same order as the Rust
code) against math.erf on a dense sweep and prints the coefficients as f32 and the worst error.
Needs numpy and mpmath (development only; the project does not run it).

    python3 scripts/erf_f32_fit.py
"""
import math

import mpmath
import numpy as np

f32 = np.float32
SPLIT, SATURATE, CENTRE = 1.0, 3.92, 2.5


def lawson(x, y, degree, scale, rounds=40):
    """Polynomial in x minimising roughly max |(p(x) - y) * scale|."""
    v = np.stack([x**i for i in range(degree + 1)], 1)
    w = np.ones_like(x)
    best = None
    for _ in range(rounds):
        sw = np.sqrt(w) * scale
        c, *_ = np.linalg.lstsq(v * sw[:, None], y * sw, rcond=None)
        e = np.abs((v @ c - y) * scale)
        if best is None or e.max() < best[0]:
            best = (e.max(), c)
        w = w * (e / e.max() + 1e-4)
        w /= w.sum()
    return best[1]


t = np.linspace(0.0, SPLIT, 20001)
p = lawson(t * t, np.array([math.erf(x) / x if x > 0 else 2 / math.sqrt(math.pi) for x in t]), 6, np.maximum(t, 1e-3))
t = np.linspace(SPLIT, SATURATE, 20001)
g = lawson(t - CENTRE, np.array([float(mpmath.erfc(x) * mpmath.exp(x * x)) for x in t]), 8, np.exp(-t * t))
P, G = [f32(c) for c in p], [f32(c) for c in g]


def horner(cs, x):
    r = np.zeros_like(x)
    for c in cs[::-1]:
        r = (r * x + c).astype(f32)
    return r


def exp_neg(x):
    shift = f32(12582912.0)
    v = ((-x * f32(math.log2(math.e))).astype(f32) + shift).astype(f32)
    n = (v - shift).astype(f32)
    r = ((-x - (n * f32(0.693145751953125)).astype(f32)).astype(f32) - (n * f32(1.428606765330187e-06)).astype(f32)).astype(f32)
    k = v.view(np.int32) - np.array([shift], dtype=f32).view(np.int32)[0]
    return (horner([f32(1 / math.factorial(i)) for i in range(8)], r) * ((k + 127) << 23).astype(np.int32).view(f32)).astype(f32)


def erf_f32(x):
    a = np.abs(x)
    small = (a * horner(P, (a * a).astype(f32))).astype(f32)
    b = np.clip(a, f32(SPLIT), f32(SATURATE))
    tail = (f32(1.0) - (exp_neg((b * b).astype(f32)) * horner(G, (b - f32(CENTRE)).astype(f32))).astype(f32)).astype(f32)
    return np.copysign(np.where(a < f32(SPLIT), small, np.where(a < f32(SATURATE), tail, f32(1.0))), x)


x = np.concatenate([np.linspace(-6, 6, 1200001), np.logspace(-38, 0, 3000)]).astype(f32)
want = np.array([math.erf(float(v)) for v in x])
err = np.abs(erf_f32(x).astype(np.float64) - want)
ulp = np.spacing(np.abs(want).astype(f32)).astype(np.float64)
print("P =", [float(c) for c in P])
print("G =", [float(c) for c in G])
print(f"largest error: {err.max():.3g} absolute, {(err / ulp).max():.2f} ulp")
