"""`microbench sweep --repeat K`: the same sweep measured in K fresh processes, as pyperf's
worker processes are, so that what one process's state does to the figures (where the
allocator put the weights, which clocks the GPU settled at, which CPUs it ran on) shows as
spread across processes instead of hiding in one process's interval.

Each process is the same command with `--repeat 1`, a temporary `--out` and `--quiet`. With
`--repeat-mode interleaved` (the default at TP 1) they start together and take the GPU in
turns, one phase of their sweeps at a time, in an order that rotates (bench.turns), so each
row's K figures are measured one right after another and a host whose speed drifts over
minutes moves all K alike; `sequential` runs one after another (one GPU; under --tp each
process starts its own ranks, so TP runs are sequential). Their run.json files are merged by
`stats.merge_repeats`: each row from the process with that row's median speedup, the first kept
process's device figures and footer, plus, per row, `speedup_repeats` (every process's median
speedup) and `speedup_repeat_spread` (max / min - 1), and a `repeats` record (k, the mode, the
worst spread, each process's shape check).

Each child is told the host's quick probe time (bench.hostcpu's MICROBENCH_HOST_LOOP_US): the
lowest of the parent's own (the lower quartile of PARENT_SCANS scans before the first child,
which, like a row's, wait for a slow host) and the children's so far (each one's last row's;
processes started together are all told the same), so a child that starts while the whole host
is slow waits for it, as the rows of one process do, instead of measuring another host.

A child's wait for a slow host is capped (hostcpu.HOST_WAIT_S a rotation): a slow phase longer
than that leaves rounds sampled on a slow host, which the child counts (`host_pin.slow_rounds`).
Under the quiet rule those rounds are dropped with the others the host was not quick around,
unless the row, short of quick rounds, kept them all (hostcpu.slow_in_figures). The child
samples a row whose figures keep them again at its next turns, up to sweep.ROW_RETRIES times
(sweep.measure_until_quick); a row still slow after them leaves a process that describes
another host, so up to EXTRA more processes are run to replace those
(the count, from the host probe, is known before any speedup is looked at; interleaved, the
replacements start together once the first K have finished); the merged run lists each
replaced process and its slow rows under `repeats.replaced`, and which processes it kept under
`repeats.kept`. A process is replaced only while enough tries are left to reach K; after that
it is kept as it is, and listed under `repeats.slow_kept`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from microbench.bench import hostcpu, turns
from microbench.report.tables import slow_text
from microbench.stats import merge_repeats

# the child: this package's CLI under the same interpreter (no reliance on PATH)
CHILD = "import sys; from microbench.cli import main; sys.exit(main())"
# options the parent sets for each child
OWN = ("repeat", "repeat_mode", "out", "as_json", "quiet")
PARENT_SCANS = 5   # the parent times the CPUs this many times before the first child
EXTRA = 2          # at most this many more processes replace ones measured on a slow host


def slow_rows(run: dict) -> list:
    """The rows of a child's run whose figures keep rounds sampled on a slow host, after its
    wait ran out (hostcpu.slow_in_figures: under the quiet rule, only rows that fell back to
    every round): [{"bs", "slow_rounds"}, ...] ([] for a run whose figures are all quick)."""
    return [dict(bs=r["bs"], slow_rounds=hostcpu.slow_in_figures(r.get("host_pin")))
            for r in run.get("rows", []) if hostcpu.slow_in_figures(r.get("host_pin"))]


def child_argv(command: click.Command, params: dict, out: str) -> list[str]:
    """The command line of one child: every option of `command` as parsed into `params` (lists
    joined by commas, flags given when set, unset options left out), then `--repeat 1 --out
    OUT --quiet`."""
    argv = [command.name]
    for p in command.params:
        if not isinstance(p, click.Option) or p.name in OWN or p.name not in params:
            continue
        v = params[p.name]
        flag = max(p.opts, key=len)
        if p.is_flag:
            argv += [flag] if v else []
        elif v is not None:
            argv += [flag, ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)]
    return argv + ["--repeat", "1", "--out", out, "--quiet"]


def run_repeats(command: click.Command, params: dict, k: int, say=None,
                run=subprocess.run, mode: str = "sequential",
                in_turns=turns.run_in_turns) -> dict:
    """Run the command's sweep in k fresh processes and merge their runs
    (stats.merge_repeats). `mode`: "sequential", one process after another, each started by
    `run` (subprocess.run's signature); "interleaved", the processes still needed started
    together and run by `in_turns` (bench.turns.run_in_turns' signature), which lets them
    through their phases one at a time. A process that writes no run raises RuntimeError
    naming it."""
    say = say or (lambda s: None)
    runs, kept, replaced, slow_kept = [], [], [], []
    with hostcpu.on_quick_cpu(not params.get("no_pin_cpu", False)) as pin:
        for _ in range(PARENT_SCANS - 1 if pin is not None else 0):
            pin.choose()          # the parent's own reference: the quartile of its scans
    ref = hostcpu.HOST.us         # then the lowest of it and the children's, for the next
    with tempfile.TemporaryDirectory(prefix="microbench-repeat-") as tmp:
        i = 0
        while len(runs) < k and i < k + EXTRA:
            n = min(k - len(runs), k + EXTRA - i) if mode == "interleaved" else 1
            procs = list(range(i + 1, i + n + 1))
            i += n
            outs = [Path(tmp) / f"process-{p}" for p in procs]
            env = dict(os.environ)
            if ref is not None:
                env[hostcpu.REF_ENV] = f"{ref:.3f}"
            cmds = [[sys.executable, "-c", CHILD, *child_argv(command, params, str(out))]
                    for out in outs]
            # a child's own table is not printed: the merged run's is, once, after the last
            if mode == "interleaved":
                say((f"repeat: {n} fresh processes at once, taking the GPU in turns" if n > 1
                     else "repeat: a fresh process")
                    + (f" (process{'es' if n > 1 else ''} {', '.join(map(str, procs))}, "
                       f"{len(replaced)} replaced)" if replaced else ""))
                codes = in_turns(cmds, [env] * n, on_turn=lambda j, phase: say(
                    f"process {procs[j]}: {phase}"))
            else:
                say(f"repeat {len(runs) + 1} of {k}: a fresh process"
                    + (f" (process {i}, {len(replaced)} replaced)" if replaced else ""))
                codes = [run(cmds[0], stdout=subprocess.DEVNULL, env=env).returncode]
            # one that failed stopped the others (their status None): it is the one named
            order = sorted(range(n), key=lambda j: codes[j] in (0, None))
            for p, out, code in ((procs[j], outs[j], codes[j]) for j in order):
                found = sorted(out.glob("*/run.json"))
                if code != 0 or not found:
                    # a failed process may still have saved its partial rows: not merged
                    which = f"{p} of {k}" if not replaced else f"{p} ({len(replaced)} replaced)"
                    raise RuntimeError(f"--repeat: process {which} failed (exit status "
                                       f"{code}{'' if found else ', no run written'})")
                child = json.loads(found[0].read_text())
                # the child's reference, for the next: its last row's, the quartile of all its
                # probes (an early row's rests on one or two, as near its luck as a minimum)
                theirs = [r["host_pin"]["reference_us"] for r in child.get("rows", [])
                          if (r.get("host_pin") or {}).get("reference_us")]
                if theirs:
                    ref = theirs[-1] if ref is None else min(ref, theirs[-1])
                slow = slow_rows(child)
                if slow and k + EXTRA - p >= k - len(runs):   # a later one can still replace it
                    replaced.append(dict(process=p, slow_rows=slow))
                    say(f"process {p} sampled on a slow host after its wait ran out "
                        f"({slow_text(slow)}); another process replaces it")
                    continue
                if slow:
                    slow_kept.append(dict(process=p, slow_rows=slow))
                runs.append(child)
                kept.append(p)
    merged = merge_repeats(runs)
    merged["repeats"].update(mode=mode, kept=kept, replaced=replaced, slow_kept=slow_kept)
    if mode == "interleaved":   # each kept process's time waiting for its turns, off its wall_s
        merged["repeats"]["turn_wait_s"] = [r.get("turn_wait_s") for r in runs]
    # the run is the user's command; each process's own command line stays under `repeats`
    merged["repeats"]["commands"] = [r.get("env", {}).get("command") for r in runs]
    merged["env"] = {**merged.get("env", {}),
                     "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    return merged
