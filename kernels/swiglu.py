"""SwiGLU activation on a fused [gate | up] projection output."""
import torch
import triton
import triton.language as tl

from ._launch import launch

from ._utils import DTYPES, check_device, to_dtype


@triton.jit
def _swiglu_kernel(gu_ptr, out_ptr, stride_gb, stride_ob, F, BLOCK_F: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = cols < F
    g = tl.load(gu_ptr + row * stride_gb + cols, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_F]
    u = tl.load(gu_ptr + row * stride_gb + F + cols, mask=mask, other=0.0).to(tl.float32)
    # silu(g) = g·sigmoid(g); for very negative g, exp(-g) = inf and g / inf = -0, as it should.
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(out_ptr + row * stride_ob + cols, to_dtype(y, out_ptr.dtype.element_ty), mask=mask)


def swiglu(gate_up, record=None):
    """out = silu(gate_up[:, :F]) · gate_up[:, F:], silu(g) = g / (1 + e^(−g)), fp32 math.
    gate_up: [B, 2F]; returns [B, F] of gate_up's dtype."""
    if gate_up.dim() != 2 or gate_up.shape[1] % 2 != 0 or gate_up.shape[1] == 0:
        raise ValueError(f"swiglu: gate_up must be [B, 2F] with F >= 1, got shape {tuple(gate_up.shape)}")
    if gate_up.dtype not in DTYPES:
        raise ValueError(f"swiglu: dtype {gate_up.dtype} not supported; allowed: float32, float16, bfloat16")
    if gate_up.numel() > 0 and gate_up.stride(1) != 1:
        raise ValueError(f"swiglu: gate_up must be contiguous in its last dim, got strides {gate_up.stride()}")
    check_device("swiglu", _swiglu_kernel, gate_up)
    B, F = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((B, F), dtype=gate_up.dtype, device=gate_up.device)
    if B > 0:
        # 1024 elements over 4 warps = 8 per thread: 16-byte loads for 16-bit types.
        BLOCK_F = min(triton.next_power_of_2(F), 1024)
        launch(record, _swiglu_kernel, (B, triton.cdiv(F, BLOCK_F)),
            gate_up, out, gate_up.stride(0), out.stride(0), F, BLOCK_F=BLOCK_F, num_warps=4,
        )
    return out


def swiglu_ref(gate_up):
    """Reference: out = silu(g) · u with g = gate_up[:, :F], u = gate_up[:, F:], in fp32, cast back.

    Bytes (s = element size): reads 2·B·F·s, writes B·F·s.
    """
    F = gate_up.shape[1] // 2
    gu = gate_up.float()
    return (torch.nn.functional.silu(gu[:, :F]) * gu[:, F:]).to(gate_up.dtype)
