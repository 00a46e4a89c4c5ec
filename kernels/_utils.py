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
# Hopper and newer, compiled kernels only: a decode kernel launched with it waits
# (griddepcontrol.wait) for the kernel before it to finish and flush before it reads an
# activation or writes anything, and lets the next kernel launch (griddepcontrol.launch_dependents)
# either first ("early", the default: as soon as all its own programs are running) or after its
# wait ("late"). Early lets a chain of kernels become resident (and a matmul load its first
# weights, which no kernel of the step writes) while the kernel two places back still runs; late
# keeps one kernel waiting at a time. Either is safe: the next kernel still waits for this one to
# complete, and this one completes only after its own wait. Each wrapper that launches such a
# kernel takes `pdl`: True (or "early"), "late", or False (no PDL).

PDL_OFF, PDL_EARLY, PDL_LATE = 0, 1, 2
PDL_CHOICES = {False: PDL_OFF, True: PDL_EARLY, "early": PDL_EARLY, "late": PDL_LATE}


@functools.lru_cache(maxsize=None)
def _major(index) -> int:
    return torch.cuda.get_device_capability(index)[0]


def pdl_mode(pdl) -> int:
    """The PDL_* mode a wrapper's `pdl` argument asks for."""
    try:
        return PDL_CHOICES[pdl]
    except (KeyError, TypeError):
        raise ValueError(f"pdl must be True, False, 'early' or 'late', got {pdl!r}") from None


def use_pdl(kernel, t, pdl=True) -> int:
    """How `kernel` launches for tensors like t when called with `pdl`: PDL_OFF unless PDL is
    asked for and the kernel is compiled, on CUDA, SM 9.0 or newer; else the mode asked for.
    (Called on every launch: the capability is looked up once per device.)"""
    mode = pdl_mode(pdl)
    if (mode and t.device.type == "cuda" and not interpreted(kernel)
            and _major(t.device.index if t.device.index is not None else torch.cuda.current_device()) >= 9):
        return mode
    return PDL_OFF


def pdl_launch_kw(mode: int) -> dict:
    """The launch option that sets the PDL attribute (Triton's `launch_pdl`)."""
    return {"launch_pdl": True} if mode else {}


@triton.jit
def pdl_enter(USE_PDL: tl.constexpr):
    """A PDL kernel's entry (USE_PDL a PDL_* mode): wait for the kernel before, and let the next
    kernel launch before the wait (early) or after it (late)."""
    if USE_PDL == 1:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    if USE_PDL == 2:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
