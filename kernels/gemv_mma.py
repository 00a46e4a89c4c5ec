"""The skinny matmul with the weight on the tensor cores' wide side (config DOT=2).

gemv.py's tensor-core tile (DOT=1) multiplies the rows, padded to 16, as the product's M side
against BLOCK_N weight rows as its N side. This tile swaps them: out[n, b] = Σ_k W[n, k]·x[b, k]
with a BLOCK_N × BLOCK_K weight tile as the M side (64 or 128 rows: the shape Hopper's
warpgroup MMA takes) and the rows, padded to 16, as the N side. A program then streams
BLOCK_N whole weight rows through a STAGES-deep pipeline of chunks, so many bytes are in flight
per SM, which is what a matmul bound by its weight's reads needs. The output is written
transposed back to [B, N].

The fusions and the rounding are gemv.py's DOT=1 ones: NORM (the row's sum of squares gathered
from the same chunks, the normed rows entering the product in the weights' dtype, rstd applied
at the end), EPI=1 (residual add) and EPI=2 (SwiGLU of the gate rows n and up rows F + n). Every
row count launches with BLOCK_B = 16, and a product column depends on its own row only, so a
row's result does not depend on how many rows share the launch.
"""
import triton
import triton.language as tl

from ._utils import dot, pdl_enter, to_dtype


