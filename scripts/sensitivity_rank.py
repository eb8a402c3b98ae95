"""Which sensitivity predicts the measured loss increase best? Spearman rank correlation,
over every (tensor, candidate) of a `quant sensitivity` report, between the measured loss at
W0 + d and: the quadratic form 1/2 d^T H d; Omega x ||d||^2 (HAWQ-style with Q-BERT's Omega);
the mean top eigenvalue x ||d||^2; the average trace x ||d||^2 (HAWQ-V2); ||d||^2 alone.

    python3 scripts/sensitivity_rank.py sens.json
"""
import json
import sys


def ranks(x):
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2.0
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb)


r = json.load(open(sys.argv[1]))
rows = []
for m in r["matrices"]:
    for c in m["candidates"]:
        d2 = c["perturbation"]
        rows.append(
            {
                "measured": c["measured"],
                "quadratic": c["quadratic"],
                "omega x |d|^2": m["omega"] * d2,
                "top eigenvalue x |d|^2": m["mean"] * d2,
                "trace x |d|^2": m["average_trace"] * d2,
                "|d|^2 alone": d2,
            }
        )
measured = [x["measured"] for x in rows]
print(f"{len(rows)} (tensor, candidate) pairs")
for key in ["quadratic", "trace x |d|^2", "omega x |d|^2", "top eigenvalue x |d|^2", "|d|^2 alone"]:
    print(f"  Spearman(measured, {key}) = {spearman(measured, [x[key] for x in rows]):.4f}")
for s in r["stages"]:
    print(f"  stage {s['name']}: {s['block_products']} products, {s['quadratic_forms']} forms, {s['loss_evaluations']} losses, {s['seconds']:.1f} s")
