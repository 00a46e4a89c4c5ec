"""microbench.stats: the noise bands, the speedup-shape check and the line fits, on hand cases."""
import pytest

import numpy as np

from microbench.stats import (break_even_steps, check_shape, fit_linear, fit_pool,
                              hierarchical_ci, median_ci, median_process, merge_repeats,
                              paired_ratio, row_noise, settled, speedup_interval, speedup_noise)


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
    assert res["basis"] == "p20-p80 noise band"


def _ci_rows(*cis):
    """Rows with bootstrap intervals: (lo, median, hi) per batch."""
    return [dict(bs=b, speedup=m, speedup_ci=[lo, hi], stable=True)
            for b, (lo, m, hi) in zip((1, 4, 16, 64), cis)]


def test_shape_check_uses_intervals_where_saved():
    # bs 4 reads higher than bs 1, but the intervals overlap: not a rise
    rows = _ci_rows((2.40, 2.50, 2.60), (2.45, 2.55, 2.70), (1.5, 1.6, 1.7), (1.1, 1.13, 1.16))
    res = check_shape(rows)
    assert res["held"] is True and res["basis"] == "bootstrap 95% interval"
    assert res["intervals"][1] == [2.45, 2.70]
    # the same medians with tight intervals that separate: a rise
    rows[0]["speedup_ci"], rows[1]["speedup_ci"] = [2.47, 2.52], [2.53, 2.57]
    res = check_shape(rows)
    assert res["held"] is False and "rises" in res["why"] and not res["largest_at_smallest"]


def test_shape_check_judges_another_arm_by_prefix():
    """The engine-eager arm against the graph (the bundle operators toggle) is judged from its
    own speedups and intervals: here it fades while eager against graph rises."""
    rows = _ci_rows((1.0, 1.05, 1.1), (1.3, 1.35, 1.4), (1.2, 1.25, 1.3), (1.0, 1.05, 1.1))
    for r, (lo, m, hi) in zip(rows, ((7.5, 8.0, 8.4), (4.6, 4.8, 5.0), (3.8, 3.9, 4.0), (2.6, 2.7, 2.8))):
        r.update(engine_eager_speedup=m, engine_eager_speedup_ci=[lo, hi])
    assert check_shape(rows)["held"] is False
    bundle = check_shape(rows, prefix="engine_eager_")
    assert bundle["held"] is True and bundle["arm"] == "engine-eager"
    assert bundle["intervals"][0] == [7.5, 8.4] and bundle["basis"] == "bootstrap 95% interval"
    rows[2]["engine_eager_speedup_ci"] = [5.1, 5.3]   # bs 16 above bs 4: a rise
    assert check_shape(rows, prefix="engine_eager_")["held"] is False


def test_another_arms_noise_band_is_its_own():
    """Without saved intervals, an arm's speedup is widened by its own spread and the graph's."""
    row = dict(bs=1, speedup=2.0, engine_eager_speedup=4.0, eager_step_us=100.0, eager_p20=50.0,
               eager_p80=150.0, engine_eager_step_us=200.0, engine_eager_p20=196.0,
               engine_eager_p80=204.0, graph_step_us=50.0, graph_p20=49.0, graph_p80=51.0)
    # engine-eager 4% and graph 4%: 8%; eager 100% and graph 4%: 104%
    assert speedup_interval(row, "engine_eager_") == pytest.approx((4.0 * 0.92, 4.0 * 1.08))
    assert speedup_interval(row) == pytest.approx((2.0 * -0.04, 2.0 * 2.04))


@pytest.mark.parametrize("ci, held", [((0.97, 1.02), True),     # upper end reaches 1: not below
                                      ((0.94, 0.99), False)])   # wholly below 1
def test_never_below_one_reads_the_upper_end(ci, held):
    rows = _ci_rows((2.4, 2.5, 2.6), (ci[0], (ci[0] + ci[1]) / 2, ci[1]))
    res = check_shape(rows)
    assert res["never_below_one"] is held and res["held"] is held


def test_unstable_rows_are_named():
    rows = _ci_rows((2.4, 2.5, 2.6), (1.5, 1.6, 1.7))
    rows[1]["stable"] = False
    assert check_shape(rows)["unstable"] == [4]


def test_speedup_interval_falls_back_to_noise():
    assert speedup_interval(dict(speedup=2.0, speedup_ci=[1.9, 2.2])) == (1.9, 2.2)
    assert speedup_interval(dict(speedup=2.0)) == pytest.approx((2.0 * 0.94, 2.0 * 1.06))
    assert speedup_interval(dict(speedup=2.0, speedup_ci=[1.9, 2.2]), noise=0.1) == \
        pytest.approx((1.8, 2.2))
    assert speedup_interval(dict(speedup=None)) is None


