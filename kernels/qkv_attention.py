"""The one-row QKV matmul and the fused attention in one launch: no kernel boundary between
them, so a kv head's attention starts as soon as its own QKV columns are written, while the
matmul still streams the other heads' weights.

One launch, two kinds of program on a 1-D grid. A *matmul* program computes BLOCK_NW columns
of rmsnorm(h) · Wqkvᵀ as gemv's CUDA-core path does (DOT=0, with or without DEFER), stores
them, and counts itself done in its kv head's `ready` counter. Its columns all belong to one kv
head g: its query heads' columns, then its K and its V columns, so a head's columns are
finished by consecutive programs, in head order. An *attention* program does one split of
rope_store_attention's work for head g (its first K and V tile loaded before anything waits),
waits until head g's counter has every matmul program of that head, then reads the QKV row and
goes on as rope_store_attention does, splits merged by the last to finish.

Each program takes a ticket from a counter when it starts, and the ticket, not its program id,
gives its role, in the order: head 0's matmul programs, head 1's, head 0's attention programs,
head 2's, head 1's, ... head Hkv-1's attention programs last. So every attention program
started after the matmul programs it waits for, whatever order the GPU starts programs in, and
a waiting program never holds a slot that one it waits for still needs; under the CPU
interpreter, which runs programs one after another, nothing waits at all.

One row only (a decode step at batch 1); wider rows take rmsnorm_linear and
rope_store_attention. The counters are left at zero for the next call, by the split that
merges each head's partials.
"""
import torch
import triton
import triton.language as tl

from ._launch import launch
from ._utils import check_device, interpreted, pdl_enter, pdl_launch_kw, to_dtype, use_pdl
from . import gemv, gemv_mma
from .decode_attention import CUDA_NUM_STAGES, LOG2E, block_n_for, check_attention, split_partials
from .gemv_configs import DEFAULTS
from .rope import check_rope
from .rope_store_attention import _attend_kv, _load_kv, _rotary, fused_plan, rope_store_attention_ref


@triton.jit
def _qkv_columns(w_ptr, h_ptr, nw_ptr, qkv_ptr, col0, stride_wn, stride_hb, stride_qkvb, eps,
                 B: tl.constexpr, K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_NW: tl.constexpr,
                 BLOCK_K: tl.constexpr, STAGES: tl.constexpr, DEFER: tl.constexpr,
                 USE_PDL: tl.constexpr):
    """gemv's CUDA-core skinny matmul with the norm in its prologue, for the BLOCK_NW columns
    from col0: its first weight chunk before the PDL wait, then the rest."""
    BK: tl.constexpr = BLOCK_K
    offs_n = col0 + tl.arange(0, BLOCK_NW)
    offs_b = tl.arange(0, BLOCK_B)
    mask_n = offs_n >= 0
    mask_b = offs_b < B
    w_rows = w_ptr + offs_n[:, None] * stride_wn
    offs_k = tl.arange(0, BK)
    w, w2 = gemv_mma.load_w(w_rows, w_rows, offs_k, mask_n, K, 0)
    pdl_enter(USE_PDL)
    if DEFER:
        acc3 = tl.zeros([BLOCK_B, BLOCK_NW, BK], tl.float32)
        ssv = tl.zeros([BLOCK_B, BK], tl.float32)
        acc3, unused, ssv = gemv._part(acc3, acc3, ssv, w, w2, h_ptr, nw_ptr, offs_b, offs_k,
                                       stride_hb, mask_b, K, 1, 0)
        for k0 in tl.range(BK, K, BK, num_stages=1, loop_unroll_factor=DEFER):
            offs_k = k0 + tl.arange(0, BK)
            w, w2 = gemv_mma.load_w(w_rows, w_rows, offs_k, mask_n, K, 0)
            acc3, unused, ssv = gemv._part(acc3, acc3, ssv, w, w2, h_ptr, nw_ptr, offs_b,
                                           offs_k, stride_hb, mask_b, K, 1, 0)
        acc = tl.sum(acc3, axis=2)
        ss = tl.sum(ssv, axis=1)
    else:
        acc = tl.zeros([BLOCK_B, BLOCK_NW], tl.float32)
        ss = tl.zeros([BLOCK_B], tl.float32)
        acc, unused, ss = gemv._chunk(acc, acc, ss, w, w2, h_ptr, nw_ptr, offs_b, offs_k,
                                      stride_hb, mask_b, K, 1, 0, 0, "ieee", 0)
        for k0 in tl.range(BK, K, BK, num_stages=STAGES):
            offs_k = k0 + tl.arange(0, BK)
            w, w2 = gemv_mma.load_w(w_rows, w_rows, offs_k, mask_n, K, 0)
            acc, unused, ss = gemv._chunk(acc, acc, ss, w, w2, h_ptr, nw_ptr, offs_b, offs_k,
                                          stride_hb, mask_b, K, 1, 0, 0, "ieee", 0)
    acc = acc * tl.rsqrt(ss / K + eps)[:, None]
    tl.store(qkv_ptr + offs_b[:, None] * stride_qkvb + offs_n[None, :],
             to_dtype(acc, qkv_ptr.dtype.element_ty), mask=mask_b[:, None] & mask_n[None, :])


