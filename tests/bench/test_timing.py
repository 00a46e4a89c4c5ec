import pytest

from microbench.bench.timing import interleave, quantile, replays_in_turns, settle, summarize


def test_summarize_known_samples():
    st = summarize([5, 1, 4, 2, 3])
    assert (st.median, st.p20, st.p80, st.n) == (3, 1.8, 4.2, 5)
    assert st.spread == pytest.approx((4.2 - 1.8) / 3)


def test_quantile_edges():
    assert quantile([7.0], 0.2) == 7.0
    assert quantile([1.0, 2.0], 0.5) == 1.5
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_settle_stops_when_spread_settles():
    it = iter([10.0] * 1000)
    st = settle(lambda: next(it), min_samples=10, threshold=0.01)
    assert st.n == 10 and st.median == 10.0


def test_settle_keeps_going_on_noise_until_max():
    vals = iter([1.0, 100.0] * 100)
    st = settle(lambda: next(vals), min_samples=10, max_samples=30, budget_s=60, threshold=0.01)
    assert st.n == 30


def _recorder(log, name, value=1.0):
    def sample():
        log.append(name)
        return value
    return sample


def test_interleave_rotates_in_balanced_order_and_pairs_rounds():
    log = []
    xs, stable = interleave({"a": _recorder(log, "a", 2.0), "b": _recorder(log, "b", 1.0),
                             "c": _recorder(log, "c", 3.0)}, min_rounds=4, max_rounds=4, budget_s=60)
    assert log == list("abc" "cba" "abc" "cba")
    assert xs == {"a": [2.0] * 4, "b": [1.0] * 4, "c": [3.0] * 4} and stable is True


def test_replays_in_turns_rotates_the_order_and_times_each_replay_alone():
    """Round r starts at graph r mod n; sample i of each graph is its replay in round i, timed
    between its two events once the end event was waited for, in microseconds (here a clock
    the replays advance by a cost that changes from round to round)."""
    clock, order, waited = [0.0], [], []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing
            self.t = None

        def record(self):
            self.t = clock[0]
            waited.append(False)

        def synchronize(self):
            waited[-1] = True

        def elapsed_time(self, end):   # milliseconds, as CUDA events give them
            assert waited[-1], "read before the end event was waited for"
            return end.t - self.t

    class Graph:
        def __init__(self, name, ms):
            self.name, self.ms, self.replays = name, ms, 0

        def replay(self):
            order.append(self.name)
            clock[0] += self.ms * (1 + self.replays)   # round i costs (i + 1) times the base
            self.replays += 1

    graphs = {n: Graph(n, ms) for n, ms in (("a", 0.001), ("b", 0.002), ("c", 0.004))}
    times = replays_in_turns(graphs, 4, event=Event)
    assert order == list("abc" "bca" "cab" "abc")
    assert {n: [round(t, 6) for t in ts] for n, ts in times.items()} == {
        "a": [1.0, 2.0, 3.0, 4.0], "b": [2.0, 4.0, 6.0, 8.0], "c": [4.0, 8.0, 12.0, 16.0]}


def test_interleave_stops_on_the_rule_checked_every_few_rounds():
    log, asked = [], []

    def done(xs):
        asked.append(len(xs["a"]))
        return len(xs["a"]) >= 17
    xs, stable = interleave({"a": _recorder(log, "a"), "b": _recorder(log, "b")}, done,
                            min_rounds=10, max_rounds=200, budget_s=60, check_every=5)
    assert asked == [10, 15, 20] and len(xs["a"]) == len(xs["b"]) == 20 and stable is True


def test_interleave_at_the_cap_is_unstable():
    xs, stable = interleave({"a": lambda: 1.0}, lambda xs: False, min_rounds=10, max_rounds=30,
                            budget_s=60)
    assert len(xs["a"]) == 30 and stable is False
    xs, stable = interleave({"a": lambda: 1.0}, lambda xs: False, min_rounds=10, max_rounds=10**6,
                            budget_s=0.0)
    assert len(xs["a"]) == 10 and stable is False          # the time cap, after the minimum


