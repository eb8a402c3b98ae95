//! The safetensors writer: deterministic bytes, written to `OUT.partial` beside the output
//! and renamed into place only when complete.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::View;

use crate::error::{CheckpointError, Result};

/// The temporary file [`write_file`] writes before renaming it to `output`:
/// `OUT.partial` in the same directory (so the rename stays on one file system).
pub fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".partial");
    output.with_file_name(name)
}

/// The output file claimed for a write: `OUT.partial` beside `output`, created at once (so a
/// missing directory or a read-only location is found before any work), written by
/// [`finish`](Self::finish) or a [`StreamWriter`] and renamed to `output`. Dropped unfinished
/// (an error, a panic), it removes the partial file; `output` is never touched until the
/// rename.
#[derive(Debug)]
pub struct PartialFile {
    file: Option<std::fs::File>,
    partial: PathBuf,
    output: PathBuf,
}

impl PartialFile {
    /// Creates [`partial_path`]`(output)`, replacing a stale one.
    ///
    /// # Errors
    /// [`CheckpointError::Create`] naming the path when it cannot be created (a directory
    /// that does not exist, no permission).
    pub fn create(output: &Path) -> Result<Self> {
        let partial = partial_path(output);
        let file = std::fs::File::create(&partial).map_err(|source| CheckpointError::Create { path: partial.clone(), source })?;
        Ok(Self { file: Some(file), partial, output: output.to_path_buf() })
    }

    /// The partial file's path.
    pub fn path(&self) -> &Path {
        &self.partial
    }

    /// Writes `tensors` and `metadata` as a safetensors file and renames it to the output.
    ///
    /// The bytes depend only on the inputs: header keys in sorted order (the metadata too,
    /// which the `safetensors` crate writes in hash order), tensor data ordered by descending
    /// element size and then by name (so every tensor stays aligned to its element size), the
    /// header padded with spaces to a multiple of 8. The data is flushed to disk before the
    /// rename; on an error the partial file is removed and the output is untouched.
    ///
    /// # Errors
    /// [`CheckpointError::Metadata`] for a name given twice or data whose length disagrees
    /// with its shape and type; [`CheckpointError::Write`] naming the path when writing fails.
    pub fn finish<S: AsRef<str>, V: View>(self, tensors: Vec<(S, V)>, metadata: &BTreeMap<String, String>) -> Result<()> {
        let mut items = tensors;
        items.sort_by(|(a, x), (b, y)| y.dtype().bitsize().cmp(&x.dtype().bitsize()).then_with(|| a.as_ref().cmp(b.as_ref())));
        let mut w = StreamWriter::new(self);
        for (name, v) in &items {
            w.add(name.as_ref(), v.dtype(), v.shape(), &v.data())?;
        }
        w.finish(metadata)
    }

    /// Writes `bytes` (any file: a JSON report, a plan) and renames the file to the output.
    ///
    /// # Errors
    /// [`CheckpointError::Write`] naming the path when writing or renaming fails (the partial
    /// file is then removed).
    pub fn finish_bytes(mut self, bytes: &[u8]) -> Result<()> {
        let Some(mut file) = self.file.take() else { return Err(CheckpointError::Metadata("the partial file was already written".into())) };
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        drop(file);
        written.map_err(|e| self.write_error(e))?;
        self.rename_into_place()
    }

    /// Renames the written partial file to the output; nothing is left for `Drop` to remove.
    fn rename_into_place(&mut self) -> Result<()> {
        std::fs::rename(&self.partial, &self.output).map_err(|source| CheckpointError::Write { path: self.output.clone(), source })?;
        self.partial = PathBuf::new();
        Ok(())
    }

