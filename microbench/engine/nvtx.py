"""Named ranges around a run's phases (capture of each size, warm-up, each arm's timed steps,
each replay family), so that Nsight Systems shows them as NVTX ranges and the PyTorch profiler
as `record_function` ranges. Without CUDA the NVTX side is a no-op; the profiler range costs a
few microseconds, so ranges wrap phases, never single steps.
"""
from __future__ import annotations

import functools
import time
from contextlib import contextmanager

import torch


@functools.lru_cache(maxsize=None)
def _nvtx():
    # torch.cuda.nvtx raises on a build or a machine without CUDA: None means "no NVTX"
    return torch.cuda.nvtx if torch.cuda.is_available() else None


@contextmanager
def nvtx_range(name: str):
    """`with nvtx_range("capture size 8"):` an NVTX range and a profiler range named `name`."""
    nv = _nvtx()
    if nv is not None:
        nv.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if nv is not None:
            nv.range_pop()


@contextmanager
def phase(name: str, on_phase=None):
    """A named range that also tells `on_phase(name, seconds)` when it starts (seconds None) and
    when it ends (the seconds it took), for a progress display of a long phase."""
    t0 = time.perf_counter()
    if on_phase is not None:
        on_phase(name, None)
    with nvtx_range(name):
        yield
    if on_phase is not None:
        on_phase(name, time.perf_counter() - t0)
