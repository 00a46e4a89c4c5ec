"""Probe: the fused skinny matmuls (kernels/gemv.py) at one row, per launch config, with
programmatic dependent launch on and off, against cuBLAS, at opt-125m's and llama-1b's shapes;
then whole bs-1 decode steps (full graph) with PDL on and off, and where their GPU time goes.
Weights are cycled past the L2 (each graph streams 4x the L2 of weight copies), as in a step.
Prints tables; the best config per shape is the last column."""
import itertools
import time

import torch
import torch.nn.functional as F
import triton

import kernels._compat as compat
import microbench.kernels.gemv as G
from microbench.engine.shapes import PRESETS
from microbench.bench.launch import copy_bandwidth, graph_of, kernel_breakdown, profile_kernels
from microbench.bench.timing import gpu_time_us

dev = torch.device("cuda")
L2 = 50 << 20
copy = copy_bandwidth(dev, budget_s=0.3)["bytes_per_s"]
print(f"copy bandwidth {copy / 1e12:.3f} TB/s", flush=True)


def launch(x, nw, w, r, y, n_out, norm, epi, cfg, pdl):
    BN, warps, stages, kv = cfg
    G._gemv_kernel[(triton.cdiv(n_out, BN),)](
        x, nw, w, r, y, n_out, x.stride(0), w.stride(0), r.stride(0), y.stride(0), 1e-5,
        B=x.shape[0], K=x.shape[1], NORM=norm, EPI=epi, BLOCK_B=1, BLOCK_N=BN,
        BLOCK_K=8 * 32 * warps * kv, STAGES=stages, USE_PDL=compat.pdl_mode(pdl), num_warps=warps,
        **({"launch_pdl": True} if pdl else {}))


def timed(fns, nbytes):
    it = itertools.cycle(fns)
    reps = max(24, len(fns))
    g = graph_of(lambda: next(it)(), reps)
    t = gpu_time_us(g.replay, inner=3, budget_s=0.12).median / reps
    return t, nbytes / (t * 1e-6) / copy


import os
CFGS = [(2, 4, 3, 1), (4, 4, 3, 1), (8, 4, 3, 1), (4, 4, 2, 1), (4, 4, 4, 1), (2, 4, 3, 2),
        (4, 4, 3, 2), (2, 8, 3, 1), (4, 8, 3, 1), (1, 4, 3, 2), (8, 8, 3, 1), (2, 8, 3, 2)]
if os.environ.get("PROBE_STEPS_ONLY"):
    CFGS = []
