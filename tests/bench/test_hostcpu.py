"""The host CPU pin (bench.hostcpu) with a fake probe: it chooses the quickest CPU, stays while
that CPU stays quick, moves when it turns slow, and gives every CPU back after a rotation; a
row sampled with a pin reports what it did; the probe loop itself on this machine."""
import os

import pytest
import torch

from microbench.bench import hostcpu, rows
from microbench.bench.hostcpu import SLOW, HostPin, loop_us
from microbench.bench.rows import Arm, Budget, measure_row, wall_timer
from tests.bench.test_rows import Clock


class Host:
    """Fake CPUs: speed[c] is the probe time on CPU c; `pinned` what the thread may use now."""

    def __init__(self, speed):
        self.speed, self.pinned, self.probed = dict(speed), set(speed), []

    def set_cpus(self, cs):
        self.pinned = set(cs)

    def probe(self, cpu):
        assert self.pinned == {cpu}, "a CPU is timed while the thread is pinned to it alone"
        self.probed.append(cpu)
        return self.speed[cpu]

    def get_cpus(self):
        return set(self.pinned)

    def pin(self, cpus=None, every_round=True, **kw):
        return HostPin(cpus=cpus if cpus is not None else self.speed, probe=self.probe,
                       set_cpus=self.set_cpus, get_cpus=self.get_cpus, every_round=every_round,
                       **kw)


def test_chooses_the_quickest_cpu_and_stays_while_it_is_quick():
    host = Host({0: 100.0, 1: 60.0, 2: 80.0})
    pin = host.pin()
    pin.check()                      # the first check chooses (not a move: no CPU before it)
    assert pin.current == 1 and host.pinned == {1} and pin.moves == 0
    assert pin.chosen_us == 60.0     # a fresh probe on the chosen CPU
    host.speed[1] = 60.0 * (SLOW - 0.05)   # a little slower: within the allowance, kept
    host.probed.clear()
    pin.check()
    assert host.probed == [1] and pin.current == 1 and pin.moves == 0


def test_moves_when_its_cpu_turns_slow():
    host = Host({0: 100.0, 1: 60.0, 2: 80.0})
    pin = host.pin()
    pin.check()
    host.speed[1] = 120.0            # CPU 1 turns slow (another tenant on its core)
    pin.check()
    assert pin.current == 2 and host.pinned == {2} and pin.moves == 1
    s = pin.summary()
    assert s == dict(cpus_used=2, moves=1, checks=1, loop_us=120.0, loop_us_range=[120.0, 120.0])
    # with a reference, the summary says what waiting for the host did
    ref = host.pin(reference=hostcpu.Reference(50.0))
    assert ref.summary()["reference_us"] == 50.0 and ref.summary()["slow_rounds"] == 0


def test_release_gives_every_cpu_back_and_the_next_check_chooses_again():
    host = Host({3: 50.0, 5: 70.0})
    pin = host.pin()
    pin.check()
    pin.release()
    assert host.pinned == {3, 5} and pin.current is None
    host.speed[3] = 90.0
    pin.check()
    assert pin.current == 5


def test_a_pinned_row_reports_the_pin_and_releases_it(monkeypatch):
    host = Host({0: 100.0, 1: 60.0})
    clk = Clock(monkeypatch, {"eager": 20.0, "graph": 10.0})
    b = Budget(steps=1, budget_s=60, pin=host.pin)
    arms = {"eager": Arm(clk.arm("eager"), wall_timer("eager_", b)),
            "graph": Arm(clk.arm("graph"), wall_timer("graph_", b))}
    row = measure_row(arms, 1, 1, "full")
    # one choice after the warm-up, a check before each round
    assert row["host_pin"]["checks"] == row["eager_n"] and row["host_pin"]["cpus_used"] == 1
    assert host.pinned == {0, 1}
    unpinned = measure_row({k: Arm(a.step, wall_timer(a.time.prefix, Budget(1, 60)))
                            for k, a in arms.items()}, 1, 1, "full")
    assert "host_pin" not in unpinned


def test_the_pin_is_released_when_a_sample_fails(monkeypatch):
    host = Host({0: 100.0, 1: 60.0})
    clk = Clock(monkeypatch, {"eager": iter([20.0] * 8), "graph": 10.0})   # runs out mid-row
    b = Budget(steps=1, budget_s=60, pin=host.pin)
    arms = {"eager": Arm(clk.arm("eager"), wall_timer("eager_", b)),
            "graph": Arm(clk.arm("graph"), wall_timer("graph_", b))}
    with pytest.raises(StopIteration):
        measure_row(arms, 1, 1, "full")
    assert host.pinned == {0, 1}


