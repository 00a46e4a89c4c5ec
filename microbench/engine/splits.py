"""How many KV splits the fused attention kernel takes at a batch size, chosen per device, model
shape and batch size by measurement.

Below the batch at which its (sequence, kv head) programs fill the GPU, rope_store_attention
splits each sequence's KV cache so every SM gets about two programs. The count it takes by
default ("fill", decode_attention's rule) rounds the tiles per split down, so it may launch
more, shorter splits than that ("capped" rounds them up: kernels/rope_store_attention.py,
capped_splits). More splits hide latency at small batch and cost a merge of more partials;
which is faster depends on the shape and the batch, with no rule that holds across models. So
`microbench tune --ab PRESET --vary splits --rows 8,16,32` times whole graph steps of the two,
interleaved in one process, and records at each batch size the faster beyond noise in the
device's table, `kernels/configs/splits_<device>.json`, keyed by the model's shape and element
size (`pdl.shape_key`). A decoder built with `splits=None` follows the table at exactly the
measured batch sizes that chose "capped", and "fill" at every other (`DEFAULT`), so a graph
captured at a batch size and the eager step at that size launch alike.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from microbench.engine.pdl import read_choices, shape_key
from microbench.kernels.gemv_configs import CONFIG_DIR, device_key

MODES = ("fill", "capped")
DEFAULT = "fill"


def table_path(device_name: str, directory: Path | None = None) -> Path:
    return Path(directory or CONFIG_DIR) / f"splits_{device_key(device_name)}.json"


@functools.lru_cache(maxsize=None)
def load_table(device_name: str) -> dict:
    """The measured choices for a device ({} when none was measured there): per model shape,
    per measured batch size."""
    return read_choices(table_path(device_name), "attention splits", "splits", MODES,
                        lambda c: ((f"{k} bs {b}", e) for k, es in c.items() for b, e in es.items()))


def capped_sizes(shape, elt: int, device_name: str) -> frozenset:
    """The batch sizes at which `shape` on `device_name` measured "capped" faster."""
    entries = load_table(device_name).get(shape_key(shape, elt), {})
    return frozenset(int(b) for b, e in entries.items() if e["mode"] == "capped")


def resolve(splits: str | None, shape, dtype: torch.dtype, device: torch.device):
    """`batch -> capped?` for a decoder: `splits` at every batch size when given (one of
    MODES; anything else raises), else the table's choices on a CUDA `device`, read once here
    (DEFAULT elsewhere)."""
    if splits is not None:
        if splits not in MODES:
            raise ValueError(f"splits must be one of {', '.join(MODES)} or None, got {splits!r}")
        capped = splits == "capped"
        return lambda batch: capped
    if device.type != "cuda":
        return lambda batch: False
    elt = torch.empty((), dtype=dtype).element_size()
    sizes = capped_sizes(shape, elt, torch.cuda.get_device_name(device))
    return lambda batch: batch in sizes
