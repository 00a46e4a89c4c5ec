"""Random weights of a model shape: seeded, scaled so activations stay bounded over many layers.
Nothing is downloaded; two decoders built with the same seed hold the same weights."""
from __future__ import annotations

import torch

from microbench.engine.shapes import ModelShape


def random_weights(shape: ModelShape, dtype: torch.dtype, device, seed: int = 0):
    """(embedding [vocab, hidden], one dict of weights per layer, final norm weight [hidden]).
    A layer holds attn_norm, wqkv [(H + 2Hkv)D, hidden], wo [hidden, HD], ffn_norm,
    wgu [2F, hidden] (gate rows, then up rows) and wdown [hidden, F]."""
    s = shape
    gen = torch.Generator(device=device).manual_seed(seed)

    def w(out_f, in_f, gain=1.0):
        t = torch.randn(out_f, in_f, generator=gen, device=device, dtype=torch.float32)
        return (t * (gain / in_f ** 0.5)).to(dtype)

    def norm_w(n):
        t = 1.0 + 0.1 * torch.randn(n, generator=gen, device=device, dtype=torch.float32)
        return t.to(dtype)

    embed = (torch.randn(s.vocab, s.hidden, generator=gen, device=device) * 0.5).to(dtype)
    layers = []
    for _ in range(s.n_layers):
        layers.append(dict(
            attn_norm=norm_w(s.hidden),
            wqkv=w(s.qkv_size, s.hidden),
            # Residual branches at half gain keep activations bounded over many random layers.
            wo=w(s.hidden, s.q_size, 0.5),
            ffn_norm=norm_w(s.hidden),
            wgu=w(2 * s.ffn, s.hidden),
            wdown=w(s.hidden, s.ffn, 0.5),
        ))
    return embed, layers, norm_w(s.hidden)
