"""microbench.stats: the noise bands, the speedup-shape check and the line fits, on hand cases."""
import pytest

from microbench.stats import (break_even_steps, check_shape, fit_linear, fit_pool, row_noise,
                              speedup_noise)


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
