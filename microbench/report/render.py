"""The text of a saved run, whatever its kind (what `microbench show` prints), in any of
formats.FORMATS where the kind has tables."""
from __future__ import annotations

import json

from microbench.report.formats import render
from microbench.report.plots import entry_lines
from microbench.report.serve_tables import generate_doc, serve_doc
from microbench.report.startup_table import startup_doc
from microbench.report.tables import kernels_doc, launch_doc, sweep_doc
from microbench.report.tp_tables import launch_tp_doc, tp_sweep_doc

# the document of each kind that has tables (formats.Doc)
DOCS = {"sweep": sweep_doc, "launch": lambda run: launch_doc(run["launch"]),
        "kernels": kernels_doc, "launch-tp": launch_tp_doc,
        "sweep-tp": tp_sweep_doc, "generate": generate_doc, "serve": serve_doc,
        "startup": startup_doc}


class RenderError(ValueError):
    """A validated run that still lacks something its table needs (one line)."""


def render_run(run: dict, as_json: bool = False, fmt: str = "table", color: bool = False) -> str:
    """A validated run's tables in `fmt` (or, with as_json, the whole run as JSON). A kind
    without tables (reproduce) prints as text, or its rows as JSON. RenderError
    if a part its table reads, beyond what the schema checks, is missing or malformed."""
    if as_json:
        return json.dumps(run, indent=2)
    kind = run.get("kind")
    try:
        if kind in DOCS or kind is None:
            return render(DOCS[kind or "sweep"](run), fmt, color)
        if fmt == "json":
            return json.dumps(run.get("rows") or run.get("phenomena") or [], indent=2)
        if fmt != "table":
            raise RenderError(f"a {kind} run has no table to write as {fmt}; use --format "
                              "table or json")
        return "\n\n".join(entry_lines(e) for e in run["phenomena"])
    except RenderError:
        raise
    except (KeyError, TypeError, IndexError, AttributeError, ValueError, ZeroDivisionError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise RenderError(f"the {kind} run is incomplete ({what}); it cannot be shown") from None
