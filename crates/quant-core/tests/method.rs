//! The method vocabulary: one dispatch equal to the quantizers it names, names that parse
//! back to what they print, and settings a method does not have refused by type.

use ndarray::{Array2, Array3};
use quant_core::{
    Granularity, GranularityRule, KMeansSpec, Method, MethodKind, MethodParams, ParamDtype, QuantError, Quantized, RangeEstimator, Scheme,
    TableDtype, TableFit, TernarySpec, UniformSpec, binarize, kmeans_quantize, quantize, ternarize,
};

fn weights() -> Array2<f32> {
    Array2::from_shape_fn((12, 40), |(i, j)| (((i * 53 + j * 29) % 41) as f32 / 41.0 - 0.45) * (1.0 + (i % 3) as f32))
}

#[test]
fn method_quantize_equals_each_quantizer() -> Result<(), QuantError> {
    let w = weights();
    let g = Granularity::PerGroup { axis: 1, size: 16 };
    let uniform = UniformSpec::builder().bits(3).scheme(Scheme::SymmetricNarrow).granularity(g).check()?;
    let Quantized::Uniform(q) = Method::Uniform(uniform).quantize(&w)? else { panic!("uniform gives uniform codes") };
    assert_eq!(q, quantize(&w, &uniform)?);

    let km = KMeansSpec::builder().bits(2).per_channel(0).table(TableDtype::F16).check()?;
    let Quantized::Table(t) = Method::KMeans(km).quantize(&w)? else { panic!("k-means gives a table tensor") };
    assert_eq!(t, kmeans_quantize(&w, &km)?.0);

    let tw = TernarySpec::builder().per_channel(0).clip(0.5).check()?;
    assert_eq!(Method::Ternary(tw).quantize(&w)?.as_table(), Some(&ternarize(&w, &tw)?));
    assert_eq!(Method::Binary(tw).quantize(&w)?.as_table(), Some(&binarize(&w, &tw)?));
    Ok(())
}

#[test]
fn quantized_reports_what_its_variant_reports() -> Result<(), QuantError> {
    let w = weights();
    for method in [
        Method::Uniform(UniformSpec::builder().bits(4).per_group(1, 8).check()?),
        Method::KMeans(KMeansSpec::builder().bits(3).check()?),
        Method::Ternary(TernarySpec::default()),
        Method::Binary(TernarySpec::default()),
    ] {
        let q = method.quantize(&w)?;
        assert_eq!(q.bits(), method.bits(), "{method:?}");
        assert_eq!(q.shape(), &[12, 40]);
        assert_eq!(q.len(), 480);
        let (bytes, back) = match &q {
            Quantized::Uniform(u) => (u.storage_bytes(), u.dequantize()),
            Quantized::Table(t) => (t.storage_bytes(), t.dequantize()),
        };
        assert_eq!(q.storage_bytes(), bytes);
        assert_eq!(q.bits_per_weight(), 8.0 * bytes as f64 / 480.0);
        assert_eq!(q.dequantize(), back);
        let mut out = Array2::<f32>::zeros((12, 40));
        q.dequantize_into(out.view_mut())?;
        assert_eq!(out.into_dyn(), back);
        let mut wrong = Array2::<f32>::zeros((40, 12));
        assert!(matches!(q.dequantize_into(wrong.view_mut()), Err(QuantError::ShapeMismatch { .. })));
    }
    Ok(())
}

#[test]
fn with_granularity_keeps_every_other_setting() -> Result<(), QuantError> {
    let g = Granularity::PerChannel { axis: 0 };
    let km = KMeansSpec::builder().k(5).exact().table(TableDtype::F16).check()?;
    let Method::KMeans(k2) = Method::KMeans(km).with_granularity(g)? else { panic!("kind kept") };
    assert_eq!((k2.k(), k2.algorithm(), k2.table(), k2.granularity()), (5, km.algorithm(), TableDtype::F16, g));
    let tw = TernarySpec::builder().threshold(0.5).clip(2.5).check()?;
    let Method::Binary(t2) = Method::Binary(tw).with_granularity(g)? else { panic!("kind kept") };
    assert_eq!((t2.threshold(), t2.clip(), t2.granularity()), (0.5, Some(2.5), g));
    let bad = Granularity::PerGroup { axis: 0, size: 0 };
    assert!(matches!(Method::Ternary(tw).with_granularity(bad), Err(QuantError::InvalidGroupSize { size: 0 })));
    Ok(())
}

