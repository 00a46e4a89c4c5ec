"""Where a graph replay's GPU time goes against the copy bandwidth, by plan family.

For each family of `engine.plan.family` (skinny, cublas, attention, small): the bytes the plan's
kernels must move (`plan.step_kernels`), the GPU time the profiler saw those kernels take in one
replay (`bench.profile.kernel_breakdown`, whose finer families are mapped below), the bandwidth
that achieves and its share of the copy bandwidth measured in the same run:

    bytes_per_s = bytes / us,   copy_share = bytes_per_s / copy_bw,
    us_at_copy = bytes / copy_bw,   us_over = us - us_at_copy

`us_over` is the address of the gap: the time a family takes beyond what its bytes cost at the
copy bandwidth. Kernels the profiler saw that the plan does not list (its `other` family, such
as a library's split-K reduce) keep their time under `other`, with no bytes.

A kernel launched with programmatic dependent launch (PDL) starts before the one before it ends
and waits; its profiled time includes that wait, so a PDL replay's family times add up past the
step. `kernels_without_pdl` times the same replay from a graph captured without PDL, where each
kernel's time is its own.
"""
from __future__ import annotations

import copy

from microbench.bench.inputs import packed, step_inputs
from microbench.bench.profile import profile_kernels
from microbench.engine.plan import family
from microbench.engine.runner import GraphRunner

# the profiler's families (bench.profile.KERNEL_FAMILIES) by plan family; every profiled family
# not named here, other than UNPLANNED, is one of the plan's small kernels
ATTENTION = ("decode_attention", "attention_reduce")
MATMUL = "matmul"
MATMUL_FAMILIES = ("skinny", "cublas")
UNPLANNED = "other"


def plan_bytes(kernels) -> dict:
    """{plan family: (bytes, kernels)} of a step's kernels."""
    out: dict = {}
    for k in kernels:
        b, n = out.get(family(k), (0, 0))
        out[family(k)] = (b + k.bytes, n + 1)
    return out


def matmul_family(planned: dict) -> str:
    """The plan family the profiler's matmuls belong to: the plan's one matmul family at this
    batch, or both joined ("skinny+cublas") where the plan runs both."""
    fams = [f for f in MATMUL_FAMILIES if f in planned]
    return "+".join(fams) if fams else MATMUL_FAMILIES[1]


def family_bandwidth(breakdown: dict, kernels, copy_bw: float | None) -> dict:
    """{family: dict(bytes, us, n, planned, bytes_per_s, copy_share, us_at_copy, us_over)} of
    one replay: `breakdown` is kernel_breakdown's {profiled family: {n, us}}, `kernels` the
    plan's kernels at the batch the graph ran (plan.step_kernels), `copy_bw` the measured copy
    bandwidth in bytes/s (None: the shares are None). `n` counts profiled kernels, `planned`
    the plan's; bytes is None for `other`, and the rates are None where a family took no time."""
    planned = plan_bytes(kernels)
    mm = matmul_family(planned)
    if "+" in mm:   # one profiled family for both: their bytes together
        planned[mm] = tuple(map(sum, zip(*(planned.pop(f) for f in MATMUL_FAMILIES))))
    time: dict = {}
    for prof, d in breakdown.items():
        fam = ("attention" if prof in ATTENTION else mm if prof == MATMUL
               else UNPLANNED if prof == UNPLANNED else "small")
        us, n = time.get(fam, (0.0, 0))
        time[fam] = (us + d["us"], n + d["n"])
    out = {}
    for fam in [*planned, *(f for f in time if f not in planned)]:
        nbytes, n_plan = planned.get(fam, (None, 0))
        us, n = time.get(fam, (0.0, 0))
        rate = nbytes / (us * 1e-6) if nbytes is not None and us > 0 else None
        at_copy = nbytes / copy_bw * 1e6 if nbytes is not None and copy_bw else None
        out[fam] = dict(bytes=nbytes, us=us, n=n, planned=n_plan, bytes_per_s=rate,
                        copy_share=rate / copy_bw if rate is not None and copy_bw else None,
                        us_at_copy=at_copy, us_over=us - at_copy if at_copy is not None else None)
    return out


def kernels_without_pdl(dec, bs: int, size: int, mode: str, context: int) -> list:
    """(name, GPU us) of every kernel of one replay of `dec`'s step for bs sequences at
    `context`, from a graph of `size` rows captured (mode `mode`) from a shallow copy of dec
    that launches without PDL: the same weights, caches and plan, each kernel timed alone. The
    graph is freed before returning."""
    twin = copy.copy(dec)   # shares the weights and caches; only the launch flag differs
    twin.pdl_at = lambda batch: False
    runner = GraphRunner(twin, [size], mode=mode)
    try:
        runner.capture()
        x = packed(*step_inputs(dec.shape.vocab, bs, context, dec.device))
        return profile_kernels(lambda: runner.step_packed(x))
    finally:
        runner.close()
