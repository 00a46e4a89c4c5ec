"""swiglu against swiglu_ref, on fresh random inputs."""
import pytest
import torch

from microbench.kernels import swiglu, swiglu_ref
from tests.utils import DTYPE_TOLS, assert_close, f16, gen, randn

# B, F: llama-1b's FFN width, llama-3b-like 3072, and widths off every block.
SHAPES = [(2, 8192), (3, 3072), (1, 5), (5, 123)]


@pytest.mark.parametrize("B, F", SHAPES, ids=str)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLS)
def test_swiglu(B, F, dtype, atol, rtol, device):
    gate_up = 2 * randn(B, 2 * F, g=gen(9), dtype=dtype, device=device)
    assert_close(swiglu(gate_up), swiglu_ref(gate_up), dtype, atol, rtol)


def test_bad_arguments_raise_value_error(device):
    with pytest.raises(ValueError, match=r"\[B, 2F\]"):
        swiglu(f16(2, 7, dev=device))


@pytest.mark.gpu
def test_cpu_tensors_without_interpreter_raise():
    with pytest.raises(ValueError, match="interpreter"):
        swiglu(torch.randn(2, 8))