#[test]
fn method_params_validate_per_method() -> Result<(), QuantError> {
    let p = |kind, param_dtype, table_fit| MethodParams { kind, bits: 4, param_dtype, table_fit, ..MethodParams::default() };
    let lsq = TableFit::LeastSquares { iterations: 3 };
    let q6 = ParamDtype::Quantized { bits: 6, super_group: 8 };
    assert!(matches!(p(MethodKind::Uniform, q6, lsq).check()?, Method::Uniform(_)));
    for (kind, dtype, fit) in [
        (MethodKind::KMeans, ParamDtype::Bf16, TableFit::Cover),
        (MethodKind::KMeans, q6, TableFit::Cover),
        (MethodKind::Ternary, ParamDtype::F16, TableFit::Cover),
        (MethodKind::Binary, ParamDtype::Native, lsq),
    ] {
        assert!(
            matches!(p(kind, dtype, fit).check(), Err(QuantError::UnsupportedSetting { method, .. }) if method == kind),
            "{kind} {dtype}"
        );
    }
    // The spec builders' own checks still apply.
    assert!(matches!(MethodParams { bits: 9, ..MethodParams::default() }.check(), Err(QuantError::InvalidBits { .. })));
    assert!(matches!(p(MethodKind::Uniform, ParamDtype::Native, lsq).check(), Err(QuantError::InvalidTables { .. })));
    // params() gives back what check() was given.
    for kind in MethodKind::ALL {
        let dtype = if kind == MethodKind::KMeans { ParamDtype::F16 } else { ParamDtype::Native };
        let given = MethodParams {
            kind,
            bits: if kind == MethodKind::Ternary {
                2
            } else if kind == MethodKind::Binary {
                1
            } else {
                3
            },
            granularity: Granularity::PerGroup { axis: 1, size: 8 },
            param_dtype: dtype,
            ..MethodParams::default()
        };
        assert_eq!(given.check()?.params(), given, "{kind}");
    }
    Ok(())
}

#[test]
fn names_print_as_they_parse() -> Result<(), QuantError> {
    fn round_trip<T: std::str::FromStr<Err = QuantError> + std::fmt::Display + PartialEq + std::fmt::Debug>(names: &[&str]) {
        for &name in names {
            let v: T = name.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(v.to_string(), name);
            assert_eq!(v.to_string().parse::<T>().ok(), Some(v));
        }
    }
    round_trip::<Scheme>(&["asymmetric", "asymmetric-exact-zero", "symmetric", "symmetric-full"]);
    round_trip::<MethodKind>(&["uniform", "ternary", "binary", "kmeans"]);
    round_trip::<RangeEstimator>(&["minmax", "mse", "mse:20", "percentile:99.9", "percentile:0.5:99"]);
    round_trip::<ParamDtype>(&["native", "f16", "bf16", "q6", "q4:16"]);
    round_trip::<TableDtype>(&["f32", "f16"]);
    round_trip::<TableFit>(&["cover", "least-squares:3", "least-squares:1"]);
    round_trip::<GranularityRule>(&["tensor", "channel:0", "channel:2", "group:32"]);
    // The command line's shorter spellings.
    assert_eq!("f32".parse::<ParamDtype>()?, ParamDtype::Native);
    assert_eq!("q6".parse::<ParamDtype>()?, ParamDtype::Quantized { bits: 6, super_group: 8 });
    assert_eq!("least-squares".parse::<TableFit>()?, TableFit::LeastSquares { iterations: 3 });
    assert_eq!("percentile:99".parse::<RangeEstimator>()?, RangeEstimator::Percentile { lower: 1.0, upper: 99.0 });
    assert_eq!("mse".parse::<RangeEstimator>()?, RangeEstimator::Mse { steps: 100 });
    Ok(())
}

#[test]
fn bad_names_are_typed_errors() {
    let bad = |r: Result<(), QuantError>, what: &str| assert!(matches!(r, Err(QuantError::InvalidName { what: w, .. }) if w == what));
    for s in ["", "Asymmetric", "symmetric ", "sym"] {
        bad(s.parse::<Scheme>().map(drop), "scheme");
    }
    for s in ["percentile:50", "percentile:NaN", "percentile:101", "percentile:5:5", "mse:0", "mse:-1", "minmax:1", "max"] {
        bad(s.parse::<RangeEstimator>().map(drop), "range estimator");
    }
    for s in ["q1", "q9", "q4:0", "q", "f64", "q4:x"] {
        bad(s.parse::<ParamDtype>().map(drop), "table dtype");
    }
    for s in ["least-squares:0", "least-squares:256", "lsq"] {
        bad(s.parse::<TableFit>().map(drop), "table fit");
    }
    for s in ["group:0", "group:", "channel:-1", "tensor:1", "rows"] {
        bad(s.parse::<GranularityRule>().map(drop), "granularity");
    }
    bad("k-means".parse::<MethodKind>().map(drop), "method");
}