    fn write_error(&self, source: std::io::Error) -> CheckpointError {
        CheckpointError::Write { path: self.partial.clone(), source }
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.partial.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// One element size's data, appended as tensors arrive: a file beside the output, unlinked
/// as soon as it is open where the system allows it (so nothing is left behind, whatever ends
/// the process).
#[derive(Debug)]
struct Spool {
    writer: std::io::BufWriter<std::fs::File>,
    len: u64,
    /// The path, where it could not be unlinked while open (removed on drop).
    path: Option<PathBuf>,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A tensor written by a [`StreamWriter`]: where its bytes are.
#[derive(Debug)]
struct Entry {
    name: String,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    offset: u64,
    len: u64,
}

/// A safetensors file written tensor by tensor, so that only one tensor is in memory at a
/// time: each tensor's bytes go at once to a spool file for its element size; [`finish`]
/// writes the header and then the spools, largest elements first (every tensor stays aligned
/// to its element size), into the claimed [`PartialFile`], flushes it and renames it.
/// Tensors of one element size keep their order of arrival, so the same calls give the same
/// bytes. Disk: the output's size twice until the end.
///
/// [`finish`]: Self::finish
#[derive(Debug)]
pub struct StreamWriter {
    claimed: PartialFile,
    spools: BTreeMap<usize, Spool>,
    entries: BTreeMap<usize, Vec<Entry>>,
    names: std::collections::HashSet<String>,
}

impl StreamWriter {
    /// A writer into the claimed output.
    pub fn new(claimed: PartialFile) -> Self {
        Self { claimed, spools: BTreeMap::new(), entries: BTreeMap::new(), names: std::collections::HashSet::new() }
    }

    /// Appends tensor `name`.
    ///
    /// # Errors
    /// [`CheckpointError::Metadata`] for a name given twice or `data` whose length disagrees
    /// with `shape` and `dtype`; [`CheckpointError::Write`] when the spool cannot be written.
    pub fn add(&mut self, name: &str, dtype: safetensors::Dtype, shape: &[usize], data: &[u8]) -> Result<()> {
        self.begin(name, dtype, shape, data.len() as u64)?;
        self.append(dtype, data)
    }

    /// Registers tensor `name` of `len` bytes at the end of its element size's spool; its
    /// bytes must follow by [`append`](Self::append) before the next tensor of that size.
    fn begin(&mut self, name: &str, dtype: safetensors::Dtype, shape: &[usize], len: u64) -> Result<()> {
        let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elements.and_then(|e| e.checked_mul(dtype.bitsize())).map(|b| b.div_ceil(8) as u64) != Some(len) {
            return Err(CheckpointError::Metadata(format!("tensor '{name}': {len} bytes for shape {shape:?} of {dtype:?}")));
        }
        if !self.names.insert(name.to_string()) {
            return Err(CheckpointError::Metadata(format!("tensor '{name}' is given twice")));
        }
        let bits = dtype.bitsize();
        let offset = match self.spools.entry(bits) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut().len,
            std::collections::btree_map::Entry::Vacant(v) => {
                let mut name = self.claimed.partial.as_os_str().to_os_string();
                name.push(format!(".{bits}"));
                let path = PathBuf::from(name);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|source| CheckpointError::Create { path: path.clone(), source })?;
                let kept = std::fs::remove_file(&path).is_err().then_some(path);
                v.insert(Spool { writer: std::io::BufWriter::with_capacity(1 << 20, file), len: 0, path: kept }).len
            }
        };
        let entries = self.entries.entry(bits).or_default();
        entries.push(Entry { name: name.to_string(), dtype, shape: shape.to_vec(), offset, len });
        Ok(())
    }

    /// Appends bytes to the spool of `dtype`'s element size.
    fn append(&mut self, dtype: safetensors::Dtype, data: &[u8]) -> Result<()> {
        let Some(spool) = self.spools.get_mut(&dtype.bitsize()) else {
            return Err(CheckpointError::Metadata("bytes for a tensor that was not begun".into()));
        };
        spool.writer.write_all(data).map_err(|e| CheckpointError::Write { path: self.claimed.partial.clone(), source: e })?;
        spool.len += data.len() as u64;
        Ok(())
    }

    /// Appends an F32 tensor from its values, converted to bytes a block at a time (no copy
    /// of the whole tensor).
    ///
    /// # Errors
    /// As [`add`](Self::add).
    pub fn add_f32(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        self.begin(name, safetensors::Dtype::F32, shape, 4 * values.len() as u64)?;
        let mut block = Vec::with_capacity(1 << 16);
        for chunk in values.chunks(1 << 14) {
            block.clear();
            block.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            self.append(safetensors::Dtype::F32, &block)?;
        }
        Ok(())
    }

    /// Writes the header (with `metadata`) and the data, flushes the file to disk and renames
    /// it to the output.
    ///
    /// # Errors
    /// [`CheckpointError::Write`] naming the path when writing or renaming fails.
    pub fn finish(mut self, metadata: &BTreeMap<String, String>) -> Result<()> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(metadata).map_err(|e| CheckpointError::Metadata(e.to_string()))?);
        }
        let mut base = 0u64;
        for (bits, entries) in self.entries.iter().rev() {
            for e in entries {
                let entry = serde_json::json!({
                    "dtype": e.dtype,
                    "shape": e.shape,
                    "data_offsets": [base + e.offset, base + e.offset + e.len],
                });
                header.insert(e.name.clone(), entry);
            }
            base += self.spools.get(bits).map_or(0, |s| s.len);
        }
        let mut head = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| CheckpointError::Metadata(e.to_string()))?;
        head.resize(head.len().next_multiple_of(8), b' ');
        let Some(file) = self.claimed.file.take() else {
            return Err(CheckpointError::Metadata("the partial file was already written".into()));
        };
        let spools = std::mem::take(&mut self.spools);
        let written = (|| -> std::io::Result<()> {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
            w.write_all(&(head.len() as u64).to_le_bytes())?;
            w.write_all(&head)?;
            w.flush()?;
            drop(w);
            let mut out = &file;
            for (_, mut spool) in spools.into_iter().rev() {
                spool.writer.flush()?;
                let source = spool.writer.get_mut();
                std::io::Seek::seek(source, std::io::SeekFrom::Start(0))?;
                let copied = std::io::copy(&mut std::io::Read::take(&*source, spool.len), &mut out)?;
                if copied != spool.len {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a spool file came back short"));
                }
            }
            file.sync_all()
        })();
        drop(file);
        written.map_err(|e| self.claimed.write_error(e))?;
        self.claimed.rename_into_place()
    }
}

