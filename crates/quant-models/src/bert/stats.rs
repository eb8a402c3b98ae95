//! Input statistics on disk: [`InputGrams`] as a safetensors file, and the per-input
//! importance ([`Importance`], the diagonal of `XᵀX` per token) in llama.cpp's imatrix format.
//!
//! ## The statistics file
//! A safetensors file with one `F64` tensor `in × in` per weight matrix, named as the matrix
//! is in the checkpoint, holding `XᵀX` summed over real tokens, and one metadata entry,
//! [`TOKENS_KEY`], with the token count. Written with sorted names and a single metadata
//! entry, so the same statistics give the same bytes.
//!
//! ## llama.cpp's imatrix (`.dat`, the format `llama-imatrix --output-format dat` writes and
//! `llama-quantize --imatrix` reads)
//! Little-endian: `i32` entry count; per entry an `i32` name length, the name, `i32` `ncall`,
//! `i32` value count and that many `f32` values (the mean of each input's square over the
//! tokens, times `ncall`); then an `i32` chunk count and an `i32`-prefixed dataset name.
//! Entries are named as llama.cpp names the tensors ([`llama_cpp_name`]); this writer stores
//! `ncall = 1`.

use std::collections::BTreeMap;

use ndarray::Array2;

use super::error::{BertError, Result};
use super::model::InputGrams;

/// The metadata key of the token count in a statistics file.
pub const TOKENS_KEY: &str = "quant.input_grams.tokens";

fn invalid(reason: impl Into<String>) -> BertError {
    BertError::Statistics { reason: reason.into() }
}

/// llama.cpp's name of a BERT-family encoder weight matrix
/// (`[bert.]encoder.layer.N.attention.self.query.weight` → `blk.N.attn_q.weight`, and `key`,
/// `value`, `attention.output.dense`, `intermediate.dense`, `output.dense` to `attn_k`,
/// `attn_v`, `attn_output`, `ffn_up`, `ffn_down`), as its GGUF converter writes them; `None`
/// for other names.
pub fn llama_cpp_name(name: &str) -> Option<String> {
    super::gguf::layer_tensor_name(name, &super::gguf::LAYER_MODULES[..6])
}

impl InputGrams {
    /// The statistics file's bytes: a safetensors file with one `F64` tensor `in × in` per
    /// matrix, named as the matrix is in the checkpoint, holding `XᵀX` summed over real
    /// tokens, and one metadata entry, [`TOKENS_KEY`], with the token count. Names are sorted
    /// and there is a single metadata entry, so the same statistics give the same bytes.
    ///
    /// # Errors
    /// [`BertError::Statistics`] when names repeat or a matrix is not square.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        use safetensors::{Dtype, tensor::TensorView};
        if self.names.len() != self.grams.len() {
            return Err(invalid("names and matrices differ in number"));
        }
        let mut bytes: BTreeMap<&str, (Vec<u8>, Vec<usize>)> = BTreeMap::new();
        for (name, g) in self.names.iter().zip(&self.grams) {
            if g.nrows() != g.ncols() {
                return Err(invalid(format!("'{name}' is not square: {:?}", g.shape())));
            }
            let data: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
            if bytes.insert(name, (data, g.shape().to_vec())).is_some() {
                return Err(invalid(format!("'{name}' appears twice")));
            }
        }
        let views = bytes
            .iter()
            .map(|(name, (data, shape))| {
                TensorView::new(Dtype::F64, shape.clone(), data).map(|v| (*name, v)).map_err(|e| invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = std::collections::HashMap::from([(TOKENS_KEY.to_string(), self.tokens.to_string())]);
        safetensors::serialize(views, Some(metadata)).map_err(|e| invalid(e.to_string()))
    }

    /// Reads a statistics file ([`to_safetensors`](Self::to_safetensors)' layout).
    ///
    /// # Errors
    /// [`BertError::Statistics`] for a malformed file, a tensor that is not a square `F64`
    /// matrix, a non-finite value, or a missing or malformed token count.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| invalid(e.to_string()))?;
        let tokens = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(TOKENS_KEY))
            .ok_or_else(|| invalid(format!("no '{TOKENS_KEY}' entry: not a statistics file")))?;
        let tokens: usize = tokens.parse().map_err(|_| invalid(format!("'{TOKENS_KEY}' = '{tokens}' is not a count")))?;
        let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
        let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut grams = Vec::with_capacity(names.len());
        for name in &names {
            let t = file.tensor(name).map_err(|e| invalid(e.to_string()))?;
            let shape = t.shape();
            if t.dtype() != safetensors::Dtype::F64 || shape.len() != 2 || shape[0] != shape[1] {
                return Err(invalid(format!("'{name}' is {:?} {shape:?}, not a square F64 matrix", t.dtype())));
            }
            let values: Vec<f64> =
                t.data().chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(invalid(format!("'{name}' holds a non-finite value at flat index {i}")));
            }
            grams.push(Array2::from_shape_vec((shape[0], shape[1]), values).map_err(|e| invalid(e.to_string()))?);
        }
        Ok(Self { names, grams, tokens })
    }

    /// The per-input importance: each matrix's diagonal of `XᵀX` divided by the token count
    /// (the mean square of each input).
    pub fn importance(&self) -> Importance {
        let per = if self.tokens == 0 { 1.0 } else { self.tokens as f64 };
        Importance {
            names: self.names.clone(),
            values: self.grams.iter().map(|g| g.diag().iter().map(|v| v / per).collect()).collect(),
            tokens: self.tokens,
        }
    }
}

