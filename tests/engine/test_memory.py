"""engine.memory: the gpu_memory_utilization budget's arithmetic, each captured size's cost in
KV tokens, and their text (CPU only)."""
import math

import pytest

from microbench.engine.memory import (MemoryBudget, budget_lines, check_free, check_utilization,
                                      kv_bytes_per_token, size_costs)
from microbench.engine.shapes import PRESETS

GiB, MiB = 1 << 30, 1 << 20
PER = kv_bytes_per_token(PRESETS["opt-125m"], 2)      # 2 · 12 · 12 · 64 · 2 = 36864


def budget(u=0.9, total=80 * GiB, weights=GiB, act=512 * MiB, other=256 * MiB):
    return MemoryBudget(total, u, weights, act, other, PER)


def test_kv_bytes_per_token_of_the_presets():
    assert PER == 36864
    assert kv_bytes_per_token(PRESETS["llama-8b"], 2) == 2 * 32 * 8 * 128 * 2   # 128 KiB


def test_budget_follows_vllms_formula():
    b = budget()
    assert b.requested_bytes == math.ceil(80 * GiB * 0.9)
    assert b.non_kv_bytes == GiB + 768 * MiB
    assert b.kv_cache_bytes == b.requested_bytes - b.non_kv_bytes
    assert b.kv_tokens == b.kv_cache_bytes // PER
    assert b.unrequested_bytes == 80 * GiB - b.requested_bytes
    d = b.to_dict()
    assert d["kv_tokens"] == b.kv_tokens and d["utilization"] == 0.9


def test_requested_rounds_up_and_kv_never_negative():
    assert MemoryBudget(10, 0.25, 0, 0, 0, 1).requested_bytes == 3        # ceil(2.5)
    tight = budget(u=0.01)                                                 # 0.8 GiB < weights
    assert tight.kv_cache_bytes == 0 and tight.kv_tokens == 0
    assert tight.tokens_with_pool(GiB) == 0


@pytest.mark.parametrize("u", [0, -0.1, 1.01, float("nan"), "0.5"])
def test_utilization_out_of_range_is_one_line(u):
    with pytest.raises(ValueError, match=r"^--gpu-memory-utilization: .*\(0, 1\]"):
        check_utilization(u)
    with pytest.raises(ValueError):
        MemoryBudget(GiB, u, 0, 0, 0, PER)


def test_check_free_refuses_more_than_was_free():
    b = budget(u=0.9)
    check_free(b, b.requested_bytes)
    with pytest.raises(ValueError, match="free at start-up; lower it"):
        check_free(b, b.requested_bytes - 1)


def test_size_costs_charge_each_sizes_pool_in_tokens():
    b = budget()
    captured = [dict(size=512, pool_bytes=300 * MiB), dict(size=256, pool_bytes=0),
                dict(size=1, pool_bytes=PER + 1)]
    rows = size_costs(b, captured)
    assert [r["size"] for r in rows] == [512, 256, 1] and [r["order"] for r in rows] == [1, 2, 3]
    assert rows[0]["size_kv_tokens"] == -(-300 * MiB // PER)
    assert rows[1]["size_kv_tokens"] == 0 and rows[2]["size_kv_tokens"] == 2   # ceil
    assert rows[-1]["pool_bytes"] == 300 * MiB + PER + 1
    assert rows[-1]["kv_tokens_if_budgeted"] == (b.kv_cache_bytes - rows[-1]["pool_bytes"]) // PER
    assert all(r["fits_unrequested"] for r in rows)
    # the token costs add up to the tokens lost, within one token per size (ceil against floor)
    lost = b.kv_tokens - rows[-1]["kv_tokens_if_budgeted"]
    assert 0 <= sum(r["size_kv_tokens"] for r in rows) - lost <= len(rows)


def test_pool_beyond_the_unrequested_memory_is_flagged():
    b = budget(u=1.0)
    rows = size_costs(b, [dict(size=8, pool_bytes=MiB)])
    assert b.unrequested_bytes == 0 and rows[0]["fits_unrequested"] is False


def test_budget_lines_report_skipped_sizes():
    b = budget()
    rows = size_costs(b, [dict(size=256, pool_bytes=64 * MiB)])
    lines = budget_lines(b.to_dict(), rows, [512])
    assert lines[0].startswith("budget: 0.9 of 80.00 GiB = 72.00 GiB")
    assert f"{b.kv_tokens} tokens at {PER} B a token" in lines[1]
    assert "1 sizes captured" in lines[2] and "inside the 8.00 GiB left unrequested" in lines[2]
    assert lines[3].startswith("skipped (out of memory): sizes 512")
    assert len(budget_lines(b.to_dict(), rows, [])) == 3