t0 = time.time()
print(f"{'shape':24s} {'cuBLAS':>13s} | {'default':>13s} {'no PDL':>6s} | best config (BN, warps, stages, vec)", flush=True)
for p in ("opt-125m", "llama-1b") if CFGS else ():
    s = PRESETS[p]
    for name, K, N, norm, epi in (("qkv+norm", s.hidden, s.qkv_size, True, 0),
                                  ("o+res", s.q_size, s.hidden, False, 1),
                                  ("gate_up+norm+swiglu", s.hidden, 2 * s.ffn, True, 2),
                                  ("down+res", s.ffn, s.hidden, False, 1),
                                  ("lm_head+norm", s.hidden, s.vocab, True, 0)):
        nb = N * K * 2
        ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) * K ** -0.5
              for _ in range(max(1, -(-4 * L2 // nb)))]
        n_out = N // 2 if epi == 2 else N
        x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
        nw = torch.randn(K, device=dev, dtype=torch.bfloat16)
        r = torch.randn(1, n_out, device=dev, dtype=torch.bfloat16)
        y = torch.empty(1, n_out, device=dev, dtype=torch.bfloat16)
        t_cb, f_cb = timed([lambda w=w: F.linear(x, w) for w in ws], nb)
        res = {}
        for cfg in CFGS:
            for pdl in (True, False) if cfg == CFGS[1] else (True,):
                try:
                    res[cfg, pdl] = timed([lambda w=w, cfg=cfg, pdl=pdl: launch(x, nw, w, r, y, n_out, norm, epi, cfg, pdl)
                                           for w in ws], nb)
                except Exception as e:  # out of resources
                    print("  fail", cfg, str(e).splitlines()[0][:80])
        best = min((k for k in res if k[1]), key=lambda k: res[k][0])
        print(f"{p + ' ' + name:24s} {t_cb:6.2f}us {f_cb:4.0%} | {res[CFGS[1], True][0]:6.2f}us "
              f"{res[CFGS[1], True][1]:4.0%} {res[CFGS[1], False][1]:5.0%} | {best[0]} {res[best][0]:6.2f}us "
              f"{res[best][1]:4.0%}  others: " + " ".join(f"{c[0]}:{v[1]:.0%}" for c, v in sorted(res.items(), key=lambda kv: kv[1][0])[:5] if c[1]),
              flush=True)
        del ws
print(f"config probe took {time.time() - t0:.0f} s", flush=True)

# whole steps: bs 1, full graph, context 512: the plan before the fused attention (rope_store_kv
# and attention's reduce kernel), the fused attention with and without PDL, and skinny-matmul
# configs other than config()'s, tried inside the whole step (kernels.gemv.OVERRIDES)
import importlib
A = importlib.import_module("kernels.decode_attention")  # the package exports a function of that name
from microbench.engine.runner import GraphRunner
from microbench.bench.timing import step_time_us
from probe_common import bs1_decoder


def cfg(bn, bk, warps, stages=3, ahead=0):
    return dict(BLOCK_N=bn, BLOCK_K=bk, STAGES=stages, num_warps=warps, AHEAD=ahead)


def variants(s):
    """(label, options): ov = gemv overrides by (N, K); att = rope_store_attention overrides;
    split = split launch; fuse_attention=False = the plan before the fused attention."""
    h, F, qkv = s.hidden, s.ffn, s.qkv_size
    out = [("fused attention", {})]
    if os.environ.get("PROBE_OLD_PLANS"):
        out += [("fused attention, split launch", dict(split=True)),
                ("rope_store_kv + reduce kernel", dict(fuse_attention=False))]
    if os.environ.get("PROBE_DOWN"):
        # down (K = ffn) with one chunk ahead: two chunks' loads in flight per program
        for bn, bk in ((2, 4096), (2, 2048), (4, 2048), (1, 4096), (2, 1024), (4, 1024)):
            if bk < F:
                out.append((f"down BN {bn} BK {bk} ahead", dict(ov={(h, F): cfg(bn, bk, 4, ahead=1)})))
    if os.environ.get("PROBE_ATTENTION"):
        # the fused attention's split count, tile and warps
        for att in (dict(num_splits=1), dict(num_splits=2), dict(num_splits=3), dict(block_n=64),
                    dict(num_warps=2), dict(num_warps=8), dict(block_n=64, num_warps=2)):
            out.append(("attention " + ", ".join(f"{k} {v}" for k, v in att.items()), dict(att=att)))
    if os.environ.get("PROBE_RAW"):
        # one-chunk matmuls holding their weights in bf16 while they wait (AHEAD with one chunk:
        # converted after the wait), so more programs of the next kernels fit beside them
        bk = 2048 if h > 1024 else 1024
        raw = lambda *ns: {(n, h): cfg(4, bk, 4, ahead=1) for n in ns}
        out += [("hold raw: o", dict(ov=raw(h))),
                ("hold raw: o, gate/up", dict(ov=raw(h, 2 * F))),
                ("hold raw: qkv, o, gate/up", dict(ov=raw(qkv, h, 2 * F))),
                ("hold raw: qkv, o, gate/up, lm", dict(ov=raw(qkv, h, 2 * F, s.vocab))),
                ("hold raw: gate/up", dict(ov=raw(2 * F))),
                ("o BN 8", dict(ov={(h, h): cfg(8, bk, 4)})),
                ("o BN 8, hold raw", dict(ov={(h, h): cfg(8, bk, 4, ahead=1)}))]
    # gate/up in two chunks, one ahead
    if h > 1024:
        for bn in (2, 4, 8):
            out.append((f"gate/up BN {bn} BK 1024 ahead", dict(ov={(2 * F, h): cfg(bn, 1024, 4, ahead=1)})))
    out.append(("fused attention (again)", {}))
    return out


for p in ("opt-125m", "llama-1b"):
    dec, x, nb = bs1_decoder(p, dev)
    outs = {}
    for label, kw in variants(dec.shape):
        dec.fuse_attention = kw.get("fuse_attention", True)
        compat.PDL = kw.get("pdl", True)
        G.OVERRIDES.clear()
        G.OVERRIDES.update({k: v for k, v in kw.get("ov", {}).items() if k[1] >= v["BLOCK_K"] // 2})
        A.FUSED_OVERRIDES.clear()
        A.FUSED_OVERRIDES.update(kw.get("att", {}))
        try:
            runner = GraphRunner(dec, [1], mode="full", progress=False, split_launch=kw.get("split", False))
            runner.capture()
        except Exception as e:  # a config out of resources
            print(f"{p} bs1 {label:34s}: failed: {str(e).splitlines()[0][:100]}", flush=True)
            continue
        g = runner.entries[1].graphs[0]
        t = gpu_time_us(g.replay, inner=10, budget_s=0.5).median
        _, wall = step_time_us(lambda: runner.step_packed(x), inner=20, sync_each=True, budget_s=0.5)
        outs[label] = runner.step_packed(x).clone()
        ks = profile_kernels(g.replay)
        br = kernel_breakdown(ks)
        print(f"{p} bs1 {label:34s}: replay {t:7.1f} us GPU {nb / (t * 1e-6) / copy:4.0%}, step (synced) "
              f"{wall.median:7.1f} us {nb / (wall.median * 1e-6) / copy:4.0%} of copy bw; {len(ks)} kernels: "
              + ", ".join(f"{k} {v['us']:.0f} ({v['n']})" for k, v in sorted(br.items(), key=lambda kv: -kv[1]['us'])),
              flush=True)
        runner.close()
    dec.fuse_attention, compat.PDL = True, True
    G.OVERRIDES.clear()
    A.FUSED_OVERRIDES.clear()
    ref = outs["fused attention"].float()
    print(f"{p}: max |logit diff| against the fused attention: "
          + ", ".join(f"{k}: {float((o.float() - ref).abs().max()):.4f}" for k, o in outs.items()), flush=True)
    del dec
    torch.cuda.empty_cache()
