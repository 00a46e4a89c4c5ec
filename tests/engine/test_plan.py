"""The step plan: Fusion, the skinny decision, the QKV split, and the byte and flop counts of
step_kernels against the decoder's own weights and caches."""
import dataclasses

import pytest
import torch

from microbench.engine.decoder import ToyDecoder
from microbench.engine.plan import (FAST_ROWS, Fusion, attention_fused, backend_fusion, is_skinny,
                                    layer_kernels, rope_in_store, split_qkv, step_bytes,
                                    step_kernels)
from microbench.engine.shapes import PRESETS
from microbench.kernels.gemv import MAX_ROWS

TINY = PRESETS["tiny"]


def test_fusion_reads_saved_runs_records():
    assert Fusion.from_record({"fusion": 2}) is Fusion.ATTENTION
    assert Fusion.from_record({"fusion": 0, "fast_rows": 1}) is Fusion.UNFUSED
    assert Fusion.from_record({"fuse": False}) == 0
    assert Fusion.from_record({"fuse": True}) == 1          # before fuse_attention existed
    assert Fusion.from_record({"fuse": True, "fuse_attention": False}) == 1
    assert Fusion.from_record({"fuse": True, "fuse_attention": True}) == 2


def test_fusion_is_an_int_for_saved_runs():
    import json
    assert json.dumps({"fusion": Fusion.MATMULS}) == '{"fusion": 1}' and Fusion(2) is Fusion.ATTENTION
    assert [int(f) for f in Fusion] == [0, 1, 2]


@pytest.mark.parametrize("fusion", list(Fusion))
def test_skinny_and_fused_decisions(fusion):
    assert is_skinny(fusion, 1) == (fusion != Fusion.UNFUSED)
    assert not is_skinny(fusion, FAST_ROWS + 1)
    assert rope_in_store(fusion) == (fusion == Fusion.MATMULS)
    assert attention_fused(fusion) == (fusion == Fusion.ATTENTION)
    assert backend_fusion(fusion, "triton") is fusion
    assert backend_fusion(fusion, "torch") is Fusion.UNFUSED
    names = {k.name for k in step_kernels(TINY, 1, 8, fusion=fusion)}
    assert ("qkv_proj:skinny" in names) == is_skinny(fusion, 1)
    assert ("rope_store_kv" in names) == rope_in_store(fusion)
    assert ("rope" in names) == (fusion == Fusion.UNFUSED)


def test_skinny_rows_fit_the_skinny_kernel():
    assert 1 <= FAST_ROWS <= MAX_ROWS


def test_split_qkv_views_the_row():
    s = TINY
    qkv = torch.arange(3 * s.qkv_size, dtype=torch.float32).view(3, s.qkv_size)
    q, k, v = split_qkv(s, qkv)
    assert q.shape == (3, s.n_heads, s.head_dim) and k.shape == v.shape == (3, s.n_kv_heads, s.head_dim)
    assert q.data_ptr() == qkv.data_ptr()                       # views, not copies
    assert k[0, 0, 0] == s.q_size and v[2, -1, -1] == qkv[2, -1]


def test_byte_and_flop_counts_against_the_decoder():
    dec = ToyDecoder(TINY, backend="torch", max_batch=2, max_seq=16, dtype=torch.float16,
                     device="cpu")
    elt = 2
    weights = [dec.embed, dec.final_norm] + [t for L in dec.layers for t in L.values()]
    weight_bytes = sum(t.numel() * t.element_size() for t in weights)
    assert weight_bytes == TINY.n_params * elt
    ctx = 9
    # Bytes independent of the batch are the weights, each read once per step.
    # bytes(b) = weights + b·(per-sequence bytes) within one plan (the fused plan switches
    # kernels above one row, so it is checked from 2 rows up)
    for fusion, b in ((Fusion.UNFUSED, 1), (Fusion.MATMULS, 2)):
        assert 2 * step_bytes(TINY, b, ctx, elt, fusion=fusion) - step_bytes(TINY, 2 * b, ctx, elt, fusion=fusion) \
            == weight_bytes
    # Per sequence, attention reads the K and V of ctx + 1 positions in every layer (after
    # rope_store_kv, its q and output besides); fused with the store, it reads ctx positions
    # and the QKV row, writes the new K and V and its output.
    kv = sum(c[0, :, :ctx + 1].numel() * elt for c in (*dec.k_cache, *dec.v_cache))
    attn = sum(k.bytes for k in step_kernels(TINY, 1, ctx, elt, fusion=Fusion.MATMULS) if k.name == "decode_attention")
    assert attn - TINY.n_layers * 2 * TINY.q_size * elt == kv
    attn = sum(k.bytes for k in step_kernels(TINY, 1, ctx, elt) if k.name == "decode_attention")
    assert attn - TINY.n_layers * 2 * (TINY.q_size + TINY.kv_size) * elt == kv
    # Matmul flops: 2 per weight element per sequence (the LM head is the tied embedding).
    mm_weights = sum(L[k].numel() for L in dec.layers for k in ("wqkv", "wo", "wgu", "wdown"))
    mm_weights += dec.embed.numel()
    mm_flops = sum(k.flops for k in step_kernels(TINY, 3, ctx, elt, fusion=Fusion.UNFUSED)
                   if k.launcher == "cublas")
    assert mm_flops == 2 * 3 * mm_weights
    # Fusing moves no weight and saves the activations' round trips between kernels.
    for b in (1, 3, 9):
        fused, unfused = step_bytes(TINY, b, ctx, elt), step_bytes(TINY, b, ctx, elt, fusion=Fusion.UNFUSED)
        assert 0 < unfused - fused < b * TINY.n_layers * 40 * TINY.hidden * elt


@pytest.mark.parametrize("fusion", list(Fusion))
@pytest.mark.parametrize("b", [1, FAST_ROWS, FAST_ROWS + 1, 64])
def test_layer_kernels_is_the_layer_the_step_repeats(fusion, b):
    """Every layer after the first plans exactly layer_kernels: a step of one more layer adds
    those kernels, and they sit just before the step's head (final norm and LM head)."""
    lk = layer_kernels(TINY, b, 100, fusion=fusion)
    three = step_kernels(dataclasses.replace(TINY, n_layers=3), b, 100, fusion=fusion)
    two = step_kernels(dataclasses.replace(TINY, n_layers=2), b, 100, fusion=fusion)
    assert len(three) - len(two) == len(lk)
    head = len(three) - 1 - max(i for i, k in enumerate(three) if k.name.startswith("down_proj"))
    assert three[len(three) - head - 2 * len(lk):len(three) - head] == lk + lk
    assert lk[0].name.startswith("rmsnorm" if not is_skinny(fusion, b) else "qkv_proj")
