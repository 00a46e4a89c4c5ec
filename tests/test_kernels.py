"""Every Triton kernel against its plain-PyTorch fp32 reference, on fresh random inputs.

Shapes and dtypes are parametrized separately. On CPU the kernels run under Triton's
interpreter, so shapes stay small (max_seq <= 64, few heads); the same tests run compiled on CUDA.
"""
import math

import pytest
import torch

from microbench.kernels import (decode_attention, decode_attention_ref, embed_seq_lens, embed_seq_lens_ref,
                     linear, linear_ref, rmsnorm,
                     rmsnorm_linear, rmsnorm_linear_ref, rmsnorm_ref, rope, rope_ref, rope_store_attention,
                     rope_store_attention_ref, rope_store_kv, rope_store_kv_ref, store_kv, store_kv_ref,
                     swiglu, rmsnorm_linear_swiglu, rmsnorm_linear_swiglu_ref, swiglu_ref)
from microbench.kernels.decode_attention import _MAX_SPLITS, _MIN_TOKENS_PER_SPLIT, _choose_num_splits
from tests.utils import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
dtype_param = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g, dtype, device):
    # Drawn in fp32 on the CPU generator, so every device sees the same numbers.
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)


def fused_qkv(B, H, Hkv, D, g, dtype, device):
    """q [B, H, D], k and v [B, Hkv, D] as strided views of one [B, (H + 2Hkv)·D] tensor, as a
    QKV projection produces them; returns (qkv, q, k, v)."""
    qkv = randn(B, (H + 2 * Hkv) * D, g=g, dtype=dtype, device=device)
    q = qkv[:, :H * D].view(B, H, D)
    k = qkv[:, H * D:(H + Hkv) * D].view(B, Hkv, D)
    v = qkv[:, (H + Hkv) * D:].view(B, Hkv, D)
    return qkv, q, k, v


# ---- rmsnorm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("B, D", [(4, 768), (3, 123), (1, 2048), (5, 1)], ids=lambda v: str(v))
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@dtype_param
def test_rmsnorm(B, D, with_residual, dtype, device):
    g = gen(1)
    x = randn(B, D, g=g, dtype=dtype, device=device)
    w = (1 + 0.1 * randn(D, g=g, dtype=torch.float32, device=device)).to(dtype)
    if not with_residual:
        assert_close(rmsnorm(x, w, 1e-6), rmsnorm_ref(x, w, 1e-6), dtype)
        return
    r = randn(B, D, g=g, dtype=dtype, device=device)
    x0, r0 = x.clone(), r.clone()
    y, s = rmsnorm(x, w, 1e-6, residual=r)
    y_ref, s_ref = rmsnorm_ref(x, w, 1e-6, residual=r)
    assert_close(y, y_ref, dtype)
    # The sum is one correctly rounded add, exactly what the unfused `x + residual` gives.
    assert torch.equal(s, s_ref)
    assert torch.equal(x, x0) and torch.equal(r, r0)


def test_rmsnorm_strided_rows(device):
    g = gen(2)
    big = randn(3, 300, g=g, dtype=torch.float16, device=device)
    x = big[:, 10:133]  # row stride 300, not D
    w = randn(123, g=g, dtype=torch.float16, device=device)
    assert_close(rmsnorm(x, w, 1e-5), rmsnorm_ref(x, w, 1e-5), torch.float16)


# ---- rope ------------------------------------------------------------------------------------

ROPE_SHAPES = [(2, 4, 2, 64), (3, 4, 1, 80), (5, 2, 2, 96), (1, 8, 2, 128)]  # B, H, Hkv, D


@pytest.mark.parametrize("B, H, Hkv, D", ROPE_SHAPES, ids=lambda v: str(v))
@dtype_param
def test_rope_on_fused_qkv_views(B, H, Hkv, D, dtype, device):
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
    assert_close(q, q_ref, dtype)
    assert_close(k, k_ref, dtype)
    assert torch.equal(v, v0)  # the V part of the fused tensor is untouched


