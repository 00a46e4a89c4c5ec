"""Capture helpers the graph runner and the device probes share: one side stream per device,
cuBLAS workspaces allocated inside each capture, and what a private memory pool holds."""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def side_stream(device_index: int) -> torch.cuda.Stream:
    """One warm-up and capture stream per device. cuBLAS keeps a workspace per stream it has
    run on and never frees it, so a fresh stream per runner would leak one workspace each."""
    return torch.cuda.Stream(device=device_index)


def fresh_cublas_workspaces():
    """Drop cuBLAS's cached per-stream workspaces (before and after each capture), so the
    workspace a graph's GEMMs write into is allocated during the capture, in the graph's own
    pool. Otherwise a graph keeps pointing at a workspace allocated outside it, which anyone may
    free: Inductor's CUDA-graph trees (torch.compile mode="reduce-overhead") clear the
    workspaces around each recording, and the next replay of a graph holding cuBLAS GEMMs would
    write freed memory."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


def pool_bytes(pool_id) -> int:
    """Device memory held by the caching allocator's private pool `pool_id`."""
    pid = tuple(pool_id)
    return sum(seg["total_size"] for seg in torch.cuda.memory_snapshot()
               if tuple(seg.get("segment_pool_id", ())) == pid)
