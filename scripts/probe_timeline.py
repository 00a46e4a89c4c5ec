"""Probe: where a synchronised bs-1 graph step's time goes, from one profiled step's timeline
(PyTorch profiler, CUDA kernels inside the replay included). For each plan: the replay alone
and with the input copy, back to back (GPU time); the synchronised step (wall); the host's
calls; and per kernel family the marginal time (a kernel's end less the end of the kernel
before it: with PDL they overlap, and these marginals sum to the step's kernel span)."""
import os
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from microbench.engine.shapes import PRESETS
from microbench.engine.decoder import ToyDecoder
from microbench.engine.runner import GraphRunner
from microbench.bench.launch import KERNEL_FAMILIES, copy_bandwidth
from microbench.bench.sweep import max_seq_for
from microbench.bench.timing import gpu_time_us, host_time_us, step_time_us
from probe_common import bs1_decoder

dev = torch.device("cuda")
copy = copy_bandwidth(dev, budget_s=0.3)["bytes_per_s"]
print(f"copy bandwidth {copy / 1e12:.3f} TB/s", flush=True)
CUDA = torch.autograd.DeviceType.CUDA


def fam(name):
    return next((f for key, f in KERNEL_FAMILIES if key in name.lower()), name[:24])


for p in ("opt-125m", "llama-1b"):
    dec, x, nb = bs1_decoder(p, dev)
    plans = (("fused attention", True, False), ("fused attention, split launch", True, True),
             ("rope_store_kv + reduce", False, False))
    for label, fa, split in plans[:None if os.environ.get("PROBE_OLD_PLANS") else 1]:
        dec.fuse_attention = fa
        runner = GraphRunner(dec, [1], mode="full", progress=False, split_launch=split)
        runner.capture()
        g = runner.entries[1].graphs[0]
        step = lambda: runner.step_packed(x)
        replay = gpu_time_us(g.replay, inner=10, budget_s=0.5).median
        with_copy = gpu_time_us(step, inner=10, budget_s=0.5).median
        _, wall = step_time_us(step, inner=20, sync_each=True, budget_s=0.5)
        host = host_time_us(step, budget_s=0.3).median
        print(f"{p} {label}: replay {replay:.1f} us, copy+replay {with_copy:.1f} us (GPU, back to back); "
              f"synced step {wall.median:.1f} us = {nb / (wall.median * 1e-6) / copy:.1%} of copy bw; "
              f"host of step_packed {host:.1f} us", flush=True)
        for _ in range(10):
            step()
            torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(6):
                step()
                torch.cuda.synchronize()
        evs = list(prof.events())
        ks = sorted((e for e in evs if e.device_type == CUDA), key=lambda e: e.time_range.start)
        api = sorted((e for e in evs if e.device_type != CUDA and e.name.startswith("cuda")),
                     key=lambda e: e.time_range.start)
        launches = [e for e in api if e.name == "cudaGraphLaunch"][::len(runner.entries[1].graphs)]
        syncs = [e for e in api if "Synchronize" in e.name]
        copies = [e for e in api if "Memcpy" in e.name]
        # split the kernels into steps at the graph launches
        rows = []
        for i in range(1, len(launches) - 1):
            t0, t1 = launches[i].time_range.start, launches[i + 1].time_range.start
            mine = [k for k in ks if t0 - 50 <= k.time_range.start < t1 - 50]
            cp = [c for c in copies if launches[i - 1].time_range.end < c.time_range.start <= t0]
            sy = [s for s in syncs if s.time_range.start >= launches[i].time_range.end][0]
            kern = [k for k in mine if "memcpy" not in k.name.lower()]
            first, last = kern[0], max(kern, key=lambda k: k.time_range.end)
            prev_sync_end = [s for s in syncs if s.time_range.end <= (cp[0].time_range.start if cp else t0)]
            marg: dict = {}
            end = first.time_range.start
            for k in kern:
                m = max(0.0, k.time_range.end - end)
                end = max(end, k.time_range.end)
                d = marg.setdefault(fam(k.name), [0.0, 0])
                d[0] += m
                d[1] += 1
            rows.append(dict(
                gap_before=(cp[0].time_range.start if cp else t0) - (prev_sync_end[-1].time_range.end if prev_sync_end else t0),
                copy_api=(cp[0].time_range.end - cp[0].time_range.start) if cp else 0.0,
                launch_api=launches[i].time_range.end - launches[i].time_range.start,
                launch_to_first=first.time_range.start - t0,
                span=last.time_range.end - first.time_range.start,
                last_to_sync_end=sy.time_range.end - last.time_range.end,
                cycle=launches[i + 1].time_range.start - t0, n=len(kern), marg=marg))
        med = lambda key: statistics.median(r[key] for r in rows)
        print(f"  per step (median of {len(rows)}): Python before copy {med('gap_before'):.1f} us, copy API "
              f"{med('copy_api'):.1f}, graph launch API {med('launch_api'):.1f}, launch start -> first kernel "
              f"{med('launch_to_first'):.1f}, kernels' span {med('span'):.1f} ({rows[0]['n']} kernels), last "
              f"kernel end -> sync returns {med('last_to_sync_end'):.1f}; launch to launch {med('cycle'):.1f} us")
        r = rows[len(rows) // 2]
        print("  marginal us by family: " + ", ".join(
            f"{f} {v[0]:.1f} ({v[1]})" for f, v in sorted(r["marg"].items(), key=lambda kv: -kv[1][0])))
        # one middle layer, kernel by kernel
        mid = [k for k in ks if launches[2].time_range.start <= k.time_range.start < launches[3].time_range.start]
        mid = [k for k in mid if "memcpy" not in k.name.lower()]
        j = (1 if fa else 3) + (5 if fa else 7) * 7   # the step's leading kernels, then 7 layers
        base = mid[0].time_range.start
        print("  kernels of a middle layer (start, end, us from the step's first kernel): " + "; ".join(
            f"{fam(k.name)} {k.time_range.start - base:.1f}-{k.time_range.end - base:.1f}"
            for k in mid[j:j + (6 if fa else 8)]), flush=True)
        runner.close()
    dec.fuse_attention = True
    del dec
    torch.cuda.empty_cache()

# ---- the host's cost of launching a graph: which nodes make it dear? -------------------------
import time  # noqa: E402

import kernels  # noqa: E402
import kernels._compat as compat  # noqa: E402
from microbench.bench.launch import graph_of  # noqa: E402


def replay_host_us(g, reps=200):
    xs = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        g.replay()
        xs.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(xs)


dec = ToyDecoder(PRESETS["llama-1b"], max_batch=1, max_seq=max_seq_for(512), device=dev)
dec.fill_cache(512)
s = dec.shape
t1 = torch.zeros(1, dtype=torch.long, device=dev)
pos = torch.full((1,), 512, dtype=torch.long, device=dev)
h = torch.randn(1, s.hidden, device=dev, dtype=dec.dtype)
qkv = torch.randn(1, s.qkv_size, device=dev, dtype=dec.dtype)
seq = dec.seq_lens_for(pos)
w_small = torch.randn(256, s.hidden, device=dev, dtype=dec.dtype)
for pdl in (True, False):
    compat.PDL = pdl
    cases = {"llama-1b step (84 kernels)": (lambda: dec.step(t1, pos, t1), 1),
             "skinny matmul, 256 rows": (lambda: kernels.linear(h, w_small), 84),
             "fused attention": (lambda: dec.attention(0, qkv, t1, seq), 84),
             "torch embedding gather": (lambda: dec.embed[t1], 84)}
    for name, (fn, n) in cases.items():
        g = graph_of(fn, n)
        print(f"graph launch host, PDL {'on ' if pdl else 'off'}: {name:28s} x{n:3d}: {replay_host_us(g):6.1f} us",
              flush=True)
        del g
compat.PDL = True
x = torch.zeros(3, 1, dtype=torch.long, device=dev)
buf = torch.zeros(3, 1, dtype=torch.long, device=dev)
xs = []
for _ in range(200):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    buf.copy_(x)
    xs.append((time.perf_counter() - t0) * 1e6)
print(f"input copy (copy_ of [3, 1] int64) host: {statistics.median(xs):.1f} us", flush=True)
