"""The `microbench` command: a thin shell. Each command builds a frozen config, calls a typed
function that tests can call directly, and prints what it returns."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from microbench import __version__
from microbench.bench.env import require_cuda
from microbench.cli_serve import generate, serve
from microbench.cli_output import FORMAT, TRACE, TraceWriter, echo_doc, progress_view, sweep_hooks
from microbench.cli_types import (CLI, OUT, ExperimentName, IntList, Ladder, Saver, read_run_arg,
                                  usage)
from microbench.engine.dispatch import PaddingDispatcher
from microbench.engine.ladders import (pow2_capture_sizes, sglang_capture_sizes,
                                       sglang_default_max_bs, vllm_capture_sizes,
                                       with_engine_options)
from microbench.engine.shapes import DTYPE_NAMES, MAX_BATCH, MAX_CONTEXT, PRESETS
from microbench.report.model_table import model_table
from microbench.report.plots import entry_lines, render_report
from microbench.report.record import check_writable, run_id, write_run
from microbench.report.render import RenderError, render_run
from microbench.report.tables import kernels_table, launch_table, sweep_doc

# Commands that need no GPU (--help, ladder, model, show, index) must not import torch: bench,
# analysis and engine.runner load inside the commands that use them. engine.runner.MODES,
# spelled here for that reason (a test holds the two equal).
MODES = ("none", "full", "piecewise")


@click.group(cls=CLI, context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(__version__, prog_name="microbench")
def main():
    """CUDA-graph micro-benchmarks for LLM decoding: a Triton toy decoder, one graph per batch
    size in a shared pool, a padding dispatcher, and an analytic launch-overhead model.

    Start with:  microbench sweep --bs 1,4,16,64
    """


# ---- sweep ---------------------------------------------------------------------------------
def LADDER_OPTIONS(f):
    """The engines' ladder options, folded into --ladder (engine.ladders.with_engine_options)."""
    opts = [click.option("--num-speculative-tokens", type=click.IntRange(0, 64), default=0,
                         help="With --ladder vllm: draft tokens per step."),
            click.option("--performance-mode", default="balanced",
                         type=click.Choice(["balanced", "interactivity", "throughput"]),
                         help="With --ladder vllm: interactivity adds every size 1..32."),
            click.option("--blackwell", is_flag=True, help="With --ladder vllm: ceiling 1024."),
            click.option("--max-num-batched-tokens", type=click.IntRange(1, 1 << 20),
                         default=None, help="With --ladder vllm: the token budget."),
            click.option("--speculative", is_flag=True,
                         help="With --ladder sglang: its speculative-decoding list."),
            click.option("--disable-cuda-graph-padding", "disable_padding", is_flag=True,
                         help="With --ladder sglang: every size up to the largest --bs.")]
    for opt in reversed(opts):
        f = opt(f)
    return f


@main.command()
@click.option("--bs", type=IntList(1, MAX_BATCH), default="1,4,16,64", show_default=True,
              help=f"Comma-separated batch sizes, each 1..{MAX_BATCH}.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="opt-125m", show_default=True)
@click.option("--mode", type=click.Choice(MODES), default="full", show_default=True,
              help="Graph mode: none (eager only), full, piecewise.")
@click.option("--ladder", type=Ladder(), default="vllm", show_default=True,
              help="Capture sizes: vllm, sglang, pow2 (sized to the largest --bs) or a list.")
@click.option("--context", type=click.IntRange(1, MAX_CONTEXT), default=512, show_default=True,
              help=f"KV length each step attends to, 1..{MAX_CONTEXT}.")
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="bfloat16", show_default=True)
@click.option("--backend", type=click.Choice(["triton", "torch"]), default="triton",
              show_default=True, help="Kernels: Triton, or their PyTorch references.")
@click.option("--steps", type=click.IntRange(1, 10000), default=10, show_default=True,
              help="Decode steps per timing sample.")
