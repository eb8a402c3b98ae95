//! Where a checkpoint's tensors come from: bytes in memory (a file's contents or a memory
//! map), or a file read one tensor at a time ([`SafetensorsFile`]), so that a checkpoint
//! larger than memory can be quantized and dequantized.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::{Metadata, SafeTensors};

use crate::error::{CheckpointError, Result};

/// What the quantize and dequantize loops need of an input.
pub(crate) trait TensorSource {
    /// Every tensor's name, sorted.
    fn names(&self) -> Vec<String>;
    /// A tensor's dtype and shape.
    fn info(&self, name: &str) -> Result<(Dtype, Vec<usize>)>;
    /// A tensor's bytes.
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>>;
    /// The header's `__metadata__`.
    fn metadata(&self) -> BTreeMap<String, String>;
}

/// Safetensors bytes in memory.
pub(crate) struct InMemory<'a> {
    st: SafeTensors<'a>,
    metadata: BTreeMap<String, String>,
}

impl<'a> InMemory<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self> {
        let st = crate::format::parse_safetensors(bytes)?;
        let metadata = crate::format::header_metadata(bytes)?;
        Ok(Self { st, metadata })
    }
}

impl TensorSource for InMemory<'_> {
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.st.names().into_iter().map(String::from).collect();
        names.sort();
        names
    }
    fn info(&self, name: &str) -> Result<(Dtype, Vec<usize>)> {
        let v = self.st.tensor(name)?;
        Ok((v.dtype(), v.shape().to_vec()))
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(self.st.tensor(name)?.data()))
    }
    fn metadata(&self) -> BTreeMap<String, String> {
        self.metadata.clone()
    }
}

/// A safetensors file read one tensor at a time by positioned reads: only the header is kept
/// in memory, and each [`read`](Self::read) returns a fresh buffer of one tensor's bytes.
/// The header is checked as the `safetensors` crate checks a whole buffer (contiguous
/// offsets, sizes that match shapes and dtypes, the file's length), and errors name the
/// tensor.
#[derive(Debug)]
pub struct SafetensorsFile {
    file: std::fs::File,
    path: PathBuf,
    meta: Metadata,
    data_start: u64,
}

impl SafetensorsFile {
    /// Opens `path` and reads its header.
    ///
    /// # Errors
    /// [`CheckpointError::Open`] naming the path when it cannot be opened or read;
    /// [`CheckpointError::Format`] for a header that is not valid safetensors.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| CheckpointError::Open { path: path.to_path_buf(), source };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        let file_len = meta.len();
        if meta.is_dir() {
            return Err(CheckpointError::Open { path: path.to_path_buf(), source: std::io::Error::other("it is a directory") });
        }
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|_| CheckpointError::Format("the file is shorter than the 8-byte header length".into()))?;
        let n = u64::from_le_bytes(n);
        // The crate's own limit on headers (100 MB).
        if n > 100_000_000 || n + 8 > file_len {
            return Err(CheckpointError::Format(format!("a header length of {n} bytes in a file of {file_len}")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(io)?;
        let meta = parse_header(&header, file_len - 8 - n)?;
        Ok(Self { file, path: path.to_path_buf(), meta, data_start: 8 + n })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.meta.offset_keys();
        names.sort();
        names
    }

    /// A tensor's dtype and shape.
    pub fn info(&self, name: &str) -> Option<(Dtype, &[usize])> {
        self.meta.info(name).map(|i| (i.dtype, i.shape.as_slice()))
    }

    /// The header's `__metadata__`, sorted.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.meta.metadata().clone().unwrap_or_default().into_iter().collect()
    }

    /// Reads tensor `name`'s bytes.
    ///
    /// # Errors
    /// [`CheckpointError::Format`] for an unknown name; [`CheckpointError::Open`] naming the
    /// path when reading fails (the file shrank since it was opened, for example).
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let info = self.meta.info(name).ok_or_else(|| CheckpointError::Format(format!("no tensor '{name}'")))?;
        let (start, end) = info.data_offsets;
        let mut buf = vec![0u8; end - start];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(self.data_start + start as u64))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|source| CheckpointError::Open { path: self.path.clone(), source })?;
        Ok(buf)
    }
}

impl TensorSource for SafetensorsFile {
    fn names(&self) -> Vec<String> {
        SafetensorsFile::names(self)
    }
    fn info(&self, name: &str) -> Result<(Dtype, Vec<usize>)> {
        SafetensorsFile::info(self, name)
            .map(|(d, s)| (d, s.to_vec()))
            .ok_or_else(|| CheckpointError::Format(format!("no tensor '{name}'")))
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.read(name).map(Cow::Owned)
    }
    fn metadata(&self) -> BTreeMap<String, String> {
        SafetensorsFile::metadata(self)
    }
}

/// A header (its JSON bytes) checked against `data_len` bytes of data after it.
pub(crate) fn parse_header(header: &[u8], data_len: u64) -> Result<Metadata> {
    let detail = || crate::format::diagnose_header(header, usize::try_from(data_len).unwrap_or(usize::MAX));
    let meta: Metadata = serde_json::from_slice(header).map_err(|e| CheckpointError::Format(detail().unwrap_or_else(|| e.to_string())))?;
    if meta.data_len() as u64 != data_len {
        let why = detail().unwrap_or_else(|| format!("the header describes {} bytes of data, the file has {data_len}", meta.data_len()));
        return Err(CheckpointError::Format(why));
    }
    Ok(meta)
}