/// The importance of each input of each weight matrix: the mean square of the input over the
/// calibration tokens (the diagonal of `XᵀX / tokens`), as llama.cpp's imatrix holds it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Importance {
    /// The matrices' names (the checkpoint's, or llama.cpp's when read from an imatrix file).
    pub names: Vec<String>,
    /// One value per input, per matrix.
    pub values: Vec<Vec<f64>>,
    /// Tokens averaged over (0 when unknown, as for an imatrix file).
    pub tokens: usize,
}

impl Importance {
    /// The importance of the matrix named `name`, found under that name or under its
    /// llama.cpp name ([`llama_cpp_name`]).
    pub fn get(&self, name: &str) -> Option<&[f64]> {
        let find = |n: &str| self.names.iter().position(|m| m == n);
        find(name).or_else(|| llama_cpp_name(name).and_then(|n| find(&n))).map(|i| &self.values[i][..])
    }

    /// llama.cpp's imatrix bytes, the legacy layout `llama-imatrix --output-format dat` writes
    /// and `llama-quantize --imatrix` reads. Little-endian: `i32` entry count; per entry an
    /// `i32` name length, the name, `i32` `ncall`, `i32` value count and that many `f32`
    /// values (the mean of each input's square over the tokens, times `ncall`); then an `i32`
    /// chunk count and an `i32`-prefixed dataset name. Entries are under llama.cpp's names
    /// where the name maps ([`llama_cpp_name`]), in name order, with `ncall = 1`, one chunk,
    /// and `dataset` as the dataset name.
    ///
    /// # Errors
    /// [`BertError::Statistics`] when there are no entries, a name or the dataset name is
    /// longer than `i32::MAX` bytes, or a value does not fit an `f32`.
    pub fn to_imatrix(&self, dataset: &str) -> Result<Vec<u8>> {
        let len = |n: usize| i32::try_from(n).map_err(|_| invalid("a name or count does not fit the format's i32"));
        let entries: BTreeMap<String, &Vec<f64>> =
            self.names.iter().map(|n| llama_cpp_name(n).unwrap_or_else(|| n.clone())).zip(&self.values).collect();
        if entries.is_empty() {
            return Err(invalid("no entries to write"));
        }
        let mut out = Vec::new();
        out.extend_from_slice(&len(entries.len())?.to_le_bytes());
        for (name, values) in &entries {
            out.extend_from_slice(&len(name.len())?.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&1i32.to_le_bytes());
            out.extend_from_slice(&len(values.len())?.to_le_bytes());
            for &v in values.iter() {
                let f = v as f32;
                if !f.is_finite() {
                    return Err(invalid(format!("'{name}': {v} does not fit an f32")));
                }
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
        out.extend_from_slice(&1i32.to_le_bytes());
        out.extend_from_slice(&len(dataset.len())?.to_le_bytes());
        out.extend_from_slice(dataset.as_bytes());
        Ok(out)
    }

    /// Reads llama.cpp's imatrix bytes: each entry's values divided by its `ncall`. The chunk
    /// count and dataset name after the entries are optional (older files lack the name).
    ///
    /// # Errors
    /// [`BertError::Statistics`] for a truncated file, no entries, a negative length, a
    /// name that is not UTF-8, a repeated name, `ncall < 1`, or a value that is negative or
    /// not finite.
    pub fn from_imatrix(bytes: &[u8]) -> Result<Self> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let end = at.checked_add(n).filter(|&e| e <= bytes.len()).ok_or_else(|| invalid(format!("truncated at byte {at}")))?;
            let s = &bytes[at..end];
            at = end;
            Ok(s)
        };
        fn int(b: &[u8]) -> i32 {
            i32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        let count = |v: i32, what: &str| usize::try_from(v).map_err(|_| invalid(format!("negative {what}: {v}")));
        let n = count(int(take(4)?), "entry count")?;
        if n == 0 {
            return Err(invalid("no entries"));
        }
        let mut out = Importance::default();
        for _ in 0..n {
            let len = count(int(take(4)?), "name length")?;
            let name = std::str::from_utf8(take(len)?).map_err(|_| invalid("a name is not UTF-8"))?.to_string();
            let ncall = int(take(4)?);
            if ncall < 1 {
                return Err(invalid(format!("'{name}': ncall {ncall} (at least 1)")));
            }
            let nval = count(int(take(4)?), "value count")?;
            let raw = take(nval.checked_mul(4).ok_or_else(|| invalid("value count too large"))?)?;
            let values: Vec<f64> =
                raw.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])) / f64::from(ncall)).collect();
            if let Some(v) = values.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                return Err(invalid(format!("'{name}': value {v} (finite and non-negative expected)")));
            }
            if out.names.contains(&name) {
                return Err(invalid(format!("'{name}' appears twice")));
            }
            out.names.push(name);
            out.values.push(values);
        }
        Ok(out)
    }
}
