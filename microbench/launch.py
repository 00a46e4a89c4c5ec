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
    streams = {}  # torch stream handle -> CuPy's view of it, so captures see the launch

    def launch():
        h = torch.cuda.current_stream().cuda_stream
        st = streams.get(h)
        if st is None:
            st = streams[h] = cupy.cuda.ExternalStream(h)
        kern((1,), (64,), (cx, n), stream=st)
    return launch


def fit_linear(xs, ys, relative: bool = False) -> tuple[float, float]:
    """Least-squares y = a + b·x; returns (a, b). With `relative`, each point is weighted by
    1/y, so points spanning decades count alike (a small kernel's time fixes the intercept)."""
    ys = np.asarray(ys, float)
    w = 1.0 / ys if relative else None
    b, a = np.polyfit(np.asarray(xs, float), ys, 1, w=w)
    return float(a), float(b)


def graph_of(fn, n: int):
    """A CUDA graph of n back-to-back calls of fn, warmed up once on a side stream first."""
    from microbench.graphs import _side_stream, fresh_cublas_workspaces
    g = torch.cuda.CUDAGraph()
    s = _side_stream(torch.cuda.current_device())  # one per device: cuBLAS keeps a workspace per stream
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # warm (JIT, lazy init) outside the capture
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    fresh_cublas_workspaces()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    torch.cuda.synchronize()
    fresh_cublas_workspaces()
    return g


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
        g = graph_of(fn, 100)
        result["gpu_us_per_kernel"][name] = _scaled(gpu_time_us(g.replay, inner=10, **kw), 0.01)
        del g
    host, gpu = [], []
    for n in NODE_COUNTS:
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


def measure_ops(dec, b: int = 1, budget_s: float = 0.5) -> dict:
    """Host time to enqueue each op of a decode step through the decoder's own call path (its
    wrappers), keyed by the kernel names of `workload.step_kernels`: the plan at batch b and,
    for a fused decoder, the plan above `kernels.gemv.FAST_ROWS` rows too (cuBLAS matmuls and
    separate norm and swiglu kernels), so every batch size's plan finds its own costs. A Triton
    launcher's host cost grows with the arguments it must inspect, so a 3-argument kernel's
    launch cost understates a 30-argument one's; this measures the real ones."""
    from kernels.gemv import FAST_ROWS
    batches = [b] + ([FAST_ROWS + 1] if dec.fuse and b <= FAST_ROWS else [])
    out: dict = {}
    for bb in batches:
        for name, fn in _op_fns(dec, bb).items():
            if name not in out:
                out[name] = host_time_us(fn, inner=10, budget_s=budget_s).to_dict()
    if "rmsnorm" in out:
        out["final_norm"] = out["rmsnorm"]
    # decode_attention's host cost covers both its launches (split and reduce)
    out["attention_reduce"] = dict(median=0.0, p20=0.0, p80=0.0, n=0)
    return out


def _op_fns(dec, b: int) -> dict:
    """name -> a call of that op through the decoder at batch b (names as the plan's)."""
    from microbench.workload import SKINNY
    s, ops, dev = dec.shape, dec.ops, dec.device
    L = dec.layers[0]
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, device=dev).to(dec.dtype)
    tokens = torch.zeros(b, dtype=torch.long, device=dev)
    positions = torch.full((b,), 1, dtype=torch.long, device=dev)
    slots = torch.full((b,), dec.scratch_slot, dtype=torch.long, device=dev)
    seq = dec.seq_lens_for(positions)
    x, res = r(b, s.hidden), r(b, s.hidden)
    qkv = r(b, s.qkv_size)
    q = qkv[:, :s.q_size].view(b, s.n_heads, s.head_dim)
    k = qkv[:, s.q_size:s.q_size + s.kv_size].view(b, s.n_kv_heads, s.head_dim)
    v = qkv[:, s.q_size + s.kv_size:].view(b, s.n_kv_heads, s.head_dim)
    o, gu, f = r(b, s.n_heads, s.head_dim), r(b, 2 * s.ffn), r(b, s.ffn)
    nw = L["attn_norm"]
    fns = {
        "embedding": lambda: dec.embed[tokens],
        "seq_lens_add": lambda: positions + 1,
        "seq_lens_cast": lambda: positions.to(torch.int32),
        "decode_attention": lambda: dec.attention(0, q, slots, seq),
    }
    if dec.fuse:
        fns["rope_store_kv"] = lambda: dec.rope_store(0, q, k, v, slots, positions)
    else:
        fns["rope"] = lambda: ops.rope(q, k, positions, s.rope_theta)
        fns["store_kv"] = lambda: ops.store_kv(dec.k_cache[0], dec.v_cache[0], k, v, slots, positions)
    if dec.skinny(b):   # norms in the prologues; residual adds and swiglu in the epilogues
        fns["qkv_proj" + SKINNY] = lambda: dec.norm_linear(x, nw, L["wqkv"])
        fns["o_proj" + SKINNY] = lambda: dec.linear(o.reshape(b, s.q_size), L["wo"], res)
        fns["gate_up_proj" + SKINNY] = lambda: dec.norm_linear_swiglu(x, nw, L["wgu"])
        fns["down_proj" + SKINNY] = lambda: dec.linear(f, L["wdown"], res)
        fns["lm_head" + SKINNY] = lambda: dec.norm_linear(x, nw, dec.embed)
    else:
        fns["rmsnorm"] = lambda: ops.rmsnorm(x, nw, s.norm_eps, residual=res)
        fns["qkv_proj"] = lambda: F.linear(x, L["wqkv"])
        fns["o_proj"] = lambda: F.linear(o.reshape(b, s.q_size), L["wo"])
        fns["gate_up_proj"] = lambda: F.linear(x, L["wgu"])
        fns["lm_head"] = lambda: F.linear(x, dec.embed)
        fns["swiglu"] = lambda: ops.swiglu(gu)
        fns["down_proj"] = lambda: F.linear(f, L["wdown"])
    return fns


def _scaled(st: Stats, f: float) -> dict:
    return dict(median=st.median * f, p20=st.p20 * f, p80=st.p80 * f, n=st.n)


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


KERNEL_FAMILIES = (("_split_kernel", "decode_attention"), ("_reduce_kernel", "attention_reduce"),
                   ("_gemv", "matmul"), ("_rope_store_kv", "rope_store_kv"),
                   ("_rmsnorm", "rmsnorm"), ("_rope", "rope"), ("_store_kv", "store_kv"),
                   ("_swiglu", "swiglu"), ("gemm", "matmul"), ("gemv", "matmul"),
                   ("cutlass", "matmul"), ("sm90", "matmul"), ("index", "embedding"))


def kernel_breakdown(kernels: list[tuple[str, float]]) -> dict:
    """GPU us and count per kernel family (attention, norms, matmuls, ...)."""
    out: dict = {}
    for name, us in kernels:
        fam = next((f for key, f in KERNEL_FAMILIES if key in name.lower()), "other")
        d = out.setdefault(fam, dict(n=0, us=0.0))
        d["n"] += 1
        d["us"] += us
    return out