@click.option("--time-budget", type=click.FloatRange(0.01, 600), default=1.0, show_default=True,
              help="Seconds per arm a row's arms are sampled in rotation, at most (eager, the "
                   "noisier side, counts twice); a row stops sooner once its speedup's 95% "
                   "interval is within 2% (else it is marked unstable); at least 10 rotations.")
@click.option("--arms", type=click.STRING, default=None,
              help="Arms side by side: eager and graph (Triton; always run, graph unless "
                   "--mode none), torch-eager, torch-graph (PyTorch reference backend), compile "
                   "(that backend under torch.compile reduce-overhead), torch-compile (the model "
                   "as plain PyTorch modules, gpt-fast style, under torch.compile "
                   "reduce-overhead); e.g. --arms eager,graph,torch-compile.")
@click.option("--split-launch", is_flag=True,
              help="With --mode full: capture each size as two graphs (the first quarter of the "
                   "layers, then the rest) launched back to back, so the GPU starts while the "
                   "host still launches the longer one.")
@click.option("--tp", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Tensor-parallel ranks, one GPU each (spawned here, or run under "
                   "torchrun --nproc-per-node N -m microbench.cli_tp sweep --tp N).")
@click.option("--no-tp1", is_flag=True, help="With --tp: skip the TP-1 comparison on rank 0.")
@LADDER_OPTIONS
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Measure in this many fresh processes, one after another, and report each "
                   "row's speedup in every one and their spread (the first process's run, "
                   "plus speedup_repeats).")
@OUT
@FORMAT
@TRACE
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output; only the table (or JSON).")
def sweep(bs, preset, mode, ladder, context, dtype, backend, steps, time_budget, arms, split_launch,
          tp, no_tp1, repeat, out, fmt, trace, as_json, quiet, **engine_opts):
    """Eager against graph step time per batch size (needs a CUDA GPU)."""
    from microbench.analysis.beside import predict_sweep
    from microbench.bench.sweep import SweepConfig, run_sweep
    try:
        ladder = with_engine_options(ladder, **engine_opts)
    except ValueError as e:
        usage(e)
    cfg = SweepConfig(bs=bs, preset=preset, mode=mode, ladder=ladder, context=context,
                      dtype=dtype, backend=backend, steps=steps, time_budget=time_budget, out=out,
                      arms=tuple(a.strip() for a in (arms or "").split(",") if a.strip()),
                      split_launch=split_launch)
    try:
        if arms is not None and not cfg.arms:
            raise ValueError("--arms: give at least one arm of eager, graph, torch-eager, "
                             "torch-graph, compile, torch-compile")
        cfg.validate()
        if tp > 1:
            if split_launch:
                raise ValueError("--split-launch: not with --tp (one graph per size there)")
            if set(cfg.arms) - {"eager", "graph"}:
                raise ValueError("--arms: with --tp only eager and graph run")
            from microbench.cli_tp import validate_tp
            validate_tp(preset, tp)
        elif no_tp1:
            raise ValueError("--no-tp1: only with --tp 2 or more")
        if repeat > 1 and tp > 1:
            raise ValueError("--repeat: not with --tp yet (one process per repeat on one GPU)")
        if (trace or fmt != "table") and (tp > 1 or repeat > 1):
            raise ValueError(f"--{'trace' if trace else 'format'}: not with --tp or --repeat")
        if trace:
            try:
                check_writable(Path(trace))
            except ValueError as e:
                raise ValueError(f"--trace: {e}") from None
        check_writable(Path(out))
    except ValueError as e:
        usage(e if str(e).startswith("--") else ValueError(f"--out: {e}"))
    require_cuda("sweep")
    if tp > 1:
        from microbench.cli_tp import tp_sweep_main
        text, code = tp_sweep_main(cfg.to_dict(), tp, compare_tp1=not no_tp1, as_json=as_json,
                                   quiet=quiet)
        if text is not None:
            click.echo(text)
        return code
    view = progress_view(not (quiet or as_json))
    say = view.say if view else None
    save = Saver(out, "sweep", preset)
    tracer = TraceWriter(trace, save) if trace else None
    if repeat > 1:
        from microbench.cli_repeat import run_repeats
        ctx = click.get_current_context()
        run = run_repeats(ctx.command, ctx.params, repeat, say)
        save(run)
    else:
        try:
            run = run_sweep(cfg, on_run=save, predict=predict_sweep, on_trace=tracer,
                            **sweep_hooks(view))
        finally:
            if view:
                view.close()
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
    else:
        echo_doc(sweep_doc(run), fmt)
        if not quiet:
            click.echo(f"saved: {save.dir}" + (f"\ntrace: {tracer.path}" if tracer and tracer.path
                                              else ""), err=fmt != "table")
    return 130 if run.get("interrupted") else 0


