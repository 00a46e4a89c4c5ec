"""Keeps the measuring thread on a quick CPU while a row is sampled.

On a shared host (a VM whose virtual CPUs share physical cores with other work) one CPU can run
far slower than the others for seconds at a time, and which CPUs are slow moves as the host's
load moves. A host-bound eager step then reads longer or shorter depending on where and when it
ran, and the speedup with it (`scripts/cpu_probe.py` times every CPU in turn and shows it).
Pinning to a fixed CPU does not help: the slow one changes. So after a rotation's warm-up the
thread goes to the quickest CPU, and before each round of the rotation
(timing.interleave's `between`, off the clock) `HostPin.check` times a short pure-Python loop
on the CPU the thread is on; when that runs more than SLOW times its time when the CPU was
chosen, it times every CPU the process may use and moves the thread to the quickest. A row's
figures then describe the host at its quick state, as a benchmark on an isolated core would;
`--no-pin-cpu` measures wherever the scheduler puts the thread. TP ranks each choose once per
row, from their own share of the CPUs (`rank_share`), and never move inside it: a rank choosing
between rounds would hold the others up inside their timed collectives.

The quickest CPU can be slow too: on this kind of host every CPU at once runs at half speed or
less for seconds (another tenant's load on the physical machine). A row sampled then describes
another host, and a `--repeat` process that happens to run in such a phase reads a different
speedup for a host-bound eager step. So, as nvbench stops timing while the GPU's clock is
throttled and waits for it to recover, the pin keeps the host's quick probe time (`Reference`:
the lower quartile of the chosen CPUs' fresh probes in this process, or, when lower, the one a
`--repeat` parent passes in MICROBENCH_HOST_LOOP_US) and, while the quickest CPU runs more than
THROTTLE times it, sleeps RECOVERY_S and times the CPUs again, up to HOST_WAIT_S of sleep per
rotation (each scan between the sleeps adds well under a millisecond per CPU; all of it off the
row's time cap). A quartile, not the minimum: one lucky probe would otherwise set a time the host
rarely runs at, and a tight THROTTLE would then wait on a quick host (with only a few probes the
quartile is still near their lowest; a --repeat parent passes on each child's last row's).
Rounds that run on a slow host after that are counted in the row's `host_pin` (`slow_rounds`),
with the seconds slept. A process that starts on a slow host takes that as its reference until
quick probes make a quarter of its own, so it waits only once the host has been quick in its
sight (or its --repeat parent's). TP ranks' rows do not wait: a rank sleeping would hold the
others.

Within the quick state the host still moves: rounds whose probe loop is a few percent over the
reference run the host-bound eager step slower by as much or more (`scripts/host_series.py`
times a thousand rounds and shows it), and a row sampled over a second catches whichever level
the host was at. So a round counts only when the probe loop just before and just after it
(`HostPin.quiet`, timing.interleave's `quiet`) is within QUIET times the reference: rounds
the host was not quick around are taken and dropped, with what was sampled beside them, up to
another time cap, and a row that still has too few counted rounds keeps them all and is
unstable (`host_pin.quiet_rounds` of `rounds`, `quiet_fallback`).
MICROBENCH_HOST_QUIET sets QUIET for a run (0: count every round), for an A/B of the rule.

Only the calling thread is pinned, and only for the rotation (`release` restores the CPUs it
had), so compile workers, thread pools and other threads started outside the rotation (the arms'
set-up and warm-up included) keep every CPU; a thread or process started inside it would inherit
the one CPU.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from contextlib import contextmanager

SLOW = 1.15         # a check this much slower than the chosen CPU's time moves the thread
LOOP_N = 3000       # iterations of the probe loop: a fraction of a millisecond
REPS = 3            # a probe is the quickest of this many loops
THROTTLE = 1.10     # the quickest CPU this much slower than the host's reference: a slow host
RECOVERY_S = 0.25   # sleep between scans while the host is slow
HOST_WAIT_S = 15.0  # the most a rotation waits, in all, for a slow host to recover
REF_ENV = "MICROBENCH_HOST_LOOP_US"   # a --repeat parent's reference for its children
QUIET_ENV = "MICROBENCH_HOST_QUIET"
QUIET_DEFAULT = 1.04  # a round counts when the probes around it are within this of the reference


def quiet_tolerance() -> float | None:
    """QUIET for this process: QUIET_ENV when set (0: None, every round counts; otherwise a
    finite factor of at least 1), else QUIET_DEFAULT."""
    v = os.environ.get(QUIET_ENV, "")
    try:
        q = float(v) if v else QUIET_DEFAULT
    except ValueError:
        q = float("nan")
    if q == 0:
        return None
    if not (math.isfinite(q) and q >= 1):
        raise ValueError(f"{QUIET_ENV}: expected 0 (count every round) or a factor of at least "
                         f"1 such as 1.04, got {v!r}")
    return q


def loop_us(n: int = LOOP_N, reps: int = REPS) -> float:
    """The quickest of `reps` runs of a fixed pure-Python loop on this thread, in us."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        s = 0
        for i in range(n):
            s += i & 7
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def can_pin() -> bool:
    """Whether this platform lets a thread choose its CPU and more than one CPU is allowed."""
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1


