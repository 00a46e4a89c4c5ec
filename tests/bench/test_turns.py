"""bench.turns on the CPU, with real child processes: they start together, and each phase runs
in one process at a time, in an order that rotates from phase to phase."""
import os
import signal
import subprocess
import sys
import time

import pytest

from microbench.bench import turns

# A child: waits at a gate before each phase of argv[3] (comma-separated), then logs the
# phase's start, sleeps a little (long enough that a second process let through early would
# overlap it) and logs its end; exits with status argv[4]. With argv[5] "stubborn" it ignores
# its parent going away and sleeps on (only a kill stops it).
CHILD = """
import sys, time
from microbench.bench.turns import gate_from_env
log, me, phases, code = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stubborn = sys.argv[5:] == ["stubborn"]
gate = gate_from_env()
for phase in filter(None, phases.split(",")):
    try:
        gate(phase)
    except RuntimeError:
        if stubborn:
            time.sleep(60)
        raise
    with open(log, "a") as f:
        f.write(f"{me} {phase} start\\n")
    time.sleep(0.15)
    with open(log, "a") as f:
        f.write(f"{me} {phase} end\\n")
sys.exit(code)
"""


def children(tmp_path, specs, *extra):
    """Commands for run_in_turns: one child per (phases, exit status), each given `extra`
    arguments; and the log path."""
    log = tmp_path / "log"
    return [[sys.executable, "-c", CHILD, str(log), str(i), phases, str(code), *extra]
            for i, (phases, code) in enumerate(specs)], log


def spans(log):
    """[(process, phase)] in the order they ran, checking that each start is followed by its
    own end (no other process started in between)."""
    lines = [l.split() for l in log.read_text().splitlines()]
    assert len(lines) % 2 == 0
    out = []
    for start, end in zip(lines[::2], lines[1::2]):
        assert start[2] == "start" and end[2] == "end" and start[:2] == end[:2], (start, end)
        out.append((int(start[0]), start[1]))
    return out


def test_processes_take_each_phase_in_turns_in_a_rotating_order(tmp_path):
    cmds, log = children(tmp_path, [("a,b,c", 0)] * 3)
    told = []
    codes = turns.run_in_turns(cmds, [{}] * 3, on_turn=lambda i, phase: told.append((i, phase)))
    assert codes == [0, 0, 0]
    ran = spans(log)   # one process at a time
    assert ran == [(0, "a"), (1, "a"), (2, "a"), (1, "b"), (2, "b"), (0, "b"),
                   (2, "c"), (0, "c"), (1, "c")]
    assert told == ran


def test_a_process_that_exits_early_leaves_the_others_their_turns(tmp_path):
    """One process ends before its first gate and another after one phase, both with status
    0: the rest still run every phase, one at a time."""
    cmds, log = children(tmp_path, [("a,b", 0), ("", 0), ("a", 0)])
    assert turns.run_in_turns(cmds, [{}] * 3) == [0, 0, 0]
    assert sorted(spans(log)) == [(0, "a"), (0, "b"), (2, "a")]


def test_a_process_that_fails_stops_the_others(tmp_path):
    """A process that exits with a status other than 0 fails the repeat, so the others get no
    more turns: they are killed (status None) and the failed one's status comes back."""
    cmds, log = children(tmp_path, [("a,b,c", 0), ("a", 3), ("a,b,c", 0)])
    assert turns.run_in_turns(cmds, [{}] * 3) == [None, 3, None]
    assert spans(log) == [(0, "a"), (1, "a")]


def test_a_process_killed_while_it_waits_for_its_turn_stops_the_others(tmp_path):
    """Killed at its gate (out of memory, a signal), its turn finds its pipe closed: the run
    stops there instead of hanging."""
    cmds, log = children(tmp_path, [("a,b", 0)] * 3)
    procs = []

    def popen(cmd, **kw):
        procs.append(subprocess.Popen(cmd, **kw))
        return procs[-1]

    def kill_the_third(i, phase):
        if (i, phase) == (1, "a"):
            procs[2].kill()
            procs[2].wait()
    codes = turns.run_in_turns(cmds, [{}] * 3, popen=popen, on_turn=kill_the_third)
    assert codes[2] == -signal.SIGKILL and codes[:2] == [None, None]
    assert spans(log) == [(0, "a"), (1, "a")]


def test_a_child_started_alone_does_not_wait(monkeypatch, tmp_path):
    monkeypatch.delenv(turns.TURN_ENV, raising=False)
    assert turns.gate_from_env() is None
    monkeypatch.setenv(turns.TURN_ENV, "three")
    with pytest.raises(ValueError, match="MICROBENCH_TURN_FDS: expected 'read_fd,write_fd'"):
        turns.gate_from_env()


def test_a_child_whose_parent_went_away_stops_at_its_gate():
    """The gate's pipes closed (the parent killed or gone): the child raises, not hangs, whether
    the parent closed only its side of the turns or both pipes."""
    r, w = os.pipe()
    r2, w2 = os.pipe()
    os.close(w)          # nothing will ever say go
    gate = turns.Gate(r, w2)
    with pytest.raises(RuntimeError, match="the parent process went away"):
        gate("bs 1")
    assert os.read(r2, 100) == b"bs 1\n"
    os.close(r2)         # and now nobody reads what it says either
    with pytest.raises(RuntimeError, match="the parent process went away"):
        gate("bs 4")


def test_the_gate_is_this_process_alone(monkeypatch):
    """A child's gate is not handed on: the variable leaves its environment and its pipe ends
    are not inherited by processes it starts."""
    r, w = os.pipe()
    os.set_inheritable(r, True)
    os.set_inheritable(w, True)
    monkeypatch.setenv(turns.TURN_ENV, f"{r},{w}")
    gate = turns.gate_from_env()
    assert turns.TURN_ENV not in os.environ
    assert not os.get_inheritable(r) and not os.get_inheritable(w)
    gate._r.close()
    gate._w.close()


def test_rotated():
    assert turns.rotated([0, 1, 2], 0) == [0, 1, 2]
    assert turns.rotated([0, 1, 2], 4) == [1, 2, 0]
    assert turns.rotated([], 3) == []


def test_children_are_killed_when_the_parent_is_interrupted(tmp_path):
    """An interrupt while waiting (Ctrl-C) kills every child, even one that would outlive its
    closed gate, rather than leaving them running."""
    cmds, _ = children(tmp_path, [("a,b", 0)] * 2, "stubborn")
    procs = []

    def popen(cmd, **kw):
        procs.append(subprocess.Popen(cmd, **kw))
        return procs[-1]

    def interrupt(i, phase):
        raise KeyboardInterrupt
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        turns.run_in_turns(cmds, [{}] * 2, popen=popen, on_turn=interrupt)
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    assert time.monotonic() - t0 < 30
