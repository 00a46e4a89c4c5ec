"""The analytic model of launch overhead and graph speedup: pure functions of a model shape, a
batch size, a context length and a device profile. Nothing here touches a GPU.

Per kernel k at batch b (its bytes and flops from `plan.step_kernels`):

    t_k(b) = max(t_min, fixed_f + bytes_k(b) / BW_f, flops_k(b) / F)

t_min is the shortest a kernel takes on the GPU (a tiny kernel's time per node inside a graph).
fixed_f and BW_f are the line of the kernel's family f (skinny Triton matmuls, cuBLAS matmuls,
attention, small element-wise kernels), fitted on the decoder's own kernels timed inside graphs
(`launch.kernel_lines`): fixed_f is what a kernel of that family costs beyond streaming its
bytes (its launch inside a graph, its first DRAM round trip, its tail; less where programmatic
dependent launch overlaps it with the kernel before), BW_f the bandwidth it streams at. Without
lines (datasheet GPUs, old runs) every kernel uses the copy line: the copy's fixed cost and BW.
Where the op itself was timed at batches on both sides of b (the lines' points, at
bench.ops.LINE_BATCHES), the family line gives way to the op's own points, joined linearly in
bytes: one line cannot follow a family whose members differ in shape (a cuBLAS matmul's
efficiency depends on its N and K, not only its bytes), and the points are the op's measured
cost. At a batch that is itself a line batch the op's time is its own timing at that batch.

Eager step, per-kernel pipeline: the host enqueues kernel k after spending c_k (its launcher's
host cost); the GPU starts it when it has been enqueued and the previous kernel has finished:

    enq_k = enq_{k-1} + c_k ;  end_k = max(enq_k, end_{k-1} + s) + t_k
    T_eager = end_last + c_sync

so the GPU waits whenever the host enqueues slower than the GPU drains. s is what a kernel the
GPU meets already queued in a stream costs beyond the same kernel as a graph node (t_k is timed
in graphs): a tiny Triton kernel's GPU time per launch queued behind a sleep, less its time per
node in a graph (launch.measure_launch); it shows where the GPU, not the host, is the bottleneck.
c_k is the host cost of k's call through the decoder's wrapper; each piece of the step (a
layer's launches between two attention calls) adds g, measured as a piece's host time less its
kernels' costs timed one op at a time: the Python between launches (views, slicing, dispatch)
and whatever ops cost more inside a step than in a loop of their own. On a noisy host it can
come out negative; it is used as measured. Graph step: the runner enqueues its input copies
(c_torch each), one replay call (host: c_replay), then the GPU runs every node back to back
with a fixed replay start cost g_0:

    T_graph(b) = n_copy · c_torch + c_replay + g_0 + sum_k t_k(pad(b)) + c_sync

(in a sweep row, n_copy · c_torch + c_replay is the runner's enqueue as measured beside the row).

Speedup = T_eager / T_graph. It is largest when sum c_k dominates sum t_k (small batch, small
model) and fades to 1 as GPU time grows with b.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from microbench.engine.shapes import ModelShape
from microbench.engine.plan import FAST_ROWS, SKINNY, Fusion, Kernel, family, plan_at, step_kernels


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    source: str                      # "measured: <run>" or "datasheet" or "options"
    copy_bw: float                   # bytes/s (read + written)
    matmul_flops: float              # flop/s, dense bf16
    # launcher -> host us per launch; the defaults are assumptions, replaced by measurements
    launch_host_us: dict = field(default_factory=lambda: dict(torch=5.0, cublas=5.0, triton=5.0))
    kernel_min_us: float = 2.0       # shortest GPU time of one kernel (a graph node)
    replay_host_us: float = 5.0      # host cost of one replay() call
    replay_gpu_fixed_us: float = 3.0  # GPU time a replay takes before its first node runs
    sync_us: float = 10.0            # host round trip of a synchronise after the last kernel
    n_input_copies: int = 1          # launches the runner makes before each replay
    # kernel name -> host us to enqueue it through the decoder's own wrapper (measured)
    op_host_us: dict = field(default_factory=dict)
    # GPU time any kernel pays before bandwidth counts: the intercept of copy time vs size
    kernel_fixed_us: float = 0.0
    # family -> {"fixed_us", "bytes_per_s"}: per-family lines (launch.kernel_lines)
    kernel_lines: dict = field(default_factory=dict)
    # kernel name -> [(bytes, us), ...] by bytes: the lines' points, each op's own timings
    kernel_points: dict = field(default_factory=dict)
    # host us of Python between launches per piece of the step (bench.ops.OpCostSampler)
    piece_glue_us: float = 0.0
    # host us of one graph step's enqueue (input copy and replay call), measured beside a
    # sweep row; None: n_input_copies torch launches plus one replay call
    graph_host_us: float | None = None
    # GPU us a kernel launched into a stream, met already queued, costs beyond the same kernel
    # as a graph node: the eager pipeline's gap between back-to-back kernels
    stream_gap_us: float = 0.0

    def host_us(self, launcher: str) -> float:
        return self.launch_host_us.get(launcher, self.launch_host_us.get("torch", 5.0))

    def kernel_host_us(self, k: Kernel) -> float:
        """Host cost of enqueueing kernel k: its wrapper's measured cost when known, else its
        launcher's cost for a trivial kernel."""
        return self.op_host_us.get(k.name, self.host_us(k.launcher))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_launch(cls, launch: dict, name: str, source: str) -> "DeviceProfile":
        """Build a profile from `launch.measure_launch()` output (as saved in a run)."""
        fit = launch["replay_fit"]
        return cls(
            name=name, source=source,
            copy_bw=launch["copy"]["bytes_per_s"],
            matmul_flops=launch["matmul"]["flops_per_s"],
            launch_host_us={k: v["median"] for k, v in launch["host_us"].items()},
            kernel_min_us=launch["gpu_us_per_kernel"]["torch"]["median"],
            replay_host_us=launch["replay"]["1"]["host_us"]["median"],
            replay_gpu_fixed_us=max(0.0, fit["gpu_fixed_us"]),
            sync_us=launch.get("sync_us", {}).get("median", 10.0),
            op_host_us={k: v["median"] for k, v in launch.get("ops_host_us", {}).items()},
            kernel_fixed_us=max(0.0, launch.get("copy_curve", {}).get("fixed_us", 0.0)),
            kernel_lines={f: dict(fixed_us=v["fixed_us"], bytes_per_s=v["bytes_per_s"])
                          for f, v in launch.get("kernel_lines", {}).items()},
            kernel_points=op_points(launch.get("kernel_lines", {})),
            stream_gap_us=stream_gap_us(launch),
        )