#[test]
fn granularity_rules_resolve_per_shape() {
    let shape3 = Array3::<f32>::zeros((2, 3, 4));
    assert_eq!(GranularityRule::Channel { axis: 2 }.resolve(shape3.shape()).ok(), Some(Granularity::PerChannel { axis: 2 }));
    assert_eq!(GranularityRule::Group { size: 32 }.resolve(&[3, 4]).ok(), Some(Granularity::PerGroup { axis: 1, size: 32 }));
    assert_eq!(GranularityRule::Group { size: 32 }.resolve(&[7]).ok(), Some(Granularity::PerGroup { axis: 0, size: 32 }));
    assert!(matches!(GranularityRule::Channel { axis: 1 }.resolve(&[7]), Err(QuantError::InvalidAxis { axis: 1, ndim: 1 })));
    assert!(matches!(GranularityRule::Group { size: 4 }.resolve(&[]), Err(QuantError::InvalidAxis { .. })));
    assert_eq!(GranularityRule::Tensor.resolve(&[]).ok(), Some(Granularity::PerTensor));
}

#[test]
fn serde_uses_the_command_line_spellings() -> Result<(), serde_json::Error> {
    assert_eq!(serde_json::to_string(&Scheme::SymmetricNarrow)?, "\"symmetric\"");
    assert_eq!(serde_json::to_string(&Granularity::PerGroup { axis: 1, size: 32 })?, r#"{"kind":"group","axis":1,"size":32}"#);
    assert_eq!(serde_json::from_str::<Granularity>(r#"{"kind":"tensor"}"#)?, Granularity::PerTensor);
    assert_eq!(
        serde_json::from_str::<RangeEstimator>("\"percentile:99.9\"")?,
        RangeEstimator::Percentile { lower: 100.0 - 99.9, upper: 99.9 }
    );
    assert!(serde_json::from_str::<Scheme>("\"sym\"").is_err());
    let p = MethodParams { kind: MethodKind::KMeans, bits: 3, param_dtype: ParamDtype::F16, ..MethodParams::default() };
    let json = serde_json::to_string(&p)?;
    assert!(json.contains(r#""kind":"kmeans""#) && json.contains(r#""param_dtype":"f16""#), "{json}");
    assert_eq!(serde_json::from_str::<MethodParams>(&json)?, p);
    // Missing fields take their defaults.
    assert_eq!(serde_json::from_str::<MethodParams>(r#"{"bits":4}"#)?, MethodParams { bits: 4, ..MethodParams::default() });
    Ok(())
}

#[test]
fn default_method_per_kind() {
    for kind in MethodKind::ALL {
        assert_eq!(kind.default_method().kind(), kind);
    }
    assert_eq!(MethodKind::KMeans.default_method().bits(), 4);
    assert_eq!(MethodParams::default().bits, 8);
}

#[test]
fn specs_and_methods_round_trip_through_serde_and_are_checked_on_the_way_in() -> Result<(), serde_json::Error> {
    let uniform = UniformSpec::builder()
        .bits(3)
        .scheme(Scheme::SymmetricNarrow)
        .per_group(1, 32)
        .range(RangeEstimator::Mse { steps: 20 })
        .param_dtype(ParamDtype::Quantized { bits: 6, super_group: 4 })
        .table_fit(TableFit::LeastSquares { iterations: 2 })
        .check()
        .map_err(serde::de::Error::custom)?;
    let kmeans = KMeansSpec::builder().k(5).exact().per_channel(0).table(TableDtype::F16).check().map_err(serde::de::Error::custom)?;
    let ternary = TernarySpec::builder().threshold(0.5).clip(2.5).check().map_err(serde::de::Error::custom)?;
    for m in [Method::Uniform(uniform), Method::KMeans(kmeans), Method::Ternary(ternary), Method::Binary(TernarySpec::default())] {
        let json = serde_json::to_string(&m)?;
        assert_eq!(serde_json::from_str::<Method>(&json)?, m, "{json}");
    }
    let json = serde_json::to_string(&Method::Uniform(uniform))?;
    assert!(
        json.starts_with(r#"{"uniform":{"bits":3,"scheme":"symmetric","granularity":{"kind":"group","axis":1,"size":32},"range":"mse:20""#),
        "{json}"
    );
    // Missing fields take the defaults; invalid ones are refused with the builder's reason.
    assert_eq!(
        serde_json::from_str::<UniformSpec>(r#"{"bits":4}"#)?,
        UniformSpec::builder().bits(4).check().map_err(serde::de::Error::custom)?
    );
    assert_eq!(serde_json::from_str::<Method>(r#"{"ternary":{}}"#)?, Method::Ternary(TernarySpec::default()));
    for bad in [r#"{"bits":9}"#, r#"{"scheme":"symmetric","bits":1}"#, r#"{"table_fit":"least-squares"}"#, r#"{"bitz":4}"#] {
        let err = serde_json::from_str::<UniformSpec>(bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!err.is_empty(), "{bad} was accepted");
    }
    assert!(serde_json::from_str::<KMeansSpec>(r#"{"k":0}"#).is_err());
    assert!(serde_json::from_str::<TernarySpec>(r#"{"clip":-1.0}"#).is_err());
    assert!(serde_json::from_str::<Method>(r#"{"lloyd":{}}"#).is_err());
    Ok(())
}
