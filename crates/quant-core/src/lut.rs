//! Tensors stored as codes into per-slice lookup tables: ternary, binary and k-means codebooks.

use ndarray::{ArrayD, ArrayViewMut, Dimension};

use crate::error::{QuantError, Result};
use crate::float::Float;
use crate::layout::Layout;
use crate::pack::PackedCodes;
use crate::spec::Granularity;
use crate::tensor::{fill_new, fill_view};

/// The precision a codebook's table is stored at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TableDtype {
    /// 4 bytes per entry. The default.
    #[default]
    F32,
    /// 2 bytes per entry (IEEE half); centroids are rounded to it before the final assignment.
    F16,
}

impl TableDtype {
    /// Bytes per table entry.
    pub const fn bytes(self) -> usize {
        match self {
            TableDtype::F32 => 4,
            TableDtype::F16 => 2,
        }
    }

    /// `v` as stored: rounded to nearest at this precision.
    ///
    /// # Errors
    /// [`QuantError::TableOverflow`] when `v` is outside the type's finite range.
    pub fn round<F: Float>(self, v: F) -> Result<F> {
        let r = match self {
            TableDtype::F32 => (v.as_f64() as f32) as f64,
            TableDtype::F16 => half::f16::from_f64(v.as_f64()).to_f64(),
        };
        if r.is_finite() { Ok(F::cast(r)) } else { Err(QuantError::TableOverflow { value: v.as_f64() }) }
    }
}

/// What the tables of a [`LutTensor`] hold, which decides how they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LutKind {
    /// `{−α, 0, +α}` per slice: codes 0, 1, 2 in 2 bits; one `F` (α) stored per slice.
    Ternary,
    /// `{−α, +α}` per slice: codes 0, 1 in 1 bit; one `F` (α) stored per slice.
    Binary,
    /// `k` centroids per slice stored at the given precision; codes in `⌈log2 k⌉` bits (at least 1).
    Codebook(TableDtype),
}

/// A tensor stored as bit-packed codes indexing a small table per slice.
#[derive(Debug, Clone, PartialEq)]
pub struct LutTensor<F> {
    pub(crate) shape: Vec<usize>,
    pub(crate) granularity: Granularity,
    pub(crate) kind: LutKind,
    pub(crate) levels: usize,
    pub(crate) tables: Vec<F>,
    pub(crate) codes: PackedCodes,
}

/// Bits needed to index `levels` table entries (at least 1).
pub(crate) fn index_bits(levels: usize) -> u8 {
    let mut b = 1u8;
    while (1usize << b) < levels {
        b += 1;
    }
    b
}

impl<F: Float> LutTensor<F> {
    /// Assembles a tensor from per-slice tables (`levels` entries each) and per-slice codes.
    pub(crate) fn build(
        shape: &[usize],
        layout: &Layout,
        granularity: Granularity,
        kind: LutKind,
        levels: usize,
        tables: Vec<F>,
        codes: &[Vec<u8>],
    ) -> Result<Self> {
        let row_major = layout.scatter(codes);
        let codes = PackedCodes::pack(&row_major, index_bits(levels))?;
        Ok(Self { shape: shape.to_vec(), granularity, kind, levels, tables, codes })
    }

