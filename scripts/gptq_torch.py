"""GPTQ in torch on a BERT-family checkpoint: the peer of `quant quantize --rounding gptq`
(issue 20's speed target: input statistics of 256 sentences and GPTQ on all 36 MiniLM
matrices on two cores).

Usage: python3 scripts/gptq_torch.py MODEL_DIR CALIBRATION [SENTENCES] [BITS] [GROUP] [OBJECTIVES.json]

The same algorithm as `quant quantize --rounding gptq --group-fit plain` with its defaults,
written from the method's description (Frantar et al., 2022), in float64 as ours:
- statistics: forward hooks on the 36 encoder matrices (query, key, value, attention output,
  FFN in, FFN out) sum x xᵀ of their inputs over real tokens only (padding excluded), batches
  of 32 sentences (truncated at 512 tokens), the first SENTENCES lines (default 256);
- per matrix W (out x in) and H = XᵀX: dead inputs (zero diagonal) get H_jj = 1 and zero
  weights; 1% of the mean diagonal added; U, the upper Cholesky factor of H⁻¹; columns left
  to right in lazy batches of 128, each group of GROUP (default 128) columns fitted
  asymmetric min-max (step (hi − lo)/(2^BITS − 1) and offset lo in float32, BITS default 4)
  when its first column is reached; column j's error (w − q)/U_jj spread over the batch's
  later columns, the batch's errors over the rest by one product.
Prints the seconds of loading, statistics and GPTQ, the token count, and the sum over the 36
matrices of the layer objective tr((W − Q) XᵀX (W − Q)ᵀ) for round to nearest and for GPTQ;
with OBJECTIVES.json (`quant quantize --json` of the same setting) also ours, per matrix.
Two threads (torch.set_num_threads(2)), as the target's two cores.
"""
import json
import re
import sys
import time

import torch
from transformers import AutoModel, AutoTokenizer

MATRICES = re.compile(r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)$")


def grid(g, bits):
    """Asymmetric min-max grid of each row of g (float32 step and offset, as ours)."""
    lo = g.min(dim=1).values.float()
    hi = g.max(dim=1).values.float()
    step = ((hi - lo) / float(2**bits - 1)).clamp_min(torch.finfo(torch.float32).tiny)
    return step.double(), lo.double()


def snap(w, step, offset, bits):
    return torch.clamp(torch.round((w - offset) / step), 0, 2**bits - 1) * step + offset


def nearest(w, bits, group):
    q = torch.empty_like(w)
    for c in range(0, w.shape[1], group):
        s, m = grid(w[:, c : c + group], bits)
        q[:, c : c + group] = snap(w[:, c : c + group], s[:, None], m[:, None], bits)
    return q


def gptq(w, h, bits, group, damp=0.01, block=128):
    w = w.clone()
    h = h.clone()
    n = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(n, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    block = max(block // group, 1) * group  # whole groups per batch
    q = torch.zeros_like(w)
    step = offset = None
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].clone()
        err = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if (i1 + i) % group == 0:
                step, offset = grid(w1[:, i : i + group], bits)
            col = w1[:, i]
            qc = snap(col, step, offset, bits)
            q[:, i1 + i] = qc
            e = (col - qc) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return q


def objective(w, q, h):
    d = w - q
    return float(torch.sum((d @ h) * d))


def main():
    model_dir, calibration = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    bits = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    group = int(sys.argv[5]) if len(sys.argv) > 5 else 128
    ours = {}
    if len(sys.argv) > 6:
        ours = {o["name"]: o for o in json.load(open(sys.argv[6]))["layer_objectives"]}
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    sentences = [line.rstrip("\n") for line in open(calibration, encoding="utf-8")][:count]
    t1 = time.perf_counter()

    grams, mask = {}, {}

    def hook(name):
        def run(_module, inputs, _output):
            x = inputs[0][mask["now"]].double()
            grams[name] = grams.get(name, 0) + x.T @ x

        return run

    linear = {name: m for name, m in model.named_modules() if MATRICES.search(name)}
    handles = [m.register_forward_hook(hook(name)) for name, m in linear.items()]
    tokens = 0
    with torch.no_grad():
        for b in range(0, len(sentences), 32):
            enc = tok(sentences[b : b + 32], padding=True, truncation=True, max_length=512, return_tensors="pt")
            mask["now"] = enc["attention_mask"].bool()
            tokens += int(mask["now"].sum())
            model(**enc)
    for handle in handles:
        handle.remove()
    t2 = time.perf_counter()

    total_nearest = total_gptq = 0.0
    rows = []
    with torch.no_grad():
        for name, m in linear.items():
            w = m.weight.detach().double()
            h = grams[name]
            q = gptq(w, h, bits, group)
            qn = nearest(w, bits, group)
            a, g = objective(w, qn, h), objective(w, q, h)
            total_nearest += a
            total_gptq += g
            rows.append((name + ".weight", a, g))
    t3 = time.perf_counter()
    print(f"{len(sentences)} sentences, {tokens} tokens; {len(linear)} matrices, {bits} bits, groups of {group}")
    print(f"load {t1 - t0:.2f} s, statistics {t2 - t1:.2f} s, GPTQ (and nearest for the objectives) {t3 - t2:.2f} s; statistics + GPTQ {t3 - t1:.2f} s")
    print(f"layer objective, sum over the matrices: nearest {total_nearest:.6g}, GPTQ {total_gptq:.6g} (ratio {total_gptq / total_nearest:.4f})")
    if ours:
        print("matrix | torch nearest | ours nearest | torch GPTQ | ours GPTQ")
        sums = [0.0, 0.0]
        for name, a, g in rows:
            o = ours.get(name)
            if o:
                sums[0] += o["nearest"]
                sums[1] += o["rounded"]
                print(f"{name} | {a:.6g} | {o['nearest']:.6g} | {g:.6g} | {o['rounded']:.6g}")
        print(f"ours, sum: nearest {sums[0]:.6g}, GPTQ {sums[1]:.6g} (ratio {sums[1] / sums[0]:.4f})")


if __name__ == "__main__":
    main()
