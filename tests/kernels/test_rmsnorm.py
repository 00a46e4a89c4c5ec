"""rmsnorm (optionally with the residual add) against rmsnorm_ref, on fresh random inputs."""
import pytest
import torch

from microbench.kernels import rmsnorm, rmsnorm_ref
from tests.utils import DTYPE_TOLS, assert_close, f16, gen, i32, randn

# B, D: llama-1b's hidden size, opt-125m's, and sizes off every block (D = 1 included).
SHAPES = [(4, 2048), (4, 768), (3, 123), (5, 123), (5, 1)]


@pytest.mark.parametrize("B, D", SHAPES, ids=str)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_rmsnorm(B, D, with_residual, dtype, atol, rtol, device):
    g = gen(1)
    x = randn(B, D, g=g, dtype=dtype, device=device)
    w = (1 + 0.1 * randn(D, g=g, dtype=torch.float32, device=device)).to(dtype)
    if not with_residual:
        assert_close(rmsnorm(x, w, 1e-6), rmsnorm_ref(x, w, 1e-6), dtype, atol, rtol)
        return
    r = randn(B, D, g=g, dtype=dtype, device=device)
    x0, r0 = x.clone(), r.clone()
    y, s = rmsnorm(x, w, 1e-6, residual=r)
    y_ref, s_ref = rmsnorm_ref(x, w, 1e-6, residual=r)
    assert_close(y, y_ref, dtype, atol, rtol)
    # The sum is one correctly rounded add, exactly what the unfused `x + residual` gives.
    assert torch.equal(s, s_ref)
    assert torch.equal(x, x0) and torch.equal(r, r0)


def test_rmsnorm_strided_rows(device):
    g = gen(2)
    big = randn(3, 300, g=g, dtype=torch.float16, device=device)
    x = big[:, 10:133]  # row stride 300, not D
    w = randn(123, g=g, dtype=torch.float16, device=device)
    assert_close(rmsnorm(x, w, 1e-5), rmsnorm_ref(x, w, 1e-5), torch.float16)


BAD_CALLS = [
    ("3d", lambda d: rmsnorm(f16(2, 3, 4, dev=d), f16(4, dev=d), 1e-6), "2-D"),
    ("w", lambda d: rmsnorm(f16(2, 8, dev=d), f16(7, dev=d), 1e-6), "w must be"),
    ("res-dtype", lambda d: rmsnorm(f16(2, 8, dev=d), f16(8, dev=d), 1e-6,
                                    residual=f16(2, 8, dev=d).float()), "residual"),
    ("int", lambda d: rmsnorm(i32(2, 8, dev=d), f16(8, dev=d), 1e-6), "dtype"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_value_error(call, match, device):
    with pytest.raises(ValueError, match=match):
        call(device)
