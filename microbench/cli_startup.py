"""`microbench startup`: the compile arm's set-up with an empty and with a warm compile cache,
beside the graph arm's capture, each in a fresh process (bench.startup; registered on the
command group in cli.py). Parse, build a frozen config, call the bench function, print."""
from __future__ import annotations

import json
from pathlib import Path

import click

from microbench.bench.arms import COMPILED_ARMS
from microbench.bench.env import require_cuda
from microbench.bench.startup import StartupConfig, StartupFailed, measure_startup
from microbench.cli_output import FORMAT, echo_doc
from microbench.cli_types import OUT, IntList, usage
from microbench.engine.shapes import DTYPE_NAMES, MAX_BATCH, MAX_CONTEXT, PRESETS
from microbench.report.record import check_writable, run_id, write_run
from microbench.report.startup_table import startup_doc


@click.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="opt-125m", show_default=True)
@click.option("--bs", type=IntList(1, MAX_BATCH), default="1", show_default=True,
              help="Batch sizes the compiled arm is set up for (one compiled graph each) and the "
                   "graph arm captures.")
@click.option("--arm", type=click.Choice(COMPILED_ARMS), default="compile", show_default=True,
              help="compile (the PyTorch reference backend) or torch-compile (the gpt-fast-style "
                   "peer), under torch.compile reduce-overhead.")
@click.option("--context", type=click.IntRange(1, MAX_CONTEXT), default=512, show_default=True)
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="bfloat16", show_default=True)
@click.option("--warm-runs", type=click.IntRange(1, 10), default=1, show_default=True,
              help="Warm processes after the cold one (the median warm one is summarised).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=600,
              show_default=True, help="Seconds one process may take.")
@OUT
@FORMAT
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines; only the table (or JSON).")
def startup(preset, bs, arm, context, dtype, warm_runs, timeout_s, out, fmt, as_json, quiet):
    """Start-up cost, cold and warm: the compile arm's set-up with an empty and with a warm
    compile cache (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR), beside the graph arm's capture,
    each in a fresh process (needs a CUDA GPU)."""
    cfg = StartupConfig(preset=preset, bs=bs, arm=arm, context=context, dtype=dtype,
                        warm_runs=warm_runs, timeout_s=timeout_s, out=out)
    try:
        cfg.validate()
        check_writable(Path(out))
    except ValueError as e:
        usage(e if str(e).startswith("--") else ValueError(f"--out: {e}"))
    require_cuda("startup")
    say = None if quiet or as_json else (lambda s: click.echo(s, err=True))
    try:
        run = measure_startup(cfg, say=say)
    except StartupFailed as e:
        raise click.ClickException(str(e)) from None
    d = write_run(Path(out) / run_id("startup", run["env"], preset), run, csv_name="startup.csv")
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
        return 0
    echo_doc(startup_doc(run), fmt)
    if not quiet:
        click.echo(f"saved: {d}", err=fmt != "table")
    return 0
