#!/usr/bin/env bash
# GGUF files of all-MiniLM-L6-v2 written by `quant quantize --format gguf`: each GGML type,
# llama.cpp's q4_k_m mixture, and the Hessian allocation at several budgets, judged by
# `quant eval` on the 4,000 sentences of data/wordnet/pairs.tsv (cosine to f32, and
# Recall@1 / MRR on the 2,000 pairs); with llama-cpp-python installed, also the cosine
# between llama.cpp's embeddings of each file and the project's (scripts/llama_cpp_embed.py,
# on the first 200 of those sentences).
# Usage: scripts/gguf_minilm.sh MODEL_DIR SENS.json [OUT_DIR] [ROWS]   (ROWS: a regex of row names to run)
#   (SENS.json from `quant sensitivity MODEL_DIR --calibration data/wordnet/calibration.txt`)
set -euo pipefail
M=${1:?model directory}
SENS=${2:?sensitivity report}
OUT=${3:-target/gguf_minilm}
Q=target/release/quant
mkdir -p "$OUT"
cut -f1 data/wordnet/pairs.tsv > "$OUT/text.txt"
cut -f2 data/wordnet/pairs.tsv >> "$OUT/text.txt"
head -200 "$OUT/text.txt" > "$OUT/text200.txt"
echo "| file | word embeddings | bits/weight, 36 encoder matrices | MB | cosine mean (p5) | Recall@1 | MRR | llama.cpp vs quant (mean cosine) | seconds |"
echo "|---|---|---|---|---|---|---|---|---|"
ONLY=${4:-.}
row() { # name, then quantize flags
  local name=$1; shift
  [[ $name =~ $ONLY ]] || return 0
  local t0=$(date +%s.%N)
  $Q quantize "$M" -o "$OUT/$name.gguf" --force -q --json "$@" > "$OUT/$name.json"
  local t1=$(date +%s.%N)
  $Q eval "$M" --weights "$OUT/$name.gguf" --text "$OUT/text.txt" --pairs data/wordnet/pairs.tsv -q --json > "$OUT/$name.eval.json"
  local llama="-"
  if python3 -c "import llama_cpp" 2>/dev/null; then
    $Q embed "$M" --text "$OUT/text200.txt" --weights "$OUT/$name.gguf" -o "$OUT/$name.emb.safetensors" --force -q
    llama=$(python3 scripts/llama_cpp_embed.py "$OUT/$name.gguf" "$OUT/text200.txt" "$OUT/$name.emb.safetensors" 2>/dev/null | sed -n 's/.*mean \([0-9.]*\),.*/\1/p')
  fi
  python3 - "$name" "$(echo "$t1 - $t0" | bc)" "$OUT/$name.json" "$OUT/$name.eval.json" "$llama" <<'PY'
import json, os, sys
name, secs, rep, ev, llama = sys.argv[1], float(sys.argv[2]), json.load(open(sys.argv[3])), json.load(open(sys.argv[4])), sys.argv[5]
c, q = ev["cosine"], ev["retrieval_quantized"]
enc = [t for t in rep["tensors"] if t["gguf_name"].startswith("blk.") and len(t["shape"]) == 2]
bpw = 8 * sum(t["bytes"] for t in enc) / sum(t["shape"][0] * t["shape"][1] for t in enc)
emb = next(t["type"] for t in rep["tensors"] if t["gguf_name"] == "token_embd.weight")
print(f"| {name} | {emb} | {bpw:.3f} | {rep['gguf_bytes'] / 1e6:.1f} | {c['mean']:.4f} ({c['p5']:.4f}) | {q['recall_at_1']:.4f} | {q['mrr']:.4f} | {llama} | {secs:.2f} |")
PY
}
row f32 --type f32
for t in q8_0 q6_k q5_k q5_1 q5_0 q4_k q4_1 q4_0 q3_k q2_k; do row "$t" --type "$t"; done
row q4_k_m --recipe q4_k_m
for b in 4.5 5.0 5.5; do row "alloc-trace-$b" --sensitivity "$SENS" --target-bpw "$b"; done
row alloc-omega-5.5 --sensitivity "$SENS" --target-bpw 5.5 --metric omega
# The recipe's budget, word embeddings q8_0 as the recipe gives them (llama.cpp's BERT has no
# output matrix, so its word embeddings take the output's q8_0 / q6_K).
row alloc-trace-5.479 --sensitivity "$SENS" --target-bpw 5.479
row alloc-omega-5.479 --sensitivity "$SENS" --target-bpw 5.479 --metric omega
# The same word-embedding type as the single-type files, at their budgets.
row alloc-trace-4.5-q4_0 --sensitivity "$SENS" --target-bpw 4.5 --embedding-type q4_0
row alloc-trace-5.0-q4_1 --sensitivity "$SENS" --target-bpw 5.0 --embedding-type q4_1
row alloc-trace-5.479-q5_0 --sensitivity "$SENS" --target-bpw 5.479 --embedding-type q5_0
row alloc-omega-5.479-q5_0 --sensitivity "$SENS" --target-bpw 5.479 --embedding-type q5_0 --metric omega
