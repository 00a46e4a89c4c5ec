"""What one decode step must do: its kernels in launch order, with the bytes each must move and
the flops each must do, counted from the model shape (the same counts the kernels' reference
docstrings state). The analytic model and the sweep's bandwidth figures both read this list.
"""
from __future__ import annotations

from dataclasses import dataclass

from microbench.config import ModelShape


@dataclass(frozen=True)
class Kernel:
    name: str
    launcher: str       # "triton", "cublas" or "torch": whose launch path enqueues it
    bytes: int          # bytes read + written in DRAM
    flops: int


def step_kernels(shape: ModelShape, b: int, context: int, elt: int = 2,
                 attn_launches: int = 2) -> list[Kernel]:
    """Kernels of one eager decode step of the triton backend at batch b, where each sequence
    attends to `context` cached positions plus its new token. elt: bytes per element."""
    s, h = shape, shape.hidden
    H, Hkv, D, Fw, V = s.n_heads, s.n_kv_heads, s.head_dim, s.ffn, s.vocab
    kv_len = context + 1
    ks = [Kernel("embedding", "torch", 2 * b * h * elt, 0),
          Kernel("seq_lens_add", "torch", 2 * b * 8, 0),
          Kernel("seq_lens_cast", "torch", b * 12, 0)]

    def mm(name, n_in, n_out):
        return Kernel(name, "cublas", (n_in * n_out + b * n_in + b * n_out) * elt, 2 * b * n_in * n_out)

    def norm(name, fused):
        # reads x (and the residual) and w; writes the normed rows (and the new residual)
        return Kernel(name, "triton", ((2 if fused else 1) * 2 * b * h + h) * elt, 4 * b * h)

    for l in range(s.n_layers):
        ks.append(norm("rmsnorm", fused=l > 0))
        ks.append(mm("qkv_proj", h, s.qkv_size))
        ks.append(Kernel("rope", "triton", 2 * b * (H + Hkv) * D * elt, 6 * b * (H + Hkv) * D))
        ks.append(Kernel("store_kv", "triton", 2 * 2 * b * Hkv * D * elt, 0))
        kv_bytes = 2 * b * Hkv * kv_len * D * elt
        attn_flops = 4 * b * H * kv_len * D
        ks.append(Kernel("decode_attention", "triton", kv_bytes + 2 * b * H * D * elt, attn_flops))
        for _ in range(attn_launches - 1):
            ks.append(Kernel("attention_reduce", "triton", 2 * b * H * D * 4, 0))
        ks.append(mm("o_proj", H * D, h))
        ks.append(norm("rmsnorm", fused=True))
        ks.append(mm("gate_up_proj", h, 2 * Fw))
        ks.append(Kernel("swiglu", "triton", 3 * b * Fw * elt, 4 * b * Fw))
        ks.append(mm("down_proj", Fw, h))
    ks.append(norm("final_norm", fused=True))
    ks.append(mm("lm_head", h, V))
    return ks


def step_bytes(shape: ModelShape, b: int, context: int, elt: int = 2) -> int:
    """Bytes a step must move: every kernel's reads and writes (weights once, the KV history of
    every sequence, the new KV, activations)."""
    return sum(k.bytes for k in step_kernels(shape, b, context, elt))


def step_flops(shape: ModelShape, b: int, context: int) -> int:
    return sum(k.flops for k in step_kernels(shape, b, context))


def launch_counts(kernels) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in kernels:
        out[k.launcher] = out.get(k.launcher, 0) + 1
    return out
