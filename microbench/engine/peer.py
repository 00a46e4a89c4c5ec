"""The peer: the toy decoder's model written as a PyTorch user would write it, in the style of
gpt-fast's `model.py`, for the sweep's `torch-compile` arm (torch.compile, reduce-overhead).

Plain `nn.Module` blocks, plain PyTorch ops in the model's dtype:

    x = tok_embeddings(tokens)                        # [B, 1, hidden]
    per block:
        h = x + wo(sdpa(rope(q), cache(rope(k)), cache(v), mask))   # q, k, v from wqkv(norm(x))
        x = h + w2(silu(w1(norm(h))) * w3(norm(h)))
    logits = output(norm(x))                          # the LM head tied to the embedding

The KV cache is held as module buffers [max_batch, Hkv, max_seq, D], as gpt-fast holds it;
batch row i is cache row i (the toy's slot i: the sweep's slots are 0..B-1). A step writes each
sequence's new K and V at its own position (`positions[i]`) and attends over cache positions
[0, positions[i]] through a boolean mask over the whole cache length, gpt-fast's idiom. GQA as
gpt-fast does it: K and V repeated to the query heads (repeat_interleave) before
scaled_dot_product_attention. With an explicit mask that is the call CUDA's fused kernels take:
flash attention takes no mask, and memory-efficient attention takes a mask but not enable_gqa, so
enable_gqa with a mask would fall back to the unfused math path.

Where gpt-fast's formulas and the toy's differ, this follows the toy, so the two models give
the same logits up to rounding: RoPE rotates NeoX halves (gpt-fast rotates interleaved pairs),
the norm multiplies by its weight in float32 before casting back, and SwiGLU computes in
float32. Inductor fuses each of these into one kernel either way.

`PeerDecoder.from_decoder(dec)` takes a ToyDecoder's weights (the same tensors: nothing is
copied) and a copy of its KV caches, so it starts from the same history.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from microbench.engine.shapes import ModelShape


def _param(t: Tensor) -> nn.Parameter:
    # a Parameter over the same storage as t (no copy), outside autograd
    return nn.Parameter(t, requires_grad=False)


def _linear(w: Tensor) -> nn.Linear:
    """nn.Linear without bias whose weight is w [out, in] itself."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    lin.weight = _param(w)
    return lin


class RMSNorm(nn.Module):
    def __init__(self, weight: Tensor, eps: float):
        super().__init__()
        self.eps, self.weight = eps, _param(weight)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
                * self.weight.float()).type_as(x)


class KVCache(nn.Module):
    """One layer's K and V as buffers [max_batch, Hkv, max_seq, D]."""

    def __init__(self, k: Tensor, v: Tensor):
        super().__init__()
        self.register_buffer("k_cache", k)
        self.register_buffer("v_cache", v)

    def update(self, positions: Tensor, k: Tensor, v: Tensor):
        """Writes k and v [B, Hkv, 1, D] at (row i, position positions[i]); returns the first
        B rows of both caches (views: nothing is gathered)."""
        B = k.shape[0]
        rows = torch.arange(B, device=k.device)
        # advanced indices around a slice: the indexed view is [B, Hkv, D]
        self.k_cache[rows, :, positions] = k[:, :, 0]
        self.v_cache[rows, :, positions] = v[:, :, 0]
        return self.k_cache[:B], self.v_cache[:B]


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, 1, heads, D] rotated by NeoX halves: cat(x1·cos − x2·sin, x2·cos + x1·sin) in
    float32, cast back; cos and sin are [B, D/2]."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    cos, sin = cos[:, None, None, :], sin[:, None, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, shape: ModelShape, wqkv: Tensor, wo: Tensor, cache: KVCache):
        super().__init__()
        self.shape = shape
        self.wqkv, self.wo, self.kv_cache = _linear(wqkv), _linear(wo), cache

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                positions: Tensor) -> Tensor:
        s, B = self.shape, x.shape[0]
        q, k, v = self.wqkv(x).split([s.q_size, s.kv_size, s.kv_size], dim=-1)
        q = rope(q.view(B, 1, s.n_heads, s.head_dim), cos, sin)
        k = rope(k.view(B, 1, s.n_kv_heads, s.head_dim), cos, sin)
        v = v.view(B, 1, s.n_kv_heads, s.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))                 # [B, heads, 1, D]
        k, v = self.kv_cache.update(positions, k, v)                     # [B, Hkv, max_seq, D]
        rep = s.n_heads // s.n_kv_heads
        if rep > 1:   # GQA (a model with as many KV heads as query heads has nothing to repeat)
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # [B, H, max_seq, D]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(B, 1, s.q_size))


