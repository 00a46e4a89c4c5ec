"""A serving trace: batch sizes that change step by step, run through the dispatcher, the graphs
and the eager fallback, against exact-size capture and against eager.

The trace (bench.trace) is run whole by each arm, each step as an engine takes it (the host batch
to the device, the step, greedy sampling, the tokens back on the host: generate.decode_step):

    eager   every batch size eagerly: bound steps where the decoder has them (generate.eager_arm)
    graph   the graph runner with the configured ladder: a batch pads to the smallest captured
            size that holds it, or falls back to eager (the decoder's own step) above the largest
    exact   a graph runner whose ladder is every size the trace uses: no padding, no fallback

Every step attends to the same context (positions fixed at `context`, slots 0..bs-1), so the
arms differ only in how each batch size ran. Arms alternate whole traces, the order flipping
every repeat. From the step times (aggregate):

    tokens per second   tokens of the trace (one per sequence per step) / the trace's time
    padding, rows       padded rows / rows computed (real + padded), over the whole trace
    padding, time       sum over padded steps of (the arm's median step time at that batch size
                        - exact's median at that size): what the padded rows cost, in seconds
                        and as a share of the arm's trace time
    fallback time       the same sum over the steps that fell back to eager
    time vs exact, speedup vs eager   medians of the repeats' paired ratios of trace times,
                        with bootstrap intervals (stats.paired_ratio)
"""
from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

import torch

from microbench.bench.env import environment
from microbench.bench.generate import HostBatch, decode_step, eager_arm, interleaved, runner_step
from microbench.bench.sweep_config import checked_ladder, max_seq_for
from microbench.bench.timing import summarize
from microbench.bench.trace import parse_output_len, poisson_trace, read_trace, trace_summary
from microbench.engine.decoder import BACKENDS, ToyDecoder
from microbench.engine.dispatch import PaddingDispatcher
from microbench.engine.ladders import resolve_ladder
from microbench.engine.runner import MODES, GraphRunner
from microbench.engine.shapes import DTYPE_NAMES, MAX_BATCH, MAX_CONTEXT, PRESETS, torch_dtype
from microbench.stats import paired_ratio

DEFAULT_MAX_NUM_SEQS = 64


@dataclass(frozen=True)
class ServeConfig:
    preset: str = "llama-1b"
    trace_file: str | None = None    # batch sizes one per line; else the simulated trace below
    steps: int = 512                 # simulated trace: engine steps
    arrival_rate: float = 0.5        # simulated trace: requests per step (Poisson)
    output_len: str = "16-128"       # simulated trace: output tokens per request, LO-HI
    max_num_seqs: int | None = None  # the engine's cap on running sequences; sizes the ladder
    context: int = 512
    ladder: str = "vllm"
    mode: str = "full"
    dtype: str = "bfloat16"
    backend: str = "triton"
    repeats: int = 3                 # timed passes of the trace per arm
    warmup: int = 1                  # untimed passes per arm first
    exact: bool = True               # the exact-size arm (mode full or piecewise)
    seed: int = 0
    out: str = "runs"

    def validate(self) -> "ServeConfig":
        """Raise ValueError('--option: what was wrong; what is allowed') on a bad value (the
        trace file is read by trace())."""
        for name, v, allowed in (("preset", self.preset, PRESETS), ("mode", self.mode, MODES),
                                 ("dtype", self.dtype, DTYPE_NAMES),
                                 ("backend", self.backend, BACKENDS)):
            if v not in allowed:
                raise ValueError(f"--{name}: unknown {v!r}; choose one of {', '.join(allowed)}")
        for name, v, lo, hi in (("steps", self.steps, 1, 1 << 20),
                                ("context", self.context, 1, MAX_CONTEXT),
                                ("repeats", self.repeats, 1, 1000),
                                ("warmup", self.warmup, 0, 1000)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"--{name}: {v!r} is out of range {lo}..{hi}")
        if self.max_num_seqs is not None and not 1 <= self.max_num_seqs <= MAX_BATCH:
            raise ValueError(f"--max-num-seqs: {self.max_num_seqs} is out of range 1..{MAX_BATCH}")
        if self.trace_file is None:
            parse_output_len(self.output_len)
            poisson_trace(1, self.arrival_rate, (1, 1), 1)    # checks the rate
        checked_ladder(self.ladder, self.max_num_seqs or DEFAULT_MAX_NUM_SEQS)
        return self

    def trace(self) -> list[int]:
        """The batch size of every step: the file's (none above --max-num-seqs, when given),
        or the seeded simulation's. ValueError (one line) on a bad file."""
        if self.trace_file is None:
            return poisson_trace(self.steps, self.arrival_rate, parse_output_len(self.output_len),
                                 self.max_num_seqs or DEFAULT_MAX_NUM_SEQS, self.seed)
        trace = read_trace(self.trace_file)
        if self.max_num_seqs is not None and max(trace) > self.max_num_seqs:
            line = trace.index(max(trace))
            raise ValueError(f"--batch-sizes: {self.trace_file}: batch size {max(trace)} (entry "
                             f"{line + 1}) is above --max-num-seqs {self.max_num_seqs}")
        return trace

    def ladder_sizes(self, trace: list[int]) -> list[int]:
        """The graph arm's ladder, sized to max_num_seqs (a file trace's largest batch when
        not given), as an engine sizes it before any request arrives."""
        if self.mode == "none":
            return []
        return resolve_ladder(self.ladder, self.max_num_seqs or (
            max(trace) if self.trace_file else DEFAULT_MAX_NUM_SEQS))

    def to_dict(self) -> dict:
        return asdict(self)