# ---- launch --------------------------------------------------------------------------------
@main.command()
@click.option("--time-budget", type=click.FloatRange(0.01, 600), default=1.0, show_default=True)
@click.option("--tp", type=click.IntRange(1, 64), default=1, show_default=True,
              help="With N > 1: the all-reduce benchmark across N GPUs (latency and bus bandwidth).")
@OUT
@click.option("--json", "as_json", is_flag=True)
def launch(time_budget, tp, out, as_json):
    """Launch overhead per launcher, graph replay cost, copy bandwidth (needs a CUDA GPU)."""
    from microbench.bench.env import environment
    from microbench.bench.launch import measure_launch
    try:
        check_writable(Path(out))
        if tp > 1:
            from microbench.cli_tp import validate_tp
            validate_tp(None, tp)
    except ValueError as e:
        usage(e if str(e).startswith("--") else ValueError(f"--out: {e}"))
    require_cuda("launch")
    if tp > 1:
        from microbench.cli_tp import tp_launch_main
        text, code = tp_launch_main(tp, time_budget, out, as_json)
        if text is not None:
            click.echo(text)
        return code
    env = environment()
    res = measure_launch("cuda", budget_s=time_budget)
    run = dict(kind="launch", config=dict(time_budget=time_budget, out=out), env=env, launch=res)
    d = write_run(Path(out) / run_id("launch", env), run)
    click.echo(json.dumps(run, indent=2) if as_json else launch_table(res) + f"\nsaved: {d}")


# ---- ladder --------------------------------------------------------------------------------
@main.command()
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


@main.command()
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
        run_fusion
    if taken:
        click.echo("microbench: from the --profile run: " + ", ".join(
            f"{k} {v}" for k, v in taken.items()) + " (options override)", err=True)
    try:
        prof = resolve_profile(run, gpu, copy_bw, tflops, launch_us, opts["preset"],
                               run_name=profile_run)
    except ValueError as e:
        usage(e)
    # the plan of the decoder that was measured, else today's decoder's
    res = model_rows(PRESETS[opts["preset"]], bs, opts["context"], ladder, prof, below,
                     opts["dtype"], fusion=run_fusion(run))
    # measured beside predicted only when the prediction is of the measured device and host:
    # with --gpu or other numbers it is a different machine, and the error would mean nothing
    if run is not None and not (gpu or copy_bw or tflops or launch_us):
        res = attach_measured(res, run)
    click.echo(json.dumps(res, indent=2) if as_json else model_table(res))


# ---- kernels ------------------------------------------------------------------------------
@main.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="llama-1b", show_default=True)
@click.option("--bs", type=IntList(1, 1024), default="1,16,64", show_default=True)
@click.option("--context", type=click.IntRange(1, MAX_CONTEXT), default=4096, show_default=True)
@click.option("--time-budget", type=click.FloatRange(0.01, 600), default=0.5, show_default=True)
@OUT
def kernels(preset, bs, context, time_budget, out):
    """Each decode kernel's bandwidth against the measured copy bandwidth (needs a CUDA GPU)."""
    from microbench.bench.kernel_bench import run_kernel_bench
    try:
        check_writable(Path(out))
    except ValueError as e:
        usage(ValueError(f"--out: {e}"))
    require_cuda("kernels")
    run = run_kernel_bench(preset, bs, context, time_budget)
    d = write_run(Path(out) / run_id("kernels", run["env"], preset), run, csv_name="kernels.csv")
    click.echo(kernels_table(run) + f"\nsaved: {d}")


