"""RoPE, the KV store and decode attention in one kernel, with the split-KV merge inside it:
one launch per attention call of a decode step, in place of rope_store_kv, decode_attention's
split kernel and its reduce kernel. The attention itself is decode_attention's (same tiles, same
online softmax, same split sizes but one tile may be a split), so the helpers come from there."""
import torch
import triton
import triton.language as tl

from ._launch import launch

from ._utils import as_mask, check_device, dot, interpreted, pdl_enter, pdl_launch_kw, to_dtype, use_pdl
from .decode_attention import (CPU_SMS, CUDA_NUM_STAGES, LOG2E, MAX_SPLITS, PROGRAMS_PER_SM, block_n_for,
                               check_attention,
                               choose_num_splits, decode_attention_ref, output_like, sm_count,
                               split_partials)
from .rope import check_rope, rope_store_kv_ref
from .store_kv import check_store_kv


# Keys per K/V tile a launch may be asked for (block_n): tl.dot needs at least 16 rows, and no
# tile beyond 128 keys of 128-wide heads (MAX_TILE values) was ever compiled for a GPU: wider
# heads take proportionally fewer keys.
MIN_BLOCK_N, MAX_BLOCK_N = 16, 128
MAX_TILE = 128 * 128

# Splits a "streaming" launch takes when the (sequence, kv head) programs alone fill the GPU.
# On the H200, at bs 64 with llama-8b's heads (128 wide), two streaming splits per (sequence,
# kv head) moved the KV cache faster than one split with its first tile loaded early, at
# contexts 512 and 4096; with 64-wide heads (llama-1b, opt-125m) they were no faster or slower,
# so narrower heads never stream (docs/bandwidth.md, "Streaming attention at large batch").
STREAM_SPLITS = 2
STREAM_MIN_HEAD_DIM = 128


def capped_splits(batch, num_kv_heads, n_tiles, sms):
    """The split count (whole tiles each, at most MAX_SPLITS) that reaches PROGRAMS_PER_SM
    (sequence, kv head, split) programs per SM with the fewest splits: decode_attention's count
    rounds the tiles per split down, so it can launch more, shorter splits than wanted (five
    one-tile splits where three were wanted); this rounds them up."""
    want = triton.cdiv(PROGRAMS_PER_SM * sms, max(batch * num_kv_heads, 1))
    if want <= 1:
        return 1
    return triton.cdiv(n_tiles, max(triton.cdiv(n_tiles, want), triton.cdiv(n_tiles, MAX_SPLITS)))


