"""The `microbench` command: a thin shell. Each command builds a frozen config, calls a typed
function that tests can call directly, and prints what it returns."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from microbench import __version__
from microbench.engine.shapes import DTYPES, MAX_BATCH, MAX_CONTEXT, PRESETS
from microbench.engine.runner import MODES
from microbench.engine.ladders import parse_int_list
from microbench.bench.sweep import GPURequired


class IntList(click.ParamType):
    name = "LIST"

    def __init__(self, lo: int = 1, hi: int | None = None):
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        allowed = f"{self.lo}..{self.hi}" if self.hi else f">= {self.lo}"
        try:
            vals = parse_int_list(value, "value")
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers "
                      f"(allowed: each {allowed}, e.g. 1,4,16)", param, ctx)
        if self.hi is not None and max(vals) > self.hi:
            self.fail(f"{max(vals)} is above the limit {self.hi} (allowed: {self.lo}..{self.hi})",
                      param, ctx)
        return tuple(vals)


class Ladder(click.ParamType):
    name = "LADDER"

    def convert(self, value, param, ctx):
        if value in ("vllm", "sglang", "pow2"):
            return value
        try:
            vals = parse_int_list(value, "ladder")
        except ValueError:
            self.fail(f"{value!r} is not vllm, sglang, pow2 or a list like 1,2,4,8", param, ctx)
        if max(vals) > MAX_BATCH:
            self.fail(f"size {max(vals)} is above the limit {MAX_BATCH}", param, ctx)
        return ",".join(str(v) for v in sorted(set(vals)))


class CLI(click.Group):
    """Errors become one line on stderr and an exit code, never a traceback:
    2 for bad usage, 1 for a missing GPU, 130 for Ctrl-C."""

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name or "microbench",
                              standalone_mode=False, **extra)
        except click.UsageError as e:
            click.echo(f"microbench: error: {e.format_message()}", err=True)
            sys.exit(2)
        except GPURequired as e:
            click.echo(f"microbench: {e}", err=True)
            sys.exit(1)
        except RuntimeError as e:
            if type(e).__name__ == "RankFailed":   # microbench.bench.tp: a TP rank died; say which
                click.echo(f"microbench: {e}", err=True)
                sys.exit(1)
            if "out of memory" not in str(e).lower():
                raise
            click.echo("microbench: the GPU ran out of memory for these options; lower --bs or "
                       "--context, or pick a smaller --preset", err=True)
            sys.exit(1)
        except (click.Abort, KeyboardInterrupt):
            click.echo("microbench: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            click.echo(f"microbench: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=CLI, context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(__version__, prog_name="microbench")
def main():
    """CUDA-graph micro-benchmarks for LLM decoding: a Triton toy decoder, one graph per batch
    size in a shared pool, a padding dispatcher, and an analytic launch-overhead model.

    Start with:  microbench sweep --bs 1,4,16,64
    """


def _usage(e: Exception):
    raise click.UsageError(str(e))


# ---- sweep ---------------------------------------------------------------------------------
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
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="bfloat16", show_default=True)
@click.option("--backend", type=click.Choice(["triton", "torch"]), default="triton",
              show_default=True, help="Kernels: Triton, or their PyTorch references.")
@click.option("--steps", type=click.IntRange(1, 10000), default=10, show_default=True,
              help="Decode steps per timing sample.")
@click.option("--time-budget", type=click.FloatRange(0.01, 600), default=1.0, show_default=True,
              help="Seconds per measured figure, at most (eager steps, the noisier side, get twice "
                   "this; at least 10 samples are always taken).")
@click.option("--arms", type=click.STRING, default=None,
              help="Arms side by side: eager and graph (Triton; always run, graph unless "
                   "--mode none), torch-eager, torch-graph (PyTorch reference backend), compile "
                   "(torch.compile reduce-overhead); e.g. --arms eager,graph,compile.")
@click.option("--split-launch", is_flag=True,
              help="With --mode full: capture each size as two graphs (the first quarter of the "
                   "layers, then the rest) launched back to back, so the GPU starts while the "
                   "host still launches the longer one.")
@click.option("--tp", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Tensor-parallel ranks, one GPU each (spawned here, or run under "
                   "torchrun --nproc-per-node N -m microbench.report.tp_tables sweep --tp N).")
@click.option("--no-tp1", is_flag=True, help="With --tp: skip the TP-1 comparison on rank 0.")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Folder the run is written into (as <out>/<run-id>/).")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output; only the table (or JSON).")
def sweep(bs, preset, mode, ladder, context, dtype, backend, steps, time_budget, arms, split_launch,
          tp, no_tp1, out, as_json, quiet):
    """Eager against graph step time per batch size (needs a CUDA GPU)."""
    from microbench.report.record import check_writable, run_id, write_run
    from microbench.report.tables import sweep_table
    from microbench.bench.sweep import SweepConfig, require_cuda, run_sweep
    cfg = SweepConfig(bs=bs, preset=preset, mode=mode, ladder=ladder, context=context,
                      dtype=dtype, backend=backend, steps=steps, time_budget=time_budget, out=out,
                      arms=tuple(a.strip() for a in (arms or "").split(",") if a.strip()),
                      split_launch=split_launch)
    try:
        if arms is not None and not cfg.arms:
            raise ValueError("--arms: give at least one arm of eager, graph, torch-eager, "
                             "torch-graph, compile")
        cfg.validate()
        if tp > 1:
            if split_launch:
                raise ValueError("--split-launch: not with --tp (one graph per size there)")
            if set(cfg.arms) - {"eager", "graph"}:
                raise ValueError("--arms: with --tp only eager and graph run")
            from microbench.report.tp_tables import validate_tp
            validate_tp(preset, tp)
        elif no_tp1:
            raise ValueError("--no-tp1: only with --tp 2 or more")
        check_writable(Path(out))
    except ValueError as e:
        _usage(e if str(e).startswith("--") else ValueError(f"--out: {e}"))
    require_cuda("sweep")
    if tp > 1:
        from microbench.report.tp_tables import tp_sweep_main
        text, code = tp_sweep_main(cfg.to_dict(), tp, compare_tp1=not no_tp1, as_json=as_json,
                                   quiet=quiet)
        if text is not None:
            click.echo(text)
        return code
    say = None if quiet or as_json else (lambda s: click.echo(s, err=True))
    where = {}

    def save(run):
        if "dir" not in where:
            where["dir"] = Path(out) / run_id("sweep", run["env"], preset)
        write_run(where["dir"], run)

    run = run_sweep(cfg, on_progress=say, on_run=save)
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
    else:
        click.echo(sweep_table(run))
        if not quiet:
            click.echo(f"saved: {where['dir']}")
    return 130 if run.get("interrupted") else 0


# ---- launch --------------------------------------------------------------------------------
@main.command()
@click.option("--time-budget", type=click.FloatRange(0.01, 600), default=1.0, show_default=True)
@click.option("--tp", type=click.IntRange(1, 64), default=1, show_default=True,
              help="With N > 1: the all-reduce benchmark across N GPUs (latency and bus bandwidth).")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def launch(time_budget, tp, out, as_json):
    """Launch overhead per launcher, graph replay cost, copy bandwidth (needs a CUDA GPU)."""
    from microbench.bench.launch import measure_launch
    from microbench.report.tables import launch_table
    from microbench.report.record import check_writable, environment, run_id, write_run
    from microbench.bench.sweep import require_cuda
    try:
        check_writable(Path(out))
        if tp > 1:
            from microbench.report.tp_tables import validate_tp
            validate_tp(None, tp)
    except ValueError as e:
        _usage(e if str(e).startswith("--") else ValueError(f"--out: {e}"))
    require_cuda("launch")
    if tp > 1:
        from microbench.report.tp_tables import tp_launch_main
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
@click.option("--max-bs", type=click.IntRange(1, MAX_BATCH), default=None,
              help="Largest batch for sglang and pow2 (default: --max-num-seqs).")
@click.option("--sizes", type=IntList(1, MAX_BATCH), default=None,
              help="An explicit ladder, e.g. 1,2,4,8,16 (overrides --engine).")
@click.option("--bs", type=IntList(1, 1 << 20), default=None,
              help="Batch sizes to show the padding of, e.g. 3,37,700.")
@click.option("--json", "as_json", is_flag=True)
def ladder(engine, max_num_seqs, max_num_batched_tokens, max_capture_size, no_off_stride_fix,
           max_bs, sizes, bs, as_json):
    """Print a capture ladder and what each batch size pads to (no GPU needed)."""
    from microbench.engine.dispatch import PaddingDispatcher
    from microbench.engine.ladders import pow2_capture_sizes, sglang_capture_sizes, vllm_capture_sizes
    if sizes:
        lad, what = sorted(set(sizes)), "explicit"
    elif engine == "vllm":
        lad = vllm_capture_sizes(max_num_seqs, max_num_batched_tokens, max_capture_size,
                                 off_stride_fix=not no_off_stride_fix)
        what = (f"vllm (max_num_seqs={max_num_seqs}, max_num_batched_tokens="
                f"{max_num_batched_tokens}, max_capture_size={max_capture_size}, off-stride fix "
                f"{'off' if no_off_stride_fix else 'on'})")
    else:
        m = max_bs or max_num_seqs
        lad = sglang_capture_sizes(m) if engine == "sglang" else pow2_capture_sizes(m)
        what = f"{engine} (max_bs={m})"
    disp = PaddingDispatcher(lad)
    pads = [dict(bs=b, padded=disp.pad(b), padding=disp.padding(b)) for b in (bs or ())]
    if as_json:
        click.echo(json.dumps(dict(ladder=lad, sizes=len(lad), pads=pads)))
        return
    click.echo(f"{what}: {len(lad)} sizes")
    click.echo(str(lad))
    for p in pads:
        dest = (f"pads to {p['padded']} ({p['padding']} padded rows)" if p["padded"]
                else f"runs eagerly (above the largest size {disp.max_size})")
        click.echo(f"bs {p['bs']}: {dest}")


# ---- model --------------------------------------------------------------------------------
@main.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="opt-125m", show_default=True)
@click.option("--bs", type=IntList(1, MAX_BATCH), default="1,4,16,64", show_default=True)
@click.option("--context", type=click.IntRange(1, MAX_CONTEXT), default=512, show_default=True)
@click.option("--ladder", type=Ladder(), default="vllm", show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="bfloat16",
              show_default=True)
@click.option("--profile", "profile_run", type=click.Path(), default=None,
              help="A saved sweep or launch run whose measured device profile to use.")
@click.option("--gpu", type=click.Choice(["H100", "H200", "A100", "L4", "L40S"]), default=None,
              help="Datasheet bandwidth and matrix rate of a known GPU (a prediction).")
@click.option("--copy-bw", type=click.FloatRange(1, 1e5, min_open=False), default=None,
              help="Copy bandwidth in GB/s (read + write).")
@click.option("--tflops", type=click.FloatRange(0.1, 1e5), default=None, help="Matrix rate, TFLOP/s.")
@click.option("--launch-us", type=click.FloatRange(0, 1e4), default=None,
              help="Host cost of one kernel launch, us (every launcher).")
@click.option("--below", type=click.FloatRange(1.0, 100, min_open=True), default=1.1,
              show_default=True, help="Report the batch size where the speedup falls under this.")
@click.option("--json", "as_json", is_flag=True)
def model(preset, bs, context, ladder, dtype, profile_run, gpu, copy_bw, tflops, launch_us,
          below, as_json):
    """Predict eager and graph step time and speedup (no GPU needed)."""
    from microbench.analysis.model_rows import model_rows, model_table, resolve_profile
    try:
        prof = resolve_profile(profile_run, gpu, copy_bw, tflops, launch_us, preset)
    except ValueError as e:
        _usage(e)
    fuse = 2   # workload.FUSED_ATTENTION: today's decoder
    if profile_run:
        from microbench.analysis.model_rows import run_fused
        from microbench.report.record import load_run
        fuse = run_fused(load_run(profile_run))   # the plan of the decoder that was measured
    res = model_rows(PRESETS[preset], bs, context, ladder, prof, below, dtype, fuse=fuse)
    # measured beside predicted only when the prediction is of the measured device and host:
    # with --gpu or other numbers it is a different machine, and the error would mean nothing
    if profile_run and not (gpu or copy_bw or tflops or launch_us):
        from microbench.analysis.model_rows import attach_measured
        from microbench.report.record import load_run
        res = attach_measured(res, load_run(profile_run))
    click.echo(json.dumps(res, indent=2) if as_json else model_table(res))


# ---- kernels ------------------------------------------------------------------------------
@main.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="llama-1b", show_default=True)
@click.option("--bs", type=IntList(1, 1024), default="1,16,64", show_default=True)
@click.option("--context", type=click.IntRange(1, MAX_CONTEXT), default=4096, show_default=True)
@click.option("--time-budget", type=click.FloatRange(0.01, 600), default=0.5, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
def kernels(preset, bs, context, time_budget, out):
    """Each decode kernel's bandwidth against the measured copy bandwidth (needs a CUDA GPU)."""
    from microbench.bench.kernel_bench import kernel_table, run_kernel_bench
    from microbench.report.record import check_writable, run_id, write_run
    from microbench.bench.sweep import require_cuda
    try:
        check_writable(Path(out))
    except ValueError as e:
        _usage(ValueError(f"--out: {e}"))
    require_cuda("kernels")
    run = run_kernel_bench(preset, bs, context, time_budget)
    d = write_run(Path(out) / run_id("kernels", run["env"], preset), run, csv_name="kernels.csv")
    click.echo(kernel_table(run) + f"\nsaved: {d}")


