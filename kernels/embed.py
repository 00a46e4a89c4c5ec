"""A decode step's first kernel: the embedding rows of the new tokens and each sequence's length.

    h[b] = embed[tokens[b]],  seq_lens[b] = positions[b] + 1 (int32)

In PyTorch that is three launches (an index gather, an add and a cast), none of them with
programmatic dependent launch, so the first layer's matmul cannot start loading its weights until
all three have run. Here it is one kernel that lets the next launch first (programmatic
dependent launch, `pdl=True`) and waits for the input copy before it reads a token. A token
outside [0, vocab) gives a row of zeros, never a read outside the table (PyTorch's gather raises
a device-side assert instead).
"""
import torch
import triton
import triton.language as tl

from ._launch import launch

from ._utils import (DTYPES, INDEX_DTYPES, as_mask, check_device, interpreted, pdl_enter, pdl_launch_kw,
                     use_pdl)


@triton.jit
def _embed_kernel(tok_ptr, pos_ptr, emb_ptr, h_ptr, seq_ptr, vocab, stride_e, stride_h,
                  HIDDEN: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    b = tl.program_id(0)
    c = tl.program_id(1)
    pdl_enter(USE_PDL)   # tokens and positions come from the copy before the step
    tok = tl.load(tok_ptr + b).to(tl.int64)
    ok = (tok >= 0) & (tok < vocab)
    offs = c * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    row = tl.load(emb_ptr + tl.where(ok, tok, 0) * stride_e + offs, mask=mask & as_mask(ok), other=0.0)
    tl.store(h_ptr + b * stride_h + offs, row, mask=mask)
    if c == 0:
        tl.store(seq_ptr + b, (tl.load(pos_ptr + b) + 1).to(tl.int32))


def embed_seq_lens(embed, tokens, positions, pdl=True, record=None):
    """(embed[tokens], (positions + 1) as int32) in one kernel. embed: [vocab, hidden] with
    contiguous rows; tokens, positions: [B] int32/int64 on embed's device. Returns h [B, hidden]
    in embed's dtype and seq_lens [B] int32. pdl: launch with programmatic dependent launch
    where the device has it."""
    if embed.dim() != 2 or embed.dtype not in DTYPES or embed.stride(1) != 1:
        raise ValueError(f"embed_seq_lens: embed must be a 2-D float32/float16/bfloat16 table with "
                         f"contiguous rows, got {tuple(embed.shape)} {embed.dtype} strides {embed.stride()}")
    for name, t in (("tokens", tokens), ("positions", positions)):
        if t.dim() != 1 or t.dtype not in INDEX_DTYPES or t.device != embed.device:
            raise ValueError(f"embed_seq_lens: {name} must be a 1-D int32/int64 tensor on {embed.device}, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    if tokens.shape != positions.shape:
        raise ValueError(f"embed_seq_lens: tokens {tuple(tokens.shape)} and positions "
                         f"{tuple(positions.shape)} must have the same length")
    check_device("embed_seq_lens", _embed_kernel, embed)
    B, hidden = tokens.shape[0], embed.shape[1]
    h = torch.empty((B, hidden), dtype=embed.dtype, device=embed.device)
    seq_lens = torch.empty(B, dtype=torch.int32, device=embed.device)
    if B == 0:
        return h, seq_lens
    # 16-byte loads, 1024 elements a program on the GPU; whole rows under the interpreter
    block = triton.next_power_of_2(hidden) if interpreted(_embed_kernel) else min(1024, triton.next_power_of_2(hidden))
    pdl = use_pdl(_embed_kernel, embed, pdl)
    launch(record, _embed_kernel, (B, triton.cdiv(hidden, block)),
        tokens, positions, embed, h, seq_lens, embed.shape[0], embed.stride(0), h.stride(0),
        HIDDEN=hidden, BLOCK=block, USE_PDL=pdl, num_warps=4, **pdl_launch_kw(pdl))
    return h, seq_lens


def embed_seq_lens_ref(embed, tokens, positions):
    """Reference: (embed[tokens], (positions + 1).to(int32)); a token outside the table gives
    zeros. Bytes (s = element size): reads B·hidden·s of rows and the B tokens and positions,
    writes B·hidden·s and 4·B."""
    ok = (tokens >= 0) & (tokens < embed.shape[0])
    h = embed[torch.where(ok, tokens, 0)] * ok[:, None].to(embed.dtype)
    return h, (positions + 1).to(torch.int32)
