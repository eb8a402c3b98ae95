//! The code of `docs/tutorial.md`, compiled and run: a model written outside the crate
//! family, plugged into the Q-BERT pipeline.

// The tutorial's `use` lines: the prelude has everything a model implementation needs.
use quant::ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, s};
use quant::prelude::*;

/// A three-layer ReLU network written by hand in f64: 64 → 32 → 32 → 10, no biases.
struct MyNet {
    x: Array2<f64>,
    y: Vec<usize>,
    blocks: Vec<Block>,
}

const SHAPES: [(usize, usize); 3] = [(64, 32), (32, 32), (32, 10)];

impl MyNet {
    fn new(x: Array2<f64>, y: Vec<usize>) -> Self {
        let mut start = 0;
        let blocks = SHAPES
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| {
                let blk = Block::new(format!("layer{i}.weight"), start, a * b);
                start += a * b;
                blk
            })
            .collect();
        Self { x, y, blocks }
    }

    fn weight<'a>(&self, w: ArrayView1<'a, f64>, i: usize) -> ArrayView2<'a, f64> {
        let r = self.blocks[i].range();
        w.slice_move(s![r]).into_shape_with_order(SHAPES[i]).expect("contiguous parameters")
    }

    /// Logits, calling `hook(site, input)` on each layer's input.
    fn logits(&self, w: ArrayView1<'_, f64>, x: ArrayView2<'_, f64>, hook: &mut dyn FnMut(usize, ArrayViewMut2<'_, f64>)) -> Array2<f64> {
        let mut h = x.to_owned();
        for i in 0..3 {
            hook(i, h.view_mut());
            h = h.dot(&self.weight(w, i));
            if i < 2 {
                h.mapv_inplace(|v| v.max(0.0));
            }
        }
        h
    }
}

impl Model for MyNet {
    fn dim(&self) -> usize {
        SHAPES.iter().map(|(a, b)| a * b).sum()
    }
    fn blocks(&self) -> &[Block] {
        &self.blocks
    }
    fn samples(&self) -> usize {
        self.y.len()
    }
}

impl Autodiff<f64> for MyNet {
    // Only the gradient: Hessian-vector products come from central finite differences.
    fn loss_grad_into(&self, w: ArrayView1<'_, f64>, batch: Batch<'_>, mut grad: ArrayViewMut1<'_, f64>) -> quant::hessian::Result<f64> {
        let rows: Vec<usize> = match batch {
            Batch::All => (0..self.y.len()).collect(),
            Batch::Indices(i) => i.to_vec(),
        };
        let x = self.x.select(Axis(0), &rows);
        // Forward, keeping each layer's input.
        let mut inputs = vec![x.clone()];
        let mut h = x;
        for i in 0..3 {
            h = h.dot(&self.weight(w, i));
            if i < 2 {
                h.mapv_inplace(|v| v.max(0.0));
                inputs.push(h.clone());
            }
        }
        // Softmax cross-entropy.
        let n = rows.len() as f64;
        let mut loss = 0.0;
        for (mut row, &r) in h.outer_iter_mut().zip(&rows) {
            let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            row.mapv_inplace(|z| (z - m).exp());
            let sum = row.sum();
            loss += -(row[self.y[r]] / sum).ln();
            row.mapv_inplace(|e| e / sum / n);
            row[self.y[r]] -= 1.0 / n;
        }
        // Backward.
        let mut g = h;
        for i in (0..3).rev() {
            let dw = inputs[i].t().dot(&g);
            grad.slice_mut(s![self.blocks[i].range()]).assign(&Array1::from_iter(dw.iter().copied()));
            if i > 0 {
                g = g.dot(&self.weight(w, i).t());
                g.zip_mut_with(&inputs[i], |d, &a| {
                    if a <= 0.0 {
                        *d = 0.0
                    }
                });
            }
        }
        Ok(loss / n)
    }
}

