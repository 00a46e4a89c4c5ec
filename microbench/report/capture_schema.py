"""The capture record of a run (GraphRunner.capture's report: a sweep's or generate's `capture`),
read by report.schema's validation as its other parts are: fields without a default are
required, `X | None` fields may be null, and fields not listed pass through unchecked."""
from __future__ import annotations

from dataclasses import dataclass

from microbench.report.typecheck import build


@dataclass(frozen=True)
class CaptureRecord:
    """A run's `capture` (GraphRunner.capture's report): one entry per graph in `sizes`;
    `passes` (absent in older runs) one CapturePass per capture pass, in capture order."""
    capture_s: float
    pool_bytes: int
    sizes: list
    skipped: list[int] | None = None
    passes: list | None = None


@dataclass(frozen=True)
class CapturePass:
    """One pass (full or piecewise): its sizes, seconds, pool growth and out-of-memory skips."""
    routine: str
    sizes: list[int]
    capture_s: float
    pool_bytes: int
    skipped: list[int] | None = None


def check_passes(capture, fail) -> None:
    """Each of a validated `capture`'s passes (full_and_piecewise runs two) as a CapturePass;
    fail(what) on the first that is not one."""
    if isinstance(capture, dict):
        for i, p in enumerate(capture.get("passes") or []):
            build(CapturePass, p, f"capture.passes[{i}]", fail)