class Reference:
    """The host's quick probe time, us: the lower quartile of the fresh probes of chosen CPUs
    seen so far (`update`), or the `given` time when that is lower (None: neither yet).
    `slow(t)`: a probe of `t` us is more than THROTTLE times it."""

    def __init__(self, given: float | None = None):
        self.given = given
        self.seen: list[float] = []

    def update(self, us: float) -> None:
        self.seen.append(us)

    @property
    def us(self) -> float | None:
        own = None
        if len(self.seen) == 1:
            own = self.seen[0]
        elif self.seen:
            own = statistics.quantiles(self.seen, n=4, method="inclusive")[0]
        known = [v for v in (self.given, own) if v is not None]
        return min(known) if known else None

    def slow(self, us: float) -> bool:
        return self.us is not None and us > THROTTLE * self.us


def _inherited() -> float | None:
    """The reference a --repeat parent passed in REF_ENV (None when absent or not a number)."""
    try:
        v = float(os.environ.get(REF_ENV, ""))
    except ValueError:
        return None
    return v if v > 0 else None


HOST = Reference(_inherited())   # this process's reference, shared by every row's pin


class HostPin:
    """Moves the calling thread to the quickest allowed CPU when its current one turns slow.
    `probe(cpu) -> us`, `set_cpus(cpus)` and `get_cpus()` default to the loop above and
    os.sched_setaffinity / getaffinity; tests pass fakes. `cpus`: the CPUs it may choose from
    (default: all this thread may use). `reference`: a Reference to wait on while the host is
    slow (None: never wait), `wait_s` the most this pin waits in all, `sleep` time.sleep."""

    def __init__(self, cpus=None, probe=None, set_cpus=None, get_cpus=None,
                 every_round: bool = True, reference: Reference | None = None,
                 wait_s: float = HOST_WAIT_S, sleep=None):
        get_cpus = get_cpus or (lambda: os.sched_getaffinity(0))
        self.allowed = sorted(cpus if cpus is not None else get_cpus())
        # False: chosen once per rotation, never moved (TP ranks, whose rounds must not wait)
        self.every_round = every_round
        self._set = set_cpus or (lambda cs: os.sched_setaffinity(0, cs))
        self._restore = set(get_cpus())     # what release gives back: the CPUs it had
        self._probe = probe or (lambda cpu: loop_us())
        self.current: int | None = None
        self.chosen_us = 0.0
        self.checks: list[float] = []   # every check's probe time, us
        self.moves = 0                  # changes from one chosen CPU to another
        self.used: set = set()
        self.reference, self.wait_s = reference, wait_s
        self._sleep = sleep or time.sleep
        self.waited_s = 0.0             # slept waiting for a slow host to recover (the sleeps)
        self.slow_rounds = 0            # checks that kept a CPU slower than the reference allows
        self.quiet_tol = quiet_tolerance() if reference is not None else None

    def _slow(self, us: float) -> bool:
        return self.reference is not None and self.reference.slow(us)

    def choose(self) -> int:
        """Time every allowed CPU (the thread pinned to each in turn) and stay on the quickest.
        Its reference time is a fresh probe there, not the scan's minimum (which a lucky reading
        would set too low, and every later check would then call slow). While that probe says
        the whole host is slow, sleep and time them again, within the pin's wait."""
        try:
            while True:
                times = {}
                for c in self.allowed:
                    self._set({c})
                    times[c] = self._probe(c)
                best = min(times, key=times.get)
                self._set({best})
                fresh = self._probe(best)
                if not self._slow(fresh) or self.waited_s + RECOVERY_S > self.wait_s:
                    break
                self._sleep(RECOVERY_S)
                self.waited_s += RECOVERY_S
        except BaseException:
            self._set(self._restore)
            self.current = None
            raise
        if self.current is not None and best != self.current:
            self.moves += 1
        self.current, self.chosen_us = best, fresh
        self.used.add(best)
        if self.reference is not None:
            self.reference.update(fresh)
        return best

    def check(self) -> bool:
        """Before a round: keep the current CPU while it is as quick as when chosen and the host
        is not slow; otherwise choose again. Returns whether it waited for the host (the steps
        that follow then start from an idle GPU)."""
        waited = self.waited_s
        if self.current is None:
            self.choose()
            return self.waited_s > waited
        t = self._probe(self.current)
        self.checks.append(t)
        if t > SLOW * self.chosen_us or (self._slow(t) and self.waited_s + RECOVERY_S <= self.wait_s):
            self.choose()
            t = self.chosen_us
        if self._slow(t):
            self.slow_rounds += 1
        return self.waited_s > waited

    def quiet(self) -> bool:
        """Whether the host is quick now: a fresh probe on the current CPU within quiet_tol
        times the reference (True when there is no tolerance, reference or CPU yet)."""
        if self.quiet_tol is None or self.current is None or self.reference.us is None:
            return True
        return self._probe(self.current) <= self.quiet_tol * self.reference.us

    def release(self) -> None:
        """Back to the CPUs the thread had before the pin; the next check chooses again."""
        self._set(self._restore)
        self.current = None

    def summary(self) -> dict:
        """What the pin did over its checks: CPUs used, moves, the probe loop's median and range;
        with a reference, its time, the seconds waited for the host, the slow rounds and the
        quiet tolerance (a row adds its rotation's round counts beside: rows.sample_rotation)."""
        xs = self.checks
        out = dict(cpus_used=len(self.used), moves=self.moves, checks=len(xs),
                   loop_us=statistics.median(xs) if xs else None,
                   loop_us_range=[min(xs), max(xs)] if xs else None)
        if self.reference is not None:
            out.update(reference_us=self.reference.us, waited_s=self.waited_s,
                       slow_rounds=self.slow_rounds, quiet_tol=self.quiet_tol)
        return out