# ---- reproduce -----------------------------------------------------------------------------
@main.command()
@click.argument("names", nargs=-1, type=ExperimentName(), metavar="[NAMES]...")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="opt-125m", show_default=True)
@click.option("--bs", type=IntList(1, MAX_BATCH), default="1,4,16,64", show_default=True,
              help="Batch sizes of speedup-fade, capture-cost and piecewise-vs-full.")
@click.option("--context", type=click.IntRange(1, MAX_CONTEXT), default=512, show_default=True,
              help=f"KV length each step attends to, 1..{MAX_CONTEXT} (off-stride uses 128).")
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="bfloat16", show_default=True)
@click.option("--time-budget", type=click.FloatRange(0.01, 600), default=0.5, show_default=True,
              help="Seconds per measured step time at most (at least 10 samples are taken).")
@click.option("--steps", type=click.IntRange(1, 10000), default=5, show_default=True,
              help="Decode steps per timing sample.")
@click.option("--memory-budget", type=click.FloatRange(0.001, 1e5), default=None,
              help="GiB for memory-headroom (default: free memory after the decoder's weights "
                   "and KV cache).")
@OUT
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output; only the verdicts (or JSON).")
def reproduce(names, preset, bs, context, dtype, time_budget, steps, memory_budget, out, as_json,
              quiet):
    """Reproduce published CUDA-graph phenomena (all eight, or those NAMED) and write a report
    (needs a CUDA GPU). Names: speedup-fade, ladder-collapse, off-stride, padding-waste,
    pool-growth, capture-cost, piecewise-vs-full, memory-headroom."""
    import time

    from microbench.analysis.beside import predict_fade
    from microbench.analysis.verdicts import judge
    from microbench.bench.reproduce import NAMES, ReproduceConfig, run_reproduce
    from microbench.report.record import write_reproduce_run
    t0 = time.perf_counter()
    loud = not (quiet or as_json)
    cfg = ReproduceConfig(names=tuple(dict.fromkeys(names)) or NAMES, preset=preset, bs=bs,
                          context=context, dtype=dtype, steps=steps, time_budget=time_budget,
                          memory_budget_gib=memory_budget, out=out, progress=loud)
    try:
        cfg.validate()
        check_writable(Path(out))
    except ValueError as e:
        usage(e if str(e).startswith(("--", "NAMES")) else ValueError(f"--out: {e}"))
    require_cuda("reproduce")
    say = progress_view(loud)
    save = Saver(out, "reproduce", preset, write=write_reproduce_run)

    show = None if as_json else (lambda e: click.echo(entry_lines(e)))
    run = run_reproduce(cfg, on_progress=say, on_capture=say and say.capture, on_entry=show,
                        on_run=save, judge=judge,
                        predict=predict_fade)
    if say:
        say.close()
    report = render_report(run, save.dir)
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
    else:
        click.echo(f"report: {report}")
        click.echo(f"total: {time.perf_counter() - t0:.1f} s")
    if run.get("interrupted"):
        return 130
    return 1 if any(e.get("error") for e in run["phenomena"]) else 0


# ---- show, index ---------------------------------------------------------------------------
@main.command()
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


@main.command()
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


@main.command()
@click.argument("root", type=click.Path(file_okay=False), default="results")
def index(root):
    """Write ROOT/README.md, a table of the runs under ROOT (default: results; no GPU needed)."""
    from microbench.report.index import write_index   # written alongside; loaded on use
    if not Path(root).is_dir():
        usage(f"ROOT: {root} is not a folder")
    click.echo(f"wrote {write_index(Path(root))}")


# generate and serve live in cli_serve.py
main.add_command(generate)
main.add_command(serve)


if __name__ == "__main__":
    main()
