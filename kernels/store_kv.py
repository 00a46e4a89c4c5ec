"""Scatter one new token's K and V per sequence into the paged-by-slot KV cache."""
import triton
import triton.language as tl

from ._launch import launch

from ._utils import DTYPES, INDEX_DTYPES, check_device


@triton.jit
def _store_kv_kernel(
    kc_ptr, vc_ptr, k_ptr, v_ptr, slots_ptr, pos_ptr,
    stride_kb, stride_kh, stride_vb, stride_vh,
    stride_kcs, stride_kch, stride_kcn,
    stride_vcs, stride_vch, stride_vcn,
    HKV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    # int64: slot · stride of a large cache overflows int32.
    slot = tl.load(slots_ptr + b).to(tl.int64)
    pos = tl.load(pos_ptr + b).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)[None, :]
    kc_base = kc_ptr + slot * stride_kcs + pos * stride_kcn
    vc_base = vc_ptr + slot * stride_vcs + pos * stride_vcn
    # constexpr bound: Triton 3.6's interpreter fails on runtime loop bounds under numpy >= 2.4.
    for h0 in range(0, HKV, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)[:, None]
        mask = (offs_h < HKV) & (offs_d < HEAD_DIM)  # [BLOCK_H, BLOCK_D]
        k = tl.load(k_ptr + b * stride_kb + offs_h * stride_kh + offs_d, mask=mask)
        v = tl.load(v_ptr + b * stride_vb + offs_h * stride_vh + offs_d, mask=mask)
        tl.store(kc_base + offs_h * stride_kch + offs_d, k, mask=mask)
        tl.store(vc_base + offs_h * stride_vch + offs_d, v, mask=mask)


def check_store_kv(k_cache, v_cache, k, v, slots, positions):
    """store_kv's argument checks (ValueError), shared by the kernels that store K and V."""
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"store_kv: caches must both be [num_slots, Hkv, max_seq, D], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    _, Hkv, _, D = k_cache.shape
    if k.dim() != 3 or k.shape[1:] != (Hkv, D) or v.shape != k.shape:
        raise ValueError(f"store_kv: k and v must both be [B, Hkv={Hkv}, D={D}], got {tuple(k.shape)} and {tuple(v.shape)}")
    dtypes = {t.dtype for t in (k_cache, v_cache, k, v)}
    if len(dtypes) != 1 or k.dtype not in DTYPES:
        raise ValueError(f"store_kv: caches, k and v must share one dtype of float32/float16/bfloat16, got {sorted(map(str, dtypes))}")
    B = k.shape[0]
    for name, t in (("slots", slots), ("positions", positions)):
        if t.shape != (B,) or t.dtype not in INDEX_DTYPES:
            raise ValueError(f"store_kv: {name} must be int32/int64 [B]=[{B}], got {tuple(t.shape)} {t.dtype}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v), ("slots", slots), ("positions", positions)):
        if t.device != k.device:
            raise ValueError(f"store_kv: {name} is on {t.device}, expected {k.device} like k")
        if t.dim() > 1 and t.numel() > 0 and t.stride(-1) != 1:
            raise ValueError(f"store_kv: {name} must be contiguous in its last dim, got strides {t.stride()}")


def store_kv(k_cache, v_cache, k, v, slots, positions, record=None):
    """In place: k_cache[slots[i], :, positions[i], :] = k[i] and likewise v, for i < B.
    Caches: [num_slots, Hkv, max_seq, D]; k, v: [B, Hkv, D]; slots, positions: [B].
    Indices are not range-checked (that would read them on the host)."""
    check_store_kv(k_cache, v_cache, k, v, slots, positions)
    check_device("store_kv", _store_kv_kernel, k)
    B, Hkv, D = k.shape
    if B > 0:
        launch(record, _store_kv_kernel, (B,),
            k_cache, v_cache, k, v, slots, positions,
            k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            HKV=Hkv, HEAD_DIM=D, BLOCK_H=min(triton.next_power_of_2(Hkv), 16),
            BLOCK_D=triton.next_power_of_2(D), num_warps=4,
        )


def store_kv_ref(k_cache, v_cache, k, v, slots, positions):
    """Reference, in place: cache[slots[i], :, positions[i], :] = x[i] for (cache, x) in
    ((k_cache, k), (v_cache, v)); a copy, no arithmetic.

    Bytes (s = element size, s_i = index size): reads 2·B·Hkv·D·s + 2·B·s_i, writes 2·B·Hkv·D·s.
    """
    slots, positions = slots.long(), positions.long()
    # Advanced indices separated by a slice: the indexed view is [B, Hkv, D], matching k.
    k_cache[slots, :, positions, :] = k
    v_cache[slots, :, positions, :] = v
