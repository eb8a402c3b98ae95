//! Reading: the header from bytes, and files through a memory map.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{GgufError, Result};
use crate::types::GgmlType;
use crate::value::{Value, ValueType};

/// The magic every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version this crate writes.
pub const VERSION: u32 = 3;
/// The data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key of the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// How deeply arrays may nest in the metadata (arrays of arrays; real files use one level).
const MAX_NESTING: usize = 8;

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its dimensions in GGML's order: `dims[0]` is the innermost (a row), so a PyTorch
    /// `out × in` matrix has `dims = [in, out]`.
    pub dims: Vec<u64>,
    /// Its type.
    pub ggml_type: GgmlType,
    /// Where its data starts, from the start of the data section (a multiple of the
    /// alignment).
    pub offset: u64,
}

impl TensorInfo {
    /// The number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The dimensions in PyTorch's order (outermost first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The bytes of its data.
    pub fn bytes(&self) -> u64 {
        // Checked when the header was read (or the tensor added to a writer).
        self.ggml_type.bytes_for(self.dims.first().copied().unwrap_or(1), self.elements()).unwrap_or(0)
    }
}

/// A GGUF header: version, metadata in file order, tensor entries, and where the data starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, in file order (keys are unique).
    pub metadata: Vec<(String, Value)>,
    /// The tensors, in file order (names are unique).
    pub tensors: Vec<TensorInfo>,
    /// The data alignment (`general.alignment`, or 32).
    pub alignment: u64,
    /// Where the data section starts, from the start of the file.
    pub data_offset: u64,
}

impl Header {
    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Reads a header from the start of `bytes` (at least up to the data section) and checks
    /// it: magic, version, counts against the bytes there are, UTF-8 names, unique keys and
    /// tensor names, known types, whole blocks per row, aligned offsets, and (when
    /// `file_len` is given) every tensor's data inside the file, without overlaps.
    ///
    /// # Errors
    /// [`GgufError::Magic`], [`GgufError::Version`], [`GgufError::Truncated`],
    /// [`GgufError::Malformed`], [`GgufError::DuplicateKey`], [`GgufError::DuplicateTensor`],
    /// [`GgufError::UnknownType`], [`GgufError::Tensor`].
    pub fn parse(bytes: &[u8], file_len: Option<u64>) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        let magic: [u8; 4] = r.array("magic")?;
        if magic != MAGIC {
            return Err(GgufError::Magic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata count")?;
        let mut metadata = Vec::with_capacity(r.capacity(kv_count, 13));
        let mut keys = HashSet::new();
        for _ in 0..kv_count {
            let key = r.string("metadata key")?;
            let at = r.pos;
            let ty = r.u32("metadata value type")?;
            let ty = ValueType::from_id(ty).ok_or_else(|| r.malformed(at, format!("unknown value type {ty} for {key:?}")))?;
            let value = r.value(ty, 0)?;
            if !keys.insert(key.clone()) {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(r.malformed(0, format!("{ALIGNMENT_KEY} is {v:?}, not a power of two"))),
            },
        };
        let mut tensors = Vec::with_capacity(r.capacity(tensor_count, 24));
        let mut names = HashSet::new();
        for _ in 0..tensor_count {
            let name = r.string("tensor name")?;
            let at = r.pos;
            let n = r.u32("tensor dimension count")? as usize;
            if n == 0 || n > MAX_DIMS {
                return Err(r.malformed(at, format!("tensor {name:?} has {n} dimensions (1 to {MAX_DIMS})")));
            }
            let mut dims = Vec::with_capacity(n);
            for _ in 0..n {
                dims.push(r.u64("tensor dimension")?);
            }
            let ggml_type = GgmlType::from_id(r.u32("tensor type")?)?;
            let offset = r.u64("tensor offset")?;
            let bad = |reason: String| GgufError::Tensor { name: name.clone(), reason };
            let elements =
                dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
            if ggml_type.bytes_for(dims[0], elements).is_none() {
                return Err(bad(format!("rows of {} do not split into {ggml_type} blocks of {}", dims[0], ggml_type.block_size())));
            }
            if !offset.is_multiple_of(alignment) {
                return Err(bad(format!("offset {offset} is not a multiple of the alignment {alignment}")));
            }
            if !names.insert(name.clone()) {
                return Err(GgufError::DuplicateTensor(name));
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }
        let data_offset =
            (r.pos as u64).div_ceil(alignment).checked_mul(alignment).ok_or_else(|| r.malformed(0, "data offset overflows".into()))?;
        let header = Header { version, metadata, tensors, alignment, data_offset };
        if let Some(len) = file_len {
            header.check_extents(len)?;
        }
        Ok(header)
    }

    /// Every tensor's data inside a file of `len` bytes, none overlapping another.
    fn check_extents(&self, len: u64) -> Result<()> {
        let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let start = self.data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.bytes()));
            match (start, end) {
                (Some(s), Some(e)) if e <= len => spans.push((s, e, &t.name)),
                _ => {
                    return Err(GgufError::Tensor {
                        name: t.name.clone(),
                        reason: format!("{} bytes at offset {} run past the end of the file ({len} bytes)", t.bytes(), t.offset),
                    });
                }
            }
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(GgufError::Tensor { name: w[1].2.to_owned(), reason: format!("its data overlaps {:?}'s", w[0].2) });
            }
        }
        Ok(())
    }
}

