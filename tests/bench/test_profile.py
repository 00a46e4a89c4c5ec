"""The profiler helpers on the CPU: a trace of named steps that Perfetto opens, and the
profiler's warning that means nothing to a user, filtered where it arises."""
import json
import warnings

import torch
from torch.profiler import ProfilerActivity

from microbench.bench.profile import quiet_profile, trace_steps


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