def test_a_rank_pin_chooses_once_and_never_moves_inside_the_row(monkeypatch):
    host = Host({0: 100.0, 1: 60.0, 2: 70.0, 3: 50.0})
    clk = Clock(monkeypatch, {"eager": 20.0, "graph": 10.0})
    share = hostcpu.rank_share(1, 2, host.speed)
    assert share == [1, 3] and hostcpu.rank_share(0, 2, host.speed) == [0, 2]
    b = Budget(steps=1, budget_s=60, pin=lambda: host.pin(share, every_round=False))
    arms = {"eager": Arm(clk.arm("eager"), wall_timer("eager_", b)),
            "graph": Arm(clk.arm("graph"), wall_timer("graph_", b))}
    row = measure_row(arms, 1, 1, "full")
    assert sorted(host.probed) == [1, 3, 3]   # its share timed once, the chosen CPU again, no more
    assert row["host_pin"]["checks"] == 0 and row["host_pin"]["cpus_used"] == 1
    assert host.pinned == {0, 1, 2, 3}                   # every CPU it had, back after the row
    assert hostcpu.rank_share(5, 8, [0, 1]) == [0, 1]    # more ranks than CPUs: all of them


def test_a_failing_probe_leaves_the_thread_its_cpus():
    host = Host({0: 100.0, 1: 60.0})

    def probe(cpu):
        raise KeyboardInterrupt
    pin = HostPin(cpus=[0, 1], probe=probe, set_cpus=host.set_cpus, get_cpus=host.get_cpus)
    with pytest.raises(KeyboardInterrupt):
        pin.check()
    assert host.pinned == {0, 1} and pin.current is None


def test_pin_factory():
    assert hostcpu.pin_factory(False) is None
    made = hostcpu.pin_factory(True, cpus=[0, 1], every_round=False)
    if hostcpu.can_pin():
        p = made()
        assert p.allowed == [0, 1] and p.every_round is False
    else:
        assert made is None


def test_the_probe_loop_times_real_work():
    a, b = loop_us(n=2000), loop_us(n=20000)
    assert 0 < a < b


@pytest.mark.skipif(not hostcpu.can_pin(), reason="needs sched_setaffinity and two CPUs")
def test_a_real_pin_moves_this_thread_and_gives_it_back():
    before = os.sched_getaffinity(0)
    pin = HostPin()
    c = pin.choose()
    assert os.sched_getaffinity(0) == {c}
    pin.release()
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hostcpu.can_pin(), reason="needs sched_setaffinity and two CPUs")
def test_on_quick_cpu_pins_the_block_only():
    before = os.sched_getaffinity(0)
    with hostcpu.on_quick_cpu() as pin:
        assert os.sched_getaffinity(0) == {pin.current}
    assert os.sched_getaffinity(0) == before
    with hostcpu.on_quick_cpu(False) as pin:
        assert pin is None and os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hostcpu.can_pin(), reason="needs sched_setaffinity and two CPUs")
def test_a_pin_on_a_share_gives_back_every_cpu_the_thread_had():
    before = os.sched_getaffinity(0)
    pin = HostPin(cpus=hostcpu.rank_share(0, 2))
    pin.choose()
    pin.release()
    assert os.sched_getaffinity(0) == before


def test_reproduce_pins_unless_told_not_to():
    from types import SimpleNamespace

    from microbench.bench import lab, reproduce
    on = lab.Lab.budget(SimpleNamespace(cfg=reproduce.ReproduceConfig()))
    off = lab.Lab.budget(SimpleNamespace(cfg=reproduce.ReproduceConfig(pin_cpu=False)))
    assert off.pin is None and (on.pin is not None) == hostcpu.can_pin()


def test_the_cli_passes_no_pin_cpu_to_both_commands():
    from microbench.cli import reproduce, sweep
    for cmd in (sweep, reproduce):
        assert cmd.make_context(cmd.name, ["--no-pin-cpu"]).params["no_pin_cpu"] is True
        assert cmd.make_context(cmd.name, []).params["no_pin_cpu"] is False


