//! Runs the `quant` binary: round trips against the library's fake quantization, pass-through
//! bytes, inspect against the quantize report, bad input and interrupted writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::{bf16, f16};
use quant::checkpoint::{PassReason, QuantizedCheckpoint, Report};
use quant::ndarray::{ArrayD, IxDyn};
use quant::quantizers::{
    Granularity, KMeansSpec, ParamDtype, RangeEstimator, Scheme, TableDtype, TableFit, TernarySpec, UniformSpec, binarize, fake_quantize,
    kmeans_quantize, ternarize,
};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

mod common;
use common::{TestResult, quant, s};

/// A fresh directory for one test.
fn dir(name: &str) -> PathBuf {
    common::scratch("cli", name)
}

/// Deterministic weight-like values (a sum of sines plus a few outliers).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t = i as f32 * 0.7311 + seed as f32;
            let v = 0.02 * (t.sin() + 0.5 * (2.3 * t).cos() + 0.25 * (5.1 * t).sin());
            if i % 97 == 13 { v * 8.0 } else { v }
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A small checkpoint with every kind of tensor: f32 / f16 / bf16 weights, a bias, integer and
/// byte tensors, an empty tensor, and header metadata.
fn checkpoint(path: &Path) -> TestResult {
    let w = f32_bytes(&values(64 * 96, 1));
    let b = f32_bytes(&values(64, 2));
    let e: Vec<u8> = values(32 * 48, 3).iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
    let ln: Vec<u8> = values(48, 4).iter().flat_map(|&x| bf16::from_f32(1.0 + x).to_le_bytes()).collect();
    let ids: Vec<u8> = (0..10i64).flat_map(|i| (i * 7).to_le_bytes()).collect();
    let mask: Vec<u8> = vec![1, 0, 1, 1, 0, 0, 1];
    let tensors = vec![
        ("enc.weight", TensorView::new(Dtype::F32, vec![64, 96], &w)?),
        ("enc.bias", TensorView::new(Dtype::F32, vec![64], &b)?),
        ("emb.weight", TensorView::new(Dtype::F16, vec![32, 48], &e)?),
        ("ln.weight", TensorView::new(Dtype::BF16, vec![48], &ln)?),
        ("position_ids", TensorView::new(Dtype::I64, vec![10], &ids)?),
        ("mask", TensorView::new(Dtype::U8, vec![7], &mask)?),
        ("empty", TensorView::new(Dtype::F32, vec![0, 4], &[])?),
    ];
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(meta), path)?;
    Ok(())
}

/// The f32 values of a stored floating-point tensor.
fn read_f32(st: &SafeTensors<'_>, name: &str) -> Result<ArrayD<f32>, Box<dyn std::error::Error>> {
    let v = st.tensor(name)?;
    let d = v.data();
    let vals: Vec<f32> = match v.dtype() {
        Dtype::F16 => d.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    };
    Ok(ArrayD::from_shape_vec(IxDyn(v.shape()), vals)?)
}

/// The library's fake quantization of one tensor under the same settings as the command line.
type Reference = fn(&ArrayD<f32>) -> Result<ArrayD<f32>, quant::quantizers::QuantError>;

fn group_last(x: &ArrayD<f32>, size: usize) -> Granularity {
    Granularity::PerGroup { axis: x.ndim() - 1, size }
}

fn uniform(
    x: &ArrayD<f32>,
    bits: u8,
    scheme: Scheme,
    g: Granularity,
    range: RangeEstimator,
    dtype: ParamDtype,
) -> Result<ArrayD<f32>, quant::quantizers::QuantError> {
    let spec = UniformSpec::builder().bits(bits).scheme(scheme).granularity(g).range(range).param_dtype(dtype).check()?;
    Ok(fake_quantize(x, &spec)?.values)
}

