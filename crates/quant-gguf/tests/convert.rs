//! GGML blocks to quant-core tensors and back, without changing a value.

use quant_core::{Granularity, ParamDtype, Scheme, UniformSpec};
use quant_gguf::convert::{convertible, from_quantized, ggml_type_of, to_quantized};
use quant_gguf::{GgmlType, codec};

type R = Result<(), Box<dyn std::error::Error>>;

/// Weight-like data: a smooth pseudo-random spread with an outlier every 97 values.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f64 / (1u64 << 24) as f64) - 0.5;
            let v = 0.04 * u + 0.01 * (u * 7.0).sin();
            (if i % 97 == 5 { v * 8.0 } else { v }) as f32
        })
        .collect()
}

#[test]
fn every_convertible_type_keeps_its_values_and_its_bytes() -> R {
    let shape = [4usize, 512];
    let types: Vec<GgmlType> = codec::SUPPORTED.iter().copied().filter(|&t| convertible(t)).collect();
    assert_eq!(types.len(), 10, "every quantized type with a codec");
    for ty in types {
        for seed in 0..3 {
            let x = data(shape[0] * shape[1], seed);
            let bytes = codec::quantize(ty, &x)?;
            let want = codec::dequantize(ty, &bytes, x.len())?;
            let q = to_quantized(ty, &bytes, &shape)?;
            assert_eq!(q.shape(), &shape);
            let got: Vec<f32> = q.dequantize().iter().copied().collect();
            assert!(got == want, "{ty}: values differ");
            if matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q3_K | GgmlType::Q6_K) {
                // Read with f32 parameters: exact, but not a GGML layout.
                assert_eq!(q.params().spec().param_dtype(), ParamDtype::Native);
                assert!(from_quantized(&q).is_err(), "{ty}");
                continue;
            }
            assert_eq!(ggml_type_of(&q), Some(ty), "{ty}");
            let (back_ty, back) = from_quantized(&q)?;
            assert_eq!(back_ty, ty);
            assert!(back == bytes, "{ty}: bytes differ (seed {seed})");
        }
    }
    Ok(())
}

#[test]
fn quant_core_tensors_of_a_ggml_layout_become_its_blocks() -> R {
    let x = ndarray::Array2::from_shape_vec((3, 256), data(768, 9))?;
    for (bits, scheme, size, params, ty) in [
        (4, Scheme::AsymmetricGrid, 32, ParamDtype::Quantized { bits: 6, super_group: 8 }, GgmlType::Q4_K),
        (5, Scheme::AsymmetricGrid, 32, ParamDtype::Quantized { bits: 6, super_group: 8 }, GgmlType::Q5_K),
        (2, Scheme::AsymmetricGrid, 16, ParamDtype::Quantized { bits: 4, super_group: 16 }, GgmlType::Q2_K),
        (4, Scheme::AsymmetricGrid, 32, ParamDtype::F16, GgmlType::Q4_1),
        (8, Scheme::SymmetricNarrow, 32, ParamDtype::F16, GgmlType::Q8_0),
        (4, Scheme::SymmetricFull, 32, ParamDtype::F16, GgmlType::Q4_0),
        (5, Scheme::SymmetricNarrow, 32, ParamDtype::F16, GgmlType::Q5_0),
    ] {
        let spec = UniformSpec::builder()
            .bits(bits)
            .scheme(scheme)
            .granularity(Granularity::PerGroup { axis: 1, size })
            .param_dtype(params)
            .check()?;
        let q = quant_core::quantize(&x, &spec)?;
        let (got_ty, bytes) = from_quantized(&q)?;
        assert_eq!(got_ty, ty);
        let ggml = codec::dequantize(ty, &bytes, x.len())?;
        let ours: Vec<f32> = q.dequantize().iter().copied().collect();
        assert!(ggml == ours, "{ty}: values differ");
    }
    Ok(())
}

