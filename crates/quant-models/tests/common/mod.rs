//! Test-only helpers: a dense symmetric eigen solver (cyclic Jacobi, independent of the
//! crate's tridiagonal QL), dense Hessians assembled from HVPs, and small seeded data.

#![allow(dead_code)]

use ndarray::{Array1, Array2};
use quant_hessian::{Autodiff, Batch, LinearOperator};

/// Eigenvalues (ascending) and eigenvectors (columns) of a symmetric matrix by cyclic Jacobi
/// rotations, to full f64 accuracy.
pub(crate) fn jacobi_eigen(a: &Array2<f64>) -> (Vec<f64>, Array2<f64>) {
    let n = a.nrows();
    let mut a = a.clone();
    let mut v = Array2::<f64>::eye(n);
    for _sweep in 0..100 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[[i, j]].powi(2)).sum();
        if off < 1e-30 * a.iter().map(|x| x * x).sum::<f64>().max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[[p, q]].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[[q, q]] - a[[p, p]]) / (2.0 * a[[p, q]]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[[k, p]], a[[k, q]]);
                    a[[k, p]] = c * akp - s * akq;
                    a[[k, q]] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[[p, k]], a[[q, k]]);
                    a[[p, k]] = c * apk - s * aqk;
                    a[[q, k]] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[[k, p]], v[[k, q]]);
                    v[[k, p]] = c * vkp - s * vkq;
                    v[[k, q]] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[[i, i]].total_cmp(&a[[j, j]]));
    (order.iter().map(|&i| a[[i, i]]).collect(), v.select(ndarray::Axis(1), &order))
}

/// The dense matrix of an operator, column by column.
pub(crate) fn dense<O: LinearOperator<f64>>(op: &O) -> Array2<f64> {
    let n = op.dim();
    let mut m = Array2::zeros((n, n));
    for j in 0..n {
        let mut e = Array1::zeros(n);
        e[j] = 1.0;
        m.column_mut(j).assign(&op.apply(e.view()).expect("operator applies"));
    }
    m
}

/// The dense Hessian by central differences of the gradient (step 1e-5), independent of
/// the HVP code.
pub(crate) fn fd_hessian<M: Autodiff<f64>>(model: &M, w: &Array1<f64>, batch: Batch<'_>) -> Array2<f64> {
    let n = model.dim();
    let mut h = Array2::zeros((n, n));
    let grad = |w: &Array1<f64>| {
        let mut g = Array1::zeros(n);
        model.loss_grad_into(w.view(), batch, g.view_mut()).expect("gradient");
        g
    };
    for j in 0..n {
        let step = 1e-5;
        let (mut wp, mut wm) = (w.clone(), w.clone());
        wp[j] += step;
        wm[j] -= step;
        h.column_mut(j).assign(&((grad(&wp) - grad(&wm)) / (2.0 * step)));
    }
    h
}

/// A deterministic pseudo-random number in [-1, 1) from an index.
pub(crate) fn hash_unit(i: u64) -> f64 {
    let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

/// A small classification data set: `n × d` inputs and labels in `0..classes` that depend on
/// the inputs (so the model has something to learn).
pub(crate) fn toy_data(n: usize, d: usize, classes: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
    let x = Array2::from_shape_fn((n, d), |(i, j)| hash_unit(seed * 1_000_003 + (i * d + j) as u64));
    let labels = (0..n).map(|i| ((x[[i, 0]] + 1.0) * classes as f64 / 2.0).floor().min(classes as f64 - 1.0) as usize).collect();
    (x, labels)
}

/// A symmetric matrix with the given eigenvalues and a seeded orthogonal eigenbasis.
pub(crate) fn with_spectrum(eigs: &[f64], seed: u64) -> Array2<f64> {
    let n = eigs.len();
    // Orthonormalise a random matrix (Gram–Schmidt twice).
    let mut q = Array2::from_shape_fn((n, n), |(i, j)| hash_unit(seed * 7919 + (i * n + j) as u64));
    for j in 0..n {
        for _ in 0..2 {
            for k in 0..j {
                let c = q.column(k).dot(&q.column(j));
                let qk = q.column(k).to_owned();
                q.column_mut(j).scaled_add(-c, &qk);
            }
        }
        let nrm = q.column(j).dot(&q.column(j)).sqrt();
        q.column_mut(j).mapv_inplace(|x| x / nrm);
    }
    let d = Array2::from_diag(&Array1::from_vec(eigs.to_vec()));
    let a = q.dot(&d).dot(&q.t());
    // Exact symmetry.
    Array2::from_shape_fn((n, n), |(i, j)| if i <= j { a[[i, j]] } else { a[[j, i]] })
}

/// The four reference MLPs of the model tests: softmax regression, ReLU, tanh with L2, GELU,
/// on 40 seeded samples of 5 features and 3 classes.
pub(crate) fn mlps() -> Vec<(&'static str, quant_models::Mlp<f64>)> {
    use quant_models::{Activation, Mlp};
    let (x, y) = toy_data(40, 5, 3, 1);
    vec![
        ("softmax", Mlp::softmax_regression(&x, &y, 3).expect("valid")),
        ("relu", Mlp::new(&x, &y, &[6, 4], 3, Activation::Relu).expect("valid")),
        ("tanh", Mlp::new(&x, &y, &[6], 3, Activation::Tanh).expect("valid").with_l2(1e-2).expect("valid")),
        ("gelu", Mlp::new(&x, &y, &[7, 5], 3, Activation::Gelu).expect("valid")),
    ]
}
