"""memory-headroom's text and checks under an engine's budget (`reproduce memory-headroom
--gpu-memory-utilization`, bench.headroom): what the budget gave the KV cache, what each captured
size cost in KV tokens, the sizes skipped for memory and the replay check. Pure functions of the
saved entry.

Under a budget the KV tokens left are a running sum of each size's pool growth (never
negative: engine.memory.size_costs), so "the tokens do not rise as sizes are added" holds by
construction there and is not judged. Judged instead: the captured sizes took KV tokens at all
(not when every capture ran out of memory or the pool never grew), and each captured size's
replay equals the eager step on the same batch within REPLAY_ATOL.
"""
from __future__ import annotations

from microbench.analysis.judging import fmt_mib as _mib


# An exact capture replays the eager step's own kernels on the same batch and inputs, so its
# logits match bit for bit (tests/engine/test_runner.py asserts equality for an exact capture;
# its 0.1 tolerance is for padded batches, whose shapes change the rounding).
REPLAY_ATOL = 0.0


def replay_held(row: dict) -> bool:
    """A captured size's replay matched eager: max |graph - eager| recorded and within
    REPLAY_ATOL (a missing or NaN difference fails)."""
    d = row.get("replay_max_abs_diff")
    return d is not None and d <= REPLAY_ATOL


def budget_checks(rows: list) -> tuple[dict, str]:
    """memory-headroom's checks under an engine's budget (failure reason -> passed) and their
    pass condition, on the verdict's rows (n_sizes order, the baseline first)."""
    toks = [r["kv_tokens"] for r in rows]
    off = [r["size"] for r in rows if r.get("size") is not None and not replay_held(r)]
    checks = {"the captured sizes took no KV tokens (every size skipped, or the pool did not "
              "grow)": toks[-1] < toks[0],
              f"the replay of sizes {off} differs from the eager step on the same batch "
              f"(max |graph - eager| over {REPLAY_ATOL:g}, or not recorded)": not off}
    return checks, (f"the captured sizes take KV tokens; each one's replay equals the eager "
                    f"step on the same batch (max |graph - eager| at most {REPLAY_ATOL:g} over "
                    f"the logits)")


def budget_text(info: dict, rows: list, measured: str) -> tuple[str, list]:
    """memory-headroom's measured text and notes under an engine's budget (bench.headroom)."""
    b, skipped = info["budget"], info.get("skipped") or []
    sized = [r for r in rows if r.get("size") is not None]
    diffs = [r.get("replay_max_abs_diff") for r in sized]
    worst = "not recorded" if None in diffs else f"{max(diffs, default=0):.3g}"
    head = (f"{b['utilization']:g} of {_mib(b['total_bytes'])} = {_mib(b['requested_bytes'])}, "
            f"less weights {_mib(b['weight_bytes'])}, activations {_mib(b['activation_bytes'])} "
            f"and {_mib(b['non_torch_bytes'])} outside torch, leaves the KV cache "
            f"{_mib(b['kv_cache_bytes'])} ({b['kv_tokens']} tokens); ")
    measured = head + measured
    if skipped:
        measured += f"; {info.get('skipped_status', 'skipped')}: sizes {skipped}"
    costly = sorted(sized, key=lambda r: -r["size_pool_bytes"])[:3]
    notes = [f"Captured after the KV cache, largest first, the graphs sit in the "
             f"{_mib(b['unrequested_bytes'])} the utilization left unrequested; the KV tokens "
             f"left are what an engine counting the pool inside its budget would keep. Costliest "
             f"sizes: " + ", ".join(f"{r['size']} ({_mib(r['size_pool_bytes'])}, "
                                    f"{r['size_kv_tokens']} tokens)" for r in costly) + ".",
             f"Each captured size replayed one step against the eager step: max |graph - eager| "
             f"{worst} over the logits (held to {REPLAY_ATOL:g})."]
    if skipped:
        notes.append(f"Sizes {skipped} ran out of device memory during capture and were skipped: "
                     f"their batches pad to a larger captured size or run eagerly.")
    return measured, notes
