"""Rotary position embedding, NeoX style (rotate halves), applied in place to q and k."""

import torch
import triton
import triton.language as tl

from ._launch import launch

from ._utils import DTYPES, INDEX_DTYPES, check_device, pdl_enter, pdl_launch_kw, to_dtype, use_pdl
from .store_kv import check_store_kv, store_kv_ref

_MAX_HEAD_DIM = 256  # one head's half is one tile row


@triton.jit
def _rotate_heads(base, stride_h, cos, sin,
                  N_HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    offs_i = tl.arange(0, BLOCK_HALF)[None, :]
    # Loop over head chunks so the tile stays small for any head count. The bound is constexpr:
    # Triton 3.6's interpreter fails on runtime loop bounds under numpy >= 2.4 (triton#9171).
    for h0 in range(0, N_HEADS, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)[:, None]
        mask = (offs_h < N_HEADS) & (offs_i < HALF)
        p1 = base + offs_h * stride_h + offs_i  # [BLOCK_H, BLOCK_HALF], first half
        x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
        tl.store(p1, to_dtype(x1 * cos - x2 * sin, base.dtype.element_ty), mask=mask)
        tl.store(p1 + HALF, to_dtype(x2 * cos + x1 * sin, base.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, pos_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh,
    theta,
    H: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + b).to(tl.float32)
    i = tl.arange(0, BLOCK_HALF).to(tl.float64)[None, :]
    # inv_freq[i] = theta^(-2i/D) = 2^(i · (-2·log2(theta)/D)), in fp64 and then rounded: an fp32
    # exp2 is off by an ulp or two, which the angle pos·inv_freq multiplies by pos.
    log2_step = -tl.log2(tl.full([1, 1], theta, tl.float64)) / HALF  # -2·log2(theta)/D, in fp64
    inv_freq = tl.exp2(i * log2_step).to(tl.float32)
    angle = pos * inv_freq  # [1, BLOCK_HALF]; one cos/sin per token, shared by all heads
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    _rotate_heads(q_ptr + b * stride_qb, stride_qh, cos, sin, H, HALF, BLOCK_H, BLOCK_HALF)
    _rotate_heads(k_ptr + b * stride_kb, stride_kh, cos, sin, HKV, HALF, BLOCK_H, BLOCK_HALF)


@triton.jit
def _rope_store_kv_kernel(
    q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, pos_ptr, slots_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
    stride_cs, stride_ch, stride_cn,
    theta,
    H: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    # grid (B, cdiv(H, BLOCK_H) + cdiv(HKV, BLOCK_H)): one chunk of q heads, or of k/v heads,
    # per program, so a one-row step is a few programs of one round trip each, not one program
    # walking every head.
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    NQ: tl.constexpr = (H + BLOCK_H - 1) // BLOCK_H
    pdl_enter(USE_PDL)
    pos_i = tl.load(pos_ptr + b).to(tl.int64)
    pos = pos_i.to(tl.float32)
    i = tl.arange(0, BLOCK_HALF).to(tl.float64)[None, :]
    log2_step = -tl.log2(tl.full([1, 1], theta, tl.float64)) / HALF
    inv_freq = tl.exp2(i * log2_step).to(tl.float32)
    angle = pos * inv_freq
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    offs_i = tl.arange(0, BLOCK_HALF)[None, :]
    dt = q_ptr.dtype.element_ty
    if c < NQ:
        offs_h = c * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        mask = (offs_h < H) & (offs_i < HALF)
        p1 = q_ptr + b * stride_qb + offs_h * stride_qh + offs_i
        x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
        tl.store(p1, to_dtype(x1 * cos - x2 * sin, dt), mask=mask)
        tl.store(p1 + HALF, to_dtype(x2 * cos + x1 * sin, dt), mask=mask)
    else:
        # K: rotated on the way into the cache (the new k itself is not written back); V: copied.
        slot = tl.load(slots_ptr + b).to(tl.int64)
        kc = kc_ptr + slot * stride_cs + pos_i * stride_cn
        vc = vc_ptr + slot * stride_cs + pos_i * stride_cn
        offs_h = (c - NQ) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        mask = (offs_h < HKV) & (offs_i < HALF)
        kp = k_ptr + b * stride_kb + offs_h * stride_kh + offs_i
        x1 = tl.load(kp, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(kp + HALF, mask=mask, other=0.0).to(tl.float32)
        vp = v_ptr + b * stride_vb + offs_h * stride_vh + offs_i
        v1 = tl.load(vp, mask=mask)
        v2 = tl.load(vp + HALF, mask=mask)
        cdt = kc_ptr.dtype.element_ty
        tl.store(kc + offs_h * stride_ch + offs_i, to_dtype(x1 * cos - x2 * sin, cdt), mask=mask)
        tl.store(kc + offs_h * stride_ch + offs_i + HALF, to_dtype(x2 * cos + x1 * sin, cdt), mask=mask)
        tl.store(vc + offs_h * stride_ch + offs_i, v1, mask=mask)
        tl.store(vc + offs_h * stride_ch + offs_i + HALF, v2, mask=mask)


def check_rope(q, k, positions):
    """rope's argument checks (ValueError), shared by the kernels that rotate q and k."""
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"rope: q and k must be 3-D [B, H, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    B, H, D = q.shape
    if k.shape[0] != B or k.shape[2] != D:
        raise ValueError(f"rope: k must be [B={B}, Hkv, D={D}] like q, got {tuple(k.shape)}")
    if D % 2 or not 2 <= D <= _MAX_HEAD_DIM:
        raise ValueError(f"rope: head dim D={D} not supported; allowed: even D in 2..{_MAX_HEAD_DIM} (e.g. 64, 80, 96, 128)")
    if q.dtype not in DTYPES or k.dtype != q.dtype:
        raise ValueError(f"rope: q/k dtypes {q.dtype}/{k.dtype}; both must be one of float32, float16, bfloat16")
    if positions.shape != (B,) or positions.dtype not in INDEX_DTYPES:
        raise ValueError(f"rope: positions must be int32/int64 [B]=[{B}], got {tuple(positions.shape)} {positions.dtype}")
    for name, t in (("k", k), ("positions", positions)):
        if t.device != q.device:
            raise ValueError(f"rope: {name} is on {t.device}, expected {q.device} like q")
    for name, t in (("q", q), ("k", k)):
        if t.numel() > 0 and t.stride(2) != 1:
            raise ValueError(f"rope: {name} must be contiguous in its last dim, got strides {t.stride()}")


def rope(q, k, positions, theta=10000.0, record=None):
    """In place: for each head x, with x1 = x[..., :D/2], x2 = x[..., D/2:],
    x1 ← x1·cos − x2·sin, x2 ← x2·cos + x1·sin, angle[b, i] = positions[b] · theta^(−2i/D).
    q: [B, H, D], k: [B, Hkv, D] (any batch/head strides), positions: [B]. Returns (q, k)."""
    check_rope(q, k, positions)
    check_device("rope", _rope_kernel, q)
    B, H, D = q.shape
    Hkv = k.shape[1]
    if B > 0:
        half = D // 2
        launch(record, _rope_kernel, (B,),
            q, k, positions,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            float(theta),
            H=H, HKV=Hkv, HALF=half, BLOCK_H=min(triton.next_power_of_2(max(H, Hkv)), 16),
            BLOCK_HALF=triton.next_power_of_2(half), num_warps=4,
        )
    return q, k


def rope_ref(q, k, positions, theta=10000.0):
    """Reference, out of place: angle[b, i] = pos[b] · theta^(−2i/D), i < D/2, and for x in (q, k)
    out = cat(x1·cos − x2·sin, x2·cos + x1·sin) in fp32, cast to x.dtype. Returns new (q, k).

    Bytes (s = element size, s_i = index size): reads B·(H + Hkv)·D·s + B·s_i, writes B·(H + Hkv)·D·s.
    """
    D = q.shape[-1]
    half = D // 2
    # inv_freq in fp64, rounded once to fp32, as the kernel does (theta as the fp32 the kernel gets).
    # (device tensor ops only: no .item(), which torch.compile's one graph cannot hold, and no
    # host-to-device copy, which a CUDA graph capture refuses)
    theta32 = torch.full((), theta, dtype=torch.float32, device=q.device).double()
    log2_step = torch.log2(theta32) * (-2.0 / D)
    inv_freq = torch.exp2(torch.arange(half, device=q.device, dtype=torch.float64) * log2_step).float()
    angle = positions.to(torch.float32)[:, None, None] * inv_freq  # [B, 1, D/2]
    cos, sin = torch.cos(angle), torch.sin(angle)

    def rotate(x):
        x1, x2 = x.float()[..., :half], x.float()[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def rope_store_kv(q, k, v, k_cache, v_cache, slots, positions, theta=10000.0, pdl=True, record=None):
    """rope and store_kv in one kernel: q is rotated in place; k is rotated on its way into
    k_cache[slots[i], :, positions[i]] (k itself is left as it was); v is copied into v_cache.
    Shapes as rope's and store_kv's. Returns q. pdl: launch with programmatic dependent launch
    where the device has it."""
    check_rope(q, k, positions)
    check_store_kv(k_cache, v_cache, k, v, slots, positions)
    if k_cache.stride() != v_cache.stride():
        raise ValueError(f"rope_store_kv: k_cache and v_cache must share strides, got "
                         f"{k_cache.stride()} and {v_cache.stride()}")
    check_device("rope_store_kv", _rope_store_kv_kernel, q)
    B, H, D = q.shape
    Hkv = k.shape[1]
    if B > 0:
        half = D // 2
        bh = min(triton.next_power_of_2(max(H, Hkv)), 16)
        pdl = use_pdl(_rope_store_kv_kernel, q, pdl)
        launch(record, _rope_store_kv_kernel, (B, triton.cdiv(H, bh) + triton.cdiv(Hkv, bh)),
            q, k, v, k_cache, v_cache, positions, slots,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            float(theta),
            H=H, HKV=Hkv, HALF=half, BLOCK_H=bh, BLOCK_HALF=triton.next_power_of_2(half),
            USE_PDL=pdl, num_warps=4, **pdl_launch_kw(pdl),
        )
    return q


def rope_store_kv_ref(q, k, v, k_cache, v_cache, slots, positions, theta=10000.0):
    """Reference: q, k = rope_ref(q, k, positions, theta); store_kv_ref(k_cache, v_cache, k, v,
    slots, positions); returns the new q (out of place; the caches are written in place).

    Bytes (s = element size, s_i = index size): reads B·(H + 2·Hkv)·D·s + 2·B·s_i, writes
    B·(H + 2·Hkv)·D·s."""
    q2, k2 = rope_ref(q, k, positions, theta)
    store_kv_ref(k_cache, v_cache, k2, v, slots, positions)
    return q2
