"""The documents of generate and serve runs (formats.Doc: a table with its header line, then
footer lines), from the run dict, live or loaded; printed in any of formats.FORMATS."""
from __future__ import annotations

from microbench.report.formats import Doc, Table, render
from microbench.report.tables import capture_line


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _ci(ci) -> str:
    return f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-"


def _header(run: dict, what: str) -> str:
    c, env = run["config"], run.get("env", {})
    lad = run.get("ladder") or []
    ladder = f"{c['ladder']} ({len(lad)} sizes, max {lad[-1]})" if lad else "none"
    return (f"GPU {env.get('gpu')} | preset {c['preset']} | {c['dtype']} | mode {c['mode']} | "
            f"ladder {ladder} | {what} | torch {env.get('torch')} triton {env.get('triton')}")


def _capture_line(name: str, cap: dict | None) -> str | None:
    if not cap or not cap.get("sizes"):
        return None
    return name + capture_line(cap)


def _footer(run: dict, lines: list[str]) -> list[str]:
    if run.get("eager_bound") is not None:
        lines.append("eager: " + ("bound steps (checks, outputs and launch binding done once)"
                                  if run["eager_bound"] else "the decoder's own step"))
    if run.get("interrupted"):
        lines.append("interrupted: rows above were measured before Ctrl-C")
    if run.get("wall_s"):
        lines.append(f"run took {run['wall_s']:.1f} s")
    return lines


def generate_table(run: dict) -> str:
    return render(generate_doc(run))


def serve_table(run: dict) -> str:
    return render(serve_doc(run))


def generate_doc(run: dict) -> Doc:
    """One row per batch size: decode latency of a generation, tokens per second, step time
    eager and graphed, and the paired speedup."""
    c = run["config"]
    prefill = {"fill": "cache filled", "steps": "token by token, eager"}.get(c.get("prefill"),
                                                                           c.get("prefill"))
    what = (f"prompt {c['input_len']} ({prefill}) + {c['output_len']} decode steps, "
            f"{c.get('repeats')} repeats")
    heads = ["bs", "pad", "ran as", "eager ms", "graph ms", "speedup", "95% CI",
             "eager tok/s", "graph tok/s", "eager step us", "graph step us", "first-last us"]
    rows = []
    for r in run["rows"]:
        g = r.get("graph_step_us") is not None
        p = "graph_" if g else "eager_"
        rows.append([
            str(r["bs"]), fmt(r.get("padded_bs"), "d"), r["ran_as"],
            fmt(r["eager_latency_ms"], ".2f"), fmt(r.get("graph_latency_ms"), ".2f"),
            fmt(r.get("speedup"), ".2f"),
            _ci(r.get("speedup_ci")),
            fmt(r["eager_tok_s"], ".0f"), fmt(r.get("graph_tok_s"), ".0f"),
            fmt(r["eager_step_us"]), fmt(r.get("graph_step_us")),
            f"{fmt(r.get(p + 'first_step_us'), '.0f')}-{fmt(r.get(p + 'last_step_us'), '.0f')}"])
    lines = [Table(heads, rows, title=_header(run, what), records=run["rows"]),
             "latency: one generation's decode steps (ms, median over repeats), the prompt's "
             "prefill not included; tok/s = bs x steps / latency; first-last: the first and last "
             "step (shortest and longest context), graph's where it ran"]
    pre = [f"bs {r['bs']} {r['prefill_ms']:.1f} ms" for r in run["rows"]
           if r.get("prefill_ms") is not None]
    if pre:
        lines.append("prefill (prompt token by token, eager; not in the latency): " + ", ".join(pre))
    match = [r for r in run["rows"] if r.get("tokens_match") is not None and r["tokens_match"] < 1]
    if match:
        lines.append("greedy tokens, graph against eager (a logit's rounding can flip an argmax "
                     "and the sequence diverges): " + ", ".join(
                         f"bs {r['bs']} {r['tokens_match']:.0%} equal" for r in match))
    cap = _capture_line("", run.get("capture"))
    return Doc(_footer(run, lines + ([cap] if cap else [])))