# ---- reproduce -----------------------------------------------------------------------------
class ExperimentName(click.ParamType):
    name = "NAME"

    def convert(self, value, param, ctx):
        from microbench.bench.phenomena import NAMES
        if value in NAMES:
            return value
        self.fail(f"unknown experiment {value!r}; choose from {', '.join(NAMES)}", param, ctx)


@main.command()
@click.argument("names", nargs=-1, type=ExperimentName(), metavar="[NAMES]...")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="opt-125m", show_default=True)
@click.option("--bs", type=IntList(1, MAX_BATCH), default="1,4,16,64", show_default=True,
              help="Batch sizes of speedup-fade, capture-cost and piecewise-vs-full.")
@click.option("--context", type=click.IntRange(1, MAX_CONTEXT), default=512, show_default=True,
              help=f"KV length each step attends to, 1..{MAX_CONTEXT} (off-stride uses 128).")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="bfloat16", show_default=True)
@click.option("--time-budget", type=click.FloatRange(0.01, 600), default=0.5, show_default=True,
              help="Seconds per measured step time at most (at least 10 samples are taken).")
@click.option("--steps", type=click.IntRange(1, 10000), default=5, show_default=True,
              help="Decode steps per timing sample.")
@click.option("--memory-budget", type=click.FloatRange(0.001, 1e5), default=None,
              help="GiB for memory-headroom (default: free memory after the decoder's weights "
                   "and KV cache).")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Folder the run is written into (as <out>/<run-id>/).")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output; only the verdicts (or JSON).")
