"""Timing: quantiles, adaptive repetition, arms sampled in rotation (interleave), GPU time from
CUDA events, host time apart.

What is warm and what is cold: every timed figure is *warm*. Before sampling, the callable runs
`warmup` times, so Triton's JIT compilation, cuBLAS heuristics, the allocator's first cudaMalloc
calls and the GPU's clock ramp are behind us. Cold costs (compilation, capture) are measured
once, on their own, and reported as set-up seconds, never mixed into step times.

A trap this module is built around: CUDA events around one small launched kernel measure the
host's enqueue latency, not the kernel. GPU time is therefore taken over `inner` back-to-back
calls between two events and divided by `inner`: the GPU drains the queue while the host keeps
it full, so the figure is the GPU's time per call when the GPU is the bottleneck, and the host's
when the host is (that is the honest step time of an eager decoder). Host cost of one call is
measured separately, synchronised before each sample, so it never waits on a full queue.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass

QUANTILES = (0.5, 0.2, 0.8)


@dataclass(frozen=True)
class Stats:
    """Median, p20 and p80 of n samples (microseconds unless said otherwise)."""
    median: float
    p20: float
    p80: float
    n: int

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: the relative spread used to decide when to stop."""
        return (self.p80 - self.p20) / self.median if self.median else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def quantile(sorted_xs, q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty sequence."""
    if not sorted_xs:
        raise ValueError("quantile of no samples")
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples) -> Stats:
    xs = sorted(float(x) for x in samples)
    return Stats(median=statistics.median(xs), p20=quantile(xs, 0.2), p80=quantile(xs, 0.8),
                 n=len(xs))


def settle(sample, min_samples: int = 10, max_samples: int = 200, budget_s: float = 2.0,
           threshold: float = 0.03) -> Stats:
    """Call `sample()` (returns one measurement) until the spread (p80 - p20)/median of the
    samples so far is under `threshold` with at least `min_samples`, or `max_samples` are
    taken, or `budget_s` seconds have passed (at least `min_samples` are always taken)."""
    xs, t_end = [], time.perf_counter() + budget_s
    # As timeit does: no garbage collection pauses inside the samples (a host-bound eager
    # step allocates hundreds of Python objects, and a gen-2 collection costs milliseconds).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while len(xs) < max_samples:
            xs.append(sample())
            if len(xs) >= min_samples and (time.perf_counter() > t_end or
                                           summarize(xs).spread < threshold):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return summarize(xs)


def interleave(samplers: dict, done=None, min_rounds: int = 10, max_rounds: int = 200,
               budget_s: float = 2.0, check_every: int = 5, on_round=None,
               between=None, quiet=None, counts: dict | None = None) -> tuple[dict, bool]:
    """Samples of several arms taken in rotation, so the host's drift hits every arm alike:
    round r calls each sampler once, in the given order on even rounds and reversed on odd
    ones (A B, B A, A B, ...: a balanced order, no arm always first after a pause). Sample i of
    every arm comes from round i, so arms can be paired.

    Stops after `min_rounds` once `done(samples)` holds (checked every `check_every` rounds),
    or at `max_rounds`, or when `budget_s` seconds have passed. Returns ({name: [samples]},
    stable): stable when `done` held at the end (no `done`: True). `on_round(rounds, seconds,
    budget_s)` after each round, between samples (a progress display). `between()` runs before
    each round, untimed and off the time cap's clock: the rounds alternate their order, so every
    arm follows it in half its samples.

    `quiet()`, when given, says whether the host is quick now; it is asked after `between()`
    just before each round and again just after it, both off the clock. A round counts only when
    both answers are yes: the rounds and the stopping rule see counted rounds alone, and
    `on_round` the rounds taken. Short of `min_rounds` counted rounds at the time cap, it goes
    on for up to another `budget_s` (at most 4 * max_rounds rounds in all); still short, it
    returns every round taken and stable False, as a row at its cap without the rule. `counts`,
    when given, is filled with the rounds taken (`rounds`) and, with `quiet`, the rounds
    counted (`quiet_rounds`), the indices of the rounds returned (`kept`, so figures sampled
    beside each round can be kept alike) and `quiet_fallback` when every round was returned."""
    names = list(samplers)
    xs: dict = {n: [] for n in names}
    all_xs: dict = {n: [] for n in names}
    kept: list = []
    t_end = time.perf_counter() + budget_s
    ok = False
    gc_was_enabled = gc.isenabled()
    gc.disable()    # as settle: no collection pauses inside the samples
    try:
        for r in range(max_rounds if quiet is None else 4 * max_rounds):
            t0 = time.perf_counter()
            if between is not None:
                between()
            before = quiet() if quiet is not None else True
            t_end += time.perf_counter() - t0
            got = {}
            for n in (names if r % 2 == 0 else names[::-1]):
                got[n] = samplers[n]()
            for n in names:
                all_xs[n].append(got[n])
            counted = True
            if quiet is not None:
                t0 = time.perf_counter()
                counted = quiet() and before
                t_end += time.perf_counter() - t0
            if counted:
                kept.append(r)
                for n in names:
                    xs[n].append(got[n])
            k = len(kept)
            if on_round is not None:
                on_round(r + 1, budget_s - (t_end - time.perf_counter()), budget_s)
            checked = counted and done is not None and k >= min_rounds
            if checked and (k - min_rounds) % check_every == 0:
                ok = done(xs)
                if ok:
                    break
            if k >= max_rounds:
                break
            late = time.perf_counter() - t_end
            if (k >= min_rounds and late > 0) or (quiet is not None and late > budget_s):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    taken = len(all_xs[names[0]])
    fallback = quiet is not None and len(kept) < min_rounds
    if counts is not None:
        counts["rounds"] = taken
        if quiet is not None:
            counts.update(quiet_rounds=len(kept), kept=list(range(taken)) if fallback else kept)
            if fallback:
                counts["quiet_fallback"] = True
    if fallback:
        return all_xs, False
    if done is None:
        return xs, True
    return xs, ok or done(xs)


def wall_sampler(fn, inner: int, sync=None, events: list | None = None):
    """One sample: wall time per call of `inner` calls of fn, each followed by `sync()`
    (default: CUDA synchronise; decode-loop latency), starting synchronised. With `events` (a
    list), the CUDA-event time per call of the same calls is appended to it."""
    import torch
    sync = sync or torch.cuda.synchronize
    pair = ((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            if events is not None else None)

    def sample():
        sync()
        t0 = time.perf_counter()
        if pair:
            pair[0].record()
        for _ in range(inner):
            fn()
            sync()
        if pair:
            pair[1].record()
            pair[1].synchronize()
            events.append(pair[0].elapsed_time(pair[1]) * 1e3 / inner)
        return (time.perf_counter() - t0) * 1e6 / inner
    return sample


def gpu_time_us(fn, inner: int = 20, warmup: int = 5, **settle_kw) -> Stats:
    """GPU time per call of `fn`, from CUDA events around `inner` back-to-back calls."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def sample():
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / inner

    return settle(sample, **settle_kw)


MAX_SLEEP_CYCLES = 1 << 31   # about a second of torch.cuda._sleep on a 2 GHz GPU


def queued_sampler(fn, inner: int = 100, sleep_cycles: int = 1 << 20):
    """A sampler (a zero-argument callable returning one measurement): GPU time per call of
    `fn` when `inner` calls meet the GPU already queued in a stream, as an eager step's kernels
    do when the GPU is the bottleneck. They are enqueued behind a sleep kernel that outlasts
    their enqueueing, so the events around them time the GPU taking stream launches back to back
    (graph_of's nodes are the same calls taken from a graph). A sample whose enqueueing outlasted
    the sleep is taken again with twice the sleep, up to `MAX_SLEEP_CYCLES` (about a second),
    past which it raises RuntimeError; the sleep found long enough serves later samples (its
    cycles are the sampler's `cycles[0]`, so another arm can sleep as long)."""
    import torch
    slept, start, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
    cycles = [sleep_cycles]

    def sample():
        while True:
            t0 = time.perf_counter()
            slept.record()
            torch.cuda._sleep(cycles[0])
            start.record()
            for _ in range(inner):
                fn()
            host_us = (time.perf_counter() - t0) * 1e6
            end.record()
            end.synchronize()
            if host_us < slept.elapsed_time(start) * 1e3:   # all queued before the GPU got there
                return start.elapsed_time(end) * 1e3 / inner
            if cycles[0] * 2 > MAX_SLEEP_CYCLES:
                raise RuntimeError(f"the host took {host_us:.0f} us to enqueue {inner} calls, "
                                   "longer than the longest sleep kernel tried")
            cycles[0] *= 2

    sample.cycles = cycles
    return sample


def queued_gpu_time_us(fn, inner: int = 100, warmup: int = 5, sleep_cycles: int = 1 << 20,
                       **settle_kw) -> Stats:
    """queued_sampler's GPU time per call of `fn`, sampled until settled."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    return settle(queued_sampler(fn, inner, sleep_cycles), **settle_kw)


def step_time_us(fn, inner: int = 20, warmup: int = 5, sync_each: bool = False,
                 **settle_kw) -> tuple[Stats, Stats]:
    """(GPU time, wall time) per call over `inner` calls, from the same samples: CUDA events
    give the GPU's time; perf_counter up to the end event's completion gives what a caller
    waiting for the results sees. With `sync_each`, every call is followed by a synchronise
    (a decode loop that needs each step's logits); the events then span the synchronises too,
    so the first figure is event time, not GPU busy time. Settles on the wall time's spread."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    gpus = []

    def sample():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        for _ in range(inner):
            fn()
            if sync_each:
                torch.cuda.synchronize()
        end.record()
        end.synchronize()
        gpus.append(start.elapsed_time(end) * 1e3 / inner)
        return (time.perf_counter() - t0) * 1e6 / inner

    wall = settle(sample, **settle_kw)
    return summarize(gpus), wall


def host_time_us(fn, inner: int = 1, warmup: int = 5, sync=None, **settle_kw) -> Stats:
    """Host time of `inner` calls of `fn` (per call), with `sync()` (default: CUDA
    synchronise) before each sample so the call never waits on a full launch queue."""
    if sync is None:
        import torch
        sync = torch.cuda.synchronize
    for _ in range(warmup):
        fn()
    sync()

    def sample():
        sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) * 1e6 / inner

    return settle(sample, **settle_kw)


def graph_of(fn, n: int):
    """A CUDA graph of n back-to-back calls of fn, warmed up once on a side stream first: GPU
    work timed by replaying it has no host launch cost in it."""
    import torch

    from microbench.engine.capture import fresh_cublas_workspaces, side_stream
    g = torch.cuda.CUDAGraph()
    s = side_stream(torch.cuda.current_device())  # one per device: cuBLAS keeps a workspace per stream
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


def replays_in_turns(graphs: dict, rounds: int, event=None) -> dict:
    """Each graph replayed once a round for `rounds` rounds, the order rotating from round to
    round (1 2 3, then 2 3 1, ...: no graph always follows the same one), each replay timed
    alone between two CUDA events and waited for: {name: [us a replay]}, sample i of every
    graph from round i. `event` makes the events (torch.cuda.Event by default)."""
    from .turns import rotated
    if event is None:
        import torch
        event = torch.cuda.Event
    names = list(graphs)
    times: dict = {name: [] for name in names}
    start, end = event(enable_timing=True), event(enable_timing=True)
    for r in range(rounds):
        for name in rotated(names, r):
            start.record()
            graphs[name].replay()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) * 1e3)
    return times


# ---- weights streamed from DRAM ---------------------------------------------------------------
# A graph of back-to-back matmul calls reads its weight from the L2 after the first call unless
# each call reads another copy: this many bytes of copies in all, one call per copy, stream from
# DRAM as a decode step's weights do.
STREAM_BYTES = 200 << 20


def stream_copies(nbytes: int) -> int:
    """Copies of an nbytes weight that make STREAM_BYTES or more in all (one at least)."""
    return max(1, -(-STREAM_BYTES // nbytes))


class WeightCycle:
    """The copies of a weight in turn: each next() returns the one after the last."""

    def __init__(self, items):
        self.items, self.i = items, 0

    def next(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]