def run_trace(step, batch: HostBatch, trace: list[int]) -> list[int]:
    """Every step of the trace, as an engine takes it; returns each step's wall time (ns)."""
    ns = [0] * len(trace)
    clock = time.perf_counter_ns
    t_prev = clock()
    for i, bs in enumerate(trace):
        decode_step(step, batch.views(bs))
        t = clock()
        ns[i], t_prev = t - t_prev, t
    return ns


def run_serve(cfg: ServeConfig, trace: list[int], device="cuda", on_progress=None, on_run=None,
              on_capture=None, make_runner=GraphRunner) -> dict:
    """Run the trace through each arm; returns the run dict (config, env, trace, captures,
    rows: one per arm). on_run(run) whenever it changes, on_progress(text) for status lines,
    on_capture for the runners' capture progress (GraphRunner's); make_runner(decoder, sizes,
    mode=, on_capture=) builds the graph and exact arms (a fake in CPU tests)."""
    cfg.validate()
    say = on_progress or (lambda s: None)
    save = on_run or (lambda r: None)
    dev = torch.device(device)
    t_start = time.perf_counter()
    shape = PRESETS[cfg.preset]
    ladder = cfg.ladder_sizes(trace)
    exact = sorted(set(trace)) if cfg.exact and cfg.mode != "none" else []
    run = dict(kind="serve", config=cfg.to_dict(), env=environment(dev), shape=shape.to_dict(),
               trace=dict(trace_summary(trace), batch_sizes=list(trace)), ladder=ladder,
               exact_ladder=exact, capture={}, rows=[], interrupted=False)
    max_batch = max(max(trace), max(ladder, default=1))
    say(f"building {cfg.preset} ({shape.n_params / 1e6:.0f}M params, {cfg.dtype}), max batch "
        f"{max_batch}, context {cfg.context}; trace of {len(trace)} steps, batch "
        f"{min(trace)}..{max(trace)}")
    dec = ToyDecoder(shape, backend=cfg.backend, max_batch=max_batch,
                     max_seq=max_seq_for(cfg.context), dtype=torch_dtype(cfg.dtype), device=dev,
                     seed=cfg.seed)
    dec.fill_cache(cfg.context)
    runners = {}
    try:
        arms = {}
        arms["eager"], run["eager_bound"] = eager_arm(dec, trace)
        for arm, sizes in (("graph", ladder), ("exact", exact)):
            if sizes:
                say(f"{arm}: capturing {len(sizes)} sizes ({cfg.mode})")
                runners[arm] = make_runner(dec, sizes, mode=cfg.mode, on_capture=on_capture)
                run["capture"][arm] = runners[arm].capture()
                arms[arm] = runner_step(runners[arm])
        batch = HostBatch(dev, position=cfg.context)
        say(f"running the trace: {cfg.warmup} + {cfg.repeats} passes per arm ({', '.join(arms)})")
        samples = interleaved(arms, cfg.warmup, cfg.repeats,
                              lambda step: run_trace(step, batch, trace))
        ladders = {a: list(r.dispatcher.sizes) for a, r in runners.items()}
        run["rows"] = aggregate(trace, samples, ladders)
        run["by_bs"] = by_batch_size(trace, samples, ladders)
    except KeyboardInterrupt:
        run["interrupted"] = True
    finally:
        run["runner_counts"] = {a: dict(r.counts) for a, r in runners.items()}
        for r in runners.values():
            r.close()
        run["wall_s"] = time.perf_counter() - t_start
        save(run)
    return run