#[test]
fn round_trips_equal_the_library_fake_quantization_bit_for_bit() -> TestResult {
    let d = dir("roundtrip");
    let input = d.join("model.safetensors");
    checkpoint(&input)?;
    let bytes = std::fs::read(&input)?;
    let original = SafeTensors::deserialize(&bytes)?;
    let cases: Vec<(Vec<&str>, Reference)> = vec![
        (vec![], |x| {
            uniform(x, 8, Scheme::AsymmetricGrid, Granularity::PerChannel { axis: 0 }, RangeEstimator::MinMax, ParamDtype::Native)
        }),
        // The default at 6 bits and below: groups of 32 with q6 tables, the cover fit.
        (vec!["--bits", "4"], |x| {
            uniform(
                x,
                4,
                Scheme::AsymmetricGrid,
                group_last(x, 32),
                RangeEstimator::MinMax,
                ParamDtype::Quantized { bits: 6, super_group: 8 },
            )
        }),
        (vec!["--bits", "4", "--granularity", "group:32", "--table-dtype", "q6", "--super-group", "8"], |x| {
            uniform(
                x,
                4,
                Scheme::AsymmetricGrid,
                group_last(x, 32),
                RangeEstimator::MinMax,
                ParamDtype::Quantized { bits: 6, super_group: 8 },
            )
        }),
        (vec!["--bits", "4", "--granularity", "group:32", "--table-dtype", "q6", "--table-fit", "least-squares"], |x| {
            let spec = UniformSpec::builder()
                .bits(4)
                .granularity(group_last(x, 32))
                .param_dtype(ParamDtype::Quantized { bits: 6, super_group: 8 })
                .table_fit(TableFit::LeastSquares { iterations: 3 })
                .check()?;
            Ok(fake_quantize(x, &spec)?.values)
        }),
        (vec!["--bits", "2", "--granularity", "group:16", "--range", "mse", "--table-dtype", "q4", "--super-group", "16"], |x| {
            uniform(
                x,
                2,
                Scheme::AsymmetricGrid,
                group_last(x, 16),
                RangeEstimator::Mse { steps: 100 },
                ParamDtype::Quantized { bits: 4, super_group: 16 },
            )
        }),
        // Groups at 3 bits search their ranges by default.
        (vec!["--bits", "3", "--scheme", "symmetric", "--granularity", "group:32", "--table-dtype", "q8"], |x| {
            uniform(
                x,
                3,
                Scheme::SymmetricNarrow,
                group_last(x, 32),
                RangeEstimator::Mse { steps: 100 },
                ParamDtype::Quantized { bits: 8, super_group: 8 },
            )
        }),
        (
            vec!["--bits", "4", "--scheme", "symmetric", "--granularity", "group:32", "--table-dtype", "f16", "--range", "percentile:99.9"],
            |x| {
                uniform(
                    x,
                    4,
                    Scheme::SymmetricNarrow,
                    group_last(x, 32),
                    RangeEstimator::Percentile { lower: 100.0 - 99.9, upper: 99.9 },
                    ParamDtype::F16,
                )
            },
        ),
        (vec!["--scheme", "asymmetric-exact-zero", "--granularity", "tensor", "--table-dtype", "bf16"], |x| {
            uniform(x, 8, Scheme::AsymmetricExactZero, Granularity::PerTensor, RangeEstimator::MinMax, ParamDtype::Bf16)
        }),
        (vec!["--method", "ternary"], |x| Ok(ternarize(x, &TernarySpec::builder().per_channel(0).check()?)?.dequantize())),
        (vec!["--method", "binary", "--granularity", "tensor"], |x| Ok(binarize(x, &TernarySpec::builder().check()?)?.dequantize())),
        (vec!["--method", "kmeans", "--bits", "3", "--granularity", "group:16", "--table-dtype", "f16"], |x| {
            let spec = KMeansSpec::builder().bits(3).granularity(group_last(x, 16)).table(TableDtype::F16).check()?;
            Ok(kmeans_quantize(x, &spec)?.0.dequantize())
        }),
    ];
    for (k, (args, reference)) in cases.iter().enumerate() {
        let q = d.join(format!("q{k}.safetensors"));
        let back = d.join(format!("back{k}.safetensors"));
        let mut a = vec!["quantize", s(&input), "-o", s(&q), "--json"];
        a.extend(args);
        let out = quant(&a);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let report: Report = serde_json::from_slice(&out.stdout)?;
        // A tensor that quantized would take more bytes than it does (the 1-D tensors under
        // one range or α per channel: a table entry per element) is kept as it is.
        let grown: Vec<&str> = report
            .passthrough
            .iter()
            .filter(|p| matches!(p.reason, Some(PassReason::WouldGrow { quantized_bytes }) if quantized_bytes >= p.bytes))
            .map(|p| p.name.as_str())
            .collect();
        let per_channel = args.is_empty() || args.as_slice() == ["--method", "ternary"];
        let expect_grown: &[&str] = if per_channel { &["enc.bias", "ln.weight"] } else { &[] };
        assert_eq!(grown, expect_grown, "{args:?}");
        assert_eq!(report.tensors.len() + grown.len(), 4, "{args:?}");
        // Uniform qN tables name their fit; nothing else does.
        let default_q6 = args.as_slice() == ["--bits", "4"];
        let fit = match (args.contains(&"least-squares"), default_q6 || args.iter().any(|a| a.starts_with('q'))) {
            (true, _) => Some("least-squares:3"),
            (false, true) => Some("cover"),
            _ => None,
        };
        assert!(report.tensors.iter().all(|t| t.entry.table_fit.map(|f| f.to_string()).as_deref() == fit), "{args:?}");
        let out = quant(&["dequantize", s(&q), "-o", s(&back), "--quiet"]);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let back_bytes = std::fs::read(&back)?;
        let restored = SafeTensors::deserialize(&back_bytes)?;
        for name in ["enc.weight", "enc.bias", "emb.weight", "ln.weight"] {
            let x = read_f32(&original, name)?;
            let expect = if grown.contains(&name) { x.clone() } else { reference(&x)? };
            let got = read_f32(&restored, name)?;
            let dtype = if grown.contains(&name) { original.tensor(name)?.dtype() } else { Dtype::F32 };
            assert_eq!(restored.tensor(name)?.dtype(), dtype);
            assert!(
                got.iter().zip(expect.iter()).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{args:?} {name}: dequantized file differs from the library's fake quantization"
            );
        }
        // Pass-through tensors and the header metadata come back byte for byte.
        for name in ["position_ids", "mask", "empty"] {
            assert_eq!(restored.tensor(name)?.data(), original.tensor(name)?.data(), "{name}");
            assert_eq!(restored.tensor(name)?.dtype(), original.tensor(name)?.dtype());
        }
        let (_, meta) = SafeTensors::read_metadata(&back_bytes)?;
        assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
    }
    Ok(())
}

