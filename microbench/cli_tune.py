"""`microbench tune`: measure the skinny matmuls' launch configs on this GPU and write them into
the device's table (registered on the command group in cli.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from microbench.bench.env import require_cuda
from microbench.cli_types import IntList, usage
from microbench.engine.plan import FAST_ROWS
from microbench.engine.shapes import PRESETS
from microbench.report.record import check_writable

# the row buckets of kernels/gemv_configs.py (ROW_BUCKETS) and what --ab can vary
# (bench.tune.VARIANTS; a test holds each pair equal), written here so `--help` imports no torch
BUCKETS = (1, 2, 4, 8, 16)
VARY = ("table", "pdl", "plan", "attention", "blas", "splits", "previous-table")
BLAS_ROWS = (32, 64, 128)       # --vary blas's default batches (rows of the wide path)
# --vary splits's: every size the default sweep (--bs 1,4,16,64, the vllm ladder) captures, since
# a decoder runs a measured attention mode only at a measured size (engine.splits)
SPLIT_ROWS = (1, 2, 4, 8, *range(16, 129, 8))
RECORDED = ("pdl", "blas", "splits")   # the --vary choices whose winner is written into a table
AB_TABLE_ENV = "MICROBENCH_AB_TABLE"   # --vary previous-table's second arm reads this table


def previous_table_problem(path: str, device_name: str | None = None,
                           name: str = AB_TABLE_ENV) -> str | None:
    """What is wrong with `path` as --vary previous-table's table (None: nothing): it must be a
    gemv table file with tuned entries, for `device_name` when given. `name` is what the
    messages call the setting that gave the path (scripts/step_probe.py's `table=` too)."""
    if not path:
        return (f"set {name} to a copy of the device's gemv table "
                "(kernels/configs/gemv_<device>.json) taken before a re-tune")
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return f"{name}={path}: not a readable JSON table ({e.__class__.__name__})"
    if not isinstance(table, dict) or not isinstance(table.get("configs"), dict) or not table["configs"]:
        return f"{name}={path}: no tuned entries (a gemv table has a non-empty 'configs')"
    if device_name is not None and table.get("device") != device_name:
        return (f"{name}={path}: a table for {table.get('device')!r}, not this GPU "
                f"({device_name!r})")
    return None


@click.command()
@click.option("--preset", "presets", multiple=True, type=click.Choice(list(PRESETS)),
              default=("opt-125m", "llama-1b", "llama-8b"), show_default=True,
              help="Models whose matmul shapes are tuned (repeat the option for several).")
@click.option("--rows", type=IntList(1, 1024), default=None,
              help="Row buckets to tune: powers of two up to 16 [default: 1,2,4,8,16]; with "
                   f"--vary blas batch sizes above {FAST_ROWS} "
                   f"[default: {','.join(map(str, BLAS_ROWS))}]; with --vary pdl any batch "
                   "sizes [default: 1,2,4,8,16], and so with plan and attention; with --vary splits any batch sizes "
                   "[default: every size the default sweep captures, 1,2,4,8 and 16 to 128 by 8].")
@click.option("--time-budget", type=click.FloatRange(0.005, 10), default=0.05, show_default=True,
              help="Seconds of timing per candidate at most.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Processes compiling the candidates (default: the CPU count less two, 16 at most).")
@click.option("--ab", "ab_preset", type=click.Choice(list(PRESETS)), default=None,
              help="Instead of tuning: graph steps of this preset from decoders that differ "
                   "as --vary says, interleaved in one process, at the --rows batch sizes.")
@click.option("--vary", type=click.Choice(VARY), default="table", show_default=True,
              help="With --ab, what the decoders differ by: table (the tuned configs against "
                   f"the rule's; --rows up to {FAST_ROWS}, the rows the decoder runs skinny "
                   "matmuls at), pdl (the kernels launched with PDL letting the next one launch "
                   "before their wait, after it, or without PDL; the fastest beyond noise at each "
                   "--rows batch is recorded in the device's PDL table, which decoders then "
                   "follow between measured batches that chose alike), plan (the fused plan "
                   "against the unfused one, cuBLAS matmuls), "
                   "attention (RoPE, KV store and attention fused against separate kernels; the "
                   "fused arms of plan and attention split as fill, whatever the splits table "
                   "says), "
                   "blas (the wide matmuls through cuBLAS against cuBLASLt; the faster beyond "
                   "noise at each --rows batch is recorded in the device's BLAS table, which "
                   "decoders then follow between measured batches that both chose cuBLASLt), "
                   "splits (the fused attention's split count rounded up to fill the GPU, "
                   "capped at it, the first rule over K/V tiles of half as many keys, and the "
                   "attention as separate kernels; the "
                   "fastest beyond noise at each --rows batch is recorded in the device's splits "
                   "table, which decoders follow at exactly those batches), "
                   f"previous-table (the device's gemv table against the one at ${AB_TABLE_ENV}, "
                   "a copy taken before a re-tune; --rows up to 16).")
@click.option("--table", "table_dir", type=click.Path(file_okay=False), default=None,
              help="Folder to write the table (or --vary pdl's, blas's or splits's) into (default: the installed "
                   "package's kernels/configs, the only folder the decoder reads tables from).")
def tune(presets, rows, time_budget, workers, ab_preset, vary, table_dir):
    """Time every candidate config of the skinny matmuls, and cuBLAS, at each preset's shapes and
    each row bucket on this GPU, and write the fastest into the device's table
    (kernels/configs/gemv_<device>.json), which the decoder then uses (needs a CUDA GPU)."""
    if vary != "table" and not ab_preset:
        usage("--vary: only with --ab PRESET")
    rows = rows or {"blas": BLAS_ROWS, "splits": SPLIT_ROWS}.get(vary, BUCKETS)
    if vary in ("pdl", "splits", "plan", "attention"):
        pass                          # any batch size: these settings apply at every size
    elif vary == "blas":
        bad = [r for r in rows if r <= FAST_ROWS]
        if bad:
            usage(f"--rows: with --vary blas {bad[0]} is not above {FAST_ROWS}; allowed batch "
                  f"sizes above {FAST_ROWS} (the decoder's cuBLAS rows), e.g. 24,32,64,128")
    else:
        bad = [r for r in rows if r not in BUCKETS]
        if bad:
            usage(f"--rows: {bad[0]} is not a row bucket; allowed {', '.join(map(str, BUCKETS))}")
    if vary == "previous-table":
        problem = previous_table_problem(os.environ.get(AB_TABLE_ENV, ""))
        if problem:
            usage(f"--vary previous-table: {problem}")
    if ab_preset and vary not in RECORDED and table_dir:
        usage(f"--table: --ab --vary {vary} writes no table (only --vary pdl, blas, splits and "
              "tuning do)")
    require_cuda("tune")
    import torch

    from microbench.engine import blas, pdl, splits
    from microbench.kernels import gemv_configs
    if vary == "previous-table":
        problem = previous_table_problem(os.environ[AB_TABLE_ENV], torch.cuda.get_device_name())
        if problem:
            usage(f"--vary previous-table: {problem}")
    if vary == "pdl" and torch.cuda.get_device_capability()[0] < 9:
        usage(f"--vary pdl: {torch.cuda.get_device_name()} has no programmatic dependent "
              "launch (it needs compute capability 9.0 or newer)")
    directory = Path(table_dir) if table_dir else None
    tables = {"pdl": pdl, "blas": blas, "splits": splits}.get(vary, pdl) if ab_preset else gemv_configs
    path = tables.table_path(torch.cuda.get_device_name(), directory)
    if not ab_preset or vary in RECORDED:
        try:
            check_writable(path.parent)
            if path.exists():
                json.loads(path.read_text())    # a broken table stops the run before it measures
        except ValueError as e:
            usage(f"--table: {path}: {e}")

    if ab_preset:
        return _ab(ab_preset, rows, vary, path)

    from microbench.bench.tune import chosen_by_steps, merge_table, run_tune
    got = run_tune(presets, tuple(sorted(set(rows))), time_budget, workers,
                   on_progress=lambda line: click.echo(line, err=True))
    merged = merge_table(path, got["meta"], got["entries"])
    # a tune's own entries carry no chosen_by: those that do in the merge are the kept ones
    for key, b in chosen_by_steps(merged["configs"], got["entries"]):
        click.echo(f"kept {key} rows {b}: chosen by whole steps "
                   f"({merged['configs'][key][b]['chosen_by']}); drop its chosen_by to let a "
                   "tune replace it", err=True)
    _write_table(path, merged)
    click.echo(f"tuned {sum(len(b) for b in got['entries'].values())} (shape, rows) entries; "
               f"table: {path}")


def _ab(preset: str, rows, vary: str, path: Path) -> None:
    from microbench.bench.tune import VARIANTS, step_ab
    names = [name for name, _ in VARIANTS[vary]]
    click.echo(f"{preset}: graph steps of {', '.join(names)}, interleaved")
    results = []
    for bs in rows:
        r = step_ab(preset, bs, vary)
        results.append(r)
        arms = ", ".join(f"{n} {r[n]['median']:.1f} us ({r[n]['lo']:.1f}-{r[n]['hi']:.1f})" for n in names)
        click.echo(f"bs {bs}: {arms}")
        for n, q in r["ratios"].items():
            click.echo(f"bs {bs}: {names[0]}/{n} {q['median']:.3f} ({q['ci'][0]:.3f}-{q['ci'][1]:.3f}, "
                       f"{q['n']} pairs)")
    if vary in RECORDED:
        _record_per_batch(preset, results, path, vary)


def _meta() -> dict:
    """What a recorded choice's run was: device, date, command, versions, revision."""
    import torch

    from microbench.bench.env import environment
    env = environment(torch.device("cuda"))
    return dict(device=torch.cuda.get_device_name(),
                **{k: env.get(k) for k in ("date", "command", "torch", "triton", "git")})


def _entry(r: dict, mode: str, prefix: str = "") -> dict:
    """A table entry: the mode kept and what the --ab result r measured."""
    return dict(mode=mode, bs=r["bs"], context=r["context"], rounds=r["rounds"],
                median_us={n.removeprefix(prefix): r[n]["median"] for n in r["arms"]},
                ratios={f"{r['arms'][0]}/{n}": q["median"] for n, q in r["ratios"].items()})


def _record_per_batch(preset: str, results: list, path: Path, vary: str) -> None:
    """The mode each --vary pdl, blas or splits result keeps (bench.tune.fastest: another arm
    than the first, early, cuBLAS or fill, only where it is faster beyond noise), recorded at its
    batch size for the preset's shape; for splits with what each mode launched there
    (engine/splits.py: split counts and keys per tile), an arm that launched as fill did never
    kept over it (its ratio is two copies of one launch: the A/B's noise)."""
    from microbench.bench.tune import ab_max_seq, fastest
    from microbench.engine import pdl, splits
    prefix = "pdl-" if vary == "pdl" else ""
    launches = {}
    if vary == "splits":
        import torch
        dtype = {2: torch.bfloat16, 4: torch.float32}[results[0]["elt"]]
        device = torch.device("cuda", torch.cuda.current_device())
        launches = {r["bs"]: splits.split_launches(PRESETS[preset], r["bs"],
                                                   ab_max_seq(r["context"]), device, dtype)
                    for r in results}

    def keep(r: dict) -> str:
        if r["bs"] not in launches:
            return fastest(r)
        alike = lambda m: splits.launches_alike(launches[r["bs"]], m)
        return fastest(dict(r, ratios={m: q for m, q in r["ratios"].items() if not alike(m)}))
    entries = {r["bs"]: dict(_entry(r, keep(r).removeprefix(prefix), prefix), preset=preset)
               for r in results}
    for bs, launched in launches.items():
        entries[bs]["splits"] = launched
    key = pdl.shape_key(PRESETS[preset], results[0]["elt"])
    _write_table(path, pdl.merge_per_batch(path, _meta(), key, entries))
    kept = ", ".join(f"bs {bs} {e['mode']}" for bs, e in entries.items())
    other = {"pdl": "late or off", "blas": "cuBLASLt", "splits": "capped, half-tile or separate"}[vary]
    click.echo(f"kept {kept} ({other} where faster beyond noise); recorded for {preset} in {path}")


def _write_table(path: Path, table: dict) -> None:
    """Write a table whole: into a temporary file beside it, then renamed over it (the folder
    made first: the writability check leaves no folder it created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(path)
