"""decode_attention against decode_attention_ref on fresh random inputs (cache rows no sequence
may read are NaN), and the split-count heuristic."""
import pytest
import torch

from microbench.kernels import decode_attention, decode_attention_ref
from microbench.kernels.decode_attention import MAX_SPLITS, MIN_TOKENS_PER_SPLIT, choose_num_splits
from tests.utils import ATTENTION_SHAPES, DTYPE_TOLS, assert_close, attention_inputs, f16, i32

SPLITS = pytest.mark.parametrize("num_splits", [1, 3, None], ids=lambda n: f"splits={n}")


@pytest.mark.parametrize("B, H, Hkv, D, max_seq, S", ATTENTION_SHAPES, ids=str)
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
]


@pytest.mark.parametrize("call, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_value_error(call, match, device):
    with pytest.raises(ValueError, match=match):
        call(device)
