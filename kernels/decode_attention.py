"""Decode attention (one query token per sequence) over a slot-indexed KV cache: flash-decoding
with split-KV partials and a log-sum-exp merge. Host code never reads tensor values, so a call
can be captured in a CUDA graph and replayed with new seq_lens and slots. The pieces public here
(the split heuristic, `dot`, the argument checks, the workspaces) are shared with
rope_store_attention, which fuses RoPE, the KV store and the merge into the same attention."""
import functools
import numbers

import torch
import triton
import triton.language as tl

from ._launch import launch

from ._utils import (DTYPES, INDEX_DTYPES, check_device, dot, interpreted, pdl_enter, pdl_launch_kw,
                     to_dtype, use_pdl)

LOG2E = 1.4426950408889634
# Heuristic knobs (see choose_num_splits).
PROGRAMS_PER_SM = 2
MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 64
CPU_SMS = 4  # stand-in "SM count" on CPU: any small deterministic value will do there
# GPU launch config. With num_stages=1 K/V come in as plain 16-byte evict_first loads and
# ~4 programs per SM hide their latency; Triton's cp.async pipeline (num_stages 3) measured
# 72% of copy bandwidth against 76-77% for this (H100, B=16 H=32 Hkv=8 D=64, context 4096, bf16).
CUDA_NUM_STAGES = 1
# BLOCK_N on the GPU makes each K (and V) tile 16 KB: 128 rows at D=64 in 16 bits (measured
# ~1 point faster than 64 there), 64 rows at D=80..128, where 128 rows measured slower.
_CUDA_TILE_BYTES = 16384


