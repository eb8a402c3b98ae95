"""Time llama.cpp's own quantization (ggml_quantize_chunk) with and without an importance
matrix, the peer of `cargo bench -p quant-benches --bench rounding` (issue 20, item 3).

Usage: python3 scripts/ggml_quantize_timing.py [REPEATS]

Loads libggml-base from the llama-cpp-python wheel (pip install llama-cpp-python) and calls
ggml_quantize_chunk on one thread, as llama-quantize does per chunk. The matrix has the bench's
element count (1536 x 384 = 589,824 f32, Gaussian); the K-quants need rows that are a multiple
of 256, so they quantize it as 384 rows of 1536 (the same elements, transposed). The importance
matrix is the diagonal of X^T X for inputs X with every 37th feature eight times as active, as
the bench's. Prints the median of REPEATS runs (default 41) per type, in ms and M weights/s.
"""
import ctypes
import glob
import os
import sys
import time

import numpy as np

TYPES = {"q4_0": 2, "q4_1": 3, "q4_K": 12, "q3_K": 11, "q2_K": 10, "iq4_nl": 20}


def lib():
    import llama_cpp

    base = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    path = glob.glob(os.path.join(base, "libggml-base.so"))[0]
    g = ctypes.CDLL(path)
    g.ggml_quantize_chunk.restype = ctypes.c_size_t
    g.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    g.ggml_row_size.restype = ctypes.c_size_t
    g.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    g.ggml_quantize_init.argtypes = [ctypes.c_int]
    return g


def main(repeats):
    g = lib()
    rng = np.random.default_rng(7)
    w = rng.standard_normal((1536, 384)).astype(np.float32)
    z = rng.standard_normal((2048, 1536))
    scale = np.where(np.arange(1536) % 37 == 0, 8.0, 1.0)
    x = z * scale + 0.3 * np.roll(z, -1, axis=1)
    imatrix_long = np.ascontiguousarray((x * x).sum(axis=0).astype(np.float32))
    imatrix_short = np.ascontiguousarray(imatrix_long[:384])
    for name, t in TYPES.items():
        g.ggml_quantize_init(t)
        k = name.endswith("_K")
        rows, n = (384, 1536) if k else (1536, 384)
        src = np.ascontiguousarray(w.reshape(rows, n))
        imat = imatrix_long if k else imatrix_short
        dst = ctypes.create_string_buffer(g.ggml_row_size(t, n) * rows)
        for label, im in (("plain", None), ("imatrix", imat.ctypes.data)):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                g.ggml_quantize_chunk(t, src.ctypes.data, dst, 0, rows, n, im)
                times.append(time.perf_counter() - t0)
            ms = 1e3 * float(np.median(times))
            print(f"{name:7} {label:8} {ms:8.2f} ms  {w.size / ms / 1e3:7.1f} M weights/s  ({rows} x {n})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 41)
