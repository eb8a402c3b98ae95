"""Sentence embeddings of a text file with transformers (the peer of `quant embed`).

    python3 scripts/bert_reference.py MODEL_DIR TEXT OUT.safetensors [--threads 1]

One sentence per non-empty line; mean pooling over the attention mask (or the head in
modules.json / 1_Pooling/config.json), L2-normalised when modules.json lists a Normalize
module: what sentence-transformers computes. Prints the wall time of the model calls.
"""
import argparse
import json
import os
import time

import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer


def head(model_dir):
    mods_path = os.path.join(model_dir, "modules.json")
    if not os.path.exists(mods_path):
        return "mean", False
    mods = json.load(open(mods_path))
    mode, normalize = "mean", False
    for m in mods:
        if m["type"].endswith("Normalize"):
            normalize = True
        if m["type"].endswith("Pooling"):
            cfg = os.path.join(model_dir, m["path"], "config.json")
            if os.path.exists(cfg):
                c = json.load(open(cfg))
                mode = "cls" if c.get("pooling_mode_cls_token") else "max" if c.get("pooling_mode_max_tokens") else "mean"
    return mode, normalize


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    model = AutoModel.from_pretrained(a.model_dir, attn_implementation="eager").eval()
    mode, normalize = head(a.model_dir)
    lines = [l.rstrip("\r") for l in open(a.text, encoding="utf-8").read().split("\n")]
    sentences = [l for l in lines if l.strip()]
    out = []
    elapsed = 0.0
    with torch.no_grad():
        for i in range(0, len(sentences), a.batch):
            enc = tok(sentences[i:i + a.batch], padding=True, truncation=True, max_length=model.config.max_position_embeddings, return_tensors="pt")
            t0 = time.perf_counter()
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            if mode == "cls":
                e = h[:, 0]
            elif mode == "max":
                e = h.masked_fill(m == 0, -1e9).max(dim=1).values
            else:
                e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            if normalize:
                e = torch.nn.functional.normalize(e, p=2, dim=1)
            elapsed += time.perf_counter() - t0
            out.append(e)
    emb = torch.cat(out).contiguous()
    save_file({"embeddings": emb}, a.out)
    print(json.dumps({"sentences": len(sentences), "seconds": elapsed, "threads": a.threads}))


if __name__ == "__main__":
    main()
