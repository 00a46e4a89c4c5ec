"""The `microbench` command: a thin shell. Each command builds a frozen config, calls a typed
function that tests can call directly, and prints what it returns."""
from __future__ import annotations

import json
from pathlib import Path

import click

from microbench import __version__
from microbench.bench.env import require_cuda
from microbench.cli_offline import PUBLISHED, compare, index, ladder, model, show  # noqa: F401
from microbench.cli_serve import generate, serve
from microbench.cli_startup import startup
from microbench.cli_tune import tune
from microbench.cli_output import FORMAT, TRACE, TraceWriter, echo_doc, progress_view, sweep_hooks
from microbench.cli_types import CLI, NO_PIN_CPU, OUT, ExperimentName, IntList, Ladder, Saver, usage
from microbench.engine.ladders import with_engine_options
from microbench.engine.modes import MODES
from microbench.engine.shapes import DTYPE_NAMES, MAX_BATCH, MAX_CONTEXT, PRESETS
from microbench.report.plots import entry_lines, render_report
from microbench.report.record import check_writable, run_id, write_run
from microbench.report.tables import kernels_table, launch_table, sweep_doc
from microbench.report.tp_tables import tp_sweep_doc

# Commands that need no GPU (--help, ladder, model, show, index) must not import torch: bench,
# analysis and engine.runner load inside the commands that use them (engine.modes is torch-free).


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
              help="Graph mode: none (eager only), full, piecewise, full_and_piecewise (vLLM's "
                   "default: full graphs for decode steps, piecewise for the rest).")
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
@click.option("--full-max-size", type=click.IntRange(1, MAX_BATCH), default=None,
              help="With --mode full_and_piecewise: the largest size the full (decode) pass "
                   "captures, as vLLM caps its full graphs at max_num_seqs; larger sizes replay "
                   "piecewise graphs  [default: every size].")
@click.option("--tp", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Tensor-parallel ranks, one GPU each (spawned here, or run under "
                   "torchrun --nproc-per-node N -m microbench.cli_tp sweep --tp N).")
@click.option("--no-tp1", is_flag=True, help="With --tp: skip the TP-1 comparison on rank 0.")
@NO_PIN_CPU
@LADDER_OPTIONS
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Measure in this many fresh processes and report each row's speedup in "
                   "every one and their spread (each row from the process with its median "
                   "speedup, plus speedup_repeats).")
@click.option("--repeat-mode", type=click.Choice(["interleaved", "sequential"]), default=None,
              help="With --repeat: interleaved (the default at --tp 1) starts the processes "
                   "together and lets them use the GPU in turns, one phase at a time (the "
                   "build, each batch size, the device figures), in rotating order, so each "
                   "row's figures are measured one right after another; it holds every "
                   "process's decoder in GPU memory at once. sequential (the only mode with "
                   "--tp) runs one process after another.")