# ---- a slow host: every CPU slow at once -------------------------------------------------
class Sleeper:
    """time.sleep's stand-in: records each sleep and runs `then(n)` after the n-th (n from 1)."""

    def __init__(self, then=lambda n: None):
        self.slept, self.then = [], then

    def __call__(self, s):
        self.slept.append(s)
        self.then(len(self.slept))


REAL_THROTTLE = hostcpu.THROTTLE   # read at import, before the conftest turns waiting off


@pytest.fixture
def throttle(monkeypatch):
    """THROTTLE as the code has it (the suite's conftest turns waiting off)."""
    assert 1 < REAL_THROTTLE < 2
    monkeypatch.setattr(hostcpu, "THROTTLE", REAL_THROTTLE)
    return REAL_THROTTLE


def test_a_slow_host_is_waited_for_until_it_recovers(throttle):
    host = Host({0: 210.0, 1: 200.0})          # every CPU about twice its quick time
    sleep = Sleeper(lambda n: host.speed.update({0: 105.0, 1: 100.0}) if n == 3 else None)
    ref = hostcpu.Reference(100.0)
    pin = host.pin(reference=ref, sleep=sleep)
    assert pin.check() is True                 # it waited: the caller re-warms its steps
    assert sleep.slept == [hostcpu.RECOVERY_S] * 3 and pin.waited_s == 3 * hostcpu.RECOVERY_S
    assert pin.current == 1 and pin.chosen_us == 100.0 and pin.slow_rounds == 0
    assert pin.check() is False and pin.summary()["waited_s"] == 3 * hostcpu.RECOVERY_S


def test_a_host_that_stays_slow_is_waited_for_within_the_pins_wait_then_counted(throttle):
    host = Host({0: 210.0, 1: 200.0})
    sleep = Sleeper()
    pin = host.pin(reference=hostcpu.Reference(100.0), sleep=sleep, wait_s=1.0)
    pin.check()
    assert sum(sleep.slept) == pytest.approx(1.0) and pin.current == 1
    pin.check()
    pin.check()                                # no more waiting: the rounds run, counted slow
    assert sum(sleep.slept) == pytest.approx(1.0) and pin.slow_rounds == 2
    s = pin.summary()
    assert s["slow_rounds"] == 2 and s["waited_s"] == pytest.approx(1.0) and s["reference_us"] == 100.0


def test_a_cpu_slowing_within_its_allowance_but_past_the_hosts_is_chosen_again(throttle):
    """Chosen within THROTTLE of the reference (not slow), the CPU then reads past it: within
    SLOW of its own choice, but a slow host by the reference, so the pin times the CPUs and
    waits."""
    chosen, later = 100.0 * (1 + (throttle - 1) / 2), 100.0 * (throttle + 0.04)
    host = Host({0: chosen, 1: 300.0})
    sleep = Sleeper(lambda n: host.speed.update({0: 101.0}))
    pin = host.pin(reference=hostcpu.Reference(100.0), sleep=sleep)
    pin.check()
    assert pin.chosen_us == chosen and sleep.slept == []
    host.speed[0] = later
    assert later < SLOW * chosen and later > throttle * 100.0
    assert pin.check() is True and pin.chosen_us == 101.0 and pin.slow_rounds == 0


def test_without_a_reference_a_pin_never_waits_and_a_quicker_host_lowers_the_reference(throttle):
    host = Host({0: 210.0, 1: 200.0})
    sleep = Sleeper()
    pin = host.pin(sleep=sleep)
    pin.check()
    assert sleep.slept == [] and "waited_s" not in pin.summary()
    ref = hostcpu.Reference()
    pin = host.pin(reference=ref, sleep=sleep)
    pin.check()                                # the first choice sets the reference
    assert ref.us == 200.0 and sleep.slept == []
    host.speed.update({0: 90.0, 1: 95.0})
    pin.release()
    pin.check()
    assert ref.us == pytest.approx(117.5)      # a quicker host lowers it: [200, 90]'s quartile


