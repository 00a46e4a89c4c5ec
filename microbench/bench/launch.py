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

from microbench.bench.timing import Stats, gpu_time_us, host_time_us

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


def fit_linear(xs, ys, relative: bool = False) -> tuple[float, float]:
    """Least-squares y = a + b·x; returns (a, b). With `relative`, each point is weighted by
    1/y, so points spanning decades count alike (a small kernel's time fixes the intercept)."""
    ys = np.asarray(ys, float)
    w = 1.0 / ys if relative else None
    b, a = np.polyfit(np.asarray(xs, float), ys, 1, w=w)
    return float(a), float(b)


def graph_of(fn, n: int):
    """A CUDA graph of n back-to-back calls of fn, warmed up once on a side stream first."""
    from microbench.engine.runner import _side_stream, fresh_cublas_workspaces
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
    from microbench.kernels.gemv import FAST_ROWS
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


def eager_with_op_costs(step, dec, b: int, steps: int, budget_s: float):
    """Wall time of eager steps (each synchronised, as the sweep times them) and, sampled
    between them, the host cost of each op of the step's plan at batch b (10 calls per sample)
    and of one middle piece of the step (a layer's launches through the decoder's own code), so
    all see the host in the same state: on the lent machines its speed drifts by a fifth and
    more between seconds, which a profile measured once at the start cannot follow.

    The piece's host time less its kernels' host costs is the Python between launches (views,
    slicing, dispatch): `piece_glue_us`, which the model adds once per piece.
    Returns (wall Stats per step, {op name: host us per call, median}, piece_glue_us)."""
    import time

    from microbench.bench.timing import settle, summarize
    from microbench.engine.plan import step_kernels
    fns = _op_fns(dec, b)
    piece = _middle_piece(dec, b)
    for fn in (step, piece, *fns.values()):
        fn()
    torch.cuda.synchronize()
    op_samples: dict = {n: [] for n in fns}
    piece_samples = []

    def timed(fn, n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) * 1e6 / n

    def sample():
        for n, fn in fns.items():
            op_samples[n].append(timed(fn, 10))
        piece_samples.append(timed(piece, 5))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e6 / steps

    wall = settle(sample, budget_s=budget_s)
    costs = {n: summarize(v).median for n, v in op_samples.items()}
    if "rmsnorm" in costs:
        costs["final_norm"] = costs["rmsnorm"]
    costs["attention_reduce"] = 0.0
    plan = step_kernels(dec.shape, b, 0, dec.embed.element_size(), dec.attention_launches(b),
                        fuse=dec.fusion)
    glue = summarize(piece_samples).median - sum(costs.get(k.name, 0.0) for k in _piece_kernels(plan))
    return wall, costs, glue


def _piece_kernels(plan):
    """The kernels of piece 1 of a plan: between the first attention call's kernels and the
    second decode_attention (layer 0 after attention, layer 1 up to attention), or to the end
    on a one-layer model."""
    att = [i for i, k in enumerate(plan) if k.name == "decode_attention"]
    first = att[0] + 1
    while plan[first].name == "attention_reduce":
        first += 1
    # one layer: piece 1 is the last piece (layer 0 after attention, final norm, LM head)
    return plan[first:att[1]] if len(att) > 1 else plan[first:]


def _middle_piece(dec, b: int):
    """A call of the decoder's piece 1 (layer 0 after attention, layer 1 up to attention) at
    batch b, with random inputs; on a one-layer model, the last piece."""
    s, dev = dec.shape, dec.device
    g = torch.Generator(device=dev).manual_seed(0)
    tokens = torch.zeros(b, dtype=torch.long, device=dev)
    positions = torch.full((b,), 1, dtype=torch.long, device=dev)
    slots = torch.full((b,), dec.scratch_slot, dtype=torch.long, device=dev)
    o = torch.randn(b, s.n_heads, s.head_dim, generator=g, device=dev).to(dec.dtype)
    res = torch.randn(b, s.hidden, generator=g, device=dev).to(dec.dtype)
    return lambda: dec.piece(1, tokens, positions, slots, o, res)


