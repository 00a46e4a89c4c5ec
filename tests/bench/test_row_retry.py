"""A row whose figures keep rounds sampled on a slow host after its wait ran out is sampled
again at the process's next turn and the earlier try taken back (sweep.measure_until_quick), on
the CPU with stand-in rows."""
from microbench.bench.sweep import ROW_RETRIES, _Sweep, measure_until_quick


class Process:
    """A sweep process's side of a row: measure() gives the next of `slow` (each try's slow
    rounds, every round counted) as a row, retract(row) and the gate are logged in order."""

    def __init__(self, *slow, pin=None):
        self.slow, self.log, self.said, self.pin = list(slow), [], [], pin or {}

    def measure(self, bs):
        n = self.slow.pop(0)
        self.log.append(f"measure {bs}")
        return dict(bs=bs, try_slow=n, host_pin=dict(self.pin, slow_rounds=n, rounds=30))

    def retract(self, row):
        self.log.append(f"retract try with {row['try_slow']}")

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
    # the earlier try is taken back only once the next is measured (an interrupt keeps it)
    assert p.log == ["measure 4", "gate bs 4 again", "measure 4", "retract try with 12"]
    assert row["try_slow"] == 0 and row["host_pin"]["retried_slow_rounds"] == [12]
    assert p.said == ["bs 4: 12 rounds sampled on a slow host after the wait ran out; "
                      "sampling the row again"]


def test_tries_are_capped_and_the_last_slow_row_is_kept():
    """A slow phase that outlasts every try keeps the last row, still slow, so --repeat can
    replace its process (cli_repeat.slow_rows reads the kept row's slow_rounds)."""
    p = Process(*([5] * (ROW_RETRIES + 2)))
    row = p.run()
    assert p.log.count("retract try with 5") == ROW_RETRIES and p.log[-2] == "measure 4"
    assert row["host_pin"]["slow_rounds"] == 5
    assert row["host_pin"]["retried_slow_rounds"] == [5] * ROW_RETRIES
    assert p.slow == [5]                        # one try never taken
    assert Process(7, 7).run(retries=0)["host_pin"]["slow_rounds"] == 7


def test_slow_rounds_the_quiet_rule_dropped_need_no_second_try():
    """Under the quiet rule the slow rounds are dropped with the others the host was not quick
    around: the row stands, unless it fell back to every round."""
    quiet = dict(quiet_tol=1.04, quiet_rounds=12)
    p = Process(9, 0, pin=quiet)
    assert "retried_slow_rounds" not in p.run()["host_pin"] and p.log == ["measure 4"]
    p = Process(9, 0, pin=dict(quiet, quiet_fallback=True))
    assert p.run()["host_pin"]["retried_slow_rounds"] == [9]


def test_retract_takes_back_one_row_and_what_it_queued():
    """_Sweep.retract on a sweep's bookkeeping (no GPU): the earlier try of bs 4 goes, by
    identity (the two tries' rows may compare equal); the row before it and the try after it
    stay, with their profiling entries and the arms' step functions for the graphed check."""
    sw = _Sweep.__new__(_Sweep)
    first, old, new = dict(bs=1), dict(bs=4), dict(bs=4)
    rows = [first, old, new]
    sw.run = dict(rows=rows)
    sw.measured = [(first, 1), (old, 4), (new, 4)]
    sw.to_profile = [(1, 1, "e1", "g1", first), (4, 4, "e4", "g4", old),
                     (4, 4, "e4'", "g4'", new)]
    sw.arm_fns = [("eager", first, "f1"), ("graph", first, "g1"),
                  ("eager", old, "f4"), ("graph", old, "g4"),
                  ("eager", new, "f4'"), ("graph", new, "g4'")]
    sw.retract(old)
    assert sw.run["rows"] is rows                 # the run's own list, changed in place
    assert [id(r) for r in rows] == [id(first), id(new)]
    assert [id(m[0]) for m in sw.measured] == [id(first), id(new)]
    assert [e[2] for e in sw.to_profile] == ["e1", "e4'"]
    assert [a[2] for a in sw.arm_fns] == ["f1", "g1", "f4'", "g4'"]
