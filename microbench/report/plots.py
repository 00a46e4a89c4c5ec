"""The `reproduce` report: report.md and its PNG plots, rendered from a saved run dict (as
loaded from run.json), never from live objects.

Plots need matplotlib (the `plot` extra). It is imported only inside `_figure_class()`, and
figures are drawn through `matplotlib.figure.Figure`, not pyplot, so no global backend state is
touched. Without matplotlib the report says the plots were skipped.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from microbench.report.tables import fmt_bytes

MiB = 1 << 20

# Per experiment: (header, row key, format). "bytes" formats with fmt_bytes; "" is str().
COLUMNS = {
    "speedup-fade": [("bs", "bs", "d"), ("eager us", "eager_step_us", ".1f"),
                     ("graph us", "graph_step_us", ".1f"), ("speedup", "speedup", ".2f"),
                     ("predicted", "predicted_speedup", ".2f"),
                     ("engine-eager us", "engine_eager_step_us", ".1f"),
                     ("engine-eager speedup", "engine_eager_speedup", ".2f"),
                     ("eager tok/s", "eager_tok_s", ".0f"), ("graph tok/s", "graph_tok_s", ".0f"),
                     ("graph logits vs eager", "max_abs_diff", ".3g")],
    "ladder-collapse": [("arm", "arm", ""), ("captured", "capture_sizes", ""), ("bs", "bs", "d"),
                        ("ran as", "ran_as", ""), ("graph size", "padded_bs", "d"),
                        ("step us", "step_us", ".1f"), ("p20", "p20", ".1f"), ("p80", "p80", ".1f"),
                        ("tok/s", "tok_s", ".0f"), ("tok/s per seq", "tok_s_per_seq", ".0f")],
    "off-stride": [("arm", "arm", ""), ("ladder max", "ladder_max", "d"), ("bs", "bs", "d"),
                   ("ran as", "ran_as", ""), ("graph size", "padded_bs", "d"),
                   ("step us", "step_us", ".1f"), ("p20", "p20", ".1f"), ("p80", "p80", ".1f"),
                   ("tok/s", "tok_s", ".0f")],
    "padding-waste": [("arm", "arm", ""), ("bs", "bs", "d"), ("graph size", "padded_bs", "d"),
                      ("padded rows", "padded_rows", "d"), ("step us", "step_us", ".1f"),
                      ("p20", "p20", ".1f"), ("p80", "p80", ".1f"), ("tok/s", "tok_s", ".0f"),
                      ("vs exact us", "extra_us", "+.1f"), ("vs exact", "extra_pct", "+.1%"),
                      ("paired / exact", "vs_exact", ".3f"), ("95% CI", "vs_exact_ci", "ci"),
                      ("logits vs eager", "max_abs_diff", ".3g"),
                      ("us per padded row", "us_per_padded_row", ".2f")],
    "pool-growth": [("arm", "arm", ""), ("sizes", "n_sizes", "d"), ("largest", "largest_size", "d"),
                    ("pool", "pool_bytes", "bytes"), ("MiB per size", "mib_per_size", ".1f")],
    "capture-cost": [("bs", "bs", "d"), ("graph size", "padded_bs", "d"),
                     ("its capture s", "size_capture_s", ".3f"), ("eager us", "eager_step_us", ".1f"),
                     ("graph us", "graph_step_us", ".1f"), ("saved us", "saved_us", ".1f"),
                     ("break-even steps", "break_even_steps", ".0f"),
                     ("ladder capture s", "ladder_capture_s", ".2f"),
                     ("ladder break-even steps", "ladder_break_even_steps", ".0f")],
    "piecewise-vs-full": [("bs", "bs", "d"), ("eager us", "eager_step_us", ".1f"),
                          ("full us", "full_step_us", ".1f"),
                          ("piecewise us", "piecewise_step_us", ".1f"),
                          ("piecewise / full", "piecewise_over_full", ".2f"),
                          ("us per layer's attention", "attention_us_per_layer", ".1f")],
    "memory-headroom": [("sizes", "n_sizes", "d"), ("largest", "largest_size", "d"),
                        ("pool", "pool_bytes", "bytes"), ("KV tokens left", "kv_tokens", "d"),
                        ("tokens lost", "tokens_lost", "d"), ("share lost", "share_lost", ".2%")],
}
SIZE_COLUMNS = [("size", "size", "d"), ("warm-up ms", "warmup_ms", ".1f"),
                ("capture ms", "capture_ms", ".1f"), ("pool growth", "pool_bytes", "bytes")]


def verdict_word(entry: dict) -> str:
    if entry.get("error"):
        return "ERROR"
    return "HELD" if entry.get("held") else "NOT HELD"


def entry_lines(entry: dict) -> str:
    """What the terminal shows for one experiment."""
    out = [f"{entry['name']}: {verdict_word(entry)}", f"  expected: {entry['expected']}",
           f"  measured: {entry['measured']}"]
    if not entry.get("held"):
        out.append(f"  why: {entry.get('why')}")
    return "\n".join(out)


def _fmt(v, spec: str) -> str:
    if v is None:
        return "-"
    if spec == "bytes":
        return fmt_bytes(v)
    if spec == "d":
        return f"{int(v)}"
    if spec == "ci":     # an interval [lo, hi]
        return f"{v[0]:.3f}-{v[1]:.3f}"
    return format(v, spec) if spec else str(v)


def md_table(rows: list[dict], cols: list[tuple] | None = None) -> str:
    """A Markdown table of rows; cols default to every key of the rows, in order."""
    if not rows:
        return "(no rows)"
    if cols is None:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        cols = [(k, k, ".4g" if isinstance(rows[0].get(k), float) else "") for k in keys]
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |",
             "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(_fmt(r.get(k), f) for _, k, f in cols) + " |" for r in rows]
    return "\n".join(lines)


# ---- plots ---------------------------------------------------------------------------------
def _figure_class():
    """matplotlib's Figure, or None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _plain_log_y(ax):
    """Log y axis labelled 1, 2, 5, 10, 20, ... instead of powers of ten."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_speedup(entry, ax):
    rows = sorted(entry["rows"], key=lambda r: r["bs"])
    bs = [r["bs"] for r in rows]
    ax.plot(bs, [r["speedup"] for r in rows], "o-", label="eager / graph (the graphs alone)")
    pred = [(r["bs"], r["predicted_speedup"]) for r in rows if r.get("predicted_speedup")]
    if pred:
        ax.plot(*zip(*pred), "--", label="model")
    bundle = [(r["bs"], r["engine_eager_speedup"]) for r in rows if r.get("engine_eager_speedup")]
    if bundle:
        ax.plot(*zip(*bundle), "s-", label="engine-eager / graph (the bundle)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xscale="log", xlabel="batch size", ylabel="speedup over the full graph",
           title="Graph speedup against batch size")
    ax.set_xticks(bs, [str(b) for b in bs])


def plot_pool(entry, ax):
    arms = list(dict.fromkeys(r["arm"] for r in entry["rows"]))
    for arm in arms:
        rs = sorted((r for r in entry["rows"] if r["arm"] == arm), key=lambda r: r["n_sizes"])
        ax.plot([r["n_sizes"] for r in rs], [r["pool_bytes"] / MiB for r in rs], "o-", label=arm)
    d = entry.get("derived") or {}
    if "bytes_per_size" in d:
        ns = sorted({r["n_sizes"] for r in entry["rows"]})
        ax.plot(ns, [(d["fixed_bytes"] + d["bytes_per_size"] * n) / MiB for n in ns], ":",
                color="grey", label=f"fit: {d['bytes_per_size'] / MiB:.1f} MiB per size")
    ax.set(xlabel="captured sizes (first n of vLLM's ladder)", ylabel="pool (MiB)",
           title="Graph pool against captured sizes")


def plot_modes(entry, ax):
    rows = sorted(entry["rows"], key=lambda r: r["bs"])
    bs = [r["bs"] for r in rows]
    for mode in ("eager", "piecewise", "full"):
        ax.plot(bs, [r[f"{mode}_step_us"] for r in rows], "o-", label=mode)
    ax.set(xscale="log", xlabel="batch size", ylabel="step time (us)", title="Step time per mode")
    _plain_log_y(ax)
    ax.set_xticks(bs, [str(b) for b in bs])


def plot_capture(entry, ax):
    sizes = sorted(entry["info"]["sizes"], key=lambda s: s["size"])
    x = [s["size"] for s in sizes]
    ax.plot(x, [s["warmup_s"] * 1e3 for s in sizes], "o", ms=3, label="eager warm-up")
    ax.plot(x, [s["capture_s"] * 1e3 for s in sizes], "s", ms=3, label="capture")
    ax.set(xlabel="captured size", ylabel="ms", title="Time per captured size")
    _plain_log_y(ax)


PLOTS = {"speedup-fade": plot_speedup, "pool-growth": plot_pool,
         "piecewise-vs-full": plot_modes, "capture-cost": plot_capture}


def draw(entry: dict, out_dir: Path, Figure) -> str | None:
    """Draw the entry's plot into out_dir/<name>.png; returns the file name, or None when the
    experiment has no plot or failed."""
    fn = PLOTS.get(entry["name"])
    if fn is None or entry.get("error") or not entry.get("rows"):
        return None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    fn(entry, ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    name = f"{entry['name']}.png"
    _save(fig, Path(out_dir) / name)
    return name


# ---- the report ----------------------------------------------------------------------------
def _header(run: dict) -> list[str]:
    c, env, mem = run.get("config", {}), run.get("env", {}), run.get("memory", {})
    out = ["# Published CUDA-graph phenomena, reproduced on the toy decoder", "",
           f"GPU {env.get('gpu')} (driver {env.get('driver')}) | preset {c.get('preset')} | "
           f"{c.get('dtype')} | context {c.get('context')} | steps per sample {c.get('steps')} | "
           f"time budget {c.get('time_budget')} s | torch {env.get('torch')} | triton "
           f"{env.get('triton')} | git {env.get('git')} | {env.get('date')}", ""]
    if env.get("command"):
        out += [f"Command: `{env['command']}`", ""]
    if mem:
        out += [f"Memory: {fmt_bytes(mem.get('total_bytes'))} on the GPU; the shared decoder "
                f"(max batch {mem.get('max_batch')}) holds {fmt_bytes(mem.get('weight_bytes'))} "
                f"of weights and {fmt_bytes(mem.get('kv_cache_bytes'))} of KV cache; "
                f"{fmt_bytes(mem.get('free_after_decoder_bytes'))} free after it.", ""]
    out += ["Step times are wall medians of synchronised decode steps (p20 and p80 beside them); "
            "each (execution, graph size, batch) is timed once per run and shared by the "
            "experiments that need it.", ""]
    if run.get("wall_s") is not None:
        out += [f"All experiments took {run['wall_s']:.1f} s."
                + (" Interrupted: only the experiments below were run." if run.get("interrupted") else ""), ""]
    return out


def _section(e: dict, plot: str | None) -> list[str]:
    word = verdict_word(e)
    out = [f"## {e['name']}: {word}", "", f"**Expected.** {e['expected']}", "",
           f"**Where the figure comes from.** {e.get('source', '-')}", "",
           f"**Method.** {e.get('method', '-')}", ""]
    if e.get("error"):
        return out + ["**The experiment failed**, so nothing was judged:", "", "```",
                      e["error"].rstrip(), "```", ""]
    out += [f"**Measured.** {e['measured']}", "", md_table(e.get("rows", []), COLUMNS.get(e["name"])), ""]
    if plot:
        out += [f"![{e['name']}]({plot})", ""]
    if e["name"] == "capture-cost" and e.get("info", {}).get("sizes"):
        sizes = [dict(s, warmup_ms=s["warmup_s"] * 1e3, capture_ms=s["capture_s"] * 1e3)
                 for s in sorted(e["info"]["sizes"], key=lambda s: s["size"])]
        out += ["<details><summary>Every captured size</summary>", "",
                md_table(sizes, SIZE_COLUMNS), "", "</details>", ""]
    if e["held"]:
        out.append("**Verdict: HELD.** Every check passed.")
    else:
        out.append(f"**Verdict: NOT HELD.** {e['why']}. The phenomenon did not reproduce on the "
                   f"toy decoder as stated; the measurements above and the notes below say how far.")
    out.append("")
    out += [f"- {n}" for n in e.get("notes", [])]
    return out + [""]


def render_report(run: dict, out_dir) -> Path:
    """Write out_dir/report.md (and a PNG per plotted experiment) from a saved run dict;
    returns the report's path."""
    from microbench.report.record import atomic_write
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = run.get("phenomena", [])
    Figure = _figure_class()
    lines = _header(run)
    lines += ["| experiment | verdict | measured |", "| --- | --- | --- |"]
    lines += [f"| [{e['name']}](#{e['name']}-{verdict_word(e).lower().replace(' ', '-')}) | "
              f"{verdict_word(e)} | {e['measured']} |" for e in entries]
    lines.append("")
    if Figure is None:
        lines += ["Plots skipped: matplotlib is not installed (`pip install 'microbench[plot]'`).", ""]
    for e in entries:
        plot = draw(e, out_dir, Figure) if Figure is not None else None
        lines += _section(e, plot)
    path = out_dir / "report.md"
    atomic_write(path, "\n".join(lines).rstrip() + "\n")
    return path