class FeedForward(nn.Module):
    def __init__(self, wgu: Tensor, wdown: Tensor):
        super().__init__()
        ffn = wgu.shape[0] // 2
        # the toy's gate/up rows [gate; up] as gpt-fast's w1 (gate) and w3 (up)
        self.w1, self.w3, self.w2 = _linear(wgu[:ffn]), _linear(wgu[ffn:]), _linear(wdown)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2((F.silu(self.w1(x).float()) * self.w3(x).float()).type_as(x))


class Block(nn.Module):
    def __init__(self, shape: ModelShape, w: dict, cache: KVCache):
        super().__init__()
        self.attention_norm = RMSNorm(w["attn_norm"], shape.norm_eps)
        self.attention = Attention(shape, w["wqkv"], w["wo"], cache)
        self.ffn_norm = RMSNorm(w["ffn_norm"], shape.norm_eps)
        self.feed_forward = FeedForward(w["wgu"], w["wdown"])

    def forward(self, x, cos, sin, mask, positions):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, positions)
        return h + self.feed_forward(self.ffn_norm(h))


class PeerDecoder(nn.Module):
    """The whole model: `forward(tokens [B], positions [B]) -> logits [B, vocab]`, one new token
    per sequence, for B up to max_batch. Sequence i is cache row i; it attends over positions
    [0, positions[i]], its new token included."""

    def __init__(self, shape: ModelShape, embed: Tensor, layers: list[dict], final_norm: Tensor,
                 caches: list[KVCache], max_seq: int):
        super().__init__()
        self.shape, self.max_seq = shape, max_seq
        self.tok_embeddings = nn.Embedding(shape.vocab, shape.hidden, device="meta")
        self.tok_embeddings.weight = _param(embed)
        self.layers = nn.ModuleList(Block(shape, w, c) for w, c in zip(layers, caches))
        self.norm = RMSNorm(final_norm, shape.norm_eps)
        self.output = nn.Linear(shape.hidden, shape.vocab, bias=False, device="meta")
        self.output.weight = self.tok_embeddings.weight                  # tied LM head
        cos, sin = rope_tables(shape, max_seq, embed.device)
        self.register_buffer("rope_cos", cos)
        self.register_buffer("rope_sin", sin)

    @classmethod
    def from_decoder(cls, dec) -> "PeerDecoder":
        """The ToyDecoder `dec`'s model: its weight tensors themselves, and a copy of its KV
        caches' first max_batch slots (the history fill_cache gave it)."""
        caches = [KVCache(k[:dec.max_batch].clone(), v[:dec.max_batch].clone())
                  for k, v in zip(dec.k_cache, dec.v_cache)]
        return cls(dec.shape, dec.embed, dec.layers, dec.final_norm, caches, dec.max_seq)

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        B = tokens.shape[0]
        x = self.tok_embeddings(tokens[:, None])                         # [B, 1, hidden]
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]    # [B, D/2]
        # [B, 1, 1, max_seq]: sequence i sees cache positions 0..positions[i]
        mask = (torch.arange(self.max_seq, device=tokens.device) <= positions[:, None])[:, None, None]
        for layer in self.layers:
            x = layer(x, cos, sin, mask, positions)
        return self.output(self.norm(x)).view(B, self.shape.vocab)

    def caches(self) -> list[Tensor]:
        """Every KV-cache buffer, K and V of each layer."""
        return [t for L in self.layers for t in (L.attention.kv_cache.k_cache,
                                                  L.attention.kv_cache.v_cache)]


def rope_tables(shape: ModelShape, max_seq: int, device) -> tuple[Tensor, Tensor]:
    """cos and sin [max_seq, D/2] in float32 of angle[p, i] = p · theta^(−2i/D), with the
    inverse frequencies rounded to float32 once as the toy's rope does (gpt-fast's
    precompute_freqs_cis, kept in float32)."""
    half = shape.head_dim // 2
    theta = torch.full((), shape.rope_theta, dtype=torch.float32, device=device).double()
    inv_freq = torch.exp2(torch.arange(half, device=device, dtype=torch.float64)
                          * (torch.log2(theta) * (-2.0 / shape.head_dim))).float()
    angle = torch.arange(max_seq, device=device, dtype=torch.float32)[:, None] * inv_freq
    return torch.cos(angle), torch.sin(angle)
