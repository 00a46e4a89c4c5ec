"""Launch costs: host time to enqueue one kernel, per launcher (a tiny PyTorch op, a cuBLAS
matmul through F.linear, a Triton kernel through its JIT launcher, a raw CUDA kernel through
CuPy); GPU time per kernel when those kernels run back to back (inside a graph, so the host is
out), and when they meet the GPU already queued in a stream (the host far ahead, as in a
GPU-bound eager step); graph replay host and GPU time for graphs of 1, 10, 100 and 1000 nodes,
fitted as a fixed cost plus a cost per node; and, with them, the device's ceilings
(bench.device), all in one `measure_launch` dict.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from microbench.bench.device import copy_bandwidth, copy_curve, matmul_rate
from microbench.bench.hostcpu import on_quick_cpu
from microbench.bench.ops import kernel_lines, measure_ops
from microbench.bench.timing import Stats, gpu_time_us, graph_of, host_time_us, queued_gpu_time_us
from microbench.engine.nvtx import nvtx_range
from microbench.stats import fit_linear

NODE_COUNTS = (1, 10, 100, 1000)
CUPY_SRC = r'extern "C" __global__ void add_one(float* x, int n) {' \
           r' int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] += 1.0f; }'


def launchers(device) -> dict:
    """name -> zero-argument callable that launches exactly one small kernel."""
    from microbench.kernels.noop import add_one
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
    streams = {}  # torch stream handle -> CuPy's view of it, so captures see the launch

    def launch():
        h = torch.cuda.current_stream().cuda_stream
        st = streams.get(h)
        if st is None:
            st = streams[h] = cupy.cuda.ExternalStream(h)
        kern((1,), (64,), (cx, n), stream=st)
    return launch



def measure_launch_and_ops(dec, budget_s: float, pin_cpu: bool = True) -> dict:
    """measure_launch on the decoder's device, plus the decoder's op host costs at one row
    (`ops_host_us`): the device profile a run's model reads, measured after its rows on a quick
    CPU as their eager steps were (hostcpu.on_quick_cpu)."""
    with on_quick_cpu(pin_cpu):
        launch = measure_launch(dec.device, budget_s=min(budget_s, 0.5))
        launch["ops_host_us"] = measure_ops(dec, 1, budget_s=min(budget_s, 0.3))
    return launch


def measure_device_profile(dec, context: int, budget_s: float, pin_cpu: bool = True,
                           say=None) -> dict:
    """measure_launch_and_ops, then the step's kernels timed inside graphs (ops.kernel_lines,
    the replay's fixed GPU cost taken off): the device profile the sweep's and the reproduce
    lab's models read, measured after their rows."""
    say = say or (lambda s: None)
    say("measuring launch costs, copy bandwidth and matrix rate")
    launch = measure_launch_and_ops(dec, budget_s, pin_cpu)
    say("timing the step's kernels inside graphs (the model's per-family lines)")
    launch["kernel_lines"] = kernel_lines(
        dec, context, budget_s=min(budget_s, 0.1),
        replay_fixed_us=max(0.0, launch["replay_fit"]["gpu_fixed_us"]))
    return launch


def measure_launch(device="cuda", budget_s: float = 1.0) -> dict:
    """All launch figures; every Stats is in microseconds."""
    kw = dict(budget_s=budget_s)
    result = dict(host_us={}, gpu_us_per_kernel={}, gpu_us_per_kernel_queued={}, replay={},
                  notes=[])
    fns = launchers(device)
    if "cupy" not in fns:
        result["notes"].append("cupy not installed: raw CUDA launcher skipped "
                               "(pip install 'microbench[cupy]')")
    for name, fn in fns.items():
        with nvtx_range(f"launch cost, {name}"):
            # 100 launches per sample: the per-launch host cost, with the queue far from full.
            result["host_us"][name] = host_time_us(fn, inner=100, **kw).to_dict()
            g = graph_of(fn, 100)
            result["gpu_us_per_kernel"][name] = _scaled(gpu_time_us(g.replay, inner=10, **kw), 0.01)
            try:
                result["gpu_us_per_kernel_queued"][name] = queued_gpu_time_us(fn, inner=100,
                                                                              **kw).to_dict()
            except RuntimeError as e:   # the model then reads no stream gap
                result["notes"].append(f"{name} kernels queued in a stream not timed: {e}")
        del g
    host, gpu = [], []
    for n in NODE_COUNTS:
        with nvtx_range(f"replay cost, {n} nodes"):
            g = graph_of(fns["torch"], n)
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
    result["copy_curve"] = copy_curve(device, **kw)
    result["matmul"] = matmul_rate(device, **kw)
    return result


def _scaled(st: Stats, f: float) -> dict:
    return dict(median=st.median * f, p20=st.p20 * f, p80=st.p80 * f, n=st.n)

