//! Writing: the header, then each tensor's bytes streamed in order, to a temporary file renamed
//! into place on success.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{GgufError, Result};
use crate::read::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, TensorInfo, VERSION};
use crate::types::GgmlType;
use crate::value::Value;

/// A GGUF file to write: metadata and tensor entries first, then the data of each tensor in
/// the order added, produced on demand so a model never needs to be in memory at once.
///
/// ```
/// use quant_gguf::{GgmlType, GgufWriter, GgufFile, codec};
/// use std::io::Write;
///
/// let xs: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
/// let mut w = GgufWriter::new();
/// w.metadata("general.architecture", "bert")?;
/// w.tensor("t", &[32, 2], GgmlType::Q8_0)?;
/// let path = std::env::temp_dir().join(format!("quant-gguf-doc-{}.gguf", std::process::id()));
/// w.write_file(&path, |_, out| out.write_all(&codec::quantize(GgmlType::Q8_0, &xs)?).map_err(Into::into))?;
/// let file = GgufFile::open(&path)?;
/// let (info, bytes) = file.tensor_data("t").ok_or("missing")?;
/// assert_eq!(info.shape(), vec![2, 32]);
/// let back = codec::dequantize(GgmlType::Q8_0, bytes, 64)?;
/// assert!(xs.iter().zip(&back).all(|(a, b)| (a - b).abs() < 0.02));
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
}

/// Where a tensor's bytes go: counts what is written so the writer can check each tensor's
/// length.
pub struct TensorSink<'a> {
    out: &'a mut dyn Write,
    written: u64,
}

impl Write for TensorSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl GgufWriter {
    /// An empty file (alignment 32).
    pub fn new() -> Self {
        Self { metadata: Vec::new(), tensors: Vec::new(), alignment: DEFAULT_ALIGNMENT }
    }

    /// Adds a metadata pair. `general.alignment` (a power of two, as `u32`) also sets the data
    /// alignment.
    ///
    /// # Errors
    /// [`GgufError::DuplicateKey`]; [`GgufError::Malformed`] for an array whose elements are not
    /// all of its type, or an alignment that is not a power of two.
    pub fn metadata(&mut self, key: &str, value: impl Into<Value>) -> Result<&mut Self> {
        let value = value.into();
        if self.metadata.iter().any(|(k, _)| k == key) {
            return Err(GgufError::DuplicateKey(key.to_owned()));
        }
        check_value(&value)?;
        if key == ALIGNMENT_KEY {
            match value.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= u64::from(u32::MAX) => self.alignment = a,
                _ => return Err(GgufError::Malformed { offset: 0, reason: format!("{ALIGNMENT_KEY} {value:?} is not a power of two") }),
            }
        }
        self.metadata.push((key.to_owned(), value));
        Ok(self)
    }

    /// Adds a tensor entry: `dims` in GGML's order (`dims[0]` is a row; a PyTorch `out × in`
    /// matrix is `[in, out]`). Its data comes later, from [`write_to`](Self::write_to)'s
    /// callback.
    ///
    /// # Errors
    /// [`GgufError::DuplicateTensor`]; [`GgufError::Tensor`] for no or more than four
    /// dimensions, rows that are not whole blocks of the type, or a size that overflows.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: GgmlType) -> Result<&mut Self> {
        let bad = |reason: String| GgufError::Tensor { name: name.to_owned(), reason };
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::DuplicateTensor(name.to_owned()));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(bad(format!("{} dimensions (1 to {MAX_DIMS})", dims.len())));
        }
        let elements = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        if ggml_type.bytes_for(dims[0], elements).is_none() {
            return Err(bad(format!("rows of {} do not split into {ggml_type} blocks of {}", dims[0], ggml_type.block_size())));
        }
        self.tensors.push(TensorInfo { name: name.to_owned(), dims: dims.to_vec(), ggml_type, offset: 0 });
        Ok(self)
    }

    /// The tensor entries with their data offsets, as they will be written.
    pub fn tensors(&self) -> Vec<TensorInfo> {
        let mut offset = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let t = TensorInfo { offset, ..t.clone() };
                offset += t.bytes().div_ceil(self.alignment) * self.alignment;
                t
            })
            .collect()
    }

    /// Writes the file to `out`: the header, then for tensor `i` (in the order added) what
    /// `data(i, sink)` writes, padded to the alignment. Each tensor must write exactly its
    /// size in bytes.
    ///
    /// # Errors
    /// [`GgufError::Tensor`] when a tensor writes the wrong number of bytes; errors from
    /// `data`; [`GgufError::Write`] (with an empty path) for I/O errors of `out`.
    pub fn write_to(&self, out: impl Write, mut data: impl FnMut(usize, &mut TensorSink<'_>) -> Result<()>) -> Result<()> {
        let io = |source| GgufError::Write { path: PathBuf::new(), source };
        let mut out = BufWriter::with_capacity(1 << 20, out);
        let mut head = Vec::new();
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut head, k);
            head.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut head, v);
        }
        let tensors = self.tensors();
        for t in &tensors {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            head.extend_from_slice(&t.offset.to_le_bytes());
        }
        pad(&mut head, self.alignment);
        out.write_all(&head).map_err(io)?;
        let zeros = vec![0u8; self.alignment as usize];
        for (i, t) in tensors.iter().enumerate() {
            let mut sink = TensorSink { out: &mut out, written: 0 };
            data(i, &mut sink)?;
            if sink.written != t.bytes() {
                return Err(GgufError::Tensor {
                    name: t.name.clone(),
                    reason: format!("{} bytes written, {} expected", sink.written, t.bytes()),
                });
            }
            let rest = (t.bytes().div_ceil(self.alignment) * self.alignment - t.bytes()) as usize;
            out.write_all(&zeros[..rest]).map_err(io)?;
        }
        out.flush().map_err(io)
    }

    /// [`write_to`](Self::write_to) a file: written to `PATH.partial` beside it, synced, then
    /// renamed over `path` (an existing file there is replaced only then); on any error the
    /// partial file is removed and `path` is untouched.
    ///
    /// # Errors
    /// As [`write_to`](Self::write_to), with [`GgufError::Write`] naming the file.
    pub fn write_file(&self, path: impl AsRef<Path>, data: impl FnMut(usize, &mut TensorSink<'_>) -> Result<()>) -> Result<()> {
        let path = path.as_ref();
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let err = |p: &Path, source| GgufError::Write { path: p.to_path_buf(), source };
        let result = (|| {
            let file = std::fs::File::create(&partial).map_err(|e| err(&partial, e))?;
            self.write_to(&file, data).map_err(|e| match e {
                GgufError::Write { source, .. } => err(&partial, source),
                e => e,
            })?;
            file.sync_all().map_err(|e| err(&partial, e))?;
            std::fs::rename(&partial, path).map_err(|e| err(path, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }
}

/// Arrays must hold elements of their own type, nested arrays included.
fn check_value(v: &Value) -> Result<()> {
    if let Value::Array(ty, items) = v {
        for item in items {
            if item.value_type() != *ty {
                return Err(GgufError::Malformed { offset: 0, reason: format!("array of {ty:?} holds a {:?}", item.value_type()) });
            }
            check_value(item)?;
        }
    }
    Ok(())
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(ty, items) => {
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let len = (out.len() as u64).div_ceil(alignment) * alignment;
    out.resize(len as usize, 0);
}

impl From<io::Error> for GgufError {
    fn from(source: io::Error) -> Self {
        GgufError::Write { path: PathBuf::new(), source }
    }
}