def _op_fns(dec, b: int) -> dict:
    """name -> a call of that op through the decoder at batch b (names as the plan's)."""
    from microbench.engine.plan import SKINNY
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
        # the fused-attention plan's embedding kernel writes seq_lens too
        "embedding": lambda: dec.embed_inputs(tokens, positions) if dec.attention_fused else dec.embed[tokens],
        # the fused attention takes the QKV row (and writes the new K and V itself)
        "decode_attention": lambda: dec.attention(0, qkv if dec.attention_fused else q, slots, seq),
    }
    if not dec.attention_fused:   # else seq_lens come from the embedding kernel
        fns["seq_lens_add"] = lambda: positions + 1
        fns["seq_lens_cast"] = lambda: positions.to(torch.int32)
    if dec.attention_fused:
        pass                                  # rope and the KV store are inside attention
    elif dec.fuse:
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


# Kernel families of the model's per-family lines (model.family): each planned kernel belongs
# to one; attention's line is fitted on whole calls (split kernel and reduce together).
FAMILIES = ("skinny", "cublas", "attention", "small")
# from one row to past the default sweep's largest (64), so the sweep interpolates; 128 also
# covers attention's unsplit regime (no reduce kernel), which starts near 32 rows on an H100
LINE_BATCHES = (1, 2, 8, 32, 128)


# bytes of distinct data each op's timed chain streams: four H100 L2s, so none of it comes
# from the L2 (a small model's weights of one kind, over all its layers, would fit in it)
LINE_MIN_BYTES = 200 << 20


