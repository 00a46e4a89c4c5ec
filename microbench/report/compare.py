"""Sweep runs side by side (`microbench compare RUN_A RUN_B [...]`): each later run against the
first, row by row, with a verdict that respects both runs' noise, as nvbench's compare script
gives one.

Rows are matched by preset, arm and batch size. For each figure (each arm's step time, and the
speedup) the ratio B/A and a verdict:

    same      |B/A - 1| within the combined noise (or under the floor), and that noise small
    unclear   within the combined noise, but the noise is over `max_noise`: too large to tell;
              or no noise recorded on either side
    faster /  outside the noise: B's step takes less / more time than A's
    slower    (for the speedup: higher / lower)

A figure's noise is its relative half-spread, (p80 - p20) / (2 median) of its samples, about
one standard deviation for normal noise (nvbench uses the relative standard deviation); a
speedup's is the half-width of its 95% interval (`speedup_ci`) over the speedup where the row
has one, else the eager and graph noises combined. Two runs' noises combine as
sqrt(n_A^2 + n_B^2). Runs of different devices, presets, contexts or dtypes are not comparable.
"""
from __future__ import annotations

import math

from microbench.report.formats import Doc, Table

FLOOR = 0.01        # a change under 1% counts as "same", however quiet the runs
MAX_NOISE = 0.05    # combined noise over 5%: a change within it is "unclear", not "same"
KINDS = ("sweep", "sweep-tp")
# what must match for rows to be comparable: (label, where it is read)
MUST_MATCH = (("device", "env", "gpu"), ("preset", "config", "preset"),
              ("context", "config", "context"), ("dtype", "config", "dtype"),
              ("TP ranks", "config", "tp"))
# what may differ, and is said when it does
MAY_DIFFER = (("mode", "config", "mode"), ("ladder", "config", "ladder"),
              ("backend", "config", "backend"), ("split launch", "config", "split_launch"),
              ("steps", "config", "steps"), ("time budget", "config", "time_budget"),
              ("git", "env", "git"), ("torch", "env", "torch"), ("triton", "env", "triton"),
              ("driver", "env", "driver"))


class NotComparable(ValueError):
    """Runs whose rows cannot be compared (one line saying why)."""


def _get(run: dict, part: str, key: str):
    return (run.get(part) or {}).get(key)


def check_comparable(runs: list[dict], names: list[str]) -> None:
    """Raise NotComparable unless every run is a sweep of the same device, preset, context,
    dtype and TP ranks as the first, sharing at least one batch size with it."""
    for run, name in zip(runs, names):
        if run.get("kind") not in KINDS:
            raise NotComparable(f"{name} is a {run.get('kind')} run; compare takes sweep runs")
    a = runs[0]
    for run, name in zip(runs[1:], names[1:]):
        if run.get("kind") != a.get("kind"):
            raise NotComparable(f"{names[0]} is a {a['kind']} run and {name} a {run['kind']} run")
        for label, part, key in MUST_MATCH:
            if _get(run, part, key) != _get(a, part, key):
                raise NotComparable(
                    f"{names[0]} and {name} are not comparable: {label} "
                    f"{_get(a, part, key)!r} against {_get(run, part, key)!r}")
        if not {r["bs"] for r in a["rows"]} & {r["bs"] for r in run["rows"]}:
            raise NotComparable(f"{names[0]} and {name} share no batch size")


def rel_noise(row: dict, prefix: str) -> float | None:
    """(p80 - p20) / (2 median) of an arm's step time, or None where not recorded."""
    m, lo, hi = (row.get(f"{prefix}{k}") for k in ("step_us", "p20", "p80"))
    if not all(isinstance(v, (int, float)) for v in (m, lo, hi)) or m <= 0:
        return None
    return (hi - lo) / (2 * m)


def speedup_noise(row: dict) -> float | None:
    """Half the speedup's 95% interval over the speedup: the interval across processes
    (--repeat's speedup_repeats_ci) where the run has one, since processes disagree far more
    than one process's samples do; else the process's own (speedup_ci); else eager's and
    graph's spreads combined."""
    s = row.get("speedup")
    for key in ("speedup_repeats_ci", "speedup_ci"):
        ci = row.get(key)
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and s and None not in ci:
            return (ci[1] - ci[0]) / (2 * s)
    ne, ng = rel_noise(row, "eager_"), rel_noise(row, "graph_")
    return None if ne is None or ng is None else math.hypot(ne, ng)


def verdict(ratio: float, noise_a, noise_b, lower_is_better: bool = True, floor: float = FLOOR,
            max_noise: float = MAX_NOISE) -> tuple[str, float | None]:
    """(verdict, combined noise) of B/A = ratio; see the module docstring."""
    if noise_a is None and noise_b is None:
        return "unclear", None
    noise = math.hypot(noise_a or 0.0, noise_b or 0.0)
    if abs(ratio - 1) <= max(noise, floor):
        return ("same" if noise <= max_noise else "unclear"), noise
    better = ratio < 1 if lower_is_better else ratio > 1
    if lower_is_better:
        return ("faster" if better else "slower"), noise
    return ("higher" if better else "lower"), noise


def arm_prefixes(row: dict) -> list[str]:
    """Prefixes of the arms a row timed: eager_, graph_, torch_graph_, compile_, ..."""
    return [k[:-len("step_us")] for k, v in row.items()
            if k.endswith("_step_us") and not k.startswith("predicted_")
            and isinstance(v, (int, float))]