@pytest.mark.parametrize("B, H, Hkv, D", ROPE_SHAPES[:2], ids=lambda v: str(v))
@dtype_param
def test_rope_contiguous(B, H, Hkv, D, dtype, device):
    g = gen(4)
    q = randn(B, H, D, g=g, dtype=dtype, device=device)
    k = randn(B, Hkv, D, g=g, dtype=dtype, device=device)
    positions = torch.randint(0, 64, (B,), generator=g, dtype=torch.int64).to(torch.int32).to(device)
    q_ref, k_ref = rope_ref(q, k, positions, theta=500000.0)
    rope(q, k, positions, theta=500000.0)
    assert_close(q, q_ref, dtype)
    assert_close(k, k_ref, dtype)


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


# ---- store_kv --------------------------------------------------------------------------------

# num_slots, Hkv, max_seq, D, B, index dtype
STORE_SHAPES = [(6, 2, 32, 64, 3, torch.int32), (4, 1, 16, 80, 1, torch.int64),
                (8, 4, 24, 128, 5, torch.int64), (5, 2, 20, 96, 4, torch.int32)]


@pytest.mark.parametrize("S, Hkv, max_seq, D, B, idx_dtype", STORE_SHAPES, ids=lambda v: str(v))
@dtype_param
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


# ---- decode_attention ------------------------------------------------------------------------

# B, H, Hkv, D, max_seq, num_slots: GQA ratios 4, 1 (H = Hkv), 4 with B=1, 1 with D=128, 8.
ATTN_SHAPES = [(3, 8, 2, 64, 64, 5), (5, 4, 4, 80, 48, 7), (1, 4, 1, 96, 40, 2),
               (2, 2, 2, 128, 33, 3), (4, 8, 1, 64, 50, 6)]


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


