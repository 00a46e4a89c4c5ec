"""The tables of saved TP runs (kinds "sweep-tp", "launch-tp"). Running them is
microbench.cli_tp's.
"""
from __future__ import annotations

from microbench.report.formats import Doc, Table, render
from microbench.report.tables import (closing_lines, fmt_bytes, own_rows, repeat_lines,
                                      shape_lines, speedup_cells, unstable_lines)


def _f(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def launch_tp_doc(run: dict) -> Doc:
    """The all-reduce benchmark's tables, one per path it timed (older runs: one)."""
    return Doc([part for b in run.get("allreduce_paths") or [run["allreduce"]]
                for part in allreduce_doc(b).blocks])


def launch_tp_table(run: dict) -> str:
    return render(launch_tp_doc(run))


# ---- tables --------------------------------------------------------------------------------
def allreduce_table(bench: dict) -> str:
    return render(allreduce_doc(bench))


def allreduce_doc(bench: dict) -> Doc:
    rows = [[fmt_bytes(p["bytes"]), _f(p["eager_us"], ".2f"), _f(p["graph_us"], ".2f"),
             _f(p["algbw"] / 1e9), _f(p["busbw"] / 1e9)] for p in bench["points"]]
    out = [Table(["size", "eager us", "graph us", "algbw GB/s", "busbw GB/s"], rows,
                 records=bench["points"],
                 title=f"all-reduce (sum, {bench['dtype']}"
                       + (f", {bench['path']}" if bench.get("path") else "")
                       + f") on {bench['world']} ranks: time per collective, {bench['k']} back "
                       f"to back (eager) or in one graph (graph)")]
    fit = bench.get("fit")
    if fit:
        bw = f"{fit['bus_bw'] / 1e9:.1f} GB/s" if fit.get("bus_bw") else "none resolved"
        out.append(f"fit (graph): {fit['latency_us']:.2f} us + bus bytes / {bw} "
                   f"(bus bytes = 2(n-1)/n x size)")
    if bench.get("host_us") is not None:
        out.append(f"host time to enqueue one all-reduce: {bench['host_us']:.1f} us")
    return Doc(out)


def tp_sweep_header(run: dict) -> str:
    from microbench.report.tables import ladder_desc
    c, env = run["config"], run.get("env", {})
    lad = ladder_desc(run)
    path = (run.get("decoder") or {}).get("all_reduce")
    return (f"{c['tp']} x {env.get('gpu')} | preset {c['preset']} at TP {c['tp']} | {c['dtype']} | "
            f"mode {c['mode']} | ladder {lad} | context {c['context']} | NCCL {env.get('nccl')}"
            + (f" | all-reduce: {path}" if path else "")
            + f" | torch {env.get('torch')} triton {env.get('triton')}")


def tp_sweep_table(run: dict) -> str:
    return render(tp_sweep_doc(run))


def tp_sweep_doc(run: dict) -> Doc:
    repeats = bool(run.get("repeats"))
    heads = ["bs", "pad", "eager us", "graph us", "speedup", "95% CI",
             *(["repeat spread (CI)"] if repeats else []), "pred", "AR eager", "AR graph",
             "pred AR", "TP1 eager", "TP1 graph", "TP1/TP graph"]
    rows = []
    for r in run.get("rows", []):
        rows.append([str(r["bs"]), _f(r.get("padded_bs"), "d"), _f(r.get("eager_step_us")),
                     _f(r.get("graph_step_us")), *speedup_cells(r, repeats),
                     _f(r.get("predicted_speedup"), ".2f"),
                     _f(r.get("allreduce_share_eager"), ".0%"),
                     _f(r.get("allreduce_share_graph"), ".0%"),
                     _f(r.get("predicted_allreduce_share_graph"), ".0%"),
                     _f(r.get("tp1_eager_step_us")), _f(r.get("tp1_graph_step_us")),
                     _f(r.get("tp_gain_graph"), ".2f")])
    return Doc([Table(heads, rows, title=tp_sweep_header(run), records=run.get("rows", [])),
                tp_sweep_footer(run)])


def tp_sweep_footer(run: dict) -> str:
    lines = ["AR: share of the step in all-reduce, 2 per layer timed alone (eager: each at the "
             "longer of its host enqueue and its time back to back at [bs, hidden]; graph: a "
             "graph of them at [pad, hidden]); pred AR: the model's"]
    lines += unstable_lines(run) + repeat_lines(run)
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
    # under --repeat the lines below are the first kept process's, measured beside its own rows
    own = own_rows(run)
    ar = run.get("allreduce") or {}
    fit = ar.get("fit")
    if fit:
        bw = f"{fit['bus_bw'] / 1e9:.1f} GB/s" if fit.get("bus_bw") else "none resolved"
        lines.append(f"all-reduce model: {fit['latency_us']:.2f} us + bus bytes / {bw}; "
                     f"host enqueue {fit['host_us']:.1f} us")
    # the rank the model priced (the slowest host), else rank 0's own figure
    host = [(r["bs"], (r.get("eager_host_us_per_rank") or [])[r["host_rank"]]
             if r.get("host_rank") is not None else r["eager_host_us"],
             r.get("op_host_us", {}).get("all_reduce"))
            for r in own if r.get("eager_host_us")]
    if host:
        lines.append("eager host time per step on the slowest rank, sampled beside the row's "
                     "steps (one all-reduce's enqueue in place): " + "; ".join(
                         f"bs {b} {h:.0f} us" + (f" ({a:.1f} us)" if a else "") for b, h, a in host))
    spread = [r["eager_step_us_max_rank"] / r["eager_step_us"] - 1 for r in own
              if r.get("eager_step_us_max_rank")]
    if spread:
        lines.append(f"slowest rank's eager median above rank 0's by at most {max(spread):.1%}")
    diffs = [r["max_abs_diff"] for r in own if r.get("max_abs_diff") is not None]
    if diffs:
        lines.append(f"graph against eager logits: max abs diff {max(diffs):.3g}")
    return "\n".join(lines + shape_lines(run) + closing_lines(run))
