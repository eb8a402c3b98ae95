//! Between GGML blocks and quant-core's quantized tensors, without changing a value.
//!
//! Several GGML types are uniform grids in groups along a row, which quant-core describes
//! with a [`UniformSpec`]; a tensor of one of them converts both ways exactly (the same
//! values; and the blocks ggml's encoders and this crate's write come back as the same bytes):
//!
//! | GGML type | quant-core spec (groups along the last axis) |
//! |---|---|
//! | `q8_0` | 8 bits, [`Scheme::SymmetricFull`] (or narrow), groups of 32, [`ParamDtype::F16`] |
//! | `q4_0`, `q5_0` | 4 / 5 bits, [`Scheme::SymmetricFull`] (or narrow), groups of 32, f16 (to GGML); from GGML as grids with f32 parameters (below) |
//! | `q4_1`, `q5_1` | 4 / 5 bits, [`Scheme::AsymmetricGrid`], groups of 32, f16 |
//! | `q4_K`, `q5_K` | 4 / 5 bits, grid, groups of 32, [`ParamDtype::Quantized`] 6-bit codes, super-groups of 8 |
//! | `q2_K` | 2 bits, grid, groups of 16, 4-bit table codes, super-groups of 16 |
//! | `q3_K`, `q6_K` | from GGML only: 4 / 7 bits, [`Scheme::SymmetricFull`], groups of 16, f32 parameters (below) |
//!
//! ggml's reference quantizer gives a `q4_0` / `q5_0` block a negative step when its value of
//! largest magnitude is positive, so that value takes the extra negative level; quant-core's
//! grids have positive steps, so these types are read as 4- / 5-bit [`Scheme::AsymmetricGrid`]
//! groups with f32 parameters ([`ParamDtype::Native`]). `q3_K` and `q6_K` have signed
//! sub-block scales for the same reason: they are read as symmetric 4- and 7-bit grids in
//! groups of 16 with f32 parameters (a negative scale becomes its magnitude with the codes'
//! signs flipped, which needs one more level than the type's codes). All four are exact and
//! do not convert back to the same bytes. A k-quant block whose super-scale or one of whose
//! sub-block scale codes is 0 has no two-level form in quant-core (its steps must be
//! positive); such a `q2_K` / `q4_K` / `q5_K` tensor converts to f32 parameters per group
//! instead, still exactly, and does not convert back. The float types are values
//! ([`crate::codec::dequantize`]).
//!
//! ```no_run
//! use quant_gguf::{GgufFile, convert};
//!
//! let file = GgufFile::open("model.q4_k_m.gguf")?;
//! for t in &file.header().tensors {
//!     if convert::convertible(t.ggml_type) {
//!         let q = convert::to_quantized(t.ggml_type, file.data(t), &t.shape())?; // quant-core's form
//!         // Back to blocks, where its spec is a GGML layout (q4_0 and q5_0 are read as grids
//!         // with f32 parameters, which are not).
//!         if let Ok((ty, bytes)) = convert::from_quantized(&q) {
//!             assert_eq!(ty, t.ggml_type);
//!             let _ = bytes;
//!         }
//!     }
//! }
//! # Ok::<(), quant_gguf::GgufError>(())
//! ```

use half::f16;
use quant_core::{Granularity, PackedCodes, ParamDtype, QuantParams, QuantizedTables, QuantizedTensor, Scheme, SliceParams, UniformSpec};

use crate::codec;
use crate::error::{GgufError, Result};
use crate::types::GgmlType;

/// How a GGML type maps onto quant-core: code width, scheme, group size, parameter storage.
struct Layout {
    bits: u8,
    scheme: Scheme,
    group: usize,
    params: ParamDtype,
}