def stream_gap_us(launch: dict, launcher: str = "triton") -> float:
    """The decoder's launcher's GPU time per kernel queued in a stream less its time per graph
    node (0 for runs that did not time the queued kernels, or where it came out negative)."""
    queued = launch.get("gpu_us_per_kernel_queued", {}).get(launcher)
    node = launch.get("gpu_us_per_kernel", {}).get(launcher)
    if not queued or not node:
        return 0.0
    return max(0.0, queued["median"] - node["median"])


def op_points(lines: dict) -> dict:
    """kernel name -> its [(bytes, us), ...] sorted by bytes, from kernel_lines' points (points
    of equal bytes averaged into one)."""
    out: dict = {}
    for v in lines.values():
        for pt in v.get("points", ()):
            out.setdefault(pt["op"], {}).setdefault(pt["bytes"], []).append(pt["us"])
    return {k: sorted((b, sum(us) / len(us)) for b, us in v.items()) for k, v in out.items()}


def between_points(pts, x: float) -> float | None:
    """The piecewise-linear value at x of points [(x, y), ...] sorted by x; None outside them."""
    if not pts or not pts[0][0] <= x <= pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1]   # a single point, at exactly x


# Datasheet figures (dense bf16 tensor rate, HBM/GDDR bandwidth): predictions, not measurements.
# Sources, NVIDIA's product datasheets: H100 SXM 3.35 TB/s, 989 TFLOP/s; H200 SXM 4.8 TB/s,
# 989 TFLOP/s; A100 80GB SXM 2,039 GB/s, 312 TFLOP/s (the 40GB has 1,555 GB/s); L4 300 GB/s,
# 121 TFLOP/s (242 with sparsity); L40S 864 GB/s, 362 TFLOP/s (733 with sparsity).
DATASHEET = {
    "H100": dict(copy_bw=3.35e12, matmul_flops=989e12),
    "H200": dict(copy_bw=4.8e12, matmul_flops=989e12),
    "A100": dict(copy_bw=2.039e12, matmul_flops=312e12),
    "L4": dict(copy_bw=300e9, matmul_flops=121e12),
    "L40S": dict(copy_bw=864e9, matmul_flops=362e12),
}


