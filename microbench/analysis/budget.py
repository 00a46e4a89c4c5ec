"""memory-headroom's text under an engine's budget (`reproduce memory-headroom
--gpu-memory-utilization`, bench.headroom): what the budget gave the KV cache, what each captured
size cost in KV tokens, the sizes skipped for memory and the replay check. Pure functions of the
saved entry."""
from __future__ import annotations

MiB, GiB = 1 << 20, 1 << 30


def _mib(n):
    return f"{n / MiB:.1f} MiB" if n < 100 * MiB else f"{n / GiB:.2f} GiB"


def budget_text(info: dict, rows: list, measured: str) -> tuple[str, list]:
    """memory-headroom's measured text and notes under an engine's budget (bench.headroom)."""
    b, skipped = info["budget"], info.get("skipped") or []
    sized = [r for r in rows if r.get("size") is not None]
    worst = max((r.get("replay_max_abs_diff") or 0 for r in sized), default=0)
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
             f"{worst:.3g} over the logits."]
    if skipped:
        notes.append(f"Sizes {skipped} ran out of device memory during capture and were skipped: "
                     f"their batches pad to a larger captured size or run eagerly.")
    return measured, notes
