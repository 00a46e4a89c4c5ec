"""The commands that need no GPU: ladder, model, show, compare, index. They import no torch
(a test checks), so they start fast and work on any machine; `microbench.cli` adds them to the
group."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from microbench.cli_output import FORMAT, echo_doc
from microbench.cli_types import IntList, Ladder, read_run_arg, usage
from microbench.engine.dispatch import PaddingDispatcher
from microbench.engine.ladders import (pow2_capture_sizes, sglang_capture_sizes,
                                       sglang_default_max_bs, vllm_capture_sizes)
from microbench.engine.shapes import DTYPE_NAMES, MAX_BATCH, MAX_CONTEXT, PRESETS
from microbench.report.model_table import model_table
from microbench.report.render import RenderError, render_run


@click.command()
@click.option("--engine", type=click.Choice(["vllm", "sglang", "pow2"]), default="vllm",
              show_default=True)
@click.option("--max-num-seqs", type=click.IntRange(1, MAX_BATCH), default=256, show_default=True)
@click.option("--max-num-batched-tokens", type=click.IntRange(1, 1 << 20), default=8192,
              show_default=True)
@click.option("--max-capture-size", type=click.IntRange(1, 1 << 20), default=None)
@click.option("--no-off-stride-fix", is_flag=True, help="vLLM's ladder before PR #40734.")
@click.option("--num-speculative-tokens", type=click.IntRange(0, 64), default=0, show_default=True,
              help="vllm: draft tokens per step (the ceiling becomes max_num_seqs*(1+k)*2).")
@click.option("--performance-mode", type=click.Choice(["balanced", "interactivity", "throughput"]),
              default="balanced", show_default=True,
              help="vllm: interactivity adds every size 1..32.")
@click.option("--blackwell", is_flag=True, help="vllm: the data-center Blackwell ceiling (1024).")
@click.option("--max-bs", type=click.IntRange(1, MAX_BATCH), default=None,
              help="Largest batch for sglang (its cuda_graph_max_bs) and pow2 (default: "
                   "--max-num-seqs, or SGLang's default for --gpu-mem-gb and --tp).")
@click.option("--speculative", is_flag=True, help="sglang: the speculative-decoding list.")
@click.option("--disable-cuda-graph-padding", is_flag=True,
              help="sglang: every size 1..max_bs, and only captured sizes run graphed.")
@click.option("--max-running-requests", type=click.IntRange(1, MAX_BATCH), default=None,
              help="sglang: the request pool; the runner adds it and drops larger sizes.")
@click.option("--gpu-mem-gb", type=click.FloatRange(1, 1e4), default=None,
              help="sglang: GPU memory, for SGLang's default max_bs.")
@click.option("--tp", type=click.IntRange(1, 64), default=1, show_default=True,
              help="sglang: TP size, for SGLang's default max_bs.")
@click.option("--sizes", type=IntList(1, MAX_BATCH), default=None,
              help="An explicit ladder, e.g. 1,2,4,8,16; with --engine vllm, filtered by "
                   "--max-num-batched-tokens as vLLM filters cudagraph_capture_sizes.")
@click.option("--bs", type=IntList(1, 1 << 20), default=None,
              help="Batch sizes to show the padding of, e.g. 3,37,700.")
@click.option("--json", "as_json", is_flag=True)
def ladder(engine, max_num_seqs, max_num_batched_tokens, max_capture_size, no_off_stride_fix,
           num_speculative_tokens, performance_mode, blackwell, max_bs, speculative,
           disable_cuda_graph_padding, max_running_requests, gpu_mem_gb, tp, sizes, bs, as_json):
    """Print a capture ladder and what each batch size pads to (no GPU needed)."""
    try:
        if engine == "vllm":
            lad = vllm_capture_sizes(max_num_seqs, max_num_batched_tokens, max_capture_size,
                                     off_stride_fix=not no_off_stride_fix,
                                     num_speculative_tokens=num_speculative_tokens,
                                     performance_mode=performance_mode, capture_sizes=sizes,
                                     blackwell=blackwell)
            what = (f"vllm ({'explicit ' + str(sorted(set(sizes))) + ', ' if sizes else ''}"
                    f"max_num_seqs={max_num_seqs}, max_num_batched_tokens="
                    f"{max_num_batched_tokens}, max_capture_size={max_capture_size}, off-stride "
                    f"fix {'off' if no_off_stride_fix else 'on'}, num_speculative_tokens="
                    f"{num_speculative_tokens}, {performance_mode}"
                    f"{', blackwell' if blackwell else ''})")
        elif sizes:
            lad, what = sorted(set(sizes)), "explicit"
        else:
            m = max_bs or (sglang_default_max_bs(gpu_mem_gb, tp) if gpu_mem_gb and
                           engine == "sglang" else max_num_seqs)
            lad = (sglang_capture_sizes(m, speculative, disable_cuda_graph_padding,
                                        max_running_requests)
                   if engine == "sglang" else pow2_capture_sizes(m))
            what = f"{engine} (max_bs={m})"
    except ValueError as e:
        usage(e)
    disp = PaddingDispatcher(lad, exact=engine == "sglang" and disable_cuda_graph_padding)
    pads = [dict(bs=b, padded=disp.pad(b), padding=disp.padding(b)) for b in (bs or ())]
    if as_json:
        click.echo(json.dumps(dict(ladder=lad, sizes=len(lad), pads=pads)))
        return
    click.echo(f"{what}: {len(lad)} sizes")
    click.echo(str(lad))
    for p in pads:
        dest = (f"pads to {p['padded']} ({p['padding']} padded rows)" if p["padded"]
                else f"runs eagerly (above the largest size {disp.max_size})"
                if p["bs"] > disp.max_size else "runs eagerly (not captured, no padding)")
        click.echo(f"bs {p['bs']}: {dest}")


# ---- model --------------------------------------------------------------------------------
MODEL_DEFAULTS = dict(preset="opt-125m", context=512, dtype="bfloat16")
# analysis.published.TABLES by name, spelled here so --help loads no analysis (a test holds them equal)
PUBLISHED = ("all", "opt125m-l4", "llama8b-h200")


@click.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="Model shape  [default: the --profile run's, else opt-125m]")
@click.option("--bs", type=IntList(1, MAX_BATCH), default="1,4,16,64", show_default=True)
@click.option("--context", type=click.IntRange(1, MAX_CONTEXT), default=None,
              help="KV length  [default: the --profile run's, else 512]")
@click.option("--ladder", type=Ladder(), default="vllm", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default=None,
              help="[default: the --profile run's, else bfloat16]")
@click.option("--profile", "profile_run", type=click.Path(), default=None, metavar="RUN",
              help="A saved sweep or launch run whose measured device profile to use; its "
                   "preset, context and dtype too, unless given.")
@click.option("--gpu", type=click.Choice(["H100", "H200", "A100", "L4", "L40S"]), default=None,
              help="Datasheet bandwidth and matrix rate of a known GPU (a prediction).")
@click.option("--copy-bw", type=click.FloatRange(1, 1e5, min_open=False), default=None,
              help="Copy bandwidth in GB/s (read + write).")
@click.option("--tflops", type=click.FloatRange(0.1, 1e5), default=None, help="Matrix rate, TFLOP/s.")
@click.option("--launch-us", type=click.FloatRange(0, 1e4), default=None,
              help="Host cost of one kernel launch, us (every launcher).")
@click.option("--below", type=click.FloatRange(1.0, 100, min_open=True), default=1.1,
              show_default=True, help="Report the batch size where the speedup falls under this.")
@click.option("--published", type=click.Choice(PUBLISHED), default=None,
              help="Reproduce a published table instead: fit the launch cost on its first row, "
                   "predict the others on datasheet GPUs (docs/published.md); other options "
                   "are ignored.")
@click.option("--json", "as_json", is_flag=True)
def model(preset, bs, context, ladder, dtype, profile_run, gpu, copy_bw, tflops, launch_us,
          below, published, as_json):
    """Predict eager and graph step time and speedup (no GPU needed).

    Needs a device profile, one of: --profile RUN (measured), --gpu NAME (datasheet), or both
    --copy-bw and --tflops; e.g. microbench model --gpu H200. Or --published NAME."""
    if published:
        from microbench.analysis.published import TABLES, format_table, predict_table
        res = [predict_table(n) for n in (TABLES if published == "all" else [published])]
        click.echo(json.dumps(res, indent=2) if as_json else
                   "\n\n".join(format_table(r) for r in res))
        return
    run = read_run_arg(profile_run, "--profile") if profile_run else None
    given = dict(preset=preset, context=context, dtype=dtype)
    taken = {k: (run or {}).get("config", {}).get(k) for k, v in given.items() if v is None}
    taken = {k: v for k, v in taken.items() if v is not None}
    opts = {**MODEL_DEFAULTS, **taken, **{k: v for k, v in given.items() if v is not None}}
    if opts["preset"] not in PRESETS or opts["dtype"] not in DTYPE_NAMES:
        usage(f"--profile: the run's preset {opts['preset']!r} or dtype {opts['dtype']!r} is "
               "not one this microbench knows; give --preset and --dtype")
    from microbench.analysis.model_rows import attach_measured, model_rows, resolve_profile, \
        run_fast_rows, run_fusion, run_separate_rows
    try:
        prof = resolve_profile(run, gpu, copy_bw, tflops, launch_us, opts["preset"],
                               run_name=profile_run, context=opts["context"])
    except ValueError as e:
        usage(e)
    # said once the run is known to hold a profile, so a run without one is one line
    if taken:
        click.echo("microbench: from the --profile run: " + ", ".join(
            f"{k} {v}" for k, v in taken.items()) + " (options override)", err=True)
    # the plan of the decoder that was measured, else today's decoder's
    res = model_rows(PRESETS[opts["preset"]], bs, opts["context"], ladder, prof, below,
                     opts["dtype"], fusion=run_fusion(run), fast_rows=run_fast_rows(run),
                     separate_rows=run_separate_rows(run))
    # measured beside predicted only when the prediction is of the measured device and host:
    # with --gpu or other numbers it is a different machine, and the error would mean nothing
    if run is not None and not (gpu or copy_bw or tflops or launch_us):
        res = attach_measured(res, run)
    click.echo(json.dumps(res, indent=2) if as_json else model_table(res))


# ---- kernels ------------------------------------------------------------------------------
@click.command()
@click.argument("run", type=click.Path())
@FORMAT
@click.option("--json", "as_json", is_flag=True, help="Print the whole run as JSON.")
def show(run, fmt, as_json):
    """Print a saved run's table (no GPU needed)."""
    data = read_run_arg(run, "RUN")
    try:
        click.echo(render_run(data, as_json, fmt, color=fmt == "table" and sys.stdout.isatty()))
    except RenderError as e:
        usage(f"RUN: {run}: {e}")


