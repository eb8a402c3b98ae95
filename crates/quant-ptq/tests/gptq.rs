//! GPTQ against a plain reference (column by column, the full inverse updated after every
//! column, no lazy batches, no Cholesky), against round-to-nearest, and on bad input.
#![allow(clippy::needless_range_loop)] // the reference is written index by index, on purpose

use ndarray::{Array2, ArrayView2, s};
use quant_core::{Granularity, ParamDtype, QuantError, RangeEstimator, Scheme, SliceParams, TableFit, UniformSpec, rng};
use quant_ptq::{GptqParams, gptq, layer_objective};

/// Calibration inputs with correlated features: `X = Z A`, `Z` standard normal.
fn inputs(samples: usize, n: usize, seed: u64) -> Array2<f64> {
    let z = rng::normal::<f64>(samples * n, seed, 0).into_shape_with_order((samples, n)).expect("shape");
    let g = rng::normal::<f64>(n * n, seed, 1);
    let a = Array2::from_shape_fn((n, n), |(i, j)| if i == j { 1.0 } else { 0.4 * g[i * n + j] });
    z.dot(&a)
}

fn weights(rows: usize, n: usize, seed: u64) -> Array2<f32> {
    rng::normal::<f64>(rows * n, seed, 2).mapv(|v| (0.1 * v) as f32).into_shape_with_order((rows, n)).expect("shape")
}

fn spec(bits: u8, granularity: Granularity, scheme: Scheme) -> UniformSpec {
    UniformSpec::builder().bits(bits).scheme(scheme).granularity(granularity).check().expect("valid spec")
}

fn mse_spec(bits: u8, granularity: Granularity, scheme: Scheme) -> UniformSpec {
    UniformSpec::builder()
        .bits(bits)
        .scheme(scheme)
        .granularity(granularity)
        .range(RangeEstimator::Mse { steps: 40 })
        .check()
        .expect("spec")
}

/// Gauss-Jordan inverse with partial pivoting.
fn inverse(m: &Array2<f64>) -> Array2<f64> {
    let n = m.nrows();
    let mut a = m.clone();
    let mut inv = Array2::<f64>::eye(n);
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[[i, c]].abs().total_cmp(&a[[j, c]].abs())).expect("rows");
        for k in 0..n {
            a.swap([c, k], [p, k]);
            inv.swap([c, k], [p, k]);
        }
        let d = a[[c, c]];
        for k in 0..n {
            a[[c, k]] /= d;
            inv[[c, k]] /= d;
        }
        for r in 0..n {
            if r != c {
                let f = a[[r, c]];
                for k in 0..n {
                    a[[r, k]] -= f * a[[c, k]];
                    inv[[r, k]] -= f * inv[[c, k]];
                }
            }
        }
    }
    inv
}

fn grid(p: &SliceParams<f32>, max: u8, x: f64) -> f64 {
    let (sc, m, z) = (f64::from(p.scale), f64::from(p.offset), f64::from(p.zero_point));
    let u = (((x - m) / sc).round_ties_even() + z).clamp(0.0, f64::from(max));
    sc * (u - z) + m
}

fn fit(xs: &[f64], spec: &UniformSpec) -> SliceParams<f32> {
    if spec.range() != RangeEstimator::MinMax {
        // Other estimators: the plain quantizer's fit of one slice (tested in quant-core);
        // what is checked here is GPTQ's column logic around it.
        let xs: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
        return quant_core::fit_slice(&xs, None, spec).expect("fit");
    }
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    SliceParams::for_spec(lo as f32, hi as f32, spec)
}

