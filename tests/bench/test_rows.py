"""The one measured-row routine on the CPU, with fake arms (Python callables returning logits)
and a fake sampler (no CUDA): the row's fields, the check against the reference, the rotation's
order, the paired speedup and its interval, the stopping rule, and that the sweep's, the TP
sweep's and reproduce's arms give rows of the same timing fields."""
import itertools

import numpy as np
import pytest
import torch

from microbench.bench import rows
from microbench.bench.rows import Arm, Budget, Timer, measure_row, wall_timer
from microbench.bench.timing import Stats

TIMING = ("step_us", "p20", "p80", "n")


class Clock:
    """Fake samples: each arm's step logs its name; a sample of an arm is the next value of
    its time source (a number, or an iterator of numbers)."""

    def __init__(self, monkeypatch, times: dict):
        self.log, self.times = [], {k: v if not isinstance(v, (int, float)) else itertools.repeat(v)
                                    for k, v in times.items()}
        monkeypatch.setattr(rows, "wall_sampler", self.sampler)
        monkeypatch.setattr(rows, "gpu_time_us", lambda fn, **kw: Stats(8.0, 8.0, 8.0, 10))
        monkeypatch.setattr(rows, "host_time_us", lambda fn, **kw: Stats(3.0, 3.0, 3.0, 10))

    def sampler(self, fn, inner, sync=None, events=None):
        def sample():
            name = fn.name
            self.log.append(name)
            if events is not None:
                events.append(1.0)
            return float(next(self.times[name]))
        return sample

    def arm(self, name, shift=0.0):
        def step():
            return torch.arange(6, dtype=torch.float32).view(2, 3) + shift
        step.name = name
        return step


def test_row_has_every_field_and_reports_a_differing_arm(monkeypatch):
    clk = Clock(monkeypatch, {"eager": 20.0, "graph": 10.0, "torch-eager": 30.0})
    b = Budget(steps=1, budget_s=0.01)
    arms = {"eager": Arm(clk.arm("eager"), wall_timer("eager_", b)),
            "graph": Arm(clk.arm("graph"), wall_timer("graph_", b), diff="max_abs_diff"),
            "torch-eager": Arm(clk.arm("torch-eager", 0.25), wall_timer("torch_eager_", b),
                               diff="torch_eager_max_abs_diff")}
    said = []
    row = measure_row(arms, 2, 2, "full", said.append)
    want = {"bs", "padded_bs", "ran_as", "max_abs_diff", "torch_eager_max_abs_diff", "speedup",
            "speedup_ci", "speedup_ratios", "torch_eager_speedup", "torch_eager_speedup_ci", "stable",
            *(f"{p}_{f}" for p in ("eager", "graph", "torch_eager") for f in TIMING)}
    assert set(row) == want
    assert row["max_abs_diff"] == 0.0 and row["torch_eager_max_abs_diff"] == 0.25
    assert row["speedup"] == 2.0 and row["speedup_ci"] == [2.0, 2.0]
    assert row["torch_eager_speedup"] == 3.0 and row["stable"] is True
    assert row["speedup_ratios"] == [2.0] * row["eager_n"]
    assert said == ["bs 2: eager, graph, torch-eager in rotation"]


def test_arms_are_sampled_in_a_balanced_rotation(monkeypatch):
    """After each arm's warm-up, samples alternate: eager graph, graph eager, eager graph..."""
    clk = Clock(monkeypatch, {"eager": 20.0, "graph": 10.0})
    b = Budget(steps=1, budget_s=60)
    arms = {"eager": Arm(clk.arm("eager"), wall_timer("eager_", b)),
            "graph": Arm(clk.arm("graph"), wall_timer("graph_", b))}
    row = measure_row(arms, 1, 1, "full")
    assert clk.log[:6] == ["eager", "graph", "graph", "eager", "eager", "graph"]
    assert clk.log.count("eager") == clk.log.count("graph") == 10
    assert row["eager_n"] == row["graph_n"] == 10          # exact ratios settle at once


