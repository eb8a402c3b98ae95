//! The BERT-family encoder: parameters in one flat vector under the checkpoint's names, and
//! the forward pass written once over [`Real`].

use std::path::Path;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis, CowArray, Ix1, Ix2, s};
use quant_core::rng;
use quant_hessian::{Block, Real};

use crate::common::{layer_norm, layer_norm_back};

use crate::mlp::Activation;

use super::config::{BertConfig, HiddenAct, Pooling, PoolingMode};
use super::error::{BertError, Result};
use super::tokenize::TokenBatch;

/// Block indices of one encoder layer.
pub(crate) type LayerIdx = crate::common::LayerPairs;

/// Where each tensor lives in the flat parameter vector.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) word: usize,
    pub(crate) position: usize,
    pub(crate) token_type: usize,
    pub(crate) norm: (usize, usize),
    pub(crate) layers: Vec<LayerIdx>,
}

/// The tensors of a BERT encoder in parameter order, by their names without prefix, with the
/// shapes `config` implies (`out × in` for every linear weight, as stored).
pub(crate) fn tensor_names(c: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (d, ff) = (c.hidden_size, c.intermediate_size);
    let mut t = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![c.vocab_size, d]),
        ("embeddings.position_embeddings.weight".to_string(), vec![c.max_position_embeddings, d]),
        ("embeddings.token_type_embeddings.weight".to_string(), vec![c.type_vocab_size, d]),
        ("embeddings.LayerNorm.weight".to_string(), vec![d]),
        ("embeddings.LayerNorm.bias".to_string(), vec![d]),
    ];
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for (name, shape) in [
            ("attention.self.query.weight", vec![d, d]),
            ("attention.self.query.bias", vec![d]),
            ("attention.self.key.weight", vec![d, d]),
            ("attention.self.key.bias", vec![d]),
            ("attention.self.value.weight", vec![d, d]),
            ("attention.self.value.bias", vec![d]),
            ("attention.output.dense.weight", vec![d, d]),
            ("attention.output.dense.bias", vec![d]),
            ("attention.output.LayerNorm.weight", vec![d]),
            ("attention.output.LayerNorm.bias", vec![d]),
            ("intermediate.dense.weight", vec![ff, d]),
            ("intermediate.dense.bias", vec![ff]),
            ("output.dense.weight", vec![d, ff]),
            ("output.dense.bias", vec![d]),
            ("output.LayerNorm.weight", vec![d]),
            ("output.LayerNorm.bias", vec![d]),
        ] {
            t.push((format!("{p}.{name}"), shape));
        }
    }
    t
}

fn layout(c: &BertConfig) -> Layout {
    let layers = (0..c.num_hidden_layers)
        .map(|l| {
            let b = 5 + 16 * l;
            LayerIdx {
                q: (b, b + 1),
                k: (b + 2, b + 3),
                v: (b + 4, b + 5),
                out: (b + 6, b + 7),
                norm1: (b + 8, b + 9),
                ffn_in: (b + 10, b + 11),
                ffn_out: (b + 12, b + 13),
                norm2: (b + 14, b + 15),
            }
        })
        .collect();
    Layout { word: 0, position: 1, token_type: 2, norm: (3, 4), layers }
}

/// A BERT-family encoder with its sentence-embedding head.
///
/// The parameters are one flat vector (the loaded ones are [`weights`](Self::weights)) split
/// into [`Block`]s named as in the checkpoint (with its `bert.` prefix when it had one);
/// every linear weight is `out × in` as stored. The forward pass is written once, generic
/// over [`Real`], so it runs in `f32`, `f64` and dual numbers alike.
#[derive(Debug, Clone)]
pub struct Bert<F> {
    config: BertConfig,
    pooling: Pooling,
    blocks: Vec<Block>,
    pub(super) layout: Layout,
    weights: Array1<F>,
    prefix: String,
}

