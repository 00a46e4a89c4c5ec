"""An engine's start-up memory order on the toy decoder (engine.memory has the arithmetic):
profile the largest batch's eager step, allocate the KV cache the `gpu_memory_utilization`
budget leaves, then capture the graphs into what remains, skipping (and reporting) any size
whose capture runs out of memory.

The decoder is already built when this runs (its weights and working KV cache are held), so the
memory it holds counts as free at start-up, and its own KV cache counts as part of the budget's
KV cache: only the rest is allocated here, as one block that stands for the engine's pages.
"""
from __future__ import annotations

import warnings

import torch

from microbench.bench.inputs import packed, step_inputs
from microbench.bench.lab import free_memory
from microbench.engine.memory import (OPTION, MemoryBudget, SKIPPED, budget_lines, check_free,
                                      kv_bytes_per_token, size_costs)
from microbench.engine.runner import GraphRunner


def profile_step(dec, bs: int, context: int, seed: int = 0) -> dict:
    """The profile run: one eager step of `bs` sequences. Returns the torch allocator's peak
    increase (activation_bytes), the device memory that appeared outside the allocator
    (non_torch_bytes), and what was free, held by torch and in total before it."""
    free_memory()
    free0, total = torch.cuda.mem_get_info()
    held0 = torch.cuda.memory_reserved()
    gen = torch.Generator(device=dec.device).manual_seed(seed)
    t, p, s = step_inputs(dec.shape.vocab, bs, context, dec.device, gen)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    dec.step(t, p, s)
    torch.cuda.synchronize()
    act = torch.cuda.max_memory_allocated() - before
    free1 = torch.cuda.mem_get_info()[0]
    outside = lambda free, held: total - free - held
    non_torch = outside(free1, torch.cuda.memory_reserved()) - outside(free0, held0)
    free_memory()
    return dict(total_bytes=total, free_bytes=free0, torch_bytes=held0, activation_bytes=act,
                non_torch_bytes=max(0, non_torch))


def replay_diffs(runner, dec, sizes, context: int, seed: int = 0) -> dict:
    """Per captured size, max |graph - eager| of one step at that size (logits): a replay that
    runs is checked against the decoder's own eager step on the same inputs."""
    out = {}
    gen = torch.Generator(device=dec.device).manual_seed(seed + 1)
    for size in sizes:
        t, p, s = step_inputs(dec.shape.vocab, size, context, dec.device, gen)
        g = runner.step_packed(packed(t, p, s)).float().clone()
        e = dec.step(t, p, s).float()
        out[size] = (g - e).abs().max().item()
    return out


def kv_block_bytes(budget: MemoryBudget, own: int) -> int:
    """The block allocated beside the decoder's own KV cache (`own` bytes, already held) so the
    two make the budget's KV cache. ValueError (one line) when the decoder's cache alone is
    larger: the run would measure with more KV cache than the budget gives."""
    extra = budget.kv_cache_bytes - own
    if extra < 0:
        raise ValueError(f"{OPTION} {budget.utilization:g} leaves "
                         f"{budget.kv_cache_bytes / 2**30:.3g} GiB for the KV cache; the decoder "
                         f"already holds {own / 2**30:.3g} GiB (its largest batch at --context); "
                         f"raise it or lower --context")
    return extra


def run_budget(dec, sizes, utilization: float, context: int, say=None, on_capture=None,
               limit_bytes: int | None = None, seed: int = 0) -> dict:
    """Profile, KV cache, capture (vLLM's order) for the capture sizes `sizes` on `dec`.
    Returns info (the budget, MemoryBudget.to_dict(); the KV block allocated; the capture
    report; skipped sizes) and rows (engine.memory.size_costs, with each size's replay check).

    limit_bytes: once the KV cache is allocated, cap the caching allocator at what it then
    holds plus this many bytes (torch.cuda.set_per_process_memory_fraction): a device with that
    little room left for graphs, so a capture runs out of memory (the GPU test forces one)."""
    say = say or (lambda s: None)
    sizes = sorted(set(sizes))
    elt = dec.k_cache[0].element_size()
    prof = profile_step(dec, sizes[-1], context, seed)
    budget = MemoryBudget(prof["total_bytes"], utilization, dec.weight_bytes(),
                          prof["activation_bytes"], prof["non_torch_bytes"],
                          kv_bytes_per_token(dec.shape, elt))
    # torch's holdings (weights, the decoder's cache) were loaded before this: count them free
    check_free(budget, prof["free_bytes"] + prof["torch_bytes"])
    own = sum(c.numel() * c.element_size() for c in dec.k_cache + dec.v_cache)
    extra = kv_block_bytes(budget, own)
    say(f"KV cache {budget.kv_cache_bytes / 2**30:.2f} GiB ({budget.kv_tokens} tokens): "
        f"allocating {extra / 2**30:.2f} GiB beside the decoder's own cache")
    block = torch.empty(extra, dtype=torch.uint8, device=dec.device)
    runner = GraphRunner(dec, sizes, mode="full", on_capture=on_capture)
    try:
        if limit_bytes is not None:
            free_memory()
            total = budget.total_bytes
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, (torch.cuda.memory_reserved() + limit_bytes) / total))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                report = runner.capture()
        finally:
            if limit_bytes is not None:
                torch.cuda.set_per_process_memory_fraction(1.0)
        for w in caught:
            if "out of device memory" in str(w.message):
                say(str(w.message))
        order = {s: i for i, s in enumerate(sorted(sizes, reverse=True))}   # largest first
        captured = sorted(report["sizes"], key=lambda s: order[s["size"]])
        rows = size_costs(budget, captured)
        diffs = replay_diffs(runner, dec, [r["size"] for r in rows], context, seed)
        for r in rows:
            r["replay_max_abs_diff"] = diffs[r["size"]]
    finally:
        runner.close()
        del block
        free_memory()
    info = dict(budget=budget.to_dict(), kv_block_bytes=extra, decoder_kv_bytes=own,
                capture_s=report["capture_s"], pool_bytes=report["pool_bytes"],
                skipped=list(report["skipped"]), skipped_status=SKIPPED,
                limit_bytes=limit_bytes, sizes=sizes)
    for line in budget_lines(info["budget"], rows, info["skipped"]):
        say(line)
    return dict(rows=rows, info=info)
