"""A row sampled on a slow host after its wait ran out is taken back and sampled again at the
process's next turn (sweep.measure_until_quick), on the CPU with stand-in rows."""
from microbench.bench.sweep import ROW_RETRIES, _Sweep, measure_until_quick


class Process:
    """A sweep process's side of a row: measure() gives the next of `slow` (each try's slow
    rounds) as a row, retract() and the gate are logged in order."""

    def __init__(self, *slow):
        self.slow, self.log, self.said = list(slow), [], []

    def measure(self, bs):
        n = self.slow.pop(0)
        self.log.append(f"measure {bs}")
        return dict(bs=bs, try_slow=n, host_pin=dict(slow_rounds=n, rounds=30))

    def retract(self):
        self.log.append("retract")

    def gate(self, phase):
        self.log.append(f"gate {phase}")

    def run(self, bs=4, **kw):
        return measure_until_quick(bs, self.measure, self.retract, self.gate, self.said.append,
                                   **kw)


def test_a_row_on_a_quick_host_is_kept_as_measured():
    p = Process(0)
    row = p.run()
    assert p.log == ["measure 4"] and p.said == []
    assert "retried_slow_rounds" not in row["host_pin"]


def test_a_slow_row_is_taken_back_and_sampled_again_at_the_next_turn():
    p = Process(12, 0)
    row = p.run()
    assert p.log == ["measure 4", "retract", "gate bs 4 again", "measure 4"]
    assert row["try_slow"] == 0 and row["host_pin"]["retried_slow_rounds"] == [12]
    assert p.said == ["bs 4: 12 rounds sampled on a slow host after the wait ran out; "
                      "sampling the row again"]


def test_tries_are_capped_and_the_last_slow_row_is_kept():
    """A slow phase that outlasts every try keeps the last row, still slow, so --repeat can
    replace its process (cli_repeat.slow_rows reads the kept row's slow_rounds)."""
    p = Process(*([5] * (ROW_RETRIES + 2)))
    row = p.run()
    assert p.log.count("retract") == ROW_RETRIES and p.log[-1] == "measure 4"
    assert row["host_pin"]["slow_rounds"] == 5
    assert row["host_pin"]["retried_slow_rounds"] == [5] * ROW_RETRIES
    assert p.slow == [5]                        # one try never taken
    assert Process(7, 7).run(retries=0)["host_pin"]["slow_rounds"] == 7


def test_retract_takes_back_the_last_row_and_what_it_queued():
    """_Sweep.retract on a sweep's bookkeeping (no GPU): the rows before stay, with their
    profiling entries and the arms' step functions kept for the graphed check."""
    sw = _Sweep.__new__(_Sweep)
    first, last = dict(bs=1), dict(bs=4)
    sw.run = dict(rows=[first, last])
    sw.measured = [(first, 1), (last, 4)]
    sw.to_profile = [(1, 1, "e1", "g1"), (4, 4, "e4", "g4")]
    sw.arm_fns = [("eager", first, "f1"), ("graph", first, "g1"),
                  ("eager", last, "f4"), ("graph", last, "g4")]
    sw.retract()
    assert sw.run["rows"] == [first] and sw.measured == [(first, 1)]
    assert sw.to_profile == [(1, 1, "e1", "g1")]
    assert sw.arm_fns == [("eager", first, "f1"), ("graph", first, "g1")]
