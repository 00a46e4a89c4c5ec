"""`microbench generate` and `microbench serve`: the generation loop and the serving trace
(registered on the command group in cli.py). As every command: parse, build a frozen config
(its validate() holds the rules), call the bench function, print what it returns."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from microbench.bench.env import require_cuda
from microbench.cli_output import FORMAT, echo_doc, progress_view
from microbench.cli_types import OUT, IntList, Ladder, Saver, usage
from microbench.engine.shapes import DTYPE_NAMES, MAX_BATCH, MAX_CONTEXT, PRESETS
from microbench.report.record import atomic_write, check_writable, rows_to_csv, write_run
from microbench.report.serve_tables import generate_doc, serve_doc

MODE_HELP = "Graph mode: none (eager only), full, piecewise, full_and_piecewise."


def _checked(cfg, out: str):
    """cfg validated and --out writable, or a usage error (one line, exit 2)."""
    try:
        cfg.validate()
        check_writable(Path(out))
    except ValueError as e:
        usage(e if str(e).startswith("--") else ValueError(f"--out: {e}"))
    return cfg


def _measure(measure, quiet: bool, as_json: bool) -> dict:
    """measure(hooks) with the progress view's hooks (on_progress, on_capture; none when
    quiet), the view closed after."""
    view = progress_view(not (quiet or as_json))
    try:
        return measure(dict(on_progress=view.say, on_capture=view.capture) if view else {})
    finally:
        if view:
            view.close()


def _finish(run: dict, doc, fmt: str, save: Saver, as_json: bool, quiet: bool) -> int:
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
    else:
        echo_doc(doc, fmt)
        if not quiet:
            click.echo(f"saved: {save.dir}", err=fmt != "table")
    return 130 if run.get("interrupted") else 0


# ---- generate ------------------------------------------------------------------------------
@click.command()
@click.option("--bs", type=IntList(1, MAX_BATCH), default="1,8,32", show_default=True,
              help=f"Comma-separated batch sizes (sequences generated together), each 1..{MAX_BATCH}.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="llama-1b", show_default=True)
@click.option("--input-len", type=int, default=32, show_default=True,
              help="Prompt tokens cached before the first decode step.")
@click.option("--output-len", type=int, default=128, show_default=True,
              help=f"Decode steps N per generation (input + output up to {MAX_CONTEXT}).")
@click.option("--mode", default="full", show_default=True, help=MODE_HELP)
@click.option("--ladder", type=Ladder(), default="vllm", show_default=True,
              help="Capture sizes: vllm, sglang, pow2 (sized to the largest --bs) or a list.")
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="bfloat16", show_default=True)
@click.option("--backend", type=click.Choice(["triton", "torch"]), default="triton",
              show_default=True)
@click.option("--prefill", type=click.Choice(["fill", "steps"]), default="fill", show_default=True,
              help="fill: random K and V for the prompt (no prefill kernel to time); steps: the "
                   "prompt token by token through eager steps, timed apart.")
@click.option("--repeats", type=int, default=10, show_default=True,
              help="Timed generations per arm and batch size (eager and graph alternate).")
@click.option("--warmup", type=int, default=2, show_default=True,
              help="Untimed generations per arm first.")
@click.option("--full-max-size", type=int, default=None,
              help="With --mode full_and_piecewise: the largest size the full (decode) pass "
                   "captures, as vLLM caps it at max_num_seqs.")
@click.option("--seed", type=int, default=0, show_default=True)
@OUT
@FORMAT
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output; only the table (or JSON).")
def generate(bs, preset, input_len, output_len, mode, ladder, dtype, backend, prefill, repeats,
             warmup, full_max_size, seed, out, fmt, as_json, quiet):
    """Generation loop: N decode steps per sequence with the context growing, greedy sampling;
    end-to-end tokens per second eager against graphed (needs a CUDA GPU)."""
    from microbench.bench.generate import GenerateConfig, run_generate
    cfg = _checked(GenerateConfig(bs=bs, preset=preset, input_len=input_len,
                                  output_len=output_len, mode=mode, ladder=ladder, dtype=dtype,
                                  backend=backend, repeats=repeats, warmup=warmup,
                                  prefill=prefill, seed=seed, out=out,
                                  full_max_size=full_max_size), out)
    require_cuda("generate")
    save = Saver(out, "generate", preset,
                 write=functools.partial(write_run, csv_name="generate.csv"))
    run = _measure(lambda hooks: run_generate(cfg, on_run=save, **hooks), quiet, as_json)
    return _finish(run, generate_doc(run), fmt, save, as_json, quiet)


# ---- serve ---------------------------------------------------------------------------------
def write_serve_run(out_dir, run: dict) -> Path:
    """run.json, serve.csv (one row per arm) and by_bs.csv (one row per batch size)."""
    out_dir = write_run(out_dir, run, csv_name="serve.csv")
    if run.get("by_bs"):
        atomic_write(out_dir / "by_bs.csv", rows_to_csv(run["by_bs"]))
    return out_dir


@click.command()
@click.option("--batch-sizes", "trace_file", type=str, default=None, metavar="FILE",
              help="The trace as a file of batch sizes, one per line (# comments); without it, "
                   "a seeded Poisson trace.")
@click.option("--steps", type=int, default=512, show_default=True,
              help="Poisson trace: engine steps.")
@click.option("--arrival-rate", type=float, default=0.5, show_default=True,
              help="Poisson trace: requests arriving per step.")
@click.option("--output-len", default="16-128", show_default=True,
              help="Poisson trace: tokens each request generates, N or a uniform range LO-HI.")
@click.option("--max-num-seqs", type=int, default=None,
              help="Most sequences running at once; sizes the ladder  [default: 64, or the "
                   "trace file's largest batch]")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="llama-1b", show_default=True)
@click.option("--context", type=int, default=512, show_default=True,
              help=f"KV length every step attends to, 1..{MAX_CONTEXT}.")
@click.option("--ladder", type=Ladder(), default="vllm", show_default=True,
              help="The graph arm's capture sizes: vllm, sglang, pow2 (sized to --max-num-seqs) "
                   "or a list (sizes above its largest fall back to eager).")
@click.option("--mode", default="full", show_default=True, help=MODE_HELP)
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="bfloat16", show_default=True)
@click.option("--backend", type=click.Choice(["triton", "torch"]), default="triton",
              show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True,
              help="Timed passes of the trace per arm (the arms alternate).")
@click.option("--warmup", type=int, default=1, show_default=True,
              help="Untimed passes per arm first.")
@click.option("--no-exact", is_flag=True, help="Skip the exact-size capture arm.")
@click.option("--seed", type=int, default=0, show_default=True)
@OUT
@FORMAT
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output; only the table (or JSON).")
def serve(trace_file, steps, arrival_rate, output_len, max_num_seqs, preset, context, ladder,
          mode, dtype, backend, repeats, warmup, no_exact, seed, out, fmt, as_json, quiet):
    """Serving trace: batch sizes changing step by step through the dispatcher, graphs and eager
    fallback, against exact-size capture and eager (needs a CUDA GPU)."""
    from microbench.bench.serve import ServeConfig, run_serve
    cfg = _checked(ServeConfig(preset=preset, trace_file=trace_file, steps=steps,
                               arrival_rate=arrival_rate, output_len=output_len,
                               max_num_seqs=max_num_seqs, context=context, ladder=ladder,
                               mode=mode, dtype=dtype, backend=backend, repeats=repeats,
                               warmup=warmup, exact=not no_exact, seed=seed, out=out), out)
    try:
        trace = cfg.trace()
    except ValueError as e:
        usage(e)
    require_cuda("serve")
    save = Saver(out, "serve", preset, write=write_serve_run)
    run = _measure(lambda hooks: run_serve(cfg, trace, on_run=save, **hooks), quiet, as_json)
    return _finish(run, serve_doc(run), fmt, save, as_json, quiet)
