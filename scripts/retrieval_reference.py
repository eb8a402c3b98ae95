"""Independent reference for `quant eval`'s f32 retrieval figures: embeds the query and
document columns of a TSV file with transformers (mean pooling over real tokens, L2
normalisation, as the sentence-transformers head of all-MiniLM-L6-v2) and prints Recall@1 and
MRR of each query's own document among all documents by cosine similarity (ties counted in
the own document's favour, as `quant eval` does).

    python3 scripts/retrieval_reference.py MODEL_DIR data/wordnet/pairs.tsv
"""
import sys

import torch
from transformers import AutoModel, AutoTokenizer

model_dir, pairs = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModel.from_pretrained(model_dir).eval()
queries, docs = [], []
for line in open(pairs, encoding="utf-8"):
    line = line.rstrip("\r\n")
    if not line.strip():
        continue
    q, d = line.split("\t")
    queries.append(q.strip())
    docs.append(d.strip())


def embed(texts):
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            b = tok(texts[i : i + 64], padding=True, truncation=True, max_length=512, return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1)
            out.append(torch.nn.functional.normalize(e, dim=1))
    return torch.cat(out).double()


q, d = embed(queries), embed(docs)
q = q / q.norm(dim=1, keepdim=True)
d = d / d.norm(dim=1, keepdim=True)
s = q @ d.T
own = s.diag().unsqueeze(1)
rank = 1 + (s > own).sum(1)
print(f"pairs {len(queries)}  Recall@1 {(rank == 1).double().mean().item():.4f}  MRR {(1.0 / rank.double()).mean().item():.4f}")
