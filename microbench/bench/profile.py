"""Kernels a callable runs, seen by the PyTorch profiler (which sees the kernels inside a graph
replay too), their GPU time by kernel family, and a trace of named steps for Perfetto.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile

from microbench.engine.nvtx import nvtx_range


@contextmanager
def quiet_profile(activities):
    """torch.profiler.profile(activities=...) without its "Profiler clears events at the end of
    each cycle" UserWarning: it is about profiling schedules, which these one-shot profiles do
    not use, and means nothing to a user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Profiler clears events", category=UserWarning)
        with profile(activities=activities) as prof:
            yield prof


def kernel_spans(fn) -> list[tuple[str, float, float]]:
    """(name, start us, end us) of every kernel one call of `fn` runs, on the profiler's GPU
    timeline, from the PyTorch profiler (which sees the kernels inside a graph replay too).
    Copies and memsets are left out."""
    fn()
    torch.cuda.synchronize()
    with quiet_profile([ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA
            and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]


def profile_kernels(fn) -> list[tuple[str, float]]:
    """(name, GPU us) of every kernel one call of `fn` runs (kernel_spans' lengths)."""
    return [(name, end - start) for name, start, end in kernel_spans(fn)]


def busy_us(spans) -> float:
    """How long at least one of `spans` ((name, start, end), kernel_spans's) was running: the
    length of their union. Kernels launched with PDL start before the one ahead of them ends,
    so the sum of their lengths counts the overlap twice; the union never exceeds the time from
    the first start to the last end."""
    total, reach = 0.0, float("-inf")
    for _, start, end in sorted(spans, key=lambda s: s[1]):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def count_kernels(fn) -> int:
    """GPU kernels one call of `fn` launches."""
    return len(profile_kernels(fn))


KERNEL_FAMILIES = (("_rope_attend", "decode_attention"), ("_split_kernel", "decode_attention"), ("_reduce_kernel", "attention_reduce"),
                   ("_gemv", "matmul"), ("_rope_store_kv", "rope_store_kv"),
                   ("_rmsnorm", "rmsnorm"), ("_rope", "rope"), ("_store_kv", "store_kv"),
                   ("_swiglu", "swiglu"), ("gemm", "matmul"), ("gemv", "matmul"),
                   ("cutlass", "matmul"), ("sm90", "matmul"), ("index", "embedding"),
                   ("_embed_kernel", "embedding"))


def kernel_breakdown(kernels: list[tuple[str, float]]) -> dict:
    """GPU us and count per kernel family (attention, norms, matmuls, ...)."""
    out: dict = {}
    for name, us in kernels:
        fam = next((f for key, f in KERNEL_FAMILIES if key in name.lower()), "other")
        d = out.setdefault(fam, dict(n=0, us=0.0))
        d["n"] += 1
        d["us"] += us
    return out


def trace_steps(steps: dict, on_trace) -> None:
    """One call of each of `steps` (name -> callable), each inside a range of its name, under
    the PyTorch profiler (host and, with CUDA, GPU activity); each step runs once before, so
    the trace holds no first-call costs. Hands the profiler to `on_trace(prof)`, which writes
    it (prof.export_chrome_trace(path): a Chrome trace that Perfetto opens)."""
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for fn in steps.values():
        fn()
    sync()
    acts = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with quiet_profile(acts) as prof:
        for name, fn in steps.items():
            with nvtx_range(name):
                fn()
                sync()
    on_trace(prof)