def test_the_reference_is_the_lower_quartile_of_fresh_probes_or_a_lower_given_time():
    """One lucky probe among typical ones does not become the host's quick time (a tight
    THROTTLE would then call a quick host slow); a parent's lower time does."""
    ref = hostcpu.Reference()
    assert ref.us is None
    for us in (95.0, 96.0, 94.0, 95.0, 97.0, 95.0, 96.0, 77.0):
        ref.update(us)
    assert 94.0 < ref.us <= 95.0
    assert hostcpu.Reference(90.0).us == 90.0
    given = hostcpu.Reference(90.0)
    given.seen = list(ref.seen)
    assert given.us == 90.0                    # the parent's time, lower than the own quartile
    higher = hostcpu.Reference(120.0)
    higher.seen = list(ref.seen)
    assert higher.us == ref.us                 # the own quartile, lower than the parent's


def test_rotations_wait_but_tp_ranks_do_not(monkeypatch):
    monkeypatch.setattr(hostcpu, "can_pin", lambda: True)
    assert hostcpu.pin_factory(True)().reference is hostcpu.HOST
    assert hostcpu.pin_factory(True, [0, 1], every_round=False)().reference is None


def test_the_reference_comes_from_a_repeat_parent(monkeypatch):
    monkeypatch.setenv(hostcpu.REF_ENV, "111.5")
    assert hostcpu._inherited() == 111.5
    for bad in ("", "fast", "-3"):
        monkeypatch.setenv(hostcpu.REF_ENV, bad)
        assert hostcpu._inherited() is None


def test_a_round_after_a_wait_starts_with_one_untimed_step_of_each_arm():
    calls = []
    arms = {n: (lambda n=n: calls.append(n), None) for n in ("eager", "graph")}
    waits = iter([True, False])
    pin = type("Pin", (), dict(check=lambda self: next(waits)))()
    rows._check_pin(pin, arms)
    assert calls == ["eager", "graph"]
    rows._check_pin(pin, arms)
    assert calls == ["eager", "graph"]


def test_a_wait_in_the_rows_first_check_is_followed_by_an_untimed_step(monkeypatch, throttle):
    """The rotation's first check chooses the CPU after the warm-up; when it slept waiting for
    the host, each arm takes one untimed step before the first timed sample."""
    host = Host({0: 210.0, 1: 200.0})
    sleep = Sleeper(lambda n: host.speed.update({0: 105.0, 1: 100.0}) if n == 2 else None)
    clk = Clock(monkeypatch, {"eager": 20.0, "graph": 10.0})
    b = Budget(steps=1, budget_s=60,
               pin=lambda: host.pin(reference=hostcpu.Reference(100.0), sleep=sleep))
    arms = {}
    for name in ("eager", "graph"):
        def step(name=name):     # an untimed call (the fake sampler times without calling)
            clk.log.append((name, len(sleep.slept)))
        step.name = name
        arms[name] = Arm(step, wall_timer(f"{name}_", b))
    row = measure_row(arms, 1, 1, "full")
    assert row["host_pin"]["waited_s"] == 2 * hostcpu.RECOVERY_S
    first_sample = next(i for i, e in enumerate(clk.log) if isinstance(e, str))
    assert clk.log[first_sample - 2:first_sample] == [("eager", 2), ("graph", 2)]
    assert all(e[1] == 0 for e in clk.log[:first_sample - 2])       # the warm-up, before


# ---- rounds the host was not quiet around ---------------------------------------------------
def test_quiet_is_a_fresh_probe_within_the_tolerance_of_the_reference(monkeypatch):
    monkeypatch.setenv(hostcpu.QUIET_ENV, "1.04")
    host = Host({0: 100.0})
    pin = host.pin(reference=hostcpu.Reference(100.0))
    assert pin.quiet_tol == 1.04 and pin.quiet() is True     # no CPU chosen yet: no judgement
    pin.check()
    host.probed.clear()
    host.speed[0] = 104.0
    assert pin.quiet() is True and host.probed == [0]
    host.speed[0] = 104.5
    assert pin.quiet() is False
    assert host.pin().quiet_tol is None                       # no reference (a TP rank): none
    monkeypatch.setenv(hostcpu.QUIET_ENV, "0")
    assert host.pin(reference=hostcpu.Reference(100.0)).quiet_tol is None
    monkeypatch.delenv(hostcpu.QUIET_ENV)
    assert hostcpu.quiet_tolerance() == hostcpu.QUIET_DEFAULT
    for bad in ("tight", "nan", "inf", "0.5", "-1"):
        monkeypatch.setenv(hostcpu.QUIET_ENV, bad)
        with pytest.raises(ValueError, match=hostcpu.QUIET_ENV):
            hostcpu.quiet_tolerance()
    monkeypatch.setenv(hostcpu.QUIET_ENV, "1")
    assert hostcpu.quiet_tolerance() == 1.0