def test_interleave_runs_between_before_each_round_off_the_time_cap(monkeypatch):
    """`between` runs once before every round, outside the samples, and its time is not charged
    to the budget: a between that takes 10 s does not stop a 1 s rotation at its minimum."""
    import time as time_mod

    from microbench.bench import timing
    now = [0.0]
    monkeypatch.setattr(time_mod, "perf_counter", lambda: now[0])
    log = []

    def sampler(name, us):
        def s():
            log.append(name)
            now[0] += us * 1e-6
            return us
        return s

    def between():
        log.append("between")
        now[0] += 10.0

    xs, stable = timing.interleave({"a": sampler("a", 5.0), "b": sampler("b", 7.0)}, None,
                                   min_rounds=3, max_rounds=6, budget_s=1.0, between=between)
    assert len(xs["a"]) == len(xs["b"]) == 6 and stable
    assert log == ["between", "a", "b", "between", "b", "a"] * 3
    # without `between` charged off the clock, the same 10 s would end it at its minimum
    now[0], log[:] = 0.0, []
    xs, _ = timing.interleave({"a": sampler("a", 5.0), "b": sampler("b", 7.0)}, None,
                              min_rounds=3, max_rounds=6, budget_s=1.0,
                              on_round=lambda *a: now.__setitem__(0, now[0] + 10.0))
    assert len(xs["a"]) == 3


def test_interleave_counts_only_rounds_the_host_was_quiet_around():
    """A round counts when quiet() said yes just before and just after it; min_rounds and
    max_rounds count counted rounds; counts says how many of each and which were kept."""
    # (before, after) per round: r1 turns slow during it, r2 starts slow, r0, r3, r4 quick
    answers = iter([True, True, True, False, False, True, True, True, True, True])
    r = iter(range(100))
    counts = {}
    xs, stable = interleave({"a": lambda: float(next(r))}, min_rounds=3, max_rounds=3,
                            budget_s=60, quiet=lambda: next(answers), counts=counts)
    assert xs == {"a": [0.0, 3.0, 4.0]} and stable is True
    assert counts == {"rounds": 5, "quiet_rounds": 3, "kept": [0, 3, 4]}


def test_interleave_asks_quiet_after_between_just_before_each_round():
    """The answer before a round is taken after between() (which may move the thread or sample
    other figures), not the one after the round before: a host that turns slow in between()
    drops the next round though the round before ended quick and the round itself ends quick."""
    host = {"quick": True, "betweens": 0}
    log = []

    def between():
        log.append("between")
        host["betweens"] += 1
        host["quick"] = host["betweens"] != 2      # slow only in the second between()

    def quiet():
        log.append("quiet")
        return host["quick"]
    r = iter(range(100))

    def sample():
        host["quick"] = True                        # quick again by the round's end
        return float(next(r))
    xs, _ = interleave({"a": sample}, lambda xs: True, min_rounds=2, max_rounds=20,
                       budget_s=60, between=between, quiet=quiet)
    assert log[:4] == ["between", "quiet", "quiet", "between"]
    assert xs == {"a": [0.0, 2.0]}


def test_interleave_with_a_host_never_quiet_keeps_every_round_after_a_second_cap(monkeypatch):
    """With too few counted rounds at the time cap it goes on for up to another cap, then
    returns every round taken, unstable; quiet()'s own time is off the clock."""
    import time as time_mod
    now = [0.0]
    monkeypatch.setattr(time_mod, "perf_counter", lambda: now[0])

    def sample():
        now[0] += 0.15
        return 1.0

    def quiet():
        now[0] += 5.0
        return False
    counts = {}
    xs, stable = interleave({"a": sample, "b": sample}, lambda xs: True, min_rounds=10,
                            max_rounds=200, budget_s=1.0, quiet=quiet, counts=counts)
    # 0.3 s a round: past the second 1 s cap after 7 rounds
    assert counts == {"rounds": 7, "quiet_rounds": 0, "kept": list(range(7)),
                      "quiet_fallback": True}
    assert len(xs["a"]) == len(xs["b"]) == 7 and stable is False


