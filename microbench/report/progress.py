"""What a measuring command shows while it runs: rich progress bars on a terminal, and one plain
line per event anywhere else (a log file gets no carriage returns and no escape codes).

The engine and bench know nothing of this: they call back plain callables (GraphRunner's
`on_capture`, the sweep's `on_rows` and `on_phase`, status lines), and a ProgressView renders
them. The bars refresh when an event arrives, not from a background thread, except while a
long untimed phase (compiling) runs: a refresh thread would take the interpreter lock from
host-bound steps while they are being timed.
"""
from __future__ import annotations

import sys
import threading
import time

from rich.console import Console
from rich.progress import (BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from microbench.engine.modes import ROUTINES

# how engines label their capture passes (vLLM: "Capturing CUDA graphs (decode, FULL)")
ROUTINE_LABELS = {"piecewise": "mixed, piecewise", "full": "decode, full"}
LAST_ROUTINE = ROUTINES["full_and_piecewise"][-1]


def mib(n: float) -> str:
    """Bytes as the engines' logs write them: '328 MiB', '1.2 GiB', '512 KiB'."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.0f} MiB"
    return f"{n / 1024:.0f} KiB"


def capture_summary(total: int, seconds: float, pool_bytes: int) -> str:
    """The one-line capture summary: 'captured 19 sizes in 9.6 s, pool 328 MiB'."""
    return f"captured {total} size{'s' * (total != 1)} in {seconds:.1f} s, pool {mib(pool_bytes)}"


def passes_summary(passes: list, pool_bytes: int) -> str:
    """The one-line summary of several capture passes, each a dict with routine, sizes (a
    count or a list), capture_s and pool_bytes (the pool's growth over the pass; the runner's
    capture report holds these): 'captured 19 piecewise sizes in 3.1 s, pool +120 MiB; 19 full
    sizes in 2.0 s, pool +40 MiB; 5.1 s, pool 160 MiB in all'."""
    parts = []
    for p in passes:
        n = p["sizes"] if isinstance(p["sizes"], int) else len(p["sizes"])
        parts.append(f"{n} {p['routine']} size{'s' * (n != 1)} in {p['capture_s']:.1f} s, "
                     f"pool +{mib(p['pool_bytes'])}")
    total = sum(p["capture_s"] for p in passes)
    return f"captured {'; '.join(parts)}; {total:.1f} s, pool {mib(pool_bytes)} in all"


class _Count(ProgressColumn):
    """'7/19' (or '3/30 s') for a task with a total, nothing for a phase without one."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit", "")
        return Text(f"{task.completed:.0f}/{task.total:.0f}{unit}" if task.total else "")


class ProgressView:
    """Callbacks for a measuring command. `console`: where progress goes (default: stderr);
    bars when it is a terminal (rich decides: a file, a pipe or TERM=dumb get plain lines)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal
        self._bars: Progress | None = None
        self._tasks: dict = {}        # kind -> task id
        self._t0: dict = {}           # kind -> start time
        self._last: dict = {}         # phase name without its "bs N: " -> seconds it took
        self._ticker: threading.Event | None = None
        self._bs = None               # the row being measured
        self._drawn = 0.0             # when the sampling bar was last drawn
        self._passes: list = []       # capture passes finished so far (full_and_piecewise)
        self._pass_start: dict = {}   # routine -> pool bytes when its pass started

    # ---- plain lines --------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A status line; while the rows bar runs it becomes that bar's status instead."""
        if self.live and "rows" in self._tasks:
            self._bars.update(self._tasks["rows"], status=text)
            self._bars.refresh()
            return
        self._line(text)

    __call__ = say

    def _line(self, text: str) -> None:
        out = self._bars.console if self._bars is not None else self.console
        out.print(Text(text), soft_wrap=True, highlight=False)

    # ---- events -------------------------------------------------------------------------
    def capture(self, done: int, total: int, size, seconds: float, pool_bytes: int,
                routine: str | None = None) -> None:
        """GraphRunner's on_capture: a bar of sizes captured, then the one-line summary. With
        `routine` (full_and_piecewise: one pass per routine) a bar per pass, as engines show
        them, and after the last pass one summary of both."""
        kind = "capture" if routine is None else f"capture {routine}"
        label = "" if routine is None else f" ({ROUTINE_LABELS.get(routine, routine)})"
        if done == 0:
            if routine is not None:
                self._pass_start[routine] = pool_bytes
                if routine == ROUTINES["full_and_piecewise"][0]:
                    self._passes = []
            self._start(kind, f"capturing CUDA graphs{label}", total)
            if not self.live:
                self._line(f"capturing CUDA graphs{label}: {total} sizes")
        elif self.live:
            self._update(kind, done, status=f"size {size}, pool {mib(pool_bytes)}")
        else:
            self._line(f"captured size {size}{label} ({done}/{total}, {seconds:.1f} s, "
                       f"pool {mib(pool_bytes)})")
        if done < total:
            return
        if routine is None:
            self._finish(kind, capture_summary(total, seconds, pool_bytes))
            return
        self._passes.append(dict(routine=routine, sizes=total, capture_s=seconds,
                                 pool_bytes=pool_bytes - self._pass_start.get(routine, 0)))
        if routine == LAST_ROUTINE:
            self._finish(kind, passes_summary(self._passes, pool_bytes))
        else:
            self._finish(kind, None)

    def rows(self, done: int, total: int, bs) -> None:
        """The sweep's on_rows: a bar of rows measured, its status the row's current stage."""
        if done == 0:
            self._start("rows", "measuring rows", total)
        self._drop("sampling")
        self._bs = bs
        if done < total:
            if self.live:
                self._update("rows", done, status=f"bs {bs}")
            else:
                self._line(f"row {done + 1} of {total}: bs {bs}")
        else:
            took = time.perf_counter() - self._t0.get("rows", time.perf_counter())
            self._finish("rows", f"measured {total} row{'s' * (total != 1)} in {took:.1f} s")

    def sampling(self, rounds: int, seconds: float, cap: float) -> None:
        """The sweep's on_round: a bar of the row's time cap, filled as its rotation runs
        (rows stop sooner once the speedup settles); nothing on plain lines, where the row's
        own lines say what is measured. Drawn at most four times a second."""
        if not self.live:
            return
        if rounds == 1 or "sampling" not in self._tasks:
            self._drop("sampling")
            self._start("sampling", f"bs {self._bs} sampling" if self._bs else "sampling", cap,
                        unit=" s")
        now = time.perf_counter()
        if now - self._drawn >= 0.25:
            self._drawn = now
            self._update("sampling", min(seconds, cap), status=f"{rounds} rounds")

    def phase(self, name: str, seconds) -> None:
        """on_phase: a long phase starts (seconds None) or ends (the seconds it took)."""
        kind = name.split(": ", 1)[-1]          # "bs 4: compiling" and "bs 16: compiling" alike
        if seconds is None:
            last = self._last.get(kind)
            hint = f" (the last took {last:.0f} s)" if last is not None else ""
            self._start(f"phase {name}", name, None)
            if self.live:
                self._update(f"phase {name}", 0, status=hint.strip(" ()"))
                self._tick()
            else:
                self._line(f"{name}{hint} ...")
            return
        self._last[kind] = seconds
        self._finish(f"phase {name}", f"{name}: {seconds:.1f} s")

    def close(self) -> None:
        """Stop any bar still running (after an interrupt, or before printing results)."""
        self._untick()
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
        self._tasks.clear()

    # ---- the bars -------------------------------------------------------------------------
    def _start(self, kind: str, description: str, total, unit: str = "") -> None:
        self._t0[kind] = time.perf_counter()
        if not self.live:
            return
        if self._bars is None:
            self._bars = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=30),
                _Count(),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, auto_refresh=False, transient=True)
            self._bars.start()
        self._tasks[kind] = self._bars.add_task(description, total=total, status="", unit=unit)
        self._bars.refresh()

    def _update(self, kind: str, done: int, status: str) -> None:
        if kind in self._tasks:
            self._bars.update(self._tasks[kind], completed=done, status=status)
            self._bars.refresh()

    def _finish(self, kind: str, line: str | None) -> None:
        """Remove a bar and print its closing line (none: the next bar's line closes it)."""
        if kind.startswith("phase"):
            self._untick()
        task = self._tasks.pop(kind, None)
        if task is not None:
            self._bars.remove_task(task)
        if line is not None:
            self._line(line)
        if self._bars is not None and not self._tasks:
            self._bars.stop()
            self._bars = None

    def _drop(self, kind: str) -> None:
        """Remove a bar without a line (a row's sampling bar, once the row moves on)."""
        task = self._tasks.pop(kind, None)
        if task is not None:
            self._bars.remove_task(task)

    def _tick(self) -> None:
        """Refresh twice a second until the phase ends (its elapsed time moves)."""
        self._untick()
        stop = self._ticker = threading.Event()
        bars = self._bars

        def run():
            while not stop.wait(0.5):
                bars.refresh()
        threading.Thread(target=run, daemon=True).start()

    def _untick(self) -> None:
        if self._ticker is not None:
            self._ticker.set()
            self._ticker = None


def plain_view(file=None) -> ProgressView:
    """A view that writes plain lines to `file` (default stderr), whatever it is."""
    return ProgressView(Console(file=file or sys.stderr, force_terminal=False,
                                color_system=None, soft_wrap=True))