def test_figures_sampled_beside_the_rounds_keep_the_counted_rounds_only(monkeypatch):
    """The CUDA-event times and what a timer samples beside each round (the eager arm's op host
    costs) keep the rounds the host was quick around, as the step times do."""
    monkeypatch.setenv(hostcpu.QUIET_ENV, "1.04")
    host = Host({0: 100.0})
    answers = iter([True, True, True, False] + [True] * 100)   # round 1 ends slow: dropped
    rounds = iter(range(1000))

    def sampler(fn, inner, sync=None, events=None):
        def sample():
            r = next(rounds) // 2                  # both arms' samples of round r
            if events is not None:
                events.append(float(r))
            return 20.0 if fn.name == "eager" else 10.0
        return sample
    Clock(monkeypatch, {})
    monkeypatch.setattr(rows, "wall_sampler", sampler)
    kept = []

    def make_pin():
        pin = HostPin(cpus=[0], probe=host.probe, set_cpus=host.set_cpus,
                      get_cpus=host.get_cpus, reference=hostcpu.Reference(100.0))
        pin.quiet = lambda: next(answers)
        return pin
    b = Budget(steps=1, budget_s=60, pin=make_pin)
    step = lambda: torch.zeros(2)
    step.name = "eager"
    gstep = lambda: torch.zeros(2)
    gstep.name = "graph"
    arms = {"eager": Arm(step, rows.Timer("eager_", b, keep=kept.extend)),
            "graph": Arm(gstep, rows.Timer("graph_", b, event=True))}
    row = measure_row(arms, 1, 1, "full")
    assert row["host_pin"]["quiet_rounds"] == row["eager_n"] == row["host_pin"]["rounds"] - 1
    assert kept[:2] == [0, 2] and 1 not in kept and "kept" not in row["host_pin"]
    taken = range(row["host_pin"]["rounds"])
    assert row["graph_event_us"] == rows.summarize([float(i) for i in kept]).median
    assert row["graph_event_us"] != rows.summarize([float(i) for i in taken]).median


class Drifting:
    """A host that is slow for 18 rounds, then quick for 18, and so on: slow, its probe loop
    reads 8% over the reference (inside THROTTLE: nothing waits) and the host-bound eager step
    15% over its quick time; the graph step is GPU-bound and never moves. Each sample moves
    time on."""

    def __init__(self):
        self.n = 0

    def slow(self):
        return (self.n // 36) % 2 == 0

    def samples(self, quick, slow):
        while True:
            v = slow if self.slow() else quick
            self.n += 1
            yield v

    def probe(self, cpu):
        return 108.0 if self.slow() else 100.0


@pytest.mark.parametrize("tol, want", [("1.04", 600.0 / 255.0), ("0", 690.0 / 255.0)])
def test_a_row_counts_the_rounds_of_a_quick_host_only(monkeypatch, tol, want):
    """Sampled while the host is slow more often than not, the row's speedup is the slow host's
    unless rounds the host was slow around are dropped: then it is the quick host's."""
    monkeypatch.setenv(hostcpu.QUIET_ENV, tol)
    host, drift = Host({0: 100.0}), Drifting()
    clk = Clock(monkeypatch, {"eager": drift.samples(600.0, 690.0),
                              "graph": drift.samples(255.0, 255.0)})
    b = Budget(steps=1, budget_s=60, pin=lambda: HostPin(
        cpus=[0], probe=drift.probe, set_cpus=host.set_cpus, get_cpus=host.get_cpus,
        reference=hostcpu.Reference(100.0)))
    arms = {"eager": Arm(clk.arm("eager"), wall_timer("eager_", b)),
            "graph": Arm(clk.arm("graph"), wall_timer("graph_", b))}
    row = measure_row(arms, 1, 1, "full")
    assert row["speedup"] == pytest.approx(want)
    pin = row["host_pin"]
    assert pin["rounds"] >= row["eager_n"]
    if tol == "0":
        assert "quiet_rounds" not in pin and pin["quiet_tol"] is None
    else:
        assert pin["quiet_rounds"] == row["eager_n"] < pin["rounds"] and pin["quiet_tol"] == 1.04
