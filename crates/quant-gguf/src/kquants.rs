//! The k-quants: super-blocks of 256 values in sub-blocks of 16 or 32, each sub-block with its
//! own scale (and minimum) stored as small integer codes under f16 super-scales, as ggml lays
//! them out (`block_q2_K` … `block_q6_K` in `ggml-common.h`).
//!
//! Decoders compute exactly what ggml's `dequantize_row_q*_K` compute (the same f32
//! operations in the same order). Encoders are this crate's own ([`crate::codec`] says how
//! they fit); ggml decodes their bytes like any other.

use half::f16;

/// Values per super-block.
pub(crate) const QK: usize = 256;

#[inline(always)]
fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scale and minimum codes of sub-block `j` (0..8) of a q4_K / q5_K block
/// (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 { (q[j] & 63, q[j + 4] & 63) } else { ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)) }
}

/// Packs eight 6-bit scale and minimum codes into 12 bytes (the inverse of [`scale_min_k4`]).
fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
    }
}

/// The sixteen 6-bit scale codes of a q3_K block, each minus 32 (ggml's unpacking of
/// `scales[12]`).
pub(crate) fn q3_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for j in 0..16 {
        let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// Packs sixteen 6-bit q3_K scale codes (`0..=63`, i.e. scale + 32) into 12 bytes.
fn pack_q3_scales(l: &[u8; 16], out: &mut [u8]) {
    out[..12].fill(0);
    for (j, &v) in l.iter().enumerate() {
        if j < 8 {
            out[j] = v & 0x0f;
        } else {
            out[j - 8] |= (v & 0x0f) << 4;
        }
        out[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
    }
}

pub(crate) fn decode_q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, min) = (half_at(b, 80), half_at(b, 82));
    let mut k = 0;
    let mut is = 0;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * f32::from(sc & 0x0f), min * f32::from(sc >> 4));
                for l in 0..16 {
                    y[k] = dl * f32::from(((q[l + 16 * half] >> shift) & 3) as i8) - ml;
                    k += 1;
                }
            }
        }
    }
}

pub(crate) fn decode_q3_k(b: &[u8], y: &mut [f32]) {
    let (hm, qs) = (&b[0..32], &b[32..96]);
    let scales = q3_scales(&b[96..108]);
    let d = half_at(b, 108);
    let (mut k, mut is, mut m) = (0, 0, 1u8);
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let dl = d * f32::from(scales[is]);
                is += 1;
                for l in 0..16 {
                    let i = l + 16 * half;
                    let v = ((q[i] >> shift) & 3) as i8 - if hm[i] & m != 0 { 0 } else { 4 };
                    y[k] = dl * f32::from(v);
                    k += 1;
                }
            }
            m <<= 1;
        }
    }
}

