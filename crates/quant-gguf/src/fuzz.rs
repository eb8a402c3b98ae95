//! The body of the `gguf` fuzz target, also run by the tests on mutated files.

use crate::codec;
use crate::read::Header;
use crate::write::GgufWriter;

/// Parses `bytes` as a whole GGUF file; when it parses, decodes every tensor whose type has a
/// codec (up to a million values each) and converts those with a quant-core form and back, writes the file again and checks that the copy parses
/// to the same metadata, tensors and data. Panics only on a broken invariant.
pub fn exercise(bytes: &[u8]) {
    let Ok(h) = Header::parse(bytes, Some(bytes.len() as u64)) else { return };
    let data = |t: &crate::TensorInfo| {
        let start = (h.data_offset + t.offset) as usize;
        &bytes[start..start + t.bytes() as usize]
    };
    for t in &h.tensors {
        let n = t.elements();
        if codec::SUPPORTED.contains(&t.ggml_type) && n <= 1 << 20 {
            let values = codec::dequantize(t.ggml_type, data(t), n as usize);
            assert!(values.is_ok(), "{}: {values:?}", t.name);
            // A convertible tensor becomes a quant-core tensor with exactly those values (or a
            // typed error for a non-finite scale), and a GGML layout goes back to its bytes.
            if let (Ok(values), true) = (values, crate::convert::convertible(t.ggml_type))
                && let Ok(q) = crate::convert::to_quantized(t.ggml_type, data(t), &t.shape())
            {
                let got = q.dequantize();
                assert!(got.iter().zip(&values).all(|(a, b)| a == b || (a.is_nan() && b.is_nan())), "{}: values changed", t.name);
                if let Some(ty) = crate::convert::ggml_type_of(&q) {
                    let back = crate::convert::from_quantized(&q).map(|(_, b)| codec::dequantize(ty, &b, n as usize));
                    let ok = matches!(&back, Ok(Ok(v)) if v.iter().zip(&values).all(|(a, b)| a == b || (a.is_nan() && b.is_nan())));
                    assert!(ok, "{}: values changed on the way back", t.name);
                }
            }
        }
    }
    let mut w = GgufWriter::new();
    for (k, v) in &h.metadata {
        assert!(w.metadata(k, v.clone()).is_ok(), "metadata {k:?} read but not written");
    }
    for t in &h.tensors {
        assert!(w.tensor(&t.name, &t.dims, t.ggml_type).is_ok(), "tensor {:?} read but not written", t.name);
    }
    let mut out = Vec::new();
    let written = w.write_to(&mut out, |i, sink| Ok(std::io::Write::write_all(sink, data(&h.tensors[i]))?));
    assert!(written.is_ok(), "{written:?}");
    let back = Header::parse(&out, Some(out.len() as u64));
    let Ok(back) = back else { panic!("the copy does not parse: {back:?}") };
    assert_eq!(back.metadata.len(), h.metadata.len());
    for ((ka, va), (kb, vb)) in back.metadata.iter().zip(&h.metadata) {
        assert!(ka == kb && same(va, vb), "{ka:?}: {va:?} written back as {vb:?}");
    }
    for (a, b) in back.tensors.iter().zip(&h.tensors) {
        assert_eq!((&a.name, &a.dims, a.ggml_type), (&b.name, &b.dims, b.ggml_type));
        let start = (back.data_offset + a.offset) as usize;
        assert_eq!(&out[start..start + a.bytes() as usize], data(b));
    }
}

/// Equal values, floats compared by their bits (so a NaN equals itself).
fn same(a: &crate::Value, b: &crate::Value) -> bool {
    use crate::Value as V;
    match (a, b) {
        (V::F32(x), V::F32(y)) => x.to_bits() == y.to_bits(),
        (V::F64(x), V::F64(y)) => x.to_bits() == y.to_bits(),
        (V::Array(ta, xs), V::Array(tb, ys)) => ta == tb && xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same(x, y)),
        _ => a == b,
    }
}
