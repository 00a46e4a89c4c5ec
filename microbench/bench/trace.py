"""Serving traces: the batch size of each decode step as requests arrive and finish.

A trace is a list of batch sizes, one per engine step. It comes from a file (one batch size a
line; blank lines and `#` comments are skipped) or from a seeded simulation of a decode-only
engine:

    each tick:  arrivals ~ Poisson(rate) join the waiting queue, each with an output length
                drawn uniformly from [lo, hi];
                waiting requests are admitted while fewer than max_num_seqs run;
                if any run, the engine takes one decode step with all of them (the trace's
                next entry is how many), and each running request has one token fewer to go;
                a request with none left finishes.

Ticks with nothing running are idle: the engine takes no step and the trace records none (the
simulation skips them: arrivals are memoryless, so the first busy tick's arrivals are a Poisson
draw given at least one). The rate is in requests per tick (per decode step while the engine is
busy). Plain Python: no torch.
"""
from __future__ import annotations

import math
import random
import statistics
from collections import deque
from pathlib import Path

from microbench.engine.shapes import MAX_BATCH

MAX_RATE = 64.0     # requests per step


def parse_output_len(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '16-128' -> (16, 128): the range output lengths are drawn from."""
    parts = str(text).split("-")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        lo, hi = 0, -1
    if not 1 <= lo <= hi:
        raise ValueError(f"--output-len: {text!r} is not a length or a range LO-HI of positive "
                         "integers with LO <= HI (e.g. 64 or 16-128)")
    return lo, hi


def poisson(rng: random.Random, rate: float, at_least_one: bool = False) -> int:
    """A Poisson(rate) draw by inverting its CDF; with `at_least_one`, a draw given that it is
    at least 1 (the uniform drawn above P(0))."""
    p = math.exp(-rate)
    u = rng.random()
    if at_least_one:
        u = p + u * (1.0 - p)
    k, cdf = 0, p
    while u > cdf and p > 0.0:
        k += 1
        p *= rate / k
        cdf += p
    return max(k, 1) if at_least_one else k


def poisson_trace(steps: int, rate: float, output_len: tuple[int, int], max_num_seqs: int,
                  seed: int = 0) -> list[int]:
    """`steps` batch sizes of the simulated engine above (seeded: the same arguments give the
    same trace). ValueError if the arguments are out of range."""
    lo, hi = output_len
    if steps < 1:
        raise ValueError(f"--steps: must be >= 1, got {steps}")
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"--arrival-rate: {rate} is out of range; requests per step, "
                         f"0 < rate <= {MAX_RATE:g}")
    if not 1 <= max_num_seqs <= MAX_BATCH:
        raise ValueError(f"--max-num-seqs: {max_num_seqs} is out of range 1..{MAX_BATCH}")
    if not 1 <= lo <= hi:
        raise ValueError(f"--output-len: ({lo}, {hi}) is not a range of positive lengths")
    rng = random.Random(seed)
    waiting: deque[int] = deque()
    running: list[int] = []      # tokens each running request has still to generate
    out: list[int] = []
    while len(out) < steps:
        # With nothing running or waiting, the idle ticks before the next arrival take no
        # step: skip them, drawing the first busy tick's arrivals given that there is one.
        idle = not running and not waiting
        for _ in range(poisson(rng, rate, at_least_one=idle)):
            waiting.append(rng.randint(lo, hi))
        while waiting and len(running) < max_num_seqs:
            running.append(waiting.popleft())
        out.append(len(running))
        running = [r - 1 for r in running if r > 1]
    return out


def read_trace(path) -> list[int]:
    """The batch sizes in a trace file, one per line; ValueError('--batch-sizes: <file> line <n>:
    <what>') on the first line that is not a batch size in 1..MAX_BATCH, or if none is there."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--batch-sizes: {path}: cannot be read "
                         f"({getattr(e, 'strerror', None) or type(e).__name__})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            bs = int(item)
        except ValueError:
            raise ValueError(f"--batch-sizes: {path} line {n}: {item[:40]!r} is not a batch size "
                             "(one positive integer a line)") from None
        if not 1 <= bs <= MAX_BATCH:
            raise ValueError(f"--batch-sizes: {path} line {n}: batch size {bs} is out of range "
                             f"1..{MAX_BATCH}")
        out.append(bs)
    if not out:
        raise ValueError(f"--batch-sizes: {path} holds no batch sizes (one positive integer a line)")
    return out


def trace_summary(trace: list[int]) -> dict:
    """Steps, tokens (one per sequence per step), and the batch sizes' range and median."""
    return dict(steps=len(trace), tokens=sum(trace), min_bs=min(trace), max_bs=max(trace),
                median_bs=statistics.median(trace), distinct=len(set(trace)))