#[test]
fn what_has_no_exact_form_is_refused() -> R {
    // The float types are values, not grids.
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
        let x = data(256, 1);
        let bytes = codec::quantize(ty, &x)?;
        assert!(to_quantized(ty, &bytes, &[256]).is_err(), "{ty}");
    }
    // Rows that are not whole blocks, and bytes of the wrong length.
    let bytes = codec::quantize(GgmlType::Q8_0, &data(64, 2))?;
    assert!(to_quantized(GgmlType::Q8_0, &bytes, &[4, 16]).is_err());
    assert!(to_quantized(GgmlType::Q8_0, &bytes[..30], &[64]).is_err());
    // A spec of no GGML type.
    let x = ndarray::Array2::from_shape_vec((2, 64), data(128, 3))?;
    let spec = UniformSpec::builder().bits(4).granularity(Granularity::PerChannel { axis: 0 }).check()?;
    let q = quant_core::quantize(&x, &spec)?;
    assert_eq!(ggml_type_of(&q), None);
    assert!(from_quantized(&q).is_err());
    Ok(())
}

#[test]
fn k_blocks_with_a_zero_scale_convert_exactly_to_f32_parameters() -> R {
    // An all-zero sub-block: its scale code is 0, which quant-core's tables cannot hold.
    let mut x = data(512, 4);
    x[32..64].fill(0.0);
    let bytes = codec::quantize(GgmlType::Q4_K, &x)?;
    let q = to_quantized(GgmlType::Q4_K, &bytes, &[2, 256])?;
    let want = codec::dequantize(GgmlType::Q4_K, &bytes, x.len())?;
    let got: Vec<f32> = q.dequantize().iter().copied().collect();
    assert!(got == want, "values differ");
    if q.params().tables().is_none() {
        assert_eq!(q.params().spec().param_dtype(), ParamDtype::Native);
        assert!(from_quantized(&q).is_err());
    }
    Ok(())
}

#[test]
fn all_zero_blocks_come_back_as_the_same_bytes() -> R {
    // ggml writes a zero scale for an all-zero block; quant-core holds the smallest step.
    for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q5_1] {
        let mut x = data(128, 5);
        x[32..64].fill(0.0);
        let bytes = codec::quantize(ty, &x)?;
        let q = to_quantized(ty, &bytes, &[128])?;
        assert!(from_quantized(&q)?.1 == bytes, "{ty}");
    }
    // A negative q8_0 step (no ggml encoder writes one) flips the codes' signs, exactly; with
    // a code of −128 under it there is no 8-bit form, and that is an error, not a misreading.
    let mut bytes = codec::quantize(GgmlType::Q8_0, &data(32, 6))?;
    bytes[1] |= 0x80;
    let q = to_quantized(GgmlType::Q8_0, &bytes, &[32])?;
    assert!(q.dequantize().iter().copied().collect::<Vec<f32>>() == codec::dequantize(GgmlType::Q8_0, &bytes, 32)?);
    bytes[2] = 0x80;
    assert!(to_quantized(GgmlType::Q8_0, &bytes, &[32]).is_err());
    // A negative step in an affine type is refused.
    let mut bytes = codec::quantize(GgmlType::Q4_1, &data(32, 6))?;
    bytes[1] |= 0x80;
    assert!(to_quantized(GgmlType::Q4_1, &bytes, &[32]).is_err());
    Ok(())
}

#[test]
fn signed_k_scales_take_one_more_level_and_keep_every_value() -> R {
    // q6_K and q3_K put each sub-block's extreme on the extra negative code under a scale of
    // either sign: the symmetric 7- and 4-bit grids hold both signs' products exactly.
    for (ty, bits) in [(GgmlType::Q6_K, 7), (GgmlType::Q3_K, 4)] {
        let mut x = data(1024, 8);
        // Sub-blocks whose extreme is positive, and some whose extreme is negative.
        x[3] = 0.5;
        x[20] = -0.5;
        let bytes = codec::quantize(ty, &x)?;
        let q = to_quantized(ty, &bytes, &[4, 256])?;
        assert_eq!(q.params().spec().bits(), bits);
        assert_eq!(q.params().spec().scheme(), Scheme::SymmetricFull);
        let got: Vec<f32> = q.dequantize().iter().copied().collect();
        assert!(got == codec::dequantize(ty, &bytes, x.len())?, "{ty}: values differ");
    }
    Ok(())
}
