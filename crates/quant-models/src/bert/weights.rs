//! Reading `model.safetensors`: the memory map, the name prefix, and F32 / F16 / BF16 to the
//! model's float type.

use std::path::Path;

use quant_hessian::Real;
use safetensors::{Dtype, SafeTensors};

use super::error::{BertError, Result};

/// The file's bytes: memory-mapped.
pub(crate) fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|source| BertError::Io { path: path.into(), source })?;
    // SAFETY: the map is read-only and lives only while the weights are copied out of it
    // (the model owns its parameters); as with every memory-mapped reader (candle,
    // safetensors' own), another process truncating or rewriting the file meanwhile is
    // outside what a read-only map can guard against.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) };
    map.map_err(|source| BertError::Io { path: path.into(), source })
}

/// `"bert."` when the checkpoint names its tensors as `BertFor…` models do, else `""`.
pub(crate) fn prefix_of(st: &SafeTensors<'_>) -> &'static str {
    if st.names().iter().any(|n| n.starts_with("bert.embeddings.")) { "bert." } else { "" }
}

/// The tensor `prefix + name`, checked against `shape` and converted to `F`.
pub(crate) fn read<F: Real<Base = F>>(st: &SafeTensors<'_>, prefix: &str, name: &str, shape: &[usize]) -> Result<Vec<F>> {
    let full = format!("{prefix}{name}");
    let view = st.tensor(&full).map_err(|_| BertError::MissingTensor { name: name.to_string() })?;
    if view.shape() != shape {
        return Err(BertError::TensorShape { name: full, expected: shape.to_vec(), got: view.shape().to_vec() });
    }
    let bytes = view.data();
    let values: Vec<F> = match view.dtype() {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| F::cast(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| F::cast(f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32()))).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| F::cast(f64::from(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()))).collect(),
        other => return Err(BertError::TensorDtype { name: full, dtype: format!("{other:?}") }),
    };
    Ok(values)
}