impl<F: Real<Base = F>> Bert<F> {
    /// Builds a model from `config`, asking `tensor(name, shape)` for each tensor (`name`
    /// without prefix; the values row-major, as many as `shape` holds).
    ///
    /// # Errors
    /// Whatever `tensor` returns; [`BertError::NonFinite`] for a NaN or infinite weight.
    pub fn from_tensors(
        config: BertConfig,
        pooling: Pooling,
        prefix: &str,
        mut tensor: impl FnMut(&str, &[usize]) -> Result<Vec<F>>,
    ) -> Result<Self> {
        let config = config.check()?;
        let names = tensor_names(&config);
        // No allocation up front: the tensors arrive one by one (from a file that bounds them).
        let mut weights = Vec::new();
        let mut blocks = Vec::with_capacity(names.len());
        for (name, shape) in &names {
            let values = tensor(name, shape)?;
            let len: usize = shape.iter().product();
            let full = format!("{prefix}{name}");
            if values.len() != len {
                return Err(BertError::TensorShape { name: full, expected: shape.clone(), got: vec![values.len()] });
            }
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                return Err(BertError::NonFinite { name: full, index });
            }
            blocks.push(Block::new(full, weights.len(), len));
            weights.extend(values);
        }
        Ok(Self { layout: layout(&config), config, pooling, blocks, weights: Array1::from(weights), prefix: prefix.to_string() })
    }

    /// A model with seeded random weights (normal with standard deviation 0.02, as BERT
    /// initialises; norms at gain 1 and bias 0), for tests and benches.
    ///
    /// # Errors
    /// [`BertError::InvalidConfig`].
    pub fn random(config: BertConfig, pooling: Pooling, seed: u64) -> Result<Self> {
        let mut stream = 0u64;
        Self::from_tensors(config, pooling, "", |name, shape| {
            stream += 1;
            let len: usize = shape.iter().product();
            Ok(if name.ends_with("LayerNorm.weight") {
                vec![F::one(); len]
            } else if name.ends_with(".bias") && name.contains("LayerNorm") {
                vec![F::zero(); len]
            } else {
                rng::normal::<F>(len, seed, stream).mapv(|v| v * F::cast(0.02)).to_vec()
            })
        })
    }

    /// Loads `config.json`, `model.safetensors` (memory-mapped; F32, F16 or BF16; names with
    /// or without the `bert.` prefix) and the pooling head ([`Pooling::from_dir`]) of a
    /// Hugging Face model directory.
    ///
    /// # Errors
    /// [`BertError::Io`], [`BertError::Config`], [`BertError::Unsupported`],
    /// [`BertError::InvalidConfig`], [`BertError::Safetensors`], [`BertError::MissingTensor`],
    /// [`BertError::TensorShape`], [`BertError::TensorDtype`], [`BertError::NonFinite`].
    pub fn load(dir: &Path) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let pooling = Pooling::from_dir(dir)?;
        let path = dir.join("model.safetensors");
        let map = super::weights::map(&path)?;
        Self::from_safetensors(config, pooling, &map).map_err(|e| match e {
            BertError::Safetensors { reason, .. } => BertError::Safetensors { path, reason },
            other => other,
        })
    }

    /// A model from the bytes of a `model.safetensors` (F32, F16 or BF16; names with or
    /// without the `bert.` prefix), checked against `config`.
    ///
    /// # Errors
    /// [`BertError::Safetensors`] (with the path `model.safetensors`),
    /// [`BertError::MissingTensor`], [`BertError::TensorShape`], [`BertError::TensorDtype`],
    /// [`BertError::NonFinite`], [`BertError::InvalidConfig`].
    pub fn from_safetensors(config: BertConfig, pooling: Pooling, bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| BertError::Safetensors { path: "model.safetensors".into(), reason: e.to_string() })?;
        let prefix = super::weights::prefix_of(&st);
        Self::from_tensors(config, pooling, prefix, |name, shape| super::weights::read(&st, prefix, name, shape))
    }

    /// Replaces the tensor named `name` (as in [`blocks`](Self::blocks)) in the loaded
    /// weights, for example with its dequantized version; returns whether the model has such
    /// a tensor.
    ///
    /// # Errors
    /// [`BertError::TensorShape`] when `values` has another length than the tensor;
    /// [`BertError::NonFinite`].
    pub fn set_tensor(&mut self, name: &str, values: &[F]) -> Result<bool> {
        let Some(b) = self.blocks.iter().find(|b| b.name() == name) else {
            return Ok(false);
        };
        if values.len() != b.len() {
            return Err(BertError::TensorShape { name: name.into(), expected: vec![b.len()], got: vec![values.len()] });
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(BertError::NonFinite { name: name.into(), index });
        }
        self.weights.slice_mut(s![b.range()]).iter_mut().zip(values).for_each(|(w, &v)| *w = v);
        Ok(true)
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The sentence-embedding head.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The loaded parameters, one flat vector in block order.
    pub fn weights(&self) -> ArrayView1<'_, F> {
        self.weights.view()
    }

    /// The prefix the checkpoint's tensor names carry (`""` or `"bert."`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The parameter blocks, one per tensor, named as in the checkpoint.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The indices (into [`blocks`](Self::blocks)) of the weight matrices Q-BERT measures:
    /// per layer query, key, value, attention output, FFN in and FFN out (`out × in`).
    pub fn weight_matrices(&self) -> Vec<usize> {
        self.layout.layers.iter().flat_map(|l| [l.q.0, l.k.0, l.v.0, l.out.0, l.ffn_in.0, l.ffn_out.0]).collect()
    }

    /// The shape of the tensor named `name` (as in [`blocks`](Self::blocks)) as the checkpoint
    /// stores it (`out × in` for a linear weight), or `None` for a name the model does not
    /// have.
    pub fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        let b = self.blocks.iter().position(|x| x.name() == name)?;
        tensor_names(&self.config).into_iter().nth(b).map(|(_, shape)| shape)
    }

    /// The indices of the embedding tables (word, position, token type).
    pub fn embedding_tables(&self) -> Vec<usize> {
        vec![self.layout.word, self.layout.position, self.layout.token_type]
    }

    /// Where each block starts in a full parameter vector.
    pub(crate) fn full_layout(&self) -> Vec<Option<usize>> {
        self.blocks.iter().map(|b| Some(b.range().start)).collect()
    }

    /// Block `b` as a vector: a view of the variables, or the loaded weights as constants.
    pub(super) fn vector<'a, T: Real<Base = F>>(&self, p: &Params<'a, T, F>, b: usize) -> CowArray<'a, T, Ix1> {
        let len = self.blocks[b].len();
        match p.at[b] {
            Some(start) => p.w.slice_move(s![start..start + len]).into(),
            None => p.w0.slice_move(s![self.blocks[b].range()]).mapv(T::from_base).into(),
        }
    }

    /// Block `b` as a `rows × cols` matrix.
    pub(super) fn matrix<'a, T: Real<Base = F>>(&self, p: &Params<'a, T, F>, b: usize, rows: usize, cols: usize) -> CowArray<'a, T, Ix2> {
        let len = self.blocks[b].len();
        match p.at[b] {
            Some(start) => {
                p.w.slice_move(s![start..start + len])
                    .into_shape_with_order((rows, cols))
                    .unwrap_or_else(|_| unreachable!("rows × cols"))
                    .into()
            }
            None => {
                p.w0.slice_move(s![self.blocks[b].range()])
                    .into_shape_with_order((rows, cols))
                    .unwrap_or_else(|_| unreachable!("rows × cols"))
                    .mapv(T::from_base)
                    .into()
            }
        }
    }

    /// Row `r` (of width `d`) of table `b`.
    fn row<'a, T: Real<Base = F>>(&self, p: &Params<'a, T, F>, b: usize, r: usize, d: usize) -> CowArray<'a, T, Ix1> {
        match p.at[b] {
            Some(start) => p.w.slice_move(s![start + r * d..start + (r + 1) * d]).into(),
            None => {
                let at = self.blocks[b].range().start + r * d;
                p.w0.slice_move(s![at..at + d]).mapv(T::from_base).into()
            }
        }
    }

    /// `x Wᵀ + b` for the `(weight, bias)` pair, `W` being `out × in`.
    fn linear<T: Real<Base = F>>(&self, p: &Params<'_, T, F>, x: &Array2<T>, (wb, bb): (usize, usize)) -> Array2<T> {
        let out = self.blocks[bb].len();
        let inp = self.blocks[wb].len() / out;
        let mut y = T::matmul(x.view(), self.matrix(p, wb, out, inp).t());
        y += &self.vector(p, bb);
        y
    }

    /// Checks `w`'s length and every token against the tables.
    pub(crate) fn check_inputs<T>(&self, w: ArrayView1<'_, T>, batch: &TokenBatch) -> Result<()> {
        if w.len() != self.weights.len() {
            return Err(BertError::ParameterCount { expected: self.weights.len(), got: w.len() });
        }
        self.check_batch(batch)
    }

    /// Checks every token against the tables.
    pub(crate) fn check_batch(&self, batch: &TokenBatch) -> Result<()> {
        let c = &self.config;
        for (i, s) in batch.sentences().iter().enumerate() {
            if s.ids.is_empty() {
                return Err(BertError::EmptySentence { sentence: i });
            }
            if s.ids.len() > c.max_position_embeddings {
                return Err(BertError::TokenOutOfRange {
                    sentence: i,
                    token: c.max_position_embeddings,
                    id: c.max_position_embeddings as u32,
                    size: c.max_position_embeddings,
                });
            }
            for (t, (&id, &ty)) in s.ids.iter().zip(&s.type_ids).enumerate() {
                if id as usize >= c.vocab_size {
                    return Err(BertError::TokenOutOfRange { sentence: i, token: t, id, size: c.vocab_size });
                }
                if ty as usize >= c.type_vocab_size {
                    return Err(BertError::TokenOutOfRange { sentence: i, token: t, id: ty, size: c.type_vocab_size });
                }
            }
        }
        Ok(())
    }

    /// The sentence embeddings (`sentences × hidden_size`) with parameters `w`.
    ///
    /// Sentences are packed, not padded: every linear layer runs once over all real tokens of
    /// the batch, attention runs within each sentence, so padding can change nothing.
    ///
    /// # Errors
    /// [`BertError::ParameterCount`], [`BertError::EmptySentence`],
    /// [`BertError::TokenOutOfRange`].
    pub fn embed_with<T: Real<Base = F>>(&self, w: ArrayView1<'_, T>, batch: &TokenBatch) -> Result<Array2<T>> {
        self.check_inputs(w, batch)?;
        let at = self.full_layout();
        let p = Params { w, w0: self.weights.view(), at: &at, out: &at, stop: None };
        let hidden = self.encode(&p, batch, None);
        Ok(self.pool(&hidden, batch))
    }

    /// Adds the Gram matrix `XᵀX` (f64) of each encoder weight matrix's inputs over the real
    /// tokens of `batch` (sentences are packed: no padding row is ever counted) to `grams`,
    /// at the loaded weights: the query, key and value matrices see the layer's input, the
    /// attention output the attention context, the FFN input the attention block's normed
    /// output, the FFN output the activations. `grams` starts empty
    /// ([`InputGrams::default`]) or holds earlier batches' sums (the same model's).
    ///
    /// # Errors
    /// [`BertError::EmptySentence`], [`BertError::TokenOutOfRange`];
    /// [`BertError::TensorShape`] when `grams` holds another model's matrices.
    pub fn accumulate_input_grams(&self, batch: &TokenBatch, grams: &mut InputGrams) -> Result<()> {
        self.accumulate_grams_of(std::slice::from_ref(batch), 0..self.layout.layers.len(), grams)
    }

    /// [`accumulate_input_grams`](Self::accumulate_input_grams) over `batch` in chunks of
    /// `chunk` sentences, as many chunks at a time as rayon has threads (one without the
    /// `rayon` feature), so the activations of that many chunks are held at a time. Each
    /// chunk's Gram matrices are added in chunk order, so the bits do not depend on the
    /// thread count.
    ///
    /// # Errors
    /// As [`accumulate_input_grams`](Self::accumulate_input_grams).
    pub fn input_grams(&self, batch: &TokenBatch, chunk: usize) -> Result<InputGrams> {
        self.layer_input_grams(batch, chunk, 0..self.layout.layers.len())
    }

    /// [`input_grams`](Self::input_grams) of the matrices of the encoder layers in `layers`
    /// only (the same values; `layers` past the last layer are ignored): sequential GPTQ
    /// needs one layer's statistics at a time, and the Gram matrices are most of a pass's
    /// work.
    ///
    /// # Errors
    /// As [`accumulate_input_grams`](Self::accumulate_input_grams).
    pub fn layer_input_grams(&self, batch: &TokenBatch, chunk: usize, layers: std::ops::Range<usize>) -> Result<InputGrams> {
        #[cfg(feature = "rayon")]
        let wave = rayon::current_num_threads().max(1);
        #[cfg(not(feature = "rayon"))]
        let wave = 1;
        let parts = batch.sentences().chunks(chunk.max(1)).map(|part| TokenBatch::new(part.to_vec())).collect::<Result<Vec<_>>>()?;
        let mut grams = InputGrams::default();
        for parts in parts.chunks(wave) {
            self.accumulate_grams_of(parts, layers.clone(), &mut grams)?;
        }
        Ok(grams)
    }

    /// The Gram matrices of `batches`' inputs to the matrices of `layers` added to `grams`,
    /// batch after batch: their forward passes in parallel, then each input's Gram matrices
    /// (each on one thread). Nothing changes on an error.
    fn accumulate_grams_of(&self, batches: &[TokenBatch], layers: std::ops::Range<usize>, grams: &mut InputGrams) -> Result<()> {
        for batch in batches {
            self.check_batch(batch)?;
        }
        let at = self.full_layout();
        let p = Params { w: self.weights.view(), w0: self.weights.view(), at: &at, out: &at, stop: None };
        let forward = |batch: &TokenBatch| {
            let mut caches = Caches::default();
            self.encode(&p, batch, Some(&mut caches));
            caches
        };
        #[cfg(feature = "rayon")]
        let caches: Vec<Caches<F>> = {
            use rayon::prelude::*;
            batches.par_iter().map(forward).collect()
        };
        #[cfg(not(feature = "rayon"))]
        let caches: Vec<Caches<F>> = batches.iter().map(forward).collect();
        // Per layer the four distinct inputs (one per batch) and the matrices that read
        // each: the query, key and value matrices share the layer's input.
        type Job<'c, F> = (Vec<&'c Array2<F>>, Vec<usize>);
        let mut jobs: Vec<Job<'_, F>> = Vec::with_capacity(self.layout.layers.len() * 4);
        for (i, l) in self.layout.layers.iter().enumerate().filter(|(i, _)| layers.contains(i)) {
            let of = |pick: fn(&LayerCache<F>) -> &Array2<F>| caches.iter().map(|c| pick(&c.layers[i])).collect::<Vec<_>>();
            jobs.push((of(|c| &c.input), vec![l.q.0, l.k.0, l.v.0]));
            jobs.push((of(|c| &c.context), vec![l.out.0]));
            jobs.push((of(|c| &c.n1), vec![l.ffn_in.0]));
            jobs.push((of(|c| &c.hidden), vec![l.ffn_out.0]));
        }
        let width = |xs: &[&Array2<F>]| xs.first().map_or(0, |x| x.ncols());
        let blocks: Vec<usize> = jobs.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        let shapes: Vec<usize> = jobs.iter().flat_map(|(xs, b)| b.iter().map(|_| width(xs))).collect();
        if grams.names.is_empty() {
            grams.names = blocks.iter().map(|&b| self.blocks[b].name().to_string()).collect();
            grams.grams = shapes.iter().map(|&n| Array2::zeros((n, n))).collect();
        }
        if grams.names.len() != blocks.len() || grams.grams.len() != blocks.len() {
            let name = grams.names.get(blocks.len()).cloned().unwrap_or_default();
            return Err(BertError::TensorShape { name, expected: vec![blocks.len()], got: vec![grams.names.len()] });
        }
        for ((&b, &n), (name, acc)) in blocks.iter().zip(&shapes).zip(grams.names.iter().zip(&grams.grams)) {
            if name != self.blocks[b].name() || acc.dim() != (n, n) {
                return Err(BertError::TensorShape { name: name.clone(), expected: vec![n, n], got: acc.shape().to_vec() });
            }
        }
        // Per input: its arrays (one per batch) and the sums of the matrices that read it. Each
        // array's Gram matrix (f64, exactly symmetric) is added to those sums in batch order;
        // the inputs run in parallel.
        type Work<'j, 'g, F> = (&'j [&'j Array2<F>], &'g mut [Array2<f64>]);
        let mut work: Vec<Work<'_, '_, F>> = Vec::with_capacity(jobs.len());
        let mut rest = grams.grams.as_mut_slice();
        for (xs, b) in &jobs {
            let (mine, tail) = rest.split_at_mut(b.len());
            work.push((xs, mine));
            rest = tail;
        }
        let add = |(xs, sums): Work<'_, '_, F>| {
            let n = width(xs);
            let mut g = Array2::zeros((n, n));
            for x in xs {
                // `g` is n × n: the shape error cannot arise.
                quant_hessian::gram_into(x.mapv(|v| v.as_f64()).view(), false, g.view_mut()).map_err(|_| BertError::TensorShape {
                    name: "an input Gram matrix".into(),
                    expected: vec![n, n],
                    got: vec![x.ncols(); 2],
                })?;
                for acc in sums.iter_mut() {
                    *acc += &g;
                }
            }
            Ok::<(), BertError>(())
        };
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            work.into_par_iter().try_for_each(add)?;
        }
        #[cfg(not(feature = "rayon"))]
        work.into_iter().try_for_each(add)?;
        grams.tokens += batches.iter().map(TokenBatch::tokens).sum::<usize>();
        Ok(())
    }

    /// [`embed_with`](Self::embed_with) at the loaded weights.
    ///
    /// # Errors
    /// As [`embed_with`](Self::embed_with).
    pub fn embed(&self, batch: &TokenBatch) -> Result<Array2<F>> {
        self.embed_with(self.weights.view(), batch)
    }

    /// The last layer's token vectors, packed (`tokens × hidden_size`, sentence after
    /// sentence); with `caches`, what the backward pass needs.
    pub(crate) fn encode<T: Real<Base = F>>(
        &self,
        p: &Params<'_, T, F>,
        batch: &TokenBatch,
        mut caches: Option<&mut Caches<T>>,
    ) -> Array2<T> {
        let x = self.embed_rows(p, batch, caches.as_deref_mut());
        self.encode_layers(p, batch, x, 0, caches, None)
    }

    /// The embedding rows after their norm (the first layer's input).
    pub(crate) fn embed_rows<T: Real<Base = F>>(
        &self,
        p: &Params<'_, T, F>,
        batch: &TokenBatch,
        caches: Option<&mut Caches<T>>,
    ) -> Array2<T> {
        let d = self.config.hidden_size;
        let mut e = Array2::<T>::zeros((batch.tokens(), d));
        let mut r = 0;
        for s in batch.sentences() {
            for (t, (&id, &tt)) in s.ids.iter().zip(&s.type_ids).enumerate() {
                let mut row = e.row_mut(r);
                row.assign(&self.row(p, self.layout.word, id as usize, d));
                row += &self.row(p, self.layout.position, t, d);
                row += &self.row(p, self.layout.token_type, tt as usize, d);
                r += 1;
            }
        }
        let (g, b) = self.layout.norm;
        let (x, xhat, inv) = layer_norm(&e, self.vector(p, g).view(), self.vector(p, b).view(), self.config.layer_norm_eps);
        if let Some(cs) = caches {
            cs.embedding = Some((xhat, inv));
        }
        x
    }

    /// The encoder layers `from..` on their input `x`; with `caches`, what the backward pass
    /// needs; with `inputs`, each of those layers' input.
    pub(crate) fn encode_layers<T: Real<Base = F>>(
        &self,
        p: &Params<'_, T, F>,
        batch: &TokenBatch,
        mut x: Array2<T>,
        from: usize,
        mut caches: Option<&mut Caches<T>>,
        mut inputs: Option<&mut Vec<Array2<T>>>,
    ) -> Array2<T> {
        let c = &self.config;
        let eps = c.layer_norm_eps;
        let norm = |x: &Array2<T>, (g, b): (usize, usize)| layer_norm(x, self.vector(p, g).view(), self.vector(p, b).view(), eps);
        for l in self.layout.layers.iter().skip(from) {
            if let Some(keep) = inputs.as_deref_mut() {
                keep.push(x.clone());
            }
            let q = self.linear(p, &x, l.q);
            let k = self.linear(p, &x, l.k);
            let v = self.linear(p, &x, l.v);
            let mut probs = caches.is_some().then(Vec::new);
            let context = self.attention(&q, &k, &v, batch, probs.as_mut());
            let mut r1 = self.linear(p, &context, l.out);
            r1 += &x;
            let (n1, xhat1, inv1) = norm(&r1, l.norm1);
            let mut h = self.linear(p, &n1, l.ffn_in);
            let act = c.hidden_act;
            // The activation's derivative only for a backward pass (kept in the caches).
            let dh = if caches.is_some() {
                let mut dh = Array2::zeros(h.raw_dim());
                T::map_with_derivative(h.view_mut(), dh.view_mut(), |z| activation(act, z));
                Some(dh)
            } else {
                T::map_value(h.view_mut(), |z| activation(act, z));
                None
            };
            let mut r2 = self.linear(p, &h, l.ffn_out);
            r2 += &n1;
            let (n2, xhat2, inv2) = norm(&r2, l.norm2);
            if let Some(cs) = caches.as_deref_mut() {
                let (probs, dhidden) = (probs.unwrap_or_default(), dh.unwrap_or_default());
                cs.layers.push(LayerCache { input: x, q, k, v, probs, context, n1, xhat1, inv1, hidden: h, dhidden, xhat2, inv2 });
            }
            x = n2;
        }
        x
    }

    /// The gain block of encoder layer `l`'s output norm (the last block a backward pass
    /// reaches in that layer's output).
    pub(crate) fn layer_norm2_gain(&self, l: usize) -> usize {
        self.layout.layers[l].norm2.0
    }

    /// The encoder layer (0-based) whose tensors include block `b`, or `None` for the
    /// embeddings and their norm.
    pub(crate) fn layer_of(&self, b: usize) -> Option<usize> {
        self.layout.layers.iter().position(|l| l.holds(b))
    }

    /// Multi-head self-attention within each sentence of the packed rows; with `keep`, each
    /// (sentence, head)'s probabilities in that order.
    fn attention<T: Real>(
        &self,
        q: &Array2<T>,
        k: &Array2<T>,
        v: &Array2<T>,
        batch: &TokenBatch,
        mut keep: Option<&mut Vec<Array2<T>>>,
    ) -> Array2<T> {
        let c = &self.config;
        let (heads, dh) = (c.num_attention_heads, c.head_dim());
        let scale = T::cast(1.0 / (dh as f64).sqrt());
        let mut ctx = Array2::<T>::zeros(q.raw_dim());
        let mut start = 0;
        for s in batch.sentences() {
            let len = s.ids.len();
            for h in 0..heads {
                let cols = s![start..start + len, h * dh..(h + 1) * dh];
                let (qh, kh, vh) = (q.slice(cols), k.slice(cols), v.slice(cols));
                let mut p = T::matmul(qh, kh.t());
                for mut row in p.outer_iter_mut() {
                    let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b * scale));
                    let mut sum = T::zero();
                    row.mapv_inplace(|a| {
                        let e = (a * scale - m).exp();
                        sum += e;
                        e
                    });
                    row.mapv_inplace(|e| e / sum);
                }
                ctx.slice_mut(cols).assign(&T::matmul(p.view(), vh));
                if let Some(k) = keep.as_deref_mut() {
                    k.push(p);
                }
            }
            start += len;
        }
        ctx
    }

    /// Backward through [`attention`](Self::attention): `(dq, dk, dv)` from `dctx`.
    fn attention_back<T: Real>(&self, cache: &LayerCache<T>, dctx: &Array2<T>, batch: &TokenBatch) -> (Array2<T>, Array2<T>, Array2<T>) {
        let c = &self.config;
        let (heads, dh) = (c.num_attention_heads, c.head_dim());
        let scale = T::cast(1.0 / (dh as f64).sqrt());
        let (mut dq, mut dk, mut dv) = (Array2::zeros(dctx.raw_dim()), Array2::zeros(dctx.raw_dim()), Array2::zeros(dctx.raw_dim()));
        let mut start = 0;
        let mut probs = cache.probs.iter();
        for s in batch.sentences() {
            let len = s.ids.len();
            for h in 0..heads {
                let Some(p) = probs.next() else { unreachable!("one probability matrix per sentence and head") };
                let cols = s![start..start + len, h * dh..(h + 1) * dh];
                let (qh, kh, vh, dc) = (cache.q.slice(cols), cache.k.slice(cols), cache.v.slice(cols), dctx.slice(cols));
                dv.slice_mut(cols).assign(&T::matmul(p.t(), dc));
                // Softmax backward: dS = P ⊙ (dP − rowsum(P ⊙ dP)), then the scale.
                let mut ds = T::matmul(dc, vh.t());
                for (mut row, prow) in ds.outer_iter_mut().zip(p.outer_iter()) {
                    let inner = row.iter().zip(prow).fold(T::zero(), |acc, (&a, &b)| acc + a * b);
                    row.zip_mut_with(&prow, |g, &pj| *g = pj * (*g - inner) * scale);
                }
                dq.slice_mut(cols).assign(&T::matmul(ds.view(), kh));
                dk.slice_mut(cols).assign(&T::matmul(ds.t(), qh));
            }
            start += len;
        }
        (dq, dk, dv)
    }

    /// Writes `x Wᵀ + b`'s parameter gradients (`dW = dyᵀ x`, `db = Σ dy`) into `grad` and
    /// returns `dx = dy W`, or `None` when the pass stops at this layer's weight or bias.
    fn linear_back<T: Real<Base = F>>(
        &self,
        p: &Params<'_, T, F>,
        grad: &mut ArrayViewMut1<'_, T>,
        x: &Array2<T>,
        dy: &Array2<T>,
        (wb, bb): (usize, usize),
    ) -> Option<Array2<T>> {
        let out = self.blocks[bb].len();
        let inp = self.blocks[wb].len() / out;
        // Only the wanted gradients are computed (a constant weight skips its product).
        if p.out[wb].is_some() {
            let dw = T::matmul(dy.t(), x.view());
            self.put(p, grad, wb, dw.iter().copied());
        }
        if p.out[bb].is_some() {
            self.put(p, grad, bb, dy.sum_axis(Axis(0)));
        }
        if p.stop == Some(wb) || p.stop == Some(bb) {
            return None;
        }
        Some(T::matmul(dy.view(), self.matrix(p, wb, out, inp).view()))
    }

    /// Writes `values` into block `b` of `grad` (each block but the tables is written once).
    fn put<T: Real>(&self, p: &Params<'_, T, F>, grad: &mut ArrayViewMut1<'_, T>, b: usize, values: impl IntoIterator<Item = T>) {
        if let Some(start) = p.out[b] {
            let len = self.blocks[b].len();
            grad.slice_mut(s![start..start + len]).iter_mut().zip(values).for_each(|(g, v)| *g = v);
        }
    }

    /// The gradient of `Σ_i ⟨dE_i, e_i⟩` (`de`: `sentences × hidden_size`, the loss's
    /// gradient with respect to the embeddings) with respect to the wanted parameters
    /// (`p.out`), written into `grad` (overwritten), from a forward pass that kept its
    /// caches, ending early as `p.stop` says.
    pub(crate) fn backward<T: Real<Base = F>>(
        &self,
        p: &Params<'_, T, F>,
        batch: &TokenBatch,
        hidden: &Array2<T>,
        caches: &Caches<T>,
        de: &Array2<T>,
        grad: &mut ArrayViewMut1<'_, T>,
    ) {
        // Every block but the three embedding tables is written exactly once below; the tables
        // (half of a real model's parameters) are zeroed and get their used rows added.
        for table in [self.layout.word, self.layout.position, self.layout.token_type] {
            if let Some(start) = p.out[table] {
                grad.slice_mut(s![start..start + self.blocks[table].len()]).fill(T::zero());
            }
        }
        let stops = |pair: (usize, usize)| p.stop == Some(pair.0) || p.stop == Some(pair.1);
        let c = &self.config;
        let d = c.hidden_size;
        let mut dx = self.pool_back(hidden, batch, de);
        for (l, cache) in self.layout.layers.iter().zip(&caches.layers).rev() {
            // N2 = LN(N1 + FFN(N1)).
            let (dr2, dg2, db2) = layer_norm_back(&dx, &cache.xhat2, &cache.inv2, self.vector(p, l.norm2.0).view());
            self.put(p, grad, l.norm2.0, dg2);
            self.put(p, grad, l.norm2.1, db2);
            if stops(l.norm2) {
                return;
            }
            let Some(mut dh) = self.linear_back(p, grad, &cache.hidden, &dr2, l.ffn_out) else { return };
            dh *= &cache.dhidden;
            let Some(mut dn1) = self.linear_back(p, grad, &cache.n1, &dh, l.ffn_in) else { return };
            dn1 += &dr2;
            // N1 = LN(X + Attention(X)).
            let (dr1, dg1, db1) = layer_norm_back(&dn1, &cache.xhat1, &cache.inv1, self.vector(p, l.norm1.0).view());
            self.put(p, grad, l.norm1.0, dg1);
            self.put(p, grad, l.norm1.1, db1);
            if stops(l.norm1) {
                return;
            }
            let Some(dctx) = self.linear_back(p, grad, &cache.context, &dr1, l.out) else { return };
            let (dq, dk, dv) = self.attention_back(cache, &dctx, batch);
            // A stop at one of the three projections needs only its own parameter gradients.
            if let Some(&(pair, dy)) = [(l.q, &dq), (l.k, &dk), (l.v, &dv)].iter().find(|(pair, _)| stops(*pair)) {
                self.linear_back(p, grad, &cache.input, dy, pair);
                return;
            }
            // (Summed in the order q, k, v, residual.)
            let mut dinput = Array2::zeros(dr1.raw_dim());
            for (i, (pair, dy)) in [(l.q, &dq), (l.k, &dk), (l.v, &dv)].into_iter().enumerate() {
                let Some(dxi) = self.linear_back(p, grad, &cache.input, dy, pair) else { unreachable!("no stop here") };
                if i == 0 { dinput = dxi } else { dinput += &dxi }
            }
            dinput += &dr1;
            dx = dinput;
        }
        let Some((xhat, inv)) = &caches.embedding else { unreachable!("the forward pass kept the embedding norm") };
        let (de0, dg, db) = layer_norm_back(&dx, xhat, inv, self.vector(p, self.layout.norm.0).view());
        self.put(p, grad, self.layout.norm.0, dg);
        self.put(p, grad, self.layout.norm.1, db);
        // Scatter the rows into the three tables (the word table in place: it is large).
        let mut r = 0;
        for s in batch.sentences() {
            for (t, (&id, &tt)) in s.ids.iter().zip(&s.type_ids).enumerate() {
                let g = de0.row(r);
                for (table, row) in [(self.layout.word, id as usize), (self.layout.position, t), (self.layout.token_type, tt as usize)] {
                    let Some(start) = p.out[table] else { continue };
                    let at = start + row * d;
                    grad.slice_mut(s![at..at + d]).zip_mut_with(&g, |a, &b| *a += b);
                }
                r += 1;
            }
        }
    }

    /// Backward through [`pool`](Self::pool): the token rows' gradient from the embeddings'.
    fn pool_back<T: Real>(&self, hidden: &Array2<T>, batch: &TokenBatch, de: &Array2<T>) -> Array2<T> {
        let mut dh = Array2::<T>::zeros(hidden.raw_dim());
        let mut start = 0;
        for (i, s) in batch.sentences().iter().enumerate() {
            let len = s.ids.len();
            let rows = hidden.slice(s![start..start + len, ..]);
            let pooled = self.pool_one(rows);
            let mut g = de.row(i).to_owned();
            if self.pooling.normalize {
                // y = o / max(‖o‖, 1e-12): dO = (dY − y ⟨y, dY⟩) / ‖o‖ above the floor, dY / 1e-12 below.
                let norm = pooled.iter().map(|&v| v * v).sum::<T>().sqrt();
                if norm > T::cast(1e-12) {
                    let y = pooled.mapv(|v| v / norm);
                    let inner = y.iter().zip(&g).fold(T::zero(), |a, (&p, &q)| a + p * q);
                    g.zip_mut_with(&y, |gi, &yi| *gi = (*gi - yi * inner) / norm);
                } else {
                    g.mapv_inplace(|v| v / T::cast(1e-12));
                }
            }
            let mut block = dh.slice_mut(s![start..start + len, ..]);
            match self.pooling.mode {
                PoolingMode::Mean => {
                    let inv = T::cast(1.0 / len as f64);
                    for mut row in block.outer_iter_mut() {
                        row.zip_mut_with(&g, |a, &b| *a = b * inv);
                    }
                }
                PoolingMode::Cls => block.row_mut(0).assign(&g),
                PoolingMode::Max => {
                    // The gradient goes to the first row holding each component's maximum
                    // (as the forward fold keeps the first of equal values).
                    for j in 0..g.len() {
                        let col = rows.column(j);
                        let arg = col.iter().enumerate().fold(0, |best, (t, &v)| if v > col[best] { t } else { best });
                        block[[arg, j]] = g[j];
                    }
                }
            }
            start += len;
        }
        dh
    }

    /// One sentence's rows pooled (before normalisation).
    pub(super) fn pool_one<T: Real>(&self, rows: ArrayView2<'_, T>) -> Array1<T> {
        match self.pooling.mode {
            PoolingMode::Mean => rows.sum_axis(Axis(0)) / T::cast(rows.nrows() as f64),
            PoolingMode::Cls => rows.row(0).to_owned(),
            PoolingMode::Max => rows.outer_iter().skip(1).fold(rows.row(0).to_owned(), |mut m, r| {
                m.zip_mut_with(&r, |a, &b| *a = a.max(b));
                m
            }),
        }
    }

    /// Pools each sentence's rows of `hidden` and normalises as the head says.
    pub(crate) fn pool<T: Real>(&self, hidden: &Array2<T>, batch: &TokenBatch) -> Array2<T> {
        let mut out = Array2::<T>::zeros((batch.len(), self.config.hidden_size));
        let mut start = 0;
        for (i, s) in batch.sentences().iter().enumerate() {
            let len = s.ids.len();
            let mut o = self.pool_one(hidden.slice(s![start..start + len, ..]));
            if self.pooling.normalize {
                // sentence-transformers divides by max(‖o‖, 1e-12).
                let norm = o.iter().map(|&v| v * v).sum::<T>().sqrt().max(T::cast(1e-12));
                o.mapv_inplace(|v| v / norm);
            }
            out.row_mut(i).assign(&o);
            start += len;
        }
        out
    }
}

