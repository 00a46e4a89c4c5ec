"""Kernels a callable runs, seen by the PyTorch profiler (which sees the kernels inside a graph
replay too), and their GPU time by kernel family.
"""
from __future__ import annotations

import torch


def profile_kernels(fn) -> list[tuple[str, float]]:
    """(name, GPU us) of every kernel one call of `fn` runs, from the PyTorch profiler (which
    sees the kernels inside a graph replay too). Copies and memsets are left out."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [(e.name, e.device_time) for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA
            and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]


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