fn layout(ty: GgmlType) -> Option<Layout> {
    let (bits, scheme, group, params) = match ty {
        GgmlType::Q8_0 => (8, Scheme::SymmetricFull, 32, ParamDtype::F16),
        // ggml's reference gives q4_0 and q5_0 blocks a negative step when their largest
        // value is positive (the 16th level then lands on it): as grids with f32 parameters
        // both signs are exact.
        GgmlType::Q4_0 => (4, Scheme::AsymmetricGrid, 32, ParamDtype::Native),
        GgmlType::Q5_0 => (5, Scheme::AsymmetricGrid, 32, ParamDtype::Native),
        GgmlType::Q4_1 => (4, Scheme::AsymmetricGrid, 32, ParamDtype::F16),
        GgmlType::Q5_1 => (5, Scheme::AsymmetricGrid, 32, ParamDtype::F16),
        GgmlType::Q4_K => (4, Scheme::AsymmetricGrid, 32, ParamDtype::Quantized { bits: 6, super_group: 8 }),
        GgmlType::Q5_K => (5, Scheme::AsymmetricGrid, 32, ParamDtype::Quantized { bits: 6, super_group: 8 }),
        GgmlType::Q2_K => (2, Scheme::AsymmetricGrid, 16, ParamDtype::Quantized { bits: 4, super_group: 16 }),
        // Signed sub-block scales: a negative one flips the codes' signs, so the signed codes
        // -4..=3 (q3_K) and -32..=31 (q6_K) take -4..=4 and -32..=32, which 4- and 7-bit
        // symmetric grids hold; f32 parameters hold every step d·sc exactly.
        GgmlType::Q3_K => (4, Scheme::SymmetricFull, 16, ParamDtype::Native),
        GgmlType::Q6_K => (7, Scheme::SymmetricFull, 16, ParamDtype::Native),
        _ => return None,
    };
    Some(Layout { bits, scheme, group, params })
}

/// Whether [`to_quantized`] converts tensors of type `ty`: every quantized type with a codec
/// (the float types are values).
pub fn convertible(ty: GgmlType) -> bool {
    layout(ty).is_some()
}

/// The step that stands for a zero one (an all-equal group): the smallest positive f16, with
/// every code at the zero point, so the values are still the offset.
fn zero_step() -> f32 {
    f32::from(f16::from_bits(1))
}

fn no_form(ty: GgmlType, why: &str) -> GgufError {
    GgufError::Tensor { name: ty.name().into(), reason: format!("no exact quant-core form: {why}") }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Per group of one block: `(step, offset)` in GGML's terms (`value = step·q + offset`, or
/// `step·(q − zero)` for the symmetric types), and for the k-quants the raw codes.
struct Group {
    step: f32,
    offset: f32,
    /// `(super-scale, super-offset, scale code, offset code)` for the k-quants.
    table: Option<(f16, f16, u8, u8)>,
}

/// The groups of one block, in value order.
fn groups(ty: GgmlType, b: &[u8]) -> Vec<Group> {
    let plain = |step: f32, offset: f32| Group { step, offset, table: None };
    match ty {
        GgmlType::Q8_0 => vec![plain(half(b, 0), 0.0)],
        // value = d·(q − z) = |d|·u + offset, with u = q (d ≥ 0) or u = L − q (d < 0).
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let (z, l) = if ty == GgmlType::Q4_0 { (8.0, 15.0) } else { (16.0, 31.0) };
            let d = half(b, 0);
            vec![if d >= 0.0 { plain(d, -z * d) } else { plain(-d, d * (l - z)) }]
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => vec![plain(half(b, 0), half(b, 2))],
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin) = (f16::from_le_bytes([b[0], b[1]]), f16::from_le_bytes([b[2], b[3]]));
            (0..8)
                .map(|j| {
                    let (sc, m) = crate::kquants::scale_min_k4(j, &b[4..16]);
                    let step = d.to_f32() * f32::from(sc);
                    let offset = -(dmin.to_f32() * f32::from(m));
                    Group { step, offset, table: Some((d, -dmin, sc, m)) }
                })
                .collect()
        }
        GgmlType::Q2_K => {
            let (d, dmin) = (f16::from_le_bytes([b[80], b[81]]), f16::from_le_bytes([b[82], b[83]]));
            (0..16)
                .map(|j| {
                    let (sc, m) = (b[j] & 0x0f, b[j] >> 4);
                    let step = d.to_f32() * f32::from(sc);
                    let offset = -(dmin.to_f32() * f32::from(m));
                    Group { step, offset, table: Some((d, -dmin, sc, m)) }
                })
                .collect()
        }
        GgmlType::Q3_K => {
            let d = half(b, 108);
            crate::kquants::q3_scales(&b[96..108]).iter().map(|&sc| plain(d * f32::from(sc), 0.0)).collect()
        }
        GgmlType::Q6_K => {
            let d = half(b, 208);
            b[192..208].iter().map(|&sc| plain(d * f32::from(sc as i8), 0.0)).collect()
        }
        _ => Vec::new(),
    }
}

