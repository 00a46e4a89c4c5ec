"""Which cuBLAS interface runs a decoder's wide matmuls (above `plan.FAST_ROWS` rows), chosen per
device, model shape and row bucket by measurement.

cuBLAS picks its GEMM kernel by a heuristic per call. Through `F.linear` without a bias PyTorch
calls cublasGemmEx; through `torch.addmm` with a 1-D bias it calls cuBLASLt's matmul with the
bias added in the epilogue, which searches another family of kernels. Neither wins everywhere:
which is faster depends on the weight shapes and the rows. So `microbench tune --ab PRESET --vary
blas --rows 32,64,128` times whole graph steps with every wide matmul on one interface or the
other, interleaved in one process, and records the faster beyond noise per row bucket (rows
rounded up to a power of two) in the device's table, `kernels/configs/blas_<device>.json`,
keyed by the model's shape and element size (`pdl.shape_key`). A decoder built with
`blas=None` follows the table; a bucket, shape or device the table does not hold takes cuBLAS
(`DEFAULT`). The cuBLASLt arm adds a zero bias: the product is unchanged, at the cost of reading
one row of zeros per matmul.
"""
from __future__ import annotations

import functools
import json
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from microbench.engine.pdl import read_choices, shape_key
from microbench.kernels.gemv_configs import CONFIG_DIR, device_key, row_bucket

MODES = ("cublas", "cublaslt")
DEFAULT = "cublas"


def table_path(device_name: str, directory: Path | None = None) -> Path:
    return Path(directory or CONFIG_DIR) / f"blas_{device_key(device_name)}.json"


@functools.lru_cache(maxsize=None)
def load_table(device_name: str) -> dict:
    """The measured choices for a device ({} when none was measured there): per model shape,
    per row bucket."""
    return read_choices(table_path(device_name), "BLAS", "blas", MODES,
                        lambda c: ((f"{k} rows {b}", e) for k, es in c.items() for b, e in es.items()))


def choose(shape, elt: int, device_name: str, rows: int) -> str:
    """The interface `rows` rows of a decoder of `shape` take on `device_name`: the table's
    measured choice for their row bucket, else DEFAULT."""
    entry = load_table(device_name).get(shape_key(shape, elt), {}).get(str(row_bucket(rows)))
    return entry["mode"] if entry else DEFAULT


def resolve(blas: str | None, shape, dtype: torch.dtype, device: torch.device):
    """`rows -> mode` for a decoder: `blas` at every row count when given (one of MODES; anything
    else raises), else the table's choices on a CUDA `device`, read once here (DEFAULT
    elsewhere). The function is a plain dict lookup, which torch.compile traces."""
    if blas is not None:
        if blas not in MODES:
            raise ValueError(f"blas must be one of {', '.join(MODES)} or None, got {blas!r}")
        return lambda rows: blas
    if device.type != "cuda":
        return lambda rows: DEFAULT
    elt = torch.empty((), dtype=dtype).element_size()
    entries = load_table(torch.cuda.get_device_name(device)).get(shape_key(shape, elt), {})
    modes = {int(b): e["mode"] for b, e in entries.items()}
    return lambda rows: modes.get(row_bucket(rows), DEFAULT)


def linear(x, w, mode: str, zeros, record: list | None = None):
    """x @ w^T through the interface `mode` names (cuBLASLt: addmm with the first w.shape[0] of
    `zeros` as the bias); while a step is bound, its launch is recorded into `record`, writing
    the same output."""
    if mode == "cublaslt":
        bias = zeros[:w.shape[0]]
        y = torch.addmm(bias, x, w.t())
        fn = partial(torch.addmm, bias, x, w.t(), out=y)
    else:
        y = F.linear(x, w)
        fn = partial(torch.mm, x, w.t(), out=y)
    if record is not None:
        record.append(fn)
    return y


def merge_table(path: Path, meta: dict, key: str, entries: dict) -> dict:
    """The table at `path` (or a new one) with `key`'s entries set for the row buckets of
    `entries` ({rows: entry}) and `meta` (the measuring run) appended to its runs."""
    table = json.loads(path.read_text()) if path.exists() else {"device": meta.get("device"),
                                                                 "runs": [], "choices": {}}
    table["runs"].append(meta)
    mine = table["choices"].setdefault(key, {})
    for rows, entry in entries.items():
        mine[str(row_bucket(rows))] = dict(entry, run=len(table["runs"]) - 1)
    return table
