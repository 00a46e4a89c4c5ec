"""The measuring loops' progress hooks, on the CPU."""
import pytest

from microbench.bench.timing import interleave


def test_interleave_tells_each_round_its_count_and_seconds():
    seen = []
    xs, _ = interleave({"a": lambda: 1.0, "b": lambda: 2.0}, min_rounds=3, max_rounds=3,
                       budget_s=60.0, on_round=lambda k, s, cap: seen.append((k, s, cap)))
    assert [k for k, _, _ in seen] == [1, 2, 3] and len(xs["a"]) == 3
    assert all(0 <= s < 60 and cap == 60.0 for _, s, cap in seen)
    assert [s for _, s, _ in seen] == sorted(s for _, s, _ in seen)


def test_interleave_without_a_hook_is_unchanged():
    xs, stable = interleave({"a": lambda: 1.0}, min_rounds=2, max_rounds=2)
    assert xs == {"a": [1.0, 1.0]} and stable is True