/// The parameters a pass reads: the variables from `w` (block `b` starts at `at[b]`), and the
/// blocks that are not variables (`at[b]` is `None`) from the loaded weights `w0`, as constants.
/// The backward pass writes block `b`'s gradient at `out[b]` of its gradient vector (`out` is
/// `at` for a loss's gradient; one block for a block product), and only those; with `stop`, it
/// ends once that block's gradient is written (the blocks below it are not wanted).
pub(crate) struct Params<'a, T, F> {
    pub(crate) w: ArrayView1<'a, T>,
    pub(crate) w0: ArrayView1<'a, F>,
    pub(crate) at: &'a [Option<usize>],
    pub(crate) out: &'a [Option<usize>],
    pub(crate) stop: Option<usize>,
}

/// The Gram matrices `XᵀX` of each encoder weight matrix's calibration inputs
/// ([`Bert::input_grams`]): the layer Hessians `H = 2 XᵀX` of GPTQ, their diagonals the
/// importance of llama.cpp's imatrix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputGrams {
    /// The weight matrices' names, in the model's order (query, key, value, attention output,
    /// FFN input, FFN output of each layer).
    pub names: Vec<String>,
    /// `XᵀX` per matrix (`in × in`, f64), summed over tokens.
    pub grams: Vec<Array2<f64>>,
    /// Tokens summed over.
    pub tokens: usize,
}

