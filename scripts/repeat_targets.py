"""Print issue 18's --repeat targets and the model's errors against committed --repeat runs, as
Markdown tables.

usage: python scripts/repeat_targets.py RUN [RUN ...]
(each a `microbench sweep --repeat K` run folder holding run.json). Per run: each row's spread
across the processes (max / min - 1 of their median speedups; target at most 5%), whether the
published shape held in every process (engine-eager against graph, and eager against graph), and
the model's worst speedup error on the merged rows (target at most 10%). A second table gives
each merged row's predicted against measured steps, and the runner's enqueue measured beside
the row (`graph_host_us`), which the predicted graph step includes. Every figure is read from the runs."""
import json
import sys
from pathlib import Path


def load(folder):
    return json.loads((Path(folder) / "run.json").read_text())


def spread_table(runs):
    head = "| run | git | " + " | ".join(f"bs {r['bs']}" for r in runs[0][1]["rows"])
    out = [head + " | worst | within 5% | engine-eager shape | eager shape | model's worst error |",
           "|" + " --- |" * (len(runs[0][1]["rows"]) + 7)]
    for folder, run in runs:
        rp = run["repeats"]
        cells = []
        for r in run["rows"]:
            reps = "/".join(f"{x:.3f}" for x in r["speedup_repeats"])
            cells.append(f"{r['speedup_repeat_spread']:.1%} ({reps})")
        errs = [abs(r["speedup_error"]) for r in run["rows"] if r.get("speedup_error") is not None]
        out.append(f"| `{Path(folder).name}` | `{run['env'].get('git', '?')[:7]}` | "
                   + " | ".join(cells)
                   + f" | {rp['max_spread']:.1%} | {'yes' if rp['max_spread'] <= 0.05 else 'no'}"
                   + f" | {sum(rp['engine_shape_held'])} of {rp['k']}"
                   + f" | {sum(rp['shape_held'])} of {rp['k']}"
                   + f" | {max(errs):.1%} |")
    return out


def steps_table(runs):
    out = ["| run | bs | speedup pred / measured | graph step pred / measured (us) | error "
           "| eager step pred / measured (us) | error | runner enqueue (us) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for folder, run in runs:
        for r in run["rows"]:
            g, e = r["predicted_graph_step_us"], r["predicted_eager_step_us"]
            out.append(f"| `{Path(folder).name}` | {r['bs']} "
                       f"| {r['predicted_speedup']:.2f} / {r['speedup']:.2f} "
                       f"| {g:.1f} / {r['graph_step_us']:.1f} | {g / r['graph_step_us'] - 1:+.1%} "
                       f"| {e:.1f} / {r['eager_step_us']:.1f} | {e / r['eager_step_us'] - 1:+.1%} "
                       f"| {r['graph_host_us']:.1f} |")
    return out


def main(folders):
    runs = [(f, load(f)) for f in folders]
    bad = [f for f, r in runs if not r.get("repeats")]
    if bad:
        sys.exit(f"not a --repeat run: {', '.join(bad)}")
    print("\n".join(spread_table(runs)))
    print()
    print("\n".join(steps_table(runs)))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
