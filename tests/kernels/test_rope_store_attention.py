"""rope_store_attention (RoPE, the KV store and decode attention in one kernel, the split merge
inside it) against rope_store_kv_ref + decode_attention_ref, on fresh random inputs."""
import sys

import pytest
import torch

from microbench.kernels import rope_store_attention, rope_store_attention_ref
from microbench.kernels.rope_store_attention import STREAM_SPLITS, fused_plan
from tests.utils import (ATTENTION_SHAPES, DTYPE_TOLS, TOL, assert_close, attention_inputs, f16, fused_qkv,
                         gen, i32)

SPLITS = pytest.mark.parametrize("num_splits", [1, 3, None], ids=lambda n: f"splits={n}")


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


@pytest.mark.parametrize("B, H, Hkv, D, max_seq, S", ATTENTION_SHAPES, ids=str)
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


def test_fused_plan_streams_only_when_the_programs_fill_the_gpu():
    """On the CPU the stand-in GPU has 4 SMs, filled by 8 (sequence, kv head) programs: 16 of
    them with 128-wide heads over 4 tiles stream in STREAM_SPLITS splits; 6 of them, or 64-wide
    heads, take decode_attention's split count and load their first tile early; a split of one
    tile never streams."""
    f16 = torch.float16
    assert fused_plan(2, 8, 64, "cpu", 128, f16) == (STREAM_SPLITS, True)
    assert fused_plan(3, 2, 64, "cpu", 128, f16)[1] is False
    assert fused_plan(2, 8, 64, "cpu", 64, f16)[1] is False
    assert fused_plan(2, 8, 64, "cpu", 128, f16, num_splits=4) == (4, False)
    assert fused_plan(2, 8, 64, "cpu", 128, f16, num_splits=1) == (1, True)


def test_capped_splits_never_launch_more_programs_than_wanted():
    """llama-1b's heads at context 512 on the H200 (132 SMs, 128-key tiles: 5 of them): at bs 16,
    128 (sequence, kv head) pairs want 3 splits each; decode_attention's rule gives 5 one-tile
    splits, the capped count 3 (of 2, 2 and 1 tiles). Where the pairs fill the GPU, or a split
    of one tile is all that was wanted, the two agree."""
    from microbench.kernels.decode_attention import choose_num_splits
    from microbench.kernels.rope_store_attention import capped_splits
    assert choose_num_splits(16, 8, 576, 128, 132, min_tokens=128) == 5
    assert capped_splits(16, 8, 5, 132) == 3
    assert capped_splits(4, 8, 5, 132) == 5 and capped_splits(64, 8, 5, 132) == 1
    assert capped_splits(1, 2, 1025, 132) == 61      # 17 tiles a split: at most MAX_SPLITS (64)
    for b in range(1, 70):   # never more programs than wanted, never more splits than tiles
        n = capped_splits(b, 8, 5, 132)
        assert 1 <= n <= 5 and (n == 1 or b * 8 * n <= 2 * 132 + b * 8)
    # on the CPU's stand-in (4 SMs, 16-key tiles): 2 pairs over 10 tiles want 4 splits
    f16 = torch.float16
    assert fused_plan(1, 2, 160, "cpu", 64, f16) == (5, False)
    assert fused_plan(1, 2, 160, "cpu", 64, f16, capped=True) == (4, False)
    assert fused_plan(1, 2, 16, "cpu", 64, f16, capped=True) == (1, False)   # one tile


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_rope_store_attention_capped(dtype, atol, rtol, device):
    """The capped split count computes what the references give, over a cache of five tiles
    where it launches fewer, longer splits than the default (llama-1b's heads at bs 16 on a
    132-SM GPU; on the CPU's 4-SM stand-in, one sequence)."""
    from microbench.kernels.decode_attention import block_n_for
    B, H, Hkv, D = (16, 32, 8, 64) if device.type == "cuda" else (1, 4, 2, 64)
    bn = block_n_for(device, D, dtype)
    max_seq = 4 * bn + bn // 2
    capped, default = (fused_plan(B, Hkv, max_seq, device, D, dtype, capped=c)[0] for c in (True, False))
    assert capped < default
    args = fused_attention_inputs(B, H, Hkv, D, max_seq, max_seq - 3, dtype, device, seed=16)
    sem = torch.zeros(B * Hkv, dtype=torch.int32, device=device)
    check_fused_attention(*args, dtype, atol, rtol, sem, capped=True)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