# ---- the aggregation: pure arithmetic on step times -----------------------------------------
def median_by_bs(trace: list[int], reps: list[list[int]]) -> dict[int, float]:
    """Each batch size's median step time (ns) over all its steps in every repeat."""
    by = defaultdict(list)
    for ns in reps:
        for bs, t in zip(trace, ns):
            by[bs].append(t)
    return {bs: statistics.median(ts) for bs, ts in by.items()}


def routes(trace: list[int], sizes: list[int] | None) -> dict[int, int | None]:
    """What each batch size of the trace runs as: its padded size, or None for eager (every
    size, without a ladder)."""
    disp = PaddingDispatcher(sizes or [])
    return {bs: disp.pad(bs) for bs in set(trace)}


def aggregate(trace: list[int], samples: dict, ladders: dict) -> list[dict]:
    """One row per arm from samples {arm: [step times (ns) of each repeat, in trace order]} and
    ladders {arm: captured sizes} (an arm without one ran every step eagerly, as `eager`)."""
    count = Counter(trace)
    tokens = sum(trace)
    med = {a: median_by_bs(trace, reps) for a, reps in samples.items()}
    totals = {a: [sum(ns) / 1e9 for ns in reps] for a, reps in samples.items()}
    rows = []
    for a, reps in samples.items():
        sizes = ladders.get(a)
        route = routes(trace, sizes)
        t, step = summarize(totals[a]), summarize([x / 1e3 for ns in reps for x in ns])
        padded = [bs for bs, p in route.items() if p is not None and p > bs]
        fell = [bs for bs, p in route.items() if p is None] if sizes is not None else []
        padded_rows = sum(count[bs] * (route[bs] - bs) for bs in padded)

        def excess(sizes_):   # seconds over exact's medians on these batch sizes' steps
            if "exact" not in med:
                return None
            return sum(count[bs] * (med[a][bs] - med["exact"][bs]) for bs in sizes_) / 1e9
        pad_s = excess(padded)
        rows.append(dict(
            arm=a, captured_sizes=len(sizes or []), steps=len(trace), tokens=tokens,
            time_s=t.median, time_p20=t.p20, time_p80=t.p80, tok_s=tokens / t.median,
            step_us=step.median, step_p20=step.p20, step_p80=step.p80,
            graphed_steps=sum(count[bs] for bs, p in route.items() if p is not None),
            fallback_steps=sum(count[bs] for bs in fell) if sizes is not None else None,
            padded_rows=padded_rows, padding_waste_rows=padded_rows / (tokens + padded_rows),
            padding_time_s=pad_s,
            padding_waste_time=None if pad_s is None else pad_s / t.median,
            fallback_time_s=excess(fell) if sizes is not None else None,
            **dict(zip(("time_vs_exact", "time_vs_exact_ci"), _paired(totals, a, "exact"))),
            **dict(zip(("speedup_vs_eager", "speedup_vs_eager_ci"), _paired(totals, "eager", a)))))
    return rows


def _paired(totals: dict, num: str, den: str) -> tuple:
    """(median, bootstrap interval) over repeats of totals[num][r] / totals[den][r]
    (stats.paired_ratio); (None, None) if either arm is absent."""
    if num not in totals or den not in totals:
        return None, None
    r = paired_ratio(totals[num], totals[den])
    return r["median"], r["ci"]


def by_batch_size(trace: list[int], samples: dict, ladders: dict) -> list[dict]:
    """Per batch size of the trace: its steps, and per arm what it ran as and its median step
    time (us)."""
    count = Counter(trace)
    med = {a: median_by_bs(trace, reps) for a, reps in samples.items()}
    route = {a: routes(trace, ladders.get(a)) for a in samples}
    return [dict(bs=bs, steps=count[bs],
                 **{f"{a}_padded_bs": route[a][bs] for a in samples if a != "eager"},
                 **{f"{a}_step_us": med[a][bs] / 1e3 for a in samples})
            for bs in sorted(count)]