def reproduce(names, preset, bs, context, dtype, time_budget, steps, memory_budget, out, as_json,
              quiet):
    """Reproduce published CUDA-graph phenomena (all eight, or those NAMED) and write a report
    (needs a CUDA GPU). Names: speedup-fade, ladder-collapse, off-stride, padding-waste,
    pool-growth, capture-cost, piecewise-vs-full, memory-headroom."""
    import time

    from microbench.bench.phenomena import NAMES, ReproduceConfig, run_reproduce, save_run
    from microbench.report.plots import entry_lines, render_report
    from microbench.report.record import check_writable, run_id
    from microbench.bench.sweep import require_cuda
    t0 = time.perf_counter()
    loud = not (quiet or as_json)
    cfg = ReproduceConfig(names=tuple(dict.fromkeys(names)) or NAMES, preset=preset, bs=bs,
                          context=context, dtype=dtype, steps=steps, time_budget=time_budget,
                          memory_budget_gib=memory_budget, out=out, progress=loud)
    try:
        cfg.validate()
        check_writable(Path(out))
    except ValueError as e:
        _usage(e if str(e).startswith(("--", "NAMES")) else ValueError(f"--out: {e}"))
    require_cuda("reproduce")
    say = (lambda s: click.echo(s, err=True)) if loud else None
    where = {}

    def save(run):
        if "dir" not in where:
            where["dir"] = Path(out) / run_id("reproduce", run["env"], preset)
        save_run(where["dir"], run)

    show = None if as_json else (lambda e: click.echo(entry_lines(e)))
    run = run_reproduce(cfg, on_progress=say, on_entry=show, on_run=save)
    report = render_report(run, where["dir"])
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
    else:
        click.echo(f"report: {report}")
        click.echo(f"total: {time.perf_counter() - t0:.1f} s")
    if run.get("interrupted"):
        return 130
    return 1 if any(e.get("error") for e in run["phenomena"]) else 0


