"""torch peer of `cargo bench -p quant-benches --bench hessian` (digits_mlp_f64_gelu rows):
the exact Hessian-vector product of one weight matrix's block (double backward restricted to
that matrix) of a 64-128-128-10 MLP with tanh-form GELU and mean cross-entropy, f64, full
batch of 1797 rows, one thread; also the whole-model HVP. Timing depends on the shapes, not
the values: the data and weights are seeded random. Prints medians of 20 runs in ms.

    python3 scripts/mlp_block_timing.py
"""
import time

import torch

torch.set_num_threads(1)
torch.manual_seed(0)
n, widths = 1797, [64, 128, 128, 10]
x = torch.rand(n, 64, dtype=torch.float64) * 16
y = torch.randint(0, 10, (n,))
params = []
for fi, fo in zip(widths[:-1], widths[1:]):
    params.append((torch.randn(fi, fo, dtype=torch.float64) * (1.0 / fi) ** 0.5).requires_grad_())
    params.append(torch.zeros(fo, dtype=torch.float64).requires_grad_())


def loss_fn():
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i + 2 < len(params):
            h = torch.nn.functional.gelu(h, approximate="tanh")
    return torch.nn.functional.cross_entropy(h, y)


def block_hvp(i, v):
    (g,) = torch.autograd.grad(loss_fn(), [params[i]], create_graph=True)
    (hv,) = torch.autograd.grad(g, [params[i]], grad_outputs=v)
    return hv


def full_hvp(vs):
    gs = torch.autograd.grad(loss_fn(), params, create_graph=True)
    return torch.autograd.grad(gs, params, grad_outputs=vs)


def median_ms(f, reps=20):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1e3 * times[len(times) // 2]


for layer in range(3):
    i = 2 * layer
    v = torch.randn_like(params[i])
    print(f"fc{layer + 1}.weight block HVP: {median_ms(lambda: block_hvp(i, v)):.2f} ms")
vs = [torch.randn_like(p) for p in params]
print(f"whole-model HVP: {median_ms(lambda: full_hvp(vs)):.2f} ms")
