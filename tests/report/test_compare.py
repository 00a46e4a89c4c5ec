"""compare: rows matched by preset, arm and batch size, each figure's ratio and a verdict that
respects both runs' noise; runs that cannot be compared refused. Synthetic runs only."""
import json

import pytest

from microbench.report.compare import (NotComparable, compare_doc, compare_runs, rel_noise,
                                       speedup_noise, verdict)
from microbench.report.formats import render
from tests.report.runs import sweep_run


def row(bs, eager, graph, noise=0.01, graph_noise=None, ci=None):
    """A sweep row whose p20/p80 sit `noise` (relative) either side of each median."""
    gn = noise if graph_noise is None else graph_noise
    r = dict(bs=bs, padded_bs=bs, ran_as="full", eager_step_us=eager,
             eager_p20=eager * (1 - noise), eager_p80=eager * (1 + noise),
             graph_step_us=graph, graph_p20=graph * (1 - gn), graph_p80=graph * (1 + gn),
             speedup=eager / graph)
    if ci is not None:
        r["speedup_ci"] = ci
    return r


def run_of(*rows, **config):
    run = sweep_run(rows=list(rows))
    run["config"].update(config)
    return run


def verdicts(a, b, **kw):
    return {(r["bs"], r["arm"]): r["verdict"] for r in compare_runs([a, b], ["a", "b"], **kw)}


def test_faster_slower_and_same():
    a = run_of(row(1, 900.0, 300.0))
    b = run_of(row(1, 990.0, 270.0))         # eager +10%, graph -10%, noise 1% each side
    v = verdicts(a, b)
    assert v[(1, "eager")] == "slower" and v[(1, "graph")] == "faster"
    assert v[(1, "eager/graph")] == "higher"     # the speedup rose from 3.00 to 3.67
    b = run_of(row(1, 905.0, 301.0))         # +0.6%, +0.3%: within 1% noise
    assert set(verdicts(a, b).values()) == {"same"}


def test_the_speedup_verdict_says_higher_or_lower():
    a, b = run_of(row(1, 900.0, 300.0)), run_of(row(1, 900.0, 200.0))
    recs = compare_runs([a, b], ["a", "b"])
    sp = next(r for r in recs if r["figure"] == "speedup")
    assert sp["ratio"] == pytest.approx(1.5) and sp["verdict"] == "higher"


def test_unclear_when_the_noise_is_too_large_to_tell():
    a = run_of(row(1, 900.0, 300.0, noise=0.10))
    b = run_of(row(1, 960.0, 300.0, noise=0.10))     # +6.7% inside a combined noise of 14%
    assert verdicts(a, b)[(1, "eager")] == "unclear"
    b = run_of(row(1, 1500.0, 300.0, noise=0.10))    # +67%: well outside it
    assert verdicts(a, b)[(1, "eager")] == "slower"


def test_unclear_without_any_noise_recorded():
    a, b = run_of(row(1, 900.0, 300.0)), run_of(row(1, 990.0, 300.0))
    for r in (a["rows"][0], b["rows"][0]):
        for k in ("eager_p20", "eager_p80"):
            del r[k]
    assert verdicts(a, b)[(1, "eager")] == "unclear"


def test_the_floor_makes_tiny_changes_same():
    a = run_of(row(1, 900.0, 300.0, noise=0.001))
    b = run_of(row(1, 906.0, 300.0, noise=0.001))    # +0.7%, far outside 0.14% noise
    assert verdicts(a, b)[(1, "eager")] == "same"
    assert verdicts(a, b, floor=0.0)[(1, "eager")] == "slower"


def test_speedup_noise_from_its_interval_when_present():
    r = row(1, 900.0, 300.0, noise=0.02, ci=[2.94, 3.06])
    assert speedup_noise(r) == pytest.approx(0.02)
    del r["speedup_ci"]
    assert speedup_noise(r) == pytest.approx((2 * 0.02 ** 2) ** 0.5)
    assert rel_noise(r, "eager_") == pytest.approx(0.02)
    assert rel_noise(r, "torch_graph_") is None


def test_speedup_noise_prefers_the_interval_across_processes():
    """With --repeat, processes disagree far more than one process's samples: the interval
    across them is the noise a comparison must respect."""
    r = row(1, 900.0, 300.0, noise=0.02, ci=[2.94, 3.06])
    r["speedup_repeats_ci"] = [2.4, 3.6]
    assert speedup_noise(r) == pytest.approx(0.2)


def test_verdict_combines_both_runs_noise():
    # 3% apart; each side 2.5%: combined 3.5% covers it (nvbench's min would not)
    assert verdict(1.03, 0.025, 0.025) == ("same", pytest.approx(0.0354, abs=1e-3))
    assert verdict(1.03, 0.01, None)[0] == "slower"       # one side's noise alone
    assert verdict(0.5, None, None) == ("unclear", None)


def test_rows_match_by_batch_size_and_arm():
    a = run_of(row(1, 900.0, 300.0), row(4, 950.0, 320.0))
    b = run_of(row(4, 950.0, 320.0), row(16, 1000.0, 400.0))
    b["rows"][0]["compile_step_us"] = 500.0
    recs = compare_runs([a, b], ["a", "b"])
    assert {r["bs"] for r in recs} == {4} and {r["arm"] for r in recs} == {"eager", "graph",
                                                                           "eager/graph"}
    text = render(compare_doc([a, b], ["a", "b"], recs), "table")
    assert "batch sizes only in A: 1" in text and "B against A: 0 faster, 0 slower, 3 same" in text


@pytest.mark.parametrize("edit, why", [
    (lambda r: r["env"].update(gpu="Other GPU"), "device 'Test GPU' against 'Other GPU'"),
    (lambda r: r["config"].update(preset="llama-1b"), "preset 'tiny' against 'llama-1b'"),
    (lambda r: r["config"].update(context=512), "context 64 against 512"),
    (lambda r: r["config"].update(dtype="float16"), "dtype 'bfloat16' against 'float16'"),
    (lambda r: r.update(kind="launch"), "b is a launch run; compare takes sweep runs"),
    (lambda r: r.update(rows=[row(64, 1.0, 1.0)]), "share no batch size"),
])
def test_runs_that_are_not_comparable(edit, why):
    a, b = run_of(row(1, 900.0, 300.0)), run_of(row(1, 900.0, 300.0))
    edit(b)
    with pytest.raises(NotComparable) as e:
        compare_runs([a, b], ["a", "b"])
    assert why in str(e.value) and "\n" not in str(e.value)


def test_what_may_differ_is_said():
    a, b = run_of(row(1, 900.0, 300.0)), run_of(row(1, 900.0, 300.0), mode="piecewise")
    b["env"]["git"] = "def"
    recs = compare_runs([a, b], ["a", "b"])
    text = render(compare_doc([a, b], ["a", "b"], recs), "table")
    assert "B differs from A in: mode full -> piecewise; git abc -> def" in text


def test_three_runs_each_against_the_first():
    a, b, c = (run_of(row(1, 900.0, g)) for g in (300.0, 300.0, 200.0))
    recs = compare_runs([a, b, c], ["a", "b", "c"])
    doc = compare_doc([a, b, c], ["a", "b", "c"], recs)
    table = doc.tables()[0]
    assert table.columns[:7] == ["bs", "figure", "A", "B", "B/A", "B noise", "B verdict"]
    graph = next(r for r in table.rows if r[1] == "graph us")
    assert graph[6] == "same" and graph[-1] == "faster"
    assert {r["run"] for r in json.loads(render(doc, "json"))} == {"B", "C"}