@functools.lru_cache(maxsize=None)
def sm_count(device_index):
    """The SM count of CUDA device `device_index` (looked up once per device)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(batch, num_kv_heads, max_seq, block_n, num_sms, min_tokens=None):
    """Shapes-only split count. Each split covers whole BLOCK_N tiles, at least `min_tokens`
    (default MIN_TOKENS_PER_SPLIT) of the cache's max_seq; as many splits as give every SM about
    PROGRAMS_PER_SM (batch, kv head, split) programs, at most MAX_SPLITS; none left empty."""
    min_tokens = MIN_TOKENS_PER_SPLIT if min_tokens is None else min_tokens
    want = triton.cdiv(PROGRAMS_PER_SM * num_sms, max(batch * num_kv_heads, 1))
    if want <= 1 or max_seq < 2 * min_tokens:
        return 1
    n_tiles = triton.cdiv(max_seq, block_n)
    # Flooring the tiles per split rounds the split count up, so `want` is met.
    tiles = max(n_tiles // want, triton.cdiv(min_tokens, block_n), triton.cdiv(n_tiles, MAX_SPLITS))
    return triton.cdiv(n_tiles, tiles)


def block_n_for(device, head_dim, dtype):
    """Keys per K/V tile (BLOCK_N) for a head dim and dtype on `device`."""
    if device.type != "cuda":
        # 16 keeps the interpreter's per-tile numpy work small and lets tiny test caches span
        # several tiles and splits.
        return 16
    return min(max(_CUDA_TILE_BYTES // (triton.next_power_of_2(head_dim) * dtype.itemsize), 32), 128)


def num_splits_for(batch, num_kv_heads, max_seq, device, head_dim=128, dtype=torch.bfloat16):
    """The split count decode_attention picks when num_splits is None (1 means no reduce
    kernel). Whether it is 1 depends on the first four arguments only."""
    device = torch.device(device)
    if device.type == "cuda":
        sms = sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        sms = CPU_SMS
    return choose_num_splits(batch, num_kv_heads, max_seq, block_n_for(device, head_dim, dtype), sms)


@triton.jit
def _attend_tile(q, k_base, v_base, start, hi, stride_kcn, stride_vcn, qk_scale, m_i, l_i, acc,
                 mask_d, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """One online-softmax step over keys [start, start + BLOCK_N) ∩ [0, hi), log2 domain:
    s = qk_scale·q·Kᵀ, m' = max(m, max s), l' = l·2^(m−m') + Σ 2^(s−m'), acc' = acc·2^(m−m') + 2^(s−m')·V."""
    n = start + tl.arange(0, BLOCK_N)
    mask_n = n < hi
    # Rows past seq_len may hold garbage (even NaN): never load them, since 0 · NaN = NaN.
    kv_mask = mask_n[:, None] & mask_d[None, :]
    # evict_first: K and V are streamed once per call; measured ~8% faster on H100 than default.
    k = tl.load(k_base + n[:, None] * stride_kcn, mask=kv_mask, other=0.0, eviction_policy="evict_first")
    s = dot(q, tl.trans(k), DOT_PRECISION, INTERPRET) * qk_scale  # [BLOCK_H, BLOCK_N]
    s = tl.where(mask_n[None, :], s, float("-inf"))
    # Column `start` is always valid, so m_new is finite and alpha never sees (-inf) - (-inf).
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    # Loaded after the softmax: issuing it next to K measured no faster at D=64 and spilled at D=128.
    v = tl.load(v_base + n[:, None] * stride_vcn, mask=kv_mask, other=0.0, eviction_policy="evict_first")
    # p goes to V's dtype for the tensor-core product, as flash-attention does.
    acc = acc * alpha[:, None] + dot(to_dtype(p, v.dtype), v, DOT_PRECISION, INTERPRET)
    return m_new, l_i, acc


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, slots_ptr, seq_lens_ptr, out_ptr, o_part_ptr, m_part_ptr, l_part_ptr,
    stride_qb, stride_qh, stride_kcs, stride_kch, stride_kcn, stride_vcs, stride_vch, stride_vcn,
    stride_ob, stride_oh,
    H, max_seq, split_size, num_splits, qk_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, SINGLE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr, TILES_PER_SPLIT: tl.constexpr, USE_PDL: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    pdl_enter(USE_PDL)
    # Clamp so a bad seq_len can never read past the slot's rows.
    seq_len = tl.minimum(tl.load(seq_lens_ptr + b), max_seq)
    slot = tl.load(slots_ptr + b).to(tl.int64)
    lo = split * split_size
    hi = tl.minimum(lo + split_size, seq_len)  # empty when the split starts past seq_len

    offs_h = tl.arange(0, BLOCK_H)
    heads = kvh * GROUP + offs_h  # [BLOCK_H]; rows >= GROUP are padding for tl.dot
    mask_h = offs_h < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    mask_hd = mask_h[:, None] & mask_d[None, :]

    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=mask_hd, other=0.0)
    # Each [BLOCK_N, D] tile of one (slot, kv head) is contiguous: rows stride_kcn apart.
    k_base = k_ptr + slot * stride_kcs + kvh * stride_kch + offs_d[None, :]
    v_base = v_ptr + slot * stride_vcs + kvh * stride_vch + offs_d[None, :]

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)  # running max, log2 domain
    l_i = tl.zeros([BLOCK_H], tl.float32)  # running sum of 2^(s - m_i)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)  # running unnormalized output
    if not INTERPRET:
        # Compiled: loop only over this sequence's tiles.
        for start in range(lo, hi, BLOCK_N):
            m_i, l_i, acc = _attend_tile(q, k_base, v_base, start, hi, stride_kcn, stride_vcn, qk_scale,
                                         m_i, l_i, acc, mask_d, BLOCK_N, DOT_PRECISION, INTERPRET)
    else:
        # Interpreter: Triton 3.6's interpreter fails on runtime loop bounds under numpy >= 2.4
        # (triton#9171), so walk the split's tiles with a constexpr count and skip those past hi.
        for t in range(TILES_PER_SPLIT):
            start = lo + t * BLOCK_N
            if start < hi:
                m_i, l_i, acc = _attend_tile(q, k_base, v_base, start, hi, stride_kcn, stride_vcn, qk_scale,
                                             m_i, l_i, acc, mask_d, BLOCK_N, DOT_PRECISION, INTERPRET)

    if SINGLE:
        out = acc / l_i[:, None]
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 to_dtype(out, out_ptr.dtype.element_ty), mask=mask_hd)
    else:
        row = (b * H + heads) * num_splits + split  # [BLOCK_H] into [B, H, num_splits]
        tl.store(o_part_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=mask_hd)
        tl.store(m_part_ptr + row, m_i, mask=mask_h)
        tl.store(l_part_ptr + row, l_i, mask=mask_h)