impl InputGrams {
    /// The Gram matrix of the matrix named `name`.
    pub fn get(&self, name: &str) -> Option<&Array2<f64>> {
        self.names.iter().position(|n| n == name).map(|i| &self.grams[i])
    }
}

/// What the backward pass needs from one encoder layer.
pub(crate) struct LayerCache<T> {
    pub(super) input: Array2<T>,
    pub(super) q: Array2<T>,
    pub(super) k: Array2<T>,
    pub(super) v: Array2<T>,
    /// Attention probabilities per (sentence, head).
    pub(super) probs: Vec<Array2<T>>,
    pub(super) context: Array2<T>,
    pub(super) n1: Array2<T>,
    pub(super) xhat1: Array2<T>,
    pub(super) inv1: Vec<T>,
    /// The FFN's activations and their derivatives.
    pub(super) hidden: Array2<T>,
    pub(super) dhidden: Array2<T>,
    pub(super) xhat2: Array2<T>,
    pub(super) inv2: Vec<T>,
}

/// The forward pass's caches: the embedding norm's and each layer's.
pub(crate) struct Caches<T> {
    pub(super) embedding: Option<(Array2<T>, Vec<T>)>,
    pub(super) layers: Vec<LayerCache<T>>,
}

impl<T> Default for Caches<T> {
    fn default() -> Self {
        Self { embedding: None, layers: Vec::new() }
    }
}

