"""When each program of the fused attention starts, passes its PDL wait and ends, in a graphed
decode step: where a one-row attention's time on the critical path goes.

usage: python scripts/attention_timeline.py --preset llama-8b --bs 1 [--replays 30] [--table PATH]

Builds the graphed step `microbench tune --ab` times (bench.tune._graphed_step), with
rope_store_attention launching a copy of its kernel that reads the GPU's global timer
(%globaltimer) at three points of every program: its start, just past its PDL wait, and its end
(after the merge, in the program that merges; as the thread that stores the record reaches it),
and stores them with its SM's number. The timer counts nanoseconds but moves in coarser ticks:
the script prints the smallest step between the times it read, and a gap below it reads 0. The
decoder's own kernel is not touched: the copy is made from its source with the three reads and
one more pointer argument added, and the module's launch is patched only while the step is
built. `--table PATH` binds the skinny matmuls with the gemv table at PATH instead of the
device's (the matmul before the attention decides when its programs can start). Before each
replay the records are zeroed; after it the script checks that every program wrote its row
(0 < start <= past the wait <= end) and prints, as medians over the layers and replays:

  lead     how long the first program started before the wait released (release = the
           earliest pass of the wait: the QKV matmul before it has finished)
  late     how many programs had not started at the release (they load their first K and V
           tiles, which the others loaded before it, after the matmul ended)
  last     the release to the last program's start (negative: every program had started)
  passed   the release to the last program past its wait
  work     one program's wait to end (median over programs)
  span     the release to the last program's end: the attention's share of the critical path,
           less its exit

and, from the first layer of the first replay, how many SMs its programs ran on.

Needs a CUDA GPU of compute capability 9.0 or newer (PDL). This is a probe, like
step_probe.py: what it finds goes into the kernels and the docs, measured by the toolkit's own
commands."""
import importlib
import inspect
import linecache
import os
import sys
import textwrap

import click
import numpy as np
import torch

from microbench.engine.shapes import PRESETS

RSA = importlib.import_module("microbench.kernels.rope_store_attention")
_launch = RSA.launch
FIELDS = 4   # per program: start, past the wait, end (ns), SM
NAME = "<rope_attend_timed>"   # the copy's source file name, for linecache and tracebacks
# (anchor in the kernel's source, text inserted after it): each anchor must occur exactly once
PATCHES = (
    ("sem_ptr,", " times_ptr,"),
    ("    split = tl.program_id(2)\n", "    t_start = tl.extra.cuda.globaltimer()\n"),
    ("    pdl_enter(USE_PDL)\n", "    t_wait = tl.extra.cuda.globaltimer()\n"),
)
# appended at the kernel body's own indent, so it runs last in every program
TAIL = f"""    t_end = tl.extra.cuda.globaltimer()
    rec = times_ptr + ((b * HKV + kvh) * num_splits + split) * {FIELDS}
    tl.store(rec, t_start)
    tl.store(rec + 1, t_wait)
    tl.store(rec + 2, t_end)
    tl.store(rec + 3, tl.extra.cuda.smid().to(tl.int64))
"""


def timed_source(src: str) -> str:
    """The fused attention kernel's source with the timer reads and the record's pointer."""
    for anchor, add in PATCHES:
        if src.count(anchor) != 1:
            raise RuntimeError(f"attention_timeline: {anchor.strip()!r} occurs {src.count(anchor)} "
                               f"times in _rope_attend_kernel's source, not once: update PATCHES")
        src = src.replace(anchor, anchor + add)
    return src.rstrip("\n") + "\n" + TAIL


def kernel_source() -> str:
    """The fused attention kernel's Python source, from its `def` (no decorator)."""
    src = textwrap.dedent(inspect.getsource(RSA._rope_attend_kernel.fn))
    return src[src.index("def "):]


def timed_kernel():
    """A JIT kernel built from timed_source, with the module's globals (its helpers, tl)."""
    import triton
    src = timed_source(kernel_source())
    # inspect.getsource, which the JIT calls, finds source registered in linecache
    linecache.cache[NAME] = (len(src), None, src.splitlines(True), NAME)
    scope = dict(vars(RSA))
    exec(compile(src, NAME, "exec"), scope)
    return triton.jit(scope["_rope_attend_kernel"])


