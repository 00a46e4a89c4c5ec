"""What every verdict of `microbench reproduce` shares: noise-aware comparisons of saved step
times, the assembled verdict record, and the report's number formats (pure, CPU-testable).
A step a is slower than b when

    t_a > t_b · (1 + n_a + n_b),   n = max(3%, (p80 - p20) / median)
"""
from __future__ import annotations

from microbench.stats import row_noise

MiB, GiB = 1 << 20, 1 << 30
NOISE_FLOOR = 0.03


def noise(row: dict, p: str = "") -> float:
    """Relative spread of the timing `{p}step_us` (with `{p}p20`, `{p}p80`), at least 3%."""
    return row_noise(row, p, NOISE_FLOOR)


def slower(a: dict, b: dict, pa: str = "", pb: str = "") -> bool:
    """a's step (prefix pa) is slower than b's (prefix pb) beyond both timings' noise."""
    return a[f"{pa}step_us"] > b[f"{pb}step_us"] * (1 + noise(a, pa) + noise(b, pb))


def ratio_band(a: dict, b: dict) -> tuple[float, float]:
    """(lo, hi) of t_a / t_b widened by both timings' noise."""
    r, n = a["step_us"] / b["step_us"], noise(a) + noise(b)
    return r / (1 + n), r * (1 + n)


def vs_exact_band(r: dict, ex: dict) -> tuple[float, float]:
    """(lo, hi) of a padding-waste arm's step time over the exact capture's: the paired
    bootstrap interval of the rotation (`vs_exact_ci`), or for runs timed arm by arm the ratio
    widened by both timings' noise (ratio_band)."""
    ci = r.get("vs_exact_ci")
    return (float(ci[0]), float(ci[1])) if ci else ratio_band(r, ex)


def within(x: float, figure: float, factor: float) -> bool:
    return figure / factor <= x <= figure * factor


def row_where(rows, **match):
    return next(r for r in rows if all(r.get(k) == v for k, v in match.items()))


def fmt_x(vals, spec=".2f", unit="x"):
    return ", ".join(f"{v:{spec}}{unit} at bs {b}" for b, v in vals)


def fmt_mib(n):
    return f"{n / MiB:.1f} MiB" if n < 100 * MiB else f"{n / GiB:.2f} GiB"


def verdict(checks: dict, measured: str, notes: list, published: str | None = None,
             pass_if: str | None = None, predicted: str | None = None, **derived) -> dict:
    """checks: failure reason -> passed. Held when every check passed. The published figure,
    the pass condition and the model's figure lead the notes, so the report shows them."""
    failed = [why for why, ok in checks.items() if not ok]
    lead = [f"{k}: {v}." for k, v in (("Published", published), ("Pass condition", pass_if),
                                      ("Model at the published setting", predicted)) if v]
    return dict(held=not failed, why="; ".join(failed) or "held", measured=measured,
                notes=lead + notes, derived=derived, published=published, pass_if=pass_if,
                predicted=predicted)
