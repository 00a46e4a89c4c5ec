"""The one measured-row routine: a batch size's arms, sampled in rotation in one process and
each checked against the first arm's logits. The sweep, the TP sweep and `reproduce` all build
their rows with `measure_row`; what differs between them is which arms they pass and what each
arm's timer adds.

How a row is measured (DESIGN.md's timing discipline):

1. each arm prepared (set-up that is not timed, such as compiling) and checked: its logits of one
   step against the first arm's;
2. every arm warmed up, then sampled in rotation (timing.interleave): one sample is the wall time
   per step of `steps` synchronised steps, arms alternating (eager, graph, graph, eager, ...), so
   the host's drift hits every arm alike; sampling stops once the speedup's bootstrap interval is
   within 2% of it (stats.settled; rows without a graph arm: every arm's p20-p80 spread under 3%),
   or when the time cap ends (the budget times each arm's scale, summed): then `stable: false`;
   before each round, untimed, an arm's timer may sample figures that must see the host as the
   timed steps do (the eager arm: the op host costs and one step's host time, for the model);
3. each arm's secondary figures (GPU time of back-to-back steps, the graph's host time) measured
   after, arm by arm.

A row's fields, for arms named by their prefix p (`eager_`, `graph_`, `torch_graph_`, or none):

    bs, padded_bs, ran_as          the batch, the captured size it ran as, how it ran
    {p}step_us, {p}p20, {p}p80, {p}n   wall time per synchronised step (decode latency): median,
                                   quantiles and samples
    max_abs_diff / {p}max_abs_diff  largest |logit - reference logit| of one step
    speedup, speedup_ci            median over rotations of eager_i / graph_i, and its 95%
                                   bootstrap interval (stats.paired_ratio)
    speedup_ratios                 the paired ratios themselves (for --repeat's interval)
    {p}speedup, {p}speedup_ci      the same for another arm against graph ({p} time / graph time)
    stable                         whether the stopping rule was met before the time cap

plus what an arm's timer adds (host time, GPU time, event time). Timers that are plain callables
(`time(step, row) -> fields`) are called on their own after the rotation, as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from microbench.bench.ops import OpCostSampler
from microbench.bench.timing import (Stats, gpu_time_us, host_time_us, interleave, summarize,
                                     wall_sampler)
from microbench.engine.nvtx import nvtx_range
from microbench.stats import REL_CI, RESAMPLES, paired_ratio, settled

WARMUP = 5
SPREAD = 0.03       # rows without a graph arm: stable when every arm's p20-p80 spread is under it


@dataclass(frozen=True)
class Arm:
    """One way to run the step: `step()` returns the step's logits; `time` is its Timer (sampled
    in rotation with the other arms), or a callable `time(step, row) -> fields` timed alone;
    `diff` names the field of its largest difference from the first arm's logits (None: not
    checked); `prepare(row)` runs before the check (set-up that is not timed)."""
    step: Callable
    time: Callable
    diff: str | None = None
    prepare: Callable | None = None


@dataclass(frozen=True)
class Budget:
    """How long a row is sampled: `steps` synchronised steps per sample, rotations until the
    stopping rule holds or `budget_s` (times each arm's scale, summed over the arms) ends.
    `lockstep(fn, inner, budget_s)`, on TP ranks, gives the settle keywords that make every rank
    take the same number of rotations (the stopping rule is then judged after, not used to stop).
    `pin()`, when given, makes a hostcpu.HostPin: checked before each round, released after the
    rotation, its summary the row's `host_pin`."""
    steps: int
    budget_s: float
    lockstep: Callable | None = None
    pin: Callable | None = None


@dataclass(frozen=True)
class Timer:
    """An arm's timer: wall time of `budget.steps` synchronised steps per sample, its fields
    named `{prefix}step_us`, ...; `scale` weighs its share of the row's time cap; with `event`,
    the CUDA-event time of the same samples (`{prefix}event_us`); `beside(step)`, when given,
    runs before each round of the rotation, untimed and off the time cap (figures that must see
    the host as the timed steps do; the rounds alternate their order, so every arm follows it
    alike); `keep(indices)`, when given, is told which rounds' samples the rotation returned
    (those the host was quick around, timing.interleave's `quiet`), so the figures `beside`
    took keep the same rounds; `after(step, row)` returns secondary figures once the rotation
    ends. Called as `timer(step, row)`, it times the step alone (a rotation of one arm)."""
    prefix: str
    budget: Budget
    scale: float = 1.0
    event: bool = False
    after: Callable | None = None
    beside: Callable | None = None
    keep: Callable | None = None

    def __call__(self, fn, row) -> dict:
        out = sample_rotation({"": (fn, self)})
        if self.after is not None:
            out.update(self.after(fn, out))
        return out


def measure_row(arms: dict, bs: int, padded, ran_as: str, say=None, on_round=None) -> dict:
    """Prepare and check every arm in order (the first is the reference whose logits the others
    are checked against), sample the Timer arms in rotation, then the other timers and each
    Timer's secondary figures. Returns the row (fields above). on_round: timing.interleave's,
    for the rotation's progress."""
    say = say or (lambda s: None)
    row = dict(bs=bs, padded_bs=padded, ran_as=ran_as)
    want = None
    check = any(a.diff for a in arms.values())
    for i, (name, arm) in enumerate(arms.items()):
        if arm.prepare is not None:
            arm.prepare(row)
        if check and i == 0:
            want = arm.step().float().clone()   # a bound or graphed step reuses its output
        elif arm.diff:
            row[arm.diff] = float((arm.step().float() - want).abs().max())
    rotation = {n: (a.step, a.time) for n, a in arms.items() if isinstance(a.time, Timer)}
    if rotation:
        say(f"bs {bs}: {', '.join(rotation)}" + (" in rotation" if len(rotation) > 1 else ""))
        with nvtx_range(f"bs {bs}: {', '.join(rotation)} in rotation"):
            row.update(sample_rotation(rotation, on_round=on_round))
    for name, arm in arms.items():
        if not isinstance(arm.time, Timer):
            say(f"bs {bs}: {name}")
            with nvtx_range(f"bs {bs}: {name}"):
                row.update(arm.time(arm.step, row))
    for name, (fn, t) in rotation.items():
        if t.after is not None:
            say(f"bs {bs}: {name}, host and GPU figures")
            with nvtx_range(f"bs {bs}: {name}, host and GPU figures"):
                row.update(t.after(fn, row))
    if "eager_step_us" in row and "speedup" not in row:   # timed alone: the ratio of medians
        g = row.get("graph_step_us")
        row.update(graph_step_us=g, speedup=row["eager_step_us"] / g if g else None)
    return row


def sample_rotation(arms: dict, seed: int = 0, on_round=None) -> dict:
    """{name: (step, Timer)} sampled in rotation (timing.interleave); returns each arm's timing
    fields, the speedups with their intervals, and `stable`."""
    timers = [t for _, t in arms.values()]
    budget = timers[0].budget
    cap = sum(t.scale * t.budget.budget_s for t in timers)
    events = {n: [] if t.event else None for n, (_, t) in arms.items()}
    samplers = {n: ranged(wall_sampler(fn, t.budget.steps, events=events[n]), f"{n} steps")
                for n, (fn, t) in arms.items()}
    pin = budget.pin() if budget.pin is not None else None
    # the pin's check first, so the host costs sampled beside are sampled on the CPU it keeps
    hooks = ([partial(_check_pin, pin, arms)] if pin is not None and pin.every_round else []) + [
        partial(t.beside, fn) for fn, t in arms.values() if t.beside is not None]
    between = (lambda: [h() for h in hooks]) if hooks else None
    prefix = {t.prefix: n for n, (_, t) in arms.items()}
    done = rule(prefix)
    for fn, _ in arms.values():
        for _ in range(WARMUP):
            fn()
    try:
        if pin is not None:   # the first check chooses the CPU: after the warm-up, so threads
            _check_pin(pin, arms)   # and workers it starts keep every CPU
        quiet = pin.quiet if pin is not None and pin.quiet_tol is not None else None
        counts: dict = {}
        xs, stable = _rotate(samplers, events, budget, done, cap, on_round, between, quiet,
                             counts)
    finally:
        if pin is not None:
            pin.release()
    kept = counts.pop("kept", None)
    if kept is not None:   # the figures sampled with each round, of the rounds returned only
        for n, (_, t) in arms.items():
            if events[n]:
                events[n][:] = [events[n][i] for i in kept]
            if t.keep is not None:
                t.keep(kept)
    # the pin's summary with the rotation's round counts (rounds, quiet_rounds, quiet_fallback)
    out: dict = {} if pin is None else {"host_pin": {**pin.summary(), **counts}}
    for n, (_, t) in arms.items():
        out.update(stats_fields(t.prefix, summarize(xs[n])))
        if events[n]:
            out[f"{t.prefix}event_us"] = summarize(events[n]).median
    out.update(speedups(prefix, xs, seed))
    out["stable"] = bool(stable)
    return out


def _check_pin(pin, arms: dict) -> None:
    """Before a round: the pin's check; when it slept waiting for a slow host, one untimed step
    of each arm, so the round does not start from an idle GPU."""
    if pin.check():
        for fn, _ in arms.values():
            fn()


def _rotate(samplers, events, budget, done, cap, on_round, between, quiet, counts):
    """timing.interleave under the row's stopping rule, counting only the rounds the host was
    quick around (`quiet`, hostcpu.HostPin.quiet), or in lockstep on TP ranks (every rank the
    same rotations, every round counted; the rule judged after). Returns (samples, stable)."""
    if budget.lockstep is None:
        return interleave(samplers, done, budget_s=cap, on_round=on_round, between=between,
                          quiet=quiet, counts=counts)
    kw = budget.lockstep(lambda: [s() for s in samplers.values()], 1, cap)
    for v in events.values():   # the two calls that timed a rotation are not samples
        if v is not None:
            v.clear()
    xs, _ = interleave(samplers, None, min_rounds=kw["min_samples"], max_rounds=kw["max_samples"],
                       budget_s=kw["budget_s"], on_round=on_round, between=between)
    return xs, done(xs)


def ranged(sample, name: str):
    """`sample` inside a range named `name` (NVTX and profiler), so a trace shows each arm's
    timed steps; the range opens before the sample's own clock starts and closes after it
    stops."""
    def call():
        with nvtx_range(name):
            return sample()
    return call


def rule(prefix: dict):
    """The stopping rule for arms keyed by prefix: with eager and graph arms, the speedup's
    bootstrap interval within REL_CI of it (a quick 500-resample interval while sampling);
    otherwise every arm's p20-p80 spread under SPREAD."""
    e, g = prefix.get("eager_"), prefix.get("graph_")
    if e is not None and g is not None:
        def done(xs) -> bool:
            r = paired_ratio(xs[e], xs[g], resamples=500)
            return settled(r["ci"], r["median"], REL_CI)
        return done
    return lambda xs: all(summarize(v).spread < SPREAD for v in xs.values())


def speedups(prefix: dict, xs: dict, seed: int = 0) -> dict:
    """speedup and speedup_ci (eager against graph), and {p}speedup, {p}speedup_ci for every
    other arm against graph, from paired samples; nothing without a graph arm."""
    g = prefix.get("graph_")
    if g is None:
        return {}
    out = {}
    for p, n in prefix.items():
        if n == g:
            continue
        r = paired_ratio(xs[n], xs[g], RESAMPLES, seed)
        key = "" if p == "eager_" else p
        out.update({f"{key}speedup": r["median"], f"{key}speedup_ci": r["ci"]})
        if p == "eager_":   # kept for --repeat's hierarchical interval (stats.merge_repeats)
            out["speedup_ratios"] = [float(f"{e / gg:.6g}") for e, gg in zip(xs[n], xs[g])]
    return out


def stats_fields(prefix: str, st: Stats) -> dict:
    return {f"{prefix}step_us": st.median, f"{prefix}p20": st.p20, f"{prefix}p80": st.p80,
            f"{prefix}n": st.n}


def wall_timer(prefix: str, budget: Budget, scale: float = 1.0, event: bool = False) -> Timer:
    """Wall time of synchronised steps; with `event`, the CUDA-event time of the same samples
    as `{prefix}event_us`. `scale` weighs the arm's share of the time cap."""
    return Timer(prefix, budget, scale, event)


def graph_timer(budget: Budget) -> Timer:
    """The sweep's graph arm: wall time of synchronised steps in the rotation; after it, GPU
    busy time of back-to-back steps (`graph_gpu_us`) and host time of one step
    (`graph_host_us`)."""
    def after(fn, row) -> dict:
        kw = dict(budget_s=budget.budget_s)
        busy = gpu_time_us(fn, inner=budget.steps, **kw)
        host = host_time_us(fn, **kw)
        return {"graph_gpu_us": busy.median, "graph_host_us": host.median}
    return Timer("graph_", budget, after=after)


def host_fields(row: dict, host_costs: dict, kernels: int | None = None) -> dict:
    """The row's host side as eager_timer sampled it beside its steps (op_host_us,
    piece_glue_us: the model's host inputs), and, for a bound eager step of `kernels` launches,
    the step's host time per kernel; nothing where the eager arm was timed without it."""
    if "op_host_us" in host_costs:
        row.update(op_host_us=host_costs["op_host_us"], piece_glue_us=host_costs["piece_glue_us"])
    if kernels:
        row.update(eager_kernels=kernels, eager_host_us_per_kernel=row["eager_host_us"] / kernels)
    return row


def eager_timer(dec, bs: int, budget: Budget, host_costs: dict, bound=None) -> Timer:
    """The sweep's eager arm: eager steps are host-bound and the host is the noisier side, so
    twice the share of the time cap. Before each round of the rotation an ops.OpCostSampler
    samples the plan's op host costs, the piece glue and one step's host time, so the model's
    host inputs see the host as the timed steps do; after the rotation they are left in
    `host_costs` (op_host_us, piece_glue_us) and the row gets `eager_host_us`. With `bound` (the
    engine.bound.BoundStep the arm runs), the op costs are its bound launches'."""
    made: list = []

    def beside(step):
        if not made:
            made.append(OpCostSampler(step, dec, bs, bound))
        made[0].sample()

    def keep(rounds):
        if made:
            made[0].keep(rounds)

    def after(fn, row) -> dict:
        ops, glue, host = made[0].result()
        host_costs.update(op_host_us=ops, piece_glue_us=glue)
        return {"eager_host_us": host.median}
    return Timer("eager_", budget, scale=2.0, after=after, beside=beside, keep=keep)
