//! The library checks what it is given before any of it reaches the user's model.

use ndarray::{Array1, Array2, ArrayView1, ArrayViewMut1, ArrayViewMut2};
use quant_hessian::{Autodiff, Batch, Block, HessianError, MatrixBlock, Model};
use quant_models::{Activation, Mlp};
use quant_qbert::QbertError;
use quant_qbert::data::{DataError, split};
use quant_qbert::pipeline::{Grouping, PipelineParams, QbertPipeline, QuantizableModel, Strategy};
use quant_qbert::train::{TrainParams, train};

/// A small MLP (8 inputs, two hidden layers of 6, 3 classes) on 40 seeded samples.
fn mlp() -> (Mlp<f64>, Array1<f64>) {
    let x = Array2::from_shape_fn((40, 8), |(i, j)| ((i * 7 + j * 3) % 11) as f64 / 11.0 - 0.5);
    let labels: Vec<usize> = (0..40).map(|i| i % 3).collect();
    let m = Mlp::new(&x, &labels, &[6, 6], 3, Activation::Tanh).expect("valid");
    let w = m.init(1);
    (m, w)
}

/// A model that panics if the library ever hands it an index past its samples, and whose
/// loss turns NaN from evaluation `nan_from` on (when set).
struct Strict {
    inner: Mlp<f64>,
    blocks: Vec<MatrixBlock>,
    nan_from: Option<usize>,
    calls: std::sync::atomic::AtomicUsize,
}

impl Strict {
    fn new(inner: Mlp<f64>, blocks: Vec<MatrixBlock>) -> Self {
        Self { inner, blocks, nan_from: None, calls: std::sync::atomic::AtomicUsize::new(0) }
    }

    fn check(&self, batch: Batch<'_>) {
        if let Batch::Indices(i) = batch {
            assert!(i.iter().all(|&i| i < self.samples()), "an index past the samples reached the model");
        }
    }
}

impl Model for Strict {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn blocks(&self) -> &[Block] {
        self.inner.blocks()
    }
    fn samples(&self) -> usize {
        self.inner.samples()
    }
}

impl Autodiff<f64> for Strict {
    fn loss_grad_into(&self, w: ArrayView1<'_, f64>, batch: Batch<'_>, grad: ArrayViewMut1<'_, f64>) -> quant_hessian::Result<f64> {
        self.check(batch);
        let loss = self.inner.loss_grad_into(w, batch, grad)?;
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(if self.nan_from.is_some_and(|n| call >= n) { f64::NAN } else { loss })
    }
    fn hvp_into(
        &self,
        w: ArrayView1<'_, f64>,
        v: ArrayView1<'_, f64>,
        batch: Batch<'_>,
        out: ArrayViewMut1<'_, f64>,
    ) -> quant_hessian::Result<()> {
        self.check(batch);
        self.inner.hvp_into(w, v, batch, out)
    }
}

