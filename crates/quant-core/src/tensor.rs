//! Quantized tensors and fake-quantization results.

use core::ops::Range;

use ndarray::{Array, ArrayD, ArrayViewMut, Dimension, IxDyn};

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::kernel;
use crate::layout::Layout;
use crate::pack::{PackedCodes, unpack_from};
use crate::par::{self, BATCH};
use crate::params::{QuantParams, SliceParams};
use crate::simd;

/// A uniformly quantized tensor: its shape, the bit-packed codes in row-major order and the
/// parameters of every slice.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor<F> {
    shape: Vec<usize>,
    params: QuantParams<F>,
    codes: PackedCodes,
}

impl<F: Float> QuantizedTensor<F> {
    pub(crate) fn from_valid_parts(shape: Vec<usize>, params: QuantParams<F>, codes: PackedCodes) -> Self {
        Self { shape, params, codes }
    }

    /// Reassembles a tensor from its parts (for example read back from a file), checking that
    /// they fit together.
    ///
    /// # Errors
    /// [`QuantError::ShapeMismatch`] when the code count differs from the shape's element
    /// count, [`QuantError::InvalidBits`] when the codes' width differs from the spec's,
    /// [`QuantError::ParamCountMismatch`] when the parameters do not fit the shape, and
    /// [`QuantError::CodeOutOfRange`] for a code above the scheme's largest code.
    pub fn from_parts(shape: Vec<usize>, params: QuantParams<F>, codes: PackedCodes) -> Result<Self> {
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(codes.len()) {
            return Err(QuantError::ShapeMismatch { expected: shape, got: vec![codes.len()] });
        }
        let spec = params.spec();
        if codes.bits() != spec.bits() {
            return Err(QuantError::InvalidBits { bits: codes.bits(), min: spec.bits(), max: spec.bits() });
        }
        params.layout_for(&shape)?;
        let max = spec.max_code();
        if let Some((index, code)) = codes.unpack().into_iter().enumerate().find(|&(_, c)| c > max) {
            return Err(QuantError::CodeOutOfRange { index, code, bits: spec.bits() });
        }
        Ok(Self { shape, params, codes })
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.codes.len()
    }
    /// Whether the tensor has no elements (never true for tensors built by this crate).
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
    /// The code width.
    pub fn bits(&self) -> u8 {
        self.codes.bits()
    }
    /// The per-slice parameters.
    pub fn params(&self) -> &QuantParams<F> {
        &self.params
    }
    /// The bit-packed codes.
    pub fn codes(&self) -> &PackedCodes {
        &self.codes
    }

    /// The integer values in the scheme's natural domain, row-major: signed `q` for the
    /// symmetric schemes (stored code minus the fixed offset), the stored unsigned code for
    /// the asymmetric ones.
    pub fn int_repr(&self) -> Vec<i32> {
        let spec = self.params.spec();
        let off = spec.scheme().signed_offset(spec.bits());
        self.codes.unpack().into_iter().map(|c| i32::from(c) - off).collect()
    }

    /// Bytes of storage: the packed codes plus the parameters
    /// (see [`QuantParams::storage_bytes`]). The shape is not counted.
    pub fn storage_bytes(&self) -> usize {
        self.codes.as_bytes().len() + self.params.storage_bytes()
    }

    /// Storage bits per element, parameters included.
    pub fn bits_per_weight(&self) -> f64 {
        (self.storage_bytes() * 8) as f64 / self.len() as f64
    }

    /// The dequantized tensor.
    pub fn dequantize(&self) -> ArrayD<F> {
        fill_new(&self.shape, |buf| self.dequantize_slice(buf))
    }

    /// Dequantizes into a caller buffer of the same shape (any layout).
    ///
    /// # Errors
    /// [`QuantError::ShapeMismatch`] when `out` has another shape.
    pub fn dequantize_into<D: Dimension>(&self, out: ArrayViewMut<'_, F, D>) -> Result<()> {
        fill_view(&self.shape, out, |buf| self.dequantize_slice(buf))
    }

    fn dequantize_slice(&self, out: &mut [F]) {
        // The parameters were checked against the shape when the tensor was built.
        let Ok(layout) = self.params.layout_for(&self.shape) else { return };
        let bits = self.bits();
        let bytes = self.codes.as_bytes();
        if let Some(t) = simd::Avx512::new()
            && let Some(out) = F::as_f32_slice_mut(out)
        {
            return self.dequantize_simd(t, &layout, bytes, out);
        }
        let kernels = self.params.kernels();
        let chunks: Vec<(usize, &mut [F])> = out.chunks_mut(BATCH).enumerate().collect();
        par::map(chunks, |(k, chunk)| {
            let start = k * BATCH;
            let mut codes = vec![0u8; chunk.len()];
            unpack_from(&bytes[start / 8 * usize::from(bits)..], bits, &mut codes);
            layout.for_each_segment(start..start + chunk.len(), |p, seg| {
                let local = seg.start - start..seg.end - start;
                kernel::dequantize_run(&kernels[p], &codes[local.clone()], &mut chunk[local]);
            });
        });
    }
}