@pytest.mark.parametrize("block_n", [32, 64])
def test_rope_store_attention_with_the_tile_asked_for(block_n, dtype, atol, rtol, device,
                                                     monkeypatch):
    """K/V tiles of the keys asked for (the decoder's measured "half-tile" launch asks for half
    of block_n_for's) compute what the references give, the split count following the tiles:
    over a cache of 5.5 tiles of 32 keys, 64-key tiles make half as many splits. The new token sits in
    the last, partial tile."""
    B, H, Hkv, D, max_seq = 2, 4, 1, 64, 5 * 32 + 16
    short, long = (fused_plan(B, Hkv, max_seq, device, D, dtype, block_n=n)[0] for n in (32, 64))
    assert (short, long) == (6, 3)
    args = fused_attention_inputs(B, H, Hkv, D, max_seq, max_seq - 1, dtype, device, seed=17)
    sem = torch.zeros(B * Hkv, dtype=torch.int32, device=device)
    rsa = sys.modules["microbench.kernels.rope_store_attention"]   # the module, not the function
    seen = []

    def spy(record, kernel, grid, *a, **kw):
        seen.append((grid, kw["BLOCK_N"]))
        return real(record, kernel, grid, *a, **kw)
    real = rsa.launch
    monkeypatch.setattr(rsa, "launch", spy)
    check_fused_attention(*args, dtype, atol, rtol, sem, block_n=block_n)
    assert seen == [((B, Hkv, short if block_n == 32 else long), block_n)]


def test_fused_plan_refuses_a_tile_it_cannot_launch():
    with pytest.raises(ValueError, match="block_n must be None or a power of two from 16 to 128"):
        fused_plan(1, 2, 64, "cpu", 64, torch.float16, block_n=48)
    with pytest.raises(ValueError, match="from 16 to 64"):
        fused_plan(1, 2, 64, "cpu", 256, torch.float16, block_n=128)
    assert fused_plan(1, 2, 64, "cpu", 64, torch.float16, block_n=None) == fused_plan(
        1, 2, 64, "cpu", 64, torch.float16)


def test_half_tile_halves_the_rules_tile_down_to_the_smallest():
    from microbench.kernels.rope_store_attention import half_tile
    cuda = torch.device("cuda")
    assert half_tile(cuda, 64, torch.bfloat16) == 64 and half_tile(cuda, 128, torch.bfloat16) == 32
    assert half_tile(cuda, 128, torch.float32) == 16      # 32-key tiles halved
    assert half_tile(torch.device("cpu"), 64, torch.bfloat16) == 16   # 16 cannot halve


@SPLITS
def test_rope_store_attention_streamed(num_splits, device):
    """A batch whose (sequence, kv head) programs fill the GPU (the CPU's stand-in, or the
    device's SMs) takes the streaming loop: output and caches as the references give."""
    B, H, Hkv, D, max_seq = (34, 32, 8, 128, 300) if device.type == "cuda" else (4, 8, 2, 128, 70)
    dtype = torch.bfloat16
    atol, rtol = TOL[dtype]
    assert fused_plan(B, Hkv, max_seq, device, D, dtype, num_splits)[1]
    args = fused_attention_inputs(B, H, Hkv, D, max_seq, B + 3, dtype, device, seed=15)
    sem = torch.zeros(B * Hkv, dtype=torch.int32, device=device)
    check_fused_attention(*args, dtype, atol, rtol, sem, num_splits=num_splits)


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
    ("semaphores", lambda d: rope_store_attention(
        f16(1, 2, 64, dev=d), f16(1, 1, 64, dev=d), f16(1, 1, 64, dev=d), f16(2, 1, 8, 64, dev=d),
        f16(2, 1, 8, 64, dev=d), i32(1, dev=d), i32(1, dev=d, fill=1), 0.125, semaphores=f16(4, dev=d)),
     "semaphores must be int32"),
    ("kv", lambda d: rope_store_attention(
        f16(1, 2, 64, dev=d), f16(1, 2, 64, dev=d), f16(1, 2, 64, dev=d), f16(2, 1, 8, 64, dev=d),
        f16(2, 1, 8, 64, dev=d), i32(1, dev=d), i32(1, dev=d, fill=1), 0.125), "k and v"),
    *((f"block_n={n}", lambda d, n=n: rope_store_attention(
        f16(1, 2, 64, dev=d), f16(1, 1, 64, dev=d), f16(1, 1, 64, dev=d), f16(2, 1, 8, 64, dev=d),
        f16(2, 1, 8, 64, dev=d), i32(1, dev=d), i32(1, dev=d, fill=1), 0.125, block_n=n),
       "block_n must be None or a power of two from 16 to 128") for n in (8, 48, 256, 0, 32.0, True)),
    ("block_n wide heads", lambda d: rope_store_attention(
        f16(1, 2, 256, dev=d), f16(1, 1, 256, dev=d), f16(1, 1, 256, dev=d),
        f16(2, 1, 8, 256, dev=d), f16(2, 1, 8, 256, dev=d), i32(1, dev=d), i32(1, dev=d, fill=1),
        0.125, block_n=128), "from 16 to 64 .keys per K/V tile of 256-wide heads"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_value_error(call, match, device):
    with pytest.raises(ValueError, match=match):
        call(device)