def slow_in_figures(host_pin: dict | None) -> int:
    """The rounds of a row sampled on a slow host after its wait ran out that its figures keep,
    from the row's `host_pin`: all of its `slow_rounds` where every round counts (no quiet rule:
    `quiet_tol` None, or a run from before the rule) or where the row, short of quiet rounds,
    kept them all (`quiet_fallback`); otherwise none, since the probes around such a round are
    over THROTTLE, and so over QUIET, times the reference, and the round is dropped."""
    hp = host_pin or {}
    slow = hp.get("slow_rounds") or 0
    return slow if hp.get("quiet_tol") is None or hp.get("quiet_fallback") else 0


def pin_factory(enabled: bool, cpus=None, every_round: bool = True):
    """A rows.Budget `pin`: makes a HostPin over `cpus` per rotation, or None when not
    `enabled` or the platform cannot pin. Pins checked every round wait for a slow host
    (against HOST); a pin that chooses once (a TP rank) does not."""
    if not (enabled and can_pin()):
        return None
    return lambda: HostPin(cpus=cpus, every_round=every_round,
                           reference=HOST if every_round else None)


def rank_share(rank: int, world: int, cpus=None) -> list[int]:
    """Rank `rank`'s share of the CPUs (every world-th, from its own index), so ranks that
    each pick their quickest never pick the same one."""
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    share = cpus[rank::world]
    return share or cpus


@contextmanager
def on_quick_cpu(enabled: bool = True):
    """The block runs with this thread on the quickest allowed CPU as timed on entry, after
    waiting for a slow host (no move when not `enabled` or the platform cannot pin); the
    thread's CPUs come back on exit."""
    make = pin_factory(enabled)
    pin = make() if make is not None else None
    try:
        if pin is not None:
            pin.choose()
        yield pin
    finally:
        if pin is not None:
            pin.release()