impl QuantizableModel<f64> for MyNet {
    fn weight_blocks(&self) -> Vec<MatrixBlock> {
        (0..3).map(|i| MatrixBlock::new(i, SHAPES[i].0, SHAPES[i].1)).collect()
    }
    fn accuracy_hooked(
        &self,
        w: ArrayView1<'_, f64>,
        batch: Batch<'_>,
        hook: &mut dyn FnMut(usize, ArrayViewMut2<'_, f64>),
    ) -> quant::hessian::Result<f64> {
        let rows: Vec<usize> = match batch {
            Batch::All => (0..self.y.len()).collect(),
            Batch::Indices(i) => i.to_vec(),
        };
        let logits = self.logits(w, self.x.select(Axis(0), &rows).view(), hook);
        let hits = logits
            .outer_iter()
            .zip(&rows)
            .filter(|&(l, &r)| {
                l.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (j, &v)| if v > b.1 { (j, v) } else { b }).0 == self.y[r]
            })
            .count();
        Ok(hits as f64 / rows.len() as f64)
    }
}

#[test]
fn tutorial() -> Result<(), quant::Error> {
    let d = quant::data::digits()?;
    let x = d.images.mapv(|p| f64::from(p) / 16.0);
    let y: Vec<usize> = d.labels.iter().map(|&l| usize::from(l)).collect();
    let (train_set, test_set) = quant::data::split(y.len(), 0.2, 0)?;
    let net = MyNet::new(x, y);

    // 1. Check the gradient against finite differences before trusting any curvature.
    let w0 = Array1::from_shape_fn(net.dim(), |i| ((i * 7919 % 1000) as f64 / 1000.0 - 0.5) * 0.3);
    let mut g = Array1::zeros(net.dim());
    net.loss_grad_into(w0.view(), Batch::Indices(&train_set[..50]), g.view_mut())?;
    for j in [0, 1000, 2500, 3000] {
        let (mut a, mut b) = (w0.clone(), w0.clone());
        a[j] += 1e-6;
        b[j] -= 1e-6;
        let (mut ga, mut gb) = (Array1::zeros(net.dim()), Array1::zeros(net.dim()));
        let la = net.loss_grad_into(a.view(), Batch::Indices(&train_set[..50]), ga.view_mut())?;
        let lb = net.loss_grad_into(b.view(), Batch::Indices(&train_set[..50]), gb.view_mut())?;
        assert!(((la - lb) / 2e-6 - g[j]).abs() < 1e-6);
    }

    // 2. Train it (any optimiser; here the crate's Adam).
    let mut w = w0;
    quant::train::train(&net, &mut w, &train_set, &quant::train::TrainParams { epochs: 30, lr: 3e-3, ..Default::default() }, |_, _| {})?;

    // 3. Quantize it: the exact optimum of Omega x error over 2/3/4/8 bits at 4x compression,
    //    with the first layer free too (no embedding in this model).
    let pipeline = QbertPipeline::new(PipelineParams { embedding_bits: None, subset_size: Some(32), ..PipelineParams::default() })?;
    let strategy = Strategy::Budget { choices: vec![2, 3, 4, 8], budget: Budget::CompressionRatio(4.0) };
    let q = pipeline.quantize(&net, w.view(), &train_set, &strategy, Grouping::PerTensor)?;
    for l in &q.layers {
        println!("{:<16} Omega {:>8.4}  bits {:?}  {} bytes", l.name, l.omega, l.mixed_bits, l.bytes);
    }
    let before = net.accuracy_hooked(w.view(), Batch::Indices(&test_set), &mut |_, _| {})?;
    let after = net.accuracy_hooked(q.weights.view(), Batch::Indices(&test_set), &mut |_, _| {})?;
    println!("{:.1}x smaller: accuracy {:.2}% -> {:.2}%", q.compression, 100.0 * before, 100.0 * after);
    assert!(q.compression >= 4.0);
    assert!(before > 0.9 && after > before - 0.05);
    Ok(())
}
