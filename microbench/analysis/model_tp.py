"""The analytic model under tensor parallelism: a shard's kernels plus its all-reduces.

With TP over n GPUs every rank runs the step of a *shard*: the model shape with n_heads/n,
n_kv_heads/n and ffn/n query heads, KV heads and FFN columns (hidden size, vocabulary and layers
unchanged: the embedding, the norms and the tied LM head are replicated on every rank). After
each of a layer's two row-parallel matmuls (O and down projection) the ranks all-reduce the
[b, hidden] partial sums: 2·L all-reduces of S = b · hidden · elt bytes per step. One costs

    t_ar(S) = alpha + busbytes(S) / BW_bus,      busbytes(S) = 2 (n - 1) / n · S

alpha: the fixed latency of one collective on the GPU (kernel start and the GPUs' handshake);
BW_bus: the bus bandwidth as NCCL's tests define it for all-reduce, algorithm bandwidth S / t
times 2(n-1)/n (the share of S each GPU must send and receive in a ring). Both are fitted to the
collective benchmark's times inside CUDA graphs (`collectives.measure_allreduce`), which also
times the sweep's own message sizes: those take their measured time. Eagerly, the
host also pays c_ar to enqueue each collective through torch.distributed.

    T_eager,TP(b) = model.eager_step_us's pipeline over the shard's kernels with the 2·L
                    all-reduces in place (c_ar on the host, t_ar on the GPU)
    T_graph,TP(b) = model.graph_step_us(shard, pad(b)) + 2·L · t_ar(pad(b) · hidden · elt)

With n = 1 there is nothing to reduce and both equal the single-GPU model. Pure functions;
nothing here touches a GPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from microbench.analysis import model as mdl
from microbench.engine.shapes import ModelShape, tp_shape
from microbench.engine.plan import ROW_PARALLEL, Fusion, Kernel, step_kernels, with_all_reduces
from microbench.stats import fit_linear


@dataclass(frozen=True)
class AllReduceProfile:
    world: int                 # ranks taking part
    latency_us: float          # alpha: GPU time of an all-reduce of (almost) no bytes
    bus_bw: float | None       # bytes/s, NCCL's bus bandwidth; None: no size was bandwidth-bound
    host_us: float = 10.0      # host cost to enqueue one all-reduce eagerly (torch.distributed)
    source: str = "assumed"
    # ((bytes, us), ...) by bytes: the graph times the fit was made from; a message of exactly
    # one of these sizes takes its own time (as an op timed at its own bytes does, model.py)
    points: tuple = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AllReduceProfile":
        kw = {k: d[k] for k in ("world", "latency_us", "bus_bw", "host_us", "source") if k in d}
        return cls(**kw, points=tuple((float(b), float(t)) for b, t in d.get("points", ())))


# ---- shapes --------------------------------------------------------------------------------
# ---- one all-reduce ------------------------------------------------------------------------
def bus_bytes(nbytes: float, world: int) -> float:
    """Bytes each GPU sends (and receives) in a ring all-reduce of nbytes: 2 (n-1)/n · nbytes."""
    return 2 * (world - 1) / world * nbytes


def bus_bandwidth(nbytes: float, us: float, world: int) -> float:
    """NCCL's bus bandwidth of an all-reduce of nbytes that took `us`: bytes/s."""
    return bus_bytes(nbytes, world) / (us * 1e-6)


def allreduce_us(nbytes: float, ar: AllReduceProfile | None) -> float:
    """GPU time of one all-reduce of nbytes: its measured time where the benchmark timed
    exactly nbytes, else alpha + busbytes / BW_bus (0 on one rank)."""
    if ar is None or ar.world <= 1:
        return 0.0
    own = next((t for b, t in ar.points if b == nbytes), None)
    if own is not None:
        return own
    wire = bus_bytes(nbytes, ar.world) / ar.bus_bw * 1e6 if ar.bus_bw else 0.0
    return ar.latency_us + wire


def fit_allreduce(points, world: int, host_us: float = 10.0,
                  source: str = "fit") -> AllReduceProfile:
    """Fit t = alpha + busbytes(S) / BW_bus to (S bytes, t us) points, each weighted by 1/t so
    small (latency-bound) and large (bandwidth-bound) messages count alike."""
    pts = [(bus_bytes(s, world), t) for s, t in points]
    if len(pts) < 2:
        raise ValueError("fit_allreduce needs at least two message sizes")
    a, b = fit_linear(*zip(*pts), relative=True)
    kw = dict(world=world, host_us=host_us, source=source,
              points=tuple(sorted((float(s), float(t)) for s, t in points)))
    # a bandwidth term under 0.1% of the latency even at the largest size is rounding noise
    if b * max(x for x, _ in pts) <= 1e-3 * abs(a):
        return AllReduceProfile(latency_us=min(t for _, t in pts), bus_bw=None, **kw)
    return AllReduceProfile(latency_us=max(0.0, a), bus_bw=1e6 / b, **kw)


