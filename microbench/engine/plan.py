"""The step plan: which kernels one decode step launches, decided here and nowhere else.

`Fusion` names the plan a decoder runs; `is_skinny` says whether a batch takes the skinny
matmuls; `split_qkv` cuts the fused QKV row; `step_kernels` lists the step's kernels in launch
order, with the bytes each must move and the flops each must do, counted from the model shape
(the same counts the kernels' reference docstrings state). The decoder, the analytic model and
the sweep's bandwidth figures all read this module.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from microbench.engine.shapes import ModelShape

# Rows up to which a fused plan runs its matmuls as Triton skinny matmuls (kernels.gemv, which
# takes up to its MAX_ROWS); above, cuBLAS. A measured choice: `microbench tune` times the
# skinny tiles and cuBLAS on every matmul of the presets at 1, 2, 4, 8 and 16 rows, and
# `microbench tune --ab PRESET --vary plan` replays whole graphed steps of the fused plan
# against the unfused one (cuBLAS, separate norm and SwiGLU kernels). Since the tiles with the
# weight as the tensor cores' wide side (DOT=2, split-K where the column blocks are few), the
# skinny path streams the large weights near the copy bandwidth from 1 to 16 rows, and the
# fused plan's graphed steps at 4 and 16 rows beat the unfused one's on the H200
# (results/h200/logs/ab-plan-89acde7a.log). The plan's own constant, so the analytic model
# imports no torch.
FAST_ROWS = 16


class Fusion(enum.IntEnum):
    """The plans a decoder can run (ToyDecoder.fusion). An IntEnum, so saved runs' ints read
    back as the same plan."""
    UNFUSED = 0     # one kernel per operation
    MATMULS = 1     # rope into the KV store; at up to FAST_ROWS rows, skinny Triton matmuls
                    # with the norms in their prologues and the residual adds and swiglu in
                    # their epilogues
    ATTENTION = 2   # that, with RoPE, the KV store and the split merge inside attention

    @classmethod
    def from_record(cls, d: dict) -> "Fusion":
        """The plan a saved run's `decoder` record names: `fusion`, or in runs made before it,
        `fuse` and `fuse_attention` (runs before `fuse_attention` was recorded ran
        rope_store_kv)."""
        if "fusion" in d:
            return cls(d["fusion"])
        if not d.get("fuse"):
            return cls.UNFUSED
        return cls.ATTENTION if d.get("fuse_attention") else cls.MATMULS


# suffix of the skinny Triton matmuls' names (with their fused norm prologue or residual/swiglu
# epilogue)
SKINNY = ":skinny"


def backend_fusion(fusion: Fusion | int, backend: str) -> Fusion:
    """The plan a decoder of `backend` runs when asked for `fusion`: the fused kernels exist
    for the triton backend only; the torch backend runs one reference op per operation."""
    return Fusion(fusion) if backend == "triton" else Fusion.UNFUSED


def is_skinny(fusion: Fusion | int, rows: int, fast_rows: int = FAST_ROWS) -> bool:
    """Whether a step of `rows` rows takes the fused skinny-matmul path (up to `fast_rows`
    rows: today's FAST_ROWS, or what a saved run's decoder recorded)."""
    return rows <= fast_rows and fusion >= Fusion.MATMULS


def plan_at(fusion: Fusion | int, b: int, separate_rows=()) -> Fusion:
    """The plan a step of b rows runs in a decoder of `fusion` whose attention runs as separate
    kernels at the batch sizes `separate_rows` (engine/splits.py's "separate" mode, measured per
    batch size): Fusion.MATMULS there when the decoder fuses attention, `fusion` elsewhere."""
    fusion = Fusion(fusion)
    return Fusion.MATMULS if fusion == Fusion.ATTENTION and b in separate_rows else fusion


def rope_in_store(fusion: Fusion | int) -> bool:
    """Whether RoPE and the KV store are one kernel (rope_store_kv) outside attention."""
    return fusion == Fusion.MATMULS


def attention_fused(fusion: Fusion | int) -> bool:
    """Whether attention takes the QKV row and does RoPE, the KV store and its split merge."""
    return fusion >= Fusion.ATTENTION


def split_qkv(shape: ModelShape, qkv):
    """Views q [B, H, D], k and v [B, Hkv, D] of a fused QKV row [B, (H + 2Hkv)D]."""
    s, B = shape, qkv.shape[0]
    q = qkv[:, :s.q_size].view(B, s.n_heads, s.head_dim)
    k = qkv[:, s.q_size:s.q_size + s.kv_size].view(B, s.n_kv_heads, s.head_dim)
    v = qkv[:, s.q_size + s.kv_size:].view(B, s.n_kv_heads, s.head_dim)
    return q, k, v


@dataclass(frozen=True)
class Kernel:
    name: str
    launcher: str       # "triton", "cublas" or "torch": whose launch path enqueues it
    bytes: int          # bytes read + written in DRAM
    flops: int


def family(k: Kernel) -> str:
    """The kernel family whose line times k: skinny, cublas, attention or small."""
    if k.name.endswith(SKINNY):
        return "skinny"
    if k.launcher == "cublas":
        return "cublas"
    if k.name in ("decode_attention", "attention_reduce"):
        return "attention"
    return "small"


def step_kernels(shape: ModelShape, b: int, context: int, elt: int = 2,
                 attn_launches: int = 2, fusion: Fusion = Fusion.ATTENTION,
                 fast_rows: int = FAST_ROWS) -> list[Kernel]:
    """Kernels of one eager decode step of the triton backend at batch b, where each sequence
    attends to `context` cached positions plus its new token. elt: bytes per element.
    fusion: the decoder's plan (`ToyDecoder.fusion`); with Fusion.ATTENTION one attention
    kernel whatever attn_launches says. fast_rows: the rows up to which it runs skinny."""
    k = _StepKernels(shape, b, context, elt, Fusion(fusion), fast_rows)
    ks = k.embedding()
    for l in range(shape.n_layers):
        ks += k.layer(l, attn_launches)
    return ks + k.norm_mm("lm_head", shape.hidden, shape.vocab, fused_res=True)


def layer_kernels(shape: ModelShape, b: int, context: int, elt: int = 2,
                  attn_launches: int = 2, fusion: Fusion = Fusion.ATTENTION,
                  fast_rows: int = FAST_ROWS) -> list[Kernel]:
    """One layer's kernels in launch order, as step_kernels plans every layer after the first
    (whose norm adds the residual); the step repeats them n_layers times."""
    return _StepKernels(shape, b, context, elt, Fusion(fusion), fast_rows).layer(1, attn_launches)


class _StepKernels:
    """The kernels of one step's parts at batch b, for step_kernels."""

    def __init__(self, shape: ModelShape, b: int, context: int, elt: int, fusion: Fusion,
                 fast_rows: int = FAST_ROWS):
        self.s, self.b, self.context, self.elt, self.fusion = shape, b, context, elt, fusion
        self.skinny = is_skinny(fusion, b, fast_rows)

    def layer(self, l: int, attn_launches: int) -> list[Kernel]:
        """Layer l: the norm and QKV projection, attention, the O projection and the FFN."""
        ks = self.norm_mm("qkv_proj", self.s.hidden, self.s.qkv_size, fused_res=l > 0)
        return ks + self.attention(attn_launches) + self.o_and_ffn()

    def embedding(self) -> list[Kernel]:
        b, h, elt = self.b, self.s.hidden, self.elt
        if attention_fused(self.fusion):
            # one Triton kernel: the rows, and seq_lens from the positions (reads tokens and
            # positions, writes int32 lengths)
            return [Kernel("embedding", "triton", 2 * b * h * elt + b * (8 + 8 + 4), 0)]
        return [Kernel("embedding", "torch", 2 * b * h * elt, 0),
                Kernel("seq_lens_add", "torch", 2 * b * 8, 0),
                Kernel("seq_lens_cast", "torch", b * 12, 0)]

    def mm(self, name, n_in, n_out, extra_bytes=0, extra_flops=0) -> Kernel:
        # the skinny Triton matmuls carry their own names: their wrappers' host costs differ
        # from cuBLAS's, and the model looks host costs up by name
        b = self.b
        if self.skinny:
            name, launcher = name + SKINNY, "triton"
        else:
            launcher = "cublas"
        nbytes = (n_in * n_out + b * n_in + b * n_out) * self.elt + extra_bytes
        return Kernel(name, launcher, nbytes, 2 * b * n_in * n_out + extra_flops)

    def norm_mm(self, name, n_in, n_out, fused_res) -> list[Kernel]:
        """rmsnorm (with the residual add) before a matmul: one kernel when skinny (the norm in
        its prologue reads the norm weight; the residual was added by the kernel before)."""
        if not self.skinny:
            return [self.norm("final_norm" if name == "lm_head" else "rmsnorm", fused_res),
                    self.mm(name, n_in, n_out)]
        return [self.mm(name, n_in, n_out, n_in * self.elt, 4 * self.b * n_in)]

    def norm(self, name, fused) -> Kernel:
        # reads x (and the residual) and w; writes the normed rows (and the new residual)
        b, h = self.b, self.s.hidden
        return Kernel(name, "triton", ((2 if fused else 1) * 2 * b * h + h) * self.elt, 4 * b * h)

    def attention(self, attn_launches: int) -> list[Kernel]:
        """RoPE, the KV store and attention (with its reduce when it splits) of one layer."""
        s, b, elt = self.s, self.b, self.elt
        H, Hkv, D = s.n_heads, s.n_kv_heads, s.head_dim
        kv_len = self.context + 1
        rope_flops = 6 * b * (H + Hkv) * D
        attn_flops = 4 * b * H * kv_len * D
        if attention_fused(self.fusion):
            # reads the QKV row and the history, writes the new K and V (its own row stays in
            # registers) and the output
            return [Kernel("decode_attention", "triton",
                           (2 * b * Hkv * self.context * D + b * (H + 2 * Hkv) * D + 2 * b * Hkv * D
                            + b * H * D) * elt, attn_flops + rope_flops)]
        if rope_in_store(self.fusion):
            ks = [Kernel("rope_store_kv", "triton", 2 * b * (H + 2 * Hkv) * D * elt, rope_flops)]
        else:
            ks = [Kernel("rope", "triton", 2 * b * (H + Hkv) * D * elt, rope_flops),
                  Kernel("store_kv", "triton", 2 * 2 * b * Hkv * D * elt, 0)]
        kv_bytes = 2 * b * Hkv * kv_len * D * elt
        ks.append(Kernel("decode_attention", "triton", kv_bytes + 2 * b * H * D * elt, attn_flops))
        return ks + [Kernel("attention_reduce", "triton", 2 * b * H * D * 4, 0)
                     for _ in range(attn_launches - 1)]

    def o_and_ffn(self) -> list[Kernel]:
        """The O projection and the FFN of one layer."""
        s, b, elt, mm = self.s, self.b, self.elt, self.mm
        h, HD, Fw = s.hidden, s.n_heads * s.head_dim, s.ffn
        if self.skinny:
            # the residual add in O's and down's epilogues (reads the hidden state); swiglu in
            # gate/up's epilogue: it writes F values, not 2F
            return [mm("o_proj", HD, h, b * h * elt, b * h),
                    mm("gate_up_proj", h, 2 * Fw, h * elt - b * Fw * elt, 4 * b * h + 4 * b * Fw),
                    mm("down_proj", Fw, h, b * h * elt, b * h)]
        return [mm("o_proj", HD, h), *self.norm_mm("gate_up_proj", h, 2 * Fw, fused_res=True),
                Kernel("swiglu", "triton", 3 * b * Fw * elt, 4 * b * Fw), mm("down_proj", Fw, h)]