def serve_doc(run: dict) -> Doc:
    """One row per arm over the whole trace: tokens per second, padding in rows and in time,
    fallbacks, and the trace time against exact-size capture and against eager."""
    c, t = run["config"], run["trace"]
    src = (f"batch sizes from {c['trace_file']}" if c.get("trace_file") else
           f"Poisson trace (rate {c.get('arrival_rate')}/step, output {c.get('output_len')}, "
           f"max_num_seqs {c.get('max_num_seqs') or t['max_bs']}, seed {c.get('seed')})")
    what = (f"{src}: {t['steps']} steps, bs {t['min_bs']}..{t['max_bs']} (median "
            f"{fmt(t.get('median_bs'), 'g')}), {t['tokens']} tokens | context {c['context']}")
    heads = ["arm", "sizes", "time s", "tok/s", "step us", "graphed", "fell back", "pad rows",
             "pad time", "fallback s", "vs exact", "vs eager", "95% CI"]
    rows = []
    for r in run["rows"]:
        rows.append([
            r["arm"], fmt(r.get("captured_sizes"), "d"), fmt(r["time_s"], ".3f"),
            fmt(r["tok_s"], ".0f"), fmt(r["step_us"]), fmt(r.get("graphed_steps"), "d"),
            fmt(r.get("fallback_steps"), "d"),
            f"{fmt(r.get('padded_rows'), 'd')} ({fmt(r.get('padding_waste_rows'), '.1%')})",
            f"{fmt(r.get('padding_time_s'), '.3f')} ({fmt(r.get('padding_waste_time'), '.1%')})",
            fmt(r.get("fallback_time_s"), ".3f"), fmt(r.get("time_vs_exact"), ".3f"),
            fmt(r.get("speedup_vs_eager"), ".2f"), _ci(r.get("speedup_vs_eager_ci"))])
    lines = [Table(heads, rows, title=_header(run, what), records=run["rows"], left=1),
             "time: the whole trace (median over repeats); pad rows: padded rows (share of rows "
             "computed); pad time and fallback s: seconds over exact capture's median step at "
             "the same batch size (share of the arm's time); vs exact: trace time / exact's; "
             "vs eager: eager's trace time / this arm's"]
    for name in ("graph", "exact"):
        cap = _capture_line(f"{name} ", (run.get("capture") or {}).get(name))
        if cap:
            lines.append(cap)
    return Doc(_footer(run, lines))


def generate_headline(run: dict) -> str:
    """The index's line: the paired speedup and graphed tokens per second at the smallest batch."""
    rows = sorted((r for r in run.get("rows") or [] if isinstance(r.get("bs"), int)),
                  key=lambda r: r["bs"])
    if not rows:
        return "no rows"
    r = rows[0]
    if r.get("speedup") is None:
        return f"eager only: {fmt(r.get('eager_tok_s'), '.0f')} tok/s at bs {r['bs']}"
    return (f"generation {r['speedup']:.2f}x at bs {r['bs']} "
            f"({fmt(r.get('graph_tok_s'), '.0f')} tok/s graphed)")


def serve_headline(run: dict) -> str:
    """The index's line: the graph arm against exact capture and eager, and its fallbacks."""
    rows = {r.get("arm"): r for r in run.get("rows") or []}
    g = rows.get("graph")
    if g is None:
        return f"eager only: {fmt((rows.get('eager') or {}).get('tok_s'), '.0f')} tok/s"
    parts = [f"graph {fmt(g.get('speedup_vs_eager'), '.2f')}x eager"]
    if g.get("time_vs_exact") is not None:
        parts.append(f"{g['time_vs_exact']:.3f}x exact's time")
    n = g.get("fallback_steps") or 0
    parts.append(f"{n} step{'s' if n != 1 else ''} fell back")
    return ", ".join(parts)
