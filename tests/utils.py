"""Shared test helpers."""
import torch

# (atol, rtol) per dtype, for a kernel output against its fp32 reference rounded to the same dtype.
#   float32: ulp(1) = 2^-23 ≈ 1.2e-7; 1e-5 ≈ 84 ulp leaves room for a different reduction order
#            over a few thousand terms and the GPU's approximate exp2/rsqrt/sin/cos (~2 ulp each),
#            while an indexing or masking bug is off by O(1).
#   float16: ulp(1) = 2^-10 ≈ 9.8e-4; rtol 1e-3 is one ulp anywhere in a binade (kernel and
#            reference each round a slightly different fp32 value); atol 1e-3 covers outputs near
#            zero that come from cancelling O(1) terms (rope, attention).
#   bfloat16: ulp(1) = 2^-7 ≈ 7.8e-3; rtol 1.6e-2 ≈ 2 ulp: one for the final rounding, one for
#            attention's softmax weights, which are rounded to bf16 for the p·V tensor-core product
#            as flash-attention does; atol 1e-2 as for fp16, scaled to bf16's ulp.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}


def assert_close(actual, expected, dtype):
    """Assert `actual` matches `expected` elementwise within TOL[dtype]; both must have `dtype`
    and the same shape. NaNs never match."""
    assert actual.dtype == dtype and expected.dtype == dtype, (actual.dtype, expected.dtype, dtype)
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=atol, rtol=rtol)
