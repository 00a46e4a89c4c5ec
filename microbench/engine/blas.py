"""Which cuBLAS interface runs a decoder's wide matmuls (above `plan.FAST_ROWS` rows), chosen per
device, model shape and row count by measurement.

cuBLAS picks its GEMM kernel by a heuristic per call. Through `F.linear` without a bias PyTorch
calls cublasGemmEx; through `torch.addmm` with a 1-D bias it calls cuBLASLt's matmul with the
bias added in the epilogue, which searches another family of kernels. Neither wins everywhere:
which is faster depends on the weight shapes and the rows. So `microbench tune --ab PRESET --vary
blas --rows 32,64,128` times whole graph steps with every wide matmul on one interface or the
other, interleaved in one process, and records the faster beyond noise at each row count in the
device's table, `kernels/configs/blas_<device>.json`, keyed by the model's shape and element
size (`pdl.shape_key`). A decoder built with `blas=None` follows the table, and only where the
table measured: rows take cuBLASLt when they lie between two measured row counts (either one
included) that both chose it, and cuBLAS elsewhere, below the smallest measured count or above
the largest included (`DEFAULT`), as on a shape or device the table does not hold. The cuBLASLt
interface adds a zero bias: the product is unchanged, at the cost of reading one row of zeros
per matmul.
"""
from __future__ import annotations

import functools
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from microbench.engine.pdl import read_per_batch, shape_key
from microbench.kernels.gemv_configs import CONFIG_DIR, device_key

MODES = ("cublas", "cublaslt")
DEFAULT = "cublas"


def table_path(device_name: str, directory: Path | None = None) -> Path:
    return Path(directory or CONFIG_DIR) / f"blas_{device_key(device_name)}.json"


@functools.lru_cache(maxsize=None)
def load_table(device_name: str) -> dict:
    """The measured choices for a device ({} when none was measured there): per model shape,
    per measured row count."""
    return read_per_batch(table_path(device_name), "BLAS", "blas", MODES, "rows")


def lt_spans(shape, elt: int, device_name: str) -> tuple:
    """The row ranges (lo, hi), both included, that take cuBLASLt for `shape` on
    `device_name`: each pair of neighbouring measured row counts that both chose it (a lone
    measured count is a range of one)."""
    entries = load_table(device_name).get(shape_key(shape, elt), {})
    measured = sorted((int(r), e["mode"]) for r, e in entries.items())
    spans = [(r, r) for r, m in measured if m == "cublaslt"]
    spans += [(a, b) for (a, ma), (b, mb) in zip(measured, measured[1:])
              if ma == mb == "cublaslt"]
    return tuple(sorted(spans))


def choose(rows: int, spans: tuple) -> str:
    """The interface for `rows` rows given lt_spans' ranges. A plain loop, which torch.compile
    traces (the compile arm compiles a decoder's step)."""
    for lo, hi in spans:
        if lo <= rows <= hi:
            return "cublaslt"
    return DEFAULT


def resolve(blas: str | None, shape, dtype: torch.dtype, device: torch.device):
    """`rows -> mode` for a decoder: `blas` at every row count when given (one of MODES; anything
    else raises), else the table's choices on a CUDA `device`, read once here (DEFAULT
    elsewhere)."""
    if blas is not None:
        if blas not in MODES:
            raise ValueError(f"blas must be one of {', '.join(MODES)} or None, got {blas!r}")
        return lambda rows: blas
    if device.type != "cuda":
        return lambda rows: DEFAULT
    elt = torch.empty((), dtype=dtype).element_size()
    spans = lt_spans(shape, elt, torch.cuda.get_device_name(device))
    return lambda rows: choose(rows, spans)


def linear(x, w, mode: str, zeros, record: list | None = None):
    """x @ w^T through the interface `mode` names (cuBLASLt: addmm with the first w.shape[0] of
    `zeros` as the bias); while a step is bound, its launch is recorded into `record`, writing
    the same output."""
    if mode == "cublaslt":
        bias, wt = zeros[:w.shape[0]], w.t()
        y = torch.addmm(bias, x, wt)
        if record is not None:
            record.append(partial(torch.addmm, bias, x, wt, out=y))
        return y
    y = F.linear(x, w)
    if record is not None:
        record.append(partial(torch.mm, x, w.t(), out=y))
    return y
