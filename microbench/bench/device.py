"""The device's ceilings, measured: device-to-device copy bandwidth (bytes read + written over
time, and its curve against size) and the dense matrix rate. The model divides by these.
"""
from __future__ import annotations

import torch

from microbench.bench.timing import gpu_time_us, graph_of
from microbench.stats import fit_linear


COPY_SIZES = tuple(1 << k for k in range(16, 29, 2))  # 64 KiB .. 256 MiB


def copy_curve(device, sizes=COPY_SIZES, reps: int = 10, **kw) -> dict:
    """Copy time against size, each inside a graph of `reps` copies (no host in it), fitted as
    t = fixed + bytes_moved / bw: `fixed` is what any kernel pays before bandwidth counts."""
    src = torch.empty(max(sizes), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    pts = []
    for n in sizes:
        g = graph_of(lambda n=n: dst[:n].copy_(src[:n]), reps)
        pts.append((2 * n, gpu_time_us(g.replay, inner=5, **kw).median / reps))
        del g
    fixed, per_byte = fit_linear(*zip(*pts), relative=True)
    return dict(points=[dict(bytes=b, us=t) for b, t in pts], fixed_us=fixed,
                bytes_per_s=1e6 / per_byte if per_byte > 0 else None)


def copy_bandwidth(device, nbytes: int = 1 << 30, **kw) -> dict:
    """Device-to-device copy: (bytes read + bytes written) / time, in bytes/s."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    st = gpu_time_us(lambda: dst.copy_(src), inner=5, **kw)
    return dict(bytes_per_s=2 * nbytes / (st.median * 1e-6), time_us=st.to_dict(), nbytes=nbytes)


def matmul_rate(device, n: int = 8192, dtype=torch.bfloat16, **kw) -> dict:
    """Dense n x n x n matmul on random data: flops / time."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    st = gpu_time_us(lambda: a @ b, inner=5, **kw)
    return dict(flops_per_s=2 * n ** 3 / (st.median * 1e-6), time_us=st.to_dict(), n=n)
