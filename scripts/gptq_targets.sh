#!/usr/bin/env bash
# Issue 20's targets on all-MiniLM-L6-v2: the 36 encoder matrices in groups along the input
# dimension, round to nearest against GPTQ (the CLI's default weighted group fits), judged by
# `quant eval` on all 4,000 sentences of data/wordnet/pairs.tsv (queries and documents).
# Usage: scripts/gptq_targets.sh MODEL_DIR [OUT_DIR]   (about 25 minutes on two cores)
set -euo pipefail
M=${1:?model directory}
OUT=${2:-target/gptq_targets}
Q=target/release/quant
mkdir -p "$OUT"
cut -f1 data/wordnet/pairs.tsv > "$OUT/text.txt"
cut -f2 data/wordnet/pairs.tsv >> "$OUT/text.txt"
ONLY='encoder\.layer\.\d+\..*dense.weight|(query|key|value)\.weight'
CAL=data/wordnet/calibration.txt
row() { # name, then quantize flags
  local name=$1; shift
  local t0=$(date +%s.%N)
  $Q quantize "$M/model.safetensors" -o "$OUT/$name.safetensors" --force -q --only "$ONLY" --json "$@" > "$OUT/$name.json"
  local t1=$(date +%s.%N)
  local eval
  eval=$($Q eval "$M" --weights "$OUT/$name.safetensors" --text "$OUT/text.txt" -q --json)
  python3 - "$name" "$(echo "$t1 - $t0" | bc)" "$OUT/$name.json" "$eval" <<'PY' || echo "$name $eval"
import json, sys
name, secs, rep, ev = sys.argv[1], float(sys.argv[2]), json.load(open(sys.argv[3])), json.loads(sys.argv[4])
ts = [t for t in rep['tensors'] if 'bits_per_weight' in t]
n = sum(t['original_bytes'] // 4 for t in ts)
bpw = sum(t['bits_per_weight'] * (t['original_bytes'] // 4) for t in ts) / n
print(f"| {name} | {bpw:.2f} | {ev['cosine']['mean']:.4f} ({ev['cosine']['p5']:.3f}) | {secs:.0f} |")
PY
}
F32="--table-dtype f32 --range minmax"
for b in 4 3; do
  row "${b}b-g128-nearest" --bits $b --granularity group:128 $F32
  row "${b}b-g128-gptq" --bits $b --granularity group:128 $F32 --rounding gptq --calibration $CAL
  row "${b}b-g128-gptq-act-order" --bits $b --granularity group:128 $F32 --rounding gptq --calibration $CAL --act-order
  row "${b}b-g128-gptq-sequential" --bits $b --granularity group:128 $F32 --rounding gptq --calibration $CAL --sequential
done
row 4b-g32-nearest --bits 4 --granularity group:32 $F32
row 4b-g32-gptq --bits 4 --granularity group:32 $F32 --rounding gptq --calibration $CAL
row 4b-g32-gptq-sequential --bits 4 --granularity group:32 $F32 --rounding gptq --calibration $CAL --sequential
row 3b-g32-defaults-gptq --bits 3 --rounding gptq --calibration $CAL
row 2b-g32-nearest --bits 2 --granularity group:32 $F32
row 2b-g32-gptq --bits 2 --granularity group:32 $F32 --rounding gptq --calibration $CAL
row 2b-g128-gptq --bits 2 --granularity group:128 $F32 --rounding gptq --calibration $CAL
