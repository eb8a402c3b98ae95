#!/usr/bin/env python3
"""Golden file for quant-gguf, written by llama.cpp's own Python package (`pip install gguf`).

golden.gguf holds, for each type of quant_gguf::codec::SUPPORTED:
  input.<type>    f32, 8 blocks of 32 values (random normal, one block constant, one all zero,
                  one with a single outlier, one with values of mixed scales)
  <type>          the bytes of gguf.quants.quantize(input, type) (ggml's reference quantizers)
  decoded.<type>  f32, gguf.quants.dequantize of those bytes
and for each k-quant type (which the package decodes but does not encode):
  <type>          8 super-blocks of random bytes, their f16 scales set to random moderate values
  decoded.<type>  f32, gguf.quants.dequantize of those bytes
and metadata of every value type (in this order), so the reader is tested on a file written
by the reference writer and the writer on producing the same bytes.

Usage: python3 make_golden.py   (writes golden.gguf beside this script)
"""
import os
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V

rng = np.random.default_rng(20261203)
x = rng.standard_normal((8, 32)).astype(np.float32)
x[1] = 0.75
x[2] = 0.0
x[3] = 0.01 * rng.standard_normal(32)
x[3, 5] = -3.0
x[4] *= np.float32(10.0) ** rng.integers(-3, 3, size=32)
x = x.reshape(256)

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.gguf")
w = gguf.GGUFWriter(out, "bert")
w.add_uint8("test.u8", 200)
w.add_int8("test.i8", -100)
w.add_uint16("test.u16", 60000)
w.add_int16("test.i16", -30000)
w.add_uint32("test.u32", 4000000000)
w.add_int32("test.i32", -2000000000)
w.add_float32("test.f32", 0.1)
w.add_bool("test.bool", True)
w.add_string("test.string", "héllo, gguf")
w.add_uint64("test.u64", 2**63 + 5)
w.add_int64("test.i64", -(2**62))
w.add_float64("test.f64", 1.0 / 3.0)
w.add_array("test.strings", ["[CLS]", "a", "", "##ing"])
w.add_key_value("test.i32s", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
w.add_key_value("test.f32s", [0.5, -1.25], V.ARRAY, sub_type=V.FLOAT32)
for t in [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]:
    name = t.name.lower()
    q = gguf.quants.quantize(x.reshape(8, 32), t)
    d = gguf.quants.dequantize(q, t).astype(np.float32).reshape(256)
    w.add_tensor(f"input.{name}", x.reshape(8, 32))
    w.add_tensor(name, q, raw_dtype=t)
    w.add_tensor(f"decoded.{name}", d.reshape(8, 32))
# Where each k-quant block keeps its f16 scales (byte offsets within the block).
K_SCALES = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
for t, offsets in K_SCALES.items():
    name = t.name.lower()
    size = gguf.GGML_QUANT_SIZES[t][1]
    blocks = rng.integers(0, 256, size=(8, size), dtype=np.uint8)
    for o in offsets:
        d = (rng.standard_normal(8) * 0.05).astype(np.float16)
        blocks[:, o:o + 2] = d.view(np.uint8).reshape(8, 2)
    d = gguf.quants.dequantize(blocks, t).astype(np.float32).reshape(8, 256)
    w.add_tensor(name, blocks, raw_dtype=t)
    w.add_tensor(f"decoded.{name}", d)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(out, os.path.getsize(out), "bytes")