def datasheet_profile(gpu: str, host: DeviceProfile | None = None) -> DeviceProfile:
    """A datasheet GPU with the host-side constants of `host` (a measured profile) or the
    defaults of DeviceProfile, labelled as such."""
    if gpu not in DATASHEET:
        raise ValueError(f"unknown GPU {gpu!r}; choose one of {', '.join(DATASHEET)}")
    base = host or DeviceProfile(name=gpu, source="", copy_bw=1.0, matmul_flops=1.0)
    src = "datasheet bandwidth and matrix rate; host constants " + (
        f"from {host.source}" if host else "assumed defaults")
    # the measured kernel lines and stream gap belong to the measured GPU: the datasheet one
    # uses the copy line and no gap
    return replace(base, name=gpu, source=src, kernel_lines={}, kernel_points={},
                   stream_gap_us=0.0, **DATASHEET[gpu])


def kernel_time_us(k: Kernel, p: DeviceProfile) -> float:
    line = p.kernel_lines.get(family(k))
    own = between_points(p.kernel_points.get(k.name), k.bytes)
    if line is None and own is None:
        t = p.kernel_fixed_us + k.bytes / p.copy_bw * 1e6
    elif k.name == "attention_reduce":
        return 0.0   # the attention line is fitted on whole calls: split kernel and reduce
    elif own is not None:
        t = own
    else:
        t = line["fixed_us"] + (k.bytes / line["bytes_per_s"] * 1e6 if line["bytes_per_s"] else 0.0)
    return max(p.kernel_min_us, t, k.flops / p.matmul_flops * 1e6)


def gpu_time_us(shape: ModelShape, b: int, context: int, p: DeviceProfile, elt: int = 2,
                attn_launches: int = 2, fusion: Fusion = Fusion.ATTENTION,
                fast_rows: int = FAST_ROWS) -> float:
    ks = step_kernels(shape, b, context, elt, attn_launches, fusion, fast_rows)
    return sum(kernel_time_us(k, p) for k in ks)


def eager_step_us(shape: ModelShape, b: int, context: int, p: DeviceProfile,
                  elt: int = 2, attn_launches: int = 2, fusion: Fusion = Fusion.ATTENTION,
                  fast_rows: int = FAST_ROWS) -> float:
    return eager_pipeline_us(step_kernels(shape, b, context, elt, attn_launches, fusion, fast_rows),
                             p, lambda k: kernel_time_us(k, p))


def eager_pipeline_us(kernels, p: DeviceProfile, gpu_us) -> float:
    """An eager step's end: the host enqueues `kernels` one after another (each its
    kernel_host_us), the GPU runs each (gpu_us(k)) once it is enqueued and the one before has
    finished; then the host's synchronise."""
    enq, end = 0.0, None
    for k in kernels:
        # each piece of the step (they end at the attention calls, and at the LM head) spends
        # piece_glue_us of Python between its launches
        if k.name in ("decode_attention", "lm_head", "lm_head" + SKINNY):
            enq += p.piece_glue_us
        enq += p.kernel_host_us(k)
        # a kernel already queued starts stream_gap_us after the one before ends; one the GPU
        # waits for (the first, too) starts once enqueued
        end = (enq if end is None else max(enq, end + p.stream_gap_us)) + gpu_us(k)
    return (0.0 if end is None else end) + p.sync_us


