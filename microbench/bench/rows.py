"""The one measured-row routine: a batch size's arms, timed side by side in one process, each
checked against the first arm's logits. The sweep, the TP sweep and `reproduce` all build their
rows with `measure_row`; what differs between them is which arms they pass and how each arm is
timed (the timers below).

A row's fields, for arms named by their prefix p (`eager_`, `graph_`, `torch_graph_`, or none):

    bs, padded_bs, ran_as          the batch, the captured size it ran as, how it ran
    {p}step_us, {p}p20, {p}p80, {p}n   wall time per synchronised step (decode latency): median,
                                   quantiles and samples
    max_abs_diff / {p}max_abs_diff  largest |logit - reference logit| of one step
    speedup                        eager_step_us / graph_step_us, where the row has both

plus what an arm's timer adds (host time, GPU time, event time).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from microbench.bench.ops import eager_with_op_costs
from microbench.bench.timing import Stats, gpu_time_us, host_time_us, step_time_us


@dataclass(frozen=True)
class Arm:
    """One way to run the step: `step()` returns the step's logits; `time(step, row)` times it
    and returns its fields; `diff` names the field of its largest difference from the first
    arm's logits (None: not checked); `prepare(row)` runs before the check (set-up that is not
    timed, such as compiling)."""
    step: Callable
    time: Callable
    diff: str | None = None
    prepare: Callable | None = None


@dataclass(frozen=True)
class Budget:
    """How long each arm is timed: `steps` synchronised steps per sample, samples until the
    spread settles or `budget_s` ends. `lockstep(fn, inner, budget_s)`, on TP ranks, gives the
    settle keywords that make every rank take the same number of samples."""
    steps: int
    budget_s: float
    lockstep: Callable | None = None

    def settle_kw(self, fn, scale: float = 1.0) -> dict:
        b = scale * self.budget_s
        return self.lockstep(fn, self.steps, b) if self.lockstep else dict(budget_s=b)


def measure_row(arms: dict, bs: int, padded, ran_as: str, say=None) -> dict:
    """Time each arm in order; the first is the reference whose logits the others are checked
    against (each checked just before it is timed). Returns the row (fields above)."""
    say = say or (lambda s: None)
    row = dict(bs=bs, padded_bs=padded, ran_as=ran_as)
    want = None
    for i, (name, arm) in enumerate(arms.items()):
        say(f"bs {bs}: {name}")
        if arm.prepare is not None:
            arm.prepare(row)
        if i > 0 and arm.diff:
            row[arm.diff] = float((arm.step().float() - want).abs().max())
        row.update(arm.time(arm.step, row))
        if i == 0 and any(a.diff for a in arms.values()):
            want = arm.step().float()
    if "eager_step_us" in row:   # eager against graph: the speedup (None without graphs)
        g = row.get("graph_step_us")
        row.update(graph_step_us=g, speedup=row["eager_step_us"] / g if g else None)
    return row


def stats_fields(prefix: str, st: Stats) -> dict:
    return {f"{prefix}step_us": st.median, f"{prefix}p20": st.p20, f"{prefix}p80": st.p80,
            f"{prefix}n": st.n}


def wall_timer(prefix: str, budget: Budget, scale: float = 1.0, event: bool = False):
    """Wall time of synchronised steps; with `event`, the CUDA-event time of the same samples
    as `{prefix}event_us`. `scale` multiplies the budget."""
    def time(fn, row) -> dict:
        gpu, wall = step_time_us(fn, inner=budget.steps, sync_each=True,
                                 **budget.settle_kw(fn, scale))
        out = stats_fields(prefix, wall)
        if event:
            out[f"{prefix}event_us"] = gpu.median
        return out
    return time


def graph_timer(budget: Budget):
    """The sweep's graph arm: wall time of synchronised steps, GPU busy time of back-to-back
    steps (`graph_gpu_us`) and host time of one step (`graph_host_us`)."""
    def time(fn, row) -> dict:
        kw = dict(budget_s=budget.budget_s)
        _, wall = step_time_us(fn, inner=budget.steps, sync_each=True, **kw)
        busy = gpu_time_us(fn, inner=budget.steps, **kw)
        host = host_time_us(fn, **kw)
        return {**stats_fields("graph_", wall), "graph_gpu_us": busy.median,
                "graph_host_us": host.median}
    return time


def eager_timer(dec, bs: int, budget: Budget, host_costs: dict):
    """The sweep's eager arm: eager steps are host-bound and the host is the noisier side, so
    twice the budget; the plan's op host costs and the piece glue are sampled between the
    steps (ops.eager_with_op_costs) and left in `host_costs` (op_host_us, piece_glue_us);
    then the host time of one step (`eager_host_us`)."""
    def time(fn, row) -> dict:
        wall, ops, glue = eager_with_op_costs(fn, dec, bs, budget.steps, 2 * budget.budget_s)
        host = host_time_us(fn, budget_s=budget.budget_s)
        host_costs.update(op_host_us=ops, piece_glue_us=glue)
        return {**stats_fields("eager_", wall), "eager_host_us": host.median}
    return time
