"""The run record's schema: what a `run.json` holds, as frozen dataclasses, and its validation.

Producers write plain dicts (a sweep builds its rows field by field); this module documents
those dicts and checks a loaded one before any table reads it. A record is an envelope (kind,
schema_version, config, env, rows) plus what its kind measured (`launch`, `phenomena`,
`allreduce`, `copy`). Each dataclass lists the fields a reader may rely on: fields without a
default are required, `X | None` fields may be null, and fields a dataclass does not list
(an extra arm's `compile_step_us`, say) pass through unchecked.

Runs written before `schema_version` existed load when their fields validate.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from microbench.report.typecheck import build, build_part, describe, fits, json_name, type_name

# CapturePass is re-exported: readers of the schema import every record from here
from microbench.report.capture_schema import CapturePass, CaptureRecord, check_passes  # noqa: F401
from microbench.report.serve_schema import (GenerateConfigRecord, GenerateRow,
                                            ServeConfigRecord, ServeRow, TraceRecord)
from microbench.report.startup_schema import (PublishedStartup, StartupConfigRecord, StartupRow,
                                              StartupSummary)

SCHEMA_VERSION = 1


class RunFileError(ValueError):
    """A run file that cannot be read as a run: one line naming the file and what is wrong."""


# ---- the envelope --------------------------------------------------------------------------
@dataclass(frozen=True)
class Env:
    """Where and how a run was measured (the GPU fields are absent on a machine without one;
    nvidia-smi's clocks and power stay the strings it prints)."""
    gpu: str | None
    torch: str
    date: str | None = None
    command: str | None = None
    python: str | None = None
    platform: str | None = None
    cuda: str | None = None
    git: str | None = None
    triton: str | None = None
    cupy: str | None = None
    sm_count: int | None = None
    gpu_memory_bytes: int | None = None
    capability: str | None = None
    driver: str | None = None
    tp: int | None = None
    nccl: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """A validated run: `raw` is the dict as loaded, which tables read; the other fields are
    its typed parts."""
    kind: str
    config: Any
    env: Env
    rows: tuple = ()
    schema_version: int | None = None
    interrupted: bool = False
    wall_s: float | None = None
    raw: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


# ---- configs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepConfigRecord:
    bs: list[int]
    preset: str
    mode: str
    ladder: str
    context: int
    dtype: str
    steps: int | None = None
    time_budget: float | None = None
    backend: str | None = None
    seed: int | None = None
    out: str | None = None
    arms: list[str] | None = None
    split_launch: bool | None = None
    full_max_size: int | None = None
    pin_cpu: bool | None = None


@dataclass(frozen=True)
class TPSweepConfigRecord(SweepConfigRecord):
    tp: int = dataclasses.field(kw_only=True)


@dataclass(frozen=True)
class LaunchConfigRecord:
    time_budget: float | None = None
    out: str | None = None


@dataclass(frozen=True)
class LaunchTPConfigRecord:
    tp: int
    dtype: str
    hidden: int | None = None
    k: int | None = None
    time_budget: float | None = None


@dataclass(frozen=True)
class KernelsConfigRecord:
    preset: str
    context: int
    batches: list[int] | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class ReproduceConfigRecord:
    preset: str
    context: int
    dtype: str
    bs: list[int]
    names: list[str] | None = None
    steps: int | None = None
    time_budget: float | None = None
    pin_cpu: bool | None = None


# ---- rows ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepRow:
    """One batch size of a sweep (bench/sweep.py run_sweep). Times are us of one decode step:
    the median and its p20 and p80 over n samples; graph fields are null under --mode none;
    padded_bs is null where no graph fits (the row ran eagerly). speedup is the median of paired
    ratios, speedup_ci its 95% bootstrap interval, stable whether sampling met its stopping rule
    (bench/rows.py); under --repeat (stats.merge_repeats) the row is the process with the median
    speedup (repeat_process, the kept ones from 1), speedup_repeats each process's speedup,
    speedup_repeat_spread their max / min - 1, speedup_repeats_ci the hierarchical interval."""
    bs: int
    padded_bs: int | None
    ran_as: str
    eager_step_us: float
    eager_p20: float
    eager_p80: float
    eager_n: int
    graph_step_us: float | None
    speedup: float | None
    eager_host_us: float | None = None
    eager_kernels: int | None = None
    eager_host_us_per_kernel: float | None = None
    graph_p20: float | None = None
    graph_p80: float | None = None
    graph_n: int | None = None
    graph_gpu_us: float | None = None
    graph_host_us: float | None = None
    max_abs_diff: float | None = None
    eager_tok_s: float | None = None
    graph_tok_s: float | None = None
    eager_tok_s_per_seq: float | None = None
    graph_tok_s_per_seq: float | None = None
    padding_waste: float | None = None
    step_bytes: int | None = None
    bw_use: float | None = None
    graph_mbu: float | None = None
    op_host_us: dict | None = None
    piece_glue_us: float | None = None
    predicted_eager_step_us: float | None = None
    predicted_graph_step_us: float | None = None
    predicted_speedup: float | None = None
    speedup_error: float | None = None
    speedup_ci: list[float] | None = None
    stable: bool | None = None
    speedup_repeats: list[float | None] | None = None
    repeat_process: int | None = None
    speedup_repeat_spread: float | None = None
    speedup_ratios: list[float] | None = None
    speedup_repeats_ci: list[float] | None = None
    eager_step_us_repeats: list[float | None] | None = None   # each process's median, and
    graph_step_us_repeats: list[float | None] | None = None   # the probe loop of its CPU
    host_loop_us_repeats: list[float | None] | None = None
    host_pin: dict | None = None   # hostcpu.HostPin.summary(): the CPU pin and its host wait


@dataclass(frozen=True)
class TPSweepRow(SweepRow):
    """One batch size of a TP sweep: a sweep row plus the all-reduce shares and TP-1 figures."""
    allreduce_share_eager: float | None = None
    allreduce_share_graph: float | None = None
    predicted_allreduce_share_graph: float | None = None
    eager_step_us_max_rank: float | None = None
    tp1_eager_step_us: float | None = None
    tp1_graph_step_us: float | None = None
    tp_gain_graph: float | None = None
    eager_host_us_per_rank: list | None = None   # each rank's sampled host time of a step
    host_rank: int | None = None    # the longest's rank: the row's op_host_us are its


@dataclass(frozen=True)
class KernelRow:
    kernel: str
    B: int
    context: int | None
    bytes: int
    time_us: float
    bytes_per_s: float
    frac_of_copy: float


@dataclass(frozen=True)
class AllreducePoint:
    bytes: int
    eager_us: float
    graph_us: float
    algbw: float
    busbw: float


# ---- what each kind measured ---------------------------------------------------------------
@dataclass(frozen=True)
class LaunchRecord:
    """Launch overhead per launcher, replay cost, copy bandwidth, matrix rate (bench/launch.py)."""
    host_us: dict
    gpu_us_per_kernel: dict
    replay: dict
    replay_fit: dict
    copy: dict
    matmul: dict
    sync_us: dict | None = None


@dataclass(frozen=True)
class FamilyBandwidth:
    """One plan family of one profiled replay (a sweep's `graph_family_bw[bs][family]`,
    bench/bandwidth.py): the plan's bytes (null for kernels the plan does not list), the
    profiled GPU us and kernel count, the plan's kernel count, bytes/s, its share of the copy
    bandwidth, the us those bytes take at the copy bandwidth and the us beyond that."""
    us: float
    n: int
    bytes: int | None = None
    planned: int | None = None
    bytes_per_s: float | None = None
    copy_share: float | None = None
    us_at_copy: float | None = None
    us_over: float | None = None


@dataclass(frozen=True)
class CopyRecord:
    bytes_per_s: float


@dataclass(frozen=True)
class Phenomenon:
    name: str
    expected: str
    measured: str
    held: bool
    why: str | None = None
    rows: list | None = None
    error: str | None = None


@dataclass(frozen=True)
class AllreduceRecord:
    points: list
    world: int
    dtype: str
    k: int
    path: str | None = None     # "NCCL direct" or "torch.distributed"; None in older runs


@dataclass(frozen=True)
class Kind:
    """What a kind's record must hold: its config, its rows (required and non-empty when
    `row` is set) and its other parts (key -> dataclass, or list of one)."""
    config: type
    row: type | None = None
    parts: dict = dataclasses.field(default_factory=dict)
    optional: dict = dataclasses.field(default_factory=dict)


KINDS = {
    "sweep": Kind(SweepConfigRecord, SweepRow,
                  optional=dict(launch=LaunchRecord, capture=CaptureRecord)),
    "sweep-tp": Kind(TPSweepConfigRecord, TPSweepRow,
                     optional=dict(launch=LaunchRecord, allreduce=AllreduceRecord)),
    "launch": Kind(LaunchConfigRecord, parts=dict(launch=LaunchRecord)),
    "launch-tp": Kind(LaunchTPConfigRecord, AllreducePoint, parts=dict(allreduce=AllreduceRecord),
                      optional=dict(allreduce_paths=[AllreduceRecord])),  # one per path timed
    "kernels": Kind(KernelsConfigRecord, KernelRow, parts=dict(copy=CopyRecord)),
    "reproduce": Kind(ReproduceConfigRecord, parts=dict(phenomena=[Phenomenon])),
    "generate": Kind(GenerateConfigRecord, GenerateRow, optional=dict(capture=CaptureRecord)),
    "serve": Kind(ServeConfigRecord, ServeRow, parts=dict(trace=TraceRecord)),
    "startup": Kind(StartupConfigRecord, StartupRow, parts=dict(summary=StartupSummary),
                    optional=dict(published=PublishedStartup)),
}


# ---- validation ----------------------------------------------------------------------------
def validate_run(data, source) -> RunRecord:
    """Check a loaded run.json against the schema; RunFileError('<source>: <what>') if it does
    not hold. Returns the typed record."""
    def fail(what: str):
        raise RunFileError(f"{source}: {what}")

    if not isinstance(data, dict):
        fail(f"not a microbench run (the file holds {json_name(data)}, not an object)")
    if "kind" not in data:
        fail("not a microbench run (no 'kind')")
    kind = data["kind"]
    if kind not in KINDS:
        fail(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    version = data.get("schema_version")
    if version is not None and (not fits(version, int) or version > SCHEMA_VERSION):
        fail(f"schema_version {version!r} is not one this microbench reads (<= {SCHEMA_VERSION})")
    spec = KINDS[kind]
    for key in ("config", "env"):
        if key not in data:
            fail(f"missing '{key}'")
    config = build(spec.config, data["config"], "config", fail)
    env = build(Env, data["env"], "env", fail)
    rows = ()
    if spec.row is not None:
        if "rows" not in data:
            fail(f"missing 'rows' (a {kind} run has one row per measured point)")
        if not isinstance(data["rows"], list) or not data["rows"]:
            fail(f"'rows' is {describe(data['rows'])}; a {kind} run needs at least one row")
        rows = tuple(build(spec.row, r, f"rows[{i}]", fail) for i, r in enumerate(data["rows"]))
    for key, cls in spec.parts.items():
        if key not in data:
            fail(f"missing '{key}' (a {kind} run records it)")
        build_part(cls, data[key], key, fail)
    for key, cls in spec.optional.items():
        if data.get(key) is not None:
            build_part(cls, data[key], key, fail)
    if spec.optional.get("capture") is CaptureRecord:
        check_passes(data.get("capture"), fail)
    for bs, fams in (data.get("graph_family_bw") or {}).items():
        if not isinstance(fams, dict):
            fail(f"'graph_family_bw.{bs}' is {describe(fams)}, where an object belongs")
        for fam, v in fams.items():
            build(FamilyBandwidth, v, f"graph_family_bw.{bs}.{fam}", fail)
    for key, tp in (("interrupted", bool), ("wall_s", float)):
        if data.get(key) is not None and not fits(data[key], tp):
            fail(f"'{key}' is {describe(data[key])}, where {type_name(tp)} belongs")
    return RunRecord(kind=kind, config=config, env=env, rows=rows, schema_version=version,
                     interrupted=bool(data.get("interrupted")), wall_s=data.get("wall_s"),
                     raw=data)