def allreduce_bytes(shape: ModelShape, b: int, elt: int = 2) -> int:
    """One all-reduce of the step: the [b, hidden] output of a row-parallel matmul."""
    return b * shape.hidden * elt


# ---- the step ------------------------------------------------------------------------------
def tp_step_kernels(shape: ModelShape, tp: int, b: int, context: int, elt: int = 2,
                    attn_launches: int = 2,
                    fusion: Fusion = Fusion.ATTENTION) -> list[Kernel]:
    """One rank's kernels at batch b: the shard's (plan.step_kernels at tp_shape, for the
    decoder's `fusion`) with an `all_reduce` after each row-parallel matmul. An all-reduce's
    `bytes` is its message size S."""
    ks = step_kernels(tp_shape(shape, tp), b, context, elt, attn_launches, fusion)
    return ks if tp == 1 else with_all_reduces(ks, b, shape.hidden, elt)


def tp_eager_step_us(shape: ModelShape, tp: int, b: int, context: int, p: mdl.DeviceProfile,
                     ar: AllReduceProfile | None, elt: int = 2, attn_launches: int = 2,
                     fusion: Fusion = Fusion.ATTENTION) -> float:
    """model.eager_step_us's host/GPU pipeline over one rank's kernels and all-reduces. An
    all-reduce's host cost is the profile's `all_reduce` op cost where it has one (sampled in
    place, beside the row's steps), else the collective benchmark's enqueue cost."""
    if ar is not None and ar.world > 1 and "all_reduce" not in p.op_host_us:
        p = replace(p, op_host_us={**p.op_host_us, "all_reduce": ar.host_us})
    gpu = lambda k: allreduce_us(k.bytes, ar) if k.name == "all_reduce" else mdl.kernel_time_us(k, p)
    return mdl.eager_pipeline_us(tp_step_kernels(shape, tp, b, context, elt, attn_launches, fusion),
                                 p, gpu)


def tp_graph_step_us(shape: ModelShape, tp: int, b: int, context: int, p: mdl.DeviceProfile,
                     ar: AllReduceProfile | None, padded: int | None = None, elt: int = 2,
                     attn_launches: int = 2, fusion: Fusion = Fusion.ATTENTION) -> float:
    """The shard's graph step at the padded size plus its 2·L all-reduces."""
    n = padded or b
    shard = mdl.graph_step_us(tp_shape(shape, tp), b, context, p, padded, elt, attn_launches,
                              fusion)
    return shard + n_allreduces(shape, tp) * allreduce_us(allreduce_bytes(shape, n, elt), ar)


def n_allreduces(shape: ModelShape, tp: int) -> int:
    return 0 if tp == 1 else len(ROW_PARALLEL) * shape.n_layers


def predict_tp(shape: ModelShape, tp: int, b: int, context: int, p: mdl.DeviceProfile,
               ar: AllReduceProfile | None, padded: int | None = None, elt: int = 2,
               attn_launches: int = 2, padded_attn_launches: int | None = None,
               fusion: Fusion = Fusion.ATTENTION) -> dict:
    """Predicted eager and graph step of one rank at batch b (graph at `padded`), with the GPU
    time the all-reduces take in each and their share of the step."""
    n = padded or b
    e = tp_eager_step_us(shape, tp, b, context, p, ar, elt, attn_launches, fusion)
    g = tp_graph_step_us(shape, tp, b, context, p, ar, padded, elt,
                         padded_attn_launches or attn_launches, fusion)
    k = n_allreduces(shape, tp)
    ar_e = k * allreduce_us(allreduce_bytes(shape, b, elt), ar)
    ar_g = k * allreduce_us(allreduce_bytes(shape, n, elt), ar)
    return dict(bs=b, padded_bs=n, tp=tp, predicted_eager_step_us=e,
                predicted_graph_step_us=g, predicted_speedup=(e / g) if g else None,
                predicted_allreduce_gpu_us=ar_g, predicted_allreduce_share_graph=ar_g / g if g else None,
                predicted_allreduce_eager_gpu_us=ar_e, allreduces=k)
