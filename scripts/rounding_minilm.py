#!/usr/bin/env python3
"""Rounding on all-MiniLM-L6-v2 (issue 20): per-matrix layer objectives tr((W-Q) XtX (W-Q)t) and
the cosine between the f32 model's sentence embeddings and the quantized model's, for round to
nearest, importance-weighted fits, GPTQ and sequential GPTQ.

Usage: python3 scripts/rounding_minilm.py MODEL_DIR [QUANT_BINARY] [SETTINGS] > out.md
(SETTINGS: how many of the settings below to run, from the first; all by default.)
Needs a release build of the CLI (cargo build --release -p quant-cli) and the checkpoint (see
the README). Statistics come from data/wordnet/calibration.txt (1,000 sentences); the cosine is
measured on 200 other sentences (the queries and documents of the first 100 evaluation pairs of
data/wordnet/pairs.tsv). Only the standard library: the numbers come from
`quant quantize --json` and `quant eval --json`.
"""
import json, os, subprocess, sys, tempfile, time

model = sys.argv[1]
quant = sys.argv[2] if len(sys.argv) > 2 else "target/release/quant"
only = int(sys.argv[3]) if len(sys.argv) > 3 else None
tmp = tempfile.mkdtemp(prefix="quant-rounding-")
cal = "data/wordnet/calibration.txt"
text = os.path.join(tmp, "eval.txt")
with open("data/wordnet/pairs.tsv") as f, open(text, "w") as g:
    for line in f.readlines()[:100]:
        q, d = line.rstrip("\n").split("\t")
        g.write(q + "\n" + d + "\n")

ROUNDINGS = [
    ("nearest", []),
    ("weighted", ["--rounding", "weighted", "--calibration", cal]),
    ("gptq", ["--rounding", "gptq", "--calibration", cal]),
    ("gptq, sequential", ["--rounding", "gptq", "--calibration", cal, "--sequential"]),
]
SETTINGS = [
    ("4 bits, group:128, f32 params, min-max", ["--bits", "4", "--granularity", "group:128", "--table-dtype", "f32", "--range", "minmax"]),
    ("3 bits, group:128, f32 params, min-max", ["--bits", "3", "--granularity", "group:128", "--table-dtype", "f32", "--range", "minmax"]),
    ("4 bits, group:32, q6 tables, min-max", ["--bits", "4", "--table-dtype", "q6", "--range", "minmax"]),
    ("4 bits, group:32, f16 params, min-max", ["--bits", "4", "--table-dtype", "f16", "--range", "minmax"]),
    ("3 bits, group:32, q6 tables, mse", ["--bits", "3", "--table-dtype", "q6", "--range", "mse"]),
    ("3 bits, group:32, f16 params, min-max", ["--bits", "3", "--table-dtype", "f16", "--range", "minmax"]),
    ("2 bits, group:32, q6 tables, mse", ["--bits", "2", "--table-dtype", "q6", "--range", "mse"]),
]

def run(args):
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)}: {out.stderr}")
    return json.loads(out.stdout)

per_matrix = {}
print("| setting | rounding | bits/weight | cosine mean (p5) | objective / nearest's | seconds |")
print("|---|---|---|---|---|---|")
SETTINGS = SETTINGS[:only]
for slabel, sflags in SETTINGS:
    for rlabel, rflags in ROUNDINGS:
        q = os.path.join(tmp, "q.safetensors")
        # The objectives need statistics: for round to nearest they come with the other rows.
        start = time.time()
        rep = run([quant, "quantize", os.path.join(model, "model.safetensors"), "-o", q, "--force", "-q", "--json", "--min-sqnr", "0"] + sflags + rflags)
        seconds = time.time() - start
        n = sum(eval("*".join(map(str, t["shape"])) or "1") for t in rep["tensors"])
        bpw = 8 * sum(t["quantized_bytes"] for t in rep["tensors"]) / n
        ev = run([quant, "eval", model, "--weights", q, "--text", text, "--json", "-q"])
        c = ev["cosine"]
        obj = rep.get("layer_objectives", [])
        ratio = sum(o["rounded"] for o in obj) / sum(o["nearest"] for o in obj) if obj else 1.0
        # Each run's ratio is to round-to-nearest under that run's own statistics (sequential
        # GPTQ's later layers see other inputs).
        for o in obj:
            per_matrix.setdefault(slabel, {}).setdefault(o["name"], {})[rlabel] = (o["rounded"], o["nearest"])
        print(f"| {slabel} | {rlabel} | {bpw:.2f} | {c['mean']:.4f} ({c['p5']:.3f}) | {ratio:.3f} | {seconds:.1f} |", flush=True)

for slabel in [s for s, _ in SETTINGS[:2]]:
    rows = per_matrix.get(slabel, {})
    print(f"\nPer-matrix layer objective, {slabel} (ratio to round-to-nearest's):\n")
    print("| matrix | nearest (parallel statistics) | weighted | gptq | gptq, sequential |")
    print("|---|---|---|---|---|")
    for name in sorted(rows, key=lambda n: (int(n.split(".")[2]) if n.split(".")[2].isdigit() else 0, n)):
        r = rows[name]
        cells = [f"{r[k][0] / r[k][1]:.3f}" if k in r else "" for k in ["weighted", "gptq", "gptq, sequential"]]
        print(f"| {name.replace('encoder.layer.', '')} | {r['gptq'][1]:.4g} | " + " | ".join(cells) + " |")
