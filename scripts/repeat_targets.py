"""Print issue 18's --repeat targets and the model's errors against committed --repeat runs, as
Markdown tables.

usage: python scripts/repeat_targets.py RUN [RUN ...]
(each a `microbench sweep --repeat K` run folder holding run.json). Per run: each row's spread
across the processes (max / min - 1 of their median speedups; target at most 5%), whether the
published shape held in every process (engine-eager against graph, and eager against graph), and
the model's worst speedup error on the merged rows (target at most 10%). A second table gives
each merged row's predicted against measured steps, and the runner's enqueue measured beside
the row (`graph_host_us`), which the predicted graph step includes. A third, for runs that keep
each process's host record (`host_pin_repeats`), gives each process's median speedup per row
beside what its CPU pin saw while sampling the row: the seconds it waited for a slow host
(at most hostcpu.HOST_WAIT_S a rotation), the rounds sampled on a slow host after that wait ran
out, the rounds counted (the host quick around them) of those sampled, and the row's probe
loop. Every figure is read from the runs."""
import json
import sys
from pathlib import Path


def load(folder):
    try:
        return json.loads((Path(folder) / "run.json").read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"cannot read {folder}/run.json ({e.__class__.__name__}); give --repeat run folders")


def pct(v):
    """v as a percentage, or '-' for a figure the run lacks (a failed row, an old run)."""
    return "-" if v is None else f"{v:.1%}"


def num(v, spec):
    return "-" if v is None else format(v, spec)


def ratio_err(pred, meas):
    return "-" if pred is None or not meas else f"{pred / meas - 1:+.1%}"


def spread_table(runs):
    head = "| run | git | " + " | ".join(f"bs {r['bs']}" for r in runs[0][1]["rows"])
    out = [head + " | worst | within 5% | engine-eager shape | eager shape | model's worst error |",
           "|" + " --- |" * (len(runs[0][1]["rows"]) + 7)]
    for folder, run in runs:
        rp = run["repeats"]
        cells = []
        for r in run["rows"]:
            reps = "/".join(num(x, ".3f") for x in r.get("speedup_repeats") or [])
            cells.append(f"{pct(r.get('speedup_repeat_spread'))} ({reps})")
        errs = [abs(r["speedup_error"]) for r in run["rows"] if r.get("speedup_error") is not None]
        worst = rp.get("max_spread")
        held = lambda key: f"{sum(1 for h in rp.get(key) or [] if h)} of {rp['k']}"
        out.append(f"| `{Path(folder).name}` | `{(run['env'].get('git') or '?')[:7]}` | "
                   + " | ".join(cells)
                   + f" | {pct(worst)} | {'-' if worst is None else 'yes' if worst <= 0.05 else 'no'}"
                   + f" | {held('engine_shape_held')} | {held('shape_held')}"
                   + f" | {pct(max(errs, default=None))} |")
    return out


def steps_table(runs):
    out = ["| run | bs | speedup pred / measured | graph step pred / measured (us) | error "
           "| eager step pred / measured (us) | error | runner enqueue (us) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for folder, run in runs:
        for r in run["rows"]:
            g, e = r.get("predicted_graph_step_us"), r.get("predicted_eager_step_us")
            gm, em = r.get("graph_step_us"), r.get("eager_step_us")
            out.append(f"| `{Path(folder).name}` | {r['bs']} "
                       f"| {num(r.get('predicted_speedup'), '.2f')} / {num(r.get('speedup'), '.2f')} "
                       f"| {num(g, '.1f')} / {num(gm, '.1f')} | {ratio_err(g, gm)} "
                       f"| {num(e, '.1f')} / {num(em, '.1f')} | {ratio_err(e, em)} "
                       f"| {num(r.get('graph_host_us'), '.1f')} |")
    return out


def host_cell(speedup, pin):
    """One process's median speedup at a row, with what its CPU pin saw while sampling it."""
    pin = pin or {}
    return (f"{num(speedup, '.3f')} (waited {num(pin.get('waited_s'), '.1f')} s, "
            f"{pin.get('slow_rounds', '-')} slow, {pin.get('quiet_rounds', '-')}/"
            f"{pin.get('rounds', '-')} counted, loop {num(pin.get('loop_us'), '.0f')} us)")


def host_table(runs):
    out = ["| run | bs | each process: median speedup (seconds waited for a slow host, rounds "
           "on a slow host, rounds counted / sampled, probe loop) |", "| --- | --- | --- |"]
    for folder, run in runs:
        for r in run["rows"]:
            pins = r.get("host_pin_repeats")
            if not pins:
                continue
            cells = [host_cell(x, p) for x, p in zip(r.get("speedup_repeats") or [], pins)]
            out.append(f"| `{Path(folder).name}` | {r['bs']} | {' / '.join(cells)} |")
    return out if len(out) > 2 else []


def main(folders):
    runs = [(f, load(f)) for f in folders]
    bad = [f for f, r in runs if not r.get("repeats") or not r.get("rows")]
    if bad:
        sys.exit(f"not a --repeat run with rows: {', '.join(bad)}")
    sizes = {tuple(r["bs"] for r in run["rows"]) for _, run in runs}
    if len(sizes) > 1:
        sys.exit(f"the runs swept different batch sizes ({'; '.join(map(str, sorted(sizes)))}); "
                 "give runs of one --bs list")
    print("\n".join(spread_table(runs)))
    print()
    print("\n".join(steps_table(runs)))
    host = host_table(runs)
    if host:
        print()
        print("\n".join(host))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
