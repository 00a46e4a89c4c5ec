"""store_kv against store_kv_ref: a copy, so bit for bit, on fresh random inputs."""
import pytest
import torch

from microbench.kernels import store_kv, store_kv_ref
from tests.utils import DTYPES, dtype_id, f16, fused_qkv, gen, i32, randn

# num_slots, Hkv, max_seq, D, B, index dtype: llama-1b's KV heads, then head dims 80, 128, 96.
SHAPES = [(6, 8, 32, 64, 3, torch.int64), (6, 2, 32, 64, 3, torch.int32), (4, 1, 16, 80, 1, torch.int64),
          (8, 4, 24, 128, 5, torch.int64), (5, 2, 20, 96, 4, torch.int32)]


@pytest.mark.parametrize("S, Hkv, max_seq, D, B, idx_dtype", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)   # a copy: exact, no tolerance
def test_store_kv(S, Hkv, max_seq, D, B, idx_dtype, dtype, device):
    g = gen(6)
    k_cache = randn(S, Hkv, max_seq, D, g=g, dtype=dtype, device=device)
    v_cache = randn(S, Hkv, max_seq, D, g=g, dtype=dtype, device=device)
    _, _, k, v = fused_qkv(B, 2, Hkv, D, g, dtype, device)  # strided views
    slots = torch.randperm(S, generator=g)[:B].to(idx_dtype).to(device)
    positions = torch.randint(0, max_seq, (B,), generator=g).to(idx_dtype).to(device)
    positions[0] = max_seq - 1
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv_ref(k_ref, v_ref, k, v, slots, positions)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    assert store_kv(k_cache, v_cache, k, v, slots, positions) is None
    # A copy: the whole cache must match the reference bit for bit...
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)
    # ...and every entry other than the B written rows must be exactly what it was.
    written = torch.zeros(S, max_seq, dtype=torch.bool, device=device)
    written[slots.long(), positions.long()] = True
    untouched = ~written[:, None, :, None].expand_as(k_cache)
    assert torch.equal(k_cache[untouched], k_before[untouched])
    assert torch.equal(v_cache[untouched], v_before[untouched])
    assert torch.equal(k_cache[slots.long(), :, positions.long()], k)


BAD_CALLS = [
    ("dim", lambda d: store_kv(f16(2, 2, 8, 64, dev=d), f16(2, 2, 8, 64, dev=d), f16(1, 2, 32, dev=d),
                               f16(1, 2, 32, dev=d), i32(1, dev=d), i32(1, dev=d)), "k and v"),
    ("slots", lambda d: store_kv(f16(2, 2, 8, 64, dev=d), f16(2, 2, 8, 64, dev=d), f16(1, 2, 64, dev=d),
                                 f16(1, 2, 64, dev=d), i32(2, dev=d), i32(1, dev=d)), "slots"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_value_error(call, match, device):
    with pytest.raises(ValueError, match=match):
        call(device)
