"""Pure statistics on measured rows and points: noise bands, the speedup-shape check, line fits.

A leaf of the package: it imports only the standard library and numpy, never another microbench
module, so every layer may import it (bench measures and fits with it, analysis judges with it)
without bench and analysis importing each other.

Noise of a saved timing is its relative p20-p80 spread, at least a floor:

    n = max(floor, (p80 - p20) / median)

and a ratio's noise is about the sum of its parts' (speedup_noise).
"""
from __future__ import annotations

import numpy as np


def row_noise(row: dict, prefix: str = "", floor: float = 0.03) -> float:
    """Relative spread of a saved timing: (p80 - p20) / median of `{prefix}step_us` with
    `{prefix}p20` and `{prefix}p80`, at least `floor` (the noise bands of the verdicts)."""
    med, lo, hi = row.get(f"{prefix}step_us"), row.get(f"{prefix}p20"), row.get(f"{prefix}p80")
    spread = (hi - lo) / med if med and lo is not None and hi is not None else 0.0
    return max(floor, spread)


def speedup_noise(row: dict, floor: float = 0.03) -> float:
    """Relative noise of a row's speedup: the p20-p80 spreads of its eager and graph times
    added (a ratio's relative error is about the sum of its parts'), each at least `floor`."""
    return row_noise(row, "eager_", floor) + row_noise(row, "graph_", floor)


def check_shape(rows: list[dict], noise: float | None = None) -> dict:
    """Do measured speedups hold the published shape? Largest at the smallest batch, not
    increasing with batch size beyond noise, never below 1 beyond noise. Noise is each row's
    measured spread (speedup_noise) unless `noise` fixes it."""
    rs = sorted((r for r in rows if r.get("speedup")), key=lambda r: r["bs"])
    if not rs:
        return dict(held=None, why="no graph rows")
    vals = [r["speedup"] for r in rs]
    nz = [noise if noise is not None else speedup_noise(r) for r in rs]
    largest_first = all(vals[0] * (1 + nz[0] + n) >= v for v, n in zip(vals, nz))
    monotone = all(b <= a * (1 + na + nb) for a, b, na, nb in zip(vals, vals[1:], nz, nz[1:]))
    above_one = all(v >= 1 - n for v, n in zip(vals, nz))
    held = largest_first and monotone and above_one
    why = []
    if not largest_first:
        why.append("speedup is not largest at the smallest batch")
    if not monotone:
        why.append("speedup rises with batch size beyond noise")
    if not above_one:
        why.append("a graph step is slower than eager")
    return dict(held=held, largest_at_smallest=largest_first, non_increasing=monotone,
                never_below_one=above_one, noise=nz, why="; ".join(why) or "held")


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