@triton.jit
def _qkv_attend_kernel(
    h_ptr, nw_ptr, w_ptr, qkv_ptr, kc_ptr, vc_ptr, slots_ptr, seq_lens_ptr, out_ptr,
    o_part_ptr, m_part_ptr, l_part_ptr, sem_ptr, ready_ptr, ticket_ptr,
    stride_hb, stride_wn, stride_qkvb, stride_cs, stride_ch, stride_cn, stride_oh,
    eps, max_seq, split_size, qk_scale, theta,
    K: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_NW: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, DEFER: tl.constexpr, NUM_SPLITS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    S_CHUNK: tl.constexpr, DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
    TILES_PER_SPLIT: tl.constexpr, USE_PDL: tl.constexpr, MAX_POLLS: tl.constexpr = 1 << 24,
    TICKET: tl.constexpr = 1,
):
    # P matmul programs per kv head (its query heads' columns, then K's, then V's), NUM_SPLITS
    # attention programs per kv head; the grid: M(0), M(1), A(0), M(2), A(1), ..., A(HKV-1)
    QB: tl.constexpr = GROUP * HEAD_DIM // BLOCK_NW
    KB: tl.constexpr = HEAD_DIM // BLOCK_NW
    P: tl.constexpr = QB + 2 * KB
    # Roles go by arrival, not by program id: a ticket from a counter, so a program that waits
    # came after every program it waits for, whatever order the GPU starts them in. The last
    # ticket resets the counter (each layer has its own: the next layer's programs take theirs
    # before their PDL wait, while this launch may still run).
    if TICKET:
        pid = tl.atomic_add(ticket_ptr, 1, sem="relaxed", scope="gpu")
        if pid == HKV * (P + NUM_SPLITS) - 1:
            tl.store(ticket_ptr, 0)
    else:   # by program id: relies on the GPU starting programs in id order
        pid = tl.program_id(0)
    first = pid < P
    t = tl.maximum(pid - P, 0)
    unit = t // (P + NUM_SPLITS)
    r = t % (P + NUM_SPLITS)
    last = unit >= HKV - 1        # the final unit holds A(HKV-1) only
    is_mm = first | (~last & (r < P))
    g = tl.where(first, 0, tl.where(last, HKV - 1, tl.where(r < P, unit + 1, unit)))
    r = tl.where(first, pid, tl.where(last | (r < P), r, r - P))
    if is_mm:
        col0 = tl.where(r < QB, g * GROUP * HEAD_DIM + r * BLOCK_NW,
                        tl.where(r < QB + KB, H * HEAD_DIM + g * HEAD_DIM + (r - QB) * BLOCK_NW,
                                 (H + HKV) * HEAD_DIM + g * HEAD_DIM + (r - QB - KB) * BLOCK_NW))
        _qkv_columns(w_ptr, h_ptr, nw_ptr, qkv_ptr, col0, stride_wn, stride_hb, stride_qkvb, eps,
                     1, K, 1, BLOCK_NW, BLOCK_K, STAGES, DEFER, USE_PDL)
        # every thread's columns stored (barrier) before the release that counts them
        tl.debug_barrier()
        tl.atomic_add(ready_ptr + g, 1, sem="release", scope="gpu")
    else:
        split = r
        # before anything waits: the step's inputs, RoPE's angle, this split's first K and V
        # tile (rope_store_attention's reasoning: no kernel of the step writes these rows)
        seq_len = tl.minimum(tl.load(seq_lens_ptr), max_seq)
        pos = seq_len - 1
        slot = tl.load(slots_ptr).to(tl.int64)
        lo = split * split_size
        hi = tl.minimum(lo + split_size, seq_len)
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        k_base = kc_ptr + slot * stride_cs + g * stride_ch + offs_d[None, :]
        v_base = vc_ptr + slot * stride_cs + g * stride_ch + offs_d[None, :]
        n0 = lo + tl.arange(0, BLOCK_N)
        mask0 = n0 < hi
        k0, v0 = _load_kv(k_base, v_base, n0, mask0, mask_d, stride_cn)
        part = tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF)
        log2_step = -tl.log2(tl.full([1], theta, tl.float64)) / HALF
        inv_freq = tl.exp2((offs_d % HALF).to(tl.float64) * log2_step).to(tl.float32)
        angle = pos.to(tl.float32) * inv_freq
        cos = tl.cos(angle)
        sin = tl.sin(angle)
        pdl_enter(USE_PDL)
        # head g's QKV columns: wait until its P matmul programs have counted themselves
        # (bounded: a counting error reads as a wrong result in the tests, never as a hang)
        n_ready = tl.atomic_add(ready_ptr + g, 0, sem="acquire", scope="gpu")
        polls = 0
        while (n_ready < P) & (polls < MAX_POLLS):
            n_ready = tl.atomic_add(ready_ptr + g, 0, sem="acquire", scope="gpu")
            polls += 1
        tl.debug_barrier()

        offs_h = tl.arange(0, BLOCK_H)
        heads = g * GROUP + offs_h
        mask_h = offs_h < GROUP
        mask_hd = mask_h[:, None] & mask_d[None, :]
        # .cg: the row was written by other programs of this launch; read it from L2
        qrow = qkv_ptr + heads[:, None] * HEAD_DIM
        krow = qkv_ptr + H * HEAD_DIM + g * HEAD_DIM
        vrow = qkv_ptr + (H + HKV) * HEAD_DIM + g * HEAD_DIM
        qa = tl.load(qrow + offs_d[None, :], mask=mask_hd, other=0.0, cache_modifier=".cg").to(tl.float32)
        qp = tl.load(qrow + part[None, :], mask=mask_hd, other=0.0, cache_modifier=".cg").to(tl.float32)
        ka = tl.load(krow + offs_d, mask=mask_d, other=0.0, cache_modifier=".cg").to(tl.float32)
        kp = tl.load(krow + part, mask=mask_d, other=0.0, cache_modifier=".cg").to(tl.float32)
        v_new = tl.load(vrow + offs_d, mask=mask_d, other=0.0, cache_modifier=".cg")
        q = to_dtype(_rotary(qa, qp, cos[None, :], sin[None, :], offs_d[None, :], HALF),
                     qkv_ptr.dtype.element_ty)
        k_new = to_dtype(_rotary(ka, kp, cos, sin, offs_d, HALF), kc_ptr.dtype.element_ty)
        if split == 0:
            cache_row = slot * stride_cs + g * stride_ch + pos.to(tl.int64) * stride_cn + offs_d
            tl.store(kc_ptr + cache_row, k_new, mask=mask_d)
            tl.store(vc_ptr + cache_row, v_new, mask=mask_d)

        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        if lo < hi:
            m_i, l_i, acc = _attend_kv(q, k0, v0, n0, mask0, pos, k_new, v_new, qk_scale, m_i,
                                       l_i, acc, DOT_PRECISION, INTERPRET)
        for t2 in range(1, TILES_PER_SPLIT):
            start = lo + t2 * BLOCK_N
            if start < hi:
                n = start + tl.arange(0, BLOCK_N)
                mask_n = n < hi
                k, v = _load_kv(k_base, v_base, n, mask_n, mask_d, stride_cn)
                m_i, l_i, acc = _attend_kv(q, k, v, n, mask_n, pos, k_new, v_new, qk_scale, m_i,
                                           l_i, acc, DOT_PRECISION, INTERPRET)

        out_rows = out_ptr + heads[:, None] * stride_oh + offs_d[None, :]
        if NUM_SPLITS == 1:
            tl.store(out_rows, to_dtype(acc / l_i[:, None], out_ptr.dtype.element_ty), mask=mask_hd)
            tl.store(ready_ptr + g, 0)   # the only program that waited on it has
        else:
            row = heads * NUM_SPLITS + split
            tl.store(o_part_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=mask_hd)
            tl.store(m_part_ptr + row, m_i, mask=mask_h)
            tl.store(l_part_ptr + row, l_i, mask=mask_h)
            tl.debug_barrier()
            done = tl.atomic_add(sem_ptr + g, 1, sem="acq_rel", scope="gpu")
            if done == NUM_SPLITS - 1:
                tl.debug_barrier()
                base = heads * NUM_SPLITS
                m_max = tl.full([BLOCK_H], float("-inf"), tl.float32)
                offs_s = tl.arange(0, BLOCK_S)
                mask_hs = mask_h[:, None] & (offs_s < NUM_SPLITS)[None, :]
                m = tl.load(m_part_ptr + base[:, None] + offs_s[None, :], mask=mask_hs,
                            other=float("-inf"), cache_modifier=".cg")
                m_max = tl.where(mask_h, tl.max(m, axis=1), 0.0)
                num = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
                den = tl.zeros([BLOCK_H], tl.float32)
                for c in tl.static_range(0, BLOCK_S, S_CHUNK):
                    offs_c = c + tl.arange(0, S_CHUNK)
                    mask_c = mask_h[:, None] & (offs_c < NUM_SPLITS)[None, :]
                    idx = base[:, None] + offs_c[None, :]
                    w = tl.exp2(tl.load(m_part_ptr + idx, mask=mask_c, other=float("-inf"),
                                        cache_modifier=".cg") - m_max[:, None])
                    den += tl.sum(w * tl.load(l_part_ptr + idx, mask=mask_c, other=0.0,
                                              cache_modifier=".cg"), axis=1)
                    o = tl.load(o_part_ptr + idx[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                                mask=mask_c[:, :, None] & mask_d[None, None, :], other=0.0,
                                cache_modifier=".cg")
                    num += tl.sum(o * w[:, :, None], axis=1)
                den = tl.where(mask_h, den, 1.0)
                tl.store(out_rows, to_dtype(num / den[:, None], out_ptr.dtype.element_ty),
                         mask=mask_hd)
                # every split of this head has passed its wait and counted: both counters free
                tl.store(sem_ptr + g, 0)
                tl.store(ready_ptr + g, 0)


def semaphore_count(n_kv_heads: int) -> int:
    """The int32 counters one call takes: a merge counter and a ready counter per kv head, and
    the ticket counter."""
    return 2 * n_kv_heads + 1


def qkv_config(h, w_qkv, config=None) -> dict:
    """The matmul half's launch parameters: gemv's tuned one-row QKV entry (or `config`), which
    must be a CUDA-core tile (DOT=0, AHEAD=0) whose columns divide the head dim."""
    cfg = {**DEFAULTS, **(config if config is not None else gemv.choose_config(h, w_qkv, True, 0))}
    return cfg


def rmsnorm_qkv_attention(h, norm_w, eps, w_qkv, n_heads, k_cache, v_cache, slots, seq_lens,
                          scale, theta=10000.0, num_splits=None, qkv=None, out=None,
                          semaphores=None, config=None, pdl=True, record=None, capped=False,
                          ticket=True, merge_chunk=8, num_warps=None):
    """qkv = rmsnorm(h, norm_w, eps) · w_qkvᵀ for one row, then rope_store_attention on it, in
    one launch. h: [1, K]; w_qkv: [(n_heads + 2·Hkv)·D, K] (Hkv and D from the caches).
    semaphores: int32 zeros, at least semaphore_count(Hkv), left zeroed (None: allocated per
    call); launches that may overlap (consecutive layers under PDL) need their own.
    Returns (qkv [1, (n_heads + 2Hkv)·D], out [1, n_heads, D])."""
    if h.dim() != 2 or h.shape[0] != 1:
        raise ValueError(f"rmsnorm_qkv_attention: h must be one row [1, K], got {tuple(h.shape)}")
    Hkv, max_seq, D = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    H = n_heads
    if H % Hkv:
        raise ValueError(f"rmsnorm_qkv_attention: {H} heads do not share {Hkv} kv heads evenly")
    gemv._check("rmsnorm_qkv_attention", h, w_qkv, h.shape[1])
    gemv._check_norm("rmsnorm_qkv_attention", norm_w, h)
    if w_qkv.shape[0] != (H + 2 * Hkv) * D:
        raise ValueError(f"rmsnorm_qkv_attention: w_qkv must have (H + 2Hkv)·D = "
                         f"{(H + 2 * Hkv) * D} rows, got {w_qkv.shape[0]}")
    cfg = qkv_config(h, w_qkv, config)
    if cfg["DOT"] or cfg["AHEAD"] or D % cfg["BLOCK_N"]:
        raise ValueError(f"rmsnorm_qkv_attention: the matmul takes a CUDA-core tile (DOT=0, "
                         f"AHEAD=0) whose BLOCK_N divides the head dim {D}, got {cfg}")
    if qkv is None:
        qkv = torch.empty((1, w_qkv.shape[0]), dtype=h.dtype, device=h.device)
    q, k, v = (t.view(1, -1, D) for t in qkv.split([H * D, Hkv * D, Hkv * D], dim=1))
    check_attention(q, k_cache, v_cache, slots, seq_lens, scale, num_splits)
    check_rope(q, k, seq_lens)
    check_device("rmsnorm_qkv_attention", _qkv_attend_kernel, h)
    if out is None:
        out = torch.empty((1, H, D), dtype=h.dtype, device=h.device)
    if semaphores is None:
        semaphores = torch.zeros(semaphore_count(Hkv), dtype=torch.int32, device=h.device)
    elif (semaphores.dtype != torch.int32 or semaphores.numel() < semaphore_count(Hkv)
          or semaphores.device != h.device):
        raise ValueError(f"rmsnorm_qkv_attention: semaphores must be int32 with at least "
                         f"{semaphore_count(Hkv)} elements on {h.device}, got {semaphores.dtype} "
                         f"[{semaphores.numel()}] on {semaphores.device}")
    block_n = block_n_for(h.device, D, h.dtype)
    n_tiles = triton.cdiv(max_seq, block_n)
    num_splits, stream = fused_plan(1, Hkv, max_seq, h.device, D, h.dtype, num_splits, capped)
    split_size = triton.cdiv(n_tiles, num_splits) * block_n
    o_part, m_part, l_part = split_partials(1, H, num_splits, D, out)
    P = (H // Hkv + 2) * D // cfg["BLOCK_N"]
    pdl = use_pdl(_qkv_attend_kernel, h, pdl)
    block_s = triton.next_power_of_2(num_splits)
    launch(record, _qkv_attend_kernel, (Hkv * (P + num_splits),),
        h, norm_w, w_qkv, qkv, k_cache, v_cache, slots, seq_lens, out, o_part, m_part, l_part,
        semaphores[:Hkv], semaphores[Hkv:2 * Hkv], semaphores[2 * Hkv:],
        h.stride(0), w_qkv.stride(0), qkv.stride(0), *k_cache.stride()[:3], out.stride(1),
        float(eps), max_seq, split_size, float(scale) * LOG2E, float(theta),
        K=h.shape[1], H=H, HKV=Hkv, GROUP=H // Hkv, HEAD_DIM=D, HALF=D // 2,
        BLOCK_NW=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["STAGES"], DEFER=cfg["DEFER"],
        NUM_SPLITS=num_splits, BLOCK_H=max(16, triton.next_power_of_2(H // Hkv)),
        BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(D), BLOCK_S=block_s,
        S_CHUNK=min(block_s, merge_chunk), DOT_PRECISION="ieee" if h.dtype == torch.float32 else "tf32",
        INTERPRET=interpreted(_qkv_attend_kernel), TILES_PER_SPLIT=split_size // block_n,
        USE_PDL=pdl, TICKET=int(ticket), num_warps=num_warps or cfg["num_warps"], num_stages=CUDA_NUM_STAGES,
        **pdl_launch_kw(pdl),
    )
    return qkv, out


def rmsnorm_qkv_attention_ref(h, norm_w, eps, w_qkv, n_heads, k_cache, v_cache, slots, seq_lens,
                              scale, theta=10000.0, **_):
    """Reference: gemv.rmsnorm_linear_ref, then rope_store_attention_ref on its row (writes the
    caches). Returns (qkv, out)."""
    Hkv, D = k_cache.shape[1], k_cache.shape[3]
    qkv = gemv.rmsnorm_linear_ref(h, norm_w, eps, w_qkv)
    q, k, v = (t.reshape(h.shape[0], -1, D)
               for t in qkv.split([n_heads * D, Hkv * D, Hkv * D], dim=1))
    return qkv, rope_store_attention_ref(q, k, v, k_cache, v_cache, slots, seq_lens, scale, theta)
