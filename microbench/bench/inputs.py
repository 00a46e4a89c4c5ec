"""A decode step's inputs, built in one place: every benchmark steps the decoder with these."""
from __future__ import annotations

import torch


def step_inputs(vocab: int, bs: int, context: int, device, generator=None, *,
                host_tokens: bool = False, slot: int | None = None):
    """(tokens, positions, slots) of one decode step of `bs` sequences, each with `context`
    tokens cached (its new token goes at position `context`). Tokens are drawn from `generator`
    (zeros without one; with `host_tokens`, drawn on the host and copied, so ranks holding
    equal host generators draw the same); slots are 0..bs-1, or all `slot` (a scratch slot)."""
    if generator is None:
        tokens = torch.zeros(bs, dtype=torch.long, device=device)
    elif host_tokens:
        tokens = torch.randint(vocab, (bs,), generator=generator).to(device)
    else:
        tokens = torch.randint(vocab, (bs,), generator=generator, device=device)
    positions = torch.full((bs,), context, dtype=torch.long, device=device)
    if slot is None:
        slots = torch.arange(bs, dtype=torch.long, device=device)
    else:
        slots = torch.full((bs,), slot, dtype=torch.long, device=device)
    return tokens, positions, slots


def packed(tokens, positions, slots):
    """The step's inputs as one [3, bs] tensor, as the graph runner takes an engine's batch."""
    return torch.stack([tokens, positions, slots])