class Recorder:
    """The patched launch: every rope_store_attention launch goes to the timed kernel, with a
    record of grid·FIELDS int64 per (K cache, grid), so each layer keeps its own."""

    def __init__(self):
        self.kernel = timed_kernel()
        self.records = {}
        params = list(inspect.signature(RSA._rope_attend_kernel.fn).parameters)
        self.cache_arg = params.index("kc_ptr")   # the layer's K cache keys its record
        self.sem_arg = params.index("sem_ptr")    # the record's pointer goes after it

    def launch(self, record, kernel, grid, *args, **kw):
        if kernel is not RSA._rope_attend_kernel:
            return _launch(record, kernel, grid, *args, **kw)
        key = (args[self.cache_arg].data_ptr(), tuple(grid))
        if key not in self.records:
            n = int(np.prod(grid))
            self.records[key] = torch.zeros(n * FIELDS, dtype=torch.int64, device=args[0].device)
        sem = self.sem_arg
        args = args[:sem + 1] + (self.records[key],) + args[sem + 1:]
        return _launch(record, self.kernel, grid, *args, **kw)

    def reset(self):
        """Zero every record, so a program that does not write its row shows."""
        for r in self.records.values():
            r.zero_()

    def snapshot(self) -> list:
        """Each layer's record, [programs, FIELDS], in the order the layers first launched."""
        return [r.view(-1, FIELDS).cpu().numpy() for r in self.records.values()]


def layer_metrics(rec: np.ndarray) -> dict:
    """The module docstring's metrics (us, and a count) for one layer's record."""
    start, passed, end = (rec[:, i].astype(np.float64) for i in range(3))
    if not ((start > 0) & (start <= passed) & (passed <= end)).all():
        raise ValueError("attention_timeline: a program's record is missing or out of order "
                         "(not 0 < start <= past the wait <= end)")
    release = passed.min()
    return {"lead": (release - start.min()) / 1e3,
            "late": int((start > release).sum()),
            "last": (start.max() - release) / 1e3,
            "passed": (passed.max() - release) / 1e3,
            "work": float(np.median(end - passed)) / 1e3,
            "span": (end.max() - release) / 1e3}


def summarise(snapshots: list) -> dict:
    """Median of every metric over all layers of all snapshots, the programs a launch, and the
    timer's step (the smallest gap between distinct times read, us)."""
    rows = [layer_metrics(rec) for snap in snapshots for rec in snap]
    if not rows:
        raise ValueError("attention_timeline: no attention launch was recorded")
    out = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    out["programs"] = int(snapshots[0][0].shape[0])
    out["sms"] = len(np.unique(snapshots[0][0][:, 3]))   # the first layer of the first replay
    times = np.unique(np.concatenate([rec[:, :3].ravel() for snap in snapshots for rec in snap]))
    out["tick"] = float(np.diff(times).min()) / 1e3 if len(times) > 1 else 0.0
    return out


@click.command()
@click.option("--preset", required=True, type=click.Choice(list(PRESETS)))
@click.option("--bs", type=click.IntRange(1, 512), default=1, show_default=True)
@click.option("--context", type=click.IntRange(1, 8192), default=512, show_default=True)
@click.option("--replays", type=click.IntRange(1, 1000), default=30, show_default=True)
@click.option("--table", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a gemv table to bind the skinny matmuls with (default: the device's)")
def main(preset, bs, context, replays, table):
    kw = {}
    if table is not None:
        from microbench.cli_tune import previous_table_problem
        problem = previous_table_problem(table, name="table")
        if problem:
            raise click.BadParameter(problem, param_hint="--table")
        os.environ["MICROBENCH_TIMELINE_TABLE"] = table   # _graphed_step reads the path there
        kw["table_file"] = "MICROBENCH_TIMELINE_TABLE"
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        raise click.UsageError("attention_timeline reads a PDL kernel's timer on a CUDA GPU of "
                               "compute capability 9.0 or newer; none is visible")
    from microbench.bench import tune
    rec = Recorder()
    RSA.launch = rec.launch
    try:
        _, step = tune._graphed_step(preset, bs, context, **kw)
    finally:
        RSA.launch = _launch
    snaps = []
    for _ in range(replays):
        rec.reset()
        step()
        torch.cuda.synchronize()
        snaps.append(rec.snapshot())
    s = summarise(snaps)
    click.echo(f"{preset} bs {bs} context {context}{', table ' + table if table else ''}: "
               f"{len(snaps[0])} layers, {s['programs']} "
               f"programs a launch on {s['sms']} SMs, {replays} replays; medians over layers "
               f"and replays")
    click.echo(f"  lead {s['lead']:.2f} us  late {s['late']:.1f} programs  last {s['last']:.2f} "
               f"us  passed {s['passed']:.2f} us  work {s['work']:.2f} us  span {s['span']:.2f} us"
               f"  (timer step {s['tick']:.3f} us)")


if __name__ == "__main__":
    sys.exit(main())