/// The obviously-correct GPTQ: for each column (in order, or by descending H_ii), quantize
/// it, spread its error over the later columns with the current inverse Hessian, then remove
/// the column from the inverse (the OBS update). Groups are fitted on the current weights
/// when their first column is reached (with act order: on the original weights).
fn reference(
    w: ArrayView2<'_, f32>,
    h: ArrayView2<'_, f64>,
    spec: &UniformSpec,
    damp: f64,
    act_order: bool,
    importance_fit: bool,
) -> Array2<f64> {
    let (rows, n) = w.dim();
    let mut wm = w.mapv(f64::from);
    let mut hm = h.to_owned();
    for i in 0..n {
        if hm[[i, i]] == 0.0 {
            hm[[i, i]] = 1.0;
            wm.column_mut(i).fill(0.0);
        }
    }
    let mean = hm.diag().sum() / n as f64;
    for i in 0..n {
        hm[[i, i]] += damp * mean;
    }
    let gs = match spec.granularity() {
        Granularity::PerGroup { size, .. } => size,
        _ => n,
    };
    let diag: Vec<f64> = h.diag().to_vec();
    let params_of = |wm: &Array2<f64>, r: usize, c: usize, weighted: bool| -> SliceParams<f32> {
        match spec.granularity() {
            Granularity::PerTensor => fit(&wm.iter().copied().collect::<Vec<_>>(), spec),
            Granularity::PerChannel { .. } => fit(&wm.row(r).to_vec(), spec),
            _ => {
                let g0 = c / gs * gs;
                let cols = g0..(g0 + gs).min(n);
                let xs = wm.slice(s![r, cols.clone()]).to_vec();
                if !weighted {
                    return fit(&xs, spec);
                }
                // The group's H_jj, scaled to a largest of 1, as weights.
                let top = diag[cols.clone()].iter().fold(0.0f64, |a, &v| a.max(v));
                let hs: Vec<f32> = diag[cols].iter().map(|&v| (v / top) as f32).collect();
                let xs: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
                quant_core::fit_slice(&xs, Some(&hs), spec).expect("fit")
            }
        }
    };
    let original = wm.clone();
    let mut order: Vec<usize> = (0..n).collect();
    if act_order {
        order.sort_by(|&a, &b| hm[[b, b]].total_cmp(&hm[[a, a]]).then(a.cmp(&b)));
    }
    // Work in the processing order.
    let wp = wm.select(ndarray::Axis(1), &order);
    let hp = hm.select(ndarray::Axis(0), &order).select(ndarray::Axis(1), &order);
    let mut wcur = wp;
    let mut hinv = inverse(&hp);
    let mut q = Array2::<f64>::zeros((rows, n));
    let mut fitted: Vec<Vec<Option<SliceParams<f32>>>> = vec![vec![None; n.div_ceil(gs)]; rows];
    for k in 0..n {
        let orig = order[k];
        for r in 0..rows {
            let slot = &mut fitted[r][orig / gs];
            if slot.is_none() {
                *slot = Some(if act_order || !matches!(spec.granularity(), Granularity::PerGroup { .. }) {
                    params_of(&original, r, orig, false)
                } else {
                    // The current weights in original column order.
                    let mut cur = Array2::<f64>::zeros((rows, n));
                    for (kk, &o) in order.iter().enumerate() {
                        cur.column_mut(o).assign(&wcur.column(kk));
                    }
                    params_of(&cur, r, orig, importance_fit)
                });
            }
        }
        let d = hinv[[k, k]];
        for r in 0..rows {
            let p = fitted[r][orig / gs].expect("fitted");
            let x = wcur[[r, k]];
            let v = grid(&p, spec.max_code(), x);
            q[[r, orig]] = v;
            let e = (x - v) / d;
            for j in k + 1..n {
                wcur[[r, j]] -= e * hinv[[k, j]];
            }
        }
        let col = hinv.column(k).to_owned();
        let row = hinv.row(k).to_owned();
        for i in 0..n {
            for j in 0..n {
                hinv[[i, j]] -= col[i] * row[j] / d;
            }
        }
    }
    q
}

fn rtn_objective(w: ArrayView2<'_, f32>, h: ArrayView2<'_, f64>, spec: &UniformSpec) -> f64 {
    let q = quant_core::quantize(&w, spec).expect("quantize").dequantize();
    let q = q.into_dimensionality::<ndarray::Ix2>().expect("2-D");
    layer_objective(w, q.view(), h).expect("objective")
}