#[test]
fn inspect_agrees_with_the_quantize_report_and_bytes_match_the_accounting() -> TestResult {
    let d = dir("inspect");
    let input = d.join("model.safetensors");
    checkpoint(&input)?;
    let q = d.join("q.safetensors");
    let out = quant(&[
        "quantize",
        s(&input),
        "-o",
        s(&q),
        "--bits",
        "4",
        "--granularity",
        "group:32",
        "--table-dtype",
        "q6",
        "--json",
        "--skip",
        "^emb",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Report = serde_json::from_slice(&out.stdout)?;
    let out = quant(&["inspect", s(&q), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inspected: Report = serde_json::from_slice(&out.stdout)?;
    // The file does not record why a tensor was kept; everything else agrees.
    let mut without_reasons = report.clone();
    without_reasons.passthrough.iter_mut().for_each(|p| p.reason = None);
    assert_eq!(inspected, without_reasons);
    let reasons: Vec<_> = report.passthrough.iter().map(|p| (p.name.as_str(), p.reason.clone())).collect();
    assert_eq!(
        reasons,
        [
            ("emb.weight", Some(PassReason::NotSelected)),
            ("empty", Some(PassReason::Empty)),
            ("mask", Some(PassReason::NotFloat)),
            ("position_ids", Some(PassReason::NotFloat))
        ]
    );
    // --skip kept the embedding as it was (F16).
    assert!(report.passthrough.iter().any(|p| p.name == "emb.weight" && p.dtype == "F16"));
    // The quantized tensors' data in the file is exactly the accounted bytes: file size =
    // 8-byte length + header + every tensor's data.
    let bytes = std::fs::read(&q)?;
    let (header, _) = SafeTensors::read_metadata(&bytes)?;
    assert_eq!(bytes.len(), 8 + header + report.quantized_bytes);
    // 4-bit codes + q6 tables in super-groups of 8: 96 = 3 groups of 32 per row of enc.weight,
    // 64 rows -> 192 groups, 24 super-groups: 3072 + 2·(48 + 144) bytes.
    let enc = report.tensors.iter().find(|t| t.name == "enc.weight").ok_or("enc.weight reported")?;
    assert_eq!(enc.entry.quantized_bytes, 64 * 96 / 2 + 2 * (24 * 2 + 192 * 6 / 8));
    assert!((enc.entry.bits_per_weight - 4.5).abs() < 1e-12);
    let sqnr = enc.entry.sqnr_db.ok_or("lossy")?;
    assert!(sqnr > 15.0, "{sqnr}");
    // Human-readable output names every tensor.
    let out = quant(&["inspect", s(&q)]);
    let text = String::from_utf8(out.stdout)?;
    for name in ["enc.weight", "enc.bias", "ln.weight", "position_ids", "compression ratio"] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    // A plain checkpoint inspects as all pass-through.
    let out = quant(&["inspect", s(&input), "--json"]);
    let plain: Report = serde_json::from_slice(&out.stdout)?;
    assert_eq!(plain.tensors.len(), 0);
    assert_eq!(plain.passthrough.len(), 7);
    Ok(())
}

#[test]
fn only_selects_and_the_library_loads_the_file() -> TestResult {
    let d = dir("only");
    let input = d.join("model.safetensors");
    checkpoint(&input)?;
    let q = d.join("q.safetensors");
    let out = quant(&["quantize", s(&input), "-o", s(&q), "--only", "weight$", "--bits", "6", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&q)?;
    let ckpt = QuantizedCheckpoint::parse(&bytes)?;
    let names: Vec<&str> = ckpt.entries().keys().map(String::as_str).collect();
    assert_eq!(names, vec!["emb.weight", "enc.weight", "ln.weight"]);
    assert!(ckpt.passthrough_names().contains(&"enc.bias".to_string()));
    let w = ckpt.dequantize("enc.weight")?;
    assert_eq!(w.shape(), &[64, 96]);
    assert!(ckpt.dequantize("enc.bias").is_err());
    Ok(())
}

#[cfg(unix)]
#[test]
fn outputs_keep_the_input_permission_bits() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let d = dir("perms");
    let input = d.join("model.safetensors");
    checkpoint(&input)?;
    for mode in [0o640, 0o604] {
        std::fs::set_permissions(&input, std::fs::Permissions::from_mode(mode))?;
        let (q, back) = (d.join(format!("q{mode:o}.safetensors")), d.join(format!("b{mode:o}.safetensors")));
        let out = quant(&["quantize", s(&input), "-o", s(&q), "--bits", "8", "--quiet"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::metadata(&q)?.permissions().mode() & 0o777, mode);
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(mode))?;
        let out = quant(&["dequantize", s(&q), "-o", s(&back), "--quiet"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::metadata(&back)?.permissions().mode() & 0o777, mode);
    }
    Ok(())
}

#[test]
fn an_existing_output_or_the_input_itself_is_not_replaced_without_force() -> TestResult {
    let d = dir("force");
    let input = d.join("model.safetensors");
    checkpoint(&input)?;
    let original = std::fs::read(&input)?;
    let q = d.join("q.safetensors");
    std::fs::write(&q, b"precious")?;
    let refuse = |args: &[&str], what: &str| {
        let out = quant(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what}: succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        err
    };
    let e = refuse(&["quantize", s(&input), "-o", s(&q), "--quiet"], "existing output");
    assert!(e.contains("q.safetensors exists; pass --force"), "{e}");
    assert_eq!(std::fs::read(&q)?, b"precious");
    // The input itself: by its own path, through a symbolic link and through a hard link.
    let e = refuse(&["quantize", s(&input), "-o", s(&input), "--quiet"], "the input");
    assert!(e.contains("is the input file"), "{e}");
    #[cfg(unix)]
    {
        let sym = d.join("sym.safetensors");
        std::os::unix::fs::symlink(&input, &sym)?;
        assert!(refuse(&["quantize", s(&input), "-o", s(&sym), "--quiet"], "a symbolic link").contains("is the input file"));
        let hard = d.join("hard.safetensors");
        std::fs::hard_link(&input, &hard)?;
        assert!(refuse(&["quantize", s(&input), "-o", s(&hard), "--quiet"], "a hard link").contains("is the input file"));
    }
    assert_eq!(std::fs::read(&input)?, original);
    let e = refuse(&["dequantize", s(&input), "-o", s(&q), "--quiet"], "dequantize over an existing file");
    assert!(e.contains("exists"), "{e}");
    // --force replaces.
    let out = quant(&["quantize", s(&input), "-o", s(&q), "--quiet", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(QuantizedCheckpoint::parse(&std::fs::read(&q)?).is_ok());
    Ok(())
}

/// Asserts a failed run: non-zero exit that is not a panic, no output; a run error is one
/// line on stderr, a usage error (exit 2) is clap's whole message (the flag, the possible
/// values or tip, the pointer to --help).
fn assert_clean_failure(out: &Output, output: &Path, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded");
    assert_ne!(out.status.code(), Some(101), "{what}: panicked: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(err.starts_with("error: "), "{what}: {err}");
    if out.status.code() == Some(2) {
        assert!(err.contains("--help"), "{what}: a usage error without the pointer to --help: {err}");
    } else {
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: not one line: {err}");
    }
    assert!(!output.exists(), "{what}: left an output file");
}

#[test]
fn bad_input_gives_one_line_errors_and_no_output() -> TestResult {
    let d = dir("bad");
    let input = d.join("model.safetensors");
    checkpoint(&input)?;
    let good = std::fs::read(&input)?;
    let out_path = d.join("out.safetensors");
    let o = s(&out_path).to_string();

    // Missing file.
    let out = quant(&["quantize", s(&d.join("nope.safetensors")), "-o", &o]);
    assert_clean_failure(&out, &out_path, "missing file");

    // Truncated at several points, including inside the header.
    for cut in [0, 5, 8, 40, good.len() / 2, good.len() - 1] {
        let p = d.join(format!("cut{cut}.safetensors"));
        std::fs::write(&p, &good[..cut])?;
        for cmd in ["quantize", "dequantize"] {
            assert_clean_failure(&quant(&[cmd, s(&p), "-o", &o]), &out_path, &format!("{cmd} truncated at {cut}"));
        }
        assert_clean_failure(&quant(&["inspect", s(&p)]), &out_path, &format!("inspect truncated at {cut}"));
    }

    // A header that lies: a header length past the end, offsets past the data, an unknown dtype.
    let n = u64::from_le_bytes(good[..8].try_into()?) as usize;
    let header = String::from_utf8(good[8..8 + n].to_vec())?;
    let with_header = |h: &str| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&good[8 + n..]);
        b
    };
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let lies = [
        ("huge header length", huge),
        ("offsets past the data", with_header(&header.replacen("[0,", "[1,", 1))),
        ("unknown dtype", with_header(&header.replacen("\"F32\"", "\"F12\"", 1))),
        ("not JSON", with_header(&header.replacen('{', "[", 1))),
    ];
    for (what, bytes) in lies {
        let p = d.join("lie.safetensors");
        std::fs::write(&p, bytes)?;
        assert_clean_failure(&quant(&["quantize", s(&p), "-o", &o]), &out_path, what);
        assert_clean_failure(&quant(&["inspect", s(&p)]), &out_path, what);
    }
    // Header errors name the tensor: a size that disagrees with the shape, an unknown dtype,
    // data past the end of the file.
    let shrunk = header.replacen("\"shape\":[64,96]", "\"shape\":[64,95]", 1);
    assert_ne!(shrunk, header, "the test's header has enc.weight at [64, 96]");
    let f12 = with_header(&header.replacen("\"BF16\"", "\"F12\"", 1));
    for (what, bytes, expect) in [
        ("a shape the offsets disagree with", with_header(&shrunk), "tensor 'enc.weight': shape [64, 95] of F32 needs 24320 bytes"),
        ("an unknown dtype", f12, "tensor 'ln.weight': unknown dtype \"F12\""),
        ("a truncated file", good[..good.len() - 3].to_vec(), "past the file's"),
    ] {
        let p = d.join("named.safetensors");
        std::fs::write(&p, bytes)?;
        let out = quant(&["inspect", s(&p)]);
        assert_clean_failure(&out, &out_path, what);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{what}: {err}");
    }
    // A directory given as the input is named as one, with the model file it holds.
    let model_dir = d.join("model_dir");
    std::fs::create_dir_all(&model_dir)?;
    std::fs::copy(&input, model_dir.join("model.safetensors"))?;
    let out = quant(&["quantize", s(&model_dir), "-o", &o]);
    assert_clean_failure(&out, &out_path, "a directory");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a directory") && err.contains("did you mean"), "{err}");
    // An output directory that does not exist is named before any work.
    let nowhere = d.join("no-such-dir").join("q.safetensors");
    let out = quant(&["quantize", s(&input), "-o", s(&nowhere)]);
    assert_clean_failure(&out, &nowhere, "a missing output directory");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-dir"));

    // Flag values out of range.
    for flags in [
        vec!["--bits", "9"],
        vec!["--bits", "1", "--scheme", "symmetric"],
        vec!["--granularity", "chan:0"],
        vec!["--granularity", "group:0"],
        vec!["--table-dtype", "q9"],
        vec!["--table-dtype", "q4", "--scheme", "asymmetric-exact-zero"],
        vec!["--range", "percentile:20"],
        vec!["--method", "ternary", "--table-dtype", "f16"],
        vec!["--method", "fancy"],
        vec!["--super-group", "0", "--table-dtype", "q6"],
        vec!["--table-fit", "least-squares"],
        vec!["--table-fit", "least-squares", "--table-dtype", "f16"],
        vec!["--table-fit", "least-squares", "--method", "kmeans", "--table-dtype", "q6"],
        vec!["--table-fit", "nearest"],
        vec!["--only", "("],
    ] {
        let mut a = vec!["quantize", s(&input), "-o", &o];
        a.extend(&flags);
        assert_clean_failure(&quant(&a), &out_path, &format!("{flags:?}"));
    }

    // The regular expression's own message reaches the user.
    let out = quant(&["quantize", s(&input), "-o", &o, "--only", "("]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unclosed group"), "{}", String::from_utf8_lossy(&out.stderr));

    // A granularity the tensors do not have, with --strict: fails before writing anything
    // (without it, the 1-D bias is kept and reported: below).
    assert_clean_failure(&quant(&["quantize", s(&input), "-o", &o, "--granularity", "channel:1", "--strict"]), &out_path, "channel:1");

    // A NaN weight.
    let mut nan = values(16, 5);
    nan[7] = f32::NAN;
    let nb = f32_bytes(&nan);
    let p = d.join("nan.safetensors");
    safetensors::serialize_to_file(vec![("w", TensorView::new(Dtype::F32, vec![4, 4], &nb)?)], None, &p)?;
    assert_clean_failure(&quant(&["quantize", s(&p), "-o", &o]), &out_path, "NaN");

    // Quantizing a quantized file, dequantizing a plain one.
    let q = d.join("q.safetensors");
    assert!(quant(&["quantize", s(&input), "-o", s(&q)]).status.success());
    assert_clean_failure(&quant(&["quantize", s(&q), "-o", &o]), &out_path, "quantize twice");
    assert_clean_failure(&quant(&["dequantize", s(&input), "-o", &o]), &out_path, "dequantize plain");

    // A corrupted part: every scale code of the first quantized tensor set to 0 (a zero step).
    let qb = std::fs::read(&q)?;
    let st = SafeTensors::deserialize(&qb)?;
    let part = st.tensor("emb.weight.qscales")?;
    let start = part.data().as_ptr() as usize - qb.as_ptr() as usize;
    let mut bad = qb.clone();
    bad[start..start + part.data().len()].fill(0);
    let p = d.join("zero-steps.safetensors");
    std::fs::write(&p, bad)?;
    assert_clean_failure(&quant(&["dequantize", s(&p), "-o", &o]), &out_path, "zero steps");
    assert_clean_failure(&quant(&["inspect", s(&p)]), &out_path, "zero steps");
    Ok(())
}

#[test]
fn every_command_has_help_with_examples() {
    for cmd in ["quantize", "dequantize", "inspect"] {
        let out = quant(&[cmd, "--help"]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Example"), "{cmd}: {text}");
    }
    assert!(String::from_utf8_lossy(&quant(&["--help"]).stdout).contains("quantize"));
}

/// A checkpoint of `count` f32 matrices of 2048 x 1024 (8 MB each).
fn big_checkpoint(path: &Path, count: usize, seed: u32) -> TestResult {
    let w = f32_bytes(&values(count * 2048 * 1024, seed));
    let chunks = w.chunks_exact(8 << 20).enumerate();
    let views: Result<Vec<_>, _> =
        chunks.map(|(i, c)| TensorView::new(Dtype::F32, vec![2048, 1024], c).map(|v| (format!("w{i}"), v))).collect();
    safetensors::serialize_to_file(views?, None, path)?;
    Ok(())
}

/// SIGTERM and SIGINT during a run: the process exits with 130 and leaves neither the output
/// nor its partial file (which exists from the start of the run, so the signal always lands
/// while it is there).
#[cfg(unix)]
#[test]
fn a_signal_during_a_run_leaves_neither_output_nor_partial_file() -> TestResult {
    let d = dir("sigterm");
    let input = d.join("big.safetensors");
    big_checkpoint(&input, 2, 11)?;
    for signal in ["-TERM", "-INT"] {
        let out = d.join(format!("out{signal}.safetensors"));
        let partial = quant::checkpoint::partial_path(&out);
        let child = Command::new(env!("CARGO_BIN_EXE_quant"))
            .args(["quantize", s(&input), "-o", s(&out), "--bits", "3", "--range", "mse", "--table-fit", "cover", "--quiet"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let start = std::time::Instant::now();
        while !partial.exists() && start.elapsed() < std::time::Duration::from_secs(60) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(partial.exists(), "{signal}: the partial file never appeared");
        let status = Command::new("kill").args([signal, &child.id().to_string()]).status()?;
        assert!(status.success());
        let result = child.wait_with_output()?;
        if result.status.success() {
            // Finished before the signal arrived: a complete file, nothing partial.
            assert_eq!(quant::checkpoint::inspect(&std::fs::read(&out)?)?.tensors.len(), 2);
        } else {
            assert_eq!(result.status.code(), Some(130), "{signal}: {}", String::from_utf8_lossy(&result.stderr));
            assert!(!out.exists(), "{signal}: an output after the signal");
        }
        assert!(!partial.exists(), "{signal}: the partial file was left");
    }
    Ok(())
}

#[test]
fn an_interrupted_write_leaves_no_output_file() -> TestResult {
    let d = dir("interrupt");
    let input = d.join("big.safetensors");
    // 6M weights (24 MB): long enough to be killed mid-way on most runs.
    big_checkpoint(&input, 3, 9)?;
    for delay_ms in [5u64, 40, 150] {
        let out = d.join(format!("out{delay_ms}.safetensors"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_quant"))
            .args(["quantize", s(&input), "-o", s(&out), "--bits", "4", "--granularity", "group:32", "--range", "mse", "--quiet"])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait()?;
        // Either it finished (a complete, valid file) or there is no output at all.
        if out.exists() {
            let bytes = std::fs::read(&out)?;
            let report = quant::checkpoint::inspect(&bytes)?;
            assert_eq!(report.tensors.len(), 3, "a partial file after {delay_ms} ms");
        }
    }
    Ok(())
}

#[test]
fn unfit_tensors_are_kept_and_reported_and_low_sqnr_is_warned() -> TestResult {
    let d = dir("unfit");
    let input = d.join("model.safetensors");
    checkpoint(&input)?;
    let q = d.join("q.safetensors");
    let run = |extra: &[&str]| {
        let mut a = vec!["quantize", s(&input), "-o", s(&q), "--json", "--force"];
        a.extend(extra);
        quant(&a)
    };
    let kept = |out: &Output| -> Result<Vec<(String, PassReason)>, Box<dyn std::error::Error>> {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: Report = serde_json::from_slice(&out.stdout)?;
        Ok(report
            .passthrough
            .into_iter()
            .filter_map(|p| {
                p.reason.filter(|r| matches!(r, PassReason::DoesNotFit { .. } | PassReason::WouldGrow { .. })).map(|r| (p.name, r))
            })
            .collect())
    };
    // channel:1 on the 1-D tensors, and a group longer than ln.weight's 48 values: kept and
    // named; the 2-D tensors are quantized.
    for (flags, expect) in [
        (vec!["--granularity", "channel:1"], vec!["enc.bias", "ln.weight"]),
        (vec!["--granularity", "group:64"], vec!["emb.weight", "ln.weight"]),
    ] {
        let out = run(&flags);
        let k = kept(&out)?;
        assert_eq!(k.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), expect, "{flags:?}");
        assert!(k.iter().all(|(_, r)| matches!(r, PassReason::DoesNotFit { .. })), "{flags:?}: {k:?}");
        let report: Report = serde_json::from_slice(&out.stdout)?;
        assert!(report.tensors.iter().any(|t| t.name == "enc.weight"), "{flags:?}");
        assert!(QuantizedCheckpoint::parse(&std::fs::read(&q)?).is_ok());
    }
    // 256 k-means centroids per row of a small tensor would grow it: kept.
    let k = kept(&run(&["--method", "kmeans", "--bits", "8"]))?;
    assert!(k.iter().any(|(n, r)| n == "emb.weight" && matches!(r, PassReason::WouldGrow { .. })), "{k:?}");
    // The SQNR warning: none at 8 bits by default; every tensor above an impossible threshold.
    let out = run(&[]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["low_sqnr"].as_array().map(Vec::len), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    let out = run(&["--min-sqnr", "300"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let quantized = v["tensors"].as_array().map_or(0, Vec::len);
    assert!(quantized > 0);
    assert_eq!(v["low_sqnr"].as_array().map(Vec::len), Some(quantized));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("warning: {quantized} tensor(s) below 300 dB SQNR")), "{err}");
    Ok(())
}

/// `channel:AXIS` with AXIS >= 2 on a 3-D tensor works from the command line (it was refused
/// against a 2-D stand-in), and the 2-D and 1-D tensors without that axis are kept and named.
#[test]
fn channel_two_quantizes_a_3d_tensor() -> TestResult {
    let d = dir("conv3d");
    let input = d.join("conv.safetensors");
    let w = f32_bytes(&values(4 * 3 * 16, 21));
    let b = f32_bytes(&values(16, 22));
    safetensors::serialize_to_file(
        vec![("conv.weight", TensorView::new(Dtype::F32, vec![4, 3, 16], &w)?), ("conv.bias", TensorView::new(Dtype::F32, vec![16], &b)?)],
        None,
        &input,
    )?;
    let q = d.join("q.safetensors");
    let out = quant(&["quantize", s(&input), "-o", s(&q), "--bits", "8", "--granularity", "channel:2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Report = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report.tensors.len(), 1);
    assert_eq!(report.tensors[0].name, "conv.weight");
    assert_eq!(report.tensors[0].entry.granularity, quant::quantizers::Granularity::PerChannel { axis: 2 });
    assert!(matches!(&report.passthrough[0].reason, Some(PassReason::DoesNotFit { .. })), "{:?}", report.passthrough);
    let back = d.join("back.safetensors");
    assert!(quant(&["dequantize", s(&q), "-o", s(&back), "--quiet"]).status.success());
    let bytes = std::fs::read(&back)?;
    assert_eq!(SafeTensors::deserialize(&bytes)?.tensor("conv.weight")?.shape(), &[4, 3, 16]);
    Ok(())
}
