"""Pure statistics on measured rows and points: noise bands, paired-ratio bootstrap intervals,
the speedup-shape check, merging repeated runs, line fits.

A leaf of the package: it imports only the standard library and numpy, never another microbench
module, so every layer may import it (bench measures and fits with it, analysis judges with it)
without bench and analysis importing each other.

A row's speedup, where its arms were sampled in rotation, is the median of paired ratios

    s = median_i(eager_i / graph_i)

(sample i of each arm from the same rotation), with a 95% percentile-bootstrap interval
`speedup_ci` (resampling the pairs, seeded). Rows saved without an interval (older runs) fall
back to a noise band from each timing's relative p20-p80 spread, at least a floor:

    n = max(floor, (p80 - p20) / median),   interval = [s · (1 - n_e - n_g), s · (1 + n_e + n_g)]

since a ratio's relative error is about the sum of its parts' (speedup_noise).
"""
from __future__ import annotations

import numpy as np

CI_LEVEL = 0.95
RESAMPLES = 2000
REL_CI = 0.02      # a row is stable when its speedup interval's half-width is within 2% of it
def row_noise(row: dict, prefix: str = "", floor: float = 0.03) -> float:
    """Relative spread of a saved timing: (p80 - p20) / median of `{prefix}step_us` with
    `{prefix}p20` and `{prefix}p80`, at least `floor` (the noise bands of the verdicts)."""
    med, lo, hi = row.get(f"{prefix}step_us"), row.get(f"{prefix}p20"), row.get(f"{prefix}p80")
    spread = (hi - lo) / med if med and lo is not None and hi is not None else 0.0
    return max(floor, spread)


def speedup_noise(row: dict, floor: float = 0.03, arm: str = "eager_") -> float:
    """Relative noise of a row's speedup of `arm` (a field prefix) over the graph: the p20-p80
    spreads of the arm's and the graph's times added (a ratio's relative error is about the
    sum of its parts'), each at least `floor`."""
    return row_noise(row, arm, floor) + row_noise(row, "graph_", floor)


