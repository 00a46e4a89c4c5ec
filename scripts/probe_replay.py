"""Probe: host cost of one CUDA-graph replay against what the graph holds. Graphs of n nodes of
a tiny torch op, a tiny Triton kernel, a small cuBLAS matmul, and the decoder's own step."""
import sys
import time

import torch
import torch.nn.functional as F

from microbench.kernels.noop import add_one
from microbench.bench.launch import graph_of


def host_us(fn, reps=200):
    xs = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        xs.append((time.perf_counter() - t0) * 1e6)
    xs.sort()
    return xs[len(xs) // 2]


x = torch.zeros(64, device="cuda")
a, w = torch.randn(1, 64, device="cuda"), torch.randn(64, 64, device="cuda")
for name, fn in (("torch add_", lambda: x.add_(1.0)), ("triton add_one", lambda: add_one(x)),
                 ("cublas linear", lambda: F.linear(a, w))):
    for n in (1, 150, 1000):
        g = graph_of(fn, n)
        print(f"{name:15s} nodes {n:5d}: replay host {host_us(g.replay):7.1f} us", flush=True)
sys.stdout.flush()

# The decoder's own ops at opt-125m decode shapes (bs 1), 150 nodes of each kind, and the
# decoder's whole step: which part of a real graph makes its replay cost the host more?
from microbench.engine.shapes import PRESETS  # noqa: E402
from microbench.engine.decoder import ToyDecoder  # noqa: E402

for preset in ("tiny", "opt-125m"):
    dec = ToyDecoder(PRESETS[preset], max_batch=4, max_seq=576, device="cuda")
    dec.fill_cache(512)
    s, L = dec.shape, dec.layers[0]
    t = torch.zeros(1, dtype=torch.long, device="cuda")
    p = torch.full((1,), 512, dtype=torch.long, device="cuda")
    sl = torch.zeros(1, dtype=torch.long, device="cuda")
    x = torch.randn(1, s.hidden, device="cuda", dtype=dec.dtype)
    q = torch.randn(1, s.n_heads, s.head_dim, device="cuda", dtype=dec.dtype)
    seq = dec.seq_lens_for(p)
    cases = {
        "step": (lambda: dec.step(t, p, sl), 1),
        "qkv linear": (lambda: F.linear(x, L["wqkv"]), 150),
        "lm_head linear": (lambda: F.linear(x, dec.embed), 150),
        "rmsnorm": (lambda: dec.ops.rmsnorm(x, L["attn_norm"], 1e-5, residual=x), 150),
        "attention": (lambda: dec.attention(0, q, sl, seq), 75),
    }
    for name, (fn, n) in cases.items():
        g = graph_of(fn, n)
        print(f"{preset:8s} {name:15s} x{n:4d}: replay host {host_us(g.replay):7.1f} us", flush=True)
        del g