# ---- show ----------------------------------------------------------------------------------
@main.command()
@click.argument("run", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def show(run, as_json):
    """Print a saved run's table (no GPU needed)."""
    from microbench.report.record import load_run
    try:
        data = load_run(run)
    except ValueError as e:
        _usage(ValueError(f"RUN: {e}"))
    try:
        text = _render_run(data, as_json)
    except (KeyError, TypeError, IndexError) as e:
        _usage(ValueError(f"RUN: {run} is incomplete (missing {e}); it cannot be shown"))
    click.echo(text)


def _render_run(data: dict, as_json: bool) -> str:
    from microbench.report.tables import launch_table, sweep_table
    if as_json:
        return json.dumps(data, indent=2)
    if data.get("kind") == "launch":
        return launch_table(data["launch"])
    if data.get("kind") == "reproduce":
        from microbench.report.plots import entry_lines
        return "\n\n".join(entry_lines(e) for e in data.get("phenomena", []))
    if data.get("kind") == "kernels":
        from microbench.bench.kernel_bench import kernel_table
        return kernel_table(data)
    if data.get("kind") in ("sweep-tp", "launch-tp"):
        from microbench.report.tp_tables import render_tp_run
        return render_tp_run(data)
    return sweep_table(data)


if __name__ == "__main__":
    main()
