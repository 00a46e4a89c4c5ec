"""embed_seq_lens (a decode step's first kernel) against its reference: a gather, so exact."""
import pytest
import torch

from microbench.kernels import embed_seq_lens, embed_seq_lens_ref
from tests.utils import DTYPES, dtype_id, gen, randn

# vocab, hidden, B: llama-1b's hidden size (two programs a row on the GPU), then hidden sizes off
# every block size.
SHAPES = [(1000, 2048, 4), (50, 24, 1), (37, 130, 5), (300, 1100, 3)]


@pytest.mark.parametrize("V, hidden, B", SHAPES, ids=str)
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)   # a copy: exact, no tolerance
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