@click.command()
@click.argument("runs", nargs=-1, type=click.Path(), metavar="RUN_A RUN_B [RUN]...")
@click.option("--threshold", type=click.FloatRange(0, 100), default=1.0, show_default=True,
              help="Percent: a change under this counts as same, however quiet the runs.")
@FORMAT
def compare(runs, threshold, fmt):
    """Sweep runs side by side: each figure of RUN_B (and later runs) against RUN_A, its
    ratio and a verdict that respects both runs' noise: faster, slower, same or unclear (no GPU
    needed). Runs of different devices, presets, contexts or dtypes are refused (exit 2)."""
    from microbench.report.compare import NotComparable, compare_doc, compare_runs
    if len(runs) < 2:
        usage("RUN_B: compare needs at least two runs")
    names = [f"RUN_{chr(ord('A') + i)}" for i in range(len(runs))]
    data = [read_run_arg(r, n) for r, n in zip(runs, names)]
    try:
        records = compare_runs(data, list(runs), floor=threshold / 100)
    except NotComparable as e:
        usage(e)
    echo_doc(compare_doc(data, list(runs), records, floor=threshold / 100), fmt)


@click.command()
@click.argument("root", type=click.Path(file_okay=False), default="results")
def index(root):
    """Write ROOT/README.md, a table of the runs under ROOT (default: results; no GPU needed)."""
    from microbench.report.index import write_index   # written alongside; loaded on use
    if not Path(root).is_dir():
        usage(f"ROOT: {root} is not a folder")
    click.echo(f"wrote {write_index(Path(root))}")


# generate and serve live in cli_serve.py
