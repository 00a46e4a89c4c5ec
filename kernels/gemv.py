"""Skinny matmuls for decode (a few rows against a weight matrix), with the step's small
element-wise work fused into the matmul's prologue.

At batch 1 to 8 a decode step's matmuls are matrix-vector products: each weight is read once and
used for a handful of rows, so the time is the weight's bytes over the memory bandwidth, and a
general GEMM library's tiling (plus, at one row, cuBLAS's split-K reduction kernels) only adds
latency. One program here owns BLOCK_N output features: it streams their rows of W once, in
BLOCK_K chunks, and multiplies every input row against each chunk in fp32.

Three prologues, chosen by a constexpr, compute the input rows on the fly instead of reading them
from a separate kernel's output:

* PRO=0, `linear(x, w)`: x as it is.
* PRO=1, `swiglu_linear(gate_up, w)`: x = silu(gate) · up, the FFN's activation (saves the swiglu
  kernel before the down projection).
* PRO=2, `rmsnorm_linear(h, norm_w, eps, w, residual)`: s = h + residual, x = s / rms(s) · norm_w
  (saves the norm kernel before the QKV, gate/up and LM-head projections). Every program computes
  the row's rms itself (the row is a few KiB, read from L2); program 0 alone writes s, the new
  residual.

Each prologue rounds x to the activation dtype before the multiply, as the unfused kernels' outputs
are rounded, so fused and unfused steps compute the same x.
"""
import torch
import triton
import triton.language as tl

from kernels._compat import check_device, interpreted, to_dtype

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Rows the kernel takes (one program multiplies all of them against each weight chunk).
MAX_ROWS = 8
# Rows up to which the decoder uses it. Measured on an H100 (scripts/probe_gemv.py, weights
# cycled past the L2): at one row it beats cuBLAS on every llama-1b and opt-125m matmul but
# gate/up (LM head 104% of copy bandwidth against 94%, down 80% against 68%); at four rows
# cuBLAS wins on all of them (LM head 93% against 77%).
FAST_ROWS = 1


@triton.jit
def _load_x(x_ptr, r_ptr, nw_ptr, offs_b, offs_k, stride_xb, stride_rb, rstd, mask,
            K: tl.constexpr, PRO: tl.constexpr, HAS_RES: tl.constexpr):
    """Input rows [BLOCK_B, BLOCK_K] after the prologue, in fp32 (rounded through x's dtype)."""
    dt = x_ptr.dtype.element_ty
    xp = x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :]
    if PRO == 1:
        g = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(xp + K, mask=mask, other=0.0).to(tl.float32)
        x = to_dtype(g / (1.0 + tl.exp(-g)) * u, dt).to(tl.float32)
    elif PRO == 2:
        x = tl.load(xp, mask=mask, other=0.0)
        if HAS_RES:
            r = tl.load(r_ptr + offs_b[:, None] * stride_rb + offs_k[None, :], mask=mask, other=0.0)
            x = to_dtype(x.to(tl.float32) + r.to(tl.float32), dt)
        nw = tl.load(nw_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        x = to_dtype(x.to(tl.float32) * rstd[:, None] * nw[None, :], dt).to(tl.float32)
    else:
        x = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
    return x


@triton.jit
def _gemv_kernel(
    x_ptr, r_ptr, nw_ptr, w_ptr, y_ptr, s_ptr,
    N, stride_xb, stride_rb, stride_wn, stride_yb, stride_sb, eps,
    B: tl.constexpr, K: tl.constexpr, PRO: tl.constexpr, HAS_RES: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    # BLOCK_K is fixed per weight shape, never per row count: with num_warps · 32 threads laid
    # along K, each row's dot product is summed in the same order whatever the batch, so a
    # padded graph's real rows equal the eager step's bit for bit.
    BK: tl.constexpr = BLOCK_K
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_B)
    mask_n = offs_n < N
    mask_b = offs_b < B
    rstd = tl.zeros([BLOCK_B], tl.float32)
    if PRO == 2:
        # Pass 1: the rms of s = h (+ residual), s rounded as the unfused kernel rounds it.
        ss = tl.zeros([BLOCK_B], tl.float32)
        # K is constexpr: Triton 3.6's interpreter fails on runtime loop bounds (triton#9171).
        for k0 in range(0, K, BK):
            offs_k = k0 + tl.arange(0, BK)
            m = mask_b[:, None] & (offs_k < K)[None, :]
            xp = x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :]
            s = tl.load(xp, mask=m, other=0.0)
            if HAS_RES:
                r = tl.load(r_ptr + offs_b[:, None] * stride_rb + offs_k[None, :], mask=m, other=0.0)
                s = to_dtype(s.to(tl.float32) + r.to(tl.float32), x_ptr.dtype.element_ty)
                tl.store(s_ptr + offs_b[:, None] * stride_sb + offs_k[None, :], s, mask=m & (pid == 0))
            sf = s.to(tl.float32)
            ss += tl.sum(sf * sf, axis=1)
        rstd = tl.rsqrt(ss / K + eps)
    acc = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=STAGES):
        offs_k = k0 + tl.arange(0, BK)
        mask_k = offs_k < K
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)  # [BN, BK]
        x = _load_x(x_ptr, r_ptr, nw_ptr, offs_b, offs_k, stride_xb, stride_rb, rstd,
                    mask_b[:, None] & mask_k[None, :], K, PRO, HAS_RES)          # [BB, BK]
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
    yp = y_ptr + offs_b[:, None] * stride_yb + offs_n[None, :]
    tl.store(yp, to_dtype(acc, y_ptr.dtype.element_ty), mask=mask_b[:, None] & mask_n[None, :])