/// A GGML tensor of `shape` (outermost first; rows are the last axis) as a quant-core
/// quantized tensor holding exactly the values GGML decodes.
///
/// # Errors
/// [`GgufError::NoCodec`] for a type that is not [`convertible`]; [`GgufError::Length`] for bytes
/// or a shape that do not match; [`GgufError::Tensor`] when a block holds a non-finite or
/// negative step (which ggml's encoders do not write).
pub fn to_quantized(ty: GgmlType, bytes: &[u8], shape: &[usize]) -> Result<QuantizedTensor<f32>> {
    let l = layout(ty).ok_or(GgufError::NoCodec(ty.name()))?;
    let n: usize = shape.iter().product();
    let row = shape.last().copied().unwrap_or(0);
    if shape.is_empty() || n == 0 || !row.is_multiple_of(ty.block_size()) {
        return Err(GgufError::Length { what: "rows of whole blocks", expected: ty.block_size(), got: row });
    }
    let values = codec::dequantize(ty, bytes, n)?;
    let mut slices = Vec::with_capacity(n / l.group);
    let mut tables = Vec::with_capacity(n / l.group);
    let mut codes = Vec::with_capacity(n);
    let zero = l.scheme.signed_offset(l.bits);
    let max = i32::from(l.scheme.max_code(l.bits));
    for (b, y) in bytes.chunks_exact(ty.block_bytes()).zip(values.chunks_exact(ty.block_size())) {
        for (g, ys) in groups(ty, b).into_iter().zip(y.chunks_exact(l.group)) {
            if !(g.step.is_finite() && g.offset.is_finite()) {
                return Err(no_form(ty, "a block's scale is not finite"));
            }
            // A symmetric grid takes a negative step as its magnitude with the codes' signs
            // flipped (the same products); ggml's encoders never give the affine types one.
            let symmetric = l.scheme != Scheme::AsymmetricGrid;
            if g.step < 0.0 && !symmetric {
                return Err(no_form(ty, "a block has a negative step"));
            }
            let magnitude = g.step.abs();
            for &v in ys {
                let q = if magnitude == 0.0 { zero } else { ((v - g.offset) / magnitude).round() as i32 + zero };
                // Only a flipped code can fall outside (q8_0's −128 under a negative step, which
                // ggml's encoder never writes).
                if !(0..=max).contains(&q) {
                    return Err(no_form(ty, "a code falls outside the grid"));
                }
                codes.push(q as u8);
            }
            let step = if magnitude > 0.0 { magnitude } else { zero_step() };
            slices.push(SliceParams { scale: step, zero_point: zero, offset: g.offset });
            tables.push(g.table);
        }
    }
    let base =
        UniformSpec::builder().bits(l.bits).scheme(l.scheme).granularity(Granularity::PerGroup { axis: shape.len() - 1, size: l.group });
    let codes = PackedCodes::pack(&codes, l.bits).map_err(|e| no_form(ty, &e.to_string()))?;
    let params = match l.params {
        ParamDtype::Quantized { bits, super_group } => {
            let per = super_group as usize;
            let exact = tables.iter().all(|t| t.is_some_and(|(d, _, sc, _)| d.to_f32() > 0.0 && sc > 0));
            if exact {
                let t: Vec<(f16, f16, u8, u8)> = tables.iter().flatten().copied().collect();
                let supers: Vec<f16> = t.iter().step_by(per).map(|x| x.0).collect();
                let super_offsets: Vec<f16> = t.iter().step_by(per).map(|x| x.1).collect();
                let sc: Vec<u8> = t.iter().map(|x| x.2).collect();
                let m: Vec<u8> = t.iter().map(|x| x.3).collect();
                let pack = |c: &[u8]| PackedCodes::pack(c, bits).map_err(|e| no_form(ty, &e.to_string()));
                let tables = QuantizedTables::from_parts(per, supers, pack(&sc)?, Some((super_offsets, pack(&m)?)))
                    .map_err(|e| no_form(ty, &e.to_string()))?;
                let spec = base.param_dtype(l.params).check().map_err(|e| no_form(ty, &e.to_string()))?;
                QuantParams::from_tables(&spec, tables).map_err(|e| no_form(ty, &e.to_string()))?
            } else {
                let spec = base.param_dtype(ParamDtype::Native).check().map_err(|e| no_form(ty, &e.to_string()))?;
                QuantParams::from_slices(&spec, slices).map_err(|e| no_form(ty, &e.to_string()))?
            }
        }
        other => {
            let spec = base.param_dtype(other).check().map_err(|e| no_form(ty, &e.to_string()))?;
            QuantParams::from_slices(&spec, slices).map_err(|e| no_form(ty, &e.to_string()))?
        }
    };
    QuantizedTensor::from_parts(shape.to_vec(), params, codes).map_err(|e| no_form(ty, &e.to_string()))
}