/// Outputs of at least this many f32 values (16 MiB, eight times a core's L2) are written by
/// non-temporal stores where a kernel supports it: the stores then skip reading each line
/// before writing it, and leave the cache to data that fits in it (docs/benchmarks.md).
const STREAM_FROM: usize = 1 << 22;

impl<F: Float> QuantizedTensor<F> {
    /// [`Self::dequantize_slice`] with the AVX-512 kernels: the same values.
    fn dequantize_simd(&self, t: simd::Avx512, layout: &Layout, bytes: &[u8], out: &mut [f32]) {
        let bits = self.bits();
        let slices = self.params.slices();
        let nibbles = layout.equal_runs().is_some_and(|len| len.is_multiple_of(2));
        let stream = out.len() >= STREAM_FROM;
        let chunks: Vec<(usize, &mut [f32])> = out.chunks_mut(BATCH).enumerate().collect();
        par::map(chunks, |(k, chunk)| {
            let start = k * BATCH;
            let from = &bytes[start / 8 * usize::from(bits)..];
            let mut buf = Vec::new();
            let (codes, codes_layout): (&[u8], _) = match bits {
                8 => (&from[..chunk.len()], simd::Codes::Bytes),
                // Runs of an even length start on even elements (as chunks do): the kernel
                // reads the nibbles in place.
                4 if nibbles => (from, simd::Codes::Nibbles),
                _ => {
                    buf.resize(chunk.len(), 0);
                    if bits == 4 {
                        simd::unpack4(t, from, &mut buf)
                    } else {
                        unpack_from(from, bits, &mut buf)
                    }
                    (&buf, simd::Codes::Bytes)
                }
            };
            let end = start + chunk.len();
            // Runs in order from the one holding `start`, clipped to the chunk.
            let clip = |(r, p): (Range<usize>, &SliceParams<F>)| {
                (r.start < end).then(|| (r.start.max(start) - start..r.end.min(end) - start, p.to_f32()))
            };
            if let Some(len) = layout.equal_runs() {
                let first = start / len;
                // Chunks are whole runs when `len` divides BATCH.
                if len.is_multiple_of(16) && BATCH.is_multiple_of(len) {
                    let params = slices[first..].iter().map(|p| p.to_f32());
                    return simd::dequantize_equal_runs(t, codes, codes_layout, len, params, chunk, stream);
                }
                let runs = (first..).map(|k| k * len..(k + 1) * len).zip(&slices[first..]).map_while(clip);
                simd::dequantize_runs(t, codes, codes_layout, runs, chunk);
            } else if layout.contiguous_runs().is_some() {
                let (first, _) = layout.segment(start, end);
                let runs = layout.runs_from(first).zip(&slices[first..]).map_while(clip);
                simd::dequantize_runs(t, codes, codes_layout, runs, chunk);
            } else {
                let mut segs = Vec::new();
                layout.for_each_segment(start..end, |p, seg| segs.push((seg.start - start..seg.end - start, slices[p].to_f32())));
                simd::dequantize_runs(t, codes, codes_layout, segs.into_iter(), chunk);
            }
        });
    }
}

/// A new row-major array of `shape` written by `fill`.
pub(crate) fn fill_new<F: Float>(shape: &[usize], fill: impl FnOnce(&mut [F])) -> ArrayD<F> {
    let mut out = ArrayD::zeros(IxDyn(shape));
    // A freshly allocated array is contiguous, so this always writes.
    if let Some(buf) = out.as_slice_mut() {
        fill(buf);
    }
    out
}

/// Writes `fill`'s row-major values into `out` (any layout) after checking its shape.
pub(crate) fn fill_view<F: Float, D: Dimension>(
    shape: &[usize],
    mut out: ArrayViewMut<'_, F, D>,
    fill: impl FnOnce(&mut [F]),
) -> Result<()> {
    if out.shape() != shape {
        return Err(QuantError::ShapeMismatch { expected: shape.to_vec(), got: out.shape().to_vec() });
    }
    match out.as_slice_mut() {
        Some(buf) => fill(buf),
        None => {
            let mut buf = vec![F::zero(); out.len()];
            fill(&mut buf);
            out.iter_mut().zip(buf).for_each(|(o, v)| *o = v);
        }
    }
    Ok(())
}

/// The result of fake quantization: values `dequantize(quantize(x))` and the STE mask
/// (`true` where the unclamped rounded code lies in the representable range, i.e. where the
/// gradient passes).
#[derive(Debug, Clone, PartialEq)]
pub struct FakeQuantized<F, D: Dimension> {
    /// The fake-quantized values.
    pub values: Array<F, D>,
    /// The straight-through-estimator mask.
    pub mask: Array<bool, D>,
}
