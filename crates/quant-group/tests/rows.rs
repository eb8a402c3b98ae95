//! Output-unit groups against per-tensor and per-channel quantization, and their error bound.
//! The matrices are drawn `fan_in × fan_out` and passed transposed (`out × in`).

use ndarray::Array2;
use proptest::prelude::*;
use quant_core::{KMeansSpec, Scheme, TernarySpec, UniformSpec, quantize};
use quant_group::{GroupError, Method, quantize_output_groups};

fn matrix() -> impl Strategy<Value = Array2<f32>> {
    (1usize..6, prop::sample::select(vec![1usize, 2, 4, 6, 12])).prop_flat_map(|(fi, fo)| {
        prop::collection::vec(-2.0f32..2.0, fi * fo).prop_map(move |v| Array2::from_shape_vec((fi, fo), v).expect("shape"))
    })
}

proptest! {
    #[test]
    fn one_group_is_per_tensor_and_one_per_unit_is_per_channel(w in matrix(), bits in 2u8..=8) {
        let spec = UniformSpec::builder().bits(bits).check().expect("valid");
        let one = quantize_output_groups(w.t(), 1, &Method::Uniform(spec)).expect("valid");
        let tensor = quantize(&w, &spec).expect("valid");
        prop_assert_eq!(one.weights.t().to_owned().into_dyn(), tensor.dequantize());
        prop_assert_eq!(one.bytes, tensor.storage_bytes());
        let fo = w.ncols();
        let per_unit = quantize_output_groups(w.t(), fo, &Method::Uniform(spec)).expect("valid");
        let channel = quantize(&w, &UniformSpec::builder().bits(bits).per_channel(1).check().expect("valid")).expect("valid");
        prop_assert_eq!(per_unit.weights.t().to_owned().into_dyn(), channel.dequantize());
        prop_assert_eq!(per_unit.bytes, channel.storage_bytes());
    }

    #[test]
    fn each_group_error_is_within_its_own_half_step(w in matrix(), bits in 2u8..=8, g in prop::sample::select(vec![1usize, 2, 3, 6])) {
        let fo = w.ncols();
        prop_assume!(fo % g == 0);
        let spec = UniformSpec::builder().bits(bits).scheme(Scheme::AsymmetricGrid).check().expect("valid");
        let q = quantize_output_groups(w.t(), g, &Method::Uniform(spec)).expect("valid");
        let width = fo / g;
        for k in 0..g {
            let cols = k * width..(k + 1) * width;
            let block = w.slice(ndarray::s![.., cols.clone()]);
            let (lo, hi) = block.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let step = (hi - lo) / ((1u32 << bits) - 1) as f32;
            for (a, b) in block.iter().zip(q.weights.t().slice(ndarray::s![.., cols]).iter()) {
                // Half a step plus f32 rounding of the affine map.
                prop_assert!((a - b).abs() <= step / 2.0 + 1e-5 * (1.0 + a.abs()), "group {k}: {a} vs {b}, step {step}");
            }
        }
    }
}

#[test]
fn codebooks_and_ternary_per_group() -> Result<(), GroupError> {
    let w = Array2::from_shape_fn((8, 6), |(i, j)| ((i * 5 + j * 3) % 7) as f32 - 3.0 + j as f32 * 10.0);
    // Each output unit has a very different scale: per-unit tables beat one table.
    let km = Method::KMeans(KMeansSpec::builder().bits(2).check()?);
    let err = |q: &quant_group::GroupQuantized<f32>| (&q.weights.t() - &w).iter().map(|e| e * e).sum::<f32>();
    let one = quantize_output_groups(w.t(), 1, &km)?;
    let six = quantize_output_groups(w.t(), 6, &km)?;
    assert!(err(&six) < err(&one));
    assert!(six.bytes > one.bytes);
    let t = quantize_output_groups(w.t(), 3, &Method::Ternary(TernarySpec::builder().check()?))?;
    assert_eq!(Method::Ternary(TernarySpec::builder().check()?).bits(), 2);
    // Ternary: every weight is 0 or ± its group's alpha.
    for k in 0..3 {
        let mut vals: Vec<f32> =
            t.weights.t().slice(ndarray::s![.., 2 * k..2 * k + 2]).iter().map(|v| v.abs()).filter(|&v| v > 0.0).collect();
        vals.dedup();
        assert!(vals.len() <= 1, "group {k}: {vals:?}");
    }
    assert_eq!(km.bits(), 2);
    Ok(())
}

#[test]
fn group_counts_that_do_not_divide_are_refused() {
    let w = Array2::<f32>::zeros((4, 6));
    let spec = Method::Uniform(UniformSpec::default());
    assert_eq!(quantize_output_groups(w.t(), 4, &spec).err(), Some(GroupError::InvalidGroups { groups: 4, units: 6 }));
    assert_eq!(quantize_output_groups(w.t(), 0, &spec).err(), Some(GroupError::InvalidGroups { groups: 0, units: 6 }));
    let mut bad = w.clone();
    bad[[1, 1]] = f32::NAN;
    assert!(matches!(quantize_output_groups(bad.t(), 2, &spec), Err(GroupError::Core(_))));
}

#[test]
fn codebook_groups_match_the_quantizer_and_take_centroid_steps() -> Result<(), GroupError> {
    use quant_group::OutputGroupCodebook;
    let w = Array2::from_shape_fn((6, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f64 / 11.0 - 0.5 + j as f64);
    let spec = KMeansSpec::builder().bits(2).check()?;
    let mut book = OutputGroupCodebook::new(w.t(), 2, &spec)?;
    let q = quantize_output_groups(w.t(), 2, &Method::KMeans(spec))?;
    assert_eq!(book.weights(), q.weights);
    assert_eq!(book.bytes(), q.bytes);
    // A gradient of 1 on every weight: each centroid's gradient is its member count, and the
    // counts of a group add up to the group's size.
    let ones = Array2::<f64>::ones((4, 6));
    let cg = book.centroid_gradients(ones.view())?;
    assert_eq!(cg.len(), 2 * 4);
    assert_eq!(cg[..4].iter().sum::<f64>(), 12.0);
    assert_eq!(cg[4..].iter().sum::<f64>(), 12.0);
    // Moving every centroid by −0.25 moves every weight by −0.25, up to the f32 rounding of
    // the tables (values below 4: 2.4e-7).
    let before = book.weights();
    book.apply_step(&[0.25; 8])?;
    assert!((&before - &book.weights()).iter().all(|d| (d - 0.25).abs() < 1e-6));
    assert!(book.centroid_gradients(Array2::<f64>::ones((6, 4)).view()).is_err());
    Ok(())
}
