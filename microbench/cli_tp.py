"""`microbench sweep --tp N` and `microbench launch --tp N`: validation before any process
starts, and the calls; also the entry point torchrun starts on every rank:

    python3 -m microbench.cli_tp sweep --tp 2 --preset llama-1b --bs 1,4,16,64
    python3 -m microbench.cli_tp launch --tp 2
    torchrun --nproc-per-node 2 -m microbench.cli_tp sweep --tp 2 ...
"""
from __future__ import annotations

import functools
import json
import sys

import click

from microbench.analysis.beside import TPRowModel, allreduce_fit
from microbench.bench.env import GPURequired
from microbench.bench.sweep_config import SweepConfig
from microbench.bench.tp import RankFailed, check_tp, run_allreduce_bench, torchrun_rank
from microbench.bench.tp_sweep import run_tp_sweep
from microbench.engine.ladders import parse_int_list
from microbench.cli_types import Saver
from microbench.engine.shapes import PRESETS, ModelShape
from microbench.report.record import write_run
from microbench.report.tp_tables import launch_tp_table, tp_sweep_table


class FolderSaver(Saver):
    """A Saver that says where it wrote: TP ranks run in other processes, so rank 0 hands the
    folder back with the run."""

    def __call__(self, run: dict) -> str:
        super().__call__(run)
        return str(self.dir)


def validate_tp(preset: str | None, tp: int, n_gpus: int | None = -1) -> None:
    """ValueError('--tp: ...', one line) before any process group starts: tp must divide the
    preset's heads, KV heads and FFN (preset None: no shape check), must not exceed the GPUs
    present (n_gpus; -1: ask torch; None, or no GPU at all: skip, the command's own GPU check
    speaks), and must equal WORLD_SIZE under torchrun."""
    shape = ModelShape.from_name(preset) if preset is not None else None
    if n_gpus == -1:
        import torch
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else None
    check_tp(shape, tp, n_gpus or None)
    tr = torchrun_rank()
    if tr is not None and tr[1] != tp:
        raise ValueError(f"--tp: {tp}, but torchrun started {tr[1]} ranks "
                         f"(use --nproc-per-node {tp})")


def tp_sweep_main(cfg_kwargs: dict, tp: int, compare_tp1: bool = True, as_json: bool = False,
                  quiet: bool = False) -> tuple[str | None, int]:
    """Run the TP sweep; returns (text to print, exit code). Text is None on torchrun ranks
    other than 0: only rank 0 prints."""
    cfg = SweepConfig(**cfg_kwargs)
    save = FolderSaver(cfg.out, "sweep", f"{cfg.preset}-tp{tp}")
    run, where = run_tp_sweep(cfg, tp, compare_tp1=compare_tp1, progress=not (quiet or as_json),
                              save=save, fit=allreduce_fit, model=TPRowModel)
    if run is None:
        return None, 0
    if as_json:
        text = json.dumps(run, indent=2, default=str)
    else:
        text = tp_sweep_table(run) + ("" if quiet else f"\nsaved: {where}")
    return text, 130 if run.get("interrupted") else 0


def tp_launch_main(tp: int, time_budget: float = 0.3, out: str = "runs",
                   as_json: bool = False) -> tuple[str | None, int]:
    """The all-reduce benchmark on tp GPUs; returns (text to print, exit code)."""
    save = FolderSaver(out, "launch", f"tp{tp}",
                       write=functools.partial(write_run, csv_name="allreduce.csv"))
    run, where = run_allreduce_bench(tp, time_budget=time_budget, out=out, progress=not as_json,
                                     save=save, fit=allreduce_fit)
    if run is None:
        return None, 0
    text = json.dumps(run, indent=2, default=str) if as_json else (
        launch_tp_table(run) + f"\nsaved: {where}")
    return text, 0


def main():
    @click.group()
    def cli():
        """TP sweeps and the all-reduce benchmark (microbench sweep/launch --tp, standalone)."""

    @cli.command()
    @click.option("--tp", type=click.IntRange(1, 64), default=2, show_default=True)
    @click.option("--preset", type=click.Choice(list(PRESETS)), default="llama-1b", show_default=True)
    @click.option("--bs", default="1,4,16,64", show_default=True)
    @click.option("--ladder", default="vllm", show_default=True)
    @click.option("--mode", type=click.Choice(["none", "full", "piecewise"]), default="full")
    @click.option("--context", type=int, default=512, show_default=True)
    @click.option("--steps", type=int, default=10, show_default=True)
    @click.option("--time-budget", type=float, default=1.0, show_default=True)
    @click.option("--out", default="runs", show_default=True)
    @click.option("--no-tp1", is_flag=True, help="Skip the TP-1 comparison on rank 0.")
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--quiet", is_flag=True)
    def sweep(tp, preset, bs, ladder, mode, context, steps, time_budget, out, no_tp1, as_json,
              quiet):
        kw = dict(bs=tuple(parse_int_list(bs, "bs")), preset=preset, ladder=ladder, mode=mode,
                  context=context, steps=steps, time_budget=time_budget, out=out)
        _finish(*tp_sweep_main(kw, tp, not no_tp1, as_json, quiet))

    @cli.command()
    @click.option("--tp", type=click.IntRange(2, 64), default=2, show_default=True)
    @click.option("--time-budget", type=float, default=0.3, show_default=True)
    @click.option("--out", default="runs", show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def launch(tp, time_budget, out, as_json):
        _finish(*tp_launch_main(tp, time_budget, out, as_json))

    def _finish(text, code):
        if text:
            click.echo(text)
        sys.exit(code)

    from microbench.bench.env import GPURequired
    from microbench.bench.tp import RankFailed
    try:
        cli(standalone_mode=False)
    except (ValueError, click.UsageError) as e:
        click.echo(f"microbench: error: {e}", err=True)
        sys.exit(2)
    except (GPURequired, RankFailed) as e:
        click.echo(f"microbench: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
