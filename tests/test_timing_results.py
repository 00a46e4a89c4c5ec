import json
import os

import pytest

from microbench.report.record import atomic_write, load_run, rows_to_csv, write_run
from microbench.bench.sweep import check_shape
from microbench.bench.timing import quantile, settle, summarize


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


def test_run_round_trip(tmp_path):
    run = dict(kind="sweep", config=dict(preset="tiny", bs=[1, 4]), env=dict(gpu="G"),
               rows=[dict(bs=1, padded_bs=1, eager_step_us=2.0, graph_step_us=1.0),
                     dict(bs=4, padded_bs=4, eager_step_us=3.0, graph_step_us=2.0, extra="x")])
    d = write_run(tmp_path / "run", run)
    assert load_run(d) == run
    lines = (d / "sweep.csv").read_text().splitlines()
    assert lines[0] == "bs,padded_bs,eager_step_us,graph_step_us,extra"
    assert lines[2] == "4,4,3.0,2.0,x"
    assert not [p for p in os.listdir(d) if p.startswith(".")]  # no temporary files left


def test_rows_to_csv_keeps_field_order():
    assert rows_to_csv([dict(b=1, a=2)]).splitlines()[0] == "b,a"


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "f.json"
    atomic_write(p, json.dumps({"a": 1}))
    atomic_write(p, json.dumps({"b": 2}))
    assert json.loads(p.read_text()) == {"b": 2}


def test_load_run_rejects_non_runs(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a microbench run"):
        load_run(tmp_path)


def _rows(*speedups):
    return [dict(bs=b, speedup=s) for b, s in zip((1, 4, 16, 64), speedups)]


@pytest.mark.parametrize("speedups, held", [
    ((2.5, 1.6, 1.3, 1.13), True),
    ((2.5, 2.52, 1.3, 1.1), True),    # a rise inside the noise band
    ((1.5, 2.5, 1.3, 1.1), False),    # not largest at the smallest batch
    ((2.5, 1.3, 1.6, 1.1), False),    # rises beyond noise
    ((2.5, 1.6, 1.3, 0.9), False),    # graphs slower than eager
])
def test_shape_check(speedups, held):
    assert check_shape(_rows(*speedups), noise=0.03)["held"] is held


def test_shape_check_noise_comes_from_measured_spread():
    rows = _rows(2.0, 2.2)
    for r in rows:  # eager spread 20%, graph spread 5%: speedup noise 25% per row
        r.update(eager_step_us=100.0, eager_p20=90.0, eager_p80=110.0,
                 graph_step_us=50.0, graph_p20=49.0, graph_p80=51.5)
    res = check_shape(rows)
    assert res["held"] is True and res["noise"][0] == pytest.approx(0.25)
    assert check_shape(rows, noise=0.03)["held"] is False
