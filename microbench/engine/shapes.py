"""Frozen configuration: model shapes (real models' dimensions, random weights) and run options.

Every preset keeps the real model's layer count, hidden size, head counts, FFN width and
vocabulary, and runs them through one Llama-style block (RMSNorm, fused QKV, NeoX RoPE, GQA
decode attention, SwiGLU FFN, tied LM head). For `opt-125m` that is a choice: OPT itself uses
LayerNorm and a plain ReLU FFN, so our FFN holds 1.5x OPT's FFN weights (gate and up instead of
one fc1); the attention and vocabulary are OPT's. Nothing is downloaded: weights come from a seed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

# Limits the CLI states in --help and enforces before touching the GPU.
MAX_BATCH = 4096
MAX_CONTEXT = 32768

# The dtypes a run may choose, by name: torch's own names (torch_dtype gives the dtype). Names,
# so that the CLI's --help needs no torch.
DTYPE_NAMES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ModelShape:
    name: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.name}: n_heads ({self.n_heads}) must be a multiple of "
                             f"n_kv_heads ({self.n_kv_heads})")

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        return self.q_size + 2 * self.kv_size

    @property
    def layer_params(self) -> int:
        """Weights of one block: QKV, O, gate+up, down, two norms."""
        h = self.hidden
        return h * self.qkv_size + self.q_size * h + h * 2 * self.ffn + self.ffn * h + 2 * h

    @property
    def n_params(self) -> int:
        """All weights; the LM head is tied to the embedding, so the vocabulary counts once."""
        return self.n_layers * self.layer_params + self.vocab * self.hidden + self.hidden

    @classmethod
    def from_name(cls, name: str) -> "ModelShape":
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ModelShape] = {
    s.name: s
    for s in (
        # Small enough for the CPU interpreter in tests.
        ModelShape("tiny", n_layers=2, hidden=128, n_heads=4, n_kv_heads=2, head_dim=32,
                   ffn=256, vocab=512),
        # facebook/opt-125m: 12 layers, d_model 768, 12 heads, ffn 3072, vocab 50272.
        ModelShape("opt-125m", n_layers=12, hidden=768, n_heads=12, n_kv_heads=12, head_dim=64,
                   ffn=3072, vocab=50272),
        # meta-llama/Llama-3.2-1B.
        ModelShape("llama-1b", n_layers=16, hidden=2048, n_heads=32, n_kv_heads=8, head_dim=64,
                   ffn=8192, vocab=128256, rope_theta=500000.0),
        # meta-llama/Llama-3.1-8B.
        ModelShape("llama-8b", n_layers=32, hidden=4096, n_heads=32, n_kv_heads=8, head_dim=128,
                   ffn=14336, vocab=128256, rope_theta=500000.0),
        # meta-llama/Llama-3.1-70B: for the analytic model (it does not fit one GPU in bf16).
        ModelShape("llama-70b", n_layers=80, hidden=8192, n_heads=64, n_kv_heads=8,
                   head_dim=128, ffn=28672, vocab=128256, rope_theta=500000.0),
    )
}


def max_seq_for(context: int) -> int:
    """The cache length a decoder gets for `context` cached positions (the sweep's, and the
    A/B's that measure the tables it reads): room for the new token, in a multiple of 64 that
    keeps attention's tiles whole."""
    return -(-(context + 1) // 64) * 64


def check_dtype(name: str, option: str = "dtype") -> str:
    """`name` if it is one of DTYPE_NAMES, else a ValueError naming the choices."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"{option}: {name!r}; choose one of {', '.join(DTYPE_NAMES)}")
    return name


def torch_dtype(name: str):
    """The torch dtype of a DTYPE_NAMES name (imports torch on first use)."""
    import torch    # deferred: the CLI imports this module for --help
    return getattr(torch, check_dtype(name))


def valid_tp(shape: ModelShape) -> list[int]:
    """Every TP degree that splits the heads, the KV heads and the FFN evenly."""
    g = math.gcd(math.gcd(shape.n_heads, shape.n_kv_heads), shape.ffn)
    return [d for d in range(1, g + 1) if g % d == 0]


def tp_shape(shape: ModelShape, tp: int) -> ModelShape:
    """One rank's shard of `shape` over `tp` ranks under tensor parallelism: heads, KV heads
    and FFN columns divided by tp; hidden size, vocabulary and layers whole. ValueError (one
    line, naming the constraint) when tp does not divide the heads, the KV heads or the FFN
    width."""
    if tp < 1:
        raise ValueError(f"--tp: must be >= 1, got {tp}")
    for what, n in (("attention heads", shape.n_heads), ("KV heads", shape.n_kv_heads),
                    ("FFN columns", shape.ffn)):
        if n % tp:
            raise ValueError(f"--tp: {tp} does not divide {shape.name}'s {n} {what}; use one of "
                             f"{', '.join(map(str, valid_tp(shape)))}")
    if tp == 1:
        return shape
    return replace(shape, name=f"{shape.name}/tp{tp}", n_heads=shape.n_heads // tp,
                   n_kv_heads=shape.n_kv_heads // tp, ffn=shape.ffn // tp)