def test_speedup_is_the_median_of_paired_ratios(monkeypatch):
    """A slow drift of the host hits both arms of a rotation alike: the paired ratio stays 2
    while either arm's own samples spread by half."""
    drift = [1 + 0.05 * i for i in range(40)]
    clk = Clock(monkeypatch, {"eager": iter([200 * d for d in drift]),
                              "graph": iter([100 * d for d in drift])})
    b = Budget(steps=1, budget_s=60)
    row = measure_row({"eager": Arm(clk.arm("eager"), wall_timer("eager_", b)),
                       "graph": Arm(clk.arm("graph"), wall_timer("graph_", b))}, 1, 1, "full")
    assert row["speedup"] == pytest.approx(2.0) and row["speedup_ci"] == pytest.approx([2.0, 2.0])
    assert (row["eager_p80"] - row["eager_p20"]) / row["eager_step_us"] > 0.1
    assert row["stable"] is True


def test_noisy_rows_that_miss_the_rule_are_unstable(monkeypatch):
    """Ratios scattered by +-40% never give an interval within 2%: sampling stops at the round
    cap and the row says it is not stable."""
    rng = np.random.default_rng(1)
    clk = Clock(monkeypatch, {"eager": (200 * rng.uniform(0.6, 1.4) for _ in itertools.count()),
                              "graph": 100.0})
    b = Budget(steps=1, budget_s=0.05)
    row = measure_row({"eager": Arm(clk.arm("eager"), wall_timer("eager_", b)),
                       "graph": Arm(clk.arm("graph"), wall_timer("graph_", b))}, 1, 1, "full")
    lo, hi = row["speedup_ci"]
    assert row["stable"] is False and lo < row["speedup"] < hi and (hi - lo) / 2 > 0.02 * row["speedup"]


def test_lockstep_takes_the_agreed_rotations_and_judges_after(monkeypatch):
    clk = Clock(monkeypatch, {"eager": 20.0, "graph": 10.0})
    asked = []

    def lockstep(fn, inner, budget_s):
        asked.append(budget_s)
        return dict(min_samples=13, max_samples=13, budget_s=float("inf"))
    b = Budget(steps=1, budget_s=0.5, lockstep=lockstep)
    row = measure_row({"eager": Arm(clk.arm("eager"), wall_timer("eager_", b, scale=2)),
                       "graph": Arm(clk.arm("graph"), wall_timer("graph_", b))}, 1, 1, "full")
    assert row["eager_n"] == row["graph_n"] == 13 and row["stable"] is True
    assert asked == [pytest.approx(1.5)]                   # the cap: 2 x 0.5 + 1 x 0.5


def test_secondary_figures_come_after_the_rotation(monkeypatch):
    clk = Clock(monkeypatch, {"eager": 20.0, "graph": 10.0})
    b = Budget(steps=1, budget_s=60)
    seen = []
    after = lambda fn, row: seen.append(row["graph_step_us"]) or {"graph_host_us": 3.0}
    row = measure_row({"eager": Arm(clk.arm("eager"), wall_timer("eager_", b)),
                       "graph": Arm(clk.arm("graph"), Timer("graph_", b, after=after))},
                      1, 1, "full")
    assert seen == [10.0] and row["graph_host_us"] == 3.0
    g = measure_row({"graph": Arm(clk.arm("graph"), rows.graph_timer(b))}, 1, 1, "full")
    assert g["graph_gpu_us"] == 8.0 and g["graph_host_us"] == 3.0


def test_without_graphs_the_row_says_so():
    arms = {"eager": Arm(lambda: torch.zeros(1), lambda fn, row: dict(eager_step_us=5.0))}
    row = measure_row(arms, 1, None, "eager")
    assert row["graph_step_us"] is None and row["speedup"] is None


