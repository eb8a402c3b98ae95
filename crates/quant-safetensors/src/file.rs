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
/// [`finish`](Self::finish) and renamed to `output`. Dropped unfinished (an error, a panic),
/// it removes the partial file; `output` is never touched until the rename.
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
    pub fn finish<S: AsRef<str>, V: View>(mut self, tensors: Vec<(S, V)>, metadata: &BTreeMap<String, String>) -> Result<()> {
        let mut items = tensors;
        items.sort_by(|(a, x), (b, y)| y.dtype().bitsize().cmp(&x.dtype().bitsize()).then_with(|| a.as_ref().cmp(b.as_ref())));
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(metadata).map_err(|e| CheckpointError::Metadata(e.to_string()))?);
        }
        let mut offset = 0usize;
        for (name, v) in &items {
            let name = name.as_ref();
            let elements: usize = v.shape().iter().product();
            let len = v.data_len();
            if elements.checked_mul(v.dtype().bitsize()).map(|b| b.div_ceil(8)) != Some(len) {
                return Err(CheckpointError::Metadata(format!(
                    "tensor '{name}': {len} bytes for shape {:?} of {:?}",
                    v.shape(),
                    v.dtype()
                )));
            }
            let entry = serde_json::json!({
                "dtype": v.dtype(),
                "shape": v.shape(),
                "data_offsets": [offset, offset + len],
            });
            if header.insert(name.to_string(), entry).is_some() {
                return Err(CheckpointError::Metadata(format!("tensor '{name}' is given twice")));
            }
            offset += len;
        }
        let mut head = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| CheckpointError::Metadata(e.to_string()))?;
        head.resize(head.len().next_multiple_of(8), b' ');
        let Some(file) = self.file.take() else { return Err(CheckpointError::Metadata("the partial file was already written".into())) };
        let written = (|| -> std::io::Result<()> {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
            w.write_all(&(head.len() as u64).to_le_bytes())?;
            w.write_all(&head)?;
            for (_, v) in &items {
                w.write_all(&v.data())?;
            }
            w.flush()?;
            drop(w);
            file.sync_all()
        })();
        drop(file);
        written.map_err(|source| CheckpointError::Write { path: self.partial.clone(), source })?;
        std::fs::rename(&self.partial, &self.output).map_err(|source| CheckpointError::Write { path: self.output.clone(), source })?;
        // Renamed: nothing left for Drop to remove.
        self.partial = PathBuf::new();
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.partial.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.partial);
        }
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
        // Dropped unfinished, a claimed output leaves nothing.
        let p4 = dir.join("four.safetensors");
        let claimed = PartialFile::create(&p4).expect("create");
        assert!(claimed.path().exists());
        drop(claimed);
        assert!(!p4.exists() && !partial_path(&p4).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
