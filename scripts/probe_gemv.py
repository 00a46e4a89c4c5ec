"""Probe: the skinny matmul's bandwidth per (BLOCK_N, num_warps, stages) at the presets' shapes,
against cuBLAS, with the L2 defeated (each graph cycles through enough weight copies to pass
4x the L2), and a check that a row's result does not depend on the batch. Prints a table."""
import itertools
import sys

import torch
import torch.nn.functional as F
import triton

from kernels import gemv as G
from microbench.config import PRESETS
from microbench.launch import copy_bandwidth, graph_of
from microbench.timing import gpu_time_us

dev = torch.device("cuda")
L2 = 50 << 20
copy = copy_bandwidth(dev, budget_s=0.3)["bytes_per_s"]
print(f"copy bandwidth {copy / 1e12:.2f} TB/s")


def launch(x, w, y, cfg, B):
    BN, warps, stages = cfg
    BK = 256 * warps
    G._gemv_kernel[(triton.cdiv(w.shape[0], BN),)](
        x, x, w, w, y, y, w.shape[0], x.stride(0), x.stride(0), w.stride(0), y.stride(0), y.stride(0), 0.0,
        B=B, K=w.shape[1], PRO=0, HAS_RES=False, BLOCK_B=triton.next_power_of_2(B), BLOCK_N=BN,
        BLOCK_K=BK, STAGES=stages, num_warps=warps)


def timed(fns, nbytes):
    it = itertools.cycle(fns)
    reps = max(20, len(fns))
    g = graph_of(lambda: next(it)(), reps)
    st = gpu_time_us(g.replay, inner=3, budget_s=0.15)
    t = st.median / reps
    return t, nbytes / (t * 1e-6) / copy


shapes = []
for p in ("opt-125m", "llama-1b"):
    s = PRESETS[p]
    shapes += [(p, "qkv", s.hidden, s.qkv_size), (p, "o", s.q_size, s.hidden), (p, "gate_up", s.hidden, 2 * s.ffn),
               (p, "down", s.ffn, s.hidden), (p, "lm_head", s.hidden, s.vocab)]
cfgs = [(bn, w, st) for bn in (4, 8, 16, 32) for w in (2, 4, 8) for st in (1, 3)]
best = {}
for (p, name, K, N) in shapes:
    nb = N * K * 2
    copies = max(1, -(-4 * L2 // nb))
    ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) for _ in range(copies)]
    for B in (1, 4):
        x = torch.randn(B, K, device=dev, dtype=torch.bfloat16)
        y = torch.empty(B, N, device=dev, dtype=torch.bfloat16)
        t_cb, f_cb = timed([lambda w=w: F.linear(x, w, out=None) for w in ws], nb)
        res = []
        for cfg in cfgs:
            if triton.next_power_of_2(B) * cfg[0] * 8 > 256:
                continue
            try:
                t, f = timed([lambda w=w, cfg=cfg: launch(x, w, y, cfg, B) for w in ws], nb)
            except Exception as e:  # out of resources
                print("fail", cfg, str(e).splitlines()[0][:80]); continue
            res.append((t, f, cfg))
        res.sort()
        t, f, cfg = res[0]
        best[(p, name, B)] = cfg
        top = " ".join(f"{c}:{ff:.0%}" for _, ff, c in res[:4])
        print(f"{p:9s} {name:8s} B={B} N={N:6d} K={K:5d} cublas {t_cb:7.2f}us {f_cb:4.0%} | best triton {t:7.2f}us {f:4.0%} {cfg} | {top}", flush=True)
    del ws
# rows independent of the batch: B=1 against B=4 and 8 for one config per shape
for (p, name, K, N) in shapes[:5]:
    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
    x = torch.randn(8, K, device=dev, dtype=torch.bfloat16)
    outs = {}
    for B in (1, 3, 4, 8):
        y = torch.empty(B, N, device=dev, dtype=torch.bfloat16)
        launch(x[:B], w, y, best[(p, name, 1)], B)
        outs[B] = y
    same = all(torch.equal(outs[1][0], outs[B][0]) for B in (3, 4, 8))
    print(f"row independence {p} {name}: {same}")
