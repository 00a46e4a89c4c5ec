"""Print issue 19's bandwidth targets against committed runs, as a Markdown table.

usage: python scripts/targets.py SWEEP_OPT SWEEP_1B SWEEP_8B KERNELS_8B
(each a run folder holding run.json: the three presets' sweeps, and `microbench kernels
--preset llama-8b --context 4096`). Every figure is read from the runs; the ratios are computed
here. A sweep without the torch-compile arm (a default sweep) leaves its comparison unjudged:
`-` in the met column."""
import json
import sys
from pathlib import Path


def load(folder):
    return json.loads((Path(folder) / "run.json").read_text())


def row(run, bs):
    return next(r for r in run["rows"] if r["bs"] == bs)


def main(opt, one, eight, kern):
    o, b1, b8, k = load(opt), load(one), load(eight), load(kern)
    g = lambda run, bs: row(run, bs)["graph_step_us"]
    tc = lambda run: row(run, 1)["torch_compile_step_us"]
    att = {(r["kernel"], r["B"]): r["frac_of_copy"] for r in k["rows"]}
    lines = [
        ("llama-1b bs 1 graph step", "<= 720 us", g(b1, 1), f"{g(b1, 1):.1f} us", g(b1, 1) <= 720),
        ("llama-8b bs 1 graph step", "<= 4150 us", g(b8, 1), f"{g(b8, 1):.1f} us", g(b8, 1) <= 4150),
        ("llama-8b bs 4 / bs 1", "<= 1.05", None, f"{g(b8, 4) / g(b8, 1):.3f}", g(b8, 4) / g(b8, 1) <= 1.05),
        ("llama-8b bs 16 / bs 1", "<= 1.10", None, f"{g(b8, 16) / g(b8, 1):.3f}", g(b8, 16) / g(b8, 1) <= 1.10),
        ("llama-8b bs 64 graph MBU", ">= 0.78", None, f"{row(b8, 64)['graph_mbu']:.3f}", row(b8, 64)["graph_mbu"] >= 0.78),
        ("llama-1b bs 16 / bs 1", "<= 1.15", None, f"{g(b1, 16) / g(b1, 1):.3f}", g(b1, 16) / g(b1, 1) <= 1.15),
        ("opt-125m bs 1 graph step", "<= 200 us", None, f"{g(o, 1):.1f} us", g(o, 1) <= 200),
        ("decode_attention bs 64 ctx 4096 (unfused plan)", ">= 0.85 of copy", None,
         f"{att[('decode_attention', 64)]:.3f}", att[("decode_attention", 64)] >= 0.85),
        ("rope_store_attention bs 64 ctx 4096 (default plan)", ">= 0.85 of copy", None,
         f"{att[('rope_store_attention', 64)]:.3f}", att[("rope_store_attention", 64)] >= 0.85),
    ]
    for name, run in (("opt-125m", o), ("llama-1b", b1), ("llama-8b", b8)):
        if "torch_compile_step_us" not in row(run, 1):
            lines.append((f"{name} bs 1 graph / torch-compile", "<= 0.80", None,
                          "no torch-compile arm in this run", None))
            continue
        r = g(run, 1) / tc(run)
        lines.append((f"{name} bs 1 graph / torch-compile", "<= 0.80", None,
                      f"{r:.3f} ({g(run, 1):.1f} / {tc(run):.1f} us)", r <= 0.80))
    print("| target | wanted | measured | met |\n|---|---|---|---|")
    for name, want, _, got, ok in lines:
        print(f"| {name} | {want} | {got} | {'-' if ok is None else 'yes' if ok else 'no'} |")
    revs = sorted({run["env"]["git"] for run in (o, b1, b8, k)})
    print(f"\nruns at revision(s) {', '.join(revs)} on {o['env']['gpu']}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
