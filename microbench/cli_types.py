"""How the `microbench` command parses, fails and saves: option types that check their values,
the command group that turns every error into one line on stderr and an exit code, reading a
run argument, and writing a run as it grows."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from microbench.bench.env import GPURequired
from microbench.engine.ladders import parse_int_list
from microbench.engine.shapes import MAX_BATCH
from microbench.report.record import RunFileError, load_run, run_id, write_run


class IntList(click.ParamType):
    name = "LIST"

    def __init__(self, lo: int = 1, hi: int | None = None):
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        allowed = f"{self.lo}..{self.hi}" if self.hi else f">= {self.lo}"
        try:
            vals = [int(t) for t in str(value).split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers "
                      f"(allowed: each {allowed}, e.g. 1,4,16)", param, ctx)
        if min(vals) < self.lo:
            self.fail(f"{min(vals)} is below the minimum {self.lo} (allowed: each {allowed})",
                      param, ctx)
        if self.hi is not None and max(vals) > self.hi:
            self.fail(f"{max(vals)} is above the limit {self.hi} (allowed: {self.lo}..{self.hi})",
                      param, ctx)
        return tuple(vals)


class Ladder(click.ParamType):
    name = "LADDER"

    def convert(self, value, param, ctx):
        if value in ("vllm", "sglang", "pow2"):
            return value
        try:
            vals = parse_int_list(value, "ladder")
        except ValueError:
            self.fail(f"{value!r} is not vllm, sglang, pow2 or a list like 1,2,4,8", param, ctx)
        if max(vals) > MAX_BATCH:
            self.fail(f"size {max(vals)} is above the limit {MAX_BATCH}", param, ctx)
        return ",".join(str(v) for v in sorted(set(vals)))


class ExperimentName(click.ParamType):
    name = "NAME"

    def convert(self, value, param, ctx):
        from microbench.bench.phenomena import NAMES
        if value in NAMES:
            return value
        self.fail(f"unknown experiment {value!r}; choose from {', '.join(NAMES)}", param, ctx)


class CLI(click.Group):
    """Errors become one line on stderr and an exit code, never a traceback:
    2 for bad usage, 1 for a missing GPU, 130 for Ctrl-C."""

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name or "microbench",
                              standalone_mode=False, **extra)
        except click.UsageError as e:
            click.echo(f"microbench: error: {e.format_message()}", err=True)
            sys.exit(2)
        except GPURequired as e:
            click.echo(f"microbench: {e}", err=True)
            sys.exit(1)
        except RuntimeError as e:
            if type(e).__name__ == "RankFailed":   # microbench.bench.tp: a TP rank died; say which
                click.echo(f"microbench: {e}", err=True)
                sys.exit(1)
            if "out of memory" not in str(e).lower():
                raise
            click.echo("microbench: the GPU ran out of memory for these options; lower --bs or "
                       "--context, or pick a smaller --preset", err=True)
            sys.exit(1)
        except (click.Abort, KeyboardInterrupt):
            click.echo("microbench: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            click.echo(f"microbench: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


def usage(e: Exception | str):
    """A usage error: one line on stderr, exit code 2."""
    raise click.UsageError(str(e))


# A user's runs go to runs/ (git-ignored); the curated reference runs live in results/.
OUT = click.option("--out", type=click.Path(file_okay=False), default="runs", show_default=True,
                   help="Folder the run is written into (as <out>/<run-id>/).")


class Saver:
    """on_run for a measuring loop: writes the run into <out>/<run-id>/ each time it changes,
    the id fixed at the first write (it names the device the run recorded)."""

    def __init__(self, out: str, kind: str, tag: str, write=write_run):
        self.out, self.kind, self.tag, self.write, self.dir = Path(out), kind, tag, write, None

    def __call__(self, run: dict) -> None:
        self.dir = self.dir or self.out / run_id(self.kind, run["env"], self.tag)
        self.write(self.dir, run)


def read_run_arg(path, what: str) -> dict:
    """The validated run at path, or a usage error (one line, exit 2) saying what is wrong."""
    try:
        return load_run(path)
    except RunFileError as e:
        usage(f"{what}: {e}")

NO_PIN_CPU = click.option(
    "--no-pin-cpu", is_flag=True,
    help="Leave the measuring thread wherever the scheduler puts it. By default each row's "
         "rotation keeps it on a quick CPU, moving it when its CPU turns slow "
         "(docs/measuring.md).")
