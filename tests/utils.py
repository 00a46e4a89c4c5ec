"""Shared kernel-test helpers: the dtypes with their tolerances, seeded random inputs, attention
inputs, and one comparison. A kernel test is parametrized over its shapes and over DTYPE_TOLS:

    @pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
    def test_op(shape, dtype, atol, rtol, device):
        assert_close(op(x), op_ref(x), dtype, atol, rtol)
"""
import pytest
import torch

# (atol, rtol) per dtype, for a kernel output against its fp32 reference rounded to the same dtype.
#   float32: ulp(1) = 2^-23 ≈ 1.2e-7; 1e-5 ≈ 84 ulp leaves room for a different reduction order
#            over a few thousand terms and the GPU's approximate exp2/rsqrt/sin/cos (~2 ulp each),
#            while an indexing or masking bug is off by O(1).
#   float16: ulp(1) = 2^-10 ≈ 9.8e-4; rtol 1e-3 is one ulp anywhere in a binade (kernel and
#            reference each round a slightly different fp32 value); atol 1e-3 covers outputs near
#            zero that come from cancelling O(1) terms (rope, attention).
#   bfloat16: ulp(1) = 2^-7 ≈ 7.8e-3; rtol 1.6e-2 ≈ 2 ulp: one for the final rounding, one for
#            attention's softmax weights, which are rounded to bf16 for the p·V tensor-core product
#            as flash-attention does; atol 1e-2 as for fp16, scaled to bf16's ulp.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}
DTYPES = list(TOL)


def dtype_id(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# The `(dtype, atol, rtol)` axis of every kernel test.
DTYPE_TOLS = [pytest.param(d, *TOL[d], id=dtype_id(d)) for d in DTYPES]


def assert_close(actual, expected, dtype, atol=None, rtol=None):
    """Assert `actual` matches `expected` elementwise within (atol, rtol), TOL[dtype] where not
    given; both must have `dtype` and the same shape. NaNs never match."""
    assert actual.dtype == dtype and expected.dtype == dtype, (actual.dtype, expected.dtype, dtype)
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    atol = TOL[dtype][0] if atol is None else atol
    rtol = TOL[dtype][1] if rtol is None else rtol
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=atol, rtol=rtol)


def gen(seed):
    """A CPU generator seeded with `seed`."""
    return torch.Generator().manual_seed(seed)


def randn(*shape, g, dtype, device):
    """Standard normal values drawn in fp32 on the CPU generator g (so every device sees the same
    numbers), then cast to dtype and moved to device."""
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)


def fused_qkv(B, H, Hkv, D, g, dtype, device):
    """q [B, H, D], k and v [B, Hkv, D] as strided views of one random [B, (H + 2Hkv)·D] tensor,
    as a QKV projection produces them; returns (qkv, q, k, v)."""
    qkv = randn(B, (H + 2 * Hkv) * D, g=g, dtype=dtype, device=device)
    q = qkv[:, :H * D].view(B, H, D)
    k = qkv[:, H * D:(H + Hkv) * D].view(B, Hkv, D)
    v = qkv[:, (H + Hkv) * D:].view(B, Hkv, D)
    return qkv, q, k, v


def f16(*shape, dev):
    """A float16 tensor of zeros, for argument-check tests (the call must raise before any work)."""
    return torch.zeros(*shape, dtype=torch.float16, device=dev)


def i32(*shape, dev, fill=0):
    """An int32 tensor filled with `fill`, for argument-check tests."""
    return torch.full(shape, fill, dtype=torch.int32, device=dev)


# ---- attention (decode_attention, rope_store_attention) -------------------------------------

# B, H, Hkv, D, max_seq, num_slots: llama-1b's heads (GQA 4), then GQA ratios 4, 1 (H = Hkv) with
# head dim 80, 4 with B=1 and D=96, 1 with D=128 and a ragged max_seq, 8.
ATTENTION_SHAPES = [(2, 32, 8, 64, 64, 3), (3, 8, 2, 64, 64, 5), (5, 4, 4, 80, 48, 7),
                    (1, 4, 1, 96, 40, 2), (2, 2, 2, 128, 33, 3), (4, 8, 1, 64, 50, 6)]


def attention_inputs(B, H, Hkv, D, max_seq, S, dtype, device, seed=7):
    """Random q (a strided view), caches, slots in shuffled order and ragged seq_lens that
    include 1 and max_seq. Cache rows no sequence may read are NaN, so reading one shows."""
    g = gen(seed)
    _, q, _, _ = fused_qkv(B, H, Hkv, D, g, dtype, device)
    k_cache = randn(S, Hkv, max_seq, D, g=g, dtype=dtype, device=device)
    v_cache = randn(S, Hkv, max_seq, D, g=g, dtype=dtype, device=device)
    slots = torch.randperm(S, generator=g)[:B]
    seq_lens = torch.randint(1, max_seq + 1, (B,), generator=g)
    seq_lens[0] = max_seq
    if B > 1:
        seq_lens[-1] = 1
    readable = torch.zeros(S, max_seq, dtype=torch.bool)
    for slot, n in zip(slots.tolist(), seq_lens.tolist()):
        readable[slot, :n] = True
    unread = ~readable.to(device)[:, None, :, None]  # [S, 1, max_seq, 1]
    k_cache.masked_fill_(unread, float("nan"))
    v_cache.masked_fill_(unread, float("nan"))
    return q, k_cache, v_cache, slots.to(torch.int32).to(device), seq_lens.to(device)