class _FakeGpu:
    """One stream on a fake clock: the host spends `launch_us` per call it enqueues (perf_counter
    reads the host clock), the GPU starts each piece of work once it is enqueued and the work
    before it has ended, a sleep of c cycles takes c / 1000 us and a kernel `kernel_us`; events
    read the GPU clock where they sit in the stream."""

    def __init__(self, launch_us: float, kernel_us: float):
        self.host = self.gpu = 0.0
        self.launch_us, self.kernel_us, self.sleeps = launch_us, kernel_us, []

    def run(self, us):
        self.gpu = max(self.gpu, self.host) + us

    def launch(self):
        self.host += self.launch_us
        self.run(self.kernel_us)

    def sleep(self, cycles):
        self.sleeps.append(cycles)
        self.run(cycles / 1000)

    def event(self):
        gpu = self

        class Event:
            def __init__(self, enable_timing=False):
                self.at = None

            def record(self):
                gpu.run(0.0)
                self.at = gpu.gpu

            def synchronize(self):
                gpu.host = max(gpu.host, self.at)

            def elapsed_time(self, other):
                return (other.at - self.at) / 1e3   # milliseconds, as CUDA events give
        return Event


def _fake_cuda(monkeypatch, launch_us, kernel_us):
    import time

    import torch
    gpu = _FakeGpu(launch_us, kernel_us)
    monkeypatch.setattr(torch.cuda, "Event", gpu.event())
    monkeypatch.setattr(torch.cuda, "_sleep", gpu.sleep)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: gpu.run(0.0))
    monkeypatch.setattr(time, "perf_counter", lambda: gpu.host / 1e6)
    return gpu


def test_queued_gpu_time_is_the_gpus_rate_once_the_sleep_outlasts_the_enqueueing(monkeypatch):
    from microbench.bench.timing import queued_gpu_time_us
    # the host takes 12 us a launch, the GPU 2 us a kernel: 100 launches need 1200 us of host
    # time ahead of the GPU; a 64 us sleep is too short, so the sleep doubles until it is not
    gpu = _fake_cuda(monkeypatch, launch_us=12.0, kernel_us=2.0)
    st = queued_gpu_time_us(gpu.launch, inner=100, sleep_cycles=64_000, min_samples=3,
                            budget_s=1e9)
    assert st.median == pytest.approx(2.0)
    assert gpu.sleeps[:6] == [64_000, 128_000, 256_000, 512_000, 1_024_000, 2_048_000]
    # the sleep found long enough serves every later sample: one try each
    assert gpu.sleeps[5:] == [2_048_000] * st.n


def test_queued_gpu_time_gives_up_on_a_host_slower_than_the_longest_sleep(monkeypatch):
    from microbench.bench.timing import MAX_SLEEP_CYCLES, queued_gpu_time_us
    # a host taking a second a launch: no sleep up to the cap outlasts 100 launches
    gpu = _fake_cuda(monkeypatch, launch_us=1e6, kernel_us=2.0)
    with pytest.raises(RuntimeError, match="longer than the longest sleep kernel tried"):
        queued_gpu_time_us(gpu.launch, inner=100, min_samples=3, budget_s=1e9)
    assert max(gpu.sleeps) <= MAX_SLEEP_CYCLES


def test_queued_gpu_time_without_a_long_enough_sleep_would_time_the_host(monkeypatch):
    from microbench.bench import timing
    # the same fake through plain gpu_time_us: the events time the host's launch rate, which
    # the queued figure must not (this is the difference the sleep makes)
    gpu = _fake_cuda(monkeypatch, launch_us=12.0, kernel_us=2.0)
    st = timing.gpu_time_us(gpu.launch, inner=100, min_samples=3, budget_s=1e9)
    assert st.median == pytest.approx(12.0, rel=0.01)


@pytest.mark.gpu
def test_queued_triton_kernels_run_faster_than_the_host_launches_them():
    """On a GPU: a tiny Triton kernel queued behind the sleep costs the GPU less per launch than
    the host takes to launch it (the events timed the GPU, not the host feeding it), and no
    less than its time as a graph node less a microsecond (a stream launch is no cheaper)."""
    import torch

    from microbench.kernels.noop import add_one
    from microbench.bench.timing import graph_of, gpu_time_us, host_time_us, queued_gpu_time_us
    x = torch.zeros(64, device="cuda")
    fn = lambda: add_one(x)
    host = host_time_us(fn, inner=100, budget_s=0.3).median
    queued = queued_gpu_time_us(fn, inner=100, budget_s=0.3).median
    node = gpu_time_us(graph_of(fn, 100).replay, inner=10, budget_s=0.3).median / 100
    assert 0 < queued < host and queued > node - 1.0
