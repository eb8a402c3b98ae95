"""The torch peer of benches/benches/bert.rs: all-MiniLM-L6-v2 on one thread.

    python3 scripts/bert_timing.py MODEL_DIR [--threads 1] [--repeat 10]

For the first 8 and 32 sentences of data/wordnet/calibration.txt (padded per batch, eager
attention, as transformers runs it): the forward pass to the sentence embeddings (mean
pooling, L2 normalisation), the gradient of the self-distillation loss
mean ||e(x; W) - e(x; W0)||^2 with respect to the 36 encoder weight matrices, and its exact
Hessian-vector product over them (double backward). Then 4,000 sentences embedded (the
calibration sentences, then the queries and documents of pairs.tsv) in batches of 64.
Prints the median of --repeat runs of each, in seconds.
"""
import argparse
import statistics
import time

import torch
from transformers import AutoModel, AutoTokenizer


def embed(model, enc):
    h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, p=2, dim=1)


def median_time(f, repeat):
    f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    model = AutoModel.from_pretrained(a.model_dir, attn_implementation="eager").eval()
    mats = [p for n, p in model.named_parameters() if n.startswith("encoder.layer.") and n.endswith("weight") and p.dim() == 2]
    assert len(mats) == 36
    for p in model.parameters():
        p.requires_grad_(False)
    calib = open("data/wordnet/calibration.txt", encoding="utf-8").read().splitlines()
    for n in [8, 32]:
        enc = tok(calib[:n], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            target = embed(model, enc)
        fwd = median_time(lambda: torch.no_grad()(embed)(model, enc), a.repeat)
        for p in mats:
            p.requires_grad_(True)
        def loss():
            return ((embed(model, enc) - target) ** 2).sum(1).mean()
        def grad():
            return torch.autograd.grad(loss(), mats)
        vs = [torch.randn_like(p) for p in mats]
        def hvp():
            g = torch.autograd.grad(loss(), mats, create_graph=True)
            return torch.autograd.grad(g, mats, vs)
        gt = median_time(grad, a.repeat)
        ht = median_time(hvp, max(3, a.repeat // 3))
        for p in mats:
            p.requires_grad_(False)
        tokens = int(enc["attention_mask"].sum())
        print(f"{n} sentences ({tokens} tokens, padded to {tuple(enc['input_ids'].shape)}): forward {fwd:.4f} s, gradient {gt:.4f} s, hvp {ht:.4f} s")
    texts = list(calib)
    for line in open("data/wordnet/pairs.tsv", encoding="utf-8").read().splitlines():
        texts.extend(line.split("\t"))
    texts = texts[:4000]
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            embed(model, tok(texts[i:i + 64], padding=True, truncation=True, return_tensors="pt"))
    print(f"4000 sentences embedded in {time.perf_counter() - t0:.2f} s with {a.threads} thread(s), tokenizing included")


if __name__ == "__main__":
    main()
