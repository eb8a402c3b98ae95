#!/usr/bin/env python3
"""A synthetic 2 GiB safetensors checkpoint for the peak-memory measurement of issue 23:
16 f32 matrices of 4096 x 8192, N(0, 0.02^2), seed 0, written one at a time.

Usage: python3 scripts/make_big_checkpoint.py OUT.safetensors   (needs numpy)
"""
import json, struct, sys
import numpy as np

out = sys.argv[1]
rng = np.random.default_rng(0)
shape = (4096, 8192)
size = shape[0] * shape[1] * 4
header, offset = {}, 0
for i in range(16):
    header[f"layer.{i}.weight"] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(h)))
    f.write(h)
    for i in range(16):
        f.write((rng.standard_normal(shape, dtype=np.float32) * 0.02).tobytes())
