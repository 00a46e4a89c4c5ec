"""What `microbench sweep --tp N` and `microbench launch --tp N` need: validation before any
process starts, the calls, and the tables of saved TP runs (kinds "sweep-tp", "launch-tp").

Also runnable alone, for a tree whose `microbench` command lacks --tp:
    python3 -m microbench.report.tp_tables sweep --tp 2 --preset llama-1b --bs 1,4,16,64
    python3 -m microbench.report.tp_tables launch --tp 2
    torchrun --nproc-per-node 2 -m microbench.report.tp_tables sweep --tp 2 ...
"""
from __future__ import annotations

import json

from microbench.report.tables import fmt_bytes, table


def _f(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def validate_tp(preset: str | None, tp: int, n_gpus: int | None = -1) -> None:
    """ValueError('--tp: ...', one line) before any process group starts: tp must divide the
    preset's heads, KV heads and FFN (preset None: no shape check), must not exceed the GPUs
    present (n_gpus; -1: ask torch; None, or no GPU at all: skip, the command's own GPU check
    speaks), and must equal WORLD_SIZE under torchrun."""
    from microbench.engine.shapes import ModelShape
    from microbench.bench.tp import check_tp, torchrun_rank
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
    from microbench.bench.sweep import SweepConfig
    from microbench.bench.tp import run_tp_sweep
    cfg = SweepConfig(**cfg_kwargs)
    run, where = run_tp_sweep(cfg, tp, compare_tp1=compare_tp1, progress=not (quiet or as_json))
    if run is None:
        return None, 0
    if as_json:
        text = json.dumps(run, indent=2, default=str)
    else:
        text = tp_sweep_table(run) + ("" if quiet else f"\nsaved: {where}")
    return text, 130 if run.get("interrupted") else 0


def tp_launch_main(tp: int, time_budget: float = 0.3, out: str = "results",
                   as_json: bool = False) -> tuple[str | None, int]:
    """The all-reduce benchmark on tp GPUs; returns (text to print, exit code)."""
    from microbench.bench.tp import run_allreduce_bench
    run, where = run_allreduce_bench(tp, time_budget=time_budget, out=out, progress=not as_json)
    if run is None:
        return None, 0
    text = json.dumps(run, indent=2, default=str) if as_json else (
        allreduce_table(run["allreduce"]) + f"\nsaved: {where}")
    return text, 0


def render_tp_run(run: dict) -> str:
    """The table of a saved TP run, for `microbench show`."""
    if run.get("kind") == "launch-tp":
        return allreduce_table(run["allreduce"])
    return tp_sweep_table(run)


# ---- tables --------------------------------------------------------------------------------
def allreduce_table(bench: dict) -> str:
    rows = [[fmt_bytes(p["bytes"]), _f(p["eager_us"], ".2f"), _f(p["graph_us"], ".2f"),
             _f(p["algbw"] / 1e9), _f(p["busbw"] / 1e9)] for p in bench["points"]]
    out = [f"all-reduce (sum, {bench['dtype']}) on {bench['world']} ranks: time per collective, "
           f"{bench['k']} back to back (eager) or in one graph (graph)",
           table(["size", "eager us", "graph us", "algbw GB/s", "busbw GB/s"], rows)]
    fit = bench.get("fit")
    if fit:
        bw = f"{fit['bus_bw'] / 1e9:.1f} GB/s" if fit.get("bus_bw") else "none resolved"
        out.append(f"fit (graph): {fit['latency_us']:.2f} us + bus bytes / {bw} "
                   f"(bus bytes = 2(n-1)/n x size)")
    if bench.get("host_us") is not None:
        out.append(f"host time to enqueue one all-reduce: {bench['host_us']:.1f} us")
    return "\n".join(out)


def tp_sweep_header(run: dict) -> str:
    from microbench.report.tables import ladder_desc
    c, env = run["config"], run.get("env", {})
    lad = ladder_desc(run)
    return (f"{c['tp']} x {env.get('gpu')} | preset {c['preset']} at TP {c['tp']} | {c['dtype']} | "
            f"mode {c['mode']} | ladder {lad} | context {c['context']} | NCCL {env.get('nccl')} | "
            f"torch {env.get('torch')} triton {env.get('triton')}")


def tp_sweep_table(run: dict) -> str:
    heads = ["bs", "pad", "eager us", "graph us", "speedup", "pred", "AR eager", "AR graph",
             "pred AR", "TP1 eager", "TP1 graph", "TP1/TP graph"]
    rows = []
    for r in run.get("rows", []):
        rows.append([str(r["bs"]), _f(r.get("padded_bs"), "d"), _f(r.get("eager_step_us")),
                     _f(r.get("graph_step_us")), _f(r.get("speedup"), ".2f"),
                     _f(r.get("predicted_speedup"), ".2f"),
                     _f(r.get("allreduce_share_eager"), ".0%"),
                     _f(r.get("allreduce_share_graph"), ".0%"),
                     _f(r.get("predicted_allreduce_share_graph"), ".0%"),
                     _f(r.get("tp1_eager_step_us")), _f(r.get("tp1_graph_step_us")),
                     _f(r.get("tp_gain_graph"), ".2f")])
    out = [tp_sweep_header(run), table(heads, rows), tp_sweep_footer(run)]
    return "\n".join(o for o in out if o)


def tp_sweep_footer(run: dict) -> str:
    lines = ["AR: share of the step in all-reduce, 2 per layer timed alone (eager: each at the "
             "longer of its host enqueue and its time back to back at [bs, hidden]; graph: a "
             "graph of them at [pad, hidden]); pred AR: the model's"]
    caps, pools = run.get("capture_s_per_rank"), run.get("pool_bytes_per_rank")
    if caps:
        lines.append("capture per rank: " + ", ".join(f"{c:.2f} s" for c in caps)
                     + " | pool per rank: " + ", ".join(fmt_bytes(p) for p in pools))
    t1 = run.get("tp1") or {}
    if t1.get("skipped"):
        lines.append(f"TP 1: skipped ({t1['skipped']})")
    elif t1:
        lines.append(f"TP 1 on rank 0 alone: capture {t1['capture_s']:.2f} s for {t1['sizes']} "
                     f"sizes, pool {fmt_bytes(t1['pool_bytes'])}")
    ar = run.get("allreduce") or {}
    fit = ar.get("fit")
    if fit:
        bw = f"{fit['bus_bw'] / 1e9:.1f} GB/s" if fit.get("bus_bw") else "none resolved"
        lines.append(f"all-reduce model: {fit['latency_us']:.2f} us + bus bytes / {bw}; "
                     f"host enqueue {fit['host_us']:.1f} us")
    spread = [r["eager_step_us_max_rank"] / r["eager_step_us"] - 1 for r in run.get("rows", [])
              if r.get("eager_step_us_max_rank")]
    if spread:
        lines.append(f"slowest rank's eager median above rank 0's by at most {max(spread):.1%}")
    diffs = [r["max_abs_diff"] for r in run.get("rows", []) if r.get("max_abs_diff") is not None]
    if diffs:
        lines.append(f"graph against eager logits: max abs diff {max(diffs):.3g}")
    errs = [abs(r["speedup_error"]) for r in run.get("rows", []) if r.get("speedup_error") is not None]
    if errs:
        lines.append(f"model: worst speedup error {max(errs):.1%}")
    if run.get("interrupted"):
        lines.append("interrupted: rows above were measured before Ctrl-C")
    if run.get("wall_s"):
        lines.append(f"run took {run['wall_s']:.1f} s")
    return "\n".join(lines)


# ---- standalone entry ----------------------------------------------------------------------
def _main():
    import sys

    import click

    from microbench.engine.shapes import PRESETS

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
    @click.option("--out", default="results", show_default=True)
    @click.option("--no-tp1", is_flag=True, help="Skip the TP-1 comparison on rank 0.")
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--quiet", is_flag=True)
    def sweep(tp, preset, bs, ladder, mode, context, steps, time_budget, out, no_tp1, as_json,
              quiet):
        from microbench.engine.ladders import parse_int_list
        kw = dict(bs=tuple(parse_int_list(bs, "bs")), preset=preset, ladder=ladder, mode=mode,
                  context=context, steps=steps, time_budget=time_budget, out=out)
        _finish(*tp_sweep_main(kw, tp, not no_tp1, as_json, quiet))

    @cli.command()
    @click.option("--tp", type=click.IntRange(2, 64), default=2, show_default=True)
    @click.option("--time-budget", type=float, default=0.3, show_default=True)
    @click.option("--out", default="results", show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def launch(tp, time_budget, out, as_json):
        _finish(*tp_launch_main(tp, time_budget, out, as_json))

    def _finish(text, code):
        if text:
            click.echo(text)
        sys.exit(code)

    from microbench.bench.sweep import GPURequired
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
    _main()