def test_median_ci_is_seeded_and_covers_the_median():
    rng = np.random.default_rng(0)
    xs = rng.normal(10.0, 1.0, 200)
    med, lo, hi = median_ci(xs, seed=3)
    assert lo < med < hi and median_ci(xs, seed=3) == (med, lo, hi)
    # four times the samples: about half the width
    _, lo4, hi4 = median_ci(rng.normal(10.0, 1.0, 800), seed=3)
    assert 0.3 < (hi4 - lo4) / (hi - lo) < 0.7
    assert median_ci([4.0]) == (4.0, 4.0, 4.0)
    with pytest.raises(ValueError):
        median_ci([])


def test_paired_ratio_cancels_drift_that_both_arms_share():
    drift = np.linspace(1.0, 1.5, 60)
    r = paired_ratio(list(300 * drift), list(100 * drift) + [1.0])    # the extra sample dropped
    assert r["median"] == pytest.approx(3.0) and r["ci"] == pytest.approx([3.0, 3.0])
    assert r["n"] == 60
    assert settled(r["ci"], r["median"]) and not settled([2.8, 3.2], 3.0)
    assert settled([2.95, 3.05], 3.0, rel=0.02)


def _run(speedups, held=True, **extra):
    extra.setdefault("interrupted", False)
    return dict(kind="sweep", config=dict(bs=[1, 4]), env=dict(gpu="x"), wall_s=1.0,
                shape_check=dict(held=held),
                rows=[dict(bs=b, speedup=s, eager_step_us=10.0) for b, s in speedups], **extra)


def test_merge_repeats_keeps_the_first_run_and_adds_the_spread():
    runs = [_run([(1, 2.0), (4, 1.5)], launch=dict(a=1)), _run([(1, 2.2), (4, 1.5)]),
            _run([(1, 2.1)], held=False, interrupted=True)]
    m = merge_repeats(runs)
    assert m["launch"] == dict(a=1) and m["rows"][0]["eager_step_us"] == 10.0
    assert m["rows"][0]["speedup_repeats"] == [2.0, 2.2, 2.1]
    assert m["rows"][0]["speedup_repeat_spread"] == pytest.approx(0.1)
    assert m["rows"][1]["speedup_repeats"] == [1.5, 1.5, None]        # missing from run 3
    assert m["rows"][1]["speedup_repeat_spread"] == 0.0
    assert m["repeats"]["k"] == 3 and m["repeats"]["max_spread"] == pytest.approx(0.1)
    assert m["repeats"]["shape_held"] == [True, True, False] and m["interrupted"] is True
    # each process's medians and its CPU's probe loop, in process order (None where missing)
    assert m["rows"][0]["eager_step_us_repeats"] == [10.0, 10.0, 10.0]
    assert m["rows"][1]["graph_step_us_repeats"] == [None, None, None]
    assert m["rows"][0]["host_loop_us_repeats"] == [None, None, None]
    pinned = [_run([(1, 2.0)]), _run([(1, 2.4)])]
    for run, loop in zip(pinned, (90.0, 110.0)):
        run["rows"][0]["host_pin"] = dict(loop_us=loop)
    assert merge_repeats(pinned)["rows"][0]["host_loop_us_repeats"] == [90.0, 110.0]
    assert merge_repeats(pinned)["rows"][0]["host_pin_repeats"] == [dict(loop_us=90.0),
                                                                    dict(loop_us=110.0)]
    assert "speedup_repeats" not in runs[0]["rows"][0]                 # inputs untouched
    one = merge_repeats([_run([(1, 2.0)])])
    assert one["rows"][0]["speedup_repeat_spread"] is None
    with pytest.raises(ValueError):
        merge_repeats([])



def test_merge_repeats_takes_each_row_from_its_median_process():
    runs = [_run([(1, 1.5), (4, 1.2)]), _run([(1, 2.4), (4, 1.1)]), _run([(1, 2.3), (4, 1.3)])]
    for i, run in enumerate(runs):
        for r in run["rows"]:
            r.update(eager_step_us=100.0 + i, speedup_ci=[r["speedup"] * 0.99, r["speedup"] * 1.01])
        run["shape_check"] = dict(held="from the process")
    m = merge_repeats(runs)
    # bs 1: 1.5 / 2.4 / 2.3 -> the median is process 3's; bs 4: 1.2 / 1.1 / 1.3 -> process 1's
    assert [r["repeat_process"] for r in m["rows"]] == [3, 1]
    assert [r["speedup"] for r in m["rows"]] == [2.3, 1.2]
    assert [r["eager_step_us"] for r in m["rows"]] == [102.0, 100.0]   # the row comes whole
    # the first process's rows stay beside, without their paired ratios (its footer's rows)
    assert [r["eager_step_us"] for r in m["repeats"]["first_rows"]] == [100.0, 100.0]
    # the shape check is judged again on the merged rows: 2.3 at bs 1 above 1.2 at bs 4
    assert m["shape_check"]["held"] is True and "shape_check_engine" not in m
    runs[2]["rows"][1].update(speedup=2.35, speedup_ci=[2.34, 2.36])     # bs 4 now rises
    runs[1]["rows"][1].update(speedup=2.5, speedup_ci=[2.49, 2.51])
    assert merge_repeats(runs)["shape_check"]["held"] is False
    assert median_process([None, 2.0, 1.0, 3.0, 4.0]) == 1       # lower middle of four
    assert median_process([None, None]) is None