def half_tile(device, head_dim, dtype):
    """Keys per K/V tile of the "half-tile" launch (engine/splits.py): half of block_n_for's, at
    least MIN_BLOCK_N. Shorter tiles make more of them over the same cache, so the split rule
    gives more (and shorter) splits: more programs in flight for a one-row step, each with a
    smaller first tile before its PDL wait."""
    return max(block_n_for(device, head_dim, dtype) // 2, MIN_BLOCK_N)


def check_block_n(block_n, head_dim):
    """A block_n argument for heads `head_dim` wide: None (block_n_for's) or a power of two from
    MIN_BLOCK_N to MAX_BLOCK_N and at most MAX_TILE values a tile (ValueError otherwise)."""
    most = min(MAX_BLOCK_N, MAX_TILE // triton.next_power_of_2(head_dim))
    if block_n is not None and (type(block_n) is not int or not MIN_BLOCK_N <= block_n <= most
                                or block_n & (block_n - 1)):
        raise ValueError(f"rope_store_attention: block_n must be None or a power of two from "
                         f"{MIN_BLOCK_N} to {most} (keys per K/V tile of {head_dim}-wide heads), "
                         f"got {block_n!r}")


def fused_plan(batch, num_kv_heads, max_seq, device, head_dim=128, dtype=torch.bfloat16,
               num_splits=None, capped=False, block_n=None):
    """(num_splits, stream): how rope_store_attention launches for these shapes, with K/V tiles
    of `block_n` keys (None: block_n_for's).

    With fewer (sequence, kv head) programs than fill every SM PROGRAMS_PER_SM times, the split
    count is decode_attention's, except that a split may be a single BLOCK_N tile (`capped`:
    capped_splits' count instead, which never exceeds the programs wanted); each split's
    first K and V tiles load before the PDL wait (the splits merge in the kernel, so more of them
    cost no reduce kernel). When the programs alone fill the GPU and the heads are at least
    STREAM_MIN_HEAD_DIM wide, each (sequence, kv head) takes STREAM_SPLITS splits of at least
    two tiles that "stream": nothing loads before the wait, and each tile's V loads after its
    softmax, as in decode_attention. `num_splits` given: that count, streaming under the same
    condition."""
    check_block_n(block_n, head_dim)
    device = torch.device(device)
    if device.type == "cuda":
        sms = sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        sms = CPU_SMS
    bn = block_n or block_n_for(device, head_dim, dtype)
    n_tiles = triton.cdiv(max_seq, bn)
    fills = batch * num_kv_heads >= PROGRAMS_PER_SM * sms and head_dim >= STREAM_MIN_HEAD_DIM
    if num_splits is None:
        if fills and n_tiles >= 2 * STREAM_SPLITS:
            num_splits = STREAM_SPLITS
        elif capped and max_seq >= 2 * bn:
            num_splits = capped_splits(batch, num_kv_heads, n_tiles, sms)
        else:
            num_splits = min(choose_num_splits(batch, num_kv_heads, max_seq, bn, sms, min_tokens=bn),
                             n_tiles)
    return num_splits, bool(fills and triton.cdiv(n_tiles, num_splits) >= 2)


@triton.jit
def _rotary(x, xp, cos, sin, offs_d, HALF: tl.constexpr):
    """NeoX rotation of x (fp32, last dim D) given its partner xp[d] = x[(d + D/2) mod D]:
    x1·cos − x2·sin in the first half, x2·cos + x1·sin in the second."""
    return x * cos + tl.where(offs_d < HALF, -xp, xp) * sin


@triton.jit
def _attend_kv(q, k, v, n, mask_n, pos, k_new, v_new, qk_scale, m_i, l_i, acc,
               DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """decode_attention's online-softmax step on loaded K and V tiles, with the new token's row
    (n == pos) taken from registers (k_new, v_new) rather than from the cache."""
    new = (n == pos)[:, None]
    k = tl.where(new, k_new[None, :], k)
    v = tl.where(new, v_new[None, :], v)
    s = dot(q, tl.trans(k), DOT_PRECISION, INTERPRET) * qk_scale  # [BLOCK_H, BLOCK_N]
    s = tl.where(mask_n[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + dot(to_dtype(p, v.dtype), v, DOT_PRECISION, INTERPRET)
    return m_new, l_i, acc


@triton.jit
def _attend_streamed(q, k_base, v_base, n, mask_n, mask_d, stride_cn, pos, k_new, v_new, qk_scale,
                     m_i, l_i, acc, DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """_attend_kv on a tile it loads itself, as decode_attention's loop does: K, the softmax,
    then V. (Its own copy of the softmax step: built from pieces shared with _attend_kv, it
    changed the other loop's compiled code, which then ran slower on the H200.)"""
    m = mask_n[:, None] & mask_d[None, :]
    k = tl.load(k_base + n[:, None] * stride_cn, mask=m, other=0.0, eviction_policy="evict_first")
    new = (n == pos)[:, None]
    k = tl.where(new, k_new[None, :], k)
    s = dot(q, tl.trans(k), DOT_PRECISION, INTERPRET) * qk_scale
    s = tl.where(mask_n[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_base + n[:, None] * stride_cn, mask=m, other=0.0, eviction_policy="evict_first")
    v = tl.where(new, v_new[None, :], v)
    acc = acc * alpha[:, None] + dot(to_dtype(p, v.dtype), v, DOT_PRECISION, INTERPRET)
    return m_new, l_i, acc


@triton.jit
def _load_kv(k_base, v_base, n, mask_n, mask_d, stride_cn):
    m = mask_n[:, None] & mask_d[None, :]
    k = tl.load(k_base + n[:, None] * stride_cn, mask=m, other=0.0, eviction_policy="evict_first")
    v = tl.load(v_base + n[:, None] * stride_cn, mask=m, other=0.0, eviction_policy="evict_first")
    return k, v


@triton.jit
def _rope_attend_kernel(
    q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, slots_ptr, seq_lens_ptr, out_ptr,
    o_part_ptr, m_part_ptr, l_part_ptr, sem_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
    stride_cs, stride_ch, stride_cn, stride_ob, stride_oh,
    H, HKV, max_seq, split_size, num_splits, qk_scale, theta,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, S_CHUNK: tl.constexpr,
    SINGLE: tl.constexpr, DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
    TILES_PER_SPLIT: tl.constexpr, STREAM: tl.constexpr, USE_PDL: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    # Before the PDL wait, everything that does not depend on the kernel before: the step's
    # inputs (slots, seq_lens: written before the step), RoPE's cos and sin at the new token's
    # position, and (unless STREAM) this split's first K and V tiles of history. No kernel of
    # the step writes the cache rows before the new token's, and that row (n == pos) is taken
    # from registers, never from the cache. (With one tile per split, as the wrapper picks on
    # the GPU at small batch, only the QKV row, the arithmetic and the merge are left after the
    # wait.)
    seq_len = tl.minimum(tl.load(seq_lens_ptr + b), max_seq)
    pos = seq_len - 1                                  # the new token's position
    slot = tl.load(slots_ptr + b).to(tl.int64)
    lo = split * split_size
    hi = tl.minimum(lo + split_size, seq_len)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    k_base = kc_ptr + slot * stride_cs + kvh * stride_ch + offs_d[None, :]
    v_base = vc_ptr + slot * stride_cs + kvh * stride_ch + offs_d[None, :]
    n0 = lo + tl.arange(0, BLOCK_N)
    mask0 = n0 < hi
    if not STREAM:
        k0, v0 = _load_kv(k_base, v_base, n0, mask0, mask_d, stride_cn)
    # RoPE at pos, as the rope kernel computes it: inv_freq[i] = theta^(-i/HALF) in fp64,
    # rounded to fp32; angle = pos · inv_freq[d mod HALF]
    part = tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF)   # each lane's partner
    log2_step = -tl.log2(tl.full([1], theta, tl.float64)) / HALF
    inv_freq = tl.exp2((offs_d % HALF).to(tl.float64) * log2_step).to(tl.float32)
    angle = pos.to(tl.float32) * inv_freq
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    pdl_enter(USE_PDL)

    offs_h = tl.arange(0, BLOCK_H)
    heads = kvh * GROUP + offs_h
    mask_h = offs_h < GROUP
    mask_hd = mask_h[:, None] & mask_d[None, :]
    qrow = q_ptr + b * stride_qb + heads[:, None] * stride_qh
    krow = k_ptr + b * stride_kb + kvh * stride_kh
    qa = tl.load(qrow + offs_d[None, :], mask=mask_hd, other=0.0).to(tl.float32)
    qp = tl.load(qrow + part[None, :], mask=mask_hd, other=0.0).to(tl.float32)
    ka = tl.load(krow + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    kp = tl.load(krow + part, mask=mask_d, other=0.0).to(tl.float32)
    v_new = tl.load(v_ptr + b * stride_vb + kvh * stride_vh + offs_d, mask=mask_d, other=0.0)
    # q rounded to its dtype after the rotation, as the unfused step stores it
    q = to_dtype(_rotary(qa, qp, cos[None, :], sin[None, :], offs_d[None, :], HALF),
                 q_ptr.dtype.element_ty)
    k_new = to_dtype(_rotary(ka, kp, cos, sin, offs_d, HALF), kc_ptr.dtype.element_ty)
    if split == 0:  # one program per (sequence, kv head) stores the new K and V
        cache_row = slot * stride_cs + kvh * stride_ch + pos.to(tl.int64) * stride_cn + offs_d
        keep = mask_d & as_mask(pos >= 0)
        tl.store(kc_ptr + cache_row, k_new, mask=keep)
        tl.store(vc_ptr + cache_row, v_new, mask=keep)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    if STREAM:  # every tile in the loop (split 0's column 0 is valid: m stays finite)
        if not INTERPRET:
            for start in range(lo, hi, BLOCK_N):
                n = start + tl.arange(0, BLOCK_N)
                m_i, l_i, acc = _attend_streamed(q, k_base, v_base, n, n < hi, mask_d, stride_cn,
                                                 pos, k_new, v_new, qk_scale, m_i, l_i, acc,
                                                 DOT_PRECISION, INTERPRET)
        else:
            for t in range(TILES_PER_SPLIT):
                start = lo + t * BLOCK_N
                if start < hi:
                    n = start + tl.arange(0, BLOCK_N)
                    m_i, l_i, acc = _attend_streamed(q, k_base, v_base, n, n < hi, mask_d,
                                                     stride_cn, pos, k_new, v_new, qk_scale, m_i,
                                                     l_i, acc, DOT_PRECISION, INTERPRET)
    else:
        if lo < hi:  # column lo is valid: m stays finite
            m_i, l_i, acc = _attend_kv(q, k0, v0, n0, mask0, pos, k_new, v_new, qk_scale, m_i, l_i, acc,
                                       DOT_PRECISION, INTERPRET)
        if not INTERPRET:
            for start in range(lo + BLOCK_N, hi, BLOCK_N):
                n = start + tl.arange(0, BLOCK_N)
                mask_n = n < hi
                k, v = _load_kv(k_base, v_base, n, mask_n, mask_d, stride_cn)
                m_i, l_i, acc = _attend_kv(q, k, v, n, mask_n, pos, k_new, v_new, qk_scale, m_i, l_i, acc,
                                           DOT_PRECISION, INTERPRET)
        else:  # constexpr trip count under the interpreter (triton#9171)
            for t in range(1, TILES_PER_SPLIT):
                start = lo + t * BLOCK_N
                if start < hi:
                    n = start + tl.arange(0, BLOCK_N)
                    mask_n = n < hi
                    k, v = _load_kv(k_base, v_base, n, mask_n, mask_d, stride_cn)
                    m_i, l_i, acc = _attend_kv(q, k, v, n, mask_n, pos, k_new, v_new, qk_scale, m_i, l_i,
                                               acc, DOT_PRECISION, INTERPRET)

    out_rows = out_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
    if SINGLE:
        tl.store(out_rows, to_dtype(acc / l_i[:, None], out_ptr.dtype.element_ty), mask=mask_hd)
    else:
        row = (b * H + heads) * num_splits + split
        tl.store(o_part_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=mask_hd)
        tl.store(m_part_ptr + row, m_i, mask=mask_h)
        tl.store(l_part_ptr + row, l_i, mask=mask_h)
        # The last of this (sequence, kv head)'s splits to finish merges them: every thread's
        # partials are stored (barrier) before the counter's release-acquire increment.
        tl.debug_barrier()
        counter = sem_ptr + b * HKV + kvh
        done = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if done == num_splits - 1:
            tl.debug_barrier()
            base = (b * H + heads) * num_splits                      # [BLOCK_H]
            offs_s = tl.arange(0, BLOCK_S)
            mask_hs = mask_h[:, None] & (offs_s < num_splits)[None, :]
            # .cg: the partials come from other SMs; read them from L2, never a stale L1 line
            m = tl.load(m_part_ptr + base[:, None] + offs_s[None, :], mask=mask_hs,
                        other=float("-inf"), cache_modifier=".cg")
            m_max = tl.where(mask_h, tl.max(m, axis=1), 0.0)          # split 0 is never empty
            num = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            den = tl.zeros([BLOCK_H], tl.float32)
            # S_CHUNK splits' partials per load: [BLOCK_H, S_CHUNK, BLOCK_D] in flight at once
            for c in tl.static_range(0, BLOCK_S, S_CHUNK):
                offs_c = c + tl.arange(0, S_CHUNK)
                mask_c = mask_h[:, None] & (offs_c < num_splits)[None, :]   # [BLOCK_H, S_CHUNK]
                idx = base[:, None] + offs_c[None, :]
                w = tl.exp2(tl.load(m_part_ptr + idx, mask=mask_c, other=float("-inf"),
                                    cache_modifier=".cg") - m_max[:, None])
                den += tl.sum(w * tl.load(l_part_ptr + idx, mask=mask_c, other=0.0,
                                          cache_modifier=".cg"), axis=1)
                o = tl.load(o_part_ptr + idx[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                            mask=mask_c[:, :, None] & mask_d[None, None, :], other=0.0,
                            cache_modifier=".cg")
                num += tl.sum(o * w[:, :, None], axis=1)
            den = tl.where(mask_h, den, 1.0)                          # padding heads: 0/0
            tl.store(out_rows, to_dtype(num / den[:, None], out_ptr.dtype.element_ty), mask=mask_hd)
            tl.store(counter, 0)   # ready for the next call: every split of this launch has counted


def rope_store_attention(q, k, v, k_cache, v_cache, slots, seq_lens, scale, theta=10000.0,
                         num_splits=None, out=None, semaphores=None, pdl=True, record=None,
                         capped=False, block_n=None):
    """RoPE, the KV store and decode attention in one kernel, for one new token per sequence at
    position seq_lens[b] − 1: q and k are rotated there (q is left as it was, k rotated on its
    way into k_cache[slots[b], :, seq_lens[b] − 1], v copied into v_cache), and
    out[b, h] = attention of the rotated q over the cache's first seq_lens[b] rows, the new
    token's K and V taken from registers. Split-KV partials are merged by the last split of each
    (sequence, kv head) to finish, so there is no reduce kernel.

    q: [B, H, D]; k, v: [B, Hkv, D] (views of a fused QKV row are fine); caches
    [num_slots, Hkv, max_seq, D] with equal strides; slots, seq_lens: [B] (seq_lens >= 1).
    semaphores: an int32 tensor of at least B·Hkv zeros that the kernel leaves zeroed (a
    decoder keeps one, so a captured graph holds no memset); None allocates one per call.
    pdl: launch with programmatic dependent launch where the device has it.
    capped: with num_splits None, fused_plan's capped split count (a decoder's measured choice,
    engine/splits.py).
    block_n: keys per K/V tile (a power of two, 16 to 128, fewer for heads over 128 wide; None:
    block_n_for's); the split count follows it (half_tile's, for a decoder's measured
    "half-tile" choice).
    Returns out (a new [B, H, D] tensor, or `out` when given)."""
    check_attention(q, k_cache, v_cache, slots, seq_lens, scale, num_splits)
    check_rope(q, k, seq_lens)
    check_store_kv(k_cache, v_cache, k, v, slots, seq_lens)
    if k_cache.stride() != v_cache.stride():
        raise ValueError(f"rope_store_attention: k_cache and v_cache must share strides, got "
                         f"{k_cache.stride()} and {v_cache.stride()}")
    check_block_n(block_n, q.shape[-1])
    check_device("rope_store_attention", _rope_attend_kernel, q)
    B, H, D = q.shape
    Hkv, max_seq = k_cache.shape[1], k_cache.shape[2]
    out = output_like("rope_store_attention", q, out)
    if B == 0 or max_seq == 0:
        return out
    if semaphores is None:
        semaphores = torch.zeros(B * Hkv, dtype=torch.int32, device=q.device)
    elif semaphores.dtype != torch.int32 or semaphores.numel() < B * Hkv or semaphores.device != q.device:
        raise ValueError(f"rope_store_attention: semaphores must be int32 with at least B·Hkv={B * Hkv} "
                         f"elements on {q.device}, got {semaphores.dtype} [{semaphores.numel()}] on "
                         f"{semaphores.device}")
    block_d = triton.next_power_of_2(D)
    block_n = block_n or block_n_for(q.device, D, q.dtype)
    n_tiles = triton.cdiv(max_seq, block_n)
    num_splits, stream = fused_plan(B, Hkv, max_seq, q.device, D, q.dtype, num_splits, capped,
                                    block_n)
    split_size = triton.cdiv(n_tiles, num_splits) * block_n
    single = num_splits == 1
    o_part, m_part, l_part = split_partials(B, H, num_splits, D, out)
    group = H // Hkv
    block_s = triton.next_power_of_2(num_splits)
    pdl = use_pdl(_rope_attend_kernel, q, pdl)
    launch(record, _rope_attend_kernel, (B, Hkv, num_splits),
        q, k, v, k_cache, v_cache, slots, seq_lens, out, o_part, m_part, l_part, semaphores,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *k_cache.stride()[:3], out.stride(0), out.stride(1),
        H, Hkv, max_seq, split_size, num_splits, float(scale) * LOG2E, float(theta),
        GROUP=group, HEAD_DIM=D, HALF=D // 2, BLOCK_H=max(16, triton.next_power_of_2(group)),
        BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_S=block_s, S_CHUNK=min(block_s, 8), SINGLE=single,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        INTERPRET=interpreted(_rope_attend_kernel), TILES_PER_SPLIT=split_size // block_n,
        STREAM=int(stream), USE_PDL=pdl, num_warps=4, num_stages=CUDA_NUM_STAGES,
        **pdl_launch_kw(pdl),
    )
    return out


def rope_store_attention_ref(q, k, v, k_cache, v_cache, slots, seq_lens, scale, theta=10000.0,
                             num_splits=None, out=None, semaphores=None, pdl=True, capped=False,
                             block_n=None):
    """Reference: rope_store_kv_ref at positions seq_lens − 1 (writes the caches), then
    decode_attention_ref with the rotated q. Bytes: rope_store_kv_ref's plus
    decode_attention_ref's, less the new K and V read back (they stay in registers)."""
    q2 = rope_store_kv_ref(q, k, v, k_cache, v_cache, slots, seq_lens.long() - 1, theta)
    res = decode_attention_ref(q2, k_cache, v_cache, slots, seq_lens, scale)
    return res if out is None else out.copy_(res)