def test_real_sampler_on_a_cpu_clock():
    """wall_timer through timing.wall_sampler, with CUDA's calls stubbed: a tiny budget ends."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "synchronize", lambda: None)

        class Event:
            def __init__(self, **kw):
                pass

            record = synchronize = lambda self: None

            def elapsed_time(self, other):
                return 0.001
        mp.setattr(torch.cuda, "Event", Event)
        row = measure_row({"eager": Arm(lambda: torch.zeros(1), wall_timer("eager_", Budget(1, 0.001),
                                                                          event=True))},
                          1, None, "eager")
    assert row["eager_n"] >= 10 and row["eager_step_us"] > 0 and row["eager_event_us"] == 1.0
    assert row["speedup"] is None and isinstance(row["stable"], bool)


class FakeOpCosts:
    """ops.OpCostSampler's interface: counts its samples; fixed costs."""
    made: list = []

    def __init__(self, step, dec, b, bound=None):
        self.n = 0
        FakeOpCosts.made.append(self)

    def sample(self):
        self.n += 1

    def result(self):
        return {"qkv_proj": 4.0}, 1.0, Stats(3.0, 3.0, 3.0, self.n)


def test_op_costs_are_sampled_before_each_round_of_the_rotation(monkeypatch):
    """The model's host inputs (op costs, glue, one step's host time) are sampled inside the
    rotation, once before each round and never outside it, so they see the host as the timed
    steps do; the rounds alternate, so eager and graph each follow the sampling in half their
    samples."""
    clk = Clock(monkeypatch, {"eager": 20.0, "graph": 10.0})
    log = clk.log

    class Logged(FakeOpCosts):
        def sample(self):
            log.append("costs")
            super().sample()
    monkeypatch.setattr(rows, "OpCostSampler", Logged)
    b, costs = Budget(steps=1, budget_s=0.01), {}
    eager = clk.arm("eager")
    row = measure_row({"eager": Arm(eager, rows.eager_timer(None, 1, b, costs)),
                       "graph": Arm(clk.arm("graph"), wall_timer("graph_", b), diff="max_abs_diff")},
                      1, 1, "full")
    n = row["eager_n"]
    assert log.count("eager") == n >= 10 and log.count("graph") == row["graph_n"] == n
    assert log == ["costs", "eager", "graph", "costs", "graph", "eager"] * (n // 2) \
        + ["costs", "eager", "graph"] * (n % 2)
    assert log.count("costs") == n == Logged.made[-1].n
    assert costs == dict(op_host_us={"qkv_proj": 4.0}, piece_glue_us=1.0)
    assert row["eager_host_us"] == 3.0


def test_the_three_callers_give_the_same_timing_fields(monkeypatch):
    """The sweep's eager and graph arms, the TP sweep's and a reproduce lab's all come from
    measure_row: their timing fields are named alike ({arm}step_us, p20, p80, n)."""
    clk = Clock(monkeypatch, {"eager": 20.0, "graph": 10.0, "full": 10.0})
    monkeypatch.setattr(rows, "OpCostSampler", FakeOpCosts)
    b = Budget(steps=1, budget_s=0.01)
    costs = {}
    eager = clk.arm("eager")
    sweep_like = measure_row({"eager": Arm(eager, rows.eager_timer(None, 1, b, costs)),
                              "graph": Arm(clk.arm("graph"), rows.graph_timer(b), diff="max_abs_diff")},
                             1, 1, "full")
    tp_like = measure_row({"eager": Arm(clk.arm("eager"), wall_timer("eager_", b, scale=2)),
                           "graph": Arm(clk.arm("graph"), wall_timer("graph_", b), diff="max_abs_diff")},
                          1, 1, "full")
    lab_like = measure_row({"full": Arm(clk.arm("full"), wall_timer("", b, event=True))}, 1, 1, "full")
    base = {"bs", "padded_bs", "ran_as"}
    for row in (sweep_like, tp_like):
        assert base | {f"{p}_{f}" for p in ("eager", "graph") for f in TIMING} \
            | {"max_abs_diff", "speedup", "speedup_ci", "stable"} <= set(row)
    assert sweep_like["eager_host_us"] == 3.0 and costs == dict(op_host_us={"qkv_proj": 4.0},
                                                                  piece_glue_us=1.0)
    assert set(lab_like) == base | set(TIMING) | {"event_us", "stable"}
    assert set(tp_like) <= set(sweep_like)


class Named(str):
    """A fake step's output: its name, for the fake clock, and as logits (measure_row checks
    them against the first arm's) a value set per name in LOGITS (0 unless set)."""
    LOGITS: dict = {}

    def float(self):
        return torch.tensor([self.LOGITS.get(str(self), 0.0)])


def fake_wall_clock(monkeypatch, us: dict):
    """rows.wall_sampler replaced: a step's sample is us[what the step returns], its event time
    nine tenths of it."""
    def sampler(fn, inner, sync=None, events=None):
        def sample():
            t = us[fn()]
            if events is not None:
                events.append(0.9 * t)
            return t
        return sample
    monkeypatch.setattr(rows, "wall_sampler", sampler)


def test_reproduce_lab_pairs_eager_and_graph_in_rotation(monkeypatch):
    """Lab.pair (speedup-fade's rows) goes through measure_row with rotating timers, and
    leaves each arm's time in the lab's cache for the experiments after it."""
    from types import SimpleNamespace

    from microbench.bench.lab import Lab
    from microbench.engine.dispatch import PaddingDispatcher

    class Runner:
        def __init__(self, sizes, mode):
            self.mode, self.dispatcher = mode, PaddingDispatcher(sizes if mode != "none" else [])

        def step_packed(self, x):
            return Named(self.mode)

        def close(self):
            pass

    class CpuLab(Lab):
        def capture(self, sizes, mode="full", **kw):
            return Runner(sizes, mode)

        def engine_step(self, bs, x):   # the unfused plan's eager step, in the same rotation
            return lambda: Named("engine")

    us = {"none": 2000.0, "full": 500.0, "engine": 3000.0}

    fake_wall_clock(monkeypatch, us)
    monkeypatch.setattr(Named, "LOGITS", {"engine": 0.5})
    cfg = SimpleNamespace(steps=1, time_budget=60, seed=0, pin_cpu=False)
    dec = SimpleNamespace(device=torch.device("cpu"), shape=SimpleNamespace(vocab=100))
    lab = CpuLab(cfg, dec, 16)
    got = lab.pair([1, 4])
    assert [(r["bs"], r["padded_bs"], r["speedup"], r["speedup_ci"], r["stable"]) for r in got] == [
        (1, 1, 4.0, [4.0, 4.0], True), (4, 4, 4.0, [4.0, 4.0], True)]
    assert lab.times[("full", 4, 4)] == dict(step_us=500.0, p20=500.0, p80=500.0, n=10, event_us=450.0)
    assert lab.times[("eager", None, 1)]["step_us"] == 2000.0
    assert [(r["engine_eager_step_us"], r["engine_eager_speedup"]) for r in got] == [(3000.0, 6.0)] * 2
    # every arm's logits checked against eager's: the unfused plan's here differ by 0.5
    assert [(r["max_abs_diff"], r["engine_eager_max_abs_diff"]) for r in got] == [(0.0, 0.5)] * 2
    # a decoder that does not bind (the torch backend) has no engine-eager arm
    torch_dec = SimpleNamespace(backend="torch", all_reduce=None)
    assert Lab.engine_step(SimpleNamespace(dec=torch_dec, cache={}), 1, None) is None
    # a triton decoder: the unfused twin made once, bound at each batch, its step on x
    made = []
    plain = SimpleNamespace(bind=lambda bs: SimpleNamespace(step_packed=lambda x: ("bound", bs, x)))
    triton_dec = SimpleNamespace(backend="triton", all_reduce=None,
                                 with_fusion=lambda f: made.append(f) or plain)
    host = SimpleNamespace(dec=triton_dec, cache={})
    assert Lab.engine_step(host, 4, "x")() == ("bound", 4, "x")
    assert Lab.engine_step(host, 1, "y")() == ("bound", 1, "y") and len(made) == 1
    assert made == [0]                                   # Fusion.UNFUSED


def test_host_fields_are_what_the_eager_timer_sampled():
    """Both sweeps' rows take their host side from rows.host_fields: the sampled op costs and
    glue where the eager timer sampled them, the host time per kernel where the step was bound."""
    costs = dict(op_host_us={"rmsnorm": 8.0}, piece_glue_us=3.0)
    row = rows.host_fields(dict(bs=1, eager_host_us=620.0), costs, 62)
    assert row["op_host_us"] == {"rmsnorm": 8.0} and row["piece_glue_us"] == 3.0
    assert row["eager_kernels"] == 62 and row["eager_host_us_per_kernel"] == pytest.approx(10.0)
    plain = rows.host_fields(dict(bs=1, eager_host_us=620.0), {})
    assert plain == dict(bs=1, eager_host_us=620.0)


def test_padding_waste_samples_its_four_arms_in_one_rotation(monkeypatch):
    """run_padding_waste captures each ladder's one size and samples exact, stride-8, pow2 and
    eager in one rotation: each arm's ratio to the exact capture is paired, with an interval."""
    from types import SimpleNamespace

    from microbench.bench import phenomena as ph
    from microbench.bench.lab import Lab

    closed = []

    class Runner:
        def __init__(self, sizes, mode):
            self.key = f"{mode}{sizes}"

        def step_packed(self, x):
            return Named(self.key)

        def close(self):
            closed.append(self.key)

    class CpuLab(Lab):
        def capture(self, sizes, mode="full", **kw):
            return Runner(sizes, mode)

    us = {"full[37]": 760.0, "full[40]": 766.0, "full[64]": 795.0, "none[]": 1210.0}

    fake_wall_clock(monkeypatch, us)
    monkeypatch.setattr(Named, "LOGITS", {"full[64]": 0.25})
    cfg = SimpleNamespace(steps=1, time_budget=60, seed=0, pin_cpu=False)
    lab = CpuLab(cfg, SimpleNamespace(device=torch.device("cpu"), shape=SimpleNamespace(vocab=100)), 16)
    got = {r["arm"]: r for r in ph.run_padding_waste(lab)["rows"]}
    assert [(a, r["padded_bs"], r["step_us"]) for a, r in got.items()] == [
        ("exact", 37, 760.0), ("stride-8", 40, 766.0), ("pow2", 64, 795.0), ("eager", None, 1210.0)]
    assert got["pow2"]["vs_exact"] == pytest.approx(795 / 760)
    assert got["pow2"]["vs_exact_ci"] == pytest.approx([795 / 760] * 2)
    assert got["eager"]["vs_exact"] == pytest.approx(1210 / 760) and got["exact"]["vs_exact"] == 1.0
    assert sorted(closed) == sorted(us)                      # every runner closed
    # each graph's logits checked against eager's (the rotation's first arm)
    assert [got[a]["max_abs_diff"] for a in ("exact", "stride-8", "pow2", "eager")] == [
        0.0, 0.0, 0.25, None]


def test_the_lab_measures_the_kernel_lines_the_sweep_does(monkeypatch):
    """Lab.launch adds the per-family kernel lines (ops.kernel_lines) to the launch figures,
    with the replay's fixed GPU cost taken off, once per run: speedup-fade's model prices the
    step's kernels as the sweep's does, not at the copy bandwidth alone."""
    from types import SimpleNamespace

    from microbench.bench import lab as lab_mod
    from microbench.bench import launch as launch_mod
    calls = []
    monkeypatch.setattr(launch_mod, "measure_launch_and_ops",
                        lambda dec, budget, pin: dict(replay_fit=dict(gpu_fixed_us=1.5)))
    monkeypatch.setattr(launch_mod, "kernel_lines", lambda dec, context, budget_s, replay_fixed_us:
                        calls.append((context, replay_fixed_us)) or {"skinny": {}})
    cfg = SimpleNamespace(time_budget=0.5, pin_cpu=False)
    lab = lab_mod.Lab(cfg, SimpleNamespace(), 512)
    assert lab.launch()["kernel_lines"] == {"skinny": {}} and lab.launch() is lab.launch()
    assert calls == [(512, 1.5)]
