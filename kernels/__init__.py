"""Triton kernels for the toy decoder, each with a plain-PyTorch fp32 reference `<name>_ref`.
`Launch` is one kernel launch bound for replay (the `record=` argument every wrapper takes);
`pdl_mode` checks the `pdl=` argument every PDL kernel's wrapper takes."""
from ._launch import Launch
from ._utils import pdl_mode
from .decode_attention import decode_attention, decode_attention_ref
from .embed import embed_seq_lens, embed_seq_lens_ref
from .gemv import (linear, linear_ref, rmsnorm_linear, rmsnorm_linear_ref, rmsnorm_linear_swiglu,
                   rmsnorm_linear_swiglu_ref)
from .rmsnorm import rmsnorm, rmsnorm_ref
from .rope import rope, rope_ref, rope_store_kv, rope_store_kv_ref
from .rope_store_attention import rope_store_attention, rope_store_attention_ref
from .store_kv import store_kv, store_kv_ref
from .swiglu import swiglu, swiglu_ref

__all__ = [
    "Launch", "pdl_mode",
    "decode_attention", "decode_attention_ref", "rope_store_attention", "rope_store_attention_ref",
    "embed_seq_lens", "embed_seq_lens_ref",
    "rmsnorm", "rmsnorm_ref",
    "linear", "linear_ref", "rmsnorm_linear", "rmsnorm_linear_ref",
    "rmsnorm_linear_swiglu", "rmsnorm_linear_swiglu_ref",
    "rope", "rope_ref", "rope_store_kv", "rope_store_kv_ref",
    "store_kv", "store_kv_ref",
    "swiglu", "swiglu_ref",
]