impl QuantizableModel<f64> for Strict {
    fn weight_blocks(&self) -> Vec<MatrixBlock> {
        self.blocks.clone()
    }
    fn accuracy_hooked(
        &self,
        w: ArrayView1<'_, f64>,
        batch: Batch<'_>,
        hook: &mut dyn FnMut(usize, ArrayViewMut2<'_, f64>),
    ) -> quant_hessian::Result<f64> {
        self.inner.accuracy_hooked(w, batch, hook)
    }
}

#[test]
fn training_checks_indices_and_stops_on_a_non_finite_loss() {
    let (m, w) = mlp();
    let strict = Strict::new(m, Vec::new());
    let p = TrainParams { epochs: 2, batch_size: 8, lr: 1e-2, seed: 0 };
    let mut w1 = w.clone();
    match train(&strict, &mut w1, &[0, 5, 40], &p, |_, _| {}) {
        Err(QbertError::Hessian(HessianError::SampleOutOfRange { index: 40, samples: 40 })) => {}
        other => panic!("expected an out-of-range sample, got {other:?}"),
    }
    assert_eq!(w1, w, "nothing was trained");
    // A loss that turns NaN in the second epoch: an error naming it, not Ok([.., NaN]).
    let nan = Strict { nan_from: Some(1), ..Strict::new(strict.inner, Vec::new()) };
    let mut w2 = w.clone();
    let all: Vec<usize> = (0..40).collect();
    match train(&nan, &mut w2, &all, &TrainParams { epochs: 3, batch_size: 40, lr: 1e-2, seed: 0 }, |_, _| {}) {
        Err(QbertError::NonFiniteLoss { epoch: 1 }) => {}
        other => panic!("expected a non-finite loss in epoch 1, got {other:?}"),
    }
}

#[test]
fn the_pipeline_checks_samples_blocks_and_widths_first() {
    let (m, w) = mlp();
    let blocks = m.weight_blocks();
    let good: Vec<usize> = (0..30).collect();
    let test: Vec<usize> = (30..40).collect();
    let pipe = QbertPipeline::new(PipelineParams { subsets: 2, subset_size: Some(8), ..Default::default() }).expect("valid");
    // An index past the samples, in the training or the test list.
    let strict = Strict::new(m.clone(), blocks.clone());
    for (train_set, test_set) in [(vec![0, 1, 99], test.clone()), (good.clone(), vec![30, 41])] {
        assert!(matches!(
            pipe.run(&strict, w.view(), &train_set, &test_set, |_| {}),
            Err(QbertError::Hessian(HessianError::SampleOutOfRange { .. }))
        ));
    }
    assert!(matches!(
        pipe.quantize(&strict, w.view(), &[0, 1, 400], &Strategy::Uniform(4), Grouping::PerTensor),
        Err(QbertError::Hessian(HessianError::SampleOutOfRange { .. }))
    ));
    // Duplicate weight blocks, and a block whose shape does not match its parameters.
    let dup = Strict::new(m.clone(), vec![blocks[0], blocks[1], blocks[1]]);
    assert!(matches!(
        pipe.run(&dup, w.view(), &good, &test, |_| {}),
        Err(QbertError::InvalidParameter { what: "duplicate weight block", .. })
    ));
    let mut bad_shape = blocks.clone();
    bad_shape[1].fan_out += 1;
    let shape = Strict::new(m.clone(), bad_shape);
    assert!(matches!(
        pipe.run(&shape, w.view(), &good, &test, |_| {}),
        Err(QbertError::InvalidParameter { what: "weight block shape", .. })
    ));
    // Parameters of the wrong length.
    let strict = Strict::new(m, blocks);
    let short = Array1::<f64>::zeros(3);
    assert!(matches!(pipe.run(&strict, short.view(), &good, &test, |_| {}), Err(QbertError::Hessian(HessianError::ShapeMismatch { .. }))));
    // Mixed widths given high below low, in the parameters and in a ranking strategy.
    assert!(matches!(
        QbertPipeline::new(PipelineParams { mixed: vec![(4, 2)], ..Default::default() }),
        Err(QbertError::InvalidParameter { what: "mixed widths (high not above low)", .. })
    ));
    assert!(matches!(
        pipe.quantize(&strict, w.view(), &good, &Strategy::Ranking { low: 4, high: 2, share: 0.5 }, Grouping::PerTensor),
        Err(QbertError::InvalidParameter { what: "ranking widths (high not above low)", .. })
    ));
    assert!(matches!(
        QbertPipeline::new(PipelineParams { groupings: vec![Grouping::Finer(0)], ..Default::default() }),
        Err(QbertError::InvalidParameter { .. })
    ));
}

#[test]
fn split_fractions_outside_the_open_interval_are_refused() {
    for f in [0.0, 1.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        match split(100, f, 0) {
            Err(DataError::InvalidFraction { .. }) => {}
            other => panic!("fraction {f}: expected an error, got {other:?}"),
        }
    }
    let (train, test) = split(100, 0.25, 3).expect("valid");
    assert_eq!((train.len(), test.len()), (75, 25));
}
