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
