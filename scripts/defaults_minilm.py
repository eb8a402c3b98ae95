#!/usr/bin/env python3
"""Cosine between all-MiniLM-L6-v2's f32 sentence embeddings and those of the quantized model,
for `quant quantize` configurations at 8, 4, 3 and 2 bits (issue 23: the CLI's defaults).

Usage: python3 scripts/defaults_minilm.py MODEL_DIR [QUANT_BINARY]
Needs a release build of the CLI (cargo build --release -p quant-cli) and the checkpoint (see
the README). Evaluates on the first 200 lines of data/wordnet/calibration.txt; prints a
markdown table (mean cosine, 5th percentile, bits per weight over the quantized tensors).
Only the standard library: the numbers come from `quant quantize --json` and `quant eval --json`.
"""
import json, os, subprocess, sys, tempfile

model = sys.argv[1]
quant = sys.argv[2] if len(sys.argv) > 2 else "target/release/quant"
tmp = tempfile.mkdtemp(prefix="quant-defaults-")
text = os.path.join(tmp, "eval.txt")
with open("data/wordnet/calibration.txt") as f, open(text, "w") as g:
    g.writelines(f.readlines()[:200])

CONFIGS = [
    ("default (no flags but --bits)", []),
    ("channel:0 asymmetric (Q-BERT's grid; the default before)", ["--granularity", "channel:0", "--scheme", "asymmetric", "--table-dtype", "f32", "--range", "minmax"]),
    ("channel:0 asymmetric-exact-zero", ["--granularity", "channel:0", "--scheme", "asymmetric-exact-zero", "--range", "minmax"]),
    ("channel:0 symmetric", ["--granularity", "channel:0", "--scheme", "symmetric", "--range", "minmax"]),
    ("group:128 asymmetric f16", ["--granularity", "group:128", "--scheme", "asymmetric", "--table-dtype", "f16", "--range", "minmax"]),
    ("group:32 asymmetric f16", ["--granularity", "group:32", "--scheme", "asymmetric", "--table-dtype", "f16", "--range", "minmax"]),
    ("group:32 asymmetric-exact-zero f16", ["--granularity", "group:32", "--scheme", "asymmetric-exact-zero", "--table-dtype", "f16", "--range", "minmax"]),
    ("group:32 symmetric f16", ["--granularity", "group:32", "--scheme", "symmetric", "--table-dtype", "f16", "--range", "minmax"]),
    ("group:32 q6 tables, minmax, cover", ["--granularity", "group:32", "--table-dtype", "q6", "--range", "minmax", "--table-fit", "cover"]),
    ("group:32 q6 tables, minmax, least-squares", ["--granularity", "group:32", "--table-dtype", "q6", "--range", "minmax", "--table-fit", "least-squares"]),
    ("group:32 q6 tables, mse, cover", ["--granularity", "group:32", "--table-dtype", "q6", "--range", "mse", "--table-fit", "cover"]),
    ("group:16 q6 tables (super-group 16), mse, cover", ["--granularity", "group:16", "--table-dtype", "q6", "--super-group", "16", "--range", "mse"]),
]
BITS = [8, 4, 3, 2]

def run(args):
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"
    return json.loads(out.stdout), None

print("| configuration | " + " | ".join(f"{b} bits: cosine (p5), bpw" for b in BITS) + " |")
print("|---|" + "---|" * len(BITS))
for label, flags in CONFIGS:
    cells = []
    for bits in BITS:
        q = os.path.join(tmp, "q.safetensors")
        rep, err = run([quant, "quantize", os.path.join(model, "model.safetensors"), "-o", q, "--bits", str(bits), "--force", "-q", "--json", "--min-sqnr", "0"] + flags)
        if rep is None:
            cells.append(f"({err[:40]})")
            continue
        n = sum(eval("*".join(map(str, t["shape"])) or "1") for t in rep["tensors"])
        bpw = 8 * sum(t["quantized_bytes"] for t in rep["tensors"]) / n
        ev, err = run([quant, "eval", model, "--weights", q, "--text", text, "--json", "-q"])
        if ev is None:
            cells.append(f"({err[:40]})")
            continue
        c = ev["cosine"]
        cells.append(f"{c['mean']:.4f} ({c['p5']:.3f}), {bpw:.2f}")
    print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