/// `erf` in `f32` without branches or calls, so a loop over many values vectorises (libm's
/// `erff` was a sixth of a MiniLM forward pass, one value at a time). Within 3 ulp of the
/// exact value (2.3 at worst on a dense sweep; absolute error at most 1.4e-7, as the test
/// checks): below `|t| = 1` the odd polynomial `t·P(t²)`; up to 3.92 `1 − e^{−t²}·G(t)`
/// with `G ≈ erfc(t)·e^{t²}` (a polynomial in `t − 2.5`), free of cancellation; beyond it ±1
/// (erf(3.92) rounds to 1 in `f32`). The sign of `t` is kept and NaN stays NaN. Coefficients:
/// `scripts/erf_f32_fit.py`.
#[inline(always)]
// The fit's leading coefficient is one f32 ulp below 2/√π, and kept: the fit is best with it.
#[allow(clippy::approx_constant)]
fn erf_f32(t: f32) -> f32 {
    const P: [f32; 7] = [1.128_379_1, -0.376_126_05, 0.112_834_305, -0.026_848_601, 0.005_179_766, -0.000_794_249_9, 7.647_581e-5];
    const G: [f32; 9] = [
        0.210_807_6,
        -0.074_342_184,
        0.024_914_67,
        -0.008_132_148,
        0.002_302_524_2,
        -0.000_661_311_3,
        0.000_543_062,
        0.000_224_928_92,
        0.000_106_817_86,
    ];
    const SPLIT: f32 = 1.0;
    const SATURATE: f32 = 3.92;
    let a = t.abs();
    let small = a * horner(&P, a * a);
    let b = a.clamp(SPLIT, SATURATE);
    let tail = 1.0 - exp_neg_f32(b * b) * horner(&G, b - 2.5);
    let r = if a < SPLIT {
        small
    } else if a < SATURATE {
        tail
    } else {
        1.0
    };
    if t.is_nan() { t } else { r.copysign(t) }
}

