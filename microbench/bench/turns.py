"""`--repeat K` processes that take the GPU in turns, so each row's K figures are measured
one right after another.

Run one after another, K processes measure the same batch size minutes apart, and a host
whose speed drifts over minutes (bench.hostcpu) then moves a host-bound eager step, and the
speedup with it, from one process to the next: the spread across processes shows the drift,
not the processes. Here the K processes start together and each stops at a gate before each
phase of its sweep (the build and capture, each batch size's row, the device figures after the
rows). The parent lets one process through at a time and waits until it reaches its next gate
(or exits) before letting the next through, so only one process uses the GPU or times
anything at once while the others block on a pipe. The order rotates from one phase to the
next (1 2 3, then 2 3 1, then 3 1 2), so no process always measures first, as a balanced AB/BA
order does. The cost is memory: all K hold their decoder and graphs at once.

The protocol is a line per gate on two pipes per child, named in TURN_ENV as "read_fd,write_fd"
(the child's ends): the child writes the phase's name and reads a line before it goes on;
end of file on the child's pipe means it exited (the child takes the variable out of its
environment and keeps its ends from the processes it starts). A child that exits with a status
other than 0 stops the others: the repeat fails on it, and their remaining phases would be
thrown away.
"""
from __future__ import annotations

import os
import subprocess

TURN_ENV = "MICROBENCH_TURN_FDS"


class Gate:
    """The child's side: `gate(name)` says it is ready for phase `name` and waits for its turn.
    The pipes are this process's alone: a process it starts (a compile worker, a nested
    command) neither inherits them nor holds its parent's end of file back."""

    def __init__(self, read_fd: int, write_fd: int):
        for fd in (read_fd, write_fd):
            os.set_inheritable(fd, False)
        self._r = os.fdopen(read_fd, "r")
        self._w = os.fdopen(write_fd, "w")

    def __call__(self, name: str) -> None:
        try:
            self._w.write(name.replace("\n", " ") + "\n")
            self._w.flush()
            line = self._r.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise RuntimeError("--repeat: the parent process went away")


def gate_from_env() -> Gate | None:
    """The gate a --repeat parent handed this process in TURN_ENV, or None (a process on its
    own, which never waits). The variable is taken out of the environment, so processes this
    one starts run on their own."""
    v = os.environ.pop(TURN_ENV, None)
    if not v:
        return None
    try:
        read_fd, write_fd = (int(x) for x in v.split(","))
    except ValueError:
        raise ValueError(f"{TURN_ENV}: expected 'read_fd,write_fd', got {v!r}") from None
    return Gate(read_fd, write_fd)


class _Child:
    """The parent's side of one child: its process, the pipe it says 'ready' on, the pipe its
    turns are given on."""

    def __init__(self, cmd, env, popen):
        to_child_r, go_w = os.pipe()
        ready_r, from_child_w = os.pipe()
        env = {**env, TURN_ENV: f"{to_child_r},{from_child_w}"}
        try:
            self.proc = popen(cmd, stdout=subprocess.DEVNULL, env=env,
                              pass_fds=(to_child_r, from_child_w))
        except BaseException:
            for fd in (go_w, ready_r):
                os.close(fd)
            raise
        finally:
            # only the child holds its ends, so its exit is end of file here
            os.close(to_child_r)
            os.close(from_child_w)
        self._ready = os.fdopen(ready_r, "r")
        self._go = os.fdopen(go_w, "w")
        self.at: str | None = None   # the phase it waits at; None once it has exited

    def wait_gate(self) -> None:
        line = self._ready.readline()
        self.at = line.rstrip("\n") if line else None

    def go(self) -> None:
        try:
            self._go.write("go\n")
            self._go.flush()
        except BrokenPipeError:   # it exited between its gate and its turn
            self.at = None

    def failed(self) -> bool:
        """Whether it has exited (end of file on its pipe) with a status other than 0."""
        return self.at is None and self.proc.wait() != 0

    def close(self) -> int | None:
        """Its pipes closed and its exit status (None: killed here, after another failed)."""
        for f in (self._go, self._ready):
            try:
                f.close()
            except OSError:
                pass
        return self.proc.wait()


def rotated(items: list, turn: int) -> list:
    """`items` starting at position turn mod len (1 2 3, 2 3 1, 3 1 2, ...)."""
    if not items:
        return []
    i = turn % len(items)
    return items[i:] + items[:i]


def run_in_turns(cmds: list, envs: list, popen=subprocess.Popen, on_turn=None) -> list:
    """Start every command at once (stdout to /dev/null, each with its env and a gate) and let
    them through their gates one at a time, in an order that rotates each phase; returns their
    exit statuses once all have exited. A process that exits with a status other than 0 stops
    the run: the others are killed, and their statuses are None (the failed one names the
    cause). on_turn(i, phase) is told before process i (0-based) takes its turn at `phase`."""
    kids, stopped = [], set()
    try:
        for cmd, env in zip(cmds, envs):
            kids.append(_Child(cmd, env, popen))
        for kid in kids:
            kid.wait_gate()
        turn = 0
        while any(k.at is not None for k in kids) and not any(k.failed() for k in kids):
            for i in rotated([i for i, k in enumerate(kids) if k.at is not None], turn):
                if on_turn:
                    on_turn(i, kids[i].at)
                kids[i].go()
                kids[i].wait_gate()   # its phase done: at its next gate, or exited
                if kids[i].failed():
                    break
            turn += 1
        stopped = {i for i, k in enumerate(kids) if k.at is not None}
        for i in stopped:
            kids[i].proc.kill()
    except BaseException:
        for kid in kids:
            kid.proc.kill()
        raise
    finally:
        codes = []
        for kid in kids:   # every child reaped, whatever happened to the others
            try:
                codes.append(kid.close())
            except BaseException:
                kid.proc.kill()
                codes.append(None)
    return [None if i in stopped else c for i, c in enumerate(codes)]
