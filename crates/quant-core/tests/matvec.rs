//! The packed matrix-vector product against dequantize-then-multiply.

use ndarray::{Array1, Array2};
use proptest::prelude::*;
use quant_core::{Granularity, ParamDtype, QuantError, Scheme, UniformSpec, matvec, quantize};

fn granularity() -> impl Strategy<Value = Granularity> {
    prop_oneof![
        Just(Granularity::PerTensor),
        Just(Granularity::PerChannel { axis: 0 }),
        Just(Granularity::PerChannel { axis: 1 }),
        (1usize..9).prop_map(|size| Granularity::PerGroup { axis: 1, size }),
        (1usize..9).prop_map(|size| Granularity::PerGroup { axis: 0, size }),
    ]
}

proptest! {
    #[test]
    fn packed_product_equals_dequantize_then_multiply(
        (rows, cols, w) in (1usize..12, 1usize..20).prop_flat_map(|(r, c)| (Just(r), Just(c), prop::collection::vec(-1.0f64..1.0, r * c))),
        x_seed in 0u64..1000,
        bits in 2u8..=8,
        scheme in prop::sample::select(vec![Scheme::AsymmetricGrid, Scheme::AsymmetricExactZero, Scheme::SymmetricNarrow, Scheme::SymmetricFull]),
        g in granularity(),
        dtype in 0u8..3,
    ) {
        let w = Array2::from_shape_vec((rows, cols), w).expect("shape");
        let x = Array1::from_shape_fn(cols, |j| ((j as u64 * 2654435761 + x_seed) % 1000) as f64 / 500.0 - 1.0);
        let dtype = match dtype {
            0 => ParamDtype::Native,
            1 => ParamDtype::F16,
            // Two-level tables have no exact-zero form; the builder refuses that pair.
            _ if scheme == Scheme::AsymmetricExactZero => ParamDtype::F16,
            _ => ParamDtype::Quantized { bits: 6, super_group: 4 },
        };
        let spec = UniformSpec::builder().bits(bits).scheme(scheme).granularity(g).param_dtype(dtype).check().expect("valid");
        let q = quantize(&w, &spec).expect("valid");
        let dense = q.dequantize().into_dimensionality::<ndarray::Ix2>().expect("2-D").dot(&x);
        let mut y = Array1::zeros(rows);
        matvec(&q, x.view(), y.view_mut()).expect("shapes fit");
        for (a, b) in y.iter().zip(dense.iter()) {
            // Sums in another order: f64 rounding over at most 20 terms of size ≤ 3.
            prop_assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()) * cols as f64, "{a} vs {b}");
        }
    }
}

#[test]
fn mismatched_operands_are_refused() -> Result<(), Box<dyn std::error::Error>> {
    let w = Array2::<f32>::from_elem((3, 4), 0.5);
    let q = quantize(&w, &UniformSpec::default())?;
    let mut y = Array1::zeros(3);
    assert!(matches!(matvec(&q, Array1::zeros(5).view(), y.view_mut()), Err(QuantError::MatvecShape { .. })));
    assert!(matches!(matvec(&q, Array1::zeros(4).view(), Array1::zeros(2).view_mut()), Err(QuantError::MatvecShape { .. })));
    let q3 = quantize(&ndarray::Array3::<f32>::zeros((2, 2, 2)), &UniformSpec::default())?;
    assert!(matches!(matvec(&q3, Array1::zeros(2).view(), y.view_mut()), Err(QuantError::MatvecShape { .. })));
    matvec(&q, Array1::from_elem(4, 1.0f32).view(), y.view_mut())?;
    assert!(y.iter().all(|&v| (v - 2.0).abs() < 1e-6));
    Ok(())
}