/// A cursor over the header bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else { return Err(GgufError::Truncated { offset: self.pos as u64, what }) };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn malformed(&self, offset: usize, reason: String) -> GgufError {
        GgufError::Malformed { offset: offset as u64, reason }
    }

    /// A capacity for `count` items of at least `min` bytes each: never more than the bytes
    /// left could hold (a hostile count must not allocate).
    fn capacity(&self, count: u64, min: usize) -> usize {
        let left = (self.bytes.len() - self.pos) / min.max(1);
        usize::try_from(count).map_or(left, |c| c.min(left))
    }

    fn string(&mut self, what: &'static str) -> Result<String> {
        let at = self.pos;
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| GgufError::Truncated { offset: at as u64, what })?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.malformed(at, format!("{what} is not UTF-8 ({e})")))
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>("u8 value")?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array("i8 value")?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("u16 value")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("i16 value")?)),
            ValueType::U32 => Value::U32(self.u32("u32 value")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("i32 value")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("f32 value")?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>("bool value")?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.malformed(at, format!("bool value {b}"))),
                }
            }
            ValueType::String => Value::String(self.string("string value")?),
            ValueType::U64 => Value::U64(self.u64("u64 value")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("i64 value")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("f64 value")?)),
            ValueType::Array => {
                let at = self.pos;
                if depth >= MAX_NESTING {
                    return Err(self.malformed(at, format!("arrays nested deeper than {MAX_NESTING}")));
                }
                let id = self.u32("array element type")?;
                let elem = ValueType::from_id(id).ok_or_else(|| self.malformed(at, format!("unknown array element type {id}")))?;
                let count = self.u64("array length")?;
                let mut items = Vec::with_capacity(self.capacity(count, 1));
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

/// A GGUF file opened through a memory map: its header, and each tensor's bytes without a copy.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    header: Header,
}

impl GgufFile {
    /// Opens and maps `path`, and reads and checks its header ([`Header::parse`]).
    ///
    /// The map is read-only; as with any memory map, the file must not be changed by another
    /// process while it is open.
    ///
    /// # Errors
    /// [`GgufError::Open`], and the header's errors.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let open = |source| GgufError::Open { path: path.clone(), source };
        let file = std::fs::File::open(&path).map_err(open)?;
        // SAFETY: the map is read-only and this type hands out only shared slices of it; the
        // documented condition (no concurrent change to the file) is the caller's, as for
        // every memory-mapped reader.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(open)?;
        let header = Header::parse(&map, Some(map.len() as u64))?;
        Ok(Self { path, map, header })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The bytes of tensor `t` (one of this file's).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + t.offset) as usize;
        // Inside the file: checked when the header was read.
        self.map.get(start..start + t.bytes() as usize).unwrap_or(&[])
    }

    /// The bytes of the tensor named `name`.
    pub fn tensor_data(&self, name: &str) -> Option<(&TensorInfo, &[u8])> {
        let t = self.header.tensor(name)?;
        Some((t, self.data(t)))
    }
}