def figures(a: dict, b: dict, **kw) -> list[dict]:
    """Every figure the two rows share: each arm's step time, then the speedup."""
    out = []
    for p in arm_prefixes(a):
        if not isinstance(b.get(f"{p}step_us"), (int, float)) or not a[f"{p}step_us"]:
            continue
        ratio = b[f"{p}step_us"] / a[f"{p}step_us"]
        v, n = verdict(ratio, rel_noise(a, p), rel_noise(b, p), **kw)
        out.append(dict(arm=p.rstrip("_").replace("_", "-"), figure=f"{p}step_us",
                        a=a[f"{p}step_us"], b=b[f"{p}step_us"], ratio=ratio, noise=n, verdict=v))
    if isinstance(a.get("speedup"), (int, float)) and isinstance(b.get("speedup"), (int, float)) \
            and a["speedup"]:
        ratio = b["speedup"] / a["speedup"]
        v, n = verdict(ratio, speedup_noise(a), speedup_noise(b), lower_is_better=False, **kw)
        out.append(dict(arm="eager/graph", figure="speedup", a=a["speedup"], b=b["speedup"],
                        ratio=ratio, noise=n, verdict=v))
    return out


def compare_runs(runs: list[dict], names: list[str], floor: float = FLOOR,
                 max_noise: float = MAX_NOISE) -> list[dict]:
    """One record per (later run, batch size, figure): preset, bs, arm, figure, a, b, ratio,
    noise, verdict, run (its letter: B, C, ...). NotComparable if the runs are not."""
    check_comparable(runs, names)
    a, preset = runs[0], runs[0]["config"]["preset"]
    out = []
    for i, run in enumerate(runs[1:], start=1):
        theirs = {r["bs"]: r for r in run["rows"]}
        for ra in a["rows"]:
            rb = theirs.get(ra["bs"])
            if rb is None:
                continue
            for f in figures(ra, rb, floor=floor, max_noise=max_noise):
                out.append(dict(run=chr(ord("A") + i), preset=preset, bs=ra["bs"], **f))
    return out


def _label(f: dict) -> str:
    return "speedup" if f["figure"] == "speedup" else f"{f['arm']} us"


def _value(f: dict, v) -> str:
    return "-" if v is None else format(v, ".2f" if f["figure"] == "speedup" else ".1f")


def describe(run: dict, name: str, letter: str) -> str:
    env = run.get("env") or {}
    return (f"{letter}: {name} ({env.get('gpu')}, git {env.get('git') or '-'}, "
            f"{(env.get('date') or '-')[:16]})")


def differences(runs: list[dict]) -> list[str]:
    """What differs between the first run and each later one, among what may differ."""
    out = []
    for i, run in enumerate(runs[1:], start=1):
        diff = [f"{label} {_get(runs[0], p, k)} -> {_get(run, p, k)}"
                for label, p, k in MAY_DIFFER if _get(run, p, k) != _get(runs[0], p, k)]
        if diff:
            out.append(f"{chr(ord('A') + i)} differs from A in: " + "; ".join(diff))
    return out


def compare_doc(runs: list[dict], names: list[str], records: list[dict],
                floor: float = FLOOR, max_noise: float = MAX_NOISE) -> Doc:
    """The comparison as a document: the runs, one table row per (batch size, figure) with
    each later run's value, ratio to A, combined noise and verdict, and a count per run."""
    letters = [chr(ord("A") + i) for i in range(len(runs))]
    cols = ["bs", "figure", "A"]
    for L in letters[1:]:
        cols += [L, f"{L}/A", "noise", "verdict"] if len(runs) == 2 else \
                [L, f"{L}/A", f"{L} noise", f"{L} verdict"]
    by_key: dict = {}
    for r in records:
        by_key.setdefault((r["bs"], _label(r)), {})[r["run"]] = r
    rows = []
    for (bs, label), per_run in by_key.items():
        first = next(iter(per_run.values()))
        cells = [str(bs), label, _value(first, first["a"])]
        for L in letters[1:]:
            r = per_run.get(L)
            cells += (["-"] * 4 if r is None else
                      [_value(r, r["b"]), f"{r['ratio']:.3f}",
                       "-" if r["noise"] is None else f"±{r['noise']:.1%}", r["verdict"]])
        rows.append(cells)
    head = (f"{runs[0]['config']['preset']} on {runs[0]['env'].get('gpu')}, context "
            f"{runs[0]['config']['context']}, {runs[0]['config']['dtype']}")
    blocks = ["\n".join([head, *(describe(r, n, L) for r, n, L in zip(runs, names, letters)),
                         *differences(runs)]),
              Table(cols, rows, records=records, left=2, name="comparison")]
    counts = []
    for L in letters[1:]:
        mine = [r["verdict"] for r in records if r["run"] == L]
        words = [w for w in ("faster", "slower", "higher", "lower", "same", "unclear")
                 if w in mine or w in ("faster", "slower", "same", "unclear")]
        counts.append(f"{L} against A: " + ", ".join(f"{mine.count(w)} {w}" for w in words))
    unmatched = sorted({r["bs"] for r in runs[0]["rows"]} - {r["bs"] for r in records})
    if unmatched:
        counts.append(f"batch sizes only in A: {', '.join(map(str, unmatched))}")
    counts.append(f"same: within the runs' combined noise (p20-p80 half-spreads; a speedup's "
                  f"95% interval) or under {floor:.0%}; unclear: within a noise over "
                  f"{max_noise:.0%}, or no noise recorded")
    blocks.append("\n".join(counts))
    return Doc(blocks)