@OUT
@FORMAT
@TRACE
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output; only the table (or JSON).")
def sweep(bs, preset, mode, ladder, context, dtype, backend, steps, time_budget, arms, split_launch,
          full_max_size, tp, no_tp1, no_pin_cpu, repeat, repeat_mode, out, fmt, trace, as_json,
          quiet, **engine_opts):
    """Eager against graph step time per batch size (needs a CUDA GPU)."""
    from microbench.analysis.beside import predict_sweep
    from microbench.bench.hostcpu import quiet_tolerance
    from microbench.bench.sweep import run_sweep
    from microbench.bench.sweep_config import SweepConfig
    from microbench.bench.turns import gate_from_env
    try:
        ladder = with_engine_options(ladder, **engine_opts)
        quiet_tolerance()
    except ValueError as e:
        usage(e)
    cfg = SweepConfig(bs=bs, preset=preset, mode=mode, ladder=ladder, context=context,
                      dtype=dtype, backend=backend, steps=steps, time_budget=time_budget, out=out,
                      arms=tuple(a.strip() for a in (arms or "").split(",") if a.strip()),
                      split_launch=split_launch, full_max_size=full_max_size,
                      pin_cpu=not no_pin_cpu)
    try:
        if arms is not None and not cfg.arms:
            raise ValueError("--arms: give at least one arm of eager, graph, torch-eager, "
                             "torch-graph, compile, torch-compile")
        cfg.validate()
        if tp > 1:
            if split_launch:
                raise ValueError("--split-launch: not with --tp (one graph per size there)")
            if full_max_size is not None:
                raise ValueError("--full-max-size: not with --tp yet")
            if mode == "full_and_piecewise":
                raise ValueError("--mode: full_and_piecewise not with --tp yet (the TP sweep "
                                 "captures one pass per rank); use full or piecewise")
            if set(cfg.arms) - {"eager", "graph"}:
                raise ValueError("--arms: with --tp only eager and graph run")
            from microbench.cli_tp import torchrun_rank, validate_tp
            validate_tp(preset, tp)
            if repeat > 1 and torchrun_rank() is not None:
                raise ValueError("--repeat: not under torchrun (each repeat starts its own "
                                 "ranks); run microbench sweep --tp N --repeat K alone")
        elif no_tp1:
            raise ValueError("--no-tp1: only with --tp 2 or more")
        if repeat_mode is not None and repeat == 1:
            raise ValueError("--repeat-mode: only with --repeat 2 or more")
        if repeat_mode == "interleaved" and tp > 1:
            raise ValueError("--repeat-mode: interleaved not with --tp (each process starts "
                             "its own ranks); use sequential")
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
    if tp > 1 and repeat == 1:
        from microbench.cli_tp import tp_sweep_main
        text, code = tp_sweep_main(cfg.to_dict(), tp, compare_tp1=not no_tp1, as_json=as_json,
                                   quiet=quiet)
        if text is not None:
            click.echo(text)
        return code
    view = progress_view(not (quiet or as_json))
    say = view.say if view else None
    save = Saver(out, "sweep", preset if tp == 1 else f"{preset}-tp{tp}")
    tracer = TraceWriter(trace, save) if trace else None
    if repeat > 1:
        from microbench.cli_repeat import run_repeats
        ctx = click.get_current_context()
        try:
            run = run_repeats(ctx.command, ctx.params, repeat, say, mode=repeat_mode or (
                "interleaved" if tp == 1 else "sequential"))
        except RuntimeError as e:   # a process failed: one line, no merged run
            raise click.ClickException(str(e)) from None
        save(run)
    else:
        try:
            # a --repeat parent's gate (interleaved): run each phase when it is this one's turn
            run = run_sweep(cfg, on_run=save, predict=predict_sweep, on_trace=tracer,
                            turn=gate_from_env(), **sweep_hooks(view))
        finally:
            if view:
                view.close()
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
    else:
        echo_doc(sweep_doc(run) if tp == 1 else tp_sweep_doc(run), fmt)
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
@click.option("--gpu-memory-utilization", type=float, default=None,
              help="memory-headroom as an engine starts: profile a step, give the KV cache what "
                   "this fraction (0..1] of the device's memory leaves, then capture.")
@NO_PIN_CPU
@OUT
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output; only the verdicts (or JSON).")
def reproduce(names, preset, bs, context, dtype, time_budget, steps, memory_budget,
              gpu_memory_utilization, no_pin_cpu, out, as_json, quiet):
    """Reproduce published CUDA-graph phenomena (all eight, or those NAMED) and write a report
    (needs a CUDA GPU). Names: speedup-fade, ladder-collapse, off-stride, padding-waste,
    pool-growth, capture-cost, piecewise-vs-full, memory-headroom."""
    import time

    from microbench.analysis.beside import predict_fade
    from microbench.analysis.verdicts import judge
    from microbench.bench.hostcpu import quiet_tolerance
    from microbench.bench.reproduce import NAMES, ReproduceConfig, run_reproduce
    from microbench.report.record import write_reproduce_run
    t0 = time.perf_counter()
    loud = not (quiet or as_json)
    cfg = ReproduceConfig(names=tuple(dict.fromkeys(names)) or NAMES, preset=preset, bs=bs,
                          context=context, dtype=dtype, steps=steps, time_budget=time_budget,
                          memory_budget_gib=memory_budget,
                          gpu_memory_utilization=gpu_memory_utilization, out=out, progress=loud,
                          pin_cpu=not no_pin_cpu)
    try:
        cfg.validate()
        check_writable(Path(out))
    except ValueError as e:
        usage(e if str(e).startswith(("--", "NAMES")) else ValueError(f"--out: {e}"))
    try:
        quiet_tolerance()
    except ValueError as e:
        usage(e)
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
for command in (ladder, model, show, compare, index, generate, serve, startup, tune):
    main.add_command(command)


if __name__ == "__main__":
    main()