/// `e^{−x}` for `x` in `[0, 87]` (normal results), branch-free: `x·log₂e` rounded to an
/// integer `n` by the `1.5·2²³` shift (whose bits then hold `n`), the remainder `r` by a
/// two-part `ln 2` (exact products for these `n`), `e^r` by its Taylor polynomial through
/// `r⁷` (`|r| ≤ ln2/2`: truncation below 3e-9), and `2ⁿ` from the exponent bits. Within
/// 1e-7 relative over that range (tested); [`erf_f32`] uses `[1, 15.4]`.
#[inline(always)]
fn exp_neg_f32(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const TAYLOR: [f32; 8] = [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];
    let v = -x * core::f32::consts::LOG2_E + SHIFT;
    let n = v - SHIFT;
    let r = (-x - n * LN2_HI) - n * LN2_LO;
    let k = v.to_bits().wrapping_sub(SHIFT.to_bits()) as i32;
    horner(&TAYLOR, r) * f32::from_bits(((k + 127) as u32) << 23)
}

/// `c[0] + x·(c[1] + x·(…))`.
#[inline(always)]
fn horner<const N: usize>(c: &[f32; N], x: f32) -> f32 {
    c.iter().rev().fold(0.0, |acc, &k| acc * x + k)
}

/// The activation with its first two derivatives.
#[inline(always)]
fn activation<P: Real>(act: HiddenAct, z: P) -> (P, P, P) {
    let half = P::cast(0.5);
    match act {
        // The reference MLP already has both: ReLU, and GELU in its tanh form (`gelu_new`).
        HiddenAct::Relu => Activation::Relu.eval(z),
        HiddenAct::GeluNew => Activation::Gelu.eval(z),
        HiddenAct::Gelu => {
            // σ = z Φ(z), σ' = Φ(z) + z φ(z), σ'' = φ(z)(2 − z²).
            // Φ in the primal's own precision: `erf_f32` for f32 (the f64 erf was 16% of an
            // f32 HVP), erf for f64.
            let cdf = if P::BYTES == 4 {
                P::cast(f64::from(0.5 * (1.0 + erf_f32(z.as_f64() as f32 * core::f32::consts::FRAC_1_SQRT_2))))
            } else {
                P::cast(0.5 * (1.0 + libm::erf(z.as_f64() * core::f64::consts::FRAC_1_SQRT_2)))
            };
            let pdf = (-(z * z) * half).exp() * P::cast(1.0 / (2.0 * core::f64::consts::PI).sqrt());
            (z * cdf, cdf + z * pdf, pdf * (P::cast(2.0) - z * z))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::{PoolingMode, Sentence};

    /// `|got − want|` in units in the last place of `want` rounded to `f32`.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let b = w.abs().to_bits();
        let ulp = f64::from(f32::from_bits(b + 1) - f32::from_bits(b)).max(f64::from(f32::from_bits(1)));
        (f64::from(got) - want).abs() / ulp
    }

    #[test]
    fn erf_f32_is_within_three_ulp_of_erf() {
        let mut worst: f64 = 0.0;
        // Dense over [−6, 6] (both branches, the joins at 1 and 3.92, saturation), tiny and
        // subnormal magnitudes.
        for i in 0..=1_200_000u32 {
            for t in [i as f32 / 100_000.0 - 6.0, f32::from_bits(i * 900), -f32::from_bits(i * 900 + 3)] {
                let want = libm::erf(f64::from(t));
                let got = erf_f32(t);
                let e = ulps(got, want);
                worst = worst.max(e);
                assert!(e <= 3.0, "erf({t}) = {got}, want {want}: {e} ulp");
                assert!((f64::from(got) - want).abs() <= 1.4e-7, "erf({t}) = {got}, want {want}");
                assert_eq!(got.is_sign_negative(), t.is_sign_negative(), "sign at {t}");
            }
        }
        assert!(worst > 0.5, "the sweep compares something: worst {worst} ulp");
        for (t, want) in [(0.0f32, 0.0f32), (3.92, 1.0), (10.0, 1.0), (f32::INFINITY, 1.0), (f32::NEG_INFINITY, -1.0), (f32::MAX, 1.0)] {
            assert_eq!(erf_f32(t), want, "erf({t})");
        }
        assert!(erf_f32(f32::NAN).is_nan());
    }

    #[test]
    fn exp_neg_f32_is_within_1e7_relative() {
        for i in 0..=870_000u32 {
            let x = i as f32 / 10_000.0;
            let want = (-f64::from(x)).exp();
            let got = f64::from(exp_neg_f32(x));
            assert!((got - want).abs() <= 1e-7 * want, "exp(−{x}) = {got}, want {want}");
        }
    }

    #[test]
    fn the_forward_pass_without_caches_equals_the_one_with_them_to_the_bit() {
        // Without caches the activation's value alone is evaluated (no backward pass follows);
        // with them its derivative is kept as well. Every activation, f32 and f64 (dual
        // numbers take the default path, tested by the HVP tests).
        let json = include_str!("../../tests/data/bert/plain/config.json");
        let batch = TokenBatch::new(vec![
            Sentence { ids: vec![2, 17, 45, 99, 3], type_ids: vec![0; 5] },
            Sentence { ids: vec![2, 8, 3], type_ids: vec![0, 0, 1] },
        ])
        .expect("valid batch");
        fn check<F: Real<Base = F>>(model: &Bert<F>, batch: &TokenBatch, act: HiddenAct) {
            let layout = model.full_layout();
            let p = Params { w: model.weights(), w0: model.weights(), at: &layout, out: &layout, stop: None };
            let plain = model.encode(&p, batch, None);
            let mut caches = Caches::default();
            let kept = model.encode(&p, batch, Some(&mut caches));
            assert_eq!(plain, kept, "{act:?}");
            assert!(caches.layers.iter().all(|l| l.dhidden.dim() == l.hidden.dim() && l.dhidden.iter().any(|&d| d != F::zero())));
        }
        for act in [HiddenAct::Gelu, HiddenAct::GeluNew, HiddenAct::Relu] {
            let config = BertConfig { hidden_act: act, ..BertConfig::from_json(json).expect("valid config") };
            let pooling = Pooling { mode: PoolingMode::Mean, normalize: false };
            check(&Bert::<f32>::random(config, pooling, 5).expect("model"), &batch, act);
            check(&Bert::<f64>::random(config, pooling, 5).expect("model"), &batch, act);
        }
    }
}