@triton.jit
def _chunk_t(acc, acc2, ss, w, w2, x_ptr, nw_ptr, offs_b, offs_k, stride_xb, mask_b,
             K: tl.constexpr, NORM: tl.constexpr, EPI: tl.constexpr,
             DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """One BLOCK_K chunk: acc [BN, BB] += w · xᵀ (acc2 += w2 · xᵀ for the up rows)."""
    mask_k = offs_k < K
    xt = tl.load(x_ptr + offs_b[None, :] * stride_xb + offs_k[:, None],
                 mask=mask_k[:, None] & mask_b[None, :], other=0.0).to(tl.float32)   # [BK, BB]
    if NORM:
        ss += tl.sum(xt * xt, axis=0)
        nw = tl.load(nw_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        xt = xt * nw[:, None]
    xw = to_dtype(xt, w.dtype)
    acc += dot(w, xw, DOT_PRECISION, INTERPRET)
    if EPI == 2:
        acc2 += dot(w2, xw, DOT_PRECISION, INTERPRET)
    return acc, acc2, ss


@triton.jit
def load_w(w_rows, w2_rows, offs_k, mask_n, K: tl.constexpr, EPI: tl.constexpr):
    """A chunk's weights [BN, BK], masked at N and K, and (EPI=2) the up rows' beside them;
    else w2 is w. They stay in their own dtype until they are multiplied. (Both gemv kernels
    load their weight chunks with it.)"""
    wm = mask_n[:, None] & (offs_k < K)[None, :]
    w = tl.load(w_rows + offs_k[None, :], mask=wm, other=0.0)
    w2 = w
    if EPI == 2:
        w2 = tl.load(w2_rows + offs_k[None, :], mask=wm, other=0.0)
    return w, w2


@triton.jit
def _finish(acc, acc2, ss, offs_n, offs_b, mask_n, mask_b, r_ptr, y_ptr, stride_rb, stride_yb,
            eps, K: tl.constexpr, NORM: tl.constexpr, EPI: tl.constexpr):
    """The epilogue on the whole row's sums: rstd, the residual or SwiGLU, the transposed store."""
    if NORM:
        rstd = tl.rsqrt(ss / K + eps)
        acc = acc * rstd[None, :]
        acc2 = acc2 * rstd[None, :]
    mask = mask_n[:, None] & mask_b[None, :]
    if EPI == 1:
        r = tl.load(r_ptr + offs_b[None, :] * stride_rb + offs_n[:, None], mask=mask, other=0.0)
        acc = acc + r.to(tl.float32)
    if EPI == 2:
        acc = acc / (1.0 + tl.exp(-acc)) * acc2
    tl.store(y_ptr + offs_b[None, :] * stride_yb + offs_n[:, None],
             to_dtype(acc, y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gemv_mma_kernel(
    x_ptr, nw_ptr, w_ptr, r_ptr, y_ptr, part_ptr, ss_ptr, sem_ptr,
    N, stride_xb, stride_wn, stride_rb, stride_yb, eps,
    B: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr, EPI: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
    SPLIT: tl.constexpr, TILES: tl.constexpr,
    USE_PDL: tl.constexpr, DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    lo = split * (TILES * BLOCK_K)            # this split's TILES chunks of K
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_B)
    mask_n = offs_n < N
    mask_b = offs_b < B
    w_rows = w_ptr + offs_n[:, None] * stride_wn
    w2_rows = w_rows + N * stride_wn          # EPI=2: the up rows, F = N below the gate rows
    acc = tl.zeros([BLOCK_N, BLOCK_B], tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_B], tl.float32)
    ss = tl.zeros([BLOCK_B], tl.float32)
    # chunk 0's weights before the PDL wait: no kernel of the step writes them
    offs_k = lo + tl.arange(0, BLOCK_K)
    w, w2 = load_w(w_rows, w2_rows, offs_k, mask_n, K, EPI)
    pdl_enter(USE_PDL)
    acc, acc2, ss = _chunk_t(acc, acc2, ss, w, w2, x_ptr, nw_ptr, offs_b, offs_k, stride_xb,
                             mask_b, K, NORM, EPI, DOT_PRECISION, INTERPRET)
    # a constexpr trip count (Triton 3.6's interpreter fails on runtime loop bounds,
    # triton#9171); the loop's weight loads feed tl.dot, so the compiler keeps STAGES chunks of
    # them in flight. Chunks past K (a last split's ragged end) load nothing.
    for t in tl.range(1, TILES, num_stages=STAGES):
        offs_k = lo + t * BLOCK_K + tl.arange(0, BLOCK_K)
        w, w2 = load_w(w_rows, w2_rows, offs_k, mask_n, K, EPI)
        acc, acc2, ss = _chunk_t(acc, acc2, ss, w, w2, x_ptr, nw_ptr, offs_b, offs_k, stride_xb,
                                 mask_b, K, NORM, EPI, DOT_PRECISION, INTERPRET)
    if SPLIT == 1:
        _finish(acc, acc2, ss, offs_n, offs_b, mask_n, mask_b, r_ptr, y_ptr, stride_rb,
                stride_yb, eps, K, NORM, EPI)
    else:
        # Split-K: each split stores its partial sums (fp32, [SPLIT, BLOCK_B, N] planes, the up
        # rows' after the gate rows'); the last of a column block's splits to finish adds them
        # up in split order, so the sum does not depend on which finished last.
        plane = BLOCK_B * N
        cell = offs_b[None, :] * N + offs_n[:, None]
        keep = mask_n[:, None] & (offs_b < BLOCK_B)[None, :]
        tl.store(part_ptr + split * plane + cell, acc, mask=keep)
        if EPI == 2:
            tl.store(part_ptr + (SPLIT + split) * plane + cell, acc2, mask=keep)
        ss_row = ss_ptr + (pid * SPLIT + split) * BLOCK_B + offs_b
        tl.store(ss_row, ss)
        # every thread's partials are stored (barrier) before the release-acquire increment
        tl.debug_barrier()
        counter = sem_ptr + pid
        done = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if done == SPLIT - 1:
            tl.debug_barrier()
            acc = tl.zeros([BLOCK_N, BLOCK_B], tl.float32)
            acc2 = tl.zeros([BLOCK_N, BLOCK_B], tl.float32)
            ss = tl.zeros([BLOCK_B], tl.float32)
            # .cg: the partials come from other SMs; read them from L2, never a stale L1 line
            for sp in tl.static_range(SPLIT):
                acc += tl.load(part_ptr + sp * plane + cell, mask=keep, other=0.0,
                               cache_modifier=".cg")
                if EPI == 2:
                    acc2 += tl.load(part_ptr + (SPLIT + sp) * plane + cell, mask=keep,
                                    other=0.0, cache_modifier=".cg")
                ss += tl.load(ss_ptr + (pid * SPLIT + sp) * BLOCK_B + offs_b, cache_modifier=".cg")
            tl.store(counter, 0)   # ready for the next launch: every split has counted
            _finish(acc, acc2, ss, offs_n, offs_b, mask_n, mask_b, r_ptr, y_ptr, stride_rb,
                    stride_yb, eps, K, NORM, EPI)


# Per device, int32 counters that every split-K launch leaves zeroed (one per column block).
# One buffer serves every launch: kernels of one stream touch it only after the PDL wait, so
# never two at a time. Made on the first split launch (a decoder's eager warm-up, before any
# capture), so a captured graph holds no memset; a larger one, when needed, is added and the
# smaller kept, since graphs captured before may hold its address.
_SEMAPHORES: dict = {}


def semaphores(device, n: int):
    """At least n zeroed int32 counters on `device`, kept for every later launch there."""
    import torch
    made = _SEMAPHORES.setdefault(device, [])
    if not made or made[-1].numel() < n:
        made.append(torch.zeros(max(n, 4096), dtype=torch.int32, device=device))
    return made[-1]


def split_args(x, n_out: int, cfg: dict, epi: int):
    """(part, ss, sem, TILES) for a launch of config cfg: the split-K workspaces (the output
    stands in for them when SPLIT is 1) and the chunks each split takes."""
    import torch
    K, split, bk = x.shape[1], cfg["SPLIT"], cfg["BLOCK_K"]
    tiles = triton.cdiv(triton.cdiv(K, bk), split)
    if split == 1:
        return x, x, x, tiles
    bb, blocks = block_b(cfg, x.shape[0]), triton.cdiv(n_out, cfg["BLOCK_N"])
    part = torch.empty((2 if epi == 2 else 1) * split * bb * n_out, dtype=torch.float32,
                       device=x.device)
    ss = torch.empty(blocks * split * bb, dtype=torch.float32, device=x.device)
    return part, ss, semaphores(x.device, blocks), tiles


def block_b(cfg: dict, rows: int) -> int:
    """The rows a launch pads to: 16 on tensor cores (DOT 1 or 2; the padding rows are masked
    off, loaded as zeros), else the next power of two."""
    return max(16 if cfg["DOT"] else 1, triton.next_power_of_2(rows))
