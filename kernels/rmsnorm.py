"""RMSNorm, optionally fused with the residual add that precedes it in a transformer block."""
import torch
import triton
import triton.language as tl

from ._launch import launch

from ._utils import DTYPES, check_device, to_dtype

# One row lives in registers; past this the tile spills and a row-split kernel would be needed.
_MAX_D = 65536


@triton.jit
def _rmsnorm_kernel(
    x_ptr, r_ptr, w_ptr, y_ptr, s_ptr,
    stride_xb, stride_rb, stride_yb, stride_sb,
    D, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * stride_xb + cols, mask=mask, other=0.0)  # [BLOCK_D]
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + row * stride_rb + cols, mask=mask, other=0.0)
        # Round the sum to the input dtype, exactly as the unfused `x + residual` would.
        x = to_dtype(x.to(tl.float32) + r.to(tl.float32), x_ptr.dtype.element_ty)
        tl.store(s_ptr + row * stride_sb + cols, x, mask=mask)
    xf = x.to(tl.float32)
    # Masked lanes are 0, so summing over BLOCK_D and dividing by D gives the mean over D.
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / D + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_yb + cols, to_dtype(xf * rstd * w, y_ptr.dtype.element_ty), mask=mask)


def _check(x, w, residual):
    if x.dim() != 2:
        raise ValueError(f"rmsnorm: x must be 2-D [B, D], got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"rmsnorm: x dtype {x.dtype} not supported; allowed: float32, float16, bfloat16")
    B, D = x.shape
    if not 1 <= D <= _MAX_D:
        raise ValueError(f"rmsnorm: hidden size D={D} out of range; allowed 1..{_MAX_D}")
    if w.dim() != 1 or w.shape[0] != D or w.dtype not in DTYPES:
        raise ValueError(f"rmsnorm: w must be a float [D]=[{D}] tensor, got {tuple(w.shape)} {w.dtype}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"rmsnorm: residual must match x ({tuple(x.shape)}, {x.dtype}), "
            f"got {tuple(residual.shape)} {residual.dtype}"
        )
    for name, t in (("x", x), ("w", w), ("residual", residual)):
        if t is not None and t.device != x.device:
            raise ValueError(f"rmsnorm: {name} is on {t.device}, expected {x.device} like x")
        if t is not None and t.numel() > 0 and t.stride(-1) != 1:
            raise ValueError(f"rmsnorm: {name} must be contiguous in its last dim, got strides {t.stride()}")


def rmsnorm(x, w, eps, residual=None, record=None):
    """y = x / sqrt(mean(x², -1) + eps) · w, in fp32; with `residual`, s = x + residual first
    and (normed(s), s) is returned. x, residual: [B, D]; w: [D]."""
    _check(x, w, residual)
    check_device("rmsnorm", _rmsnorm_kernel, x)
    B, D = x.shape
    y = torch.empty((B, D), dtype=x.dtype, device=x.device)
    s = torch.empty((B, D), dtype=x.dtype, device=x.device) if residual is not None else None
    if B > 0:
        BLOCK_D = triton.next_power_of_2(D)
        # ~8 elements per thread keeps loads 16 bytes wide without spilling at D=8192.
        num_warps = min(max(BLOCK_D // 256, 1), 16)
        r, so = (residual, s) if residual is not None else (x, y)  # dummies, never touched
        launch(record, _rmsnorm_kernel, (B,),
            x, r, w, y, so,
            x.stride(0), r.stride(0), y.stride(0), so.stride(0),
            D, float(eps),
            HAS_RESIDUAL=residual is not None, BLOCK_D=BLOCK_D, num_warps=num_warps,
        )
    return (y, s) if residual is not None else y


def rmsnorm_ref(x, w, eps, residual=None):
    """Reference: s = x + residual (in x.dtype, when given), y = s / sqrt(mean(s², -1) + eps) · w
    computed in fp32 and cast to x.dtype.

    Bytes (s = element size of x, s_w of w): without residual reads B·D·s + D·s_w, writes B·D·s;
    with residual reads 2·B·D·s + D·s_w, writes 2·B·D·s (normed and the sum).
    """
    s = x + residual if residual is not None else x
    sf = s.float()
    y = (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)
    return (y, s) if residual is not None else y