/// The GGML type whose layout a quant-core tensor's spec is (see the module's table), if any.
pub fn ggml_type_of(q: &QuantizedTensor<f32>) -> Option<GgmlType> {
    let spec = q.params().spec();
    let rank = q.shape().len();
    let Granularity::PerGroup { axis, size } = spec.granularity() else { return None };
    if rank == 0 || axis != rank - 1 {
        return None;
    }
    let symmetric = matches!(spec.scheme(), Scheme::SymmetricFull | Scheme::SymmetricNarrow);
    let grid = spec.scheme() == Scheme::AsymmetricGrid;
    let ty = match (spec.bits(), size, spec.param_dtype()) {
        (8, 32, ParamDtype::F16) if symmetric => GgmlType::Q8_0,
        (4, 32, ParamDtype::F16) if symmetric => GgmlType::Q4_0,
        (5, 32, ParamDtype::F16) if symmetric => GgmlType::Q5_0,
        (4, 32, ParamDtype::F16) if grid => GgmlType::Q4_1,
        (5, 32, ParamDtype::F16) if grid => GgmlType::Q5_1,
        (4, 32, ParamDtype::Quantized { bits: 6, super_group: 8 }) if grid => GgmlType::Q4_K,
        (5, 32, ParamDtype::Quantized { bits: 6, super_group: 8 }) if grid => GgmlType::Q5_K,
        (2, 16, ParamDtype::Quantized { bits: 4, super_group: 16 }) if grid => GgmlType::Q2_K,
        _ => return None,
    };
    q.shape()[rank - 1].is_multiple_of(ty.block_size()).then_some(ty)
}

/// A quant-core tensor as GGML blocks of the type its spec is ([`ggml_type_of`]), holding
/// exactly its values.
///
/// # Errors
/// [`GgufError::Tensor`] when the spec is not one of a GGML type's (the module's table) or
/// the rows are not whole blocks.
pub fn from_quantized(q: &QuantizedTensor<f32>) -> Result<(GgmlType, Vec<u8>)> {
    let ty = ggml_type_of(q).ok_or_else(|| GgufError::Tensor {
        name: "quantized tensor".into(),
        reason: format!("its spec ({:?}) is not a GGML type's layout", q.params().spec()),
    })?;
    let spec = q.params().spec();
    let codes = q.codes().unpack();
    let slices = q.params().slices();
    let zero = spec.scheme().signed_offset(spec.bits());
    let mut out = Vec::with_capacity(ty.bytes_for(ty.block_size() as u64, codes.len() as u64).unwrap_or(0) as usize);
    let signed = |c: u8| i32::from(c) - zero;
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let ggml_zero = match ty {
                GgmlType::Q8_0 => 0,
                GgmlType::Q4_0 => 8,
                GgmlType::Q5_0 => 16,
                _ => 0,
            };
            for (s, c) in slices.iter().zip(codes.chunks_exact(32)) {
                // `to_quantized`'s stand-in for a zero scale goes back as 0 (the same values).
                let zero_block = s.scale == zero_step() && c.iter().all(|&u| i32::from(u) == zero);
                let d = if zero_block { f16::ZERO } else { f16::from_f32(s.scale) };
                out.extend_from_slice(&d.to_le_bytes());
                if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    out.extend_from_slice(&f16::from_f32(s.offset).to_le_bytes());
                }
                let q: [u8; 32] = core::array::from_fn(|j| (signed(c[j]) + ggml_zero) as u8);
                let start = out.len();
                match ty {
                    GgmlType::Q8_0 => out.extend_from_slice(&q),
                    GgmlType::Q4_0 | GgmlType::Q4_1 => {
                        out.resize(start + 16, 0);
                        codec::put_codes::<4>(&q, &mut [], &mut out[start..]);
                    }
                    _ => {
                        out.resize(start + 20, 0);
                        let (qh, qs) = out[start..].split_at_mut(4);
                        codec::put_codes::<5>(&q, qh, qs);
                    }
                }
            }
        }
        _ => {
            let t = q.params().tables().ok_or_else(|| GgufError::Tensor { name: ty.name().into(), reason: "no tables".into() })?;
            let (sc, m) = (t.scale_codes().unpack(), t.offset_codes().map(PackedCodes::unpack).unwrap_or_default());
            let per = t.super_group();
            for (k, block) in codes.chunks_exact(256).enumerate() {
                let (d, dmin) = (t.super_scales()[k], -t.super_offsets()[k]);
                let (sc, m) = (&sc[k * per..(k + 1) * per], &m[k * per..(k + 1) * per]);
                let start = out.len();
                out.resize(start + ty.block_bytes(), 0);
                crate::kquants::pack_block(ty, d, dmin, sc, m, block, &mut out[start..]);
            }
        }
    }
    Ok((ty, out))
}
