"""Probe: host cost of one CUDA-graph replay against what the graph holds. Graphs of n nodes of
a tiny torch op, a tiny Triton kernel, a small cuBLAS matmul, and the decoder's own step."""
import sys
import time

import torch
import torch.nn.functional as F

from kernels.noop import add_one


def graph_of(fn, n):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    torch.cuda.synchronize()
    return g


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
