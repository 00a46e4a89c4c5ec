"""rmsnorm_qkv_attention (the one-row QKV matmul and the fused attention in one launch) against
rmsnorm_linear_ref + rope_store_attention_ref, on fresh random inputs."""
import pytest
import torch

from microbench.kernels import rmsnorm_qkv_attention, rmsnorm_qkv_attention_ref
from microbench.kernels.qkv_attention import semaphore_count
from tests.utils import DTYPE_TOLS, assert_close, attention_inputs, gen, randn

# H, Hkv, D, max_seq, num_slots: GQA 4 (llama's ratio), MHA (opt's), GQA 2 with head dim 128
# and a ragged max_seq
SHAPES = [(8, 2, 32, 40, 3), (3, 3, 16, 33, 2), (4, 2, 128, 20, 2)]
# CUDA-core tiles as `microbench tune` picks them at one row: deferred sums, and chunk by chunk
CONFIGS = [dict(BLOCK_N=4, BLOCK_K=32, STAGES=1, num_warps=4, DEFER=1),
           dict(BLOCK_N=8, BLOCK_K=16, STAGES=1, num_warps=4, DEFER=0)]


def inputs(H, Hkv, D, max_seq, S, dtype, device, seed):
    """One row h, the norm weight, W_qkv, and attention_inputs' caches (unread rows NaN) with
    the new token's row NaN too: it must come from the matmul, never from the cache."""
    g = gen(seed)
    K = 48
    h = randn(1, K, g=g, dtype=dtype, device=device)
    nw = (1 + 0.1 * randn(K, g=g, dtype=torch.float32, device="cpu")).to(dtype=dtype, device=device)
    w = (randn((H + 2 * Hkv) * D, K, g=g, dtype=torch.float32, device="cpu") / K ** 0.5).to(dtype=dtype, device=device)
    _, k_cache, v_cache, slots, seq_lens = attention_inputs(1, H, Hkv, D, max_seq, S, dtype, device, seed)
    k_cache[slots.long(), :, seq_lens.long() - 1] = float("nan")
    v_cache[slots.long(), :, seq_lens.long() - 1] = float("nan")
    return h, nw, w, k_cache, v_cache, slots, seq_lens


@pytest.mark.parametrize("H, Hkv, D, max_seq, S", SHAPES, ids=str)
@pytest.mark.parametrize("num_splits", [1, 3], ids=lambda n: f"splits={n}")
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"defer={c['DEFER']}")
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_rmsnorm_qkv_attention(H, Hkv, D, max_seq, S, num_splits, config, dtype, atol, rtol,
                               device):
    h, nw, w, kc, vc, slots, seq_lens = inputs(H, Hkv, D, max_seq, S, dtype, device, seed=3)
    scale = D ** -0.5
    kr, vr = kc.clone(), vc.clone()
    want_qkv, want = rmsnorm_qkv_attention_ref(h, nw, 1e-5, w, H, kr, vr, slots, seq_lens, scale, 5e5)
    sem = torch.zeros(semaphore_count(Hkv), dtype=torch.int32, device=device)
    for _ in range(2):  # the counters are left at zero, so a second call agrees too
        kc2, vc2 = kc.clone(), vc.clone()
        qkv, out = rmsnorm_qkv_attention(h, nw, 1e-5, w, H, kc2, vc2, slots, seq_lens, scale, 5e5,
                                         num_splits=num_splits, semaphores=sem, config=config)
        assert_close(qkv, want_qkv, dtype, atol, rtol)
        assert_close(out, want, dtype, atol, rtol)
        assert not sem.any()
        rows = (slots.long(), slice(None), seq_lens.long() - 1)
        assert_close(kc2[rows], kr[rows], dtype, atol, rtol)
        assert_close(vc2[rows], vr[rows], dtype, atol, rtol)
        for c, r in ((kc2, kr), (vc2, vr)):
            c, r = c.clone(), r.clone()
            c[rows] = r[rows] = 0
            torch.testing.assert_close(c, r, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("call, match", [
    (lambda a: rmsnorm_qkv_attention(torch.cat([a[0], a[0]]), *a[1:]), "one row"),
    (lambda a: rmsnorm_qkv_attention(*a[:4], 7, *a[5:]), "kv heads evenly"),
    (lambda a: rmsnorm_qkv_attention(*a[:4], 4, *a[5:], config=dict(BLOCK_N=4, BLOCK_K=32, STAGES=1,
                                                                     num_warps=4)), "rows"),
    (lambda a: rmsnorm_qkv_attention(*a, config=dict(BLOCK_N=64, BLOCK_K=32, STAGES=1, num_warps=4)),
     "divides the head dim"),
    (lambda a: rmsnorm_qkv_attention(*a, config=dict(BLOCK_N=4, BLOCK_K=32, STAGES=1, num_warps=4, DOT=2)),
     "CUDA-core tile"),
    (lambda a: rmsnorm_qkv_attention(*a, semaphores=torch.zeros(2, dtype=torch.int32, device=a[0].device),
                                     config=CONFIGS[0]), "semaphores"),
])
def test_bad_arguments_raise_value_error(call, match, device):
    h, nw, w, kc, vc, slots, seq_lens = inputs(8, 2, 32, 40, 3, torch.float32, device, seed=5)
    with pytest.raises(ValueError, match=match):
        call((h, nw, 1e-5, w, 8, kc, vc, slots, seq_lens, 32 ** -0.5))