# ---- paired ratios and their bootstrap interval ----------------------------------------------
def median_ci(xs, resamples: int = RESAMPLES, seed: int = 0, level: float = CI_LEVEL):
    """(median, lo, hi): the median of xs and its percentile-bootstrap interval at `level`
    (`resamples` resamples with replacement, numpy's generator seeded with `seed`)."""
    x = np.asarray(xs, float)
    if x.size == 0:
        raise ValueError("median of no samples")
    med = float(np.median(x))
    if x.size == 1:
        return med, med, med
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    meds = np.median(x[idx], axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(meds, [a, 1 - a])
    return med, float(lo), float(hi)


def paired_ratio(num, den, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """The median of num_i / den_i over pairs from the same rotation, with its bootstrap
    interval: {"median", "ci": [lo, hi], "n"}. Extra samples of the longer side are dropped."""
    n = min(len(num), len(den))
    r = np.asarray(num[:n], float) / np.asarray(den[:n], float)
    med, lo, hi = median_ci(r, resamples, seed)
    return dict(median=med, ci=[lo, hi], n=n)


def hierarchical_ci(groups, resamples: int = RESAMPLES, seed: int = 0, level: float = CI_LEVEL):
    """(median, lo, hi) of samples in groups (one group per process): the median of all
    samples, and a two-level percentile-bootstrap interval: each resample draws the groups with
    replacement, then each drawn group's samples with replacement, and takes the median of the
    pooled draw. With few processes the first level dominates: the interval shows how far the
    processes disagree, not only how noisy each was."""
    gs = [np.asarray(g, float) for g in groups if len(g)]
    if not gs:
        raise ValueError("median of no samples")
    rng = np.random.default_rng(seed)
    meds = np.empty(resamples)
    for i in range(resamples):
        pick = rng.integers(0, len(gs), size=len(gs))
        meds[i] = np.median(np.concatenate([gs[j][rng.integers(0, gs[j].size, gs[j].size)]
                                            for j in pick]))
    a = (1 - level) / 2
    lo, hi = np.quantile(meds, [a, 1 - a])
    return float(np.median(np.concatenate(gs))), float(lo), float(hi)


def settled(ci, median: float, rel: float = REL_CI) -> bool:
    """The stopping rule: the interval's half-width is at most `rel` of the median."""
    return median > 0 and (ci[1] - ci[0]) / 2 <= rel * median


def speedup_interval(row: dict, prefix: str = "", noise: float | None = None):
    """(lo, hi) of a row's `{prefix}speedup`: its bootstrap `{prefix}speedup_ci` where saved,
    else the speedup widened by the p20-p80 noise of its eager and graph times (or by a fixed
    relative `noise`); None without a speedup."""
    s = row.get(f"{prefix}speedup")
    if not s:
        return None
    ci = row.get(f"{prefix}speedup_ci")
    if noise is None and ci:
        return float(ci[0]), float(ci[1])
    n = noise if noise is not None else speedup_noise(row, arm=prefix or "eager_")
    return s * (1 - n), s * (1 + n)


def above(a, b) -> bool:
    """Interval a lies wholly above interval b (the two separate, a higher)."""
    return a[0] > b[1]


def check_shape(rows: list[dict], noise: float | None = None, prefix: str = "") -> dict:
    """Do measured speedups hold the published shape? Judged on each row's interval
    (speedup_interval): no later batch's speedup above the smallest batch's; no rise from one
    batch to the next, a rise counting only where the two intervals separate; never below 1,
    meaning no interval's upper end under 1. `noise` fixes a relative band instead. `prefix`
    judges another arm's speedup over the graph (e.g. "engine_eager_")."""
    rs = sorted((r for r in rows if r.get(f"{prefix}speedup")), key=lambda r: r["bs"])
    if not rs:
        return dict(held=None, why="no graph rows")
    iv = [speedup_interval(r, prefix, noise=noise) for r in rs]
    largest_first = not any(above(v, iv[0]) for v in iv[1:])
    monotone = not any(above(b, a) for a, b in zip(iv, iv[1:]))
    above_one = all(hi >= 1 for _, hi in iv)
    held = largest_first and monotone and above_one
    why = []
    if not largest_first:
        why.append("speedup is not largest at the smallest batch")
    if not monotone:
        why.append("speedup rises with batch size beyond its interval")
    if not above_one:
        why.append("a graph step is slower than eager (interval wholly below 1)")
    ci = noise is None and all(r.get(f"{prefix}speedup_ci") for r in rs)
    return dict(held=held, arm=prefix.rstrip("_").replace("_", "-") or "eager", largest_at_smallest=largest_first, non_increasing=monotone,
                never_below_one=above_one, intervals=[list(v) for v in iv],
                basis="bootstrap 95% interval" if ci else "p20-p80 noise band",
                noise=[noise if noise is not None else speedup_noise(r, arm=prefix or "eager_")
                       for r in rs],
                unstable=[r["bs"] for r in rs if r.get("stable") is False],
                why="; ".join(why) or "held")


def fit_linear(xs, ys, relative: bool = False) -> tuple[float, float]:
    """Least-squares y = a + b·x; returns (a, b). With `relative`, each point is weighted by
    1/y, so points spanning decades count alike (a small kernel's time fixes the intercept)."""
    ys = np.asarray(ys, float)
    w = 1.0 / ys if relative else None
    b, a = np.polyfit(np.asarray(xs, float), ys, 1, w=w)
    return float(a), float(b)


def fit_pool(sizes_bytes: list[tuple[int, int]]) -> tuple[float, float]:
    """Fit total pool bytes against the number of captured sizes: bytes(n) = a + c·n.
    Input: (n, bytes) pairs. Returns (a, c)."""
    if len(sizes_bytes) < 2:
        n, b = sizes_bytes[0]
        return 0.0, b / n
    xs, ys = zip(*sizes_bytes)
    c, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(c)


def break_even_steps(capture_s: float, eager_us: float, graph_us: float) -> float | None:
    """Steps after which a capture's one-time cost is paid back by faster steps."""
    saved = eager_us - graph_us
    return capture_s * 1e6 / saved if saved > 0 else None


# ---- repeated runs in fresh processes ---------------------------------------------------------
def median_process(values: list) -> int | None:
    """Index of the process whose value is the median of those measured (the lower middle for
    an even count; equal values keep process order), or None when none was."""
    have = sorted((v, i) for i, v in enumerate(values) if v)
    return have[(len(have) - 1) // 2][1] if have else None


def merge_repeats(runs: list[dict]) -> dict:
    """One run from K runs of the same sweep, each measured in its own fresh process (pyperf's
    workers). Each row is the row of the process whose speedup is that batch size's median
    (`median_process`; `repeat_process` names it, 1-based), so one slow or lucky process does
    not make the headline; the rest of the record (device figures, footer) is the first run's.
    Per row it adds `speedup_repeats` (the K processes' median speedups, in process order, null
    where a process measured none), `speedup_repeat_spread` (max / min - 1 over them),
    `eager_step_us_repeats`, `graph_step_us_repeats` and `host_loop_us_repeats` (each process's
    medians, and the probe loop time of the CPU its rotation kept: how quick its host was),
    `host_pin_repeats` (each process's whole `host_pin`: its waits and slow rounds too) and,
    where every process kept its paired ratios, `speedup_repeats_ci` (hierarchical_ci over
    them). The shape checks are judged again on the merged rows; the `repeats` record holds k,
    the worst spread over the rows, each process's own shape checks and `first_rows` (the first
    process's rows, without their paired ratios: what its footer lines were measured beside).
    A batch size missing from a later run (interrupted) gets null from it."""
    if not runs:
        raise ValueError("no runs to merge")
    first = runs[0]
    by_bs = [{r["bs"]: r for r in run.get("rows", [])} for run in runs]
    rows = []
    for row in first.get("rows", []):
        same = [b.get(row["bs"]) or {} for b in by_bs]      # this batch size in each process
        got = [r.get("speedup") for r in same]
        have = [g for g in got if g]
        spread = max(have) / min(have) - 1 if len(have) > 1 else None
        pick = median_process(got)
        merged = dict(same[pick] if pick is not None else row,
                      repeat_process=None if pick is None else pick + 1,
                      speedup_repeats=got, speedup_repeat_spread=spread,
                      eager_step_us_repeats=[r.get("eager_step_us") for r in same],
                      graph_step_us_repeats=[r.get("graph_step_us") for r in same],
                      host_loop_us_repeats=[(r.get("host_pin") or {}).get("loop_us") for r in same],
                      host_pin_repeats=[r.get("host_pin") for r in same])
        ratios = [r.get("speedup_ratios") for r in same]
        if len(runs) > 1 and all(ratios):
            _, lo, hi = hierarchical_ci(ratios)
            merged["speedup_repeats_ci"] = [lo, hi]
        rows.append(merged)
    spreads = [r["speedup_repeat_spread"] for r in rows if r["speedup_repeat_spread"] is not None]
    checks = [run.get("shape_check") or {} for run in runs]
    bundle = [run.get("shape_check_engine") or {} for run in runs]
    repeats = dict(k=len(runs), max_spread=max(spreads) if spreads else None,
                   shape_held=[c.get("held") for c in checks],
                   engine_shape_held=[c.get("held") for c in bundle],
                   wall_s=[run.get("wall_s") for run in runs],
                   interrupted=[bool(run.get("interrupted")) for run in runs],
                   first_rows=[{k: v for k, v in r.items() if k != "speedup_ratios"}
                               for r in first.get("rows", [])])
    out = dict(first, rows=rows, repeats=repeats, interrupted=any(repeats["interrupted"]))
    # judged on the hierarchical interval where there is one: neighbouring rows may come from
    # different processes, so the host's spread between processes belongs in the interval;
    # engine-eager has no such interval and is judged on its row's own (the row's process is
    # the eager speedup's median one)
    judged = [dict(r, speedup_ci=r["speedup_repeats_ci"]) if r.get("speedup_repeats_ci") else r
              for r in rows]
    if "shape_check" in first:
        out["shape_check"] = check_shape(judged)
    if "shape_check_engine" in first:
        out["shape_check_engine"] = check_shape(rows, prefix="engine_eager_")
    return out
