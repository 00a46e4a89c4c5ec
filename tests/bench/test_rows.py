"""The one measured-row routine on the CPU, with fake arms (Python callables returning logits)
and fake timers: the row's fields, the check against the reference, and that the sweep's, the
TP sweep's and reproduce's arms give rows of the same timing fields."""
import pytest
import torch

from microbench.bench import rows
from microbench.bench.rows import Arm, Budget, measure_row, wall_timer
from microbench.bench.timing import Stats

TIMING = ("step_us", "p20", "p80", "n")


def fake_step_time_us(fn, inner=1, sync_each=False, **kw):
    """One call of fn, no CUDA: (event Stats, wall Stats) of a fixed 10 us."""
    fn()
    return Stats(9.0, 9.0, 9.0, 10), Stats(10.0, 9.5, 10.5, 10)


@pytest.fixture
def cpu_timing(monkeypatch):
    monkeypatch.setattr(rows, "step_time_us", fake_step_time_us)
    monkeypatch.setattr(rows, "gpu_time_us", lambda fn, **kw: Stats(8.0, 8.0, 8.0, 10))
    monkeypatch.setattr(rows, "host_time_us", lambda fn, **kw: Stats(3.0, 3.0, 3.0, 10))


def logits(shift=0.0):
    return lambda: torch.arange(6, dtype=torch.float32).view(2, 3) + shift


def test_row_has_every_field_and_reports_a_differing_arm(cpu_timing):
    b = Budget(steps=1, budget_s=0.01)
    arms = {"eager": Arm(logits(), wall_timer("eager_", b)),
            "graph": Arm(logits(), wall_timer("graph_", b), diff="max_abs_diff"),
            "torch-eager": Arm(logits(0.25), wall_timer("torch_eager_", b),
                               diff="torch_eager_max_abs_diff")}
    said = []
    row = measure_row(arms, 2, 2, "full", said.append)
    want = {"bs", "padded_bs", "ran_as", "max_abs_diff", "torch_eager_max_abs_diff", "speedup",
            *(f"{p}_{f}" for p in ("eager", "graph", "torch_eager") for f in TIMING)}
    assert set(row) == want
    assert row["max_abs_diff"] == 0.0 and row["torch_eager_max_abs_diff"] == 0.25
    assert row["speedup"] == 1.0 and said == ["bs 2: eager", "bs 2: graph", "bs 2: torch-eager"]


def test_without_graphs_the_row_says_so():
    arms = {"eager": Arm(logits(), lambda fn, row: dict(eager_step_us=5.0))}
    row = measure_row(arms, 1, None, "eager")
    assert row["graph_step_us"] is None and row["speedup"] is None


def test_real_timers_on_a_cpu_clock():
    """wall_timer through timing.step_time_us, with CUDA's calls stubbed: a tiny budget ends."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "synchronize", lambda: None)

        class Event:
            def __init__(self, **kw):
                pass

            record = synchronize = lambda self: None

            def elapsed_time(self, other):
                return 0.001
        mp.setattr(torch.cuda, "Event", Event)
        row = measure_row({"eager": Arm(logits(), wall_timer("eager_", Budget(1, 0.001)))},
                          1, None, "eager")
    assert row["eager_n"] >= 10 and row["eager_step_us"] > 0


def test_the_three_callers_give_the_same_timing_fields(cpu_timing):
    """The sweep's eager and graph arms, the TP sweep's and a reproduce lab's all come from
    measure_row: their timing fields are named alike ({arm}step_us, p20, p80, n)."""
    b = Budget(steps=1, budget_s=0.01)
    sweep_like = measure_row({"eager": Arm(logits(), lambda fn, row: {
        **rows.stats_fields("eager_", Stats(10, 9, 11, 10)), "eager_host_us": 3.0}),
        "graph": Arm(logits(), rows.graph_timer(b), diff="max_abs_diff")}, 1, 1, "full")
    tp_like = measure_row({"eager": Arm(logits(), wall_timer("eager_", b, scale=2)),
                           "graph": Arm(logits(), wall_timer("graph_", b), diff="max_abs_diff")},
                          1, 1, "full")
    lab_like = measure_row({"full": Arm(logits(), wall_timer("", b, event=True))}, 1, 1, "full")
    base = {"bs", "padded_bs", "ran_as"}
    for row in (sweep_like, tp_like):
        assert base | {f"{p}_{f}" for p in ("eager", "graph") for f in TIMING} \
            | {"max_abs_diff", "speedup"} <= set(row)
    assert set(lab_like) == base | set(TIMING) | {"event_us"}
    assert set(tp_like) <= set(sweep_like)
