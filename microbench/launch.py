"""Launch microbenchmarks and the device's ceilings.

- host time to enqueue one kernel, per launcher: a tiny PyTorch op, a cuBLAS matmul through
  F.linear, a Triton kernel through its JIT launcher, a raw CUDA kernel through CuPy;
- GPU time per kernel when those kernels run back to back (inside a graph, so the host is out);
- graph replay host time and GPU time for graphs of 1, 10, 100 and 1000 nodes, fitted as a fixed
  cost plus a cost per node;
- device-to-device copy bandwidth (bytes read + written over time) and the bf16 matrix rate;
- kernels launched by a callable, counted by the profiler.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from microbench.timing import Stats, gpu_time_us, host_time_us

NODE_COUNTS = (1, 10, 100, 1000)
CUPY_SRC = r'extern "C" __global__ void add_one(float* x, int n) {' \
           r' int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] += 1.0f; }'


def launchers(device) -> dict:
    """name -> zero-argument callable that launches exactly one small kernel."""
    from kernels.noop import add_one
    x = torch.zeros(64, device=device)
    a = torch.randn(1, 64, device=device)
    w = torch.randn(64, 64, device=device)
    out = {
        "torch": lambda: x.add_(1.0),
        "cublas": lambda: F.linear(a, w),
        "triton": lambda: add_one(x),
    }
    cupy_fn = _cupy_launcher(x)
    if cupy_fn is not None:
        out["cupy"] = cupy_fn
    return out


def _cupy_launcher(x):
    try:
        import cupy
    except ImportError:
        return None
    kern = cupy.RawKernel(CUPY_SRC, "add_one")
    cx = cupy.from_dlpack(x)
    n = np.int32(x.numel())
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)

    def launch():
        kern((1,), (64,), (cx, n), stream=stream)
    return launch


def fit_linear(xs, ys) -> tuple[float, float]:
    """Least-squares y = a + b·x; returns (a, b)."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def _graph_of(fn, n: int):
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # warm (JIT, lazy init) outside the capture
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    torch.cuda.synchronize()
    return g


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


def measure_launch(device="cuda", budget_s: float = 1.0) -> dict:
    """All launch figures; every Stats is in microseconds."""
    kw = dict(budget_s=budget_s)
    result = dict(host_us={}, gpu_us_per_kernel={}, replay={}, notes=[])
    fns = launchers(device)
    if "cupy" not in fns:
        result["notes"].append("cupy not installed: raw CUDA launcher skipped "
                               "(pip install 'microbench[cupy]')")
    for name, fn in fns.items():
        # 100 launches per sample: the per-launch host cost, with the queue far from full.
        result["host_us"][name] = host_time_us(fn, inner=100, **kw).to_dict()
        g = _graph_of(fn, 100)
        result["gpu_us_per_kernel"][name] = _scaled(gpu_time_us(g.replay, inner=10, **kw), 0.01)
        del g
    host, gpu = [], []
    for n in NODE_COUNTS:
        g = _graph_of(fns["torch"], n)
        h = host_time_us(g.replay, inner=1, **kw)
        d = gpu_time_us(g.replay, inner=10, **kw)
        result["replay"][str(n)] = dict(host_us=h.to_dict(), gpu_us=d.to_dict())
        host.append(h.median)
        gpu.append(d.median)
        del g
    result["replay_fit"] = dict(zip(("host_fixed_us", "host_per_node_us"),
                                    fit_linear(NODE_COUNTS, host)))
    result["replay_fit"].update(zip(("gpu_fixed_us", "gpu_per_node_us"),
                                    fit_linear(NODE_COUNTS, gpu)))
    # Host round trip of waiting for the GPU: launch one tiny kernel and synchronise, less the
    # launch itself. Every decode step pays it once (its logits must come back).
    x = torch.zeros(64, device=device)

    def launch_and_sync():
        x.add_(1.0)
        torch.cuda.synchronize()
    rt = host_time_us(launch_and_sync, inner=1, **kw)
    t = result["host_us"]["torch"]["median"]
    result["sync_us"] = dict(median=rt.median - t, p20=rt.p20 - t, p80=rt.p80 - t, n=rt.n)
    result["copy"] = copy_bandwidth(device, **kw)
    result["matmul"] = matmul_rate(device, **kw)
    return result


def _scaled(st: Stats, f: float) -> dict:
    return dict(median=st.median * f, p20=st.p20 * f, p80=st.p80 * f, n=st.n)


def count_kernels(fn) -> int:
    """GPU kernels one call of `fn` launches, counted by the PyTorch profiler."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower())
