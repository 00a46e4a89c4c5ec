"""`microbench tune`: measure the skinny matmuls' launch configs on this GPU and write them into
the device's table (registered on the command group in cli.py)."""
from __future__ import annotations

import json
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
VARY = ("table", "pdl", "pdl-late", "plan", "attention")


@click.command()
@click.option("--preset", "presets", multiple=True, type=click.Choice(list(PRESETS)),
              default=("opt-125m", "llama-1b", "llama-8b"), show_default=True,
              help="Models whose matmul shapes are tuned (repeat the option for several).")
@click.option("--rows", type=IntList(1, 16), default="1,2,4,8,16", show_default=True,
              help="Row buckets to tune: powers of two up to 16.")
@click.option("--time-budget", type=click.FloatRange(0.005, 10), default=0.05, show_default=True,
              help="Seconds of timing per candidate at most.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Processes compiling the candidates (default: the CPU count less two, 16 at most).")
@click.option("--ab", "ab_preset", type=click.Choice(list(PRESETS)), default=None,
              help="Instead of tuning: graph steps of this preset from two decoders that differ "
                   "as --vary says, interleaved in one process, at the --rows batch sizes.")
@click.option("--vary", type=click.Choice(VARY), default="table", show_default=True,
              help="With --ab, what the two decoders differ by: table (the tuned configs against "
                   f"the rule's; --rows up to {FAST_ROWS}, the rows the decoder runs skinny "
                   "matmuls at), pdl (PDL on against off), pdl-late (the next kernel let launch "
                   "before the wait against after it), plan (the fused plan against the unfused "
                   "one, cuBLAS matmuls), attention (RoPE, KV store and attention fused against "
                   "separate kernels).")
@click.option("--table", "table_dir", type=click.Path(file_okay=False), default=None,
              help="Folder to write the table into (default: the installed package's "
                   "kernels/configs, the only folder the decoder reads tables from).")
def tune(presets, rows, time_budget, workers, ab_preset, vary, table_dir):
    """Time every candidate config of the skinny matmuls, and cuBLAS, at each preset's shapes and
    each row bucket on this GPU, and write the fastest into the device's table
    (kernels/configs/gemv_<device>.json), which the decoder then uses (needs a CUDA GPU)."""
    bad = [r for r in rows if r not in BUCKETS]
    if bad:
        usage(f"--rows: {bad[0]} is not a row bucket; allowed {', '.join(map(str, BUCKETS))}")
    if vary != "table" and not ab_preset:
        usage("--vary: only with --ab PRESET")
    if ab_preset and vary == "table" and max(rows) > FAST_ROWS:
        usage(f"--rows: with --ab --vary table at most {FAST_ROWS} (above it the decoder runs "
              f"cuBLAS, which no table changes)")
    require_cuda("tune")
    import torch

    if ab_preset:
        return _ab(ab_preset, rows, vary)

    from microbench.bench.tune import merge_table, run_tune
    from microbench.kernels import gemv_configs
    path = gemv_configs.table_path(torch.cuda.get_device_name(), Path(table_dir) if table_dir else None)
    try:
        check_writable(path.parent)
    except ValueError as e:
        usage(f"--table: {e}")
    got = run_tune(presets, tuple(sorted(set(rows))), time_budget, workers,
                   on_progress=lambda line: click.echo(line, err=True))
    table = merge_table(path, got["meta"], got["entries"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(path)
    click.echo(f"tuned {sum(len(b) for b in got['entries'].values())} (shape, rows) entries; "
               f"table: {path}")


def _ab(preset: str, rows, vary: str) -> None:
    from microbench.bench.tune import VARIANTS, step_ab
    (a, _), (b, _) = VARIANTS[vary]
    click.echo(f"{preset}: graph steps, {a} against {b}, interleaved AB/BA")
    for bs in rows:
        r = step_ab(preset, bs, vary)
        q = r["ratio"]
        click.echo(f"bs {bs}: {a} {r[a]['median']:.1f} us ({r[a]['lo']:.1f}-{r[a]['hi']:.1f}), "
                   f"{b} {r[b]['median']:.1f} us ({r[b]['lo']:.1f}-{r[b]['hi']:.1f}); {a}/{b} "
                   f"{q['median']:.3f} ({q['ci'][0]:.3f}-{q['ci'][1]:.3f}, {q['n']} pairs)")
