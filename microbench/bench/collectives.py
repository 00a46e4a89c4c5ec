"""Timing in lockstep across ranks, and the all-reduce benchmark.

Every rank must call each collective the same number of times in the same order, or the ranks
hang. `timing.settle` stops when the spread settles or its time budget ends, which differs from
rank to rank; so each measurement here first agrees on a sample count (the budget over the
slowest rank's time per sample, through an all-reduce on the host group) and then every rank
takes exactly that many.

The all-reduce benchmark, per message size S (elements of one dtype, in place, summed):

* eager: k all-reduces issued back to back, wall time from the first enqueue to a device-wide
  synchronise after the last, per call. This is what an eager decode step pays per collective:
  the host's enqueue (through NCCL directly, bench.nccl, or through torch.distributed) when that
  is slower than the GPU, the GPU's time when not. (Through torch.distributed, CUDA events on
  the caller's stream do not see it: NCCL runs on its own stream there, so events around eager
  all-reduces read far less than the collective takes.)
* graph: replays of one CUDA graph of k all-reduces, per call: GPU time alone, no host in it.
* host: host time to enqueue one all-reduce (smallest size only; it does not depend on S).

The graph times are fitted as alpha + busbytes(S) / BW_bus (`model_tp.fit_allreduce`, through
the `fit` the CLI passes).
Figures are rank 0's; a collective ends on all ranks at about the same time.
"""
from __future__ import annotations

import functools
import time


SETTLE_SAMPLES = (10, 200)   # at least and at most, as timing.settle takes by default
LAUNCH_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)          # [B, hidden] messages
BIG_BYTES = (1 << 20, 4 << 20, 16 << 20, 64 << 20)        # bandwidth-bound messages


def agree_max(x: float, group) -> float:
    """The largest x over the ranks of `group` (a host-side gloo group)."""
    import torch
    import torch.distributed as dist
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return float(t.item())


def gather(obj, group) -> list:
    """obj of every rank of `group`, by rank."""
    import torch.distributed as dist
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def lockstep(fn, inner: int, budget_s: float, group) -> dict:
    """timing.settle keywords that make every rank take the same number of samples of `inner`
    calls of fn: the budget over the slowest rank's time per sample, clamped to SETTLE_SAMPLES.
    Calls fn twice to estimate (every rank does, so collectives inside fn stay matched)."""
    import torch
    import torch.distributed as dist
    dist.barrier(group=group)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    fn()
    torch.cuda.synchronize()
    per_sample = agree_max((time.perf_counter() - t0) / 2 * inner, group)
    lo, hi = SETTLE_SAMPLES
    n = max(lo, min(hi, int(budget_s / max(per_sample, 1e-9))))
    return dict(min_samples=n, max_samples=n, budget_s=float("inf"))


def _burst(fn, k: int):
    for _ in range(k):
        fn()


def allreduce_numels(hidden: int, elt: int, rows=LAUNCH_ROWS, big=BIG_BYTES) -> list[int]:
    """Message sizes in elements: [B, hidden] for B in rows, then the big sizes in bytes."""
    return sorted({b * hidden for b in rows} | {n // elt for n in big})


def measure_allreduce(numels, dtype, device, k: int, budget_s: float, host_group, group=None,
                      say=None, fit=None, reduce=None) -> dict:
    """The all-reduce benchmark (see the module docstring) over message sizes `numels`; k
    collectives per sample and per graph, each through `reduce` when given (the TP sweep's
    DirectAllReduce), else torch.distributed. Returns dict(points=[...], host_us, fit) where fit is
    fit(points, world, host_us) (analysis.beside.allreduce_fit, from the CLI: it adds the
    points' bus bandwidths and fits the graph times; None without it)."""
    import torch
    import torch.distributed as dist

    from microbench.bench.timing import gpu_time_us, graph_of, host_time_us, step_time_us
    world = dist.get_world_size(group)
    numels = sorted(set(int(n) for n in numels))
    buf = torch.zeros(numels[-1], dtype=dtype, device=device)  # zeros: sums never overflow
    elt = buf.element_size()
    points, host_us = [], None
    for n in numels:
        if say:
            say(f"all-reduce of {n * elt} bytes")
        # the steps' own all-reduce path: `reduce` (bench.nccl.DirectAllReduce) or torch's
        fn = (functools.partial(reduce, buf[:n]) if reduce is not None
              else functools.partial(dist.all_reduce, buf[:n], group=group))
        if host_us is None:
            host_us = host_time_us(fn, inner=k, **lockstep(fn, k, budget_s, host_group)).median
        # k back to back, then a device-wide synchronise: NCCL's own stream included (the end
        # event of step_time_us without sync_each sits on the caller's stream, which does not
        # wait for it, and reads an impossibly short time)
        burst = functools.partial(_burst, fn, k)
        _, e = step_time_us(burst, inner=1, sync_each=True, **lockstep(burst, 1, budget_s, host_group))
        g = graph_of(fn, k)
        r = gpu_time_us(g.replay, inner=5, **lockstep(g.replay, 5, budget_s, host_group))
        del g
        pt = dict(numel=n, bytes=n * elt, eager_us=e.median / k, eager_p20=e.p20 / k,
                  eager_p80=e.p80 / k, graph_us=r.median / k, graph_p20=r.p20 / k,
                  graph_p80=r.p80 / k, samples=r.n)
        pt["algbw"] = pt["bytes"] / (pt["graph_us"] * 1e-6)
        points.append(pt)
    del buf
    return dict(world=world, k=k, dtype=str(dtype).replace("torch.", ""), points=points,
                host_us=host_us, fit=fit(points, world, host_us) if fit else None,
                path="torch.distributed" if reduce is None else "NCCL direct")


def point_at(bench: dict, nbytes: int) -> dict | None:
    """The benchmark's point for a message of exactly nbytes, if it measured one."""
    return next((p for p in bench["points"] if p["bytes"] == nbytes), None)
