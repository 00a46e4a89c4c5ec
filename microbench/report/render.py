"""The terminal text of a saved run, whatever its kind (what `microbench show` prints)."""
from __future__ import annotations

import json

from microbench.report.plots import entry_lines
from microbench.report.tables import kernels_table, launch_table, sweep_table
from microbench.report.tp_tables import allreduce_table, tp_sweep_table


class RenderError(ValueError):
    """A validated run that still lacks something its table needs (one line)."""


def render_run(run: dict, as_json: bool = False) -> str:
    """A validated run's table (or the run as JSON). RenderError if a part its table reads,
    beyond what the schema checks, is missing or malformed."""
    if as_json:
        return json.dumps(run, indent=2)
    kind = run.get("kind")
    try:
        if kind == "launch":
            return launch_table(run["launch"])
        if kind == "reproduce":
            return "\n\n".join(entry_lines(e) for e in run["phenomena"])
        if kind == "kernels":
            return kernels_table(run)
        if kind == "launch-tp":
            return allreduce_table(run["allreduce"])
        if kind == "sweep-tp":
            return tp_sweep_table(run)
        return sweep_table(run)
    except (KeyError, TypeError, IndexError, AttributeError, ValueError, ZeroDivisionError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise RenderError(f"the {kind} run is incomplete ({what}); it cannot be shown") from None