pub(crate) fn decode_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (half_at(b, 0), half_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for j in 0..4 {
        let q = &qs[32 * j..32 * j + 32];
        let (s1, m1) = scale_min_k4(2 * j, scales);
        let (s2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
        for l in 0..32 {
            y[64 * j + l] = d1 * f32::from(q[l] & 0x0f) - m1;
            y[64 * j + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

pub(crate) fn decode_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (half_at(b, 0), half_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for j in 0..4 {
        let ql = &qs[32 * j..32 * j + 32];
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        let (s1, m1) = scale_min_k4(2 * j, scales);
        let (s2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
        for l in 0..32 {
            y[64 * j + l] = d1 * f32::from((ql[l] & 0x0f) + if qh[l] & u1 != 0 { 16 } else { 0 }) - m1;
            y[64 * j + 32 + l] = d2 * f32::from((ql[l] >> 4) + if qh[l] & u2 != 0 { 16 } else { 0 }) - m2;
        }
    }
}

pub(crate) fn decode_q6_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 208);
    for n in 0..2 {
        let (ql, qh) = (&b[64 * n..64 * n + 64], &b[128 + 32 * n..128 + 32 * n + 32]);
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = s(0) * f32::from(q1);
            y[l + 32] = s(2) * f32::from(q2);
            y[l + 64] = s(4) * f32::from(q3);
            y[l + 96] = s(6) * f32::from(q4);
        }
    }
}

/// How one k-quant type codes a super-block.
#[derive(Clone, Copy)]
struct Plan {
    /// Values per sub-block (16 or 32).
    sub: usize,
    /// Codes `qlo..=qhi` (affine types: `0..=2^b − 1`, value `s·q − m`; symmetric: signed,
    /// value `s·q`).
    qlo: i32,
    qhi: i32,
    affine: bool,
    /// Sub-block scale codes `slo..=shi` under the super-scale (and minimum codes `0..=shi`).
    slo: i32,
    shi: i32,
}

const Q2: Plan = Plan { sub: 16, qlo: 0, qhi: 3, affine: true, slo: 0, shi: 15 };
const Q3: Plan = Plan { sub: 16, qlo: -4, qhi: 3, affine: false, slo: -32, shi: 31 };
const Q4: Plan = Plan { sub: 32, qlo: 0, qhi: 15, affine: true, slo: 0, shi: 63 };
const Q5: Plan = Plan { sub: 32, qlo: 0, qhi: 31, affine: true, slo: 0, shi: 63 };
const Q6: Plan = Plan { sub: 16, qlo: -32, qhi: 31, affine: false, slo: -128, shi: 127 };

/// A coded super-block: super-scales, sub-block codes and value codes.
struct Coded {
    d: f16,
    dmin: f16,
    sc: [i32; 16],
    m: [i32; 16],
    q: [i32; QK],
}

/// The decoded value of code `q` under sub-block step `ds` and minimum `dm`, with the
/// decoders' f32 operations.
#[inline(always)]
fn value(ds: f32, dm: f32, q: i32) -> f32 {
    ds * q as f32 - dm
}

/// The nearest code to `x` under `(ds, dm)` (reciprocal step `inv`), clamped to the plan's
/// range. Multiplication by the reciprocal and rounding half up through a truncating
/// conversion (the clamped value shifted to be non-negative) keep the loops that call it
/// vectorisable on every x86-64; a code one off at an exact tie changes no error measured
/// here by more than rounding, and the decoder takes whatever codes are written.
#[inline(always)]
fn code_inv(p: &Plan, inv: f32, dm: f32, x: f32) -> i32 {
    let v = ((x + dm) * inv).max(p.qlo as f32).min(p.qhi as f32);
    (v - p.qlo as f32 + 0.5) as i32 + p.qlo
}

/// [`code_inv`] from the step itself (0 for a zero step).
#[inline(always)]
fn code(p: &Plan, ds: f32, dm: f32, x: f32) -> i32 {
    if ds == 0.0 {
        return 0.clamp(p.qlo, p.qhi);
    }
    code_inv(p, 1.0 / ds, dm, x)
}

/// Squared error of a sub-block under `(ds, dm)` with nearest codes (summed in f32 over the
/// sub-block's 16 or 32 values, then widened).
fn sub_error(p: &Plan, xs: &[f32], ds: f32, dm: f32) -> f64 {
    if ds == 0.0 {
        let q = 0.clamp(p.qlo, p.qhi);
        return xs.iter().map(|&x| f64::from(value(ds, dm, q) - x).powi(2)).sum();
    }
    let inv = 1.0 / ds;
    let mut acc = 0f32;
    for &x in xs {
        let e = value(ds, dm, code_inv(p, inv, dm, x)) - x;
        acc += e * e;
    }
    f64::from(acc)
}

/// The sub-block's own grid before any coding: step `s` and minimum `m` (value `s·q − m`;
/// `m = 0` for symmetric plans, whose `s` may be negative) with the least squared error among
/// a clipping search and least-squares refits of each candidate's codes.
fn fit_sub(p: &Plan, xs: &[f32]) -> (f32, f32) {
    let (lo, hi) = xs.iter().fold((f32::MAX, -f32::MAX), |(l, h), &x| (l.min(x), h.max(x)));
    let mut best = (f64::INFINITY, 0f32, 0f32);
    let mut consider = |s: f32, m: f32| {
        if s.is_finite() && m.is_finite() {
            let e = sub_error(p, xs, s, m);
            if e < best.0 {
                best = (e, s, m);
            }
        }
    };
    if p.affine {
        // Minimums are stored as non-negative codes: the grid starts at or below 0.
        let lo = lo.min(0.0);
        if hi <= lo {
            return (0.0, -lo);
        }
        let sum_x: f64 = xs.iter().map(|&x| f64::from(x)).sum();
        for k in (0..=16).step_by(2) {
            let s = (hi - lo) / p.qhi as f32 * (1.0 - k as f32 / 40.0);
            consider(s, -lo);
            // Refit step and minimum for these codes (the minimum kept non-negative).
            let (mut sq, mut sqq, mut sqx) = (0f32, 0f32, 0f32);
            let inv = 1.0 / s;
            for &x in xs {
                let q = code_inv(p, inv, -lo, x) as f32;
                sq += q;
                sqq += q * q;
                sqx += q * x;
            }
            let (n, sq, sqq, sx, sqx) = (xs.len() as f64, f64::from(sq), f64::from(sqq), sum_x, f64::from(sqx));
            let den = n * sqq - sq * sq;
            if den > 0.0 {
                let s2 = (n * sqx - sq * sx) / den;
                let o = (sx - s2 * sq) / n;
                if o <= 0.0 {
                    consider(s2 as f32, -o as f32);
                } else if sqq > 0.0 {
                    consider((sqx / sqq) as f32, 0.0);
                }
            }
        }
    } else {
        let amax = if hi.abs() > lo.abs() { hi } else { lo };
        if amax == 0.0 {
            return (0.0, 0.0);
        }
        // The signed extreme on the wider side of the codes (−qlo), or on the other (qhi).
        for (base, far) in [(amax / -(p.qlo as f32), true), (amax / p.qhi as f32, false)] {
            for k in 0..=12 {
                let s = base * (1.0 - k as f32 / 40.0);
                consider(if far { -s } else { s }, 0.0);
                let s = if far { -s } else { s };
                let (mut sqq, mut sqx) = (0f32, 0f32);
                let inv = 1.0 / s;
                for &x in xs {
                    let q = code_inv(p, inv, 0.0, x) as f32;
                    sqq += q * q;
                    sqx += q * x;
                }
                if sqq > 0.0 {
                    consider(sqx / sqq, 0.0);
                }
            }
        }
    }
    (best.1, best.2)
}

/// Codes one super-block of 256 finite values under plan `p`.
fn encode_block(p: &Plan, x: &[f32]) -> Coded {
    let n = QK / p.sub;
    let fits: Vec<(f32, f32)> = x.chunks_exact(p.sub).map(|xs| fit_sub(p, xs)).collect();
    // Super-scales: the largest sub-block step (and minimum) takes the largest code.
    let smax = fits.iter().fold(0f32, |a, f| a.max(f.0.abs()));
    let mmax = fits.iter().fold(0f32, |a, f| a.max(f.1));
    let top = if p.affine { p.shi } else { p.shi.min(-p.slo) } as f32;
    let near = |v: f32, unit: f32, lo: i32, hi: i32| if unit > 0.0 { ((v / unit).round() as i32).clamp(lo, hi) } else { 0 };
    // The block's error with super-scales `(d, dmin)` and every sub-block's codes rounded
    // to the nearest under them.
    let block_error = |d: f32, dmin: f32| -> f64 {
        x.chunks_exact(p.sub)
            .zip(&fits)
            .map(|(xs, &(s, m))| {
                let sc = near(s, d, p.slo, p.shi);
                let mm = if p.affine { near(m, dmin, 0, p.shi) } else { 0 };
                sub_error(p, xs, d * sc as f32, dmin * mm as f32)
            })
            .sum()
    };
    // The f16 super-scales nearest the largest sub-block step and minimum, then the f16
    // neighbours within two steps of each where they lower the block's error (small blocks
    // put the super-scales among f16's subnormals, whose spacing is coarse).
    let around = |v: f32| -> Vec<f16> {
        let c = f16::from_f32(v);
        let b = c.to_bits();
        (0..=4u16)
            .filter_map(|k| b.checked_add(k).and_then(|v| v.checked_sub(2)))
            .map(f16::from_bits)
            .filter(|h| h.is_finite() && h.to_f32() >= 0.0)
            .collect()
    };
    let mut d = f16::from_f32(smax / top);
    let mut dmin = f16::from_f32(mmax / p.shi as f32);
    let mut best = block_error(d.to_f32(), dmin.to_f32());
    for c in around(smax / top) {
        let e = block_error(c.to_f32(), dmin.to_f32());
        if e < best {
            (best, d) = (e, c);
        }
    }
    if p.affine {
        for c in around(mmax / p.shi as f32) {
            let e = block_error(d.to_f32(), c.to_f32());
            if e < best {
                (best, dmin) = (e, c);
            }
        }
    }
    let (df, mf) = (d.to_f32(), dmin.to_f32());
    let mut out = Coded { d, dmin, sc: [0; 16], m: [0; 16], q: [0; QK] };
    for (j, (xs, &(s, m))) in x.chunks_exact(p.sub).zip(&fits).enumerate().take(n) {
        let sc0 = near(s, df, p.slo, p.shi);
        let m0 = if p.affine { near(m, mf, 0, p.shi) } else { 0 };
        // The coded step and minimum, then one code either way where that lowers the error.
        let mut best = (f64::INFINITY, sc0, m0);
        let mrange = if p.affine { -1..=1 } else { 0..=0 };
        for dsc in -1..=1 {
            for dm in mrange.clone() {
                let (sc, mm) = (sc0 + dsc, m0 + dm);
                if sc < p.slo || sc > p.shi || mm < 0 || mm > p.shi {
                    continue;
                }
                let e = sub_error(p, xs, df * sc as f32, mf * mm as f32);
                if e < best.0 || (e == best.0 && (dsc, dm) == (0, 0)) {
                    best = (e, sc, mm);
                }
            }
        }
        let (_, sc, mm) = best;
        out.sc[j] = sc;
        out.m[j] = mm;
        let (ds, dm) = (df * sc as f32, mf * mm as f32);
        for (i, &v) in xs.iter().enumerate() {
            out.q[j * p.sub + i] = code(p, ds, dm, v);
        }
    }
    out
}

pub(crate) fn encode_q2_k(x: &[f32], o: &mut [u8]) {
    pack_q2_k(&encode_block(&Q2, x), o);
}

fn pack_q2_k(c: &Coded, o: &mut [u8]) {
    for ((o, &sc), &m) in o[..16].iter_mut().zip(&c.sc).zip(&c.m) {
        *o = (sc as u8) | ((m as u8) << 4);
    }
    let qs = &mut o[16..80];
    qs.fill(0);
    for (k, &q) in c.q.iter().enumerate() {
        let (n, r) = (k / 128, k % 128);
        qs[32 * n + r % 32] |= (q as u8) << (2 * (r / 32));
    }
    o[80..82].copy_from_slice(&c.d.to_le_bytes());
    o[82..84].copy_from_slice(&c.dmin.to_le_bytes());
}

pub(crate) fn encode_q3_k(x: &[f32], o: &mut [u8]) {
    let c = encode_block(&Q3, x);
    o[..96].fill(0);
    for (k, &q) in c.q.iter().enumerate() {
        let (n, r) = (k / 128, k % 128);
        let u = (q + 4) as u8;
        o[32 + 32 * n + r % 32] |= (u & 3) << (2 * (r / 32));
        o[r % 32] |= (u >> 2) << (4 * n + r / 32);
    }
    let l: [u8; 16] = core::array::from_fn(|j| (c.sc[j] + 32) as u8);
    pack_q3_scales(&l, &mut o[96..108]);
    o[108..110].copy_from_slice(&c.d.to_le_bytes());
}

/// q4_K and q5_K: super-scales, packed 6-bit scale and minimum codes, then the codes.
fn encode_q45_k(p: &Plan, x: &[f32], o: &mut [u8]) {
    pack_q45_k(p.qhi == 31, &encode_block(p, x), o);
}

fn pack_q45_k(five: bool, c: &Coded, o: &mut [u8]) {
    o[0..2].copy_from_slice(&c.d.to_le_bytes());
    o[2..4].copy_from_slice(&c.dmin.to_le_bytes());
    let sc: [u8; 8] = core::array::from_fn(|j| c.sc[j] as u8);
    let m: [u8; 8] = core::array::from_fn(|j| c.m[j] as u8);
    pack_scale_min_k4(&sc, &m, &mut o[4..16]);
    let (qh, qs) = o[16..].split_at_mut(if five { 32 } else { 0 });
    qh.fill(0);
    for j in 0..4 {
        for l in 0..32 {
            let (a, b) = (c.q[64 * j + l] as u8, c.q[64 * j + 32 + l] as u8);
            qs[32 * j + l] = (a & 0x0f) | ((b & 0x0f) << 4);
            if five {
                qh[l] |= ((a >> 4) << (2 * j)) | ((b >> 4) << (2 * j + 1));
            }
        }
    }
}

pub(crate) fn encode_q4_k(x: &[f32], o: &mut [u8]) {
    encode_q45_k(&Q4, x, o);
}

pub(crate) fn encode_q5_k(x: &[f32], o: &mut [u8]) {
    encode_q45_k(&Q5, x, o);
}

pub(crate) fn encode_q6_k(x: &[f32], o: &mut [u8]) {
    let c = encode_block(&Q6, x);
    o[..192].fill(0);
    for (k, &q) in c.q.iter().enumerate() {
        let (n, r) = (k / 128, k % 128);
        let (l, quarter) = (r % 32, r / 32);
        let u = (q + 32) as u8;
        let at = 64 * n + l + if quarter % 2 == 1 { 32 } else { 0 };
        o[at] |= (u & 0x0f) << if quarter >= 2 { 4 } else { 0 };
        o[128 + 32 * n + l] |= (u >> 4) << (2 * quarter);
    }
    for (o, &sc) in o[192..208].iter_mut().zip(&c.sc) {
        *o = sc as i8 as u8;
    }
    o[208..210].copy_from_slice(&c.d.to_le_bytes());
}

/// Packs one q2_K, q4_K or q5_K block from its parts: super-scale `d`, super-minimum `dmin`,
/// the sub-blocks' scale and minimum codes and the 256 value codes (for the conversion from
/// quant-core tensors). Other types are left untouched.
pub(crate) fn pack_block(ty: crate::types::GgmlType, d: f16, dmin: f16, sc: &[u8], m: &[u8], q: &[u8], o: &mut [u8]) {
    let mut c = Coded { d, dmin, sc: [0; 16], m: [0; 16], q: [0; QK] };
    for (j, (&s, &mm)) in sc.iter().zip(m).take(16).enumerate() {
        c.sc[j] = i32::from(s);
        c.m[j] = i32::from(mm);
    }
    for (t, &v) in c.q.iter_mut().zip(q) {
        *t = i32::from(v);
    }
    match ty {
        crate::types::GgmlType::Q2_K => pack_q2_k(&c, o),
        crate::types::GgmlType::Q4_K => pack_q45_k(false, &c, o),
        crate::types::GgmlType::Q5_K => pack_q45_k(true, &c, o),
        _ => {}
    }
}
