"""What every kernel file shares: the dtypes the wrappers take, the device check, the output
cast, programmatic dependent launch, and the pieces that make a kernel run the same compiled and
under Triton's CPU interpreter (TRITON_INTERPRET=1), where four things differ from the GPU:

* fp32 → bf16 casts truncate instead of rounding to nearest even (Triton 3.6);
* tl.dot on bf16 operands multiplies their raw uint16 bit patterns (Triton 3.6);
* loops with runtime bounds fail under numpy >= 2.4 (triton-lang/triton#9171, Triton 3.6);
* a scalar comparison broadcast against a block is not a bool block, so a load or store masked
  by `block_mask & scalar_cond` raises "mask has unsupported dtype" (Triton 3.9).

`to_dtype` is the one cast the kernels use for their outputs; it is exact on both sides.
`as_mask` is how a kernel combines a scalar condition with a block mask.
"""
import functools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# The activation and weight dtypes every wrapper takes, and the index dtypes (tokens, positions,
# slots, sequence lengths).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def interpreted(kernel) -> bool:
    """True when `kernel` (a @triton.jit function) runs under the CPU interpreter."""
    return isinstance(kernel, InterpretedFunction)


def check_device(op, kernel, t):
    """Compiled kernels take CUDA tensors only; CPU tensors need the interpreter."""
    if t.device.type != "cuda" and not interpreted(kernel):
        raise ValueError(f"{op}: tensors on {t.device} need Triton's interpreter (TRITON_INTERPRET=1 set "
                         "before `microbench.kernels` is imported); compiled kernels take CUDA tensors")


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


@triton.jit
def dot(a, b, DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """tl.dot at DOT_PRECISION compiled; in fp32 under the interpreter."""
    if INTERPRET:
        # The interpreter would multiply bf16 bit patterns; fp32 holds 16-bit values exactly.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def as_mask(cond):
    """A scalar condition as a bool that broadcasts against a block mask (`mask & as_mask(c)`).
    Triton 3.9's interpreter tags a scalar comparison with the compared operands' integer type
    and broadcasts it as integers, which a masked load or store rejects; a select between two
    bool constants is a true bool there. Compiled, select(c, true, false) folds to c: the same
    code as `mask & c`."""
    return tl.where(cond, True, False)


# ---- programmatic dependent launch -----------------------------------------------------------
# Hopper and newer, compiled kernels only: the decode kernels launched with it let the next
# kernel launch as soon as all their own programs are running, then wait (griddepcontrol.wait)
# for the kernel before them to finish and flush before they read an activation or write
# anything, so a kernel's launch (and a matmul's first weight loads, which no kernel of the step
# writes) overlaps the tail of the kernel before. Letting the next kernel launch before this
# one's wait is safe: the next kernel still waits for this one to complete, and this one
# completes only after its own wait; it lets a chain of kernels become resident (and a matmul
# load its first weights) while the kernel two places back still runs. Each wrapper that
# launches such a kernel takes `pdl=True`; `pdl=False` launches without it.

@functools.lru_cache(maxsize=None)
def _major(index) -> int:
    return torch.cuda.get_device_capability(index)[0]


def use_pdl(kernel, t, pdl: bool = True) -> bool:
    """Launch `kernel` with PDL for tensors like t: `pdl` asked for, compiled, on CUDA, SM 9.0
    or newer. (Called on every launch: the capability is looked up once per device.)"""
    return (pdl and t.device.type == "cuda" and not interpreted(kernel)
            and _major(t.device.index if t.device.index is not None else torch.cuda.current_device()) >= 9)


def pdl_launch_kw(on: bool) -> dict:
    """The launch option that sets the PDL attribute (Triton's `launch_pdl`)."""
    return {"launch_pdl": True} if on else {}


@triton.jit
def pdl_enter(USE_PDL: tl.constexpr):
    """A PDL kernel's entry: let the next kernel launch, then wait for the kernel before."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
