"""decode_attention and rope_store_attention (RoPE, the KV store and attention in one kernel)
against their references, on fresh random inputs, plus the split-count heuristic."""
import pytest
import torch

from microbench.kernels import (decode_attention, decode_attention_ref, rope_store_attention,
                                rope_store_attention_ref)
from microbench.kernels.decode_attention import MAX_SPLITS, MIN_TOKENS_PER_SPLIT, choose_num_splits
from tests.utils import DTYPE_TOLS, assert_close, f16, fused_qkv, gen, i32, randn

# B, H, Hkv, D, max_seq, num_slots: llama-1b's heads (GQA 4), then GQA ratios 4, 1 (H = Hkv) with
# head dim 80, 4 with B=1 and D=96, 1 with D=128 and a ragged max_seq, 8.
SHAPES = [(2, 32, 8, 64, 64, 3), (3, 8, 2, 64, 64, 5), (5, 4, 4, 80, 48, 7), (1, 4, 1, 96, 40, 2),
          (2, 2, 2, 128, 33, 3), (4, 8, 1, 64, 50, 6)]
SPLITS = pytest.mark.parametrize("num_splits", [1, 3, None], ids=lambda n: f"splits={n}")


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


@pytest.mark.parametrize("B, H, Hkv, D, max_seq, S", SHAPES, ids=str)
@SPLITS
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_decode_attention(B, H, Hkv, D, max_seq, S, num_splits, dtype, atol, rtol, device):
    q, k_cache, v_cache, slots, seq_lens = attention_inputs(B, H, Hkv, D, max_seq, S, dtype, device)
    scale = D ** -0.5
    out = decode_attention(q, k_cache, v_cache, slots, seq_lens, scale, num_splits=num_splits)
    assert out.is_contiguous() and out.device == q.device
    assert_close(out, decode_attention_ref(q, k_cache, v_cache, slots, seq_lens, scale), dtype, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_decode_attention_split_counts_agree(dtype, atol, rtol, device):
    """Splits that end past seq_len, or start past it (neutral partials), change nothing."""
    q, k_cache, v_cache, slots, seq_lens = attention_inputs(3, 8, 2, 64, 64, 5, dtype, device, seed=8)
    outs = [decode_attention(q, k_cache, v_cache, slots, seq_lens, 0.125, num_splits=n) for n in (1, 2, 4, 7)]
    for o in outs[1:]:
        assert_close(o, outs[0], dtype, atol, rtol)


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
    ids=str,
)
def test_num_splits_heuristic(B, Hkv, max_seq, block_n, sms):
    n = choose_num_splits(B, Hkv, max_seq, block_n, sms)
    n_tiles = -(-max_seq // block_n)
    tiles_per_split = -(-n_tiles // n)
    assert 1 <= n <= min(n_tiles, MAX_SPLITS)
    assert (n - 1) * tiles_per_split < n_tiles  # no split starts past max_seq
    assert n == 1 or tiles_per_split * block_n >= MIN_TOKENS_PER_SPLIT
    if max_seq <= 256 or B * Hkv >= 2 * sms:
        assert n == 1  # small caches, or already >= 2 programs per SM
    elif n < MAX_SPLITS and tiles_per_split * block_n > 2 * MIN_TOKENS_PER_SPLIT:
        assert B * Hkv * n >= 2 * sms  # splits were not limited by size: ~2 programs per SM
    # num_splits_for promises that whether a reduce kernel runs does not depend on BLOCK_N.
    for other in (16, 32, 64, 128):
        assert (choose_num_splits(B, Hkv, max_seq, other, sms) == 1) == (n == 1)


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


def check_fused_attention(q, k, v, k_cache, v_cache, slots, seq_lens, dtype, atol, rtol, sem, **kw):
    """One call against rope_store_kv_ref + decode_attention_ref on copies of the caches: the
    output, both caches (new rows rotated and copied, every other row untouched, NaNs
    included), q left as it was and the split counters left at zero."""
    scale = q.shape[-1] ** -0.5
    kr, vr, q0 = k_cache.clone(), v_cache.clone(), q.clone()
    want = rope_store_attention_ref(q, k, v, kr, vr, slots, seq_lens, scale, 5e5)
    out = rope_store_attention(q, k, v, k_cache, v_cache, slots, seq_lens, scale, 5e5,
                               semaphores=sem, **kw)
    assert_close(out, want, dtype, atol, rtol)
    assert torch.equal(q, q0) and not sem.any()
    rows = (slots.long(), slice(None), seq_lens.long() - 1)
    assert_close(k_cache[rows], kr[rows], dtype, atol, rtol)
    assert torch.equal(v_cache[rows], vr[rows])
    for c, r in ((k_cache, kr), (v_cache, vr)):
        c, r = c.clone(), r.clone()
        c[rows] = r[rows] = 0
        torch.testing.assert_close(c, r, rtol=0, atol=0, equal_nan=True)
    return out


@pytest.mark.parametrize("B, H, Hkv, D, max_seq, S", SHAPES, ids=str)
@SPLITS
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_rope_store_attention(B, H, Hkv, D, max_seq, S, num_splits, dtype, atol, rtol, device):
    args = fused_attention_inputs(B, H, Hkv, D, max_seq, S, dtype, device, seed=11)
    sem = torch.zeros(B * Hkv + 3, dtype=torch.int32, device=device)
    check_fused_attention(*args, dtype, atol, rtol, sem, num_splits=num_splits)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_rope_store_attention_split_counts_share_counters(dtype, atol, rtol, device):
    """The last split of each (sequence, kv head) merges and re-zeroes its counter, so calls
    with 1 to 12 splits (splits past seq_len included; 12 merges in two chunks of 8) reuse one
    counter tensor and agree."""
    sem = torch.zeros(3 * 2, dtype=torch.int32, device=device)
    outs = []
    for n in (1, 2, 4, 7, 12):
        args = fused_attention_inputs(3, 8, 2, 64, 64, 5, dtype, device, seed=12)
        outs.append(check_fused_attention(*args, dtype, atol, rtol, sem, num_splits=n))
    for o in outs[1:]:
        assert_close(o, outs[0], dtype, atol, rtol)


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


BAD_CALLS = [
    ("gqa", lambda d: decode_attention(f16(1, 3, 64, dev=d), f16(2, 2, 8, 64, dev=d), f16(2, 2, 8, 64, dev=d),
                                       i32(1, dev=d), i32(1, dev=d, fill=1), 0.125), "multiple"),
    ("dtype", lambda d: decode_attention(f16(1, 2, 64, dev=d).float(), f16(2, 2, 8, 64, dev=d),
                                         f16(2, 2, 8, 64, dev=d), i32(1, dev=d), i32(1, dev=d, fill=1), 0.125),
     "dtypes"),
    ("splits", lambda d: decode_attention(f16(1, 2, 64, dev=d), f16(2, 2, 8, 64, dev=d), f16(2, 2, 8, 64, dev=d),
                                          i32(1, dev=d), i32(1, dev=d, fill=1), 0.125, num_splits=0), "num_splits"),
    ("seq-lens", lambda d: decode_attention(f16(1, 2, 64, dev=d), f16(2, 2, 8, 64, dev=d),
                                            f16(2, 2, 8, 64, dev=d), i32(1, dev=d), f16(1, dev=d), 0.125),
     "seq_lens"),
    ("tensor-scale", lambda d: decode_attention(f16(1, 2, 64, dev=d), f16(2, 2, 8, 64, dev=d),
                                                f16(2, 2, 8, 64, dev=d), i32(1, dev=d), i32(1, dev=d, fill=1),
                                                torch.tensor(0.125, device=d)), "scale"),
    ("fused-semaphores", lambda d: rope_store_attention(
        f16(1, 2, 64, dev=d), f16(1, 1, 64, dev=d), f16(1, 1, 64, dev=d), f16(2, 1, 8, 64, dev=d),
        f16(2, 1, 8, 64, dev=d), i32(1, dev=d), i32(1, dev=d, fill=1), 0.125, semaphores=f16(4, dev=d)),
     "semaphores must be int32"),
    ("fused-kv", lambda d: rope_store_attention(
        f16(1, 2, 64, dev=d), f16(1, 2, 64, dev=d), f16(1, 2, 64, dev=d), f16(2, 1, 8, 64, dev=d),
        f16(2, 1, 8, 64, dev=d), i32(1, dev=d), i32(1, dev=d, fill=1), 0.125), "k and v"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_value_error(call, match, device):
    with pytest.raises(ValueError, match=match):
        call(device)
