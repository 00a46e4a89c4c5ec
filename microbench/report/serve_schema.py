"""The run records of `microbench generate` (kind "generate": bench/generate.py) and `microbench
serve` (kind "serve": bench/serve.py), read by report.schema's validation as its other kinds
are: fields without a default are required, `X | None` fields may be null, and fields not
listed pass through unchecked."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerateConfigRecord:
    bs: list[int]
    preset: str
    input_len: int
    output_len: int
    mode: str
    ladder: str
    dtype: str
    backend: str | None = None
    repeats: int | None = None
    warmup: int | None = None
    prefill: str | None = None
    seed: int | None = None
    out: str | None = None
    full_max_size: int | None = None


@dataclass(frozen=True)
class GenerateRow:
    """One batch size's generations. Latency is one generation's N decode steps (ms; median,
    p20, p80 over the repeats); step times are us over every step; graph fields are null under
    --mode none; speedup is the median of the repeats' paired eager/graph latency ratios, speedup_ci
    its bootstrap interval."""
    bs: int
    padded_bs: int | None
    ran_as: str
    input_len: int
    output_len: int
    eager_latency_ms: float
    eager_tok_s: float
    eager_step_us: float
    repeats: int | None = None
    prefill_ms: float | None = None
    eager_latency_p20: float | None = None
    eager_latency_p80: float | None = None
    eager_step_p20: float | None = None
    eager_step_p80: float | None = None
    eager_first_step_us: float | None = None
    eager_last_step_us: float | None = None
    graph_latency_ms: float | None = None
    graph_latency_p20: float | None = None
    graph_latency_p80: float | None = None
    graph_tok_s: float | None = None
    graph_step_us: float | None = None
    graph_step_p20: float | None = None
    graph_step_p80: float | None = None
    graph_first_step_us: float | None = None
    graph_last_step_us: float | None = None
    speedup: float | None = None
    speedup_ci: list[float] | None = None
    tokens_match: float | None = None
    graph_replays: int | None = None
    graph_fallbacks: int | None = None
    graph_padded_rows: int | None = None


@dataclass(frozen=True)
class ServeConfigRecord:
    preset: str
    mode: str
    ladder: str
    context: int
    dtype: str
    trace_file: str | None = None
    steps: int | None = None
    arrival_rate: float | None = None
    output_len: str | None = None
    max_num_seqs: int | None = None
    backend: str | None = None
    repeats: int | None = None
    warmup: int | None = None
    exact: bool | None = None
    seed: int | None = None
    out: str | None = None


@dataclass(frozen=True)
class ServeRow:
    """One arm's pass over the trace: time_s is the trace's wall time (median over repeats),
    tok_s the trace's tokens over it; padding and fallback times are seconds over the exact
    arm's median step times (null without the exact arm)."""
    arm: str
    steps: int
    tokens: int
    time_s: float
    tok_s: float
    step_us: float
    captured_sizes: int | None = None
    time_p20: float | None = None
    time_p80: float | None = None
    step_p20: float | None = None
    step_p80: float | None = None
    graphed_steps: int | None = None
    fallback_steps: int | None = None
    padded_rows: int | None = None
    padding_waste_rows: float | None = None
    padding_time_s: float | None = None
    padding_waste_time: float | None = None
    fallback_time_s: float | None = None
    time_vs_exact: float | None = None
    time_vs_exact_ci: list[float] | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_eager_ci: list[float] | None = None


@dataclass(frozen=True)
class TraceRecord:
    """The trace a serve run ran: its batch sizes, one per step, and their summary."""
    steps: int
    tokens: int
    min_bs: int
    max_bs: int
    batch_sizes: list[int]
    median_bs: float | None = None
    distinct: int | None = None