def kernel_lines(dec, context: int, batches=LINE_BATCHES, budget_s: float = 0.1,
                 replay_fixed_us: float = 0.0, min_bytes: int = LINE_MIN_BYTES) -> dict:
    """GPU time of each of the step's ops against the bytes it must move, fitted per kernel
    family as t = fixed_us + bytes / bytes_per_s (model.kernel_time_us uses the lines).

    Each op runs inside a graph as a chain of calls on distinct data (each layer's weights and
    KV cache, then copies of the weights and other slots' caches) until the chain has streamed
    `min_bytes`, at least 4 calls: weights and KV history come from DRAM as in a step, and with
    PDL neighbours overlap as in a step. The replay's own fixed GPU cost (`replay_fixed_us`,
    from measure_launch; the model charges it once per graph step) is taken off before
    dividing by the calls. Points are taken at `batches` (those up to the decoder's max batch),
    each with the plan's byte count for that op and batch."""
    from microbench.analysis.model import family
    from microbench.engine.plan import step_kernels
    pts: dict = {f: [] for f in FAMILIES}
    for b in (b for b in batches if b <= dec.max_batch):
        plan = {k.name: k for k in step_kernels(dec.shape, b, context, dec.embed.element_size(),
                                                dec.attention_launches(b), fuse=dec.fusion)}
        for name, make in _layer_op_fns(dec, b, context).items():
            k = plan.get(name)
            if k is None:
                continue
            n = min(512, max(4, -(-min_bytes // max(k.bytes, 1))))
            calls = [make(i) for i in range(n)]
            g = graph_of(lambda calls=calls: [f() for f in calls], 1)
            t = (gpu_time_us(g.replay, inner=3, budget_s=budget_s).median - replay_fixed_us) / n
            del g, calls
            pts[family(k)].append(dict(op=name, b=b, bytes=k.bytes, us=t, calls=n))
    out = {}
    for f, ps in pts.items():
        if not ps:
            continue
        if len({p["bytes"] for p in ps}) > 1:
            fixed, per_byte = fit_linear([p["bytes"] for p in ps], [p["us"] for p in ps], relative=True)
        else:
            fixed, per_byte = ps[0]["us"], 0.0
        out[f] = dict(fixed_us=max(0.0, fixed),
                      bytes_per_s=(1e6 / per_byte) if per_byte > 0 else None, points=ps)
    return out


def _layer_op_fns(dec, b: int, context: int) -> dict:
    """name -> make(i): the i-th call of that op on distinct data, at batch b with every
    sequence at `context` cached positions (the plan's names). Calls 0 to L-1 use layers 0 to
    L-1's weights and caches; later ones copies of the weights (made on first use, held by
    the op's make) and other slots' caches."""
    from microbench.engine.plan import SKINNY
    s, dev = dec.shape, dec.device
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, device=dev).to(dec.dtype)
    L = s.n_layers
    tokens = torch.zeros(b, dtype=torch.long, device=dev)
    positions = torch.full((b,), context, dtype=torch.long, device=dev)
    seq = dec.seq_lens_for(positions)
    x, res, qkv = r(b, s.hidden), r(b, s.hidden), r(b, s.qkv_size)
    q = qkv[:, :s.q_size].view(b, s.n_heads, s.head_dim)
    k = qkv[:, s.q_size:s.q_size + s.kv_size].view(b, s.n_kv_heads, s.head_dim)
    v = qkv[:, s.q_size + s.kv_size:].view(b, s.n_kv_heads, s.head_dim)
    o, gu, f = r(b, s.q_size), r(b, 2 * s.ffn), r(b, s.ffn)
    n_bases = max(1, dec.max_batch // b)           # disjoint groups of b real slots
    slot_sets = [torch.arange(j * b, (j + 1) * b, device=dev) % dec.max_batch for j in range(n_bases)]

    def weights(key):
        """i -> a [.., ..] weight: layer i's for i < L, then copies (one per call)."""
        copies: dict = {}

        def get(i):
            src = dec.layers[i % L][key] if key != "embed" else dec.embed
            if i < (L if key != "embed" else 1):
                return src
            if i not in copies:
                copies[i] = src.clone()
            return copies[i]
        return get

    def per_call(fn):
        return lambda i: (lambda: fn(i))

    lay = dec.layers
    slots_of = lambda i: slot_sets[(i // L) % n_bases]
    fns = {
        "embedding": per_call(lambda i: dec.embed_inputs(tokens, positions) if dec.attention_fused
                              else dec.embed[tokens]),
        "decode_attention": per_call(lambda i: dec.attention(i % L, qkv if dec.attention_fused else q,
                                                             slots_of(i), seq)),
    }
    if dec.fuse and not dec.attention_fused:
        fns["rope_store_kv"] = per_call(
            lambda i: dec.rope_store(i % L, q, k, v, slots_of(i), positions))
    wq, wo, wgu, wd, we = (weights(key) for key in ("wqkv", "wo", "wgu", "wdown", "embed"))
    nw = lambda i: lay[i % L]["attn_norm"]
    if dec.skinny(b):
        fns["qkv_proj" + SKINNY] = per_call(lambda i: dec.norm_linear(x, nw(i), wq(i)))
        fns["o_proj" + SKINNY] = per_call(lambda i: dec.linear(o, wo(i), res))
        fns["gate_up_proj" + SKINNY] = per_call(lambda i: dec.norm_linear_swiglu(x, nw(i), wgu(i)))
        fns["down_proj" + SKINNY] = per_call(lambda i: dec.linear(f, wd(i), res))
        fns["lm_head" + SKINNY] = per_call(lambda i: dec.norm_linear(x, dec.final_norm, we(i)))
    else:
        fns["rmsnorm"] = per_call(lambda i: dec.ops.rmsnorm(x, nw(i), s.norm_eps, residual=res))
        fns["qkv_proj"] = per_call(lambda i: F.linear(x, wq(i)))
        fns["o_proj"] = per_call(lambda i: F.linear(o, wo(i)))
        fns["gate_up_proj"] = per_call(lambda i: F.linear(x, wgu(i)))
        fns["swiglu"] = per_call(lambda i: dec.ops.swiglu(gu))
        fns["down_proj"] = per_call(lambda i: F.linear(f, wd(i)))
        fns["lm_head"] = per_call(lambda i: F.linear(x, we(i)))
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
