"""`microbench sweep --repeat K` on the CPU: each child's command line, and K fake processes
(writing synthetic runs where a child would) merged into one run."""
import json
from pathlib import Path

import pytest

from microbench.cli import sweep
from microbench.cli_repeat import child_argv, run_repeats


def params(**over):
    p = sweep.make_context("sweep", ["--bs", "1,4", "--arms", "eager,graph", "--split-launch",
                                     "--repeat", "3", "--json", "--out", "/x"])
    p.params.update(over)
    return p.params


def test_child_argv_repeats_every_option_but_its_own():
    argv = child_argv(sweep, params(), "/tmp/p1")
    assert argv[0] == "sweep" and argv[-5:] == ["--repeat", "1", "--out", "/tmp/p1", "--quiet"]
    assert argv[argv.index("--bs") + 1] == "1,4" and "--split-launch" in argv
    assert argv[argv.index("--arms") + 1] == "eager,graph"
    assert argv.count("--repeat") == 1 and "--json" not in argv and "/x" not in argv
    assert "--no-tp1" not in argv and "--no-pin-cpu" not in argv   # unset flags stay out
    assert "--no-pin-cpu" in child_argv(sweep, params(no_pin_cpu=True), "/tmp/p1")
    # the child's own parse gives the parent's options back
    child = sweep.make_context("sweep", argv[1:])
    for k in ("bs", "preset", "mode", "ladder", "context", "time_budget", "steps", "split_launch"):
        assert child.params[k] == params()[k], k


def fake_process(speedups):
    """A subprocess.run stand-in: the n-th call writes a run whose rows have speedups[n]."""
    calls = []

    def run(cmd):
        out = Path(cmd[cmd.index("--out") + 1])
        n = len(calls)
        calls.append(cmd)
        rows = [dict(bs=b, speedup=s) for b, s in zip((1, 4), speedups[n])]
        if rows:
            (out / "sweep-fake").mkdir(parents=True)
            (out / "sweep-fake" / "run.json").write_text(json.dumps(dict(
                kind="sweep", rows=rows, shape_check=dict(held=True), process=n)))
        return type("Done", (), dict(returncode=0 if rows else 1))()
    return run, calls


def test_run_repeats_merges_fresh_processes():
    run, calls = fake_process([(2.0, 1.5), (2.2, 1.5), (2.1, 1.6)])
    said = []
    merged = run_repeats(sweep, params(), 3, said.append, run=run)
    assert len(calls) == 3 and all(c[1] == "-c" and "--repeat" in c for c in calls)
    assert merged["process"] == 0                          # the first process's run
    assert merged["rows"][0]["speedup_repeats"] == [2.0, 2.2, 2.1]
    assert merged["rows"][1]["speedup_repeat_spread"] == pytest.approx(1.6 / 1.5 - 1)
    assert merged["repeats"]["k"] == 3 and said[0] == "repeat 1 of 3: a fresh process"
    # the merged run records the user's command, not a child's (those stay under repeats)
    assert "--repeat 1" not in merged["env"]["command"]
    assert len(merged["repeats"]["commands"]) == 3


def test_a_process_that_writes_nothing_is_an_error():
    run, _ = fake_process([(2.0, 1.5), ()])
    with pytest.raises(RuntimeError, match="process 2 of 2 failed"):
        run_repeats(sweep, params(), 2, run=run)


def test_a_process_that_fails_after_saving_rows_is_not_merged():
    """A process that crashed mid-sweep may have saved its partial rows: its exit status
    fails the repeat rather than letting those rows into the merge."""
    run, _ = fake_process([(2.0, 1.5), (2.1, 1.5)])

    def failing(cmd):
        done = run(cmd)
        return type("Done", (), dict(returncode=1 if "process-2" in " ".join(cmd) else done.returncode))()
    with pytest.raises(RuntimeError, match="process 2 of 2 failed .exit status 1.$"):
        run_repeats(sweep, params(), 2, run=failing)
