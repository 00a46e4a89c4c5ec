import pytest

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