/// Writes `tensors` and `metadata` as a safetensors file at `output`: [`PartialFile::create`]
/// then [`PartialFile::finish`] (deterministic bytes, written to `OUT.partial` and renamed
/// into place only when complete).
///
/// # Errors
/// As [`PartialFile::create`] and [`PartialFile::finish`].
pub fn write_file<S: AsRef<str>, V: View>(tensors: Vec<(S, V)>, metadata: &BTreeMap<String, String>, output: &Path) -> Result<()> {
    PartialFile::create(output)?.finish(tensors, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::Dtype;
    use safetensors::tensor::{SafeTensors, TensorView};

    #[test]
    fn same_inputs_same_bytes_and_the_crate_reads_them() {
        let dir = std::env::temp_dir().join(format!("quant-st-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let a: Vec<u8> = (0..24u8).collect();
        let b = vec![7u8; 3];
        let c = [1.5f64.to_le_bytes(), (-2.0f64).to_le_bytes()].concat();
        let meta: BTreeMap<String, String> = (0..20).map(|i| (format!("key{i}"), format!("v{i}"))).collect();
        let tensors = || {
            vec![
                ("a", TensorView::new(Dtype::F32, vec![2, 3], &a).expect("a")),
                ("b", TensorView::new(Dtype::U8, vec![3], &b).expect("b")),
                ("c", TensorView::new(Dtype::F64, vec![2], &c).expect("c")),
            ]
        };
        let (p1, p2) = (dir.join("one.safetensors"), dir.join("two.safetensors"));
        write_file(tensors(), &meta, &p1).expect("write");
        write_file(tensors(), &meta, &p2).expect("write");
        let bytes = std::fs::read(&p1).expect("read");
        assert_eq!(bytes, std::fs::read(&p2).expect("read"));
        assert!(!partial_path(&p1).exists());
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        assert_eq!(n % 8, 0, "the data starts 8-byte aligned");
        let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
        assert_eq!(st.tensor("a").expect("a").data(), &a[..]);
        assert_eq!(st.tensor("c").expect("c").data(), &c[..]);
        // F64 first (8-byte aligned), then F32, then U8.
        let (_, m) = SafeTensors::read_metadata(&bytes).expect("header");
        assert_eq!(m.info("c").expect("c").data_offsets, (0, 16));
        assert_eq!(m.info("a").expect("a").data_offsets, (16, 40));
        assert_eq!(m.metadata().as_ref().map(|x| x.len()), Some(20));
        // A stale partial file is replaced; a name given twice or a wrong length is refused
        // and leaves neither the output nor the partial file.
        std::fs::write(partial_path(&p1), b"stale").expect("stale");
        write_file(tensors(), &meta, &p1).expect("write over a stale partial");
        assert_eq!(std::fs::read(&p1).expect("read"), bytes);
        let p3 = dir.join("three.safetensors");
        let twice =
            vec![("x", TensorView::new(Dtype::U8, vec![3], &b).expect("b")), ("x", TensorView::new(Dtype::U8, vec![3], &b).expect("b"))];
        assert!(matches!(write_file(twice, &meta, &p3), Err(CheckpointError::Metadata(_))));
        assert!(!p3.exists() && !partial_path(&p3).exists());
        let missing = dir.join("no-such-dir").join("x.safetensors");
        let err = write_file(tensors(), &meta, &missing);
        assert!(matches!(&err, Err(CheckpointError::Create { path, .. }) if *path == partial_path(&missing)), "{err:?}");
        assert!(err.map_err(|e| e.to_string()).unwrap_err().contains("no-such-dir"));
        // Any bytes through the same claim.
        let p5 = dir.join("five.json");
        PartialFile::create(&p5).expect("create").finish_bytes(b"{}\n").expect("bytes");
        assert_eq!(std::fs::read(&p5).expect("read"), b"{}\n");
        assert!(!partial_path(&p5).exists());
        // Dropped unfinished, a claimed output leaves nothing.
        let p4 = dir.join("four.safetensors");
        let claimed = PartialFile::create(&p4).expect("create");
        assert!(claimed.path().exists());
        drop(claimed);
        assert!(!p4.exists() && !partial_path(&p4).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
