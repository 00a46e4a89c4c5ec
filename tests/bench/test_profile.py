"""The profiler helpers on the CPU: a trace of named steps that Perfetto opens, the
profiler's warning that means nothing to a user, filtered where it arises, and the GPU's busy
time from kernels' spans."""
import json
import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity

from microbench.bench.profile import busy_us, quiet_profile, trace_steps


def test_trace_steps_writes_a_chrome_trace_with_each_step_named(tmp_path):
    a = torch.randn(32, 32)
    calls = []
    steps = {"eager step, bs 1": lambda: calls.append("e") or a @ a,
             "graph step, bs 1 (graph 1)": lambda: calls.append("g") or a + a}
    path = tmp_path / "sweep.trace.json"
    trace_steps(steps, lambda prof: prof.export_chrome_trace(str(path)))
    trace = json.loads(path.read_text())
    names = [e.get("name") for e in trace["traceEvents"]]
    assert "eager step, bs 1" in names and "graph step, bs 1 (graph 1)" in names
    assert calls == ["e", "g", "e", "g"]      # each step once to warm, once traced
    assert any(n == "aten::mm" for n in names)


def test_quiet_profile_filters_the_cycle_warning_only():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_profile([ProfilerActivity.CPU]):
            warnings.warn("Warning: Profiler clears events at the end of each cycle. Only events "
                          "from the current cycle will be reported.", UserWarning)
            warnings.warn("something a user should see", UserWarning)
    assert [str(w.message) for w in seen] == ["something a user should see"]


def test_each_arms_samples_sit_in_a_named_range():
    from torch.profiler import profile

    from microbench.bench.rows import ranged
    sample = ranged(lambda: float(torch.ones(8).sum()), "graph steps")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        assert sample() == 8.0
    assert any(e.name == "graph steps" for e in prof.events())


def test_busy_time_counts_overlapping_kernels_once():
    """Kernels launched with PDL start before the one ahead ends, so a GPU-bound eager step's
    kernel lengths can sum past the step. The busy time is their union: here 0-12 (three
    overlapping), a gap, 20-25, and 21-23 inside it."""
    spans = [("b", 4.0, 10.0), ("a", 0.0, 6.0), ("c", 9.0, 12.0), ("e", 21.0, 23.0),
             ("d", 20.0, 25.0)]
    assert busy_us(spans) == pytest.approx(12.0 + 5.0)
    assert sum(end - start for _, start, end in spans) == pytest.approx(22.0)   # what it was


def test_busy_time_of_kernels_back_to_back_is_their_sum():
    spans = [("a", 0.0, 2.5), ("b", 2.5, 4.0), ("c", 7.0, 8.0)]
    assert busy_us(spans) == pytest.approx(5.0)
    assert busy_us([]) == 0.0
