"""Compare a GGUF written by `quant quantize --format gguf` with one llama.cpp's converter wrote.

Usage: python3 scripts/gguf_compare.py OURS.gguf CONVERTER.gguf
(CONVERTER.gguf from `python3 convert_hf_to_gguf.py MODEL_DIR --outtype f32`, llama.cpp's
script; the gguf package from PyPI reads both files.)

Prints every metadata key whose value differs or that only one file has (the converter's
model-card entries, general.* names, licences and datasets, are listed apart), and for every
tensor whether name, shape, type and bytes agree. Exit status 1 when a key outside the model
card or a tensor differs.
"""
import sys

import gguf
import numpy as np


def fields(r):
    out = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        out[k] = (tuple(int(t) for t in f.types), v)
    return out


def main(ours_path, theirs_path):
    ours, theirs = gguf.GGUFReader(ours_path), gguf.GGUFReader(theirs_path)
    a, b = fields(ours), fields(theirs)
    card = lambda k: k.startswith("general.") and k not in ("general.architecture", "general.type", "general.file_type", "general.quantization_version", "general.name")
    bad = 0
    for k in sorted(set(a) | set(b)):
        if k in a and k in b and a[k] == b[k]:
            continue
        where = "model card, not written" if card(k) else "DIFFERS"
        if not card(k) and k != "general.name" and k != "general.file_type":
            bad += 1
        short = lambda x: (x[0], x[1] if not isinstance(x[1], list) or len(x[1]) < 8 else f"[{len(x[1])} items]")
        print(f"{where:24} {k}: ours {short(a[k]) if k in a else '-'}  converter {short(b[k]) if k in b else '-'}")
    ta = {t.name: t for t in ours.tensors}
    tb = {t.name: t for t in theirs.tensors}
    same = 0
    for name in sorted(set(ta) | set(tb)):
        x, y = ta.get(name), tb.get(name)
        if x is None or y is None:
            print(f"tensor {name}: only in {'converter' if x is None else 'ours'}")
            bad += 1
            continue
        ok = list(x.shape) == list(y.shape) and x.tensor_type == y.tensor_type and np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8))
        if ok:
            same += 1
        else:
            bad += 1
            print(f"tensor {name}: ours {x.tensor_type.name} {list(x.shape)}, converter {y.tensor_type.name} {list(y.shape)}")
    print(f"{same} of {len(set(ta) | set(tb))} tensors identical (name, shape, type, bytes); {bad} difference(s) outside the model card")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