    /// Reassembles a tensor from its stored parts (for example read back from a file).
    ///
    /// `tables` holds every slice's table, slice after slice: `[−α, 0, α]` for
    /// [`LutKind::Ternary`], `[−α, α]` for [`LutKind::Binary`] (`α ≥ 0`), `k` centroids for
    /// [`LutKind::Codebook`] (`k` = `tables.len()` / number of slices, `1..=256`).
    ///
    /// # Errors
    /// [`QuantError::InvalidAxis`] / [`QuantError::InvalidGroupSize`] / [`QuantError::Empty`]
    /// for a granularity that does not fit the shape; [`QuantError::ShapeMismatch`] when the
    /// code count or table length does not fit; [`QuantError::InvalidBits`] for codes of the
    /// wrong width; [`QuantError::CodeOutOfRange`] for a code past its table;
    /// [`QuantError::InvalidTables`] for a table that is non-finite, not representable at the
    /// codebook's precision, or not of the ternary / binary form.
    pub fn from_parts(shape: Vec<usize>, granularity: Granularity, kind: LutKind, tables: Vec<F>, codes: PackedCodes) -> Result<Self> {
        // The code count first: a shape that lies must not cost a layout.
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(codes.len()) {
            return Err(QuantError::ShapeMismatch { expected: shape, got: vec![codes.len()] });
        }
        let layout = crate::uniform::layout_of_granularity(&shape, granularity)?;
        let slices = layout.num_params();
        let levels = match kind {
            LutKind::Ternary => 3,
            LutKind::Binary => 2,
            LutKind::Codebook(_) => tables.len() / slices,
        };
        if levels == 0 || levels > 256 || tables.len() != levels * slices {
            return Err(QuantError::ShapeMismatch { expected: vec![slices, levels.max(1)], got: vec![tables.len()] });
        }
        let bits = index_bits(levels);
        if codes.bits() != bits {
            return Err(QuantError::InvalidBits { bits: codes.bits(), min: bits, max: bits });
        }
        let bad = |reason| Err(QuantError::InvalidTables { reason });
        if tables.iter().any(|v| !v.is_finite()) {
            return bad("a table entry is not finite");
        }
        for t in tables.chunks(levels) {
            let ok = match kind {
                LutKind::Ternary => t[0] == -t[2] && t[1] == F::zero() && t[2] >= F::zero(),
                LutKind::Binary => t[0] == -t[1] && t[1] >= F::zero(),
                LutKind::Codebook(d) => t.iter().all(|&v| d.round(v).is_ok_and(|r| r == v)),
            };
            if !ok {
                return bad("a table is not of its kind's form or precision");
            }
        }
        if let Some((index, code)) = codes.unpack().into_iter().enumerate().find(|&(_, c)| usize::from(c) >= levels) {
            return Err(QuantError::CodeOutOfRange { index, code, bits });
        }
        Ok(Self { shape, granularity, kind, levels, tables, codes })
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Which elements share a table.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }
    /// What the tables hold.
    pub fn kind(&self) -> LutKind {
        self.kind
    }
    /// Entries per table.
    pub fn levels(&self) -> usize {
        self.levels
    }
    /// Number of slices (tables).
    pub fn num_slices(&self) -> usize {
        self.tables.len() / self.levels
    }
    /// The table of slice `i` (`None` past the end). Ternary tables are `[−α, 0, α]`,
    /// binary `[−α, α]`, codebooks their centroids (ascending when built; a
    /// [`LutTensor::apply_table_step`] may reorder them, the codes keep pointing at their entry).
    pub fn table(&self, i: usize) -> Option<&[F]> {
        self.tables.get(i * self.levels..(i + 1) * self.levels)
    }
    /// All tables, slice after slice.
    pub fn tables(&self) -> &[F] {
        &self.tables
    }
    /// The bit-packed codes, row-major.
    pub fn codes(&self) -> &PackedCodes {
        &self.codes
    }
    /// Code width in bits.
    pub fn bits(&self) -> u8 {
        self.codes.bits()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.codes.len()
    }
    /// Whether there are no elements (never true for tensors built by this crate).
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Bytes of storage: packed codes plus tables (one `F` per slice for ternary and binary,
    /// `levels` entries at the table precision for codebooks). The shape is not counted.
    pub fn storage_bytes(&self) -> usize {
        let per_slice = match self.kind {
            LutKind::Ternary | LutKind::Binary => F::BYTES,
            LutKind::Codebook(d) => self.levels * d.bytes(),
        };
        self.codes.as_bytes().len() + per_slice * self.num_slices()
    }

    /// Storage bits per element, tables included.
    pub fn bits_per_weight(&self) -> f64 {
        (self.storage_bytes() * 8) as f64 / self.len() as f64
    }

    pub(crate) fn layout(&self) -> Result<Layout> {
        Layout::new(&self.shape, self.granularity)
    }

    /// The dequantized tensor: each element is its slice's table entry at its code.
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
        let Ok(layout) = self.layout() else { return };
        let codes = self.codes.unpack();
        let levels = self.levels;
        layout.for_each_segment(0..out.len(), |p, r| {
            let table = &self.tables[p * levels..(p + 1) * levels];
            for i in r {
                // Codes index the table by construction; an out-of-range code reads 0.
                out[i] = table.get(usize::from(codes[i])).copied().unwrap_or_else(F::zero);
            }
        });
    }
}
