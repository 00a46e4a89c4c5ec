"""Skinny matmuls for decode (a few rows against a weight matrix), with the step's small
element-wise work fused into the matmul's prologue or epilogue.

At batch 1 to 16 a decode step's matmuls are skinny: each weight is read once and used for a
handful of rows, so the time is the weight's bytes over the memory bandwidth, and a general GEMM
library's tiling (plus, at one row, cuBLAS's split-K reduction kernels) only adds latency. One
program here owns BLOCK_N output features: it streams their rows of W once, in BLOCK_K chunks,
and multiplies every input row against each chunk, either on CUDA cores in fp32 (DOT=0: every
row times every weight column in registers, for few rows) or on tensor cores (DOT=1: the rows
padded to 16 with masked loads, products summed in fp32, chunks pipelined STAGES deep), or on
tensor cores with the weight as the wide side (DOT=2, gemv_mma.py: its rows as the MMA's M side,
the input rows padded to 16 as N, K optionally split across SPLIT programs; the rule's choice
above one row). On CUDA
cores each chunk's products are either summed across the program as the chunk comes (a
reduction through shared memory, with barriers, per chunk) or, with DEFER, kept as per-thread
partial sums over the whole row and summed once at the end, so the chunks' loads are never held
behind a barrier. Which,
and the tile, is chosen per device, weight shape and row bucket by measurement
(gemv_configs.py, `microbench tune`).

What is fused, chosen by constexprs:

* NORM (prologue): x = rmsnorm(h) · norm_w, in one pass. rmsnorm(h)·W = rstd · (h·norm_w)·W, so
  the program accumulates the row's sum of squares from the same h chunks it multiplies, and
  scales its outputs by rstd = 1/sqrt(mean(h²) + eps) at the end: h is read once, as an unfused
  matmul reads x. (The first version normalised in a first pass over h and added the residual
  there too; at BLOCK_N = 4 that re-read 125% of the weight's bytes from L2 on llama-1b.)
* EPI=1 (epilogue): y = residual + x·Wᵀ: the residual add is a load of BLOCK_N values per row.
* EPI=2 (epilogue): y = silu(x·W_gᵀ) · (x·W_uᵀ) with W = [W_g; W_u] ([2F, K]): the program
  streams the gate rows n and the up rows F + n together and writes the FFN's activation, F
  wide, instead of 2F gate/up values for a separate swiglu kernel.

Programmatic dependent launch (`pdl=True`; Hopper and newer, compiled only): a program
first loads its first weight chunk (weights are never written during a step; for 16-bit weights
with K <= 2048 that is its whole share of W), lets the next kernel launch, then waits for the
kernel before it to finish and flush before it reads an activation or writes anything
(`pdl="late"`: waits, then lets the next kernel launch). Longer
rows (down) go in chunks with one chunk ahead (AHEAD): chunk c + 1's loads are issued before
chunk c is multiplied. So the next kernels' launches and weight loads overlap this one, inside a
graph as outside; on the H100 whole bs-1 replays of llama-1b and opt-125m measured faster with
PDL, and fastest with the next kernel let launch before the wait.

Rounding: everything is fp32 from the loads to the output, rounded once to the activation dtype
at the store (the gate/up values and the matmul before the residual add are never rounded; on
CUDA cores the normalised x is not either, on tensor cores it enters in the weights' dtype). The unfused path rounds each kernel's output, so the two paths differ by up to
an ulp or two; each path's graph replay equals its own eager step bit for bit.
"""
import functools

import torch
import triton
import triton.language as tl

from ._launch import launch

from . import _utils, gemv_configs, gemv_mma
from ._utils import DTYPES, check_device, dot, interpreted, pdl_enter, pdl_launch_kw, to_dtype
from .gemv_mma import load_w as _load_w

# Rows the kernel takes (one program multiplies all of them against each weight chunk).
MAX_ROWS = 16
# (Rows up to which the decoder uses it: engine.plan.FAST_ROWS, a decision of the step plan.)


