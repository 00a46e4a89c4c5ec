"""rope and rope_store_kv against their references, on fresh random inputs."""
import math

import pytest
import torch

from microbench.kernels import rope, rope_ref, rope_store_kv, rope_store_kv_ref
from tests.utils import DTYPE_TOLS, assert_close, f16, fused_qkv, gen, i32, randn

# B, H, Hkv, D: llama-1b's heads, then head dims 80, 96 and 128 with GQA ratios 4, 1, 4.
SHAPES = [(2, 32, 8, 64), (2, 4, 2, 64), (3, 4, 1, 80), (5, 2, 2, 96), (1, 8, 2, 128)]


@pytest.mark.parametrize("B, H, Hkv, D", SHAPES, ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_rope_on_fused_qkv_views(B, H, Hkv, D, dtype, atol, rtol, device):
    g = gen(3)
    qkv, q, k, v = fused_qkv(B, H, Hkv, D, g, dtype, device)
    assert q.data_ptr() == qkv.data_ptr() and k.data_ptr() == qkv[:, H * D:].data_ptr()
    assert B == 1 or q.stride(0) == k.stride(0) == (H + 2 * Hkv) * D  # rows of the fused tensor
    positions = torch.randint(0, 64, (B,), generator=g).to(device)
    positions[0] = 63
    q_ref, k_ref = rope_ref(q, k, positions, theta=10000.0)
    v0 = v.clone()
    q_out, k_out = rope(q, k, positions, theta=10000.0)
    assert q_out is q and k_out is k  # in place
    assert_close(q, q_ref, dtype, atol, rtol)
    assert_close(k, k_ref, dtype, atol, rtol)
    assert torch.equal(v, v0)  # the V part of the fused tensor is untouched


@pytest.mark.parametrize("B, H, Hkv, D", SHAPES[1:3], ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_rope_contiguous(B, H, Hkv, D, dtype, atol, rtol, device):
    g = gen(4)
    q = randn(B, H, D, g=g, dtype=dtype, device=device)
    k = randn(B, Hkv, D, g=g, dtype=dtype, device=device)
    positions = torch.randint(0, 64, (B,), generator=g, dtype=torch.int64).to(torch.int32).to(device)
    q_ref, k_ref = rope_ref(q, k, positions, theta=500000.0)
    rope(q, k, positions, theta=500000.0)
    assert_close(q, q_ref, dtype, atol, rtol)
    assert_close(k, k_ref, dtype, atol, rtol)


def test_rope_hand_computed_rotation(device):
    """The NeoX convention, checked against math.cos/sin rather than rope_ref: pair i is
    (x[i], x[i + D/2]), rotated by pos · theta^(-2i/D)."""
    D, pos, theta = 80, 3, 10000.0
    q = torch.zeros(1, 2, D, device=device)
    q[0, 0, 5] = 1.0  # first half of pair 5
    q[0, 1, D // 2 + 7] = 1.0  # second half of pair 7
    k = torch.zeros(1, 1, D, device=device)
    rope(q, k, torch.tensor([pos], device=device), theta)
    expected = torch.zeros(1, 2, D)
    a5, a7 = pos * theta ** (-2 * 5 / D), pos * theta ** (-2 * 7 / D)
    expected[0, 0, 5], expected[0, 0, D // 2 + 5] = math.cos(a5), math.sin(a5)
    expected[0, 1, 7], expected[0, 1, D // 2 + 7] = -math.sin(a7), math.cos(a7)
    assert_close(q.cpu(), expected, torch.float32)


def test_rope_position_zero_is_identity(device):
    g = gen(5)
    q = randn(2, 2, 64, g=g, dtype=torch.float32, device=device)
    k = randn(2, 1, 64, g=g, dtype=torch.float32, device=device)
    q0, k0 = q.clone(), k.clone()
    rope(q, k, torch.zeros(2, dtype=torch.int64, device=device))
    assert torch.equal(q, q0) and torch.equal(k, k0)


# ---- rope fused into the KV store ------------------------------------------------------------

@pytest.mark.parametrize("B, H, Hkv, D", [(2, 32, 8, 64), (3, 4, 2, 64), (1, 2, 2, 80), (5, 6, 1, 128),
                                          (2, 3, 3, 96)], ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_rope_store_kv(B, H, Hkv, D, dtype, atol, rtol, device):
    g = gen(25)
    S, max_seq = B + 2, 24
    _, q, k, v = fused_qkv(B, H, Hkv, D, g, dtype, device)
    k_cache = randn(S, Hkv, max_seq, D, g=g, dtype=dtype, device=device)
    v_cache = randn(S, Hkv, max_seq, D, g=g, dtype=dtype, device=device)
    slots = torch.randperm(S, generator=g)[:B].to(device)
    positions = torch.randint(0, max_seq, (B,), generator=g).to(device)
    positions[0] = max_seq - 1
    kc_ref, vc_ref = k_cache.clone(), v_cache.clone()
    q_ref = rope_store_kv_ref(q, k, v, kc_ref, vc_ref, slots, positions, 10000.0)
    k0 = k.clone()
    out = rope_store_kv(q, k, v, k_cache, v_cache, slots, positions, 10000.0)
    assert out is q
    assert_close(q, q_ref, dtype, atol, rtol)
    assert torch.equal(k, k0)                          # k itself is left as it was
    assert torch.equal(v_cache, vc_ref)                # v: a copy
    assert_close(k_cache, kc_ref, dtype, atol, rtol)   # k: rotated on the way in
    untouched = torch.ones(S, max_seq, dtype=torch.bool, device=device)
    untouched[slots, positions] = False
    untouched = untouched[:, None, :, None].expand_as(k_cache)
    assert torch.equal(k_cache[untouched], kc_ref[untouched])


BAD_CALLS = [
    ("head-dim", lambda d: rope(f16(1, 2, 63, dev=d), f16(1, 1, 63, dev=d), i32(1, dev=d)), "head dim"),
    ("float-pos", lambda d: rope(f16(1, 2, 64, dev=d), f16(1, 1, 64, dev=d), f16(1, dev=d)), "positions"),
    ("strided-d", lambda d: rope(f16(1, 2, 128, dev=d)[..., ::2], f16(1, 1, 64, dev=d), i32(1, dev=d)),
     "contiguous"),
    ("store-kv-cache", lambda d: rope_store_kv(f16(1, 2, 64, dev=d), f16(1, 1, 64, dev=d),
                                               f16(1, 1, 64, dev=d), f16(2, 2, 8, 64, dev=d),
                                               f16(2, 2, 8, 64, dev=d), i32(1, dev=d), i32(1, dev=d)),
     "k and v"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_value_error(call, match, device):
    with pytest.raises(ValueError, match=match):
        call(device)