@pytest.mark.parametrize("B, H, Hkv, D, max_seq, S", ATTN_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("num_splits", [1, 3, None], ids=lambda n: f"splits={n}")
@dtype_param
def test_decode_attention(B, H, Hkv, D, max_seq, S, num_splits, dtype, device):
    q, k_cache, v_cache, slots, seq_lens = attention_inputs(B, H, Hkv, D, max_seq, S, dtype, device)
    scale = D ** -0.5
    out = decode_attention(q, k_cache, v_cache, slots, seq_lens, scale, num_splits=num_splits)
    assert out.is_contiguous() and out.device == q.device
    assert_close(out, decode_attention_ref(q, k_cache, v_cache, slots, seq_lens, scale), dtype)


@dtype_param
def test_decode_attention_split_counts_agree(dtype, device):
    """Splits that end past seq_len, or start past it (neutral partials), change nothing."""
    q, k_cache, v_cache, slots, seq_lens = attention_inputs(3, 8, 2, 64, 64, 5, dtype, device, seed=8)
    outs = [decode_attention(q, k_cache, v_cache, slots, seq_lens, 0.125, num_splits=n) for n in (1, 2, 4, 7)]
    for o in outs[1:]:
        assert_close(o, outs[0], dtype)


def test_decode_attention_out_argument(device):
    q, k_cache, v_cache, slots, seq_lens = attention_inputs(2, 4, 2, 64, 32, 3, torch.float16, device)
    out = torch.empty(2, 4, 64, dtype=torch.float16, device=device)
    res = decode_attention(q, k_cache, v_cache, slots, seq_lens, 0.125, num_splits=2, out=out)
    assert res is out
    assert_close(out, decode_attention_ref(q, k_cache, v_cache, slots, seq_lens, 0.125), torch.float16)


@pytest.mark.parametrize(
    "B, Hkv, max_seq, block_n, sms",
    [(16, 8, 4096, 64, 132), (1, 8, 32768, 64, 132), (1, 8, 4096, 64, 132), (64, 8, 4096, 64, 132),
     (1, 1, 128, 64, 132), (2, 4, 256, 64, 132), (3, 2, 1000, 16, 4), (1, 1, 10**6, 64, 132)],
    ids=lambda v: str(v),
)
def test_num_splits_heuristic(B, Hkv, max_seq, block_n, sms):
    n = _choose_num_splits(B, Hkv, max_seq, block_n, sms)
    n_tiles = -(-max_seq // block_n)
    tiles_per_split = -(-n_tiles // n)
    assert 1 <= n <= min(n_tiles, _MAX_SPLITS)
    assert (n - 1) * tiles_per_split < n_tiles  # no split starts past max_seq
    assert n == 1 or tiles_per_split * block_n >= _MIN_TOKENS_PER_SPLIT
    if max_seq <= 256 or B * Hkv >= 2 * sms:
        assert n == 1  # small caches, or already >= 2 programs per SM
    elif n < _MAX_SPLITS and tiles_per_split * block_n > 2 * _MIN_TOKENS_PER_SPLIT:
        assert B * Hkv * n >= 2 * sms  # splits were not limited by size: ~2 programs per SM
    # num_splits_for promises that whether a reduce kernel runs does not depend on BLOCK_N.
    for other in (16, 32, 64, 128):
        assert (_choose_num_splits(B, Hkv, max_seq, other, sms) == 1) == (n == 1)


@pytest.mark.gpu
def test_decode_attention_cuda_graph_replay(device):
    """Captured once, replayed with new seq_lens and slots: nothing is read on the host."""
    dtype = torch.bfloat16
    q, k_cache, v_cache, slots, seq_lens = attention_inputs(4, 8, 2, 64, 512, 6, dtype, device)
    k_cache.nan_to_num_(0.0)
    v_cache.nan_to_num_(0.0)
    decode_attention(q, k_cache, v_cache, slots, seq_lens, 0.125)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k_cache, v_cache, slots, seq_lens, 0.125)
    for lens, order in (([512, 1, 300, 77], [5, 0, 2, 3]), ([3, 512, 64, 65], [1, 4, 0, 2])):
        seq_lens.copy_(torch.tensor(lens))
        slots.copy_(torch.tensor(order))
        graph.replay()
        assert_close(out, decode_attention_ref(q, k_cache, v_cache, slots, seq_lens, 0.125), dtype)


# ---- rope, the KV store and attention in one kernel -----------------------------------------

def fused_attention_inputs(B, H, Hkv, D, max_seq, S, dtype, device, seed):
    """attention_inputs, plus k and v of the new token (views of a QKV row like q), with the
    cache row each sequence's new token goes to (seq_len - 1) set to NaN: the kernel must take
    that row from registers and write it, never read it."""
    q, k_cache, v_cache, slots, seq_lens = attention_inputs(B, H, Hkv, D, max_seq, S, dtype, device, seed)
    _, _, k, v = fused_qkv(B, H, Hkv, D, gen(seed + 100), dtype, device)
    new = (slots.long(), slice(None), seq_lens.long() - 1)
    k_cache[new] = float("nan")
    v_cache[new] = float("nan")
    return q, k, v, k_cache, v_cache, slots, seq_lens


def check_fused_attention(q, k, v, k_cache, v_cache, slots, seq_lens, dtype, sem, **kw):
    """One call against rope_store_kv_ref + decode_attention_ref on copies of the caches: the
    output, both caches (new rows rotated and copied, every other row untouched, NaNs
    included), q left as it was and the split counters left at zero."""
    scale = q.shape[-1] ** -0.5
    kr, vr, q0 = k_cache.clone(), v_cache.clone(), q.clone()
    want = rope_store_attention_ref(q, k, v, kr, vr, slots, seq_lens, scale, 5e5)
    out = rope_store_attention(q, k, v, k_cache, v_cache, slots, seq_lens, scale, 5e5,
                               semaphores=sem, **kw)
    assert_close(out, want, dtype)
    assert torch.equal(q, q0) and not sem.any()
    rows = (slots.long(), slice(None), seq_lens.long() - 1)
    assert_close(k_cache[rows], kr[rows], dtype)
    assert torch.equal(v_cache[rows], vr[rows])
    for c, r in ((k_cache, kr), (v_cache, vr)):
        c, r = c.clone(), r.clone()
        c[rows] = r[rows] = 0
        torch.testing.assert_close(c, r, rtol=0, atol=0, equal_nan=True)
    return out


@pytest.mark.parametrize("B, H, Hkv, D, max_seq, S", ATTN_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("num_splits", [1, 3, None], ids=lambda n: f"splits={n}")
@dtype_param
def test_rope_store_attention(B, H, Hkv, D, max_seq, S, num_splits, dtype, device):
    args = fused_attention_inputs(B, H, Hkv, D, max_seq, S, dtype, device, seed=11)
    sem = torch.zeros(B * Hkv + 3, dtype=torch.int32, device=device)
    check_fused_attention(*args, dtype, sem, num_splits=num_splits)


@dtype_param
def test_rope_store_attention_split_counts_share_counters(dtype, device):
    """The last split of each (sequence, kv head) merges and re-zeroes its counter, so calls
    with 1 to 12 splits (splits past seq_len included; 12 merges in two chunks of 8) reuse one
    counter tensor and agree."""
    sem = torch.zeros(3 * 2, dtype=torch.int32, device=device)
    outs = []
    for n in (1, 2, 4, 7, 12):
        args = fused_attention_inputs(3, 8, 2, 64, 64, 5, dtype, device, seed=12)
        outs.append(check_fused_attention(*args, dtype, sem, num_splits=n))
    for o in outs[1:]:
        assert_close(o, outs[0], dtype)


def test_rope_store_attention_out_and_own_counters(device):
    q, k, v, kc, vc, slots, seq_lens = fused_attention_inputs(2, 4, 2, 64, 32, 3, torch.float16, device, seed=13)
    kr, vr = kc.clone(), vc.clone()
    out = torch.empty(2, 4, 64, dtype=torch.float16, device=device)
    res = rope_store_attention(q, k, v, kc, vc, slots, seq_lens, 0.125, num_splits=2, out=out)
    assert res is out
    assert_close(out, rope_store_attention_ref(q, k, v, kr, vr, slots, seq_lens, 0.125), torch.float16)


@pytest.mark.gpu
def test_rope_store_attention_cuda_graph_replay(device):
    """Captured once with the decoder's kind of counters (no memset in the graph), replayed
    with new seq_lens and slots: output and caches as the references give."""
    dtype = torch.bfloat16
    q, k, v, kc, vc, slots, seq_lens = fused_attention_inputs(4, 8, 2, 64, 512, 6, dtype, device, seed=14)
    kc.nan_to_num_(0.0)
    vc.nan_to_num_(0.0)
    sem = torch.zeros(8, dtype=torch.int32, device=device)
    rope_store_attention(q, k, v, kc, vc, slots, seq_lens, 0.125, semaphores=sem)  # compile first
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = rope_store_attention(q, k, v, kc, vc, slots, seq_lens, 0.125, semaphores=sem)
    for lens, order in (([512, 1, 300, 77], [5, 0, 2, 3]), ([3, 512, 64, 65], [1, 4, 0, 2])):
        seq_lens.copy_(torch.tensor(lens))
        slots.copy_(torch.tensor(order))
        kr, vr = kc.clone(), vc.clone()
        want = rope_store_attention_ref(q, k, v, kr, vr, slots, seq_lens, 0.125)
        for _ in range(3):   # replays of the same step give the same output
            graph.replay()
            assert_close(out, want, dtype)
        assert torch.equal(vc, vr) and not sem.any()
        assert_close(kc, kr, dtype)


# ---- swiglu ----------------------------------------------------------------------------------

@pytest.mark.parametrize("B, F", [(2, 8192), (3, 3072), (1, 5), (5, 123)], ids=lambda v: str(v))
@dtype_param
def test_swiglu(B, F, dtype, device):
    gate_up = 2 * randn(B, 2 * F, g=gen(9), dtype=dtype, device=device)
    assert_close(swiglu(gate_up), swiglu_ref(gate_up), dtype)


# ---- the step's first kernel: embedding rows and sequence lengths --------------------------

@pytest.mark.parametrize("V, hidden, B", [(50, 24, 1), (37, 130, 5), (300, 1100, 3)], ids=lambda v: str(v))
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@dtype_param
def test_embed_seq_lens(V, hidden, B, idx_dtype, dtype, device):
    """Rows gathered exactly (a copy, no arithmetic), seq_lens = positions + 1 as int32; tokens
    repeat and reach both ends of the table; hidden off every block size."""
    g = gen(31)
    embed = randn(V, hidden, g=g, dtype=dtype, device=device)
    tokens = torch.cat([torch.tensor([0, V - 1]), torch.randint(0, V, (B,), generator=g)])[:B]
    tokens = tokens.to(device=device, dtype=idx_dtype)
    positions = torch.randint(0, 5000, (B,), generator=g).to(device=device, dtype=idx_dtype)
    h, seq = embed_seq_lens(embed, tokens, positions)
    h_ref, seq_ref = embed_seq_lens_ref(embed, tokens, positions)
    assert h.dtype == dtype and seq.dtype == torch.int32
    assert torch.equal(h, h_ref) and torch.equal(h, embed[tokens.long()])
    assert torch.equal(seq, seq_ref)


def test_embed_out_of_range_token_gives_zeros(device):
    g = gen(32)
    embed = randn(20, 40, g=g, dtype=torch.float32, device=device)
    tokens = torch.tensor([3, -1, 20, 19], device=device)
    positions = torch.tensor([0, 1, 2, 3], device=device)
    h, seq = embed_seq_lens(embed, tokens, positions)
    assert torch.equal(h, embed_seq_lens_ref(embed, tokens, positions)[0])
    assert torch.equal(h[0], embed[3]) and torch.equal(h[3], embed[19])
    assert not h[1].any() and not h[2].any()
    assert seq.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("bad, match", [
    (lambda e, t, p: (e[:, ::2], t, p), "contiguous rows"),
    (lambda e, t, p: (e.to(torch.int32), t, p), "float32/float16/bfloat16"),
    (lambda e, t, p: (e, t.float(), p), "tokens must be a 1-D int32/int64"),
    (lambda e, t, p: (e, t, p[:1]), "same length"),
])
def test_embed_seq_lens_rejects_bad_args(bad, match, device):
    e = torch.zeros(8, 16, device=device)
    t = torch.tensor([1, 2], device=device)
    with pytest.raises(ValueError, match=match):
        embed_seq_lens(*bad(e, t, t.clone()))


# ---- skinny matmuls with fused prologues ----------------------------------------------------

# B rows, K inputs, N outputs: K and N off every block size, B up to the kernel's MAX_ROWS.
GEMV_SHAPES = [(1, 64, 48), (3, 100, 37), (8, 130, 20), (5, 257, 9), (2, 300, 70)]


@pytest.fixture(autouse=True)
def small_gemv_blocks(monkeypatch):
    """Under the interpreter, small blocks, so the small shapes here span several programs and
    several K chunks (on CUDA, `config` picks them)."""
    import microbench.kernels.gemv as gemv
    monkeypatch.setattr(gemv, "_INTERPRETED_CONFIG", dict(BLOCK_N=8, BLOCK_K=64, num_warps=4))


def _weight(N, K, g, dtype, device):
    return (randn(N, K, g=g, dtype=torch.float32, device=device) / K ** 0.5).to(dtype)


@pytest.mark.parametrize("B, K, N", GEMV_SHAPES, ids=lambda v: str(v))
@dtype_param
def test_linear(B, K, N, dtype, device):
    g = gen(21)
    x, w = randn(B, K, g=g, dtype=dtype, device=device), _weight(N, K, g, dtype, device)
    assert_close(linear(x, w), linear_ref(x, w), dtype)


@pytest.mark.parametrize("B, K, N", GEMV_SHAPES, ids=lambda v: str(v))
@dtype_param
def test_linear_residual(B, K, N, dtype, device):
    """The residual add in the epilogue: y = r + x·wᵀ, rounded once."""
    g = gen(25)
    x, w = randn(B, K, g=g, dtype=dtype, device=device), _weight(N, K, g, dtype, device)
    r = randn(B, N, g=g, dtype=dtype, device=device)
    r0 = r.clone()
    assert_close(linear(x, w, residual=r), linear_ref(x, w, residual=r), dtype)
    assert torch.equal(r, r0)


@pytest.mark.parametrize("B, K, N", GEMV_SHAPES, ids=lambda v: str(v))
@dtype_param
def test_rmsnorm_linear(B, K, N, dtype, device):
    g = gen(23)
    h = 3 * randn(B, K, g=g, dtype=dtype, device=device)
    nw = (1 + 0.1 * randn(K, g=g, dtype=torch.float32, device=device)).to(dtype)
    w = _weight(N, K, g, dtype, device)
    h0 = h.clone()
    assert_close(rmsnorm_linear(h, nw, 1e-5, w), rmsnorm_linear_ref(h, nw, 1e-5, w), dtype)
    assert torch.equal(h, h0)


@pytest.mark.parametrize("B, K, N", GEMV_SHAPES, ids=lambda v: str(v))
@dtype_param
def test_rmsnorm_linear_swiglu(B, K, N, dtype, device):
    """Gate rows n and up rows F + n in one program, silu(g)·u in the epilogue; N = F here."""
    g = gen(22)
    h = 2 * randn(B, K, g=g, dtype=dtype, device=device)
    nw = (1 + 0.1 * randn(K, g=g, dtype=torch.float32, device=device)).to(dtype)
    w_gu = 2 * _weight(2 * N, K, g, dtype, device)
    y = rmsnorm_linear_swiglu(h, nw, 1e-5, w_gu)
    assert y.shape == (B, N)
    assert_close(y, rmsnorm_linear_swiglu_ref(h, nw, 1e-5, w_gu), dtype)


def test_linear_on_strided_rows(device):
    # rows of a wider tensor (as attention's output or a QKV slice arrives)
    g = gen(24)
    big = randn(3, 200, g=g, dtype=torch.float32, device=device)
    x, w = big[:, 10:110], _weight(17, 100, g, torch.float32, device)
    assert_close(linear(x, w), linear_ref(x, w), torch.float32)


@pytest.mark.parametrize("B, K, N", [(1, 200, 11), (3, 256, 13), (2, 64, 5)], ids=lambda v: str(v))
@dtype_param
def test_gemv_one_chunk_ahead(B, K, N, dtype, device, monkeypatch):
    """AHEAD=1 (chunk c + 1's weights requested before chunk c is multiplied) sums the chunks in
    the same order as the plain loop: every fused form equals it bit for bit, and the
    reference, for a K of one chunk, several, and a ragged last one."""
    import microbench.kernels.gemv as G
    g = gen(27)
    h = 2 * randn(B, K, g=g, dtype=dtype, device=device)
    nw = (1 + 0.1 * randn(K, g=g, dtype=torch.float32, device=device)).to(dtype)
    w, w_gu = _weight(N, K, g, dtype, device), 2 * _weight(2 * N, K, g, dtype, device)
    r = randn(B, N, g=g, dtype=dtype, device=device)
    calls = {"linear": (lambda: linear(h, w, residual=r), lambda: linear_ref(h, w, residual=r)),
             "rmsnorm_linear": (lambda: rmsnorm_linear(h, nw, 1e-5, w),
                                lambda: rmsnorm_linear_ref(h, nw, 1e-5, w)),
             "swiglu": (lambda: rmsnorm_linear_swiglu(h, nw, 1e-5, w_gu),
                        lambda: rmsnorm_linear_swiglu_ref(h, nw, 1e-5, w_gu))}
    cfg = (dict(G._INTERPRETED_CONFIG, STAGES=1) if G.interpreted(G._gemv_kernel)
           else dict(BLOCK_N=2, BLOCK_K=1024 // h.element_size() // 2, STAGES=3, num_warps=4))
    for name, (fn, ref) in calls.items():
        for k in ((N, K), (2 * N, K)):
            monkeypatch.setitem(G.OVERRIDES, k, dict(cfg, AHEAD=0))
        plain = fn()
        for k in ((N, K), (2 * N, K)):
            monkeypatch.setitem(G.OVERRIDES, k, dict(cfg, AHEAD=1))
        ahead = fn()
        assert torch.equal(ahead, plain), name
        assert_close(ahead, ref(), dtype)

# ---- rope fused into the KV store ------------------------------------------------------------

@pytest.mark.parametrize("B, H, Hkv, D", [(3, 4, 2, 64), (1, 2, 2, 80), (5, 6, 1, 128), (2, 3, 3, 96)],
                         ids=lambda v: str(v))
@dtype_param
def test_rope_store_kv(B, H, Hkv, D, dtype, device):
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
    assert_close(q, q_ref, dtype)
    assert torch.equal(k, k0)                          # k itself is left as it was
    assert torch.equal(v_cache, vc_ref)                # v: a copy
    assert_close(k_cache, kc_ref, dtype)               # k: rotated on the way in
    untouched = torch.ones(S, max_seq, dtype=torch.bool, device=device)
    untouched[slots, positions] = False
    untouched = untouched[:, None, :, None].expand_as(k_cache)
    assert torch.equal(k_cache[untouched], kc_ref[untouched])


# ---- argument checks -------------------------------------------------------------------------

def _f16(*shape, dev):
    return torch.zeros(*shape, dtype=torch.float16, device=dev)


def _i32(*shape, dev, fill=0):
    return torch.full(shape, fill, dtype=torch.int32, device=dev)


# (id, call on a device, expected message fragment)
BAD_CALLS = [
    ("rmsnorm-3d", lambda d: rmsnorm(_f16(2, 3, 4, dev=d), _f16(4, dev=d), 1e-6), "2-D"),
    ("rmsnorm-w", lambda d: rmsnorm(_f16(2, 8, dev=d), _f16(7, dev=d), 1e-6), "w must be"),
    ("rmsnorm-res-dtype", lambda d: rmsnorm(_f16(2, 8, dev=d), _f16(8, dev=d), 1e-6,
                                            residual=_f16(2, 8, dev=d).float()), "residual"),
    ("rmsnorm-int", lambda d: rmsnorm(_i32(2, 8, dev=d), _f16(8, dev=d), 1e-6), "dtype"),
    ("rope-head-dim", lambda d: rope(_f16(1, 2, 63, dev=d), _f16(1, 1, 63, dev=d), _i32(1, dev=d)), "head dim"),
    ("rope-float-pos", lambda d: rope(_f16(1, 2, 64, dev=d), _f16(1, 1, 64, dev=d), _f16(1, dev=d)), "positions"),
    ("rope-strided-d", lambda d: rope(_f16(1, 2, 128, dev=d)[..., ::2], _f16(1, 1, 64, dev=d), _i32(1, dev=d)),
     "contiguous"),
    ("store-kv-dim", lambda d: store_kv(_f16(2, 2, 8, 64, dev=d), _f16(2, 2, 8, 64, dev=d), _f16(1, 2, 32, dev=d),
                                        _f16(1, 2, 32, dev=d), _i32(1, dev=d), _i32(1, dev=d)), "k and v"),
    ("store-kv-slots", lambda d: store_kv(_f16(2, 2, 8, 64, dev=d), _f16(2, 2, 8, 64, dev=d), _f16(1, 2, 64, dev=d),
                                          _f16(1, 2, 64, dev=d), _i32(2, dev=d), _i32(1, dev=d)), "slots"),
    ("attn-gqa", lambda d: decode_attention(_f16(1, 3, 64, dev=d), _f16(2, 2, 8, 64, dev=d), _f16(2, 2, 8, 64, dev=d),
                                            _i32(1, dev=d), _i32(1, dev=d, fill=1), 0.125), "multiple"),
    ("attn-dtype", lambda d: decode_attention(_f16(1, 2, 64, dev=d).float(), _f16(2, 2, 8, 64, dev=d),
                                              _f16(2, 2, 8, 64, dev=d), _i32(1, dev=d), _i32(1, dev=d, fill=1), 0.125),
     "dtypes"),
    ("attn-splits", lambda d: decode_attention(_f16(1, 2, 64, dev=d), _f16(2, 2, 8, 64, dev=d), _f16(2, 2, 8, 64, dev=d),
                                               _i32(1, dev=d), _i32(1, dev=d, fill=1), 0.125, num_splits=0), "num_splits"),
    ("attn-seq-lens", lambda d: decode_attention(_f16(1, 2, 64, dev=d), _f16(2, 2, 8, 64, dev=d),
                                                 _f16(2, 2, 8, 64, dev=d), _i32(1, dev=d), _f16(1, dev=d), 0.125),
     "seq_lens"),
    ("attn-tensor-scale", lambda d: decode_attention(_f16(1, 2, 64, dev=d), _f16(2, 2, 8, 64, dev=d),
                                                     _f16(2, 2, 8, 64, dev=d), _i32(1, dev=d), _i32(1, dev=d, fill=1),
                                                     torch.tensor(0.125, device=d)), "scale"),
    ("swiglu-odd", lambda d: swiglu(_f16(2, 7, dev=d)), r"\[B, 2F\]"),
    ("linear-rows", lambda d: linear(_f16(9, 8, dev=d), _f16(4, 8, dev=d)), "rows; allowed 1..8"),
    ("linear-k", lambda d: linear(_f16(2, 8, dev=d), _f16(4, 7, dev=d)), r"w must be \[N, 8\]"),
    ("linear-dtype", lambda d: linear(_f16(2, 8, dev=d), _f16(4, 8, dev=d).float()), "dtypes"),
    ("linear-residual", lambda d: linear(_f16(2, 8, dev=d), _f16(4, 8, dev=d), residual=_f16(2, 5, dev=d)),
     "residual must match"),
    ("norm-swiglu-odd", lambda d: rmsnorm_linear_swiglu(_f16(2, 8, dev=d), _f16(8, dev=d), 1e-5, _f16(5, 8, dev=d)),
     "2F rows"),
    ("rmsnorm-linear-nw", lambda d: rmsnorm_linear(_f16(2, 8, dev=d), _f16(7, dev=d), 1e-5, _f16(4, 8, dev=d)),
     "norm_w"),
    ("fused-attn-semaphores", lambda d: rope_store_attention(
        _f16(1, 2, 64, dev=d), _f16(1, 1, 64, dev=d), _f16(1, 1, 64, dev=d), _f16(2, 1, 8, 64, dev=d),
        _f16(2, 1, 8, 64, dev=d), _i32(1, dev=d), _i32(1, dev=d, fill=1), 0.125, semaphores=_f16(4, dev=d)),
     "semaphores must be int32"),
    ("fused-attn-kv", lambda d: rope_store_attention(
        _f16(1, 2, 64, dev=d), _f16(1, 2, 64, dev=d), _f16(1, 2, 64, dev=d), _f16(2, 1, 8, 64, dev=d),
        _f16(2, 1, 8, 64, dev=d), _i32(1, dev=d), _i32(1, dev=d, fill=1), 0.125), "k and v"),
    ("rope-store-kv-cache", lambda d: rope_store_kv(_f16(1, 2, 64, dev=d), _f16(1, 1, 64, dev=d),
                                                    _f16(1, 1, 64, dev=d), _f16(2, 2, 8, 64, dev=d),
                                                    _f16(2, 2, 8, 64, dev=d), _i32(1, dev=d), _i32(1, dev=d)),
     "k and v"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_value_error(call, match, device):
    with pytest.raises(ValueError, match=match):
        call(device)


@pytest.mark.gpu
def test_cpu_tensors_without_interpreter_raise():
    with pytest.raises(ValueError, match="interpreter"):
        swiglu(torch.randn(2, 8))