@triton.jit
def _chunk(acc, acc2, ss, w, w2, x_ptr, nw_ptr, offs_b, offs_k, stride_xb, mask_b,
           K: tl.constexpr, NORM: tl.constexpr, EPI: tl.constexpr, DOT: tl.constexpr,
           DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """One BLOCK_K chunk: acc [BB, BN] += x · wᵀ (and acc2 += x · w2ᵀ for the up rows)."""
    mask_k = offs_k < K
    x = tl.load(x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :],
                mask=mask_b[:, None] & mask_k[None, :], other=0.0).to(tl.float32)  # [BB, BK]
    if NORM:
        ss += tl.sum(x * x, axis=1)
        nw = tl.load(nw_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        x = x * nw[None, :]
    if DOT:
        # tensor cores: the rows go in in the weights' dtype (the normed rows rounded once, as
        # the unfused path's rmsnorm output is), products summed in fp32
        xw = to_dtype(x, w.dtype)
        acc += dot(xw, tl.trans(w), DOT_PRECISION, INTERPRET)
        if EPI == 2:
            acc2 += dot(xw, tl.trans(w2), DOT_PRECISION, INTERPRET)
    else:
        acc += tl.sum(x[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
        if EPI == 2:
            acc2 += tl.sum(x[:, None, :] * w2.to(tl.float32)[None, :, :], axis=2)
    return acc, acc2, ss


@triton.jit
def _part(acc3, acc32, ssv, w, w2, x_ptr, nw_ptr, offs_b, offs_k, stride_xb, mask_b,
          K: tl.constexpr, NORM: tl.constexpr, EPI: tl.constexpr):
    """One BLOCK_K chunk on CUDA cores, not reduced (DEFER): acc3 [BB, BN, BK] += x · w
    element by element (acc32 += x · w2 for the up rows), ssv [BB, BK] += x²."""
    mask_k = offs_k < K
    x = tl.load(x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :],
                mask=mask_b[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
    if NORM:
        ssv += x * x
        nw = tl.load(nw_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        x = x * nw[None, :]
    acc3 += x[:, None, :] * w.to(tl.float32)[None, :, :]
    if EPI == 2:
        acc32 += x[:, None, :] * w2.to(tl.float32)[None, :, :]
    return acc3, acc32, ssv


@triton.jit
def _gemv_kernel(
    x_ptr, nw_ptr, w_ptr, r_ptr, y_ptr,
    N, stride_xb, stride_wn, stride_rb, stride_yb, eps,
    B: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr, EPI: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
    AHEAD: tl.constexpr, DOT: tl.constexpr, USE_PDL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr, DEFER: tl.constexpr = 0,
):
    pid = tl.program_id(0)
    # BLOCK_K is fixed per weight shape and row bucket, never per row count: each row's dot
    # product is summed in the same order whatever the batch within a bucket, so a padded
    # graph's real rows equal the eager step of the padded batch bit for bit.
    BK: tl.constexpr = BLOCK_K
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_B)
    mask_n = offs_n < N
    mask_b = offs_b < B
    w_rows = w_ptr + offs_n[:, None] * stride_wn
    w2_rows = w_rows + N * stride_wn          # EPI=2: the up rows, F = N below the gate rows
    acc = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
    acc2 = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
    ss = tl.zeros([BLOCK_B], tl.float32)
    # chunk 0's weights before the wait: no kernel of the step writes them
    offs_k = tl.arange(0, BK)
    w, w2 = _load_w(w_rows, w2_rows, offs_k, mask_n, K, EPI)
    pdl_enter(USE_PDL)
    if DEFER:
        # per-thread partial sums over the whole row, reduced across the program once at the
        # end: no chunk waits for the others' reduction, so the loop carries no barrier and
        # its loads can run ahead (unrolled DEFER times)
        acc3 = tl.zeros([BLOCK_B, BLOCK_N, BK], tl.float32)
        acc32 = tl.zeros([BLOCK_B, BLOCK_N, BK], tl.float32)
        ssv = tl.zeros([BLOCK_B, BK], tl.float32)
        acc3, acc32, ssv = _part(acc3, acc32, ssv, w, w2, x_ptr, nw_ptr, offs_b, offs_k,
                                 stride_xb, mask_b, K, NORM, EPI)
        for k0 in tl.range(BK, K, BK, num_stages=1, loop_unroll_factor=DEFER):
            offs_k = k0 + tl.arange(0, BK)
            w, w2 = _load_w(w_rows, w2_rows, offs_k, mask_n, K, EPI)
            acc3, acc32, ssv = _part(acc3, acc32, ssv, w, w2, x_ptr, nw_ptr, offs_b, offs_k,
                                     stride_xb, mask_b, K, NORM, EPI)
        acc = tl.sum(acc3, axis=2)
        acc2 = tl.sum(acc32, axis=2)
        ss = tl.sum(ssv, axis=1)
    elif AHEAD:
        # one chunk ahead: chunk c + 1's weights are requested before chunk c is multiplied, so
        # a program has two chunks of loads in flight
        for k0 in tl.range(BK, K, BK, num_stages=1):
            offs_n_k = k0 + tl.arange(0, BK)
            wn, w2n = _load_w(w_rows, w2_rows, offs_n_k, mask_n, K, EPI)
            acc, acc2, ss = _chunk(acc, acc2, ss, w, w2, x_ptr, nw_ptr, offs_b, offs_n_k - BK,
                                   stride_xb, mask_b, K, NORM, EPI, DOT, DOT_PRECISION, INTERPRET)
            w = wn
            w2 = w2n
        offs_k = (K - 1) // BK * BK + tl.arange(0, BK)
        acc, acc2, ss = _chunk(acc, acc2, ss, w, w2, x_ptr, nw_ptr, offs_b, offs_k, stride_xb,
                               mask_b, K, NORM, EPI, DOT, DOT_PRECISION, INTERPRET)
    else:
        acc, acc2, ss = _chunk(acc, acc2, ss, w, w2, x_ptr, nw_ptr, offs_b, offs_k, stride_xb,
                               mask_b, K, NORM, EPI, DOT, DOT_PRECISION, INTERPRET)
        # K is constexpr: Triton 3.6's interpreter fails on runtime loop bounds (triton#9171).
        # With DOT the loop's weight loads feed tl.dot, so Triton pipelines STAGES of them.
        for k0 in tl.range(BK, K, BK, num_stages=STAGES):
            offs_k = k0 + tl.arange(0, BK)
            w, w2 = _load_w(w_rows, w2_rows, offs_k, mask_n, K, EPI)   # [BN, BK]
            acc, acc2, ss = _chunk(acc, acc2, ss, w, w2, x_ptr, nw_ptr, offs_b, offs_k, stride_xb,
                                   mask_b, K, NORM, EPI, DOT, DOT_PRECISION, INTERPRET)
    if NORM:
        rstd = tl.rsqrt(ss / K + eps)
        acc = acc * rstd[:, None]
        acc2 = acc2 * rstd[:, None]
    mask = mask_b[:, None] & mask_n[None, :]
    if EPI == 1:
        r = tl.load(r_ptr + offs_b[:, None] * stride_rb + offs_n[None, :], mask=mask, other=0.0)
        acc = acc + r.to(tl.float32)
    if EPI == 2:
        acc = acc / (1.0 + tl.exp(-acc)) * acc2
    tl.store(y_ptr + offs_b[:, None] * stride_yb + offs_n[None, :],
             to_dtype(acc, y_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=None)
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def choose_config(x, w, norm: bool = False, epi: int = 0) -> dict:
    """Launch parameters for rows x against weight w (the keys a wrapper's `config=` takes;
    see gemv_configs): the tuned entry for this device, shape and row bucket, else the rule."""
    B, K = x.shape
    if interpreted(_gemv_kernel):
        return dict(gemv_configs.INTERPRETED, DOT=2 if B > 1 else 0)
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return gemv_configs.choose_config(w.shape[0], K, B, x.element_size(), norm, epi,
                                      _device_name(index))


def use_pdl(x, pdl=True) -> bool:
    """Whether the skinny matmuls launch with PDL for tensors like x when called with `pdl`."""
    return bool(_utils.use_pdl(_gemv_kernel, x, pdl))


def _check(op, x, w, k_in):
    if x.dim() != 2 or w.dim() != 2:
        raise ValueError(f"{op}: x and w must be 2-D, got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.dtype not in DTYPES or w.dtype != x.dtype:
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


def _launch(x, w, n_out, cfg, pdl, record, norm=False, epi=0, r=None, nw=None, eps=0.0):
    B, K = x.shape
    y = torch.empty((B, n_out), dtype=x.dtype, device=x.device)
    r_ = r if r is not None else y
    nw_ = nw if nw is not None else w
    cfg = {**gemv_configs.DEFAULTS, **(cfg if cfg is not None else choose_config(x, w, norm, epi))}
    if cfg["DEFER"] and (cfg["DOT"] or cfg["AHEAD"]):
        raise ValueError(f"gemv config {cfg}: DEFER is a CUDA-core loop of its own; it takes "
                         "DOT=0 and AHEAD=0")
    if cfg["DOT"] not in (0, 1, 2) or (cfg["DOT"] == 2 and cfg["AHEAD"]):
        raise ValueError(f"gemv config {cfg}: DOT must be 0, 1 or 2, and DOT=2 (the weight on "
                         "the tensor cores' wide side) takes AHEAD=0")
    if cfg["SPLIT"] < 1 or (cfg["SPLIT"] > 1 and cfg["DOT"] != 2):
        raise ValueError(f"gemv config {cfg}: SPLIT (split-K) must be 1, or more with DOT=2")
    pdl = _utils.use_pdl(_gemv_kernel, x, pdl)
    grid = (triton.cdiv(n_out, cfg["BLOCK_N"]),)
    kernel, lead, keys = _gemv_kernel, (x, nw_, w, r_, y), dict(cfg)
    del keys["SPLIT"]
    if cfg["DOT"] == 2:
        part, ss, sem, tiles = gemv_mma.split_args(x, n_out, cfg, epi)
        kernel, lead, grid = gemv_mma.gemv_mma_kernel, lead + (part, ss, sem), grid + (cfg["SPLIT"],)
        keys = {k: cfg[k] for k in ("BLOCK_N", "BLOCK_K", "STAGES", "num_warps", "SPLIT")}
        keys["TILES"] = tiles
    launch(record, kernel, grid,
        *lead, n_out, x.stride(0), w.stride(0), r_.stride(0), y.stride(0), float(eps),
        B=B, K=K, NORM=norm, EPI=epi, BLOCK_B=gemv_mma.block_b(cfg, B), USE_PDL=pdl,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        INTERPRET=interpreted(kernel), **keys, **pdl_launch_kw(pdl))
    return y


def _check_norm(op, norm_w, h):
    K = h.shape[1]
    if norm_w.shape != (K,) or norm_w.dtype not in DTYPES or norm_w.device != h.device:
        raise ValueError(f"{op}: norm_w must be a float [{K}] tensor on {h.device}, "
                         f"got {tuple(norm_w.shape)} {norm_w.dtype} on {norm_w.device}")


# Every wrapper below takes `config` (launch parameters, as choose_config returns them; None:
# choose_config's), `pdl` (launch with programmatic dependent launch where the device has it)
# and `record` (a list to append the bound launch to, for replay: see _launch.py).

def linear(x, w, residual=None, config=None, pdl=True, record=None):
    """y = x · wᵀ (+ residual) with fp32 accumulation. x: [B, K] with 1 <= B <= MAX_ROWS;
    w: [N, K]; residual: [B, N] or None."""
    _check("linear", x, w, x.shape[-1] if x.dim() == 2 else -1)
    N = w.shape[0]
    if residual is not None and (residual.shape != (x.shape[0], N) or residual.dtype != x.dtype
                                 or residual.device != x.device or residual.stride(-1) != 1):
        raise ValueError(f"linear: residual must match {(x.shape[0], N)} {x.dtype} on {x.device} "
                         f"with contiguous rows, got {tuple(residual.shape)} {residual.dtype} on "
                         f"{residual.device}")
    return _launch(x, w, N, config, pdl, record, epi=1 if residual is not None else 0, r=residual)


def rmsnorm_linear(h, norm_w, eps, w, config=None, pdl=True, record=None):
    """y = rmsnorm(h, norm_w, eps) · wᵀ. h: [B, K]; norm_w: [K]; w: [N, K]."""
    _check("rmsnorm_linear", h, w, h.shape[-1] if h.dim() == 2 else -1)
    _check_norm("rmsnorm_linear", norm_w, h)
    return _launch(h, w, w.shape[0], config, pdl, record, norm=True, nw=norm_w, eps=eps)


def rmsnorm_linear_swiglu(h, norm_w, eps, w_gu, config=None, pdl=True, record=None):
    """y = swiglu(rmsnorm(h, norm_w, eps) · w_guᵀ): w_gu [2F, K] = [gate; up] rows, y [B, F]."""
    _check("rmsnorm_linear_swiglu", h, w_gu, h.shape[-1] if h.dim() == 2 else -1)
    _check_norm("rmsnorm_linear_swiglu", norm_w, h)
    if w_gu.shape[0] % 2:
        raise ValueError(f"rmsnorm_linear_swiglu: w_gu must have 2F rows ([gate; up]), got {w_gu.shape[0]}")
    return _launch(h, w_gu, w_gu.shape[0] // 2, config, pdl, record, norm=True, epi=2, nw=norm_w, eps=eps)


def linear_ref(x, w, residual=None):
    """Reference: x · wᵀ (+ residual) in fp32, rounded once to x.dtype. Bytes (s = element
    size): reads (N·K + B·K (+ B·N residual))·s, writes B·N·s; flops 2·B·N·K."""
    y = x.float() @ w.float().t()
    return (y if residual is None else y + residual.float()).to(x.dtype)


def _normed(h, norm_w, eps):
    hf = h.float()
    return hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * norm_w.float()


def rmsnorm_linear_ref(h, norm_w, eps, w):
    """Reference: rmsnorm(h) · wᵀ in fp32 (the normalised rows not rounded), rounded once.
    Bytes: reads (N·K + B·K + K)·s, writes B·N·s; flops 2·B·N·K + 4·B·K."""
    return (_normed(h, norm_w, eps) @ w.float().t()).to(h.dtype)


def rmsnorm_linear_swiglu_ref(h, norm_w, eps, w_gu):
    """Reference: silu(g) · u with [g | u] = rmsnorm(h) · w_guᵀ, all fp32, rounded once. Bytes:
    reads (2F·K + B·K + K)·s, writes B·F·s; flops 4·B·F·K + 4·B·K + 4·B·F."""
    gu = _normed(h, norm_w, eps) @ w_gu.float().t()
    F = gu.shape[1] // 2
    return (torch.nn.functional.silu(gu[:, :F]) * gu[:, F:]).to(h.dtype)