def test_row_noise_is_the_spread_with_a_floor():
    row = dict(step_us=100.0, p20=95.0, p80=110.0, eager_step_us=200.0, eager_p20=199.0,
               eager_p80=201.0, graph_step_us=50.0, graph_p20=45.0, graph_p80=50.0)
    assert row_noise(row) == pytest.approx(0.15)
    assert row_noise(row, "eager_") == 0.03                      # 1% spread: the floor
    assert row_noise({}, "x_") == 0.03                           # nothing measured: the floor
    assert speedup_noise(row) == pytest.approx(0.03 + 0.1)


def test_fit_linear_recovers_a_line_and_weights_relatively():
    a, b = fit_linear([1, 2, 3], [5.0, 7.0, 9.0])
    assert a == pytest.approx(3.0) and b == pytest.approx(2.0)
    a, b = fit_linear([1, 10, 100], [2.0, 11.0, 101.0], relative=True)
    assert a == pytest.approx(1.0) and b == pytest.approx(1.0)


def test_fit_pool():
    a, c = fit_pool([(1, 110), (2, 120), (4, 140)])
    assert a == pytest.approx(100) and c == pytest.approx(10)
    assert fit_pool([(2, 300)]) == (0.0, 150.0)                 # one point: per size only


def test_break_even_steps():
    assert break_even_steps(0.5, 900.0, 400.0) == pytest.approx(1000)
    assert break_even_steps(0.5, 400.0, 400.0) is None


def test_hierarchical_interval_shows_processes_that_disagree():
    rng = np.random.default_rng(0)
    same = [list(rng.normal(2.0, 0.05, 100)) for _ in range(3)]
    apart = [list(rng.normal(m, 0.05, 100)) for m in (1.8, 2.0, 2.2)]
    _, lo, hi = hierarchical_ci(same, seed=1)
    _, lo2, hi2 = hierarchical_ci(apart, seed=1)
    _, lo1, hi1 = median_ci(sum(apart, []), seed=1)        # pooled as if one process
    assert hi - lo < 0.05 and hi2 - lo2 > 0.2 and hi2 - lo2 > 3 * (hi1 - lo1)
    assert hierarchical_ci(apart, seed=1) == hierarchical_ci(apart, seed=1)


def test_merge_repeats_gives_a_hierarchical_interval_where_ratios_were_kept():
    runs = [_run([(1, s)]) for s in (2.0, 2.1, 2.2)]
    for run, s in zip(runs, (2.0, 2.1, 2.2)):
        run["rows"][0]["speedup_ratios"] = [s * (1 + 0.01 * k) for k in (-1, 0, 1)]
    lo, hi = merge_repeats(runs)["rows"][0]["speedup_repeats_ci"]
    assert 1.97 <= lo <= 2.1 <= hi <= 2.23
    del runs[1]["rows"][0]["speedup_ratios"]
    assert "speedup_repeats_ci" not in merge_repeats(runs)["rows"][0]


def test_merged_shape_is_judged_on_the_interval_across_processes():
    """Neighbouring merged rows may come from different processes: a rise that separates on
    each row's own interval but not on the hierarchical one (processes resampled) is no rise."""
    def run(s1, s4):
        r = _run([(1, s1), (4, s4)])
        for row in r["rows"]:
            s = row["speedup"]
            row.update(speedup_ci=[s * 0.995, s * 1.005], speedup_ratios=[s * 0.995, s, s * 1.005])
        r["shape_check"] = {}
        return r
    # bs 1: 2.0 / 2.3 / 2.2 -> process 3's 2.2; bs 4: 2.4 / 2.1 / 2.25 -> process 3's 2.25
    m = merge_repeats([run(2.0, 2.4), run(2.3, 2.1), run(2.2, 2.25)])
    assert [r["speedup"] for r in m["rows"]] == [2.2, 2.25]
    assert check_shape(m["rows"])["held"] is False          # own intervals: 2.25 above 2.2
    assert m["shape_check"]["held"] is True                  # across processes: they overlap
