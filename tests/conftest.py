"""Test configuration.

Without CUDA, Triton kernels run under Triton's CPU interpreter: TRITON_INTERPRET must be set
before any `@triton.jit` function is defined, so it is set here, before the test modules (and
through them `kernels`) are imported. With CUDA the kernels run compiled on the GPU.
`gpu`-marked tests are skipped when CUDA is absent; `interpreter`-marked tests (Triton kernels
on CPU tensors) are skipped when it is present, where the kernels run compiled instead.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip, marker = ((pytest.mark.skip(reason="Triton runs compiled on this CUDA machine"), "interpreter")
                    if HAS_CUDA else (pytest.mark.skip(reason="needs a CUDA GPU"), "gpu"))
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    """Where kernels run in this session: CUDA when present, else the CPU interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _host_never_slow(monkeypatch):
    """Timings in the suite never wait for a slow host (bench.hostcpu): this machine's own drift
    would add seconds to a row, and neither do they drop rounds the host was slow around. Each
    test starts with no host reference; the waiting and the dropping are tested in
    tests/bench/test_hostcpu.py, which sets THROTTLE and MICROBENCH_HOST_QUIET back."""
    from microbench.bench import hostcpu
    monkeypatch.setattr(hostcpu, "HOST", hostcpu.Reference())
    monkeypatch.setattr(hostcpu, "THROTTLE", float("inf"))
    monkeypatch.setenv(hostcpu.QUIET_ENV, "0")