@triton.jit
def _reduce_kernel(
    o_part_ptr, m_part_ptr, l_part_ptr, out_ptr, stride_ob, stride_oh, H, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    pdl_enter(USE_PDL)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    row = (b * H + h) * num_splits + offs_s  # [BLOCK_S]
    m = tl.load(m_part_ptr + row, mask=mask_s, other=float("-inf"))
    l = tl.load(l_part_ptr + row, mask=mask_s, other=0.0)
    o = tl.load(o_part_ptr + row[:, None] * HEAD_DIM + offs_d[None, :],
                mask=mask_s[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    # Split 0 always covers position 0 < seq_len, so m_max is finite; empty splits get weight 0.
    m_max = tl.max(m, axis=0)
    w = tl.exp2(m - m_max)
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_d, to_dtype(out, out_ptr.dtype.element_ty), mask=mask_d)


def check_attention(q, k_cache, v_cache, slots, seq_lens, scale, num_splits):
    """decode_attention's argument checks (ValueError), shared with rope_store_attention."""
    if q.dim() != 3:
        raise ValueError(f"decode_attention: q must be [B, H, D], got shape {tuple(q.shape)}")
    B, H, D = q.shape
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape or k_cache.shape[3] != D:
        raise ValueError(
            f"decode_attention: caches must both be [num_slots, Hkv, max_seq, D={D}], "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    Hkv = k_cache.shape[1]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"decode_attention: H={H} must be a multiple of Hkv={Hkv}")
    if not 16 <= D <= 256:
        raise ValueError(f"decode_attention: head dim D={D} out of range; allowed 16..256")
    if q.dtype not in DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(
            f"decode_attention: q/k_cache/v_cache dtypes {q.dtype}/{k_cache.dtype}/{v_cache.dtype}; "
            "all must be one of float32, float16, bfloat16"
        )
    for name, t in (("slots", slots), ("seq_lens", seq_lens)):
        if t.shape != (B,) or t.dtype not in INDEX_DTYPES:
            raise ValueError(f"decode_attention: {name} must be int32/int64 [B]=[{B}], got {tuple(t.shape)} {t.dtype}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("slots", slots), ("seq_lens", seq_lens)):
        if t.device != q.device:
            raise ValueError(f"decode_attention: {name} is on {t.device}, expected {q.device} like q")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.numel() > 0 and t.stride(-1) != 1:
            raise ValueError(f"decode_attention: {name} must be contiguous in its last dim, got strides {t.stride()}")
    if isinstance(scale, torch.Tensor) or not isinstance(scale, numbers.Real):
        raise ValueError(f"decode_attention: scale must be a Python number, not {type(scale).__name__} "
                         "(a tensor would have to be read on the host)")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"decode_attention: num_splits must be None or an int >= 1, got {num_splits!r}")


def output_like(op, q, out):
    """`out` checked against q ([B, H, D], q's dtype and device, last dim contiguous), or a new
    tensor like q."""
    if out is None:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or (out.numel() > 0 and out.stride(-1) != 1):
        raise ValueError(
            f"{op}: out must be [B, H, D]={tuple(q.shape)} {q.dtype} on {q.device} with a contiguous "
            f"last dim, got {tuple(out.shape)} {out.dtype} on {out.device}, strides {out.stride()}")
    return out


def split_partials(B, H, num_splits, D, out):
    """Split-KV workspaces (o [B, H, S, D], m and l [B, H, S], fp32); with one split none are
    touched, and `out` stands in for all three."""
    if num_splits == 1:
        return out, out, out
    kw = dict(dtype=torch.float32, device=out.device)
    return (torch.empty((B, H, num_splits, D), **kw), torch.empty((B, H, num_splits), **kw),
            torch.empty((B, H, num_splits), **kw))


def decode_attention(q, k_cache, v_cache, slots, seq_lens, scale, num_splits=None, out=None,
                     pdl=True, record=None):
    """out[b, h] = Σ_{n < L_b} softmax_n(scale · q[b,h]·K[n]) · V[n], with K = k_cache[slots[b], h // G],
    V = v_cache[slots[b], h // G], L_b = seq_lens[b] ≥ 1, G = H / Hkv.
    q: [B, H, D]; caches: [num_slots, Hkv, max_seq, D]; slots, seq_lens: [B].
    Returns a new contiguous [B, H, D] tensor of q's dtype, or writes into `out` (same shape and
    dtype, last dim contiguous) when given, so a graph can keep the result at a fixed address.
    pdl: launch with programmatic dependent launch where the device has it."""
    check_attention(q, k_cache, v_cache, slots, seq_lens, scale, num_splits)
    check_device("decode_attention", _split_kernel, q)
    B, H, D = q.shape
    Hkv, max_seq = k_cache.shape[1], k_cache.shape[2]
    out = output_like("decode_attention", q, out)
    if B == 0 or H == 0 or max_seq == 0:
        return out
    block_d = triton.next_power_of_2(D)
    block_n = block_n_for(q.device, D, q.dtype)
    n_tiles = triton.cdiv(max_seq, block_n)
    if num_splits is None:
        num_splits = num_splits_for(B, Hkv, max_seq, q.device, D, q.dtype)
    split_size = triton.cdiv(n_tiles, num_splits) * block_n  # whole tiles per split
    group = H // Hkv
    single = num_splits == 1
    pdl = use_pdl(_split_kernel, q, pdl)
    o_part, m_part, l_part = split_partials(B, H, num_splits, D, out)
    launch(record, _split_kernel, (B, Hkv, num_splits),
        q, k_cache, v_cache, slots, seq_lens, out, o_part, m_part, l_part,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        out.stride(0), out.stride(1),
        H, max_seq, split_size, num_splits, float(scale) * LOG2E,
        GROUP=group, HEAD_DIM=D, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        BLOCK_D=block_d, SINGLE=single,
        # fp32 inputs would otherwise go through TF32 (10-bit mantissa) on the GPU.
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        INTERPRET=interpreted(_split_kernel), TILES_PER_SPLIT=split_size // block_n,
        USE_PDL=pdl, num_warps=4, num_stages=CUDA_NUM_STAGES, **pdl_launch_kw(pdl),
    )
    if not single:
        launch(record, _reduce_kernel, (B, H),
            o_part, m_part, l_part, out, out.stride(0), out.stride(1), H, num_splits,
            HEAD_DIM=D, BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d, USE_PDL=pdl,
            num_warps=4, **pdl_launch_kw(pdl),
        )
    return out


def decode_attention_ref(q, k_cache, v_cache, slots, seq_lens, scale, num_splits=None, pdl=True):
    """Reference: p = softmax(scale · q·Kᵀ masked to n < seq_lens[b]), out = p·V, in fp32, cast to
    q.dtype (num_splits and pdl are accepted and ignored).

    Bytes (s = element size, s_i = index size, L = Σ_b seq_lens[b]): reads 2·L·Hkv·D·s (K and V)
    + B·H·D·s + 2·B·s_i, writes B·H·D·s; with num_splits = S > 1 the workspace adds
    B·H·S·(D + 2)·4 written and read back.
    """
    B, H, D = q.shape
    Hkv, max_seq = k_cache.shape[1], k_cache.shape[2]
    valid = torch.arange(max_seq, device=q.device)[None, :] < seq_lens.long()[:, None]  # [B, max_seq]
    # [B, H, max_seq, D]: each query head sees its group's kv head.
    k = k_cache[slots.long()].float().repeat_interleave(H // Hkv, dim=1)
    v = v_cache[slots.long()].float().repeat_interleave(H // Hkv, dim=1)
    v = torch.where(valid[:, None, :, None], v, 0.0)  # rows past seq_len may be garbage
    scores = torch.einsum("bhd,bhnd->bhn", q.float(), k) * scale
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    out = torch.einsum("bhn,bhnd->bhd", torch.softmax(scores, dim=-1), v)
    return out.to(q.dtype)
