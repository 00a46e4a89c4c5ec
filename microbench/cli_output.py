"""What the `microbench` commands print and write besides their runs: the --format option, a
document printed in it, the progress view a measuring command reports to, and the --trace
writer. rich loads only when a command draws a table or shows progress."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from microbench.report.formats import FORMATS, render

FORMAT = click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
                      show_default=True,
                      help="table (the terminal), markdown (pastes into an issue), csv (into a "
                           "spreadsheet) or json (the rows).")

TRACE = click.option("--trace", type=click.Path(file_okay=False), default=None, metavar="DIR",
                     help="Write a PyTorch profiler trace of one eager and one graphed step at "
                          "the first --bs into DIR (Chrome trace JSON; opens in Perfetto).")


def echo_doc(doc, fmt: str) -> None:
    """Print a report.formats.Doc in `fmt`; a terminal table in colour only on a terminal."""
    click.echo(render(doc, fmt, color=fmt == "table" and sys.stdout.isatty()))


def progress_view(on: bool):
    """A report.progress.ProgressView on stderr (bars on a terminal, plain lines elsewhere),
    or None when the command is quiet."""
    if not on:
        return None
    from microbench.report.progress import ProgressView
    return ProgressView()


def sweep_hooks(view) -> dict:
    """run_sweep's progress keywords for a view (none for None)."""
    if view is None:
        return {}
    return dict(on_progress=view.say, on_capture=view.capture, on_rows=view.rows,
                on_phase=view.phase, on_round=view.sampling)


class TraceWriter:
    """on_trace for the sweep: writes the profiler's Chrome trace into `folder`, named after
    the run's folder (`<run-id>.trace.json`); `path` is where it went."""

    def __init__(self, folder: str, saver):
        self.folder, self.saver, self.path = Path(folder), saver, None

    def __call__(self, prof) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self.saver.dir.name if getattr(self.saver, "dir", None) else "sweep"
        self.path = self.folder / f"{name}.trace.json"
        prof.export_chrome_trace(str(self.path))