#[test]
fn gptq_equals_the_plain_reference() {
    let cases = [
        (Granularity::PerGroup { axis: 1, size: 8 }, Scheme::AsymmetricGrid, false),
        (Granularity::PerGroup { axis: 1, size: 5 }, Scheme::SymmetricNarrow, false),
        (Granularity::PerChannel { axis: 0 }, Scheme::AsymmetricExactZero, false),
        (Granularity::PerTensor, Scheme::AsymmetricGrid, false),
        (Granularity::PerGroup { axis: 1, size: 8 }, Scheme::AsymmetricGrid, true),
        (Granularity::PerChannel { axis: 0 }, Scheme::SymmetricNarrow, true),
    ];
    let mut checked = 0;
    for seed in 0..6u64 {
        let (rows, n) = (7, 24);
        let x = inputs(60, n, seed);
        let mut h = x.t().dot(&x) * 2.0;
        if seed % 2 == 1 {
            // A dead input.
            h.row_mut(3).fill(0.0);
            h.column_mut(3).fill(0.0);
        }
        let w = weights(rows, n, seed);
        for &(g, scheme, mse) in &cases {
            for bits in [2u8, 3, 4] {
                let sp = if mse { mse_spec(bits, g, scheme) } else { spec(bits, g, scheme) };
                for (act_order, importance_fit) in [(false, false), (true, false), (false, true)] {
                    // Block of 8 columns: three lazy batches (groups of 5 give blocks of 5).
                    let p = GptqParams { damp: 0.01, block_size: 8, act_order, importance_fit };
                    let got = gptq(w.view(), h.view(), &sp, &p).expect("gptq");
                    let want = reference(w.view(), h.view(), &sp, 0.01, act_order, importance_fit);
                    let deq = got.quantized.dequantize();
                    for ((i, &a), &b) in deq.iter().enumerate().zip(want.iter()) {
                        // f32 dequantization against the f64 grid: ~1e-8 apart; one code apart is
                        // at least one step, above 1e-3 for these weights.
                        assert!(
                            (f64::from(a) - b).abs() <= 1e-6,
                            "seed {seed} {g:?} {scheme} mse {mse} {bits} bits act_order {act_order} importance {importance_fit}: element {i}: {a} vs {b}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 6 * 6 * 3 * 3);
}

#[test]
fn with_an_identity_hessian_gptq_is_round_to_nearest() {
    // No correlation between inputs: no error is spread, and the codes are the plain
    // quantizer's (same layout, same parameters).
    let w = weights(16, 64, 3);
    let h = Array2::<f64>::eye(64);
    let grans = [Granularity::PerGroup { axis: 1, size: 16 }, Granularity::PerChannel { axis: 0 }, Granularity::PerTensor];
    for sp in grans.iter().flat_map(|&g| [spec(3, g, Scheme::AsymmetricGrid), mse_spec(3, g, Scheme::SymmetricNarrow)]) {
        let g = sp.granularity();
        let got = gptq(w.view(), h.view(), &sp, &GptqParams { damp: 0.0, ..GptqParams::default() }).expect("gptq");
        let plain = quant_core::quantize(&w, &sp).expect("quantize");
        assert_eq!(got.quantized.int_repr(), plain.int_repr(), "{g:?}");
        assert_eq!(got.quantized.params().slices(), plain.params().slices());
    }
}

#[test]
fn gptq_beats_round_to_nearest_on_correlated_inputs() {
    // 200 random layers with H = 2 XᵀX of correlated inputs, groups of 16 along the input.
    let (mut better, mut total) = (0, 0);
    for seed in 0..200u64 {
        let (rows, n) = (12, 48);
        let x = inputs(96, n, 1000 + seed);
        let h = x.t().dot(&x) * 2.0;
        let w = weights(rows, n, 1000 + seed);
        let sp = spec(3, Granularity::PerGroup { axis: 1, size: 16 }, Scheme::AsymmetricGrid);
        let g = gptq(w.view(), h.view(), &sp, &GptqParams::default()).expect("gptq");
        if g.objective < rtn_objective(w.view(), h.view(), &sp) {
            better += 1;
        }
        total += 1;
    }
    eprintln!("GPTQ below round-to-nearest in {better} of {total}");
    // Measured: 200 of 200. The assertion leaves room for a rare tie, not for a regression.
    assert!(better >= 195, "GPTQ below round-to-nearest in {better} of {total}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let w = weights(4, 8, 1);
    let h = Array2::<f64>::eye(8);
    let sp = spec(4, Granularity::PerGroup { axis: 1, size: 4 }, Scheme::AsymmetricGrid);
    let p = GptqParams::default();
    assert!(matches!(gptq(w.view(), Array2::<f64>::eye(7).view(), &sp, &p), Err(QuantError::ShapeMismatch { .. })));
    let mut bad = w.clone();
    bad[[1, 2]] = f32::NAN;
    assert!(matches!(gptq(bad.view(), h.view(), &sp, &p), Err(QuantError::NonFinite { index: 10 })));
    let mut hn = h.clone();
    hn[[0, 1]] = f64::INFINITY;
    assert!(matches!(gptq(w.view(), hn.view(), &sp, &p), Err(QuantError::NonFinite { .. })));
    assert!(matches!(gptq(Array2::<f32>::zeros((0, 8)).view(), h.view(), &sp, &p), Err(QuantError::Empty)));
    for other in [
        spec(4, Granularity::PerChannel { axis: 1 }, Scheme::AsymmetricGrid),
        spec(4, Granularity::PerGroup { axis: 0, size: 2 }, Scheme::AsymmetricGrid),
        UniformSpec::builder().bits(4).per_group(1, 4).rounding(quant_core::Rounding::HalfAwayFromZero).check().expect("spec"),
    ] {
        assert!(matches!(gptq(w.view(), h.view(), &other, &p), Err(QuantError::UnsupportedSetting { .. })), "{other:?}");
    }
    // Not positive definite, even with dampening.
    let neg = Array2::<f64>::eye(8) * -1.0;
    assert!(matches!(gptq(w.view(), neg.view(), &sp, &p), Err(QuantError::NotPositiveDefinite { .. })));
    for (damp, block) in [(-0.1, 8), (f64::NAN, 8), (0.01, 0)] {
        let q = GptqParams { damp, block_size: block, act_order: false, importance_fit: false };
        assert!(matches!(gptq(w.view(), h.view(), &sp, &q), Err(QuantError::InvalidSetting { .. })));
    }
}

#[test]
fn a_prepared_hessian_serves_every_candidate() {
    let x = inputs(80, 32, 9);
    let mut h = x.t().dot(&x) * 2.0;
    h.row_mut(5).fill(0.0);
    h.column_mut(5).fill(0.0);
    let w = weights(10, 32, 9);
    for act_order in [false, true] {
        let p = GptqParams { act_order, ..GptqParams::default() };
        let prepared = quant_ptq::GptqHessian::new(h.view(), &p).expect("prepared");
        for (bits, g) in [
            (2u8, Granularity::PerGroup { axis: 1, size: 8 }),
            (4, Granularity::PerGroup { axis: 1, size: 16 }),
            (3, Granularity::PerChannel { axis: 0 }),
        ] {
            let sp = spec(bits, g, Scheme::AsymmetricGrid);
            let once = gptq(w.view(), h.view(), &sp, &p).expect("gptq");
            assert_eq!(prepared.quantize(w.view(), &sp).expect("quantize"), once.quantized, "{bits} {g:?} {act_order}");
        }
        assert!(matches!(
            prepared.quantize(weights(10, 31, 9).view(), &spec(4, Granularity::PerTensor, Scheme::AsymmetricGrid)),
            Err(QuantError::ShapeMismatch { .. })
        ));
    }
}

#[test]
fn gptq_with_two_level_tables_beats_round_to_nearest() {
    // Super-scales fixed on the original weights, group codes snapped on the fly: the stored
    // layout is the plain quantizer's tables, and the objective is below round-to-nearest's
    // with the same tables spec (cover or least-squares fit) on correlated inputs.
    let (mut better, mut total) = (0, 0);
    for seed in 0..60u64 {
        let (rows, n) = (8, 64);
        let x = inputs(128, n, 2000 + seed);
        let h = x.t().dot(&x) * 2.0;
        let w = weights(rows, n, 2000 + seed);
        for fit in [TableFit::Cover, TableFit::LeastSquares { iterations: 3 }] {
            for scheme in [Scheme::AsymmetricGrid, Scheme::SymmetricNarrow] {
                let sp = UniformSpec::builder()
                    .bits(3)
                    .scheme(scheme)
                    .per_group(1, 16)
                    .param_dtype(ParamDtype::Quantized { bits: 6, super_group: 4 })
                    .table_fit(fit)
                    .check()
                    .expect("spec");
                for act_order in [false, true] {
                    let g = gptq(w.view(), h.view(), &sp, &GptqParams { act_order, ..GptqParams::default() }).expect("gptq");
                    let params = g.quantized.params();
                    let tables = params.tables().expect("two-level tables");
                    assert_eq!(tables.len(), rows * 4);
                    // Requantizing GPTQ's values with its own parameters changes nothing.
                    let deq = g.quantized.dequantize();
                    assert_eq!(params.quantize(&deq).expect("requantize"), g.quantized);
                    if g.objective < rtn_objective(w.view(), h.view(), &sp) {
                        better += 1;
                    }
                    total += 1;
                }
            }
        }
    }
    eprintln!("GPTQ with tables below round-to-nearest in {better} of {total}");
    // Measured: 480 of 480.
    assert!(better * 100 >= total * 95, "GPTQ with tables below round-to-nearest in {better} of {total}");
}

#[test]
fn the_importance_fit_with_an_identity_hessian_is_the_weighted_quantizer() {
    // No correlation: no error is spread, and each group's grid is the weighted fit with equal
    // weights on the original weights.
    let w = weights(16, 64, 4);
    let h = Array2::<f64>::eye(64) * 3.0;
    for sp in [
        spec(3, Granularity::PerGroup { axis: 1, size: 16 }, Scheme::AsymmetricGrid),
        mse_spec(2, Granularity::PerGroup { axis: 1, size: 8 }, Scheme::SymmetricNarrow),
    ] {
        let p = GptqParams { damp: 0.0, importance_fit: true, ..GptqParams::default() };
        let got = gptq(w.view(), h.view(), &sp, &p).expect("gptq");
        let want = quant_core::quantize_weighted(&w, &sp, &[1.0; 64]).expect("weighted");
        assert_eq!(got.quantized, want, "{sp:?}");
    }
}

#[test]
fn the_importance_fit_keeps_gptq_below_round_to_nearest() {
    let (mut below_rtn, mut below_plain, mut total) = (0, 0, 0);
    for seed in 0..100u64 {
        let (rows, n) = (12, 48);
        let x = inputs(96, n, 3000 + seed);
        // A few inputs far more active than the others, as activations have.
        let x = x * &ndarray::Array1::from_shape_fn(n, |j| if j % 7 == 0 { 5.0 } else { 1.0 });
        let h = x.t().dot(&x) * 2.0;
        let w = weights(rows, n, 3000 + seed);
        let sp = spec(3, Granularity::PerGroup { axis: 1, size: 16 }, Scheme::AsymmetricGrid);
        let plain = gptq(w.view(), h.view(), &sp, &GptqParams::default()).expect("gptq");
        let weighted = gptq(w.view(), h.view(), &sp, &GptqParams { importance_fit: true, ..GptqParams::default() }).expect("gptq");
        below_rtn += usize::from(weighted.objective < rtn_objective(w.view(), h.view(), &sp));
        below_plain += usize::from(weighted.objective < plain.objective);
        total += 1;
    }
    eprintln!("GPTQ with the importance fit: below round-to-nearest in {below_rtn} of {total}, below plain GPTQ in {below_plain}");
    // Measured: 100 of 100 for both.
    assert!(below_rtn >= 95, "below round-to-nearest in {below_rtn} of {total}");
    assert!(below_plain >= 90, "below plain GPTQ in {below_plain} of {total}");
}

#[test]
fn too_few_tokens_fall_back_on_dampening() {
    // Four calibration tokens for 32 inputs: H = 2 XᵀX has rank 4 and no zero diagonal, so
    // only the dampening makes it positive definite.
    let x = inputs(4, 32, 3);
    let h = x.t().dot(&x) * 2.0;
    let w = weights(6, 32, 3);
    let sp = spec(4, Granularity::PerGroup { axis: 1, size: 8 }, Scheme::AsymmetricGrid);
    let g = gptq(w.view(), h.view(), &sp, &GptqParams::default()).expect("dampened: positive definite");
    let q = g.quantized.dequantize();
    assert!(q.iter().all(|v| v.is_finite()));
    assert!(g.objective.is_finite() && g.objective >= 0.0);
    // Without dampening the factorisation of the singular H is refused, not returned broken.
    let undamped = GptqParams { damp: 0.0, ..GptqParams::default() };
    match gptq(w.view(), h.view(), &sp, &undamped) {
        Err(QuantError::NotPositiveDefinite { .. }) => {}
        other => panic!("undamped singular H: {:?}", other.map(|g| g.objective)),
    }
}
