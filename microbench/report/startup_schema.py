"""The run record of `microbench startup` (kind "startup": bench/startup.py), read by
report.schema's validation as its other kinds are: fields without a default are required,
`X | None` fields may be null, and fields not listed pass through unchecked."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StartupConfigRecord:
    preset: str
    bs: list[int]
    arm: str
    context: int
    dtype: str
    warm_runs: int | None = None
    timeout_s: float | None = None
    seed: int | None = None
    out: str | None = None


@dataclass(frozen=True)
class StartupRow:
    """One start-up process, cold (empty compile caches) or warm (the cold one's caches): its
    wall time from spawn to exit, the graph arm's capture and the compiled arm's set-up summed
    over batch sizes (compile_setup_s: batch size -> seconds), in seconds, and Inductor's cache
    counters (null where the process did not report them)."""
    cache: str
    wall_s: float
    capture_s: float
    compile_s: float
    import_s: float | None = None
    build_s: float | None = None
    compile_setup_s: dict | None = None
    fxgraph_cache_hit: int | None = None
    fxgraph_cache_miss: int | None = None
    autograd_cache_hit: int | None = None
    autograd_cache_miss: int | None = None
    cudagraph_skips: int | None = None


@dataclass(frozen=True)
class StartupSummary:
    """The cold process against the median warm one (warm fields absent without warm rows)."""
    cold_compile_s: float
    cold_capture_s: float
    cold_wall_s: float
    warm_compile_s: float | None = None
    warm_capture_s: float | None = None
    warm_wall_s: float | None = None
    compile_cold_over_warm: float | None = None


@dataclass(frozen=True)
class PublishedStartup:
    """A published start-up beside the measured one (seconds, and where it was published)."""
    cold_s: float
    warm_s: float
    source: str | None = None