def step_bytes(shape: ModelShape, b: int, context: int, elt: int = 2,
               fusion: Fusion = Fusion.ATTENTION, attn_launches: int = 2) -> int:
    """Bytes a step must move: every kernel's reads and writes (weights once, the KV history of
    every sequence, the new KV, activations). attn_launches as in step_kernels: a decoder
    passes its own (`ToyDecoder.attention_launches`), so a split-KV reduce that does not run
    is not counted."""
    return sum(k.bytes for k in step_kernels(shape, b, context, elt, attn_launches, fusion))


def step_flops(shape: ModelShape, b: int, context: int,
               fusion: Fusion = Fusion.ATTENTION) -> int:
    return sum(k.flops for k in step_kernels(shape, b, context, fusion=fusion))


# kernels whose output a tensor-parallel rank holds a partial sum of: an all-reduce follows each
ROW_PARALLEL = ("o_proj", "down_proj")


def with_all_reduces(kernels: list[Kernel], b: int, hidden: int, elt: int = 2) -> list[Kernel]:
    """A tensor-parallel shard's step: `kernels` (its plan) with an `all_reduce` of the [b,
    hidden] partial sums after each row-parallel matmul, as ToyDecoder._reduce enqueues them.
    An all-reduce's `bytes` is its message size."""
    ar = Kernel("all_reduce", "nccl", b * hidden * elt, 0)
    out = []
    for k in kernels:
        out.append(k)
        if k.name.split(":")[0] in ROW_PARALLEL:   # o_proj or o_proj:skinny
            out.append(ar)
    return out


def launch_counts(kernels) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in kernels:
        out[k.launcher] = out.get(k.launcher, 0) + 1
    return out
