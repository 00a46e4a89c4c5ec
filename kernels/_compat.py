"""Small pieces the kernels share to run the same way compiled and under Triton 3.6's CPU
interpreter (TRITON_INTERPRET=1), where three things differ from the GPU:

* fp32 → bf16 casts truncate instead of rounding to nearest even;
* tl.dot on bf16 operands multiplies their raw uint16 bit patterns;
* loops with runtime bounds fail under numpy >= 2.4 (triton-lang/triton#9171).

`to_dtype` is the one cast the kernels use for their outputs; it is exact on both sides.
"""
import functools
import os

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# Programmatic dependent launch (Hopper and newer, compiled kernels only): the decode kernels
# launched with it wait (griddepcontrol.wait) for the kernel before them to finish and flush
# before they read an activation or write anything, and let the next kernel launch as soon as
# all their own programs are running, so a kernel's launch (and a matmul's first weight loads,
# which no kernel of the step writes) overlap the tail of the kernel before. MICROBENCH_PDL=0 or
# `kernels._compat.PDL = False` turns it off.
PDL = os.environ.get("MICROBENCH_PDL", "1") != "0"
# A kernel lets the next one launch before its own wait (True) or right after it (False). Before
# is safe too: the next kernel still waits for this one to complete, and this one completes only
# after its own wait; it lets a chain of kernels become resident (and a matmul load its first
# weights) while the kernel two places back still runs.
TRIGGER_FIRST = os.environ.get("MICROBENCH_PDL_TRIGGER_FIRST", "1") != "0"


def interpreted(kernel):
    """True when `kernel` (a @triton.jit function) runs under the CPU interpreter."""
    return isinstance(kernel, InterpretedFunction)


def check_device(op, kernel, t):
    """Compiled kernels take CUDA tensors only; CPU tensors need the interpreter."""
    if t.device.type != "cuda" and not interpreted(kernel):
        raise ValueError(f"{op}: tensors on {t.device} need Triton's interpreter (TRITON_INTERPRET=1 set "
                         "before `kernels` is imported); compiled kernels take CUDA tensors")


@triton.jit
def to_dtype(x, dtype: tl.constexpr):
    """x (fp32) rounded to nearest even in `dtype`. For bf16 the rounding is done on the bits
    (add 0x7FFF plus the lowest kept bit, drop 16 bits), identical to the GPU's cvt.rn.bf16.f32
    for finite values and infinities, and keeping NaNs NaN."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@functools.lru_cache(maxsize=None)
def _major(index) -> int:
    return torch.cuda.get_device_capability(index)[0]


def use_pdl(kernel, t) -> bool:
    """Launch `kernel` with PDL for tensors like t: compiled, on CUDA, SM 9.0 or newer, PDL on.
    (Called on every launch: the capability is looked up once per device.)"""
    return (PDL and t.device.type == "cuda" and not interpreted(kernel)
            and _major(t.device.index if t.device.index is not None else torch.cuda.current_device()) >= 9)


def pdl_mode(on: bool) -> int:
    """The USE_PDL constexpr of a launch: 0 off, 1 wait then trigger, 2 trigger then wait."""
    return 0 if not on else (2 if TRIGGER_FIRST else 1)


def pdl_launch_kw(on: bool) -> dict:
    """The launch option that sets the PDL attribute (Triton's `launch_pdl`)."""
    return {"launch_pdl": True} if on else {}


@triton.jit
def pdl_enter(USE_PDL: tl.constexpr):
    """A PDL kernel's entry: wait for the kernel before, and let the next one launch, in the
    order pdl_mode chose."""
    if USE_PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    if USE_PDL == 1:
        tl.extra.cuda.gdc_launch_dependents()


# L2 prefetch (Hopper and newer, compiled kernels only): a kernel can be handed up to two
# regions of memory that a later kernel of the step will read (the next matmuls' first weight
# rows) and warm them in L2 before its PDL wait, with cp.async.bulk.prefetch.L2 (a hint: no
# registers, no result, no effect on any value). A decode step's HBM idles while attention
# works through its few tiles; the prefetch puts those microseconds to the next weights' use.
PREFETCH = os.environ.get("MICROBENCH_PREFETCH", "1") != "0"
# prefetch lanes per program (one bulk prefetch per lane) and the smallest piece one lane asks for
PREFETCH_LANES = 128
_MIN_PIECE = 256


def prefetch_args(kernel, regions, n_programs: int, like) -> dict:
    """Launch arguments for a kernel's L2 prefetch of `regions` (up to two contiguous tensors,
    their bytes rounded down to 16), spread over the first programs: PF (the number of
    regions, 0 where prefetch cannot run: interpreted, off, before SM 9.0), pf0/pf1 (the
    tensors), pf0_bytes/pf1_bytes and pf0_piece/pf1_piece (bytes per lane, a multiple of 16)."""
    regions = [r for r in (regions or ()) if r is not None and r.numel()]
    if len(regions) > 2:
        raise ValueError(f"prefetch: at most two regions, got {len(regions)}")
    for r in regions:
        if r.device != like.device:
            raise ValueError(f"prefetch: a region is on {r.device}, expected {like.device}")
        if not r.is_contiguous():
            raise ValueError(f"prefetch: regions must be contiguous, got strides {r.stride()}")
    on = PREFETCH and use_pdl(kernel, like) and all(r.data_ptr() % 16 == 0 for r in regions)
    args = dict(PF=len(regions) if on else 0)
    lanes = PREFETCH_LANES * max(1, min(n_programs, _sm_count(like.device))) if on else 1
    for j in range(2):
        r = regions[j] if on and j < len(regions) else like
        nbytes = (r.numel() * r.element_size()) // 16 * 16 if on and j < len(regions) else 0
        piece = prefetch_piece(nbytes, lanes)
        args.update({f"pf{j}": r, f"pf{j}_bytes": nbytes, f"pf{j}_piece": piece})
    return args


def prefetch_piece(nbytes: int, lanes: int) -> int:
    """Bytes one lane prefetches so that `lanes` lanes cover nbytes: a multiple of 16, at
    least _MIN_PIECE."""
    per_lane = -(-nbytes // lanes)
    return max(_MIN_PIECE, -(-per_lane // 16) * 16)


@functools.lru_cache(maxsize=None)
def _sm_count_of(index) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device) -> int:
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


@triton.jit
def _prefetch_region(ptr, nbytes, piece, LANES: tl.constexpr):
    # lane i of program p (numbered across the grid) asks for bytes [(p·LANES + i)·piece,
    # +piece) of the region, clipped to its end; lanes past it (so programs past the first
    # few) ask for nothing
    prog = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) + tl.program_id(2)
    offs = (prog * LANES + tl.arange(0, LANES)).to(tl.int64) * piece
    size = tl.minimum(tl.maximum(nbytes - offs, 0), piece).to(tl.int32)
    addr = ptr.to(tl.pointer_type(tl.int8)) + offs
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def l2_prefetch(pf0, pf0_bytes, pf0_piece, pf1, pf1_bytes, pf1_piece, PF: tl.constexpr):
    """Warm PF regions in L2 (prefetch_args gives the arguments); nothing when PF is 0."""
    if PF >= 1:
        _prefetch_region(pf0, pf0_bytes, pf0_piece, 128)   # 128: PREFETCH_LANES
    if PF >= 2:
        _prefetch_region(pf1, pf1_bytes, pf1_piece, 128)