def graph_step_us(shape: ModelShape, b: int, context: int, p: DeviceProfile,
                  padded: int | None = None, elt: int = 2, attn_launches: int = 2,
                  fusion: Fusion = Fusion.ATTENTION, fast_rows: int = FAST_ROWS) -> float:
    b = padded or b
    host = (p.graph_host_us if p.graph_host_us is not None
            else p.n_input_copies * p.host_us("torch") + p.replay_host_us)
    return (host + p.replay_gpu_fixed_us
            + gpu_time_us(shape, b, context, p, elt, attn_launches, fusion, fast_rows) + p.sync_us)


def predict(shape: ModelShape, b: int, context: int, p: DeviceProfile,
            padded: int | None = None, elt: int = 2, attn_launches: int = 2,
            padded_attn_launches: int | None = None, fusion: Fusion = Fusion.ATTENTION,
            fast_rows: int = FAST_ROWS, padded_fusion: Fusion | None = None) -> dict:
    """Predicted eager and graph step time and speedup at batch b (graph at `padded`).
    attn_launches: kernels per attention call (2 with split-KV, 1 without) at b and at padded.
    fusion, fast_rows: the decoder's plan (plan.step_kernels) at b; padded_fusion: its plan at
    `padded` where that differs (ToyDecoder.fusion_at)."""
    e = eager_step_us(shape, b, context, p, elt, attn_launches, fusion, fast_rows)
    g_fusion = fusion if padded_fusion is None else padded_fusion
    g = graph_step_us(shape, b, context, p, padded, elt, padded_attn_launches or attn_launches,
                      g_fusion, fast_rows)
    ks = step_kernels(shape, b, context, elt, attn_launches, fusion, fast_rows)
    # the replayed graph's kernels by plan family (skinny, cublas, attention, small): what a
    # sweep's `by plan family` footer line measures, each kernel alone in a replay; with the
    # replay's fixed GPU cost, the GPU time that events around a replay measure
    by_family: dict = {}
    for k in step_kernels(shape, padded or b, context, elt, padded_attn_launches or attn_launches,
                          g_fusion, fast_rows):
        by_family[family(k)] = by_family.get(family(k), 0.0) + kernel_time_us(k, p)
    return dict(bs=b, padded_bs=padded or b, predicted_eager_step_us=e,
                predicted_graph_step_us=g, predicted_speedup=(e / g) if g else None,
                host_launch_us=sum(p.kernel_host_us(k) for k in ks),
                gpu_busy_us=sum(kernel_time_us(k, p) for k in ks), kernels=len(ks),
                graph_gpu_us=p.replay_gpu_fixed_us + sum(by_family.values()),
                graph_gpu_us_by_family=by_family)


def crossover(shape: ModelShape, context: int, p: DeviceProfile, below: float = 1.1,
              max_bs: int = 4096, elt: int = 2, fusion: Fusion = Fusion.ATTENTION,
              fast_rows: int = FAST_ROWS, separate_rows=()) -> int | None:
    """Smallest batch size whose predicted speedup (exact capture) falls under `below`; each
    size in the plan plan.plan_at gives it (separate_rows: the sizes whose attention runs as
    separate kernels)."""
    lo, hi = 1, max_bs
    sp = lambda b: predict(shape, b, context, p, elt=elt, fusion=plan_at(fusion, b, separate_rows),
                           fast_rows=fast_rows)["predicted_speedup"]
    if sp(hi) >= below:
        return None
    if sp(lo) < below:
        return lo
    while hi - lo > 1:  # speedup falls with b: bisect
        mid = (lo + hi) // 2
        if sp(mid) < below:
            hi = mid
        else:
            lo = mid
    return hi