# Under the interpreter every program costs milliseconds of numpy: few, large ones (the kernel
# tests shrink these to cover many programs and chunks on small shapes).
_INTERPRETED_CONFIG = dict(BLOCK_N=128, BLOCK_K=512, num_warps=4)


def config(N: int, K: int, B: int, elt: int) -> dict:
    """Launch parameters for an [N, K] weight and B rows. One 16-byte load per thread per row of
    the tile, every thread along K: BLOCK_K = (16 / elt) · 32 · num_warps, the same for every
    batch, so the K reduction's order (and each row's result) does not depend on B (checked
    bitwise on the H100 for 1, 3, 4 and 8 rows)."""
    if interpreted(_gemv_kernel):
        return dict(_INTERPRETED_CONFIG, STAGES=1)
    # BLOCK_N 4, 4 warps, 3 stages: within 2% of the best of 24 configs on every shape probed
    # at one row (scripts/probe_gemv.py), except o_proj (4 points behind).
    warps = 4
    return dict(BLOCK_N=4, BLOCK_K=(16 // elt) * 32 * warps, STAGES=3, num_warps=warps)


def _check(op, x, w, k_in):
    if x.dim() != 2 or w.dim() != 2:
        raise ValueError(f"{op}: x and w must be 2-D, got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.dtype not in _DTYPES or w.dtype != x.dtype:
        raise ValueError(f"{op}: x/w dtypes {x.dtype}/{w.dtype}; both must be one of float32, float16, bfloat16")
    if not 1 <= x.shape[0] <= MAX_ROWS:
        raise ValueError(f"{op}: {x.shape[0]} rows; allowed 1..{MAX_ROWS} (use F.linear above that)")
    if w.shape[1] != k_in:
        raise ValueError(f"{op}: w must be [N, {k_in}] for x of shape {tuple(x.shape)}, got {tuple(w.shape)}")
    for name, t in (("x", x), ("w", w)):
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device}, expected {x.device} like x")
        if t.stride(-1) != 1:
            raise ValueError(f"{op}: {name} must be contiguous in its last dim, got strides {t.stride()}")
    check_device(op, _gemv_kernel, x)


def _launch(x, w, K, pro, r=None, nw=None, s=None, eps=0.0):
    B, N = x.shape[0], w.shape[0]
    y = torch.empty((B, N), dtype=x.dtype, device=x.device)
    r_, nw_, s_ = (r if r is not None else x), (nw if nw is not None else w), (s if s is not None else y)
    args = (x, r_, nw_, w, y, s_, N, x.stride(0), r_.stride(0), w.stride(0), y.stride(0),
            s_.stride(0), float(eps))
    cfg = config(N, K, B, x.element_size())
    _gemv_kernel[(triton.cdiv(N, cfg["BLOCK_N"]),)](
        *args, B=B, K=K, PRO=pro, HAS_RES=r is not None, BLOCK_B=triton.next_power_of_2(B), **cfg)
    return y


def linear(x, w):
    """y = x · wᵀ with fp32 accumulation. x: [B, K] with 1 <= B <= MAX_ROWS; w: [N, K]."""
    _check("linear", x, w, x.shape[-1] if x.dim() == 2 else -1)
    return _launch(x, w, x.shape[1], 0)


def swiglu_linear(gate_up, w):
    """y = swiglu(gate_up) · wᵀ: gate_up [B, 2F] ([gate | up] halves), w [N, F]."""
    F = gate_up.shape[-1] // 2
    if gate_up.dim() != 2 or gate_up.shape[1] != 2 * F or F == 0:
        raise ValueError(f"swiglu_linear: gate_up must be [B, 2F] with F >= 1, got {tuple(gate_up.shape)}")
    _check("swiglu_linear", gate_up, w, F)
    return _launch(gate_up, w, F, 1)


def rmsnorm_linear(h, norm_w, eps, w, residual=None):
    """x = rmsnorm(h (+ residual), norm_w, eps), y = x · wᵀ. h, residual: [B, K]; norm_w: [K];
    w: [N, K]. Returns y, or (y, s) with s = h + residual when a residual is given."""
    _check("rmsnorm_linear", h, w, h.shape[-1] if h.dim() == 2 else -1)
    K = h.shape[1]
    if norm_w.shape != (K,) or norm_w.dtype not in _DTYPES or norm_w.device != h.device:
        raise ValueError(f"rmsnorm_linear: norm_w must be a float [{K}] tensor on {h.device}, "
                         f"got {tuple(norm_w.shape)} {norm_w.dtype} on {norm_w.device}")
    if residual is not None and (residual.shape != h.shape or residual.dtype != h.dtype
                                 or residual.device != h.device or residual.stride(-1) != 1):
        raise ValueError(f"rmsnorm_linear: residual must match h ({tuple(h.shape)}, {h.dtype}, "
                         f"contiguous rows), got {tuple(residual.shape)} {residual.dtype}")
    s = torch.empty_like(h) if residual is not None else None
    y = _launch(h, w, K, 2, r=residual, nw=norm_w, s=s, eps=eps)
    return (y, s) if residual is not None else y


def linear_ref(x, w):
    """Reference: x · wᵀ in fp32, cast to x.dtype. Bytes (s = element size): reads
    (N·K + B·K)·s, writes B·N·s; flops 2·B·N·K."""
    return (x.float() @ w.float().t()).to(x.dtype)


def swiglu_linear_ref(gate_up, w):
    """Reference: linear_ref(swiglu_ref(gate_up), w). Bytes: reads (N·F + 2·B·F)·s, writes B·N·s."""
    from kernels.swiglu import swiglu_ref
    return linear_ref(swiglu_ref(gate_up), w)


def rmsnorm_linear_ref(h, norm_w, eps, w, residual=None):
    """Reference: rmsnorm_ref then linear_ref. Bytes: reads (N·K + K + B·K (+ B·K residual))·s,
    writes B·N·s (+ B·K·s, the sum, with a residual)."""
    from kernels.rmsnorm import rmsnorm_ref
    out = rmsnorm_ref(h, norm_w, eps, residual=residual)
    if residual is None:
        return linear_ref(out, w)
    x, s = out
    return linear_ref(x, w), s
